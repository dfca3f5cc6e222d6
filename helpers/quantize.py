"""Quantized IR variants (notebook 02): build them atomically with their cost recorded, and show what they hold.

Notebook 02 shows the Optimum Intel calls of each recipe step by step; :func:`ensure_variant` runs the same
recipes for a later notebook that runs on its own. Each build records its wall time and peak memory in
``quantization.json`` inside the variant folder (written before the folder is moved into place), so a re-run
that skips a complete variant still shows the figures measured when it was built.
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
# The mixed recipe calibrates the vision encoder on each photo as one 512x512 image (the processor's
# longest_edge): with SmolVLM's default (2048) every photo becomes up to 17 tiles, which made calibration take
# most of notebook 02's time; the README compares the activation ranges of both calibrations.
CALIBRATION_LONGEST_EDGE = images.TILE_SIZE
# Variants put together from the submodels of others, no quantizer run: for each submodel (as
# helpers.export.SUBMODELS names them), the variant it comes from. An IR variant is three separate IR files, and
# each recipe quantizes each submodel on its own (the static vision encoder is calibrated on vision activations
# only), so this is what one recipe with both settings would produce, without calibrating a second time.
COMBINED = {"mixed-int4": {"vision_embeddings_model": "mixed", "text_embeddings_model": "int4",
                           "language_model": "int4"}}
# The data-aware 4-bit recipes measure the language model's activations on text-only prompts
# (data/calibration_text.jsonl, see :func:`text_calibration`).
TEXT_CALIBRATED = ("int4-awq", "int4-ratio")
INT4_RATIO = 0.8  # int4-ratio: the share of the language model's layers in 4 bits; NNCF's sensitivity picks which
QUANTIZED_VARIANTS = ("int8", "int4", *TEXT_CALIBRATED, "mixed", *COMBINED)

# Element types counted as optimum-intel's tests count them (tests/openvino/utils_tests.py,
# get_num_quantized_nodes): every op output of these types, i.e. compressed weights and their zero points.
_INT8_TYPES = {"i8", "u8"}
_INT4_TYPES = {"i4", "u4"}
_FAKE_OPS = {"FakeQuantize", "FakeConvert"}


# --- the recipes (notebook 02 builds each of them with these arguments, step by step) ----------------------

# optimum-intel's own default 4-bit config for SmolVLM2-256M; "adjust" shrinks the group for rows whose width is
# not a multiple of 128 (the real model's hidden size 576; the tiny stand-in's 64).
_INT4 = {"bits": 4, "sym": False, "group_size": 128, "ratio": 1.0, "group_size_fallback": "adjust"}
# The weight-only recipes: the arguments of OVWeightQuantizationConfig. The data-aware ones also get
# num_samples, the number of calibration prompts.
RECIPES = {
    "int8": {"bits": 8},
    "int4": _INT4,
    "int4-awq": {**_INT4, "quant_method": "awq", "scale_estimation": True},
    "int4-ratio": {**_INT4, "ratio": INT4_RATIO, "sensitivity_metric": "hessian_input_activation"},
}


def default_config(variant: str, processor_dir: Path | None = None, num_samples: int = DEFAULT_NUM_SAMPLES):
    """The quantization config of recipe ``variant`` (one of :data:`QUANTIZED_VARIANTS` but the combined ones):
    :data:`RECIPES`, or for ``mixed`` the pipeline config notebook 02 shows.

    ``mixed`` needs ``processor_dir`` (the processor that turns calibration photos into model inputs:
    :func:`calibration_processor` bounds their tiles); ``num_samples`` is how many calibration rows the mixed
    and data-aware recipes use.
    """
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
    """The ``optimum-cli export openvino`` command that exports ``source`` and compresses it like the weight-only
    recipe ``variant`` (``int8`` or ``int4``, from :data:`RECIPES`); the output folder goes last."""
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
    """A copy of the processor of ``fp_dir`` that resizes every image to ``longest_edge`` pixels before cutting
    tiles (512: one tile per photo), saved once next to the variants; pass it as the mixed recipe's processor."""
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
    """Calibration data for the language model of ``model`` (an ``OVModelForVisualCausalLM``): what it receives
    when asked each of ``prompts`` without an image, as an ``OVCalibrationDataset`` for ``OVQuantizer.quantize``.

    Written here because Optimum Intel's own builder for vision-language models
    (``OVCalibrationDatasetBuilder._prepare_visual_causal_lm_calibration_data``) needs a photo in every row; these
    are its steps without one. Text only, because a stand-in's vision encoder is random: image tokens would show
    the real language model activations it never meets in the text it is scored on.
    """
    import nncf
    from optimum.intel import OVCalibrationDataset

    rows = []
    for prompt in prompts:
        inputs = chat.question_inputs(processor, prompt)
        embeds, mask, positions, *_ = model.get_multimodal_embeddings(**inputs)
        rows.append(model.language_model.prepare_inputs(input_ids=None, attention_mask=mask,
                                                        position_ids=positions, inputs_embeds=embeds))
    return OVCalibrationDataset({"lm_model": nncf.Dataset(rows)})


