"""Model choice through VLM_MODEL: stand-ins, local folders, Hub ids, and the offline fallback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers import models
from helpers.paths import REPO_ROOT


@pytest.fixture
def offline(monkeypatch):
    """Simulate 'the Hub is unreachable' the way users set it; the real network here is closed as well."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_standin_is_resolved_and_marked(tiny_standin):
    choice = models.resolve_model("synthetic-tiny")
    assert choice.is_standin and choice.slug == "synthetic-tiny" and not choice.fell_back
    assert choice.source == str(tiny_standin)
    text = models.show_banner(choice).text
    assert "STAND-IN" in text and "meaningless" in text and "timings are real" in text


def test_local_folder_is_used_and_a_standin_folder_is_recognised(tiny_standin):
    choice = models.resolve_model(str(tiny_standin))
    assert choice.source == str(tiny_standin) and choice.is_standin


def test_folder_without_config_is_refused_clearly(tmp_path):
    with pytest.raises(models.ModelUnavailableError, match="not a model folder"):
        models.resolve_model(str(tmp_path))


def test_nonsense_name_is_refused_clearly():
    with pytest.raises(models.ModelUnavailableError, match="neither a Hub id"):
        models.resolve_model("not a model!")


def test_explicit_hub_id_offline_stops_with_one_clear_sentence(offline, monkeypatch, tmp_path):
    monkeypatch.setenv("VLM_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_in_hub_cache", lambda repo_id: False)
    with pytest.raises(models.ModelUnavailableError) as err:
        models.resolve_model("HuggingFaceTB/SmolVLM2-256M-Video-Instruct")
    message = str(err.value)
    assert "HuggingFaceTB/SmolVLM2-256M-Video-Instruct" in message
    assert "VLM_MODEL=smollm2-256m" in message and "make prefetch" in message
    assert "\n" not in message


def test_default_model_offline_falls_back_to_the_speaking_standin(offline, monkeypatch, tmp_path):
    monkeypatch.delenv("VLM_MODEL", raising=False)
    monkeypatch.setattr(models, "_in_hub_cache", lambda repo_id: False)
    monkeypatch.setenv("VLM_CACHE", str(tmp_path))
    built = []
    monkeypatch.setattr(models, "ensure_standin", lambda name: built.append(name) or tmp_path / name)
    choice = models.resolve_model()
    assert built == ["smollm2-256m"]
    assert choice.is_standin and choice.fell_back and choice.slug == "smollm2-256m"
    assert choice.requested == models.DEFAULT_MODEL_ID and "HF_HUB_OFFLINE" in choice.reason
    banner = models.show_banner(choice).text
    assert "OFFLINE FALLBACK" in banner and "real SmolLM2-135M-Instruct weights" in banner
    assert "vision encoder: random" in banner and "does not see the image" in banner


def test_prefetched_folder_is_found_offline(offline, monkeypatch, tmp_path, tiny_standin):
    import shutil

    monkeypatch.setenv("VLM_CACHE", str(tmp_path))
    shutil.copytree(tiny_standin, models.prefetched_path("someone/some-vlm"))
    choice = models.resolve_model("someone/some-vlm")
    assert choice.source == str(models.prefetched_path("someone/some-vlm")) and choice.slug == "some-vlm"


def test_make_run_with_unreachable_hub_id_ends_in_seconds_with_one_sentence(tmp_path):
    env = dict(os.environ, VLM_MODEL="HuggingFaceTB/SmolVLM2-256M-Video-Instruct", HF_HUB_OFFLINE="1",
               VLM_CACHE=str(tmp_path), HF_HOME=str(tmp_path / "hf"), VLM_RUN_DIR=str(tmp_path / "run"))
    result = subprocess.run([sys.executable, "-m", "helpers.run_series"], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Cannot load 'HuggingFaceTB/SmolVLM2-256M-Video-Instruct'")
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "run").exists()
