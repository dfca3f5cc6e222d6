"""What machine the benchmark runs on, how fast it can read memory, and how many threads each runtime gets.

- :func:`machine` gathers the facts a result needs next to it: CPU model, cores, the instruction sets that
  matter for inference (AVX-512, VNNI, BF16, AMX), memory, and package versions (:func:`versions`).
- :func:`measure_read_bandwidth` measures how fast this machine reads a large array from memory: the limit of
  token-by-token decoding, which reads every weight of the language model once per token.
- :func:`openvino_config` and :func:`set_torch_threads` set threads explicitly, so PyTorch and OpenVINO get the
  same number and never fight over cores.
- :func:`openvino_compiles` tries a compile in a separate process first: OpenVINO 2026.4's CPU plugin crashes
  the whole process (SIGFPE) when compiling an FP32-weight language model in bf16 with one thread.
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
PACKAGES = ("torch", "transformers", "optimum", "optimum-intel", "openvino", "nncf", "numpy",
            "openvino-genai", "sentence-transformers", "llama_cpp_python")


def _cpuinfo() -> dict[str, str]:
    """The first processor block of /proc/cpuinfo as ``{key: value}`` (empty where there is no such file)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
    return info


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


def physical_cores() -> int | None:
    """Physical cores of the machine (psutil), or ``None`` where psutil can't tell."""
    import psutil

    return psutil.cpu_count(logical=False)


def cache_sizes_mb() -> dict[str, float]:
    """Sizes of the CPU caches one core sees, in MB (``{"L1d": ..., "L2": ..., "L3": ...}``; empty if unknown).

    A last-level cache larger than a model's weights per token lets decoding read faster than DRAM allows.
    """
    sizes: dict[str, float] = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        if kind == "Instruction":
            continue
        unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(size[-1:], 1)  # sysfs writes KiB as "K"
        name = f"L{level}" + ("d" if kind == "Data" else "")
        sizes[name] = round(float(size.rstrip("KMG")) * unit / 1e6, 2)
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
    """``ov_config`` for ``from_pretrained``: ``threads`` inference threads and, if given, a precision hint and a
    compile cache.

    ``precision`` (``"f32"``, ``"bf16"``...) overrides ``INFERENCE_PRECISION_HINT``; without it the CPU plugin
    picks its default (bf16 on CPUs with bf16 instructions, even for an FP32 IR). ``cache_dir`` sets OpenVINO's
    ``CACHE_DIR``: the compiled model is written there on the first load and read back on later ones.
    """
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


_PROBE = """
import json, sys
import openvino as ov
ov.Core().compile_model(sys.argv[1], "CPU", json.loads(sys.argv[2]))
"""


@lru_cache(maxsize=None)
def _openvino_compiles(xml: str, config_json: str) -> bool:
    result = subprocess.run([sys.executable, "-c", _PROBE, xml, config_json], capture_output=True, timeout=600)
    return result.returncode == 0


def openvino_compiles(folder: Path, config: dict, submodel: str = "openvino_language_model") -> bool:
    """True when ``submodel`` of the IR in ``folder`` compiles on CPU with ``config``, tried in a child process.

    A separate process because the failure this guards against kills the process: OpenVINO 2026.4's CPU
    plugin dies with a floating-point exception when it compiles a language model with FP32 weights in bf16
    with ``INFERENCE_NUM_THREADS=1`` (also reported upstream as openvino issue 33300 for ``taskset -c 0``).
    Results are cached per folder and config.
    """
    xml = Path(folder) / f"{submodel}.xml"
    if not xml.is_file():
        raise FileNotFoundError(f"no {xml.name} in {folder}")
    return _openvino_compiles(str(xml.resolve()), json.dumps(config, sort_keys=True))


