"""Exports appear complete or not at all: interrupted, damaged and stale folders are named and rebuilt."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from importlib.metadata import version

import pytest

from conftest import build_fake_export, fake_export, fake_hub_cache
from helpers import export, standins, store
from helpers.models import ModelChoice

SUBMODELS = ["language_model", "text_embeddings_model", "vision_embeddings_model"]  # what SmolVLM exports


def _set_fact(folder, key, value) -> None:
    """Edit a fact recorded in ``folder``'s build marker, as if it had been built in another environment."""
    marker = store.record(folder)
    marker["facts"][key] = value
    (folder / store.MARKER).write_text(json.dumps(marker))


def test_complete_build_is_moved_into_place_then_skipped(tmp_path, capsys):
    dest = tmp_path / "fp32"
    calls = []
    build_fake_export(dest, lambda f: calls.append(f) or fake_export(f))
    assert export.is_complete(dest) and not (tmp_path / "fp32.partial").exists()
    assert export.problems(dest) == [] and store.record(dest)["facts"] == export.facts(dest)
    capsys.readouterr()
    build_fake_export(dest, lambda f: calls.append(f) or fake_export(f))
    assert len(calls) == 1
    assert capsys.readouterr().out == f"Skipped: a complete build is already at {dest}\n"


def test_a_failing_build_leaves_nothing_that_looks_like_a_model(tmp_path):
    dest = tmp_path / "fp32"

    def crash(folder):
        (folder / "config.json").write_text("{}")
        raise KeyboardInterrupt  # the user pressed stop half-way

    with pytest.raises(KeyboardInterrupt):
        build_fake_export(dest, crash)
    assert not dest.exists() and not (tmp_path / "fp32.partial").exists()
    assert export.problems(dest) == ["not built yet"]


def test_an_incomplete_build_is_refused(tmp_path):
    dest = tmp_path / "fp32"
    with pytest.raises(RuntimeError) as err:
        build_fake_export(dest, lambda f: (f / "config.json").write_text("{}"))
    assert str(err.value) == (f"the build into {tmp_path / 'fp32.partial'} did not produce "
                              "openvino_language_model.xml, openvino_language_model.bin; nothing was moved into place")
    assert not dest.exists() and not (tmp_path / "fp32.partial").exists()


def test_leftovers_of_an_interrupted_run_are_reported_and_rebuilt(tmp_path, capsys):
    dest = tmp_path / "int8"
    (tmp_path / "int8.partial").mkdir()
    dest.mkdir()
    (dest / "config.json").write_text("{}")  # e.g. copied by hand, never finished
    build_fake_export(dest)
    out = capsys.readouterr().out
    assert (f"Found an unusable folder at {dest} (missing openvino_language_model.xml; missing "
            f"openvino_language_model.bin; {store.MARKER} is missing or damaged); rebuilding it.") in out
    assert f"Removing {tmp_path / 'int8.partial'}, left over from an interrupted run." in out
    assert export.is_complete(dest) and not (tmp_path / "int8.partial").exists()


def test_submodels_are_found_from_the_files(tmp_path):
    for stem in ("language_model", "vision_embeddings_model", "tokenizer", "detokenizer"):
        (tmp_path / f"openvino_{stem}.xml").write_text("<net/>")
    found = export.ir_files(tmp_path)
    assert list(found) == ["language_model", "vision_embeddings_model"]  # the tokenizer models are not submodels
    assert found["language_model"] == (tmp_path / "openvino_language_model.xml",
                                       tmp_path / "openvino_language_model.bin")


def test_tiny_model_exports_with_three_submodels(tiny):
    dest = export.export_fp32(tiny)
    import openvino as ov

    assert list(export.ir_files(dest)) == SUBMODELS
    assert all(len(ov.Core().read_model(xml).get_ops()) > 0 for xml, _ in export.ir_files(dest).values())
    assert export.ir_size_bytes(dest) == sum(x.stat().st_size + b.stat().st_size
                                             for x, b in export.ir_files(dest).values())
    assert standins.record(dest)["name"] == "synthetic-tiny"  # the stand-in label survives export
    facts = store.record(dest)["facts"]
    assert facts == export.facts(tiny.source) == export.facts(dest)
    assert facts["standin_version"] == standins.SPECS["synthetic-tiny"].version
    assert facts["optimum-intel"] == version("optimum-intel")
    assert (dest / "preprocessor_config.json").is_file()  # self-contained: the processor is saved with it


