"""helpers.machine: cores and threads, what OpenVINO computes in here, versions, the kernel's peak memory of a
block (a build, a benchmark, a whole notebook), other programs' CPU share, and the OpenVINO compile probe."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import machine

# --- peak memory -----------------------------------------------------------------------------------------------


def test_peak_memory_sees_memory_allocated_inside_the_block():
    with machine.peak_memory() as cost:
        block = np.ones(40_000_000, dtype=np.float64)  # 320 MB, touched
        time.sleep(0.2)
        del block
    assert cost["peak_rss_MB"] - cost["start_rss_MB"] >= 250
    assert cost["seconds"] >= 0.2


def test_peak_memory_starts_from_the_block_not_from_earlier_peaks():
    """The kernel's high-water mark is reset at the start: memory held and freed before the block doesn't count."""
    block = np.ones(50_000_000, dtype=np.float64)  # 400 MB, then handed back to the OS
    del block
    with machine.peak_memory() as cost:
        time.sleep(0.05)
    assert cost["peak_rss_MB"] - cost["start_rss_MB"] < 100


def test_peak_memory_fills_its_figures_when_the_block_fails():
    with pytest.raises(ValueError):
        with machine.peak_memory() as cost:
            raise ValueError("the block failed")
    assert cost["peak_rss_MB"] >= cost["start_rss_MB"] > 0 and cost["seconds"] >= 0


def test_a_child_process_counts_only_when_asked_by_its_pid():
    # a child that holds 300 MB, then frees it, as optimum-cli or a notebook's kernel do under `make run`
    code = ("import numpy, sys, time; b = numpy.ones(37_500_000); print('held', flush=True); sys.stdin.readline(); "
            "del b; print('freed', flush=True); sys.stdin.readline()")
    with machine.peak_memory() as alone:
        child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
        try:
            assert child.stdout.readline().strip() == "held"
            assert machine.peak_rss_mb(child.pid) >= 300
            child.stdin.write("\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "freed"
            assert machine.peak_rss_mb(child.pid) >= 300  # the high-water mark remembers
            machine.reset_peak(child.pid)
            assert machine.peak_rss_mb(child.pid) < 100  # until it is reset
        finally:
            child.stdin.write("\n")
            child.stdin.flush()
            child.wait(timeout=60)
    assert alone["peak_rss_MB"] - alone["start_rss_MB"] < 100  # this process's own figure leaves the child out
    assert machine.peak_rss_mb(child.pid) is None  # gone: no figure, no error
    assert machine.peak_rss_mb() > 0


# --- other programs' CPU ---------------------------------------------------------------------------------------


def test_cpu_competition_sees_another_busy_program_and_not_our_own_work():
    with machine.CpuCompetition() as quiet:
        end = time.perf_counter() + 1.0
        while time.perf_counter() < end:  # our own work does not count
            pass
    spin = "import time\nend = time.time() + 1.5\nwhile time.time() < end: pass"
    other = subprocess.Popen([sys.executable, "-c", spin])
    try:
        with machine.CpuCompetition() as busy:
            time.sleep(1.0)
    finally:
        other.wait()
    assert 0.0 <= quiet.share < busy.share <= 1.0
    assert busy.share > 0.5 / (os.cpu_count() or 1)  # one core of this machine's was busy


# --- the machine ---------------------------------------------------------------------------------------------


def test_cpu_facts_are_consistent():
    capabilities = machine.cpu_capabilities()
    assert "FP32" in capabilities and machine.supports_bf16() == ("BF16" in capabilities)
    flags = set(re.search(r"^flags\s*:(.*)$", open("/proc/cpuinfo").read(), re.M).group(1).split())
    if flags & {"avx512_bf16", "amx_bf16"}:  # bf16 instructions: OpenVINO computes in bf16 here
        assert machine.supports_bf16()
    assert 1 <= machine.usable_cores() <= (os.cpu_count() or 1)


def test_usable_cores_follow_the_cpu_affinity():
    """A container or ``taskset`` limiting the process to one core gives every runtime one thread."""
    probe = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); from helpers import machine; "
             "print(machine.usable_cores())")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["1"]


def test_machine_record_has_what_the_results_need():
    facts = machine.facts(threads=2)
    assert facts["threads_used"] == 2 and facts["usable_cores"] == machine.usable_cores()
    assert facts["cpu_model"].strip() and facts["os"] and facts["memory_GB"] > 0
    assert facts["openvino_capabilities"] == list(machine.cpu_capabilities())
    assert json.loads(json.dumps(facts)) == facts  # goes into results.json as it is


def test_versions_name_the_stack():
    found = machine.versions()
    for package in ("python", "openvino", "optimum-intel", "transformers", "torch", "nncf"):
        assert found[package][0].isdigit(), (package, found[package])


def test_openvino_config_sets_threads_and_optional_hints():
    assert machine.openvino_config(3) == {"INFERENCE_NUM_THREADS": 3}
    assert machine.openvino_config(1, INFERENCE_PRECISION_HINT="f32") == {"INFERENCE_NUM_THREADS": 1,
                                                                          "INFERENCE_PRECISION_HINT": "f32"}
    for bad in (0, -1, 2.0, "2", None):
        with pytest.raises(ValueError, match="threads must be a whole number >= 1"):
            machine.openvino_config(bad)


# --- the compile probe ------------------------------------------------------------------------------------------


def _tiny_ir(folder):
    """A one-op OpenVINO model saved as ``openvino_language_model.xml`` (enough for the compile probe)."""
    import openvino as ov
    import openvino.opset13 as ops

    folder.mkdir()
    x = ops.parameter([1, 4], np.float32, name="x")
    ov.save_model(ov.Model([ops.relu(x)], [x], "tiny"), folder / "openvino_language_model.xml")


def test_compile_probe_says_nothing_for_a_good_model_and_one_sentence_for_a_broken_one(tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    _tiny_ir(good)
    machine.check_compiles(good, machine.openvino_config(1))
    bad.mkdir()
    (bad / "openvino_language_model.xml").write_text("<net>not a model</net>")
    config = machine.openvino_config(1, INFERENCE_PRECISION_HINT="bf16")
    with pytest.raises(RuntimeError) as err:
        machine.check_compiles(bad, config)
    assert str(err.value) == (f"OpenVINO crashes compiling bad's language model with these settings ({config}): "
                              "give it 2 threads, or INFERENCE_PRECISION_HINT='f32'.")


def test_compile_probe_runs_only_where_openvino_crashes(tmp_path, monkeypatch):
    monkeypatch.setattr(machine, "_compiles", lambda xml, config: pytest.fail("must not probe with 2 threads"))
    machine.check_compiles(tmp_path, machine.openvino_config(2))  # OpenVINO crashes with one thread only


def test_compile_probe_names_a_missing_model(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"^There is no OpenVINO language model at "
                                                f"{tmp_path}/openvino_language_model.xml: export the model first.$"):
        machine.check_compiles(tmp_path, machine.openvino_config(1))