class CpuCompetition:
    """Context manager: the share of the machine's CPU that *other* processes used while the block ran
    (``other_share``, 0 to 1 of all cores), from the kernel's CPU-time counters: cheap, nothing is sampled.

    Measurements on a shared machine are only as good as its quiet moments; a benchmark records this beside each
    figure and says so when another program competed.
    """

    def _busy_and_own(self) -> tuple[float, float]:
        import psutil

        times = psutil.cpu_times()
        busy = sum(times) - times.idle - getattr(times, "iowait", 0.0)
        own = psutil.Process().cpu_times()
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


def _matmul_model(n: int, int8: bool):
    """An OpenVINO model of one ``n x n`` by ``n x n`` matrix product; with ``int8``, both inputs quantized as
    static quantization leaves them (unsigned 8-bit activations, signed 8-bit weights), so the CPU plugin
    runs it with its int8 kernels."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([n, n], np.float32, name="x")
    weights = ops.constant(np.random.default_rng(0).standard_normal((n, n)).astype(np.float32))
    a, b = x, weights
    if int8:
        zero, low, high = (ops.constant(np.float32(v)) for v in (0.0, -4.0, 4.0))
        a = ops.fake_quantize(x, zero, high, zero, high, 256)
        b = ops.fake_quantize(weights, low, high, low, high, 255)
    return ov.Model([ops.matmul(a, b, False, True)], [x])


def measure_matmul_gflops(precision: str, threads: int | None = None, n: int = 2048, repeats: int = 10) -> float:
    """What this CPU computes at most, in GFLOP/s: one ``n x n`` matrix product compiled by OpenVINO in
    ``precision`` (``"f32"``, ``"bf16"`` or ``"int8"``) with ``threads`` threads, best of ``repeats`` runs.

    A large matrix product is the best case for the arithmetic units (the weights stay in cache and are reused
    ``n`` times), so this is the compute limit a vision encoder or a prefill can approach. Written by hand: no
    installed library measures it for OpenVINO's kernels. bf16 on a CPU without bf16 instructions runs as f32.
    """
    import numpy as np
    import openvino as ov

    if precision not in ("f32", "bf16", "int8"):
        raise ValueError(f"precision must be 'f32', 'bf16' or 'int8', got {precision!r}")
    hint = "bf16" if precision == "bf16" else "f32"
    compiled = ov.Core().compile_model(_matmul_model(n, precision == "int8"), "CPU",
                                      openvino_config(threads or default_threads(), hint))
    request = compiled.create_infer_request()
    x = np.abs(np.random.default_rng(1).standard_normal((n, n))).astype(np.float32)
    request.infer({0: x})
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        request.infer({0: x})
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def measure_read_bandwidth(size_mb: int = 1024, threads: int | None = None, repeats: int = 5) -> float:
    """Memory read bandwidth in GB/s: sum a ``size_mb`` array split over ``threads`` threads, best of ``repeats``.

    Read bandwidth, not copy or write: decoding reads weights. NumPy's sum releases the GIL, so threads read
    their slices in parallel. The array must be much larger than the CPU caches (:func:`bandwidth_array_mb`);
    the best of several runs is the figure, since other programs on the machine only ever slow a run down.
    Written by hand because no library we install measures it (STREAM and likwid are C tools).
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
    for package in PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def machine(bandwidth_gb_s: dict[int, float] | None = None, threads: int | None = None) -> dict:
    """Facts about this machine for the results file: CPU model, cores, threads used, flags, memory, bandwidth."""
    import psutil

    flags = cpu_flags()
    facts = {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": physical_cores(),
        "usable_cores": usable_cores(),
        "threads_used": threads or default_threads(),
        "cpu_flags": sorted(f for f in INTERESTING_FLAGS if f in flags),
        "bf16_instructions": supports_bf16(),
        "cache_MB": cache_sizes_mb(),
        "memory_GB": round(psutil.virtual_memory().total / 1e9, 1),
        "os": platform.platform(),
    }
    if bandwidth_gb_s:
        facts["read_bandwidth_GB_s"] = {str(k): float(f"{v:.4g}") for k, v in bandwidth_gb_s.items()}
    return facts
