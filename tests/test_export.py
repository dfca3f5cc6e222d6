"""Atomic exports: a folder is either complete or absent; interrupted runs are detected and rebuilt."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import fake_export

from helpers import export


def test_complete_build_is_moved_into_place_then_skipped(tmp_path, capsys):
    dest = tmp_path / "fp32"
    calls = []
    export.build_atomically(dest, lambda f: calls.append(f) or fake_export(f))
    assert export.is_complete(dest) and not (tmp_path / "fp32.partial").exists()
    export.build_atomically(dest, lambda f: calls.append(f) or fake_export(f))
    assert len(calls) == 1
    assert "Skipped" in capsys.readouterr().out


def test_a_failing_build_leaves_nothing_that_looks_like_a_model(tmp_path):
    dest = tmp_path / "fp32"

    def crash(folder):
        (folder / "config.json").write_text("{}")
        raise KeyboardInterrupt  # the user pressed stop half-way

    with pytest.raises(KeyboardInterrupt):
        export.build_atomically(dest, crash)
    assert not dest.exists()


def test_an_incomplete_build_is_refused(tmp_path):
    dest = tmp_path / "fp32"
    with pytest.raises(RuntimeError, match="openvino_language_model.xml"):
        export.build_atomically(dest, lambda f: (f / "config.json").write_text("{}"))
    assert not dest.exists()


def test_leftovers_of_an_interrupted_run_are_reported_and_rebuilt(tmp_path, capsys):
    dest = tmp_path / "int8"
    (tmp_path / "int8.partial").mkdir()
    dest.mkdir()
    (dest / "config.json").write_text("{}")  # e.g. copied by hand, never finished
    export.build_atomically(dest, fake_export)
    out = capsys.readouterr().out
    assert "unusable folder" in out and "missing openvino_language_model.xml" in out and "interrupted run" in out
    assert export.is_complete(dest)


def test_tiny_model_exports_with_three_submodels(tmp_path, tiny_standin):
    from optimum.intel import OVModelForVisualCausalLM
    from transformers import AutoProcessor

    def build(folder):
        OVModelForVisualCausalLM.from_pretrained(tiny_standin, export=True, compile=False).save_pretrained(folder)
        AutoProcessor.from_pretrained(tiny_standin).save_pretrained(folder)

    dest = export.build_atomically(tmp_path / "fp32", build)
    table = export.describe_submodels(dest)
    assert list(table.index) == list(export.SUBMODELS)
    assert (table["operations"] > 0).all()
    assert export.ir_size_bytes(dest) == pytest.approx(table["size_MB"].sum() * 1e6, rel=0.05)
    from helpers import synthetic

    assert synthetic.read_marker(dest)["name"] == "synthetic-tiny"  # the stand-in label survives export


def test_a_truncated_weights_file_is_detected_named_and_rebuilt(tmp_path, capsys):
    dest = export.build_atomically(tmp_path / "int8", fake_export)
    bin_ = dest / "openvino_language_model.bin"
    bin_.write_bytes(b"\0" * 3)  # e.g. a copy to a USB stick that ran out of space
    assert export.problems(dest) == ["openvino_language_model.bin is 3 bytes but was 10 bytes when written"]
    with pytest.raises(export.CorruptIRError, match="openvino_language_model.bin is 3 bytes.*delete .*int8"):
        export.check_ir(dest)
    export.build_atomically(dest, fake_export)
    assert "unusable folder" in capsys.readouterr().out and bin_.stat().st_size == 10


def test_an_export_from_other_library_versions_is_stale(tmp_path):
    dest = export.build_atomically(tmp_path / "fp32", fake_export)
    marker = json.loads((dest / export.COMPLETE_MARKER).read_text())
    marker["optimum-intel"] = "1.25.2"
    (dest / export.COMPLETE_MARKER).write_text(json.dumps(marker))
    assert not export.is_complete(dest)
    assert any("made with optimum-intel 1.25.2" in p for p in export.problems(dest))


def test_check_ir_reads_the_graph_and_names_a_damaged_file(tmp_path, tiny_standin):
    from optimum.intel import OVModelForVisualCausalLM
    from transformers import AutoProcessor

    def build(folder):
        OVModelForVisualCausalLM.from_pretrained(tiny_standin, export=True, compile=False).save_pretrained(folder)
        AutoProcessor.from_pretrained(tiny_standin).save_pretrained(folder)

    dest = export.build_atomically(tmp_path / "fp32", build)
    assert export.check_ir(dest) == dest
    xml = dest / "openvino_vision_embeddings_model.xml"
    xml.write_text(xml.read_text()[:-200] + "#" * 200)  # same size, broken content: only parsing finds it
    with pytest.raises(export.CorruptIRError, match="openvino_vision_embeddings_model.xml is corrupted"):
        export.check_ir(dest)


def test_not_enough_disk_is_said_before_writing(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 10**8, 10**8))
    with pytest.raises(export.InsufficientDiskSpaceError, match=r"needs about 1,000 MB and only 100 MB are free"):
        export.build_atomically(tmp_path / "fp32", fake_export, needed_bytes=10**9)
    assert not (tmp_path / "fp32").exists() and not (tmp_path / "fp32.partial").exists()


def _kill_midway(code: str, env: dict, partial) -> None:
    """Run ``code`` in a new process and kill it (SIGKILL) a second after ``partial`` appears."""
    victim = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not partial.exists() and time.time() < deadline and victim.poll() is None:
        time.sleep(0.05)
    time.sleep(1.0)  # in the middle of tracing and converting
    assert victim.poll() is None, "the export finished before it could be killed"
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()


def test_killing_an_export_midway_then_rerunning_rebuilds_it(tmp_path, tiny_standin):
    env = dict(os.environ, VLM_MODEL="synthetic-tiny", VLM_MODELS_DIR=str(tmp_path))
    code = "from helpers import export, models; export.export_fp32(models.resolve_model())"
    partial = tmp_path / "synthetic-tiny" / "fp32.partial"
    _kill_midway(code, env, partial)
    assert partial.exists() and not (tmp_path / "synthetic-tiny" / "fp32").exists()

    rerun = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "left over from an interrupted run" in rerun.stdout
    assert export.is_complete(tmp_path / "synthetic-tiny" / "fp32") and not partial.exists()


def test_a_clean_load_prints_nothing_that_looks_like_an_error(tmp_path, tiny_standin):
    """optimum-intel logs a harmless "Could not infer whether the model was already converted ... [Errno 2]" on
    every offline load; helpers.quiet drops exactly that message at its logger."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLM_MODEL="synthetic-tiny", VLM_MODELS_DIR=str(tmp_path))
    code = """
from pathlib import Path
from helpers import chat, export, models
folder = export.export_fp32(models.resolve_model())
print("LOADING", flush=True)
from optimum.intel import OVModelForVisualCausalLM
chat.load_model(folder)
OVModelForVisualCausalLM.from_pretrained(Path(folder))
OVModelForVisualCausalLM.from_pretrained(str(folder))
"""
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    export_output, _, load_output = (run.stdout + run.stderr).partition("LOADING")
    assert "Failed to build model wrapper" not in export_output
    for alarming in ("error", "errno", "traceback", "could not", "failed", "exception", "takes 2 positional"):
        assert alarming not in load_output.lower(), load_output


