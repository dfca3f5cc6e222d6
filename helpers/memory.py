"""Peak memory of a block of work, the course's one memory sampler: a thread reads RSS (psutil ``memory_info()``,
microseconds) every ``interval`` s and records its own CPU cost (``sampler_cpu_s``). RSS, not PSS: reading
``/proc/<pid>/smaps`` for PSS took about 12% of a core; the price is that pages shared with a child process count
twice, and a spike shorter than ``interval`` can be missed.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator


class PeakMemory:
    """Context manager: the peak RSS of process ``pid`` (default: this one), plus its children's if asked."""

    def __init__(self, pid: int | None = None, *, children: bool = False, interval: float = 0.1) -> None:
        import psutil

        self.process = psutil.Process(pid)
        self.children = children
        self.interval = interval
        self.start_bytes = self.peak_bytes = 0
        self.seconds = self.sampler_cpu_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_stopped, daemon=True)

    def rss_bytes(self) -> int:
        """RSS of the process now (plus its living children's, with ``children``)."""
        import psutil

        processes = [self.process]
        if self.children:
            try:
                processes += self.process.children(recursive=True)
            except psutil.Error:
                pass
        total = 0
        for p in processes:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass  # a child that ended between listing and reading
        return total

    def _sample_until_stopped(self) -> None:
        start = time.thread_time()
        while not self._stop.wait(self.interval):
            self.peak_bytes = max(self.peak_bytes, self.rss_bytes())
        self.sampler_cpu_s = time.thread_time() - start

    def __enter__(self) -> "PeakMemory":
        self.start_bytes = self.peak_bytes = self.rss_bytes()
        self._started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._started
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self.rss_bytes())

    def as_dict(self) -> dict:
        """``seconds``, ``peak_rss_MB``, ``start_rss_MB`` and ``sampler_cpu_s`` (what the sampling cost)."""
        return {"seconds": round(self.seconds, 1), "peak_rss_MB": round(self.peak_bytes / 1e6),
                "start_rss_MB": round(self.start_bytes / 1e6), "sampler_cpu_s": round(self.sampler_cpu_s, 3)}


@contextmanager
def measure(interval: float = 0.1) -> Iterator[dict]:
    """Time a block and sample this process's peak RSS; the yielded dict is filled on exit (:meth:`PeakMemory.as_dict`).
    Children are left out: the libraries fork short-lived helpers whose RSS repeats the parent's shared pages."""
    result: dict = {}
    sampler = PeakMemory(interval=interval)
    try:
        with sampler:
            yield result
    finally:
        result.update(sampler.as_dict())
