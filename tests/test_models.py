"""Model choice through VLM_MODEL: stand-ins, local folders, Hub ids, the Hub's answer, and the offline fallback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import fake_hub_cache
from helpers import models, standins
from helpers.store import REPO_ROOT

DEFAULT = "HuggingFaceTB/SmolVLM2-256M-Video-Instruct"


@pytest.fixture
def offline(monkeypatch):
    """Simulate 'the Hub is unreachable' the way users set it; the real network here is closed as well."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_standin_is_resolved_and_marked(tiny_standin):
    choice = models.resolve_model("synthetic-tiny")
    assert choice.is_standin and choice.slug == "synthetic-tiny" and not choice.fell_back
    assert choice.source == str(tiny_standin) and choice.standin_name == "synthetic-tiny"
    assert not choice.real_vision and not choice.real_language_model and not choice.known
    assert models.show_banner(choice).text == (
        "STAND-IN MODEL IN USE: 'synthetic-tiny' has a tiny SmolVLM for tests; Random weights with SmolLM2's real "
        "tokenizer: its text is meaningless, its timings are real.")
    assert "#fff3cd" in models.show_banner(choice)._repr_html_()  # the stand-in's banner is yellow


def test_local_folder_is_used_and_a_standin_folder_is_recognised(tiny_standin, tmp_path):
    choice = models.resolve_model(str(tiny_standin))
    assert choice.source == str(tiny_standin) and choice.is_standin and choice.standin_name == "synthetic-tiny"
    copy = tmp_path / "my-copy"
    shutil.copytree(tiny_standin, copy)  # a copy elsewhere is still the stand-in: its config carries the record
    choice = models.resolve_model(str(copy))
    assert choice.is_standin and choice.slug == "my-copy" and choice.standin_name == "synthetic-tiny"


def test_a_relative_vlm_model_folder_is_taken_from_the_repository_root(tiny_standin, tmp_path, monkeypatch):
    shutil.copytree(tiny_standin, tmp_path / "mine")
    monkeypatch.setenv("VLM_MODEL", os.path.relpath(tmp_path / "mine", REPO_ROOT))  # as given to `make run`
    monkeypatch.chdir(tmp_path.parent)  # the kernel runs elsewhere (notebooks/)
    assert models.resolve_model().source == str(tmp_path / "mine")


def test_a_users_own_folder_is_used_as_it_is_and_said_so(tiny_standin, tmp_path):
    folder = tmp_path / "my-vlm"
    shutil.copytree(tiny_standin, folder)
    config = json.loads((folder / "config.json").read_text())
    del config["standin"]  # e.g. a fine-tuned SmolVLM saved with save_pretrained
    (folder / "config.json").write_text(json.dumps(config))
    choice = models.resolve_model(str(folder))
    assert (choice.requested, choice.source, choice.slug) == (str(folder), str(folder), "my-vlm")
    assert not choice.is_standin and choice.real_vision and choice.real_language_model and not choice.known
    assert models.show_banner(choice).text == (
        f"Model: your model from {folder}. The course has no expected answers for it, so it shows its answers "
        "without checking them.")
    assert "#e7f5e9" in models.show_banner(choice)._repr_html_()


def test_the_known_models_are_the_courses_checkpoints():
    for repo_id in models.KNOWN_MODELS:
        choice = models.ModelChoice(repo_id, repo_id, repo_id.split("/")[-1])
        assert choice.known and choice.real_vision and choice.real_language_model and not choice.is_standin
        assert models.show_banner(choice).text == f"Model: {repo_id} (real weights), loaded from {repo_id}."
    assert not models.ModelChoice("someone/other-vlm", "someone/other-vlm", "other-vlm").known


def test_folder_without_config_is_refused_clearly(tmp_path):
    with pytest.raises(models.ModelUnavailableError) as err:
        models.resolve_model(str(tmp_path))
    assert str(err.value) == (f"VLM_MODEL={str(tmp_path)!r} is not a model folder (no config.json in {tmp_path}): "
                              "point it at a folder saved with save_pretrained, a Hub id, or a stand-in "
                              "(synthetic-tiny, synthetic-256m, smollm2-256m).")


def test_nonsense_name_is_refused_clearly():
    with pytest.raises(models.ModelUnavailableError) as err:
        models.resolve_model("not a model!")
    assert str(err.value) == ("VLM_MODEL='not a model!' is neither a Hub id (owner/name), an existing folder, nor "
                              "one of synthetic-tiny, synthetic-256m, smollm2-256m.")


def test_explicit_hub_id_offline_stops_with_one_clear_sentence(offline, monkeypatch, tmp_path):
    monkeypatch.setenv("VLM_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_in_hub_cache", lambda repo_id: False)
    with pytest.raises(models.ModelUnavailableError) as err:
        models.resolve_model(DEFAULT)
    assert str(err.value) == (
        f"Cannot load {DEFAULT!r}: HF_HUB_OFFLINE is set and it is not in the local cache; connect to the internet "
        f"and run `make prefetch VLM_MODEL={DEFAULT}` once, or set VLM_MODEL=smollm2-256m to use the offline "
        "stand-in.")
    assert not (tmp_path / "standins").exists()  # an explicit choice never falls back


