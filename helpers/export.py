"""OpenVINO IR folders: which model optimum-intel can export, the export itself, and what a folder holds.

Exports are built with :func:`helpers.store.build`: they appear complete or not at all, and a folder made by other
library versions, or from an earlier build of a stand-in, is named and rebuilt.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from importlib.metadata import version
from pathlib import Path

from helpers import quiet, standins, store
from helpers.models import ModelChoice

TASK = "image-text-to-text"
REQUIRED = ("config.json", "openvino_language_model.xml", "openvino_language_model.bin")
_NOT_SUBMODELS = ("openvino_tokenizer", "openvino_detokenizer")


class CorruptIRError(ValueError):
    """An IR folder on disk is damaged; the message names the file and the fix."""


class UnsupportedModelError(ValueError):
    """optimum-intel can't export this model for the course; the message says what the course supports."""


def variant_dir(choice: ModelChoice, variant: str) -> Path:
    """Folder of one IR variant (``fp32``, ``int8``, ``int4``...) of the chosen model."""
    return store.models_dir() / choice.slug / variant


def ir_files(folder: Path) -> dict[str, tuple[Path, Path]]:
    """``{submodel: (xml, bin)}`` of an exported folder, e.g. ``language_model``, ``vision_embeddings_model``."""
    return {xml.stem.removeprefix("openvino_"): (xml, xml.with_suffix(".bin"))
            for xml in sorted(Path(folder).glob("openvino_*.xml")) if xml.stem not in _NOT_SUBMODELS}


def facts(source: str | Path, **more) -> dict:
    """What an IR made from ``source`` (a model, or an IR folder) is made with: the library versions and, for a
    stand-in, the version of its build (a newer build makes earlier IRs stale); plus ``more``."""
    packages = ("openvino", "optimum-intel", "transformers", "nncf")
    spec = standins.SPECS.get((standins.record(Path(source)) or {}).get("name")) if Path(source).is_dir() else None
    return {**{p: version(p) for p in packages}, "standin_version": spec.version if spec else None, **more}


def check_supported(choice: ModelChoice) -> str:
    """The model type of ``choice``, or :class:`UnsupportedModelError` when optimum-intel can't export it as an
    image-text-to-text model (checked before anything is built)."""
    from optimum.exporters.tasks import TasksManager
    from transformers import AutoConfig

    import optimum.intel.openvino  # noqa: F401  (registers the OpenVINO exporter's model types)

    try:
        config = AutoConfig.from_pretrained(choice.source)
        model_type, vision = config.model_type, hasattr(config, "vision_config")
    except ValueError:  # a model type this transformers does not know, or a config.json without one
        model_type, vision = (store.read_json(Path(choice.source) / "config.json") or {}).get("model_type"), False
    try:
        tasks = TasksManager.get_supported_tasks_for_model_type(model_type, exporter="openvino",
                                                                library_name="transformers") if model_type else {}
    except KeyError:
        tasks = {}
    if TASK not in tasks or not vision:
        raise UnsupportedModelError(
            f"{choice.requested} (model type {model_type or 'not given'}) is not a model optimum-intel "
            f"{version('optimum-intel')} can export as a vision-language model: the course runs {TASK} models "
            "such as SmolVLM, LLaVA, Qwen2-VL or Gemma 3.")
    return model_type


def convert_to_ir(source: str, folder: Path) -> None:
    """The export itself: optimum-intel traces each submodel and saves the IR, the processor is saved beside it."""
    from optimum.intel import OVModelForVisualCausalLM
    from transformers import AutoProcessor

    model = OVModelForVisualCausalLM.from_pretrained(source, export=True, load_in_8bit=False, compile=False)
    model.save_pretrained(folder)
    AutoProcessor.from_pretrained(source).save_pretrained(folder)


