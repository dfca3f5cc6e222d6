"""Bring your own model: with ``VLM_MODEL`` set to a folder saved with ``save_pretrained``, notebooks 01-04 run to the
end for a SmolVLM of another size (SmolVLM2-2.2B's image geometry) and for two other architectures optimum-intel
exports (LLaVA, Qwen2-VL), each built tiny and random by :mod:`tiny_models`; what is SmolVLM's only is skipped with
one sentence; a model optimum-intel can't export stops at the start of notebook 01 with one sentence."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import tiny_models
from conftest import one_sentence

from helpers import bench, export, models, recipes

REPO = Path(__file__).resolve().parent.parent
MODEL_TYPES = {"smolvlm-2b": "smolvlm", "llava": "llava", "qwen2-vl": "qwen2_vl"}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """Each tiny model of :data:`tiny_models.BUILDERS`, built once into a folder of its own."""
    return {name: make(tmp_path_factory.mktemp("own") / name) for name, make in tiny_models.BUILDERS.items()}


def run_series(model: Path, folder: Path, *notebooks: str) -> tuple[subprocess.CompletedProcess, Path]:
    """``python -m helpers.run_series`` as a learner runs it with ``VLM_MODEL=model`` (quick plan, offline), its
    models, runs and cache in ``folder``; ``(the finished process, the runs folder)``."""
    env = {**os.environ, "VLM_MODEL": str(model), "VLM_QUICK": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO),
           "VLM_MODELS_DIR": str(folder / "models"), "VLM_RUN_DIR": str(folder / "run"),
           "VLM_CACHE": str(folder / "cache")}
    env.pop("VLM_FULL", None)
    done = subprocess.run([sys.executable, "-m", "helpers.run_series", *notebooks], cwd=REPO, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=1800)
    return done, folder / "run"


@pytest.fixture(scope="module", params=list(MODEL_TYPES))
def series(request, built, tmp_path_factory) -> tuple[str, subprocess.CompletedProcess, Path]:
    """Notebooks 01-04 run once per tiny model: ``(its name, the finished run_series, its runs folder)``."""
    done, run = run_series(built[request.param], tmp_path_factory.mktemp(request.param), "01", "02", "03", "04")
    return request.param, done, run


def outputs(run: Path, notebook: str) -> str:
    """Everything the executed notebook printed or displayed as text, cell after cell."""
    texts = []
    for cell in nbformat.read(next(run.glob(f"{notebook}_*.ipynb")), as_version=4).cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", "") + output.get("data", {}).get("text/plain", ""))
    return "\n".join(texts)


@pytest.mark.slow
def test_notebooks_01_to_04_run_to_the_end(series):
    name, done, run = series
    assert done.returncode == 0, f"run_series failed for {name}:\n{done.stderr[-3000:]}"
    summary = json.loads((run / "run_summary.json").read_text())
    assert (summary["resolved"], summary["stand_in"], summary["fell_back"]) == (name, False, False)
    assert [(r["notebook"][:2], r["status"]) for r in summary["notebooks"]] == [
        ("01", "ok"), ("02", "ok"), ("03", "ok"), ("04", "ok")]
    assert "Model: your model from " in outputs(run, "01")  # a learner's own model, not a stand-in


@pytest.mark.slow
def test_the_architecture_is_named_and_every_recipe_proved(series):
    name, done, run = series
    assert f"architecture   : {MODEL_TYPES[name]}" in outputs(run, "01")
    assert "Every recipe did what it says" in outputs(run, "02")
    results = json.loads((run / "results.json").read_text())
    assert set(results["contenders"]) == {"pytorch-fp32", "openvino-fp32", "openvino-int8", "openvino-int4",
                                          "openvino-mixed"}
    assert not [key for key, record in results["contenders"].items() if "error" in record]
    assert set(results["quality"]) == set(results["contenders"])
    for record in results["contenders"].values():
        assert all(w[figure]["median"] > 0 for w in record["workloads"].values()
                   for figure in ("ttft_s", "tpot_s", "decode_tok_s", "e2e_s"))


@pytest.mark.slow
def test_smolvlm_shapes_come_from_the_model_and_other_models_skip_them_in_one_sentence(series):
    name, done, run = series
    first, infer = outputs(run, "01"), outputs(run, "03")
    results = json.loads((run / "results.json").read_text())
    if name == "smolvlm-2b":  # SmolVLM2-2.2B's geometry: 384-px tiles, 14-px patches, pixel shuffle x3
        assert "384px, 14px patches, pixel shuffle x3 -> 81 image tokens per tile" in first
        assert "longest edge 1536 px: 3x4 tiles + 1 global view of 384x384 px = 13 x 81 = 1053 image tokens" in infer
        assert "<image>×81" in infer  # the video's frames, one tile each
        assert (results["workloads"]["blog"]["longest_edge"], results["workloads"]["blog"]["image_tokens"]) == (
            384, 81)
        return
    model_type = MODEL_TYPES[name]
    assert (f"SmolVLM's tile arithmetic (tiles, patches, pixel shuffle) does not apply to a {model_type} model."
            in first)
    assert f"This {model_type} model's processor does not cut tiles: this section is SmolVLM's." in infer
    assert (f"This section shows SmolVLM2's video prompt (sampled frames as tiles, with their times): skipped for "
            f"this {model_type} model." in infer)
    assert "global view" not in infer and "Frame from" not in infer  # no tiles, no video prompt
    assert results["workloads"]["blog"]["longest_edge"] is None  # the processor's own size, no SmolVLM tile


@pytest.mark.slow
def test_a_model_optimum_intel_cannot_export_stops_at_the_start_of_notebook_01(tmp_path):
    done, run = run_series(tiny_models.bert(tmp_path / "bert"), tmp_path, "01")
    assert done.returncode == 1
    assert (f"01_convert.ipynb failed: UnsupportedModelError: {tmp_path / 'bert'} (model type bert) is not a model "
            "optimum-intel 2.2.0 can export as a vision-language model: the course runs image-text-to-text models "
            "such as SmolVLM, LLaVA, Qwen2-VL or Gemma 3.") in done.stderr
    assert not (tmp_path / "models").exists()  # stopped before any export


def test_check_supported_gives_the_model_type_of_each_architecture(built):
    for name, folder in built.items():
        assert export.check_supported(models.resolve_model(str(folder))) == MODEL_TYPES[name]


@pytest.mark.parametrize("model_type, config", [
    ("bert", None),  # a real BERT folder, weights and all
    ("llama", {"model_type": "llama"}),  # optimum-intel exports llama as image-text-to-text (Llama 3.2 Vision) only
    ("my_own_vlm", {"model_type": "my_own_vlm"}),  # a model type transformers does not know
    ("not given", {"hidden_size": 8})])
def test_check_supported_refuses_what_optimum_intel_cannot_export_in_one_sentence(tmp_path, model_type, config):
    folder = tmp_path / "model"
    if config is None:
        tiny_models.bert(folder)
    else:
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config))
    message = one_sentence(export.UnsupportedModelError, export.check_supported, models.resolve_model(str(folder)))
    assert message.startswith(f"{folder} (model type {model_type}) is not a model optimum-intel ")
    assert message.endswith("the course runs image-text-to-text models such as SmolVLM, LLaVA, Qwen2-VL or Gemma 3.")


def test_the_blog_workload_is_one_of_the_models_own_tiles_or_its_own_size(built):
    from transformers import AutoProcessor

    facts = {name: bench.prepare_workloads(AutoProcessor.from_pretrained(folder))["blog"].facts
             for name, folder in built.items()}
    assert (facts["smolvlm-2b"]["longest_edge"], facts["smolvlm-2b"]["image_tiles"],
            facts["smolvlm-2b"]["image_tokens"]) == (384, 1, 81)
    assert (facts["llava"]["longest_edge"], facts["llava"]["image_tokens"]) == (None, 16)  # 56 px in 14-px patches
    assert facts["qwen2-vl"]["longest_edge"] is None and facts["qwen2-vl"]["image_tokens"] > 0


def test_the_calibration_processor_cuts_one_tile_or_keeps_a_processor_without_tiles(built, tmp_path):
    from transformers import AutoProcessor

    for name in ("smolvlm-2b", "llava"):
        fp32 = tmp_path / name / "fp32"
        shutil.copytree(built[name], fp32)
        calibration = AutoProcessor.from_pretrained(recipes.calibration_processor(fp32)).image_processor
        own = AutoProcessor.from_pretrained(fp32).image_processor
        assert calibration.size == ({"longest_edge": 384} if name == "smolvlm-2b" else own.size)


def test_the_vision_encoder_is_every_submodel_optimum_intel_runs_as_vision_embeddings(tmp_path):
    for stem in ("language_model", "text_embeddings_model", "vision_embeddings_model",
                 "vision_embeddings_merger_model", "vision_embeddings_pos_model", "tokenizer"):
        (tmp_path / f"openvino_{stem}.xml").write_text("<net/>")
    # Qwen2-VL's merger runs the encoder's blocks; a position table (Qwen3-VL) is a projection, not calibrated
    assert recipes.vision_encoder(tmp_path) == ["vision_embeddings_merger_model", "vision_embeddings_model"]
