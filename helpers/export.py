"""OpenVINO IR folders: where each variant lives, building them atomically, and what an export holds.

A build writes into a temporary sibling folder that is renamed into place only when complete, with a marker
file (:mod:`helpers.atomic`), so an interrupted run never leaves a folder that later loads as a model.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from helpers import atomic, quiet, synthetic
from helpers.models import ModelChoice
from helpers.paths import models_dir

SUBMODELS = {
    "language_model": "openvino_language_model",
    "text_embeddings_model": "openvino_text_embeddings_model",
    "vision_embeddings_model": "openvino_vision_embeddings_model",
}
# The FP32 export (notebook 01) and the recipes of notebook 02.
VARIANTS = ("fp32", "int8", "int4", "int4-awq", "int4-ratio", "mixed", "mixed-int4")
COMPLETE_MARKER = "export_complete.json"
# Besides the IR: what loading the folder needs (the model config; the processor and its tokenizer).
LOAD_FILES = ("config.json", "preprocessor_config.json", "tokenizer_config.json", "tokenizer.json")
InsufficientDiskSpaceError = atomic.InsufficientDiskSpaceError


class CorruptIRError(RuntimeError):
    """An IR folder on disk is damaged; the message names the file and the fix."""


def variant_dir(choice: ModelChoice, variant: str) -> Path:
    """Folder of one IR variant (``fp32``, ``int8``, ``int4``, ``mixed``...) of the chosen model."""
    return models_dir() / choice.slug / variant


def ir_files(folder: Path) -> dict[str, tuple[Path, Path]]:
    """``{submodel: (xml, bin)}`` of an exported folder."""
    return {name: (Path(folder) / f"{stem}.xml", Path(folder) / f"{stem}.bin") for name, stem in SUBMODELS.items()}


def missing_files(folder: Path) -> list[str]:
    """Files an exported SmolVLM folder must have but ``folder`` lacks (empty list: complete)."""
    needed = [*LOAD_FILES, COMPLETE_MARKER, *(f"{stem}.{ext}" for stem in SUBMODELS.values() for ext in ("xml", "bin"))]
    return [name for name in needed if not (Path(folder) / name).is_file()]


def read_marker(folder: Path) -> dict | None:
    """The completion marker of ``folder`` (versions, file sizes), or ``None`` when it is absent or damaged."""
    return atomic.read_record(Path(folder) / COMPLETE_MARKER)


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {pkg: version(pkg) for pkg in ("openvino", "optimum-intel", "transformers", "nncf")}


def problems(folder: Path) -> list[str]:
    """Why ``folder`` can't be used as a finished export (empty list: it can): missing files, a damaged marker,
    files whose size changed since written, other library versions, or an earlier build of a stand-in."""
    missing = missing_files(folder)
    if missing:
        return [f"missing {name}" for name in missing]
    marker = read_marker(folder)
    if marker is None:
        return [f"{COMPLETE_MARKER} is damaged (not a JSON record of the export)"]
    found = atomic.changed_files(folder, marker.get("file_sizes", {}))
    for package, version in _versions().items():
        if marker.get(package) not in (None, version):
            found.append(f"made with {package} {marker[package]}, this environment has {version}")
    stale = synthetic.stale_source(folder)
    return found + [stale] if stale else found


def is_complete(folder: Path) -> bool:
    """True when ``folder`` holds a finished, undamaged export made by this environment's library versions."""
    return Path(folder).is_dir() and not problems(folder)


def check_ir(folder: Path) -> Path:
    """Return ``folder``, or raise :class:`CorruptIRError` naming the damaged file: besides :func:`problems`,
    parses each graph and checks its weights file holds every constant the graph needs."""
    import xml.etree.ElementTree as ET

    folder = Path(folder)
    fix = f"delete {folder} and run the notebook that made it again (it rebuilds missing variants)"
    if not folder.is_dir():
        raise CorruptIRError(f"{folder} does not exist; run notebooks 01 and 02 to create it")
    found = problems(folder)
    if found:
        raise CorruptIRError(f"{folder} is not a usable export: {'; '.join(found)}; {fix}.")
    for xml, bin_ in ir_files(folder).values():
        try:
            root = ET.parse(xml).getroot()
        except ET.ParseError as err:
            raise CorruptIRError(f"{xml} is corrupted (not valid XML: {err}); {fix}.") from None
        ends = [int(d.get("offset", 0)) + int(d.get("size", 0)) for d in root.iter("data") if d.get("size")]
        if ends and max(ends) > bin_.stat().st_size:
            raise CorruptIRError(
                f"{bin_} is corrupted (truncated: {bin_.stat().st_size} bytes, its graph needs {max(ends)}); {fix}."
            )
    return folder


