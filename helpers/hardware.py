"""The machine a benchmark runs on: CPU facts and package versions (:func:`machine`), measured read bandwidth and
matmul GFLOP/s, explicit thread counts for PyTorch and OpenVINO, and a compile probe run in a child process
(:func:`openvino_compiles`) for OpenVINO's one-thread bf16 crash.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

# CPU flags (as /proc/cpuinfo spells them) that decide which fast paths PyTorch and OpenVINO can take.
INTERESTING_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx_vnni")


def _cpuinfo() -> dict[str, str]:
    """The first processor block of /proc/cpuinfo as ``{key: value}`` (empty where there is no such file)."""
    try:
        block = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return {}
    return {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in block.splitlines())}


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``avx512_bf16``, ``amx_bf16``...); empty where /proc/cpuinfo is missing."""
    return set(_cpuinfo().get("flags", "").split())


def cpu_model() -> str:
    """The CPU's marketing name, e.g. ``Intel(R) Xeon(R) Processor``."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def usable_cores() -> int:
    """Logical cores this process may run on (its CPU affinity; containers and ``taskset`` limit it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def cache_sizes_mb() -> dict[str, float]:
    """Sizes in MB of the data caches one core sees (``{"L1d": ..., "L2": ..., "L3": ...}``; empty if unknown)."""
    sizes: dict[str, float] = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind, size = ((index / name).read_text().strip() for name in ("level", "type", "size"))
        except OSError:
            continue
        if kind == "Instruction":
            continue
        unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(size[-1:], 1)  # sysfs writes KiB as "K"
        sizes[f"L{level}" + ("d" if kind == "Data" else "")] = round(float(size.rstrip("KMG")) * unit / 1e6, 2)
    return sizes


def bandwidth_array_mb() -> int:
    """Array size for :func:`measure_read_bandwidth` that measures DRAM, not cache: 4x the last-level cache,
    at least 1 GB and at most 4 GB."""
    last_level = max(cache_sizes_mb().values(), default=0.0)
    return math.ceil(min(max(1024, 4 * last_level), 4096))


def supports_bf16() -> bool:
    """True when the CPU has bf16 instructions (AVX512-BF16 or AMX-BF16), where PyTorch bf16 is worth trying."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def default_threads() -> int:
    """The number of threads the benchmark gives each runtime: every core this process may use."""
    return usable_cores()


def openvino_config(threads: int, precision: str | None = None, cache_dir: Path | None = None) -> dict:
    """``ov_config`` for ``from_pretrained``: ``threads`` inference threads, optionally an
    ``INFERENCE_PRECISION_HINT`` (``"f32"``, ``"bf16"``...; else the plugin's default) and a compile ``CACHE_DIR``."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    config: dict = {"INFERENCE_NUM_THREADS": int(threads)}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    if cache_dir is not None:
        config["CACHE_DIR"] = str(cache_dir)
    return config


def set_torch_threads(threads: int) -> int:
    """Give PyTorch ``threads`` intra-op threads (``torch.set_num_threads``); returns the number now in force."""
    import torch

    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(int(threads))
    return torch.get_num_threads()


_PROBE = "import json, sys, openvino as ov; ov.Core().compile_model(sys.argv[1], 'CPU', json.loads(sys.argv[2]))"


@lru_cache(maxsize=None)
def _openvino_compiles(xml: str, config_json: str) -> bool:
    result = subprocess.run([sys.executable, "-c", _PROBE, xml, config_json], capture_output=True, timeout=600)
    return result.returncode == 0


def openvino_compiles(folder: Path, config: dict, submodel: str = "openvino_language_model") -> bool:
    """True when ``submodel`` of the IR in ``folder`` compiles on CPU with ``config``; cached per folder and config.

    Tried in a child process because the failure kills the process: OpenVINO 2026.4's CPU plugin dies with
    SIGFPE compiling an FP32-weight language model in bf16 with one thread (cf. openvino issue 33300).
    """
    xml = Path(folder) / f"{submodel}.xml"
    if not xml.is_file():
        raise FileNotFoundError(f"no {xml.name} in {folder}")
    return _openvino_compiles(str(xml.resolve()), json.dumps(config, sort_keys=True))


class CpuCompetition:
    """Context manager: ``other_share``, the share (0 to 1 of all cores) of CPU time *other* processes used while
    the block ran, from the kernel's CPU-time counters (nothing is sampled)."""

    def _busy_and_own(self) -> tuple[float, float]:
        import psutil

        times = psutil.cpu_times()
        own = psutil.Process().cpu_times()
        busy = sum(times) - times.idle - getattr(times, "iowait", 0.0)
        return busy, own.user + own.system + own.children_user + own.children_system

    def __enter__(self) -> "CpuCompetition":
        self._start = time.perf_counter()
        self._busy, self._own = self._busy_and_own()
        self.other_share = 0.0
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self._start
        busy, own = self._busy_and_own()
        others = max(0.0, (busy - self._busy) - (own - self._own))
        self.other_share = min(1.0, others / (wall * (os.cpu_count() or 1))) if wall > 0 else 0.0


def measure_matmul_gflops(precision: str, threads: int | None = None, n: int = 2048, repeats: int = 10) -> float:
    """Peak compute in GFLOP/s: one ``n x n`` matrix product compiled by OpenVINO in ``precision`` (``"f32"``,
    ``"bf16"`` or ``"int8"``) with ``threads`` threads, best of ``repeats`` runs (bf16 without bf16 instructions
    runs as f32). Written by hand: no installed library measures it for OpenVINO's kernels."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    if precision not in ("f32", "bf16", "int8"):
        raise ValueError(f"precision must be 'f32', 'bf16' or 'int8', got {precision!r}")
    x = ops.parameter([n, n], np.float32, name="x")
    weights = ops.constant(np.random.default_rng(0).standard_normal((n, n)).astype(np.float32))
    a, b = x, weights
    if precision == "int8":  # quantized as static quantization leaves them: u8 activations, i8 weights
        zero, low, high = (ops.constant(np.float32(v)) for v in (0.0, -4.0, 4.0))
        a = ops.fake_quantize(x, zero, high, zero, high, 256)
        b = ops.fake_quantize(weights, low, high, low, high, 255)
    model = ov.Model([ops.matmul(a, b, False, True)], [x])
    hint = "bf16" if precision == "bf16" else "f32"
    compiled = ov.Core().compile_model(model, "CPU", openvino_config(threads or default_threads(), hint))
    request = compiled.create_infer_request()
    data = np.abs(np.random.default_rng(1).standard_normal((n, n))).astype(np.float32)
    request.infer({0: data})
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        request.infer({0: data})
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def measure_read_bandwidth(size_mb: int = 1024, threads: int | None = None, repeats: int = 5) -> float:
    """Memory read bandwidth in GB/s: sum a ``size_mb`` array split over ``threads`` threads, best of ``repeats``.

    NumPy's sum releases the GIL, so the threads read their slices in parallel. Written by hand because no
    library we install measures it (STREAM and likwid are C tools).
    """
    import numpy as np

    threads = threads or default_threads()
    if size_mb < 64:
        raise ValueError(f"size_mb must be >= 64 so the array doesn't fit in cache, got {size_mb}")
    data = np.ones(size_mb * 1024 * 1024 // 4, dtype=np.float32)
    chunks = np.array_split(data, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(np.sum, chunks))  # warm-up: page in the array
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(np.sum, chunks))
            best = min(best, time.perf_counter() - start)
    return data.nbytes / best / 1e9


def versions() -> dict[str, str]:
    """Versions of Python and the packages whose speed or numbers the results depend on."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("torch", "transformers", "optimum", "optimum-intel", "openvino", "nncf", "numpy",
                    "openvino-genai", "sentence-transformers", "llama_cpp_python"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def machine(bandwidth_gb_s: dict[int, float] | None = None, threads: int | None = None) -> dict:
    """Facts about this machine for the results file: CPU model, cores, threads used, flags, memory, bandwidth."""
    import psutil

    facts = {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": usable_cores(),
        "threads_used": threads or default_threads(),
        "cpu_flags": sorted(cpu_flags().intersection(INTERESTING_FLAGS)),
        "bf16_instructions": supports_bf16(),
        "cache_MB": cache_sizes_mb(),
        "memory_GB": round(psutil.virtual_memory().total / 1e9, 1),
        "os": platform.platform(),
    }
    if bandwidth_gb_s:
        facts["read_bandwidth_GB_s"] = {str(k): float(f"{v:.4g}") for k, v in bandwidth_gb_s.items()}
    return facts
