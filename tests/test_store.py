"""Two processes on the same folders, interrupted rebuilds, disks that refuse writes (helpers/store.py), and the
test session's own folders.

A killed forced rebuild is tested beside the killed export, in test_export.py.

The concurrent tests start real processes that wait at a starting line and then build the same folder at the same
moment, as two notebooks (or ``make run`` and JupyterLab) would.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import MAKE_RUN_DIR, MAKE_RUN_MODELS, REPO, TEST_RUN_DIR, build_fake_export, fake_export, session_folders
from helpers import export, standins, store

HEADER = """
import sys, time
from pathlib import Path
from helpers import export, models, recipes, standins
Path(sys.argv[1]).touch()  # ready: libraries imported
while not Path(sys.argv[2]).exists():
    time.sleep(0.01)
"""


def _run_together(code: str, env: dict, folder: Path, n: int = 2, timeout: float = 600) -> list[tuple[int, str]]:
    """Start ``n`` processes running ``code``; release them at the same moment; their exit codes and output."""
    go = folder / "go"
    ready = [folder / f"ready{i}" for i in range(n)]
    procs = [subprocess.Popen([sys.executable, "-c", HEADER + code, str(ready[i]), str(go)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(n)]
    deadline = time.time() + 300
    while not all(r.exists() for r in ready) and time.time() < deadline:
        time.sleep(0.05)
    go.touch()
    return [(p.wait(timeout=timeout), p.stdout.read()) for p in procs]


@pytest.fixture
def env(tmp_path, tiny_standin):
    """Environment for child processes: the tiny stand-in (already built), models in a fresh folder."""
    return dict(os.environ, VLM_MODEL="synthetic-tiny", VLM_MODELS_DIR=str(tmp_path / "models"))


@pytest.mark.slow
def test_two_processes_building_the_same_standin_both_succeed(tmp_path, env):
    from transformers import AutoProcessor, SmolVLMForConditionalGeneration

    env["VLM_CACHE"] = str(tmp_path / "cache")
    results = _run_together("standins.build('synthetic-tiny', models.standin_path('synthetic-tiny'))", env, tmp_path)
    assert all(code == 0 for code, _ in results), results
    assert sum("Another process is building" in out for _, out in results) == 1, results
    folder = tmp_path / "cache" / "standins" / "synthetic-tiny"
    facts = {"standin": "synthetic-tiny", "version": standins.SPECS["synthetic-tiny"].version}
    assert store.problems(folder, facts, ("config.json", "model.safetensors")) == []
    assert not list(folder.parent.glob("*.partial")) and not list(folder.parent.glob("*.old"))
    assert standins.record(folder)["name"] == "synthetic-tiny"
    SmolVLMForConditionalGeneration.from_pretrained(folder)
    AutoProcessor.from_pretrained(folder)


@pytest.mark.slow
def test_two_processes_exporting_the_same_model_both_succeed(tmp_path, env):
    from helpers import chat

    results = _run_together("export.export_fp32(models.resolve_model())", env, tmp_path)
    assert all(code == 0 for code, _ in results), results
    waited = [out for _, out in results if "Another process is building" in out]
    folder = tmp_path / "models" / "synthetic-tiny" / "fp32"
    assert len(waited) == 1 and f"Skipped: a complete build is already at {folder}" in waited[0], results
    assert export.is_complete(folder) and not (folder.parent / "fp32.partial").exists()
    chat.load_model(folder)


@pytest.mark.slow
def test_two_processes_quantizing_the_same_variant_both_succeed(tmp_path, env):
    from helpers import recipes

    results = _run_together("recipes.build(models.resolve_model(), 'int8')", env, tmp_path)
    assert all(code == 0 for code, _ in results), results
    assert sum("Another process is building" in out for _, out in results) >= 1, results
    folder = tmp_path / "models" / "synthetic-tiny" / "int8"
    assert export.check_ir(folder) == folder
    assert (recipes.count_quantized(folder)["int8"] > 0).all()


def test_a_folder_set_aside_by_a_dead_rebuild_is_put_back(tmp_path, capsys):
    dest = tmp_path / "fp32"
    calls = []

    def make(folder):
        calls.append(folder)
        fake_export(folder)

    build_fake_export(dest, make)
    os.replace(dest, tmp_path / "fp32.old")  # killed between the two renames of a forced rebuild
    capsys.readouterr()
    build_fake_export(dest, make)
    assert len(calls) == 1 and export.is_complete(dest) and not (tmp_path / "fp32.old").exists()
    out = capsys.readouterr().out
    assert f"Restored {dest} from fp32.old, set aside by a rebuild that did not finish." in out
    assert f"Skipped: a complete build is already at {dest}" in out


def _fake_export_then(error: OSError):
    def make(folder):
        (folder / "config.json").write_text("{}")
        raise error

    return make


def test_a_disk_that_fills_up_mid_build_is_said_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("VLM_MODELS_DIR", str(tmp_path))
    dest = tmp_path / "fp32"
    with pytest.raises(store.InsufficientDiskSpaceError) as err:
        build_fake_export(dest, _fake_export_then(OSError(errno.ENOSPC, "No space left on device")))
    assert str(err.value) == (f"The disk ran full while writing {dest}; nothing half-written was kept. Free some "
                              "space (e.g. `make clean-models`) or set VLM_MODELS_DIR to a folder on a larger disk, "
                              "then run again.")
    assert not dest.exists() and not (tmp_path / "fp32.partial").exists()


def test_a_full_disk_reported_without_an_errno_is_said_too(tmp_path, monkeypatch):
    """OpenVINO's save_model says only "basic_ios::clear: iostream error" when the disk runs full."""
    monkeypatch.setenv("VLM_MODELS_DIR", str(tmp_path))
    dest = tmp_path / "fp32"
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(store.shutil, "disk_usage", lambda path: usage._replace(free=store.NEARLY_FULL_BYTES - 1))
    with pytest.raises(store.InsufficientDiskSpaceError, match=r"^The disk ran full while writing "):
        build_fake_export(dest, _fake_export_then(RuntimeError("basic_ios::clear: iostream error")))
    assert not dest.exists() and not (tmp_path / "fp32.partial").exists()
    monkeypatch.setattr(store.shutil, "disk_usage", lambda path: usage._replace(free=10 * store.NEARLY_FULL_BYTES))
    with pytest.raises(RuntimeError, match=r"^basic_ios::clear: iostream error$"):  # room left: the error as it is
        build_fake_export(dest, _fake_export_then(RuntimeError("basic_ios::clear: iostream error")))


