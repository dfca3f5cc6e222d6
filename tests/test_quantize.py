"""Quantized variants: the recipes change what the IR holds, builds are atomic and record their cost."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import chat, data, export, quantize


def _write_ir(folder, build_model):
    """Save the OpenVINO model ``build_model()`` as all three submodels of a fake export in ``folder``."""
    import openvino as ov

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    for xml, _ in export.ir_files(folder).values():
        ov.save_model(build_model(), xml, compress_to_fp16=False)


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
    table = quantize.count_quantized(tmp_path)
    assert list(table.index) == list(export.SUBMODELS)
    for submodel in export.SUBMODELS:
        assert table.loc[submodel].to_dict() == expected


def test_fp32_export_holds_nothing_quantized(tiny):
    counts = quantize.count_quantized(quantize.ensure_variant(tiny, "fp32"))
    assert (counts == 0).all().all()


def test_int8_recipe_compresses_every_submodel_and_is_skipped_when_complete(tiny, capsys):
    folder = quantize.ensure_variant(tiny, "int8")
    assert folder == export.variant_dir(tiny, "int8") and export.is_complete(folder)
    counts = quantize.count_quantized(folder)
    assert (counts["int8"] > 0).all()
    assert (counts["int4"] == 0).all() and (counts["fake_quantize"] == 0).all()
    record = quantize.read_record(folder)
    assert record["variant"] == "int8" and record["seconds"] > 0
    assert record["peak_rss_MB"] >= record["start_rss_MB"] > 0
    assert (folder / "preprocessor_config.json").is_file()  # self-contained: the processor is saved with it

    bin_mtime = (folder / "openvino_language_model.bin").stat().st_mtime_ns
    assert quantize.ensure_variant(tiny, "int8") == folder
    assert (folder / "openvino_language_model.bin").stat().st_mtime_ns == bin_mtime


def test_int4_recipe_puts_4bit_weights_in_the_language_model_only(tiny):
    counts = quantize.count_quantized(quantize.ensure_variant(tiny, "int4"))
    lm = counts.loc["language_model"]
    assert lm["int4"] > 0
    assert lm["int8"] > 0  # NNCF's int8 backup for the output head
    others = counts.drop(index="language_model")
    assert (others["int4"] == 0).all() and (others["int8"] > 0).all()
    assert (counts["fake_quantize"] == 0).all()


@pytest.mark.parametrize("variant", ["int8", "int4"])
def test_the_command_line_makes_what_the_python_api_makes(tiny, tmp_path, variant):
    command = quantize.cli_command(tiny.source, variant)
    assert command[:3] == ["optimum-cli", "export", "openvino"] and f"int{quantize.RECIPES[variant]['bits']}" in command
    cli_dir = export.run_cli(command, tmp_path / f"{variant}-cli")
    assert quantize.count_quantized(cli_dir).equals(quantize.count_quantized(quantize.ensure_variant(tiny, variant)))


def test_awq_recipe_keeps_int4s_graph_but_changes_its_weights(tiny):
    plain = quantize.ensure_variant(tiny, "int4")
    folder = quantize.ensure_variant(tiny, "int4-awq")
    assert quantize.count_quantized(folder).equals(quantize.count_quantized(plain))
    changed = quantize.changed_weights(folder, plain)
    assert changed > 0 and quantize.changed_weights(plain, plain) == 0
    # only the language model was calibrated: the 8-bit submodels are int4's, constant for constant
    assert quantize.changed_weights(folder, plain, "vision_embeddings_model") == 0
    saved = json.loads((folder / "openvino_config.json").read_text())["quantization_config"]
    assert saved["quant_method"] == "awq" and saved["scale_estimation"] is True
    assert saved["num_samples"] == len(data.load_text_calibration()) == 32


def test_ratio_recipe_keeps_the_most_sensitive_layers_in_8_bits(tiny):
    plain = quantize.count_quantized(quantize.ensure_variant(tiny, "int4"))
    counts = quantize.count_quantized(quantize.ensure_variant(tiny, "int4-ratio"))
    lm = "language_model"
    assert 0 < counts.loc[lm, "int4"] < plain.loc[lm, "int4"]
    assert counts.loc[lm, "int8"] > plain.loc[lm, "int8"]
    assert counts.drop(index=lm).equals(plain.drop(index=lm))
    assert quantize.default_config("int4-ratio").ratio == quantize.INT4_RATIO < 1


def test_text_calibration_holds_what_the_language_model_receives(tiny, tiny_processor):
    from optimum.intel import OVModelForVisualCausalLM

    model = OVModelForVisualCausalLM.from_pretrained(str(quantize.ensure_variant(tiny, "fp32")), compile=False)
    prompts = data.load_text_calibration(3)
    calibration = quantize.text_calibration(model, tiny_processor, prompts)
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
    folder = quantize.ensure_variant(tiny, "mixed")
    counts = quantize.count_quantized(folder)
    assert counts.loc["vision_embeddings_model", "fake_quantize"] > 0
    assert counts.loc["language_model", "fake_quantize"] == 0
    assert counts.loc["text_embeddings_model", "fake_quantize"] == 0
    assert (counts["int8"] > 0).all() and (counts["int4"] == 0).all()
    saved = json.loads((folder / "openvino_config.json").read_text())["quantization_config"]
    assert saved["num_samples"] == len(data.load_calibration_dataset(50))  # all the rows data/ has (fewer than 50)


def test_combined_variant_has_the_static_vision_encoder_and_the_4bit_language_model(tiny):
    folder = quantize.ensure_variant(tiny, "mixed-int4")
    counts = quantize.count_quantized(folder)
    assert counts.loc["vision_embeddings_model"].equals(quantize.count_quantized(
        export.variant_dir(tiny, "mixed")).loc["vision_embeddings_model"])
    assert counts.loc["vision_embeddings_model", "fake_quantize"] > 0
    assert counts.loc["language_model", "int4"] > 0 and counts.loc["language_model", "fake_quantize"] == 0
    assert counts.drop(index="vision_embeddings_model").equals(
        quantize.count_quantized(export.variant_dir(tiny, "int4")).drop(index="vision_embeddings_model"))
    assert export.check_ir(folder) == folder and quantize.read_record(folder)["variant"] == "mixed-int4"
    saved = json.loads((folder / "openvino_config.json").read_text())
    assert saved["combined_from"] == quantize.COMBINED["mixed-int4"]
    recipes = saved["quantization_config"]["quantization_configs"]
    assert recipes["lm_model"]["bits"] == 4 and "smooth_quant_alpha" in recipes["vision_embeddings_model"]
    built = (folder / "openvino_config.json").stat().st_mtime_ns
    assert quantize.ensure_variant(tiny, "mixed-int4") == folder  # complete and current: kept as it is
    assert (folder / "openvino_config.json").stat().st_mtime_ns == built
    model, processor = chat.load_model(folder)
    answer = chat.ask(model, processor, "What is in this image?", [data.photo_path("cat")], max_new_tokens=3)
    assert answer.new_tokens == 3


def test_combined_variant_is_rebuilt_when_a_source_variant_changed(tiny, capsys):
    from optimum.intel import OVModelForVisualCausalLM, OVWeightQuantizationConfig

    quantize.ensure_variant(tiny, "mixed-int4")
    fp_dir = export.variant_dir(tiny, "fp32")

    def int4_at_half_ratio(folder):  # "Try this" of notebook 02: half the layers stay 8-bit
        config = OVWeightQuantizationConfig(bits=4, sym=False, group_size=128, ratio=0.5, group_size_fallback="adjust")
        OVModelForVisualCausalLM.from_pretrained(str(fp_dir), quantization_config=config, compile=False
                                                 ).save_pretrained(folder)

    try:
        quantize.build_variant(tiny, "int4", int4_at_half_ratio, force=True)
        capsys.readouterr()
        folder = quantize.ensure_variant(tiny, "mixed-int4")
        assert "rebuilding it" in capsys.readouterr().out
        lm = quantize.count_quantized(folder).loc["language_model"]
        assert lm.equals(quantize.count_quantized(export.variant_dir(tiny, "int4")).loc["language_model"])
    finally:
        quantize.ensure_variant(tiny, "int4", force=True)


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


def test_calibration_sees_one_tile_per_photo_and_the_ranges_can_be_compared(tiny, tmp_path):
    from transformers import AutoProcessor

    fp_dir = export.variant_dir(tiny, "fp32")
    processor = AutoProcessor.from_pretrained(quantize.calibration_processor(fp_dir))
    inputs = chat.question_inputs(processor, "What is in this image?", data.photo_path("cat"))
    assert inputs["pixel_values"].shape[1] == 1  # one 512x512 image instead of 13 tiles
    mixed = quantize.ensure_variant(tiny, "mixed")
    same = _compare_ranges(mixed, mixed)
    assert same["nodes"] == quantize.count_quantized(mixed).loc["vision_embeddings_model", "fake_quantize"]
    assert same["median_relative_difference"] == 0 == same["largest_relative_difference"]
    ranges = _activation_ranges(mixed)
    assert all(low < high for low, high in ranges.values())


def test_cost_and_size_tables_describe_the_built_variants(tiny):
    folders = {v: quantize.ensure_variant(tiny, v) for v in ("fp32", "int8", "int4")}
    sizes = quantize.size_table(folders)
    assert list(sizes.index) == ["fp32", "int8", "int4"]
    assert sizes.loc["fp32", "x smaller than fp32"] == 1.0
    assert sizes.loc["int8", "total"] < sizes.loc["fp32", "total"]
    assert sizes.loc["fp32", "total"] == pytest.approx(export.ir_size_bytes(folders["fp32"]) / 1e6, abs=0.01)
    costs = quantize.cost_table(tiny, ["int8", "int4"])
    assert (costs["seconds"] > 0).all() and (costs["peak memory (MB)"] > 0).all()


def test_same_model_gives_the_same_answer(tiny):
    fp = quantize.ensure_variant(tiny, "fp32")
    questions = [("astronaut", "What is in this image?"), (None, "What is the capital of France?")]
    answers = quantize.answers_side_by_side({"a": fp, "b": fp}, questions, max_new_tokens=4)
    assert list(answers.index) == [(q, v) for v in "ab" for _, q in questions]
    assert ((answers["new tokens"] >= 1) & (answers["new tokens"] <= 4)).all()
    for _, question in questions:
        a, b = answers.loc[(question, "a")], answers.loc[(question, "b")]
        assert b["first tokens same as a"] == b["new tokens"] and a["answer"] == b["answer"]


def test_a_failed_build_leaves_no_variant_and_no_record(tiny):
    def crash(folder):
        (folder / "config.json").write_text("{}")
        raise RuntimeError("quantization failed half-way")

    with pytest.raises(RuntimeError, match="half-way"):
        quantize.build_variant(tiny, "broken", crash)
    assert not export.variant_dir(tiny, "broken").exists()
    assert quantize.read_record(export.variant_dir(tiny, "broken")) is None


def test_unknown_recipes_are_refused(tiny):
    with pytest.raises(ValueError, match="unknown variant 'int2'"):
        quantize.ensure_variant(tiny, "int2")
    with pytest.raises(ValueError, match="processor_dir"):
        quantize.default_config("mixed")
    with pytest.raises(ValueError, match="unknown quantization recipe"):
        quantize.default_config("fp16")
    for variant in ("int4-awq", "mixed"):
        with pytest.raises(ValueError, match="no optimum-cli equivalent"):
            quantize.cli_command(tiny.source, variant)