def ensure_variant(choice: ModelChoice, variant: str, *, force: bool = False) -> Path:
    """The complete IR folder of ``variant`` (``fp32`` or one of :data:`QUANTIZED_VARIANTS`), built now if
    missing.

    Uses the recipes of notebook 02 (:data:`RECIPES`, :func:`default_config`) on the FP32 IR, which is exported
    first if needed.
    A complete folder is reused as it is; builds are atomic (:func:`helpers.export.build_atomically`).
    """
    if variant == "fp32":
        return export.export_fp32(choice, force=force)
    if variant not in QUANTIZED_VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {export.VARIANTS}")
    target = export.variant_dir(choice, variant)
    if variant in COMBINED:
        return combine_submodels(choice, variant, force=force)
    if export.is_complete(target) and not force:
        return target
    fp_dir = export.export_fp32(choice)

    if variant == "mixed":
        calibration_set = data.load_calibration_dataset(DEFAULT_NUM_SAMPLES)
        config = default_config("mixed", calibration_processor(fp_dir), num_samples=len(calibration_set))

        def build(folder: Path) -> None:
            from optimum.intel import OVConfig, OVModelForVisualCausalLM, OVQuantizer

            model = OVModelForVisualCausalLM.from_pretrained(str(fp_dir), compile=False)
            OVQuantizer(model).quantize(
                calibration_dataset=calibration_set,
                ov_config=OVConfig(quantization_config=config),
                save_directory=folder,
            )

    elif variant in TEXT_CALIBRATED:
        prompts = data.load_text_calibration(DEFAULT_NUM_SAMPLES)
        config = default_config(variant, num_samples=len(prompts))

        def build(folder: Path) -> None:
            from optimum.intel import OVConfig, OVModelForVisualCausalLM, OVQuantizer
            from transformers import AutoProcessor

            model = OVModelForVisualCausalLM.from_pretrained(str(fp_dir), compile=False)
            OVQuantizer(model).quantize(
                calibration_dataset=text_calibration(model, AutoProcessor.from_pretrained(fp_dir), prompts),
                ov_config=OVConfig(quantization_config=config),
                save_directory=folder,
            )

    else:
        config = default_config(variant)

        def build(folder: Path) -> None:
            from optimum.intel import OVModelForVisualCausalLM

            model = OVModelForVisualCausalLM.from_pretrained(str(fp_dir), quantization_config=config, compile=False)
            model.save_pretrained(folder)

    return build_variant(choice, variant, build, force=force)


def combine_submodels(choice: ModelChoice, variant: str, *, force: bool = False) -> Path:
    """Build the :data:`COMBINED` variant ``variant``: each submodel's IR files copied from the variant it comes
    from (built first if missing); config, processor and tokenizer files from the language model's variant; an
    ``openvino_config.json`` that records each submodel's recipe."""
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
        config = atomic.read_record(target / "openvino_config.json") or {}
        if config.get("combined_files") == made_of:
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


# --- building a variant and recording what it cost --------------------------------------------------------


def build_variant(choice: ModelChoice, variant: str, build: Callable[[Path], None], *, force: bool = False) -> Path:
    """Run ``build(folder)`` for ``variant`` atomically, timing it and sampling its peak memory.

    The figures go to ``quantization.json`` in the folder; the processor is saved next to the model when the
    build did not save it, so the folder is self-contained. A complete variant is skipped (its figures stay).
    """
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
    """The cost record a build wrote into ``folder`` (``None`` for folders not built by :func:`build_variant`)."""
    path = Path(folder) / RECIPE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


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


# --- what a variant holds ---------------------------------------------------------------------------------


def count_quantized(folder: Path):
    """Per submodel: int8 and int4 constants and FakeQuantize nodes, counted as optimum-intel's tests count them.

    Follows ``get_num_quantized_nodes`` in optimum-intel's ``tests/openvino/utils_tests.py``: every op output of
    element type i8/u8 (``int8``) or i4/u4 (``int4``) is counted, i.e. each compressed weight and, for
    asymmetric modes, its zero point; ``fake_quantize`` counts FakeQuantize and FakeConvert ops (activation
    quantizers left by static quantization; NNCF 3.4 stores the weights of quantized layers as int8 constants).
    """
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
    """How many compressed (int8 or int4) weight constants of ``submodel`` hold different values in the IRs of
    folders ``a`` and ``b`` (matched by name): a data-aware recipe that silently did nothing changes none of
    the data-free recipe's."""
    import numpy as np
    import openvino as ov

    def compressed(folder: Path) -> dict:
        return {op.get_friendly_name(): op for op in ov.Core().read_model(export.ir_files(folder)[submodel][0]).get_ops()
                if op.get_type_name() == "Constant"
                and op.get_output_element_type(0).get_type_name() in _INT8_TYPES | _INT4_TYPES}

    first, second = compressed(a), compressed(b)
    return sum(not np.array_equal(first[name].get_data(), second[name].get_data())
               for name in first.keys() & second.keys())