def export_fp32(choice: ModelChoice, *, force: bool = False) -> Path:
    """The full-precision IR of ``choice`` (:func:`convert_to_ir`), exported now unless already on disk."""

    def make(folder: Path) -> None:
        with warnings.catch_warnings():  # tracing warns about Python-side shape arithmetic: expected, not actionable
            warnings.filterwarnings("ignore", message=".*(might cause the trace|registered as constants).*")
            convert_to_ir(choice.source, folder)

    return store.build(variant_dir(choice, "fp32"), make, facts=facts(choice.source), required=REQUIRED, force=force,
                       needed_bytes=estimate_bytes(choice.source))


def run_cli(command: list[str], dest: Path, choice: ModelChoice, *, force: bool = False) -> Path:
    """Run ``command`` (``optimum-cli export openvino ...``) with the output folder appended, built as
    :func:`export_fp32` builds; prints what the command printed, without PyTorch's tracer warnings and the known
    harmless messages of :mod:`helpers.quiet`."""

    def make(folder: Path) -> None:
        cli = Path(sys.executable).parent / command[0]  # the venv's optimum-cli; a command given as a path, as is
        done = subprocess.run([str(cli) if cli.exists() else command[0], *command[1:], str(folder)], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        lines = done.stdout.splitlines()
        keep = [line for i, line in enumerate(lines) if "TracerWarning" not in line and not quiet.is_known_noise(line)
                and not (i and "TracerWarning" in lines[i - 1] and line.startswith("  "))]
        print("\n".join(keep))
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed with exit code {done.returncode}; see its output above")

    return store.build(dest, make, facts=facts(choice.source), required=REQUIRED, force=force,
                       needed_bytes=estimate_bytes(choice.source))


def estimate_bytes(source: str) -> int | None:
    """Disk an FP32 export of ``source`` needs, from its weights (``None`` until they are on disk: a folder, or a Hub
    id's snapshot in the Hugging Face cache)."""
    folder = Path(source)
    if not folder.is_dir():
        from huggingface_hub import try_to_load_from_cache

        config = try_to_load_from_cache(str(source), "config.json")
        folder = Path(config).parent if isinstance(config, str) else folder
    weights = list(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not weights:
        return None
    config = json.loads((folder / "config.json").read_text())
    half = (config.get("torch_dtype") or config.get("dtype")) in ("bfloat16", "float16")
    return int(sum(f.stat().st_size for f in weights) * (2 if half else 1) * 1.1)


def problems(folder: Path) -> list[str]:
    """Why ``folder`` is not a finished export made by this environment (empty list: it is)."""
    return store.problems(folder, facts(folder), REQUIRED)


def is_complete(folder: Path) -> bool:
    return not problems(folder)


def check_ir(folder: Path) -> Path:
    """``folder``, or :class:`CorruptIRError` naming what is wrong: besides :func:`problems`, each graph is parsed
    and its weights file checked to hold every constant it needs."""
    import xml.etree.ElementTree as ET

    folder = Path(folder)
    fix = f"delete {folder} and run the notebook that made it again (it rebuilds missing variants)"
    found = problems(folder)
    if found:
        raise CorruptIRError(f"{folder} is not a usable export: {'; '.join(found)}; {fix}.")
    for xml, weights in ir_files(folder).values():
        try:
            root = ET.parse(xml).getroot()
        except ET.ParseError as err:
            raise CorruptIRError(f"{xml} is corrupted (not valid XML: {err}); {fix}.") from None
        ends = [int(d.get("offset", 0)) + int(d.get("size", 0)) for d in root.iter("data") if d.get("size")]
        if ends and max(ends) > weights.stat().st_size:
            raise CorruptIRError(f"{weights} is corrupted (truncated: {weights.stat().st_size} bytes, its graph "
                                 f"needs {max(ends)}); {fix}.")
    return folder


def ir_size_bytes(folder: Path) -> int:
    """Size on disk of the submodels (.xml + .bin), the figure the source blog reports."""
    return sum(x.stat().st_size + b.stat().st_size for x, b in ir_files(folder).values())
