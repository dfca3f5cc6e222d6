"""Workshop mode: prefetch once, then run with the network off from the local cache folder.

The Hub is unreachable here, so a stand-in plays the Hub: ``snapshot_download`` is replaced by a copy of the tiny
stand-in. Everything after the download (the folder the course reads offline) is the real code path.
"""

from __future__ import annotations

import shutil

import huggingface_hub
import pytest

from helpers import export, models, prefetch


def test_prefetch_then_run_offline(monkeypatch, tmp_path, tiny_standin):
    monkeypatch.setenv("VLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("VLM_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setattr(models, "hub_status", lambda repo_id: "ok")
    fetched = []

    def fake_hub_download(repo_id, local_dir):
        fetched.append(repo_id)
        shutil.copytree(tiny_standin, local_dir, dirs_exist_ok=True)  # like the Hub's, into an existing folder
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_hub_download)
    folder = prefetch.prefetch("workshop/smolvlm")
    assert fetched == ["workshop/smolvlm"]
    assert prefetch.prefetch("workshop/smolvlm") == folder and fetched == ["workshop/smolvlm"]  # once only
    assert not list((tmp_path / "cache" / "hub").glob("*.partial"))

    # Network off: the course finds the model in the copied cache folder and exports it.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(models, "hub_status", lambda repo_id: pytest.fail("must not touch the network"))
    choice = models.resolve_model("workshop/smolvlm")
    assert choice.source == folder and not choice.fell_back
    assert export.is_complete(export.export_fp32(choice))


def test_prefetch_without_hub_says_so(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("VLM_CACHE", str(tmp_path))
    monkeypatch.setenv("VLM_MODEL", "HuggingFaceTB/SmolVLM2-256M-Video-Instruct")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert prefetch.main() == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Cannot prefetch 'HuggingFaceTB/SmolVLM2-256M-Video-Instruct'") and "\n" not in err