def test_default_model_offline_falls_back_to_the_speaking_standin(offline, monkeypatch, tmp_path):
    monkeypatch.delenv("VLM_MODEL", raising=False)
    monkeypatch.setattr(models, "_in_hub_cache", lambda repo_id: False)
    monkeypatch.setenv("VLM_CACHE", str(tmp_path))
    built = []

    def build(name, dest):  # the stand-in's folder, as far as the choice reads it (its config's record)
        built.append(name)
        dest.mkdir(parents=True)
        spec = standins.SPECS[name]
        (dest / "config.json").write_text(json.dumps({"standin": {"name": name, "note": spec.note,
                                                                  "version": spec.version}}))
        return dest

    monkeypatch.setattr(standins, "build", build)
    choice = models.resolve_model()
    assert built == ["smollm2-256m"] and choice.source == str(models.standin_path("smollm2-256m"))
    assert choice.is_standin and choice.fell_back and choice.slug == "smollm2-256m"
    assert choice.requested == models.DEFAULT_MODEL_ID == DEFAULT and choice.reason == "HF_HUB_OFFLINE is set"
    assert choice.known and choice.real_language_model and not choice.real_vision
    assert models.show_banner(choice).text == (
        f"OFFLINE FALLBACK: the default model {DEFAULT} could not be reached (HF_HUB_OFFLINE is set), so this run "
        "uses the stand-in 'smollm2-256m'. To use the real model, connect to the internet (or run `make prefetch` "
        "where you have one) and run again.\n"
        "STAND-IN MODEL IN USE: 'smollm2-256m' has the full SmolVLM2-256M architecture; language model: real "
        "SmolLM2-135M-Instruct weights (from a 4-bit GGUF, dequantized); vision encoder: random, so it writes real "
        "English but does not see the image; timings real")


def test_a_model_in_the_hub_cache_is_used_offline(offline, monkeypatch, tmp_path):
    monkeypatch.setenv("VLM_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_in_hub_cache", lambda repo_id: True)
    monkeypatch.setattr(models, "hub_status", lambda repo_id: pytest.fail("must not ask the Hub"))
    assert models.resolve_model(DEFAULT) == models.ModelChoice(DEFAULT, DEFAULT, "SmolVLM2-256M-Video-Instruct")


def test_a_hub_cache_with_a_config_but_no_weights_is_not_a_usable_model(monkeypatch, tmp_path):
    fake_hub_cache(monkeypatch, tmp_path, "someone/some-vlm", {"config.json": b"{}"})
    assert not models._in_hub_cache("someone/some-vlm")  # a download cut short after the config
    fake_hub_cache(monkeypatch, tmp_path, "someone/some-vlm", {"model.safetensors": b"weights"})
    assert models._in_hub_cache("someone/some-vlm")


def test_prefetched_folder_is_found_offline(offline, monkeypatch, tmp_path, tiny_standin):
    monkeypatch.setenv("VLM_CACHE", str(tmp_path))
    shutil.copytree(tiny_standin, models.prefetched_path("someone/some-vlm"))
    choice = models.resolve_model("someone/some-vlm")
    assert choice.source == str(models.prefetched_path("someone/some-vlm")) and choice.slug == "some-vlm"
    assert choice.source == str(tmp_path / "hub" / "someone__some-vlm") and not choice.fell_back


def test_an_unfinished_prefetch_is_not_used(offline, monkeypatch, tmp_path):
    monkeypatch.setenv("VLM_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_in_hub_cache", lambda repo_id: False)
    folder = models.prefetched_path("someone/some-vlm")
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")  # a download that never finished: no build marker
    with pytest.raises(models.ModelUnavailableError, match="^Cannot load 'someone/some-vlm': HF_HUB_OFFLINE is set"):
        models.resolve_model("someone/some-vlm")


def _raise(error):
    def model_info(self, repo_id, timeout=None):
        raise error
    return model_info


def _http_error(cls, status: int):
    import requests

    response = requests.Response()
    response.status_code = status
    return cls(f"{status} error", response=response)


def test_hub_status_says_why_the_hub_cant_be_used(monkeypatch):
    import requests
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    asked = []
    monkeypatch.setattr(HfApi, "model_info", lambda self, repo_id, timeout=None: asked.append((repo_id, timeout)))
    assert models.hub_status("someone/vlm") == "ok" and asked == [("someone/vlm", models.HUB_TIMEOUT_S)]
    for error, reason in (
            (_http_error(RepositoryNotFoundError, 404), "the Hub has no public model named 'someone/vlm'"),
            (_http_error(HfHubHTTPError, 503), "the Hub answered 503"),
            (HfHubHTTPError("no response"), "the Hub answered with an error"),
            (requests.ConnectionError("no route"), f"no connection to {constants.ENDPOINT} (ConnectionError)"),
            (requests.Timeout("slow"), f"no connection to {constants.ENDPOINT} (Timeout)")):
        monkeypatch.setattr(HfApi, "model_info", _raise(error))
        assert models.hub_status("someone/vlm") == reason
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert models.hub_status("someone/vlm") == "HF_HUB_OFFLINE is set"


def test_make_run_with_unreachable_hub_id_ends_in_seconds_with_one_sentence(tmp_path):
    env = dict(os.environ, VLM_MODEL=DEFAULT, HF_HUB_OFFLINE="1", VLM_CACHE=str(tmp_path),
               HF_HOME=str(tmp_path / "hf"), VLM_RUN_DIR=str(tmp_path / "run"))
    result = subprocess.run([sys.executable, "-m", "helpers.run_series"], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"Cannot load {DEFAULT!r}")
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "run").exists()