def test_a_full_disk_in_the_cache_names_the_cache_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("VLM_CACHE", str(tmp_path))
    dest = tmp_path / "standins" / "synthetic-tiny"
    with pytest.raises(store.InsufficientDiskSpaceError, match=r"or set VLM_CACHE to a folder on a larger disk"):
        store.build(dest, _fake_export_then(OSError(errno.EDQUOT, "Disk quota exceeded")))
    assert not dest.exists() and not dest.with_name("synthetic-tiny.partial").exists()


def test_a_read_only_models_folder_is_said_with_the_way_out(tmp_path, monkeypatch):
    monkeypatch.setenv("VLM_MODELS_DIR", str(tmp_path))
    dest = tmp_path / "synthetic-tiny" / "fp32"
    with pytest.raises(store.NotWritableError) as err:
        build_fake_export(dest, _fake_export_then(OSError(errno.EROFS, "Read-only file system")))
    assert str(err.value) == (f"Cannot write to {dest} (read-only file system): set VLM_MODELS_DIR to a folder you "
                              "can write to, then run again.")
    assert not dest.exists() and not dest.with_name("fp32.partial").exists()

    import filelock

    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(filelock.FileLock, "acquire", refuse)  # the lock file itself can't be created
    with pytest.raises(store.NotWritableError) as err:
        build_fake_export(dest, _fake_export_then(OSError()))
    assert str(err.value) == (f"Cannot write to {dest} (permission denied): set VLM_MODELS_DIR to a folder you can "
                              "write to, then run again.")


def test_a_full_disk_elsewhere_names_that_place_and_its_setting(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("VLM_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf"))
    dest, blob = tmp_path / "models" / "m" / "fp32", tmp_path / "hf" / "hub" / "blob"
    problem = store.disk_error(dest, OSError(errno.ENOSPC, "No space left on device", str(blob)))
    assert str(problem).startswith(f"The disk ran full while writing {blob};") and "set HF_HOME to" in str(problem)
    inside = store.disk_error(dest, OSError(errno.ENOSPC, "No space left on device", str(dest) + ".partial/x.bin"))
    assert f"while writing {dest};" in str(inside) and "set VLM_MODELS_DIR to" in str(inside)


def test_other_errors_are_not_taken_for_disk_errors(tmp_path):
    assert store.disk_error(tmp_path, OSError(errno.ENOENT, "No such file")) is None
    assert store.disk_error(tmp_path, ValueError("bad value")) is None
    with pytest.raises(FileNotFoundError):
        build_fake_export(tmp_path / "fp32", _fake_export_then(FileNotFoundError(errno.ENOENT, "gone")))
    assert not (tmp_path / "fp32").exists() and not (tmp_path / "fp32.partial").exists()