@pytest.mark.slow
def test_killing_a_forced_rebuild_keeps_the_old_copy(tmp_path, tiny_standin):
    env = dict(os.environ, VLM_MODEL="synthetic-tiny", VLM_MODELS_DIR=str(tmp_path))
    code = "from helpers import export, models; export.export_fp32(models.resolve_model(), force=True)"
    folder = tmp_path / "synthetic-tiny" / "fp32"
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0 and export.is_complete(folder), first.stdout + first.stderr
    written = export.read_marker(folder)
    _kill_midway(code, env, folder.parent / "fp32.partial")
    assert export.is_complete(folder) and export.read_marker(folder) == written  # the old copy, untouched
    assert export.check_ir(folder) == folder


def test_run_cli_streams_the_command_output_without_the_known_noise(tmp_path, capsys):
    script = (
        "import sys, pathlib\n"
        "out = pathlib.Path(sys.argv[1])\n"
        f"for name in {list(export.LOAD_FILES)!r}: (out / name).write_text('{{}}')\n"
        f"for stem in {list(export.SUBMODELS.values())!r}:\n"
        "    (out / (stem + '.xml')).write_text('<net/>'); (out / (stem + '.bin')).write_bytes(b'0')\n"
        "print('Failed to build model wrapper.'); print('Exporting the language model')\n"
    )
    export.run_cli([sys.executable, "-c", script], tmp_path / "fp32-cli")
    out = capsys.readouterr().out
    assert "Exporting the language model" in out and "Failed to build model wrapper" not in out
    assert export.is_complete(tmp_path / "fp32-cli")