def activation_ranges(folder: Path, submodel: str = "vision_embeddings_model") -> dict[str, tuple[float, float]]:
    """``{FakeQuantize node: (lowest, highest)}`` input range that static quantization measured for ``submodel``."""
    import openvino as ov

    ranges = {}
    for op in ov.Core().read_model(export.ir_files(folder)[submodel][0]).get_ops():
        if op.get_type_name() != "FakeQuantize":
            continue
        low, high = (op.input_value(i).get_node().get_data() for i in (1, 2))
        ranges[op.get_friendly_name()] = (float(low.min()), float(high.max()))
    return ranges


def compare_ranges(a: Path, b: Path, submodel: str = "vision_embeddings_model") -> dict:
    """How far the activation ranges of two static quantizations of the same model differ: per FakeQuantize
    node present in both, ``|width_a - width_b| / width_a``; its median and largest, and how many nodes."""
    import statistics

    first, second = activation_ranges(a, submodel), activation_ranges(b, submodel)
    common = sorted(set(first) & set(second))
    if not common:
        raise ValueError(f"{a} and {b} have no FakeQuantize node in common in {submodel}")
    gaps = []
    for name in common:
        width_a, width_b = first[name][1] - first[name][0], second[name][1] - second[name][0]
        gaps.append(abs(width_a - width_b) / width_a if width_a else float(width_b != 0))
    return {"nodes": len(common), "median_relative_difference": statistics.median(gaps),
            "largest_relative_difference": max(gaps)}


def count_table(folders: dict[str, Path]):
    """:func:`count_quantized` of several variants side by side: one row per submodel, columns (variant, count)."""
    import pandas as pd

    return pd.concat({variant: count_quantized(folder) for variant, folder in folders.items()}, axis=1)


def size_table(folders: dict[str, Path], reference: str = "fp32"):
    """Size on disk (MB, .xml + .bin) per variant and submodel, the total, and how many times smaller than
    ``reference`` each variant's total is."""
    import pandas as pd

    rows = {}
    for variant, folder in folders.items():
        rows[variant] = {name: (x.stat().st_size + b.stat().st_size) / 1e6 for name, (x, b) in export.ir_files(folder).items()}
    table = pd.DataFrame(rows).T
    table["total"] = table.sum(axis=1)
    if reference in table.index:
        table["x smaller than " + reference] = table.loc[reference, "total"] / table["total"]
    table.index.name = "variant"
    return table.round(2)


def plot_sizes(table, title: str = "IR size on disk per variant"):
    """Stacked bar chart of :func:`size_table`: one bar per variant, one colour per submodel, total on top."""
    import matplotlib.pyplot as plt

    parts = table[list(export.SUBMODELS)]
    fig, ax = plt.subplots(figsize=(8, 4))
    parts.plot.bar(stacked=True, ax=ax, rot=0, color=["#4c72b0", "#dd8452", "#55a868"])
    ratio = next((c for c in table.columns if c.startswith("x smaller")), None)
    for i, (variant, total) in enumerate(table["total"].items()):
        smaller = table.loc[variant, ratio] if ratio else 1.0
        size = f"{total:,.0f} MB" if total >= 10 else f"{total:.2f} MB"
        label = size + (f"\n{smaller:.1f}x smaller" if smaller != 1.0 else "")
        ax.text(i, total, label, ha="center", va="bottom", fontsize="small")
    ax.set_ylabel("MB on disk (.xml + .bin)")
    ax.set_xlabel("")
    ax.set_title(title)
    ax.set_ylim(0, table["total"].max() * 1.25)
    ax.legend(title="submodel", fontsize="small")
    fig.tight_layout()
    return fig


# --- what a variant answers -------------------------------------------------------------------------------


def answers_side_by_side(
    folders: dict[str, Path],
    questions: Sequence[tuple[str | None, str]] = (("astronaut", "Describe this image briefly."),),
    max_new_tokens: int = 20,
    longest_edge: int | None = images.TILE_SIZE,
):
    """Ask every variant the same questions (``(photo, question)`` pairs; photo ``None``: text only), greedy, at
    most ``max_new_tokens``, photos at ``longest_edge`` (512: one tile, quick). Each variant is loaded once.

    Returns one row per question and variant: the answer and how many of its first tokens match the first
    variant's.
    """
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