def test_the_marker_records_the_facts_files_and_cost(tmp_path):
    dest = store.build(tmp_path / "thing", lambda f: (f / "a.txt").write_text("12345"), facts={"recipe": "x"},
                       required=["a.txt"], quiet=True)
    marker = store.record(dest)
    assert marker["facts"] == {"recipe": "x"} and marker["files"] == {"a.txt": 5}
    assert marker["seconds"] >= 0 and marker["peak_rss_MB"] > 0 and marker["built"]
    assert store.is_built(dest, {"recipe": "x"}, ["a.txt"], quiet=True)
    assert store.problems(dest, {"recipe": "y"}) == ["made with recipe x, this environment has y"]
    assert store.problems(dest, required=["b.txt"]) == ["missing b.txt"]
    assert store.problems(tmp_path / "nothing") == ["not built yet"]
    (dest / store.MARKER).write_text("[1, 2")  # cut short
    assert store.record(dest) is None and store.read_json(dest / store.MARKER) is None
    assert store.problems(dest, required=["a.txt"]) == [f"{store.MARKER} is missing or damaged"]


def test_a_copy_of_a_built_folder_is_built_as_a_whole(tmp_path):
    """A build that copies a folder the course built (a stand-in as a prefetched model, say) brings that folder's
    marker along; the new marker replaces it and lists only the files of the build."""
    import shutil

    first = store.build(tmp_path / "first", lambda f: (f / "config.json").write_text("{}"), quiet=True)
    copy = store.build(tmp_path / "copy", lambda f: shutil.copytree(first, f, dirs_exist_ok=True),
                       required=["config.json"], quiet=True)
    assert store.problems(copy, required=["config.json"]) == [] and store.record(copy)["files"] == {"config.json": 2}


def test_damage_in_a_subfolder_is_found_too(tmp_path):
    def make(folder):
        (folder / "gguf-py").mkdir()
        (folder / "gguf-py" / "reader.py").write_text("12345")

    dest = store.build(tmp_path / "converter", make, quiet=True)
    assert store.record(dest)["files"] == {"gguf-py/reader.py": 5} and store.problems(dest) == []
    (dest / "gguf-py" / "reader.py").write_text("1")
    assert store.problems(dest) == ["gguf-py/reader.py is 1 bytes but was 5 bytes when written"]


# --- the test session's folders ---------------------------------------------------------------------------------


def test_the_tests_never_write_where_make_run_writes():
    for folder in (store.runs_dir(), store.models_dir()):
        for theirs in (MAKE_RUN_DIR, MAKE_RUN_MODELS):
            assert folder != theirs and not folder.is_relative_to(theirs), (folder, theirs)
    # the defaults of `make run` are what the session moved away from
    assert store.REPO_ROOT == REPO and MAKE_RUN_DIR == REPO / "runs" / "latest" and MAKE_RUN_MODELS == REPO / "models"


@pytest.mark.parametrize("exported, expected", [
    ({}, (TEST_RUN_DIR, TEST_RUN_DIR / "models")),
    ({"VLM_RUN_DIR": "runs/latest"}, (TEST_RUN_DIR, TEST_RUN_DIR / "models")),  # exported for `make run`
    ({"VLM_RUN_DIR": str(MAKE_RUN_DIR / "more")}, (TEST_RUN_DIR, TEST_RUN_DIR / "models")),
    ({"VLM_MODELS_DIR": "models"}, (TEST_RUN_DIR, TEST_RUN_DIR / "models")),
    ({"VLM_MODELS_DIR": str(MAKE_RUN_DIR / "models")}, (TEST_RUN_DIR, TEST_RUN_DIR / "models")),
    ({"VLM_RUN_DIR": "/tmp/my-tests"}, (Path("/tmp/my-tests"), Path("/tmp/my-tests/models"))),
    ({"VLM_RUN_DIR": "runs/latest", "VLM_MODELS_DIR": "/tmp/my-models"}, (TEST_RUN_DIR, Path("/tmp/my-models"))),
])
def test_a_session_moves_away_from_make_runs_folders_even_when_they_were_exported(monkeypatch, exported, expected):
    monkeypatch.chdir(REPO / "notebooks")  # a notebook's kernel runs here; relative settings are the root's
    found = session_folders(exported)
    assert (REPO / found["VLM_RUN_DIR"], REPO / found["VLM_MODELS_DIR"]) == expected


def test_relative_folder_settings_are_taken_from_the_repository_root_wherever_the_process_runs(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # as a notebook's kernel, which runs in notebooks/, not where `make` ran
    monkeypatch.setenv("VLM_RUN_DIR", "myruns")
    monkeypatch.setenv("VLM_CACHE", "~/vlm-cache")
    monkeypatch.setenv("VLM_MODELS_DIR", str(tmp_path / "m"))
    assert store.runs_dir() == REPO / "myruns" and store.models_dir() == tmp_path / "m"
    assert store.cache_dir() == Path.home() / "vlm-cache"
    monkeypatch.setenv("VLM_RUN_DIR", " ")
    assert store.runs_dir() == REPO / "runs" / "latest"