def test_a_truncated_weights_file_is_detected_named_and_rebuilt(tmp_path, capsys):
    dest = build_fake_export(tmp_path / "int8")
    bin_ = dest / "openvino_language_model.bin"
    bin_.write_bytes(b"\0" * 3)  # e.g. a copy to a USB stick that ran out of space
    assert export.problems(dest) == ["openvino_language_model.bin is 3 bytes but was 10 bytes when written"]
    assert not export.is_complete(dest)
    with pytest.raises(export.CorruptIRError) as err:
        export.check_ir(dest)
    assert str(err.value) == (f"{dest} is not a usable export: openvino_language_model.bin is 3 bytes but was 10 "
                              f"bytes when written; delete {dest} and run the notebook that made it again (it "
                              "rebuilds missing variants).")
    capsys.readouterr()
    build_fake_export(dest)
    assert (f"Found an unusable folder at {dest} (openvino_language_model.bin is 3 bytes but was 10 bytes when "
            "written); rebuilding it.") in capsys.readouterr().out
    assert bin_.stat().st_size == 10 and export.is_complete(dest)


def test_an_export_from_other_library_versions_is_stale(tmp_path, capsys):
    dest = build_fake_export(tmp_path / "fp32")
    _set_fact(dest, "optimum-intel", "1.25.2")
    assert not export.is_complete(dest)
    assert export.problems(dest) == [f"made with optimum-intel 1.25.2, this environment has {version('optimum-intel')}"]
    capsys.readouterr()
    build_fake_export(dest)
    assert (f"Found an unusable folder at {dest} (made with optimum-intel 1.25.2, this environment has "
            f"{version('optimum-intel')}); rebuilding it.") in capsys.readouterr().out
    assert export.is_complete(dest)


def test_an_ir_from_an_earlier_standin_build_is_stale(tmp_path, tiny_standin):
    def make(standin):
        def write(folder):
            fake_export(folder)
            (folder / "config.json").write_text(json.dumps({"model_type": "smolvlm", "standin": standin}))
        return write

    def build(dest, standin):  # as export_fp32 builds: the facts of the stand-in it is made from
        return store.build(dest, make(standin), facts=export.facts(tiny_standin), required=export.REQUIRED)

    tiny_version = standins.SPECS["synthetic-tiny"].version
    assert export.facts(tiny_standin)["standin_version"] == tiny_version
    current = build(tmp_path / "current", {"name": "synthetic-tiny", "note": "", "version": tiny_version})
    assert export.problems(current) == [] and export.facts(current)["standin_version"] == tiny_version
    older = build(tmp_path / "older", {"name": "synthetic-tiny", "note": "", "version": 3})
    _set_fact(older, "standin_version", 3)  # exported from the stand-in's build 3
    assert export.problems(older) == [f"made with standin_version 3, this environment has {tiny_version}"]
    plain = build_fake_export(tmp_path / "plain")  # not made from a stand-in
    assert export.facts(plain)["standin_version"] is None and export.problems(plain) == []


def test_an_export_of_an_earlier_standin_build_is_rebuilt(tiny, capsys):
    dest = export.export_fp32(tiny)
    now = standins.SPECS["synthetic-tiny"].version
    _set_fact(dest, "standin_version", now - 1)
    capsys.readouterr()
    assert export.export_fp32(tiny) == dest
    assert (f"Found an unusable folder at {dest} (made with standin_version {now - 1}, this environment has {now}); "
            "rebuilding it.") in capsys.readouterr().out
    assert export.is_complete(dest) and store.record(dest)["facts"]["standin_version"] == now


def test_check_ir_reads_the_graph_and_names_a_damaged_file(tmp_path, tiny):
    import shutil

    dest = tmp_path / "fp32"
    shutil.copytree(export.export_fp32(tiny), dest)
    assert export.check_ir(dest) == dest
    xml = dest / "openvino_vision_embeddings_model.xml"
    xml.write_text(xml.read_text()[:-200] + "#" * 200)  # same size, broken content: only parsing finds it
    assert export.is_complete(dest)
    with pytest.raises(export.CorruptIRError, match=f"^{xml} is corrupted \\(not valid XML: .*\\); delete {dest} "):
        export.check_ir(dest)


