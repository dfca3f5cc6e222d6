"""Machine facts, read-bandwidth measurement, explicit threads, and the OpenVINO compile probe."""

from __future__ import annotations

import math

import pytest

from helpers import hardware


def test_cpu_facts_are_consistent():
    flags = hardware.cpu_flags()
    assert hardware.supports_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})
    assert 1 <= hardware.usable_cores() <= (hardware.machine()["logical_cores"] or 1)
    assert hardware.cpu_model()


def test_usable_cores_and_default_threads_follow_the_cpu_affinity():
    """A container or ``taskset`` limiting the process to one core gives every runtime one thread."""
    import subprocess
    import sys

    probe = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); from helpers import hardware; "
             "print(hardware.usable_cores(), hardware.default_threads())")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["1", "1"]


def test_machine_record_has_what_the_results_need():
    facts = hardware.machine({1: 10.123, 2: 19.5}, threads=2)
    assert facts["threads_used"] == 2
    assert facts["read_bandwidth_GB_s"] == {"1": 10.12, "2": 19.5}  # JSON keys are strings
    assert set(facts["cpu_flags"]) <= set(hardware.INTERESTING_FLAGS)
    assert facts["memory_GB"] > 0
    assert "read_bandwidth_GB_s" not in hardware.machine()


def test_versions_name_the_stack():
    found = hardware.versions()
    for package in ("openvino", "optimum-intel", "transformers", "torch"):
        assert found[package][0].isdigit(), (package, found[package])


def test_read_bandwidth_is_a_plausible_positive_number():
    gb_s = hardware.measure_read_bandwidth(size_mb=128, threads=1, repeats=2)
    assert math.isfinite(gb_s) and 0.5 < gb_s < 2000


def test_bandwidth_refuses_an_array_that_fits_in_cache():
    with pytest.raises(ValueError, match="size_mb"):
        hardware.measure_read_bandwidth(size_mb=8)


def test_openvino_config_sets_threads_and_optional_precision():
    assert hardware.openvino_config(3) == {"INFERENCE_NUM_THREADS": 3}
    assert hardware.openvino_config(1, "f32") == {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32"}
    with pytest.raises(ValueError, match="threads"):
        hardware.openvino_config(0)


def test_set_torch_threads_applies_and_validates():
    import torch

    before = torch.get_num_threads()
    try:
        assert hardware.set_torch_threads(1) == 1 == torch.get_num_threads()
        with pytest.raises(ValueError):
            hardware.set_torch_threads(0)
    finally:
        torch.set_num_threads(before)


def _tiny_ir(folder):
    """A one-op OpenVINO model saved as ``openvino_language_model.xml`` (enough for the compile probe)."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([1, 4], np.float32, name="x")
    model = ov.Model([ops.relu(x)], [x], "tiny")
    ov.save_model(model, folder / "openvino_language_model.xml")


def test_compile_probe_says_yes_for_a_good_model_and_no_for_a_broken_one(tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    _tiny_ir(good)
    assert hardware.openvino_compiles(good, hardware.openvino_config(1))
    (bad / "openvino_language_model.xml").write_text("<net>not a model</net>")
    assert not hardware.openvino_compiles(bad, hardware.openvino_config(1))


def test_compile_probe_names_a_missing_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="openvino_language_model.xml"):
        hardware.openvino_compiles(tmp_path, {})


def test_cache_sizes_and_a_bandwidth_array_beyond_them():
    sizes = hardware.cache_sizes_mb()
    assert all(v > 0 for v in sizes.values())
    levels = [sizes[k] for k in ("L1d", "L2", "L3") if k in sizes]
    assert levels == sorted(levels)  # each level is larger than the one before
    array_mb = hardware.bandwidth_array_mb()
    assert 1024 <= array_mb <= 4096
    assert array_mb >= min(4 * max(sizes.values(), default=0), 4096)
    assert hardware.machine()["cache_MB"] == sizes


def test_cpu_competition_sees_another_busy_program_and_not_our_own_work():
    import subprocess
    import sys
    import time

    with hardware.CpuCompetition() as quiet:
        end = time.perf_counter() + 1.0
        while time.perf_counter() < end:  # our own work does not count
            pass
    spin = "import time\nend = time.time() + 1.5\nwhile time.time() < end: pass"
    other = subprocess.Popen([sys.executable, "-c", spin])
    try:
        with hardware.CpuCompetition() as busy:
            time.sleep(1.0)
    finally:
        other.wait()
    assert 0.0 <= quiet.other_share < busy.other_share <= 1.0
    assert busy.other_share > 0.5 / (hardware.os.cpu_count() or 1)  # one core of this machine's was busy