def estimate_export_bytes(source: str) -> int | None:
    """Disk an fp32 export of ``source`` needs, from the size of its weights (``None`` if not local yet)."""
    folder = Path(source)
    files = list(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    config = json.loads((folder / "config.json").read_text())
    dtype = config.get("torch_dtype") or config.get("dtype") or "float32"
    scale = 4 / (2 if dtype in ("bfloat16", "float16") else 4)
    return int(sum(f.stat().st_size for f in files) * scale * 1.1)


def build_atomically(
    dest: Path, build: Callable[[Path], None], *, force: bool = False, needed_bytes: int | None = None
) -> Path:
    """Run ``build(tmp_folder)`` and move its result to ``dest`` only when it is a complete export.

    A complete ``dest`` is reused unless ``force``; a damaged or stale one is rebuilt. One process builds at a
    time (:mod:`helpers.atomic`); ``needed_bytes`` (an estimate) is checked against the free disk first.
    """
    dest = Path(dest)
    if is_complete(dest) and not force:
        print(f"Skipped: a complete export is already at {dest}")
        return dest
    with atomic.locked(dest):
        if is_complete(dest) and not force:  # another process finished it while we waited
            print(f"Skipped: a complete export is already at {dest}")
            return dest
        if dest.exists():
            print(f"Found an unusable folder at {dest} ({'; '.join(problems(dest)) or 'rebuild requested'}); "
                  "rebuilding it.")
        atomic.check_free_space(dest, needed_bytes)
        with atomic.partial_folder(dest) as tmp:
            start = time.perf_counter()
            with warnings.catch_warnings():
                # Tracing SmolVLM warns about Python-side shape arithmetic; expected for this model, not actionable.
                warnings.filterwarnings("ignore", message=".*might cause the trace to be incorrect.*")
                warnings.filterwarnings("ignore", message=".*registered as constants in the trace.*")
                build(tmp)
            seconds = time.perf_counter() - start
            missing = [name for name in missing_files(tmp) if name != COMPLETE_MARKER]
            if missing:
                raise RuntimeError(f"the export into {tmp} did not produce {', '.join(missing)}; "
                                   "nothing was moved into place")
            marker = _versions() | {"build_seconds": round(seconds, 1), "file_sizes": atomic.file_sizes(tmp)}
            (tmp / COMPLETE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    print(f"Done in {seconds:.1f} s: {dest}")
    return dest


def run_cli(command: list[str], dest: Path, *, force: bool = False, needed_bytes: int | None = None) -> Path:
    """Run an ``optimum-cli export openvino ...`` command into a temporary folder, then move it to ``dest``.

    Its output streams into the notebook, without PyTorch tracer warnings and :mod:`helpers.quiet`'s messages.
    """

    def build(tmp: Path) -> None:
        cli = shutil.which("optimum-cli", path=str(Path(sys.executable).parent)) or "optimum-cli"
        full = [cli, *command[1:], str(tmp)] if command[0] == "optimum-cli" else [*command, str(tmp)]
        process = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert process.stdout is not None
        after_tracer_warning = False  # a TracerWarning's indented source line follows it
        for line in process.stdout:
            noise = "TracerWarning" in line or "No CUDA runtime" in line or quiet.is_known_noise(line)
            if not noise and not (after_tracer_warning and line.startswith("  ")):
                print(line, end="", flush=True)
            after_tracer_warning = "TracerWarning" in line
        if process.wait() != 0:
            raise RuntimeError(f"optimum-cli failed with exit code {process.returncode}; see its output above")

    return build_atomically(dest, build, force=force, needed_bytes=needed_bytes)


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
        rows.append({
            "submodel": name,
            "inputs": ", ".join(f"{p.get_any_name()} {p.get_partial_shape()}" for p in model.inputs),
            "outputs": ", ".join(f"{p.get_any_name()} {p.get_partial_shape()}" for p in model.outputs),
            "operations": len(model.get_ops()),
            "size_MB": round((xml.stat().st_size + bin_.stat().st_size) / 1e6, 2),
        })
    return pd.DataFrame(rows).set_index("submodel")


def export_fp32(choice: ModelChoice, *, force: bool = False) -> Path:
    """The full-precision IR of ``choice``, exported now if missing (notebook 01 shows the same calls)."""
    from optimum.intel import OVModelForVisualCausalLM
    from transformers import AutoProcessor

    def build(folder: Path) -> None:
        model = OVModelForVisualCausalLM.from_pretrained(choice.source, export=True, load_in_8bit=False, compile=False)
        model.save_pretrained(folder)
        AutoProcessor.from_pretrained(choice.source).save_pretrained(folder)

    needed = estimate_export_bytes(choice.source)
    return build_atomically(variant_dir(choice, "fp32"), build, force=force, needed_bytes=needed)


def existing_variants(choice: ModelChoice) -> dict[str, Path]:
    """``{variant: folder}`` of the complete IR variants of ``choice`` on disk, in ``VARIANTS`` order."""
    return {v: variant_dir(choice, v) for v in VARIANTS if is_complete(variant_dir(choice, v))}
