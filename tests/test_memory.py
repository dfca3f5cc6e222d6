"""helpers.memory: the one memory sampler (a variant's benchmark, a quantization, a whole notebook)."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import memory


def test_measure_sees_memory_allocated_inside_the_block():
    with memory.measure(interval=0.02) as cost:
        block = np.ones(40_000_000, dtype=np.float64)  # 320 MB, touched
        time.sleep(0.2)
        del block
    assert cost["peak_rss_MB"] - cost["start_rss_MB"] >= 250
    assert cost["seconds"] >= 0.2
    assert 0 <= cost["sampler_cpu_s"] < cost["seconds"]


def test_measure_fills_its_figures_when_the_block_fails():
    with pytest.raises(ValueError):
        with memory.measure(interval=0.02) as cost:
            raise ValueError("the block failed")
    assert cost["peak_rss_MB"] >= cost["start_rss_MB"] > 0


def test_a_child_process_counts_only_when_asked():
    # a child that holds 300 MB for a second, as optimum-cli does under a notebook's kernel
    code = "import numpy, time; b = numpy.ones(37_500_000); time.sleep(1.5)"
    with memory.PeakMemory(children=True, interval=0.05) as tree, memory.PeakMemory(interval=0.05) as alone:
        subprocess.run([sys.executable, "-c", code], check=True)
    assert tree.peak_bytes - tree.start_bytes >= 250e6
    assert alone.peak_bytes - alone.start_bytes < 100e6
    assert tree.as_dict()["sampler_cpu_s"] < tree.seconds
