"""OpenVINO IR folders: where each variant lives, atomic writes, and what is inside an exported model.

An export or quantization is written to a temporary sibling folder and renamed into place only when complete
(with a marker file), so an interrupted run never leaves a folder that later loads as a model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from helpers.models import ModelChoice
from helpers.paths import models_dir

SUBMODELS = {
    "language_model": "openvino_language_model",
    "text_embeddings_model": "openvino_text_embeddings_model",
    "vision_embeddings_model": "openvino_vision_embeddings_model",
}
COMPLETE_MARKER = "export_complete.json"
PARTIAL_SUFFIX = ".partial"


def variant_dir(choice: ModelChoice, variant: str) -> Path:
    """Folder of one IR variant (``fp32``, ``int8``, ``int4``, ``mixed``...) of the chosen model."""
    return models_dir() / choice.slug / variant


def missing_files(folder: Path) -> list[str]:
    """Files an exported SmolVLM folder must have but ``folder`` lacks (empty list: complete)."""
    folder = Path(folder)
    needed = ["config.json", COMPLETE_MARKER]
    for stem in SUBMODELS.values():
        needed += [f"{stem}.xml", f"{stem}.bin"]
    return [name for name in needed if not (folder / name).is_file()]


def is_complete(folder: Path) -> bool:
    """True when ``folder`` holds a finished export (all three submodels and the completion marker)."""
    return Path(folder).is_dir() and not missing_files(folder)


def build_atomically(dest: Path, build: Callable[[Path], None], *, force: bool = False) -> Path:
    """Run ``build(tmp_folder)`` and move its result to ``dest`` only when it is a complete export.

    Skips the work when ``dest`` is already complete (unless ``force``); a leftover incomplete ``dest`` or
    temporary folder from an interrupted run is reported and rebuilt.
    """
    dest = Path(dest)
    if is_complete(dest) and not force:
        print(f"Skipped: a complete export is already at {dest}")
        return dest
    if dest.exists():
        print(f"Found an incomplete folder at {dest} (missing: {', '.join(missing_files(dest))}); rebuilding it.")
        shutil.rmtree(dest)
    tmp = dest.with_name(dest.name + PARTIAL_SUFFIX)
    if tmp.exists():
        print(f"Removing {tmp}, left over from an interrupted run.")
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    start = time.perf_counter()
    with warnings.catch_warnings():
        # Tracing SmolVLM warns about Python-side shape arithmetic; expected for this model, not actionable.
        warnings.filterwarnings("ignore", message=".*might cause the trace to be incorrect.*")
        warnings.filterwarnings("ignore", message=".*registered as constants in the trace.*")
        build(tmp)
    seconds = time.perf_counter() - start
    (tmp / COMPLETE_MARKER).write_text(json.dumps(_versions() | {"build_seconds": round(seconds, 1)}, indent=2))
    missing = missing_files(tmp)
    if missing:
        raise RuntimeError(f"the export into {tmp} did not produce {', '.join(missing)}; nothing was moved into place")
    os.replace(tmp, dest)
    print(f"Done in {seconds:.1f} s: {dest}")
    return dest


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {pkg: version(pkg) for pkg in ("openvino", "optimum-intel", "transformers", "nncf")}


def run_cli(command: list[str], dest: Path, *, force: bool = False) -> Path:
    """Run an ``optimum-cli export openvino ...`` command with a temporary output folder, then move it into place.

    The command's own output streams into the notebook (PyTorch tracer warnings are left out: they are expected).
    """

    def build(tmp: Path) -> None:
        cli = shutil.which("optimum-cli", path=str(Path(sys.executable).parent)) or "optimum-cli"
        full = [cli, *command[1:], str(tmp)] if command[0] == "optimum-cli" else [*command, str(tmp)]
        process = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        skip_next = False
        assert process.stdout is not None
        for line in process.stdout:
            if "TracerWarning" in line or "No CUDA runtime" in line:
                skip_next = "TracerWarning" in line
                continue
            if skip_next and line.startswith("  "):
                skip_next = False
                continue
            skip_next = False
            print(line, end="", flush=True)
        if process.wait() != 0:
            raise RuntimeError(f"optimum-cli failed with exit code {process.returncode}; see its output above")

    return build_atomically(dest, build, force=force)


def ir_files(folder: Path) -> dict[str, tuple[Path, Path]]:
    """``{submodel: (xml, bin)}`` of an exported folder."""
    return {name: (Path(folder) / f"{stem}.xml", Path(folder) / f"{stem}.bin") for name, stem in SUBMODELS.items()}


def ir_size_bytes(folder: Path) -> int:
    """Size on disk of the three submodels (.xml + .bin), the figure the source blog reports."""
    return sum(x.stat().st_size + b.stat().st_size for x, b in ir_files(folder).values())


def describe_submodels(folder: Path):
    """One row per submodel: inputs, outputs (names and shapes), operation count, size on disk."""
    import openvino as ov
    import pandas as pd

    core = ov.Core()
    rows = []
    for name, (xml, bin_) in ir_files(folder).items():
        model = core.read_model(xml)
        rows.append(
            {
                "submodel": name,
                "inputs": ", ".join(f"{p.get_any_name()} {p.get_partial_shape()}" for p in model.inputs),
                "outputs": ", ".join(f"{p.get_any_name()} {p.get_partial_shape()}" for p in model.outputs),
                "operations": len(model.get_ops()),
                "size_MB": round((xml.stat().st_size + bin_.stat().st_size) / 1e6, 2),
            }
        )
    return pd.DataFrame(rows).set_index("submodel")


VARIANTS = ("fp32", "int8", "int4", "mixed")  # as exported (notebook 01) and the recipes of notebook 02


def export_fp32(choice: ModelChoice, *, force: bool = False) -> Path:
    """The full-precision IR of ``choice`` (notebook 01's Python-API export), exported now if it is missing.

    Later notebooks call this so each can run on its own; notebook 01 shows the same calls step by step.
    """
    from optimum.intel import OVModelForVisualCausalLM
    from transformers import AutoProcessor

    def build(folder: Path) -> None:
        model = OVModelForVisualCausalLM.from_pretrained(choice.source, export=True, load_in_8bit=False, compile=False)
        model.save_pretrained(folder)
        AutoProcessor.from_pretrained(choice.source).save_pretrained(folder)

    return build_atomically(variant_dir(choice, "fp32"), build, force=force)


def existing_variants(choice: ModelChoice) -> dict[str, Path]:
    """``{variant: folder}`` of the complete IR variants of ``choice`` on disk, in ``VARIANTS`` order."""
    return {v: variant_dir(choice, v) for v in VARIANTS if is_complete(variant_dir(choice, v))}