def test_a_weights_file_shorter_than_its_graph_needs_is_named(tmp_path, tiny):
    import shutil

    dest = tmp_path / "fp32"
    shutil.copytree(export.export_fp32(tiny), dest)
    weights = dest / "openvino_text_embeddings_model.bin"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[:size // 2])
    marker = store.record(dest)  # the recorded size in step with the cut file: only the graph tells
    marker["files"][weights.name] = size // 2
    (dest / store.MARKER).write_text(json.dumps(marker))
    with pytest.raises(export.CorruptIRError, match=f"^{weights} is corrupted \\(truncated: {size // 2} bytes, its "
                                                    "graph needs \\d+\\)"):
        export.check_ir(dest)


def test_not_enough_disk_is_said_before_writing(tmp_path, monkeypatch, capsys):
    import shutil
    from collections import namedtuple

    monkeypatch.setenv("VLM_MODELS_DIR", str(tmp_path))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 10**8, 10**8))
    dest = tmp_path / "fp32"
    with pytest.raises(store.InsufficientDiskSpaceError) as err:
        build_fake_export(dest, needed_bytes=10**9)
    assert str(err.value) == (f"Not enough disk space for {dest}: it needs about 1,000 MB and only 100 MB are free; "
                              "free some space (e.g. `make clean-models`) or set VLM_MODELS_DIR to a larger disk.")
    assert "This step writes about 1,000 MB; 0.1 GB free on" in capsys.readouterr().out
    assert not dest.exists() and not (tmp_path / "fp32.partial").exists()


def test_the_disk_an_export_needs_is_estimated_for_a_hub_id_in_the_cache_too(tmp_path, monkeypatch):
    fake_hub_cache(monkeypatch, tmp_path, "someone/some-vlm", {})
    assert export.estimate_bytes("someone/some-vlm") is None  # not downloaded yet
    config = json.dumps({"torch_dtype": "bfloat16"}).encode()
    fake_hub_cache(monkeypatch, tmp_path, "someone/some-vlm", {"config.json": config, "model.safetensors": b"0" * 1000})
    assert export.estimate_bytes("someone/some-vlm") == 2200  # bf16 weights become FP32, plus a tenth


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
    assert f"Removing {partial}, left over from an interrupted run." in rerun.stdout
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
    written = store.record(folder)
    _kill_midway(code, env, folder.parent / "fp32.partial")
    assert export.is_complete(folder) and store.record(folder) == written  # the old copy, untouched
    assert export.check_ir(folder) == folder


# A stand-in for optimum-cli: writes an export's files into the folder it is given last, prints, exits with argv[1].
CLI = (
    "import sys, pathlib\n"
    "out = pathlib.Path(sys.argv[-1])\n"
    "(out / 'config.json').write_text('{}')\n"
    f"for stem in {SUBMODELS!r}:\n"
    "    (out / f'openvino_{stem}.xml').write_text('<net/>'); (out / f'openvino_{stem}.bin').write_bytes(b'0')\n"
    "print('Failed to build model wrapper.'); print('Exporting the language model')\n"
    "print('x.py:1: TracerWarning: Converting a tensor to a Python boolean'); print('  if x > 0:')\n"
    "sys.exit(int(sys.argv[1]))\n"
)


def test_run_cli_shows_the_command_output_without_the_known_noise(tmp_path, capsys):
    choice = ModelChoice("someone/some-vlm", "someone/some-vlm", "some-vlm")
    export.run_cli([sys.executable, "-c", CLI, "0"], tmp_path / "fp32-cli", choice)
    out = capsys.readouterr().out
    assert "Exporting the language model" in out and "Failed to build model wrapper" not in out
    assert "TracerWarning" not in out and "if x > 0" not in out
    assert export.is_complete(tmp_path / "fp32-cli")
    assert store.record(tmp_path / "fp32-cli")["facts"] == export.facts(choice.source)


def test_run_cli_says_when_the_command_fails_and_keeps_nothing(tmp_path):
    choice = ModelChoice("someone/some-vlm", "someone/some-vlm", "some-vlm")
    with pytest.raises(RuntimeError) as err:
        export.run_cli([sys.executable, "-c", CLI, "3"], tmp_path / "fp32-cli", choice)
    assert str(err.value) == f"{sys.executable} failed with exit code 3; see its output above"
    assert not (tmp_path / "fp32-cli").exists() and not (tmp_path / "fp32-cli.partial").exists()
