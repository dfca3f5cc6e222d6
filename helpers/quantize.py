"""Quantized IR variants (notebook 02): the recipes, atomic builds that record their cost, and what they hold.

Notebook 02 shows each recipe's Optimum Intel calls step by step; :func:`ensure_variant` runs the same recipes
for later notebooks. Each build's wall time and peak memory go to ``quantization.json`` in its folder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from helpers import atomic, chat, data, export, images, memory
from helpers.models import ModelChoice

RECIPE_FILE = "quantization.json"
DEFAULT_NUM_SAMPLES = 50  # the source blog's calibration size; data/ ships fewer, and then all of them are used
# The mixed recipe calibrates on each photo as one 512x512 image: SmolVLM's default tiling (up to 17 tiles per
# photo) made calibration most of notebook 02's time; the README compares the two calibrations.
CALIBRATION_LONGEST_EDGE = images.TILE_SIZE
# Variants put together from other variants' submodels, no quantizer run: {submodel: the variant it comes from}.
# Each recipe quantizes each submodel on its own, so this is what one recipe with both settings would produce.
COMBINED = {"mixed-int4": {"vision_embeddings_model": "mixed", "text_embeddings_model": "int4",
                           "language_model": "int4"}}
# The data-aware 4-bit recipes calibrate the language model on text-only prompts (data/calibration_text.jsonl).
TEXT_CALIBRATED = ("int4-awq", "int4-ratio")
INT4_RATIO = 0.8  # int4-ratio: the share of the language model's layers in 4 bits; NNCF's sensitivity picks which
QUANTIZED_VARIANTS = ("int8", "int4", *TEXT_CALIBRATED, "mixed", *COMBINED)

# Element types counted as optimum-intel's tests count them (tests/openvino/utils_tests.py,
# get_num_quantized_nodes): every op output of these types, i.e. compressed weights and their zero points.
_INT8_TYPES = {"i8", "u8"}
_INT4_TYPES = {"i4", "u4"}
_FAKE_OPS = {"FakeQuantize", "FakeConvert"}

# optimum-intel's own default 4-bit config for SmolVLM2-256M; "adjust" shrinks the group for rows whose width is
# not a multiple of 128 (the real model's hidden size 576; the tiny stand-in's 64).
_INT4 = {"bits": 4, "sym": False, "group_size": 128, "ratio": 1.0, "group_size_fallback": "adjust"}
# The weight-only recipes: arguments of OVWeightQuantizationConfig (the data-aware ones also get num_samples).
RECIPES = {
    "int8": {"bits": 8},
    "int4": _INT4,
    "int4-awq": {**_INT4, "quant_method": "awq", "scale_estimation": True},
    "int4-ratio": {**_INT4, "ratio": INT4_RATIO, "sensitivity_metric": "hessian_input_activation"},
}


def default_config(variant: str, processor_dir: Path | None = None, num_samples: int = DEFAULT_NUM_SAMPLES):
    """The quantization config of recipe ``variant``: :data:`RECIPES`, or for ``mixed`` the pipeline config of
    notebook 02, which needs ``processor_dir`` (see :func:`calibration_processor`)."""
    from optimum.intel import OVPipelineQuantizationConfig, OVQuantizationConfig, OVWeightQuantizationConfig

    if variant in RECIPES:
        calibration = {"num_samples": num_samples} if variant in TEXT_CALIBRATED else {}
        return OVWeightQuantizationConfig(**RECIPES[variant], **calibration)
    if variant == "mixed":
        if processor_dir is None:
            raise ValueError("the mixed recipe needs processor_dir, the folder of the processor for calibration")
        return OVPipelineQuantizationConfig(
            quantization_configs={
                "lm_model": OVWeightQuantizationConfig(**RECIPES["int8"]),
                "text_embeddings_model": OVWeightQuantizationConfig(**RECIPES["int8"]),
                "vision_embeddings_model": OVQuantizationConfig(bits=8),  # static: weights and activations
            },
            dataset="textvqa",  # the column layout (image, question) of our own set; no download when one is given
            num_samples=num_samples,
            processor=str(processor_dir),
            tokenizer=str(processor_dir),  # without it, optimum-intel looks for a tokenizer named "None" on the Hub
        )
    raise ValueError(f"unknown quantization recipe {variant!r}; choose one of {QUANTIZED_VARIANTS}")


def cli_command(source: str, variant: str) -> list[str]:
    """The ``optimum-cli export openvino`` command for weight-only recipe ``variant`` (output folder goes last)."""
    recipe = RECIPES.get(variant)
    if recipe is None or set(recipe) - {"bits", "sym", "group_size", "ratio", "group_size_fallback"}:
        raise ValueError(f"recipe {variant!r} has no optimum-cli equivalent (it needs calibration data)")
    command = ["optimum-cli", "export", "openvino", "--model", str(source), "--task", "image-text-to-text",
               "--weight-format", f"int{recipe['bits']}"]
    if recipe["bits"] == 4:
        command += ["--group-size", str(recipe["group_size"]), "--ratio", str(recipe["ratio"]),
                    "--group-size-fallback", recipe["group_size_fallback"]] + (["--sym"] if recipe["sym"] else [])
    return command


def calibration_processor(fp_dir: Path, longest_edge: int = CALIBRATION_LONGEST_EDGE) -> Path:
    """A copy of ``fp_dir``'s processor that resizes images to ``longest_edge`` before tiling (512: one tile),
    saved once next to the variants, for the mixed recipe."""
    from transformers import AutoProcessor

    dest = Path(fp_dir).parent / f"calibration-processor-{longest_edge}"
    with atomic.locked(dest):
        if not (dest / "preprocessor_config.json").is_file():
            with atomic.partial_folder(dest) as tmp:
                processor = AutoProcessor.from_pretrained(fp_dir)
                processor.image_processor.size = {"longest_edge": int(longest_edge)}
                processor.save_pretrained(tmp)
    return dest


def text_calibration(model, processor, prompts: Sequence[str]):
    """An ``OVCalibrationDataset`` of what the language model of ``model`` receives for each text-only prompt.

    Written by hand: Optimum Intel's own builder (``OVCalibrationDatasetBuilder.
    _prepare_visual_causal_lm_calibration_data``) needs a photo in every row; these are its steps without one
    (text only, as a stand-in's vision encoder is random).
    """
    import nncf
    from optimum.intel import OVCalibrationDataset

    rows = []
    for prompt in prompts:
        embeds, mask, positions, *_ = model.get_multimodal_embeddings(**chat.question_inputs(processor, prompt))
        rows.append(model.language_model.prepare_inputs(input_ids=None, attention_mask=mask,
                                                        position_ids=positions, inputs_embeds=embeds))
    return OVCalibrationDataset({"lm_model": nncf.Dataset(rows)})


def ensure_variant(choice: ModelChoice, variant: str, *, force: bool = False) -> Path:
    """The complete IR folder of ``variant`` (``fp32`` or one of :data:`QUANTIZED_VARIANTS`), built now with
    notebook 02's recipes if missing."""
    if variant == "fp32":
        return export.export_fp32(choice, force=force)
    if variant not in QUANTIZED_VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {export.VARIANTS}")
    if variant in COMBINED:
        return combine_submodels(choice, variant, force=force)
    if export.is_complete(export.variant_dir(choice, variant)) and not force:
        return export.variant_dir(choice, variant)
    fp_dir = export.export_fp32(choice)
    if variant == "mixed":
        calibration_set = data.load_calibration_dataset(DEFAULT_NUM_SAMPLES)
        config = default_config("mixed", calibration_processor(fp_dir), num_samples=len(calibration_set))
    elif variant in TEXT_CALIBRATED:
        prompts = data.load_text_calibration(DEFAULT_NUM_SAMPLES)
        config = default_config(variant, num_samples=len(prompts))
    else:
        config = default_config(variant)

    def build(folder: Path) -> None:
        from optimum.intel import OVConfig, OVModelForVisualCausalLM, OVQuantizer
        from transformers import AutoProcessor

        if variant not in TEXT_CALIBRATED and variant != "mixed":  # data-free: compressed while loading
            model = OVModelForVisualCausalLM.from_pretrained(str(fp_dir), quantization_config=config, compile=False)
            model.save_pretrained(folder)
            return
        model = OVModelForVisualCausalLM.from_pretrained(str(fp_dir), compile=False)
        OVQuantizer(model).quantize(
            calibration_dataset=calibration_set if variant == "mixed"
            else text_calibration(model, AutoProcessor.from_pretrained(fp_dir), prompts),
            ov_config=OVConfig(quantization_config=config),
            save_directory=folder,
        )

    return build_variant(choice, variant, build, force=force)


def combine_submodels(choice: ModelChoice, variant: str, *, force: bool = False) -> Path:
    """Build :data:`COMBINED` variant ``variant`` from the IR files of its source variants (built first if
    missing), the rest of the language model's variant, and an ``openvino_config.json`` with each recipe."""
    import shutil

    parts = COMBINED[variant]
    sources = {name: ensure_variant(choice, source) for name, source in parts.items()}
    base = sources["language_model"]
    ir_names = {path.name for pair in export.ir_files(base).values() for path in pair}
    # size and time of the files it is made of: a source variant rebuilt since (another recipe) makes it stale
    made_of = {f"{parts[name]}/{path.name}": [path.stat().st_size, path.stat().st_mtime_ns]
               for name, source in sources.items() for path in export.ir_files(source)[name]}
    target = export.variant_dir(choice, variant)
    if export.is_complete(target) and not force:
        if (atomic.read_record(target / "openvino_config.json") or {}).get("combined_files") == made_of:
            return target
        print(f"{variant} was put together from earlier builds of {', '.join(sorted(set(parts.values())))}; "
              "rebuilding it.")
        force = True

    def build(folder: Path) -> None:
        for path in base.iterdir():
            if path.is_file() and path.name not in ir_names | {export.COMPLETE_MARKER, RECIPE_FILE}:
                shutil.copy2(path, folder / path.name)
        for name, source in sources.items():
            for path in export.ir_files(source)[name]:
                shutil.copy2(path, folder / path.name)
        config = json.loads((base / "openvino_config.json").read_text())
        recipes = config["quantization_config"].setdefault("quantization_configs", {})
        for name, source in parts.items():
            theirs = json.loads((sources[name] / "openvino_config.json").read_text())["quantization_config"]
            key = {"language_model": "lm_model"}.get(name, name)
            if key in theirs.get("quantization_configs", {}):
                recipes[key] = theirs["quantization_configs"][key]
        config["combined_from"] = parts
        config["combined_files"] = made_of
        (folder / "openvino_config.json").write_text(json.dumps(config, indent=2) + "\n")

    return build_variant(choice, variant, build, force=force)


def build_variant(choice: ModelChoice, variant: str, build: Callable[[Path], None], *, force: bool = False) -> Path:
    """Run ``build(folder)`` for ``variant`` atomically, recording its time and peak memory in
    ``quantization.json``; the processor is saved too if the build did not. A complete variant is skipped."""
    from transformers import AutoProcessor

    def build_and_record(folder: Path) -> None:
        print(f"Building {variant!r} into {folder}", flush=True)
        with memory.measure() as cost:
            build(folder)
        if not (folder / "preprocessor_config.json").is_file():
            AutoProcessor.from_pretrained(choice.source).save_pretrained(folder)
        record = {"variant": variant, "model": choice.slug, **cost, "built": time.strftime("%Y-%m-%d %H:%M:%S")}
        (folder / RECIPE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        print(f"{variant}: {cost['seconds']} s, peak memory {cost['peak_rss_MB']} MB "
              f"({cost['peak_rss_MB'] - cost['start_rss_MB']:+} MB over the {cost['start_rss_MB']} MB before)")

    fp_dir = export.variant_dir(choice, "fp32")
    # A quantized IR is smaller than the FP32 IR it is made from: that size bounds what the build writes.
    needed = export.ir_size_bytes(fp_dir) if export.is_complete(fp_dir) else None
    return export.build_atomically(export.variant_dir(choice, variant), build_and_record, force=force,
                                   needed_bytes=needed)


def read_record(folder: Path) -> dict | None:
    """The cost record :func:`build_variant` wrote into ``folder``, or ``None`` (none, or damaged)."""
    return atomic.read_record(Path(folder) / RECIPE_FILE)


def cost_table(choice: ModelChoice, variants: Sequence[str] = QUANTIZED_VARIANTS):
    """Time and peak memory each recipe took when its variant was built (from ``quantization.json``)."""
    import pandas as pd

    rows = []
    for variant in variants:
        record = read_record(export.variant_dir(choice, variant)) or {}
        rows.append({
            "variant": variant,
            "seconds": record.get("seconds"),
            "peak memory (MB)": record.get("peak_rss_MB"),
            "added over start (MB)": (record["peak_rss_MB"] - record["start_rss_MB"]) if record else None,
            "built": record.get("built"),
        })
    return pd.DataFrame(rows).set_index("variant")


def count_quantized(folder: Path):
    """Per submodel: ``int8`` and ``int4`` outputs (compressed weights and zero points) and ``fake_quantize``
    ops (FakeQuantize/FakeConvert: activation quantizers of static quantization), as optimum-intel's tests count."""
    import openvino as ov
    import pandas as pd

    core = ov.Core()
    rows = []
    for name, (xml, _) in export.ir_files(folder).items():
        counts = {"int8": 0, "int4": 0, "fake_quantize": 0}
        for op in core.read_model(xml).get_ops():
            if op.get_type_name() in _FAKE_OPS:
                counts["fake_quantize"] += 1
            for i in range(op.get_output_size()):
                element_type = op.get_output_element_type(i).get_type_name()
                if element_type in _INT8_TYPES:
                    counts["int8"] += 1
                elif element_type in _INT4_TYPES:
                    counts["int4"] += 1
        rows.append({"submodel": name, **counts})
    return pd.DataFrame(rows).set_index("submodel")


def changed_weights(a: Path, b: Path, submodel: str = "language_model") -> int:
    """How many compressed (int8/int4) weight constants of ``submodel``, matched by name, differ between the
    IRs in folders ``a`` and ``b`` (0: a data-aware recipe changed nothing)."""
    import numpy as np
    import openvino as ov

    def compressed(folder: Path) -> dict:
        ops = ov.Core().read_model(export.ir_files(folder)[submodel][0]).get_ops()
        return {op.get_friendly_name(): op for op in ops if op.get_type_name() == "Constant"
                and op.get_output_element_type(0).get_type_name() in _INT8_TYPES | _INT4_TYPES}

    first, second = compressed(a), compressed(b)
    return sum(not np.array_equal(first[name].get_data(), second[name].get_data())
               for name in first.keys() & second.keys())


def count_table(folders: dict[str, Path]):
    """:func:`count_quantized` of several variants side by side: one row per submodel, columns (variant, count)."""
    import pandas as pd

    return pd.concat({variant: count_quantized(folder) for variant, folder in folders.items()}, axis=1)


def size_table(folders: dict[str, Path], reference: str = "fp32"):
    """MB on disk (.xml + .bin) per variant and submodel, the total, and how many times smaller than
    ``reference`` each total is."""
    import pandas as pd

    table = pd.DataFrame({variant: {name: (x.stat().st_size + b.stat().st_size) / 1e6
                                    for name, (x, b) in export.ir_files(folder).items()}
                          for variant, folder in folders.items()}).T
    table["total"] = table.sum(axis=1)
    if reference in table.index:
        table["x smaller than " + reference] = table.loc[reference, "total"] / table["total"]
    table.index.name = "variant"
    return table.round(2)


def plot_sizes(table, title: str = "IR size on disk per variant"):
    """Stacked bar chart of :func:`size_table`: one bar per variant, one colour per submodel, total on top."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    table[list(export.SUBMODELS)].plot.bar(stacked=True, ax=ax, rot=0, color=["#4c72b0", "#dd8452", "#55a868"])
    ratio = next((c for c in table.columns if c.startswith("x smaller")), None)
    for i, (variant, total) in enumerate(table["total"].items()):
        smaller = table.loc[variant, ratio] if ratio else 1.0
        size = f"{total:,.0f} MB" if total >= 10 else f"{total:.2f} MB"
        label = size + (f"\n{smaller:.1f}x smaller" if smaller != 1.0 else "")
        ax.text(i, total, label, ha="center", va="bottom", fontsize="small")
    ax.set(ylabel="MB on disk (.xml + .bin)", xlabel="", title=title, ylim=(0, table["total"].max() * 1.25))
    ax.legend(title="submodel", fontsize="small")
    fig.tight_layout()
    return fig


def answers_side_by_side(
    folders: dict[str, Path],
    questions: Sequence[tuple[str | None, str]] = (("astronaut", "Describe this image briefly."),),
    max_new_tokens: int = 20,
    longest_edge: int | None = images.TILE_SIZE,
):
    """Each variant's greedy answer to the same ``(photo or None, question)`` pairs (photos at ``longest_edge``),
    and how many of its first tokens match the first variant's; one row per question and variant."""
    import pandas as pd

    first = next(iter(folders))
    rows, reference = [], {}
    for variant, folder in folders.items():
        model, processor = chat.load_model(folder)
        for photo, question in questions:
            answer = chat.ask(model, processor, question, [data.photo_path(photo)] if photo else [],
                              max_new_tokens=max_new_tokens, longest_edge=longest_edge if photo else None)
            tokens = reference.setdefault(question, answer.token_ids)
            same = next((i for i, (a, b) in enumerate(zip(answer.token_ids, tokens)) if a != b),
                        min(len(answer.token_ids), len(tokens)))
            rows.append({"question": question, "variant": variant, "answer": answer.text,
                         "new tokens": answer.new_tokens, f"first tokens same as {first}": same})
        del model
    return pd.DataFrame(rows).set_index(["question", "variant"])
