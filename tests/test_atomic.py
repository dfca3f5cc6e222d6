"""Two processes on the same folders, interrupted rebuilds, and disks that refuse writes (helpers/atomic.py).

A killed forced rebuild is tested beside the killed export, in test_export.py.

The concurrent tests start real processes that wait at a starting line and then build the same folder at the same
moment, as two notebooks (or ``make run`` and JupyterLab) would.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import atomic, export, synthetic

HEADER = """
import sys, time
from pathlib import Path
from helpers import export, models, quantize
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
    results = _run_together("models.ensure_standin('synthetic-tiny')", env, tmp_path)
    assert all(code == 0 for code, _ in results), results
    assert sum("Another process is building" in out for _, out in results) == 1, results
    folder = tmp_path / "cache" / "standins" / "synthetic-tiny"
    assert synthetic.problems(folder) == [] and not list(folder.parent.glob("*.partial"))
    SmolVLMForConditionalGeneration.from_pretrained(folder)
    AutoProcessor.from_pretrained(folder)


@pytest.mark.slow
def test_two_processes_exporting_the_same_model_both_succeed(tmp_path, env):
    from helpers import chat

    results = _run_together("export.export_fp32(models.resolve_model())", env, tmp_path)
    assert all(code == 0 for code, _ in results), results
    waited = [out for _, out in results if "Another process is building" in out]
    assert len(waited) == 1 and "Skipped: a complete export is already at" in waited[0], results
    folder = tmp_path / "models" / "synthetic-tiny" / "fp32"
    assert export.is_complete(folder) and not (folder.parent / "fp32.partial").exists()
    chat.load_model(folder)


@pytest.mark.slow
def test_two_processes_quantizing_the_same_variant_both_succeed(tmp_path, env):
    from helpers import quantize

    results = _run_together("quantize.ensure_variant(models.resolve_model(), 'int8')", env, tmp_path)
    assert all(code == 0 for code, _ in results), results
    assert sum("Another process is building" in out for _, out in results) >= 1, results
    folder = tmp_path / "models" / "synthetic-tiny" / "int8"
    assert export.check_ir(folder) == folder
    assert (quantize.count_quantized(folder)["int8"] > 0).all()


def test_a_folder_set_aside_by_a_dead_rebuild_is_put_back(tmp_path, capsys):
    dest = tmp_path / "fp32"
    calls = []

    def fake_export(folder):
        calls.append(folder)
        for name in export.LOAD_FILES:
            (folder / name).write_text("{}")
        for stem in export.SUBMODELS.values():
            (folder / f"{stem}.xml").write_text("<net/>")
            (folder / f"{stem}.bin").write_bytes(b"\0" * 10)

    export.build_atomically(dest, fake_export)
    os.replace(dest, tmp_path / "fp32.old")  # killed between the two renames of a forced rebuild
    export.build_atomically(dest, fake_export)
    assert len(calls) == 1 and export.is_complete(dest) and not (tmp_path / "fp32.old").exists()
    assert "Restored" in capsys.readouterr().out


def _fake_export_then(error: OSError):
    def build(folder):
        (folder / "config.json").write_text("{}")
        raise error

    return build


def test_a_disk_that_fills_up_mid_build_is_said_and_leaves_nothing(tmp_path):
    dest = tmp_path / "fp32"
    with pytest.raises(atomic.InsufficientDiskSpaceError) as err:
        export.build_atomically(dest, _fake_export_then(OSError(errno.ENOSPC, "No space left on device")))
    message = str(err.value)
    assert message.startswith(f"The disk ran full while writing {dest}; nothing half-written was kept.")
    assert "VLM_MODELS_DIR" in message and "\n" not in message
    assert not dest.exists() and not (tmp_path / "fp32.partial").exists()


def test_a_read_only_models_folder_is_said_with_the_way_out(tmp_path, monkeypatch):
    monkeypatch.setenv("VLM_MODELS_DIR", str(tmp_path))
    dest = tmp_path / "synthetic-tiny" / "fp32"
    with pytest.raises(atomic.NotWritableError) as err:
        export.build_atomically(dest, _fake_export_then(OSError(errno.EROFS, "Read-only file system")))
    assert str(err.value) == (f"Cannot write to {dest} (read-only file system): set VLM_MODELS_DIR to a folder you "
                              "can write to, then run again.")
    assert not dest.exists() and not dest.with_name("fp32.partial").exists()

    import filelock

    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(filelock.FileLock, "acquire", refuse)  # the lock file itself can't be created
    with pytest.raises(atomic.NotWritableError, match=r"\(permission denied\): set VLM_MODELS_DIR"):
        export.build_atomically(dest, _fake_export_then(OSError()))
