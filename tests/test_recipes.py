"""Quantized variants (helpers/recipes.py): the recipes change what the IR holds, builds are atomic, record their
cost and are rebuilt when what they were made from changed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import chat, data, export, images, recipes, store

SUBMODELS = ["language_model", "text_embeddings_model", "vision_embeddings_model"]


def _write_ir(folder, build_model):
    """Save the OpenVINO model ``build_model()`` as all three submodels of a fake export in ``folder``."""
    import openvino as ov

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    for name in SUBMODELS:
        ov.save_model(build_model(), folder / f"openvino_{name}.xml", compress_to_fp16=False)


def _matmul_with_compressed_weight(weight_type: str, with_zero_point: bool, fake_quantize: bool):
    """x @ dequantize(W): a weight Constant of ``weight_type``, optional zero point, optional FakeQuantize on x."""
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([1, 8], np.float32, name="x")
    element_type = getattr(ov.Type, weight_type)  # ov.Type.u4 etc.; ov.Type("u4") means something else
    weight = ov.op.Constant(element_type, ov.Shape([4, 8]), [1] * 32)
    dequantized = ops.convert(weight, np.float32)
    if with_zero_point:
        zero_point = ov.op.Constant(element_type, ov.Shape([4, 1]), [1] * 4)
        dequantized = ops.subtract(dequantized, ops.convert(zero_point, np.float32))
    dequantized = ops.multiply(dequantized, ops.constant(np.full((4, 1), 0.1, dtype=np.float32)))
    source = x
    if fake_quantize:
        low, high = ops.constant(np.float32(-1.0)), ops.constant(np.float32(1.0))
        source = ops.fake_quantize(x, low, high, low, high, 256)
    return ov.Model([ops.matmul(source, dequantized, False, True)], [x])


@pytest.mark.parametrize(
    ("weight_type", "zero_point", "fake_quantize", "expected"),
    [
        ("u8", True, False, {"int8": 2, "int4": 0, "fake_quantize": 0}),  # asymmetric: weight + zero point
        ("i8", False, True, {"int8": 1, "int4": 0, "fake_quantize": 1}),  # static: symmetric weight, quantized input
        ("u4", True, False, {"int8": 0, "int4": 2, "fake_quantize": 0}),
        ("i4", False, False, {"int8": 0, "int4": 1, "fake_quantize": 0}),
    ],
)
def test_count_quantized_counts_like_optimum_intel_tests(tmp_path, weight_type, zero_point, fake_quantize, expected):
    _write_ir(tmp_path, lambda: _matmul_with_compressed_weight(weight_type, zero_point, fake_quantize))
    table = recipes.count_quantized(tmp_path)
    assert list(table.index) == SUBMODELS
    for submodel in SUBMODELS:
        assert table.loc[submodel].to_dict() == expected


def test_fp32_export_holds_nothing_quantized(tiny):
    folder = recipes.build(tiny, "fp32")
    assert folder == export.variant_dir(tiny, "fp32")
    counts = recipes.count_quantized(folder)
    assert list(counts.index) == SUBMODELS and (counts == 0).all().all()


def test_int8_recipe_compresses_every_submodel_and_is_skipped_when_complete(tiny, capsys):
    folder = recipes.build(tiny, "int8")
    assert folder == export.variant_dir(tiny, "int8") and export.is_complete(folder)
    counts = recipes.count_quantized(folder)
    assert (counts["int8"] > 0).all()
    assert (counts["int4"] == 0).all() and (counts["fake_quantize"] == 0).all()
    record = store.record(folder)
    assert json.loads(record["facts"]["recipe"]) == json.loads(json.dumps(recipes.recipes()["int8"].to_dict(),
                                                                          sort_keys=True, default=str))
    assert record["facts"]["standin_version"] is not None and record["seconds"] > 0
    assert record["peak_rss_MB"] >= record["start_rss_MB"] > 0
    assert (folder / "preprocessor_config.json").is_file()  # self-contained: the processor is saved with it

    bin_mtime = (folder / "openvino_language_model.bin").stat().st_mtime_ns
    capsys.readouterr()
    assert recipes.build(tiny, "int8") == folder
    assert capsys.readouterr().out == f"Skipped: a complete build is already at {folder}\n"
    assert (folder / "openvino_language_model.bin").stat().st_mtime_ns == bin_mtime


def test_int4_recipe_puts_4bit_weights_in_the_language_model_only(tiny):
    counts = recipes.count_quantized(recipes.build(tiny, "int4"))
    lm = counts.loc["language_model"]
    assert lm["int4"] > 0
    assert lm["int8"] > 0  # NNCF's int8 backup for the output head
    others = counts.drop(index="language_model")
    assert (others["int4"] == 0).all() and (others["int8"] > 0).all()
    assert (counts["fake_quantize"] == 0).all()


@pytest.mark.parametrize("variant", ["int8", "int4"])
def test_the_command_line_makes_what_the_python_api_makes(tiny, tmp_path, variant):
    command = recipes.cli_command(tiny.source, variant)
    assert command[:3] == ["optimum-cli", "export", "openvino"]
    assert f"int{recipes.recipes()[variant].bits}" in command and command[command.index("--model") + 1] == tiny.source
    cli_dir = export.run_cli(command, tmp_path / f"{variant}-cli", tiny)
    assert export.is_complete(cli_dir)
    assert recipes.count_quantized(cli_dir).equals(recipes.count_quantized(recipes.build(tiny, variant)))


def test_awq_recipe_keeps_int4s_graph_but_changes_its_weights(tiny):
    plain = recipes.build(tiny, "int4")
    folder = recipes.build(tiny, "int4-awq")
    assert recipes.count_quantized(folder).equals(recipes.count_quantized(plain))
    changed = recipes.changed_weights(folder, plain)
    assert changed > 0 and recipes.changed_weights(plain, plain) == 0
    # only the language model was calibrated: the 8-bit submodels are int4's, constant for constant
    assert recipes.changed_weights(folder, plain, "vision_embeddings_model") == 0
    saved = json.loads((folder / "openvino_config.json").read_text())["quantization_config"]
    assert saved["quant_method"] == "awq" and saved["scale_estimation"] is True
    assert saved["num_samples"] == len(data.load_text_calibration()) == 32


def test_ratio_recipe_keeps_the_most_sensitive_layers_in_8_bits(tiny):
    plain = recipes.count_quantized(recipes.build(tiny, "int4"))
    counts = recipes.count_quantized(recipes.build(tiny, "int4-ratio"))
    lm = "language_model"
    assert 0 < counts.loc[lm, "int4"] < plain.loc[lm, "int4"]
    assert counts.loc[lm, "int8"] > plain.loc[lm, "int8"]
    assert counts.drop(index=lm).equals(plain.drop(index=lm))
    assert recipes.recipes()["int4-ratio"].ratio == 0.8 < recipes.recipes()["int4"].ratio == 1.0


def test_text_calibration_holds_what_the_language_model_receives(tiny, tiny_processor):
    from optimum.intel import OVModelForVisualCausalLM

    model = OVModelForVisualCausalLM.from_pretrained(str(recipes.build(tiny, "fp32")), compile=False)
    prompts = data.load_text_calibration(3)
    calibration = recipes.text_calibration(model, tiny_processor, prompts)
    assert list(calibration) == ["lm_model"]
    rows = list(calibration["lm_model"].get_inference_data())
    assert len(rows) == 3
    for prompt, row in zip(prompts, rows):
        tokens = len(tiny_processor(text=tiny_processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "text", "text": prompt}]}], add_generation_prompt=True))["input_ids"][0])
        assert row["inputs_embeds"].shape == (1, tokens, model.config.text_config.hidden_size)
        assert row["attention_mask"].shape == row["position_ids"].shape == (1, tokens)


def test_text_calibration_set_is_apart_from_the_scored_questions():
    prompts = data.load_text_calibration()
    scored = {q.lower() for q in data.load_text_questions()["question"]}
    assert len(prompts) == len(set(prompts)) == 32 and not scored & {p.lower() for p in prompts}
    assert data.load_text_calibration(5) == prompts[:5]
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        data.load_text_calibration(0)


def test_mixed_recipe_quantizes_vision_activations_only(tiny):
    folder = recipes.build(tiny, "mixed")
    counts = recipes.count_quantized(folder)
    assert counts.loc["vision_embeddings_model", "fake_quantize"] > 0
    assert counts.loc["language_model", "fake_quantize"] == 0
    assert counts.loc["text_embeddings_model", "fake_quantize"] == 0
    assert (counts["int8"] > 0).all() and (counts["int4"] == 0).all()
    saved = json.loads((folder / "openvino_config.json").read_text())["quantization_config"]
    assert saved["num_samples"] == len(data.load_calibration_dataset(50))  # all the rows data/ has (fewer than 50)


def test_combined_variant_has_the_static_vision_encoder_and_the_4bit_language_model(tiny, capsys):
    folder = recipes.build(tiny, "mixed-int4")
    counts = recipes.count_quantized(folder)
    assert counts.loc["vision_embeddings_model"].equals(recipes.count_quantized(
        export.variant_dir(tiny, "mixed")).loc["vision_embeddings_model"])
    assert counts.loc["vision_embeddings_model", "fake_quantize"] > 0
    assert counts.loc["language_model", "int4"] > 0 and counts.loc["language_model", "fake_quantize"] == 0
    assert counts.drop(index="vision_embeddings_model").equals(
        recipes.count_quantized(export.variant_dir(tiny, "int4")).drop(index="vision_embeddings_model"))
    assert export.check_ir(folder) == folder
    assert store.record(folder)["facts"]["combined"] == recipes.COMBINED["mixed-int4"]
    saved = json.loads((folder / "openvino_config.json").read_text())
    assert saved["combined_from"] == recipes.COMBINED["mixed-int4"]
    configs = saved["quantization_config"]["quantization_configs"]
    assert configs["lm_model"]["bits"] == 4 and "smooth_quant_alpha" in configs["vision_embeddings_model"]
    built = (folder / "openvino_config.json").stat().st_mtime_ns
    capsys.readouterr()
    assert recipes.build(tiny, "mixed-int4") == folder  # complete and current: kept as it is
    assert f"Skipped: a complete build is already at {folder}" in capsys.readouterr().out
    assert (folder / "openvino_config.json").stat().st_mtime_ns == built
    model, processor = chat.load_model(folder)
    answer = chat.ask(model, processor, "What is in this image?", [data.photo_path("cat")], max_new_tokens=3)
    assert answer.new_tokens == 3


def test_a_changed_recipe_rebuilds_its_variant_and_the_combined_one(tiny, capsys, monkeypatch):
    from optimum.intel import OVWeightQuantizationConfig

    combined = recipes.build(tiny, "mixed-int4")
    int4_dir = export.variant_dir(tiny, "int4")
    plain = recipes.count_quantized(int4_dir).loc["language_model"]
    table = recipes.recipes

    def half_ratio():  # "Try this" of notebook 02: half the layers stay 8-bit
        found = table()
        found["int4"] = OVWeightQuantizationConfig(bits=4, sym=False, group_size=128, ratio=0.5,
                                                   group_size_fallback="adjust")
        return found

    monkeypatch.setattr(recipes, "recipes", half_ratio)
    capsys.readouterr()
    assert recipes.build(tiny, "int4") == int4_dir
    out = capsys.readouterr().out
    assert f"Found an unusable folder at {int4_dir} (made with recipe " in out and "rebuilding it." in out
    half = recipes.count_quantized(int4_dir).loc["language_model"]
    assert half["int4"] < plain["int4"] and half["int8"] > plain["int8"]
    assert recipes.build(tiny, "mixed-int4") == combined
    out = capsys.readouterr().out
    assert f"Found an unusable folder at {combined} (made with made_of " in out and "rebuilding it." in out
    assert recipes.count_quantized(combined).loc["language_model"].equals(half)
    monkeypatch.undo()  # the table of the course again: int4 is rebuilt as it was
    recipes.build(tiny, "int4")
    assert recipes.count_quantized(int4_dir).loc["language_model"].equals(plain)


def _activation_ranges(folder, submodel="vision_embeddings_model") -> dict[str, tuple[float, float]]:
    """``{FakeQuantize node: (lowest, highest)}`` input range that static quantization measured for ``submodel``."""
    import openvino as ov

    ranges = {}
    for op in ov.Core().read_model(export.ir_files(folder)[submodel][0]).get_ops():
        if op.get_type_name() == "FakeQuantize":
            low, high = (op.input_value(i).get_node().get_data() for i in (1, 2))
            ranges[op.get_friendly_name()] = (float(low.min()), float(high.max()))
    return ranges


def _compare_ranges(a, b, submodel="vision_embeddings_model") -> dict:
    """Per FakeQuantize node in both, ``|width_a - width_b| / width_a``: how many nodes, the median, the largest.

    How the README compares the activation ranges of two calibrations of the mixed recipe."""
    import statistics

    first, second = _activation_ranges(a, submodel), _activation_ranges(b, submodel)
    common = sorted(set(first) & set(second))
    assert common, f"{a} and {b} have no FakeQuantize node in common in {submodel}"
    gaps = []
    for name in common:
        width_a, width_b = first[name][1] - first[name][0], second[name][1] - second[name][0]
        gaps.append(abs(width_a - width_b) / width_a if width_a else float(width_b != 0))
    return {"nodes": len(common), "median_relative_difference": statistics.median(gaps),
            "largest_relative_difference": max(gaps)}


def test_calibration_sees_one_tile_per_photo_and_the_ranges_can_be_compared(tiny):
    from transformers import AutoProcessor

    fp_dir = recipes.build(tiny, "fp32")
    calibration = recipes.calibration_processor(fp_dir)
    assert calibration == fp_dir.parent / "calibration-processor" and store.is_built(calibration, quiet=True)
    processor = AutoProcessor.from_pretrained(calibration)
    assert processor.image_processor.size == {"longest_edge": images.tile_size(processor)} == {"longest_edge": 512}
    inputs = chat.question_inputs(processor, "What is in this image?", data.photo_path("cat"))
    assert inputs["pixel_values"].shape[1] == 1  # one 512x512 image instead of 13 tiles
    mixed = recipes.build(tiny, "mixed")
    same = _compare_ranges(mixed, mixed)
    assert same["nodes"] == recipes.count_quantized(mixed).loc["vision_embeddings_model", "fake_quantize"]
    assert same["median_relative_difference"] == 0 == same["largest_relative_difference"]
    ranges = _activation_ranges(mixed)
    assert all(low < high for low, high in ranges.values())


def test_each_variant_records_its_build_cost_and_is_smaller_than_fp32(tiny):
    folders = {v: recipes.build(tiny, v) for v in ("fp32", "int8", "int4")}
    for folder in folders.values():
        record = store.record(folder)
        assert record["seconds"] > 0 and record["peak_rss_MB"] > 0 and record["built"]
    assert export.ir_size_bytes(folders["int4"]) < export.ir_size_bytes(folders["int8"]) < \
        export.ir_size_bytes(folders["fp32"])


def test_on_disk_lists_the_finished_variants_in_order(tiny, tmp_path, monkeypatch):
    built = {v: recipes.build(tiny, v) for v in ("int4", "fp32", "int8")}
    found = recipes.on_disk(tiny)
    assert list(found)[:3] == ["fp32", "int8", "int4"] and all(found[v] == built[v] for v in built)
    monkeypatch.setenv("VLM_MODELS_DIR", str(tmp_path))  # another models folder: an unfinished copy of int8 only
    (export.variant_dir(tiny, "int8")).mkdir(parents=True)
    (export.variant_dir(tiny, "int8") / "config.json").write_text("{}")
    assert recipes.on_disk(tiny) == {}


def test_the_same_model_gives_the_same_answer(tiny):
    fp = recipes.build(tiny, "fp32")
    first, second = chat.load_model(fp), chat.load_model(fp)
    for photo, question in (("astronaut", "What is in this image?"), (None, "What is the capital of France?")):
        pictures = [data.photo_path(photo)] if photo else []
        replies = [chat.ask(model, processor, question, pictures, max_new_tokens=4,
                            longest_edge=images.tile_size(processor) if photo else None)
                   for model, processor in (first, second)]
        assert 1 <= replies[0].new_tokens <= 4
        assert replies[0].token_ids == replies[1].token_ids and replies[0].text == replies[1].text


def test_a_failed_build_leaves_no_variant_and_no_record(tiny):
    def crash(folder):
        (folder / "config.json").write_text("{}")
        raise RuntimeError("quantization failed half-way")

    broken = export.variant_dir(tiny, "broken")
    with pytest.raises(RuntimeError, match="half-way"):
        store.build(broken, crash, facts=export.facts(tiny.source), required=export.REQUIRED)
    assert not broken.exists() and not broken.with_name("broken.partial").exists()
    assert store.record(broken) is None and "broken" not in recipes.on_disk(tiny)


def test_a_failed_forced_rebuild_keeps_the_variant_that_was_there(tiny, monkeypatch):
    folder = recipes.build(tiny, "int4-awq")
    written = store.record(folder)

    def crash(*args, **kwargs):
        raise RuntimeError("calibration failed half-way")

    monkeypatch.setattr(recipes, "text_calibration", crash)
    with pytest.raises(RuntimeError, match="half-way"):
        recipes.build(tiny, "int4-awq", force=True)
    assert store.record(folder) == written and export.is_complete(folder)
    assert not folder.with_name("int4-awq.partial").exists() and not folder.with_name("int4-awq.old").exists()


def test_unknown_recipes_are_refused(tiny):
    with pytest.raises(ValueError) as err:
        recipes.build(tiny, "int2")
    assert str(err.value) == ("unknown variant 'int2'; choose one of fp32, int8, int4, int4-awq, int4-ratio, mixed, "
                              "mixed-int4")
    assert not export.variant_dir(tiny, "int2").exists()
    assert set(recipes.recipes()) == set(recipes.VARIANTS) - {"fp32"} - set(recipes.COMBINED)
    assert recipes.recipes() is not recipes.recipes()  # a fresh copy each time: a notebook's change stays its own
    for variant in ("int4-awq", "int4-ratio", "mixed"):
        with pytest.raises(ValueError) as err:
            recipes.cli_command(tiny.source, variant)
        assert str(err.value) == (f"recipe {variant!r} has no optimum-cli equivalent here: only int8 and int4 do "
                                  "(the others need calibration data)")
