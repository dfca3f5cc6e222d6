"""The quantization recipes of notebook 02 (one table of Optimum Intel configs), built into IR variants, and what
each variant holds: quantized node counts, size on disk, build cost."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from helpers import chat, data, export, images, store
from helpers.models import ModelChoice

VARIANTS = ("fp32", "int8", "int4", "int4-awq", "int4-ratio", "mixed", "mixed-int4")
TEXT_CALIBRATED = ("int4-awq", "int4-ratio")  # calibrated on text prompts (data/calibration_text.jsonl)
# Put together from other variants' submodels, no quantizer run: {submodel: the variant it comes from} (the other
# parts of a vision encoder, e.g. Qwen2-VL's merger, go with vision_embeddings_model). Each recipe quantizes each
# submodel on its own, so this is what one recipe with both settings would make.
COMBINED = {"mixed-int4": {"vision_embeddings_model": "mixed", "text_embeddings_model": "int4",
                           "language_model": "int4"}}


def recipes() -> dict:
    """The recipes, as the Optimum Intel config objects notebook 02 builds with (a fresh copy at each call)."""
    from optimum.intel import OVPipelineQuantizationConfig, OVQuantizationConfig, OVWeightQuantizationConfig

    # openvino_notebooks' SmolVLM2 recipe (symmetric, groups of 64): as fast as optimum-intel's own default for
    # SmolVLM2-256M (asymmetric, groups of 128) or faster, and closer to FP32 (notebook 05 measures both); "adjust"
    # gives rows that the group size does not divide the largest group size that fits
    int4 = dict(bits=4, sym=True, group_size=64, ratio=1.0, group_size_fallback="adjust")
    return {
        "int8": OVWeightQuantizationConfig(bits=8),  # the blog's recipe
        "int4": OVWeightQuantizationConfig(**int4),
        "int4-awq": OVWeightQuantizationConfig(**int4, quant_method="awq", scale_estimation=True, num_samples=32),
        "int4-ratio": OVWeightQuantizationConfig(**{**int4, "ratio": 0.8}, num_samples=32,
                                                 sensitivity_metric="hessian_input_activation"),
        "mixed": OVPipelineQuantizationConfig(  # the blog's second recipe: a statically quantized vision encoder
            quantization_configs={"lm_model": OVWeightQuantizationConfig(bits=8),
                                  "text_embeddings_model": OVWeightQuantizationConfig(bits=8),
                                  # static: symmetric int8, SmoothQuant off (with it, the encoder fitted our few
                                  # calibration photos and drifted on new tiles; notebook 02 says more)
                                  "vision_embeddings_model": OVQuantizationConfig(bits=8, sym=True,
                                                                                  smooth_quant_alpha=-1)},
            dataset="textvqa",  # how our rows are laid out (image, question); no download when rows are given
            num_samples=50),
    }


def cli_command(source: str, variant: str) -> list[str]:
    """The ``optimum-cli export openvino`` command that makes weight-only ``variant`` (output folder goes last)."""
    if variant not in ("int8", "int4"):
        raise ValueError(f"recipe {variant!r} has no optimum-cli equivalent here: only int8 and int4 do (the others "
                         "need calibration data)")
    config = recipes()[variant]
    command = ["optimum-cli", "export", "openvino", "--model", str(source), "--task", export.TASK,
               "--weight-format", f"int{config.bits}"]
    if config.bits == 4:
        command += ["--group-size", str(config.group_size), "--ratio", str(config.ratio),
                    "--group-size-fallback", config.group_size_fallback] + (["--sym"] if config.sym else [])
    return command


def _facts(choice: ModelChoice, variant: str, config=None) -> dict:
    if variant in COMBINED:
        return export.facts(choice.source, combined=COMBINED[variant])
    config = config or recipes()[variant]
    return export.facts(choice.source, recipe=json.dumps(config.to_dict(), sort_keys=True, default=str))


def vision_encoder(folder: Path) -> list[str]:
    """The submodels of an IR folder that make its vision encoder, the ones optimum-intel runs as vision embeddings:
    ``vision_embeddings_model``, and for some architectures more (Qwen2-VL: ``vision_embeddings_merger_model``)."""
    from optimum.intel.openvino.modeling_visual_language import MODEL_PARTS_CLS_MAPPING, OVVisionEmbedding

    return [name for name in export.ir_files(folder)
            if MODEL_PARTS_CLS_MAPPING.get(name.removesuffix("_model")) is OVVisionEmbedding]


def calibration_processor(fp32: Path) -> Path:
    """A copy of ``fp32``'s processor that makes one tile of each photo (its longest edge set to the model's own
    tile size), for calibrating the mixed recipe in minutes rather than a quarter of an hour; a processor that
    cuts no tiles is copied as it is."""
    from transformers import AutoProcessor

    def make(folder: Path) -> None:
        processor = AutoProcessor.from_pretrained(fp32)
        if images.tile_size(processor):
            processor.image_processor.size = {"longest_edge": images.tile_size(processor)}
        processor.save_pretrained(folder)

    return store.build(fp32.parent / "calibration-processor", make, facts=export.facts(fp32), quiet=True)


def text_calibration(model, processor, prompts: list[str]):
    """An ``OVCalibrationDataset`` of what ``model``'s language model receives for each text-only prompt. Written
    by hand: Optimum Intel's builder (``_prepare_visual_causal_lm_calibration_data``) wants a photo in every row;
    these are its steps without one (text only, as a stand-in's vision encoder is random)."""
    import nncf
    from optimum.intel import OVCalibrationDataset

    rows = []
    for prompt in prompts:
        embeds, mask, positions, *_ = model.get_multimodal_embeddings(**chat.question_inputs(processor, prompt))
        rows.append(model.language_model.prepare_inputs(input_ids=None, attention_mask=mask,
                                                        position_ids=positions, inputs_embeds=embeds))
    return OVCalibrationDataset({"lm_model": nncf.Dataset(rows)})


def build(choice: ModelChoice, variant: str, *, config=None, force: bool = False) -> Path:
    """The IR folder of ``variant`` of ``choice``, quantized now from the FP32 IR with :func:`recipes` unless it is
    already on disk (then skipped), recording its build time and peak memory. ``config``: a data-free weight-only
    config of your own (``OVWeightQuantizationConfig``), built as ``variant`` (a name of your own)."""
    from optimum.intel import OVConfig, OVModelForVisualCausalLM, OVQuantizer
    from transformers import AutoProcessor

    if variant == "fp32":
        return export.export_fp32(choice, force=force)
    if variant in COMBINED:
        return combine(choice, variant, force=force)
    if variant not in VARIANTS and config is None:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    dest = export.variant_dir(choice, variant)
    if not force and store.is_built(dest, _facts(choice, variant, config), export.REQUIRED):
        return dest
    fp32, config = export.export_fp32(choice), config or recipes()[variant]

    def make(folder: Path) -> None:
        if variant not in TEXT_CALIBRATED and variant != "mixed":  # data-free: compressed while loading
            OVModelForVisualCausalLM.from_pretrained(fp32, quantization_config=config, compile=False
                                                     ).save_pretrained(folder)
        else:
            model = OVModelForVisualCausalLM.from_pretrained(fp32, compile=False)
            if variant == "mixed":  # static: calibrated on our photos, one tile each
                config.processor = config.tokenizer = str(calibration_processor(fp32))
                for name in vision_encoder(fp32):  # every part of the vision encoder, as vision_embeddings_model
                    config.quantization_configs.setdefault(name, config.quantization_configs[
                        "vision_embeddings_model"].clone())
                rows = data.load_calibration_dataset(config.num_samples)
                config.num_samples = len(rows)
            else:
                rows = text_calibration(model, AutoProcessor.from_pretrained(fp32),
                                        data.load_text_calibration(config.num_samples))
            OVQuantizer(model).quantize(calibration_dataset=rows, save_directory=folder,
                                        ov_config=OVConfig(quantization_config=config))
        AutoProcessor.from_pretrained(fp32).save_pretrained(folder)

    return store.build(dest, make, facts=_facts(choice, variant, config), required=export.REQUIRED, force=force,
                       needed_bytes=export.ir_size_bytes(fp32))


def combine(choice: ModelChoice, variant: str, *, force: bool = False) -> Path:
    """Build :data:`COMBINED` ``variant`` by copying each submodel's IR files from the variant it comes from (built
    first if missing); rebuilt when one of those was rebuilt since (the files' sizes and times say so)."""
    named = COMBINED[variant]
    built = {source: build(choice, source) for source in dict.fromkeys(named.values())}
    base, vision = built[named["language_model"]], vision_encoder(built[named["vision_embeddings_model"]])
    # every submodel: the rest of the vision encoder as vision_embeddings_model, any other as the language model
    parts = {name: named.get(name, named["vision_embeddings_model" if name in vision else "language_model"])
             for name in export.ir_files(base)}
    sources = {name: built[source] for name, source in parts.items()}
    made_of = {f"{parts[name]}/{path.name}": [path.stat().st_size, path.stat().st_mtime_ns]
               for name, source in sources.items() for path in export.ir_files(source)[name]}

    def make(folder: Path) -> None:
        for path in base.iterdir():
            if path.is_file() and not path.name.startswith(("openvino_", store.MARKER)):
                shutil.copy2(path, folder / path.name)
        for name, source in sources.items():
            for path in export.ir_files(source)[name]:
                shutil.copy2(path, folder / path.name)
        for path in base.glob("openvino_*tokenizer.*"):
            shutil.copy2(path, folder / path.name)
        config = json.loads((base / "openvino_config.json").read_text())
        each = config["quantization_config"].setdefault("quantization_configs", {})
        for name, source in parts.items():
            theirs = json.loads((sources[name] / "openvino_config.json").read_text())["quantization_config"]
            key = {"language_model": "lm_model"}.get(name, name)
            each[key] = theirs.get("quantization_configs", {}).get(key, each.get(key))
        (folder / "openvino_config.json").write_text(json.dumps({**config, "combined_from": parts}, indent=2))

    return store.build(export.variant_dir(choice, variant), make, facts={**_facts(choice, variant),
                       "made_of": made_of}, required=export.REQUIRED, force=force)


def count_quantized(folder: Path):
    """Per submodel: ``int8`` and ``int4`` outputs (compressed weights and zero points) and ``fake_quantize`` ops
    (activation quantizers, which only static quantization leaves), counted as optimum-intel's tests count them."""
    import openvino as ov
    import pandas as pd

    rows = {}
    for name, (xml, _) in export.ir_files(folder).items():
        counts = dict.fromkeys(("int8", "int4", "fake_quantize"), 0)
        for op in ov.Core().read_model(xml).get_ops():
            counts["fake_quantize"] += op.get_type_name() in ("FakeQuantize", "FakeConvert")
            for i in range(op.get_output_size()):
                kind = op.get_output_element_type(i).get_type_name()
                counts["int8"] += kind in ("i8", "u8")
                counts["int4"] += kind in ("i4", "u4")
        rows[name] = counts
    return pd.DataFrame(rows).T.rename_axis("submodel")


def changed_weights(a: Path, b: Path, submodel: str = "language_model") -> int:
    """How many compressed weight constants of ``submodel``, matched by name, differ between IR folders ``a`` and
    ``b`` (0: a data-aware recipe changed nothing)."""
    import numpy as np
    import openvino as ov

    def compressed(folder: Path) -> dict:
        return {op.get_friendly_name(): op.get_data() for op in ov.Core().read_model(
                export.ir_files(folder)[submodel][0]).get_ops() if op.get_type_name() == "Constant"
                and op.get_output_element_type(0).get_type_name() in ("i8", "u8", "i4", "u4")}

    first, second = compressed(a), compressed(b)
    return sum(not np.array_equal(first[name], second[name]) for name in first.keys() & second.keys())


def on_disk(choice: ModelChoice) -> dict[str, Path]:
    """``{variant: folder}`` of the finished IR variants of ``choice`` on disk, in :data:`VARIANTS` order."""
    return {v: export.variant_dir(choice, v) for v in VARIANTS if export.is_complete(export.variant_dir(choice, v))}
