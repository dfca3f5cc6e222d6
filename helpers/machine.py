"""The machine a measurement runs on: cores and threads, what OpenVINO's CPU plugin can do here, package versions,
peak memory of a block of work, and how much CPU other programs took meanwhile."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path


def usable_cores() -> int:
    """Logical cores this process may run on (its CPU affinity: containers and ``taskset`` limit it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@lru_cache(maxsize=1)
def cpu_capabilities() -> tuple[str, ...]:
    """What OpenVINO's CPU plugin says it can compute in here (``OPTIMIZATION_CAPABILITIES``: FP32, BF16, INT8...)."""
    import openvino as ov

    return tuple(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def supports_bf16() -> bool:
    """True when the CPU computes bf16 natively (where PyTorch BF16 is worth trying, and OpenVINO uses it)."""
    return "BF16" in cpu_capabilities()


def openvino_config(threads: int, **hints) -> dict:
    """``ov_config`` for ``from_pretrained``: ``threads`` inference threads, plus any CPU property in ``hints``
    (``INFERENCE_PRECISION_HINT="f32"``, ``KV_CACHE_PRECISION="u8"``, ``CACHE_DIR=...``)."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a whole number >= 1, got {threads!r}")
    return {"INFERENCE_NUM_THREADS": threads, **{k: str(v) for k, v in hints.items()}}


def versions() -> dict[str, str]:
    """Python and the packages whose speed or numbers the results depend on."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("torch", "transformers", "optimum-intel", "openvino", "nncf", "llama_cpp_python"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def facts(threads: int) -> dict:
    """This machine for a results file: CPU, cores, threads used, what OpenVINO computes in here, memory, OS."""
    import openvino as ov
    import psutil

    return {"cpu_model": str(ov.Core().get_property("CPU", "FULL_DEVICE_NAME")), "usable_cores": usable_cores(),
            "threads_used": threads, "openvino_capabilities": list(cpu_capabilities()),
            "memory_GB": round(psutil.virtual_memory().total / 1e9, 1), "os": platform.platform()}


def _peak_rss_kb(pid: int | str = "self") -> int | None:
    try:
        return int(re.search(r"VmHWM:\s+(\d+)", open(f"/proc/{pid}/status").read()).group(1))
    except (OSError, AttributeError):
        return None


def reset_peak(pid: int | str = "self") -> None:
    """Restart the kernel's high-water mark of a process's resident memory (``/proc/<pid>/clear_refs``, Linux)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb(pid: int | str = "self") -> int | None:
    """The most resident memory process ``pid`` held since it started or since :func:`reset_peak` (``VmHWM``)."""
    kb = _peak_rss_kb(pid)
    return None if kb is None else round(kb * 1024 / 1e6)


@contextmanager
def peak_memory() -> Iterator[dict]:
    """Time a block and read this process's peak resident memory over it from the kernel (no sampling); the yielded
    dict gets ``seconds``, ``peak_rss_MB`` and ``start_rss_MB`` on exit, even when the block fails."""
    import psutil

    result: dict = {}
    start_rss = psutil.Process().memory_info().rss
    reset_peak()
    start = time.perf_counter()
    try:
        yield result
    finally:
        peak = peak_rss_mb()
        result.update(seconds=round(time.perf_counter() - start, 1), start_rss_MB=round(start_rss / 1e6),
                      peak_rss_MB=peak if peak is not None else round(psutil.Process().memory_info().rss / 1e6))


class CpuCompetition:
    """``with CpuCompetition() as others:`` then ``others.share``: the share (0 to 1 of all cores) of CPU time that
    *other* processes used while the block ran, from the kernel's CPU-time counters (nothing is sampled)."""

    @staticmethod
    def _busy_and_own() -> tuple[float, float]:
        import psutil

        times, own = psutil.cpu_times(), psutil.Process().cpu_times()
        busy = sum(times) - times.idle - getattr(times, "iowait", 0.0)
        return busy, own.user + own.system + own.children_user + own.children_system

    def __enter__(self) -> "CpuCompetition":
        self._start, (self._busy, self._own), self.share = time.perf_counter(), self._busy_and_own(), 0.0
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self._start
        busy, own = self._busy_and_own()
        others = max(0.0, (busy - self._busy) - (own - self._own))
        self.share = min(1.0, others / (wall * (os.cpu_count() or 1))) if wall > 0 else 0.0


_PROBE = "import json, sys, openvino as ov; ov.Core().compile_model(sys.argv[1], 'CPU', json.loads(sys.argv[2]))"


@lru_cache(maxsize=None)
def _compiles(xml: str, config: str) -> bool:
    return subprocess.run([sys.executable, "-c", _PROBE, xml, config], capture_output=True, timeout=900).returncode == 0


def check_compiles(folder, config: dict) -> None:
    """A one-sentence ``RuntimeError`` where OpenVINO would kill the process compiling ``folder``'s language model
    with ``config``: OpenVINO 2026.4's CPU plugin died (SIGFPE) on some CPUs compiling FP32 weights in bf16 with one
    thread. So with one thread the compile is tried first in a child process (once per folder and settings)."""
    if int(config.get("INFERENCE_NUM_THREADS", 0)) != 1:
        return
    xml = Path(folder).resolve() / "openvino_language_model.xml"
    if not xml.is_file():  # not a crash of OpenVINO's: say what is missing (and cache no verdict for it)
        raise FileNotFoundError(f"There is no OpenVINO language model at {xml}: export the model first.")
    if not _compiles(str(xml), json.dumps(config, sort_keys=True)):
        raise RuntimeError(f"OpenVINO crashes compiling {xml.parent.name}'s language model with these settings "
                           f"({config}): give it 2 threads, or INFERENCE_PRECISION_HINT='f32'.")
