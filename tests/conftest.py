"""Shared fixtures. The suite runs offline with the tiny stand-in (``make test`` sets VLM_MODEL=synthetic-tiny).

At import, before any test runs, the runs and models folders are moved away from where ``make run`` writes
(``runs/latest`` and ``models/``): tests write into ``runs/test`` and ``runs/test/models``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
MAKE_RUN_DIR = REPO / "runs" / "latest"  # where `make run` writes its notebooks and results (store.runs_dir)
MAKE_RUN_MODELS = REPO / "models"  # where `make run` writes its models (store.models_dir)
TEST_RUN_DIR = REPO / "runs" / "test"


def _inside(path: str | os.PathLike, *roots: Path) -> bool:
    resolved = (REPO / Path(path).expanduser()).resolve()  # relative to the repository's root, as store reads it
    return any(resolved == root or resolved.is_relative_to(root) for root in roots)


def session_folders(environ: dict) -> dict[str, str]:
    """The ``VLM_RUN_DIR`` and ``VLM_MODELS_DIR`` a test session uses, given the environment it started in: the
    user's own runs folder is kept unless it is ``make run``'s (``runs/latest``), and models always go into a
    folder of the test session's runs folder unless the user's ``VLM_MODELS_DIR`` is already out of ``make run``'s
    way (neither ``models/`` nor inside ``runs/latest``)."""
    run = environ.get("VLM_RUN_DIR", "").strip()
    run = run if run and not _inside(run, MAKE_RUN_DIR, MAKE_RUN_MODELS) else str(TEST_RUN_DIR)
    models = environ.get("VLM_MODELS_DIR", "").strip()
    models = models if models and not _inside(models, MAKE_RUN_DIR, MAKE_RUN_MODELS) else str(Path(run) / "models")
    return {"VLM_RUN_DIR": run, "VLM_MODELS_DIR": models}


os.environ.update(session_folders(os.environ))
os.environ.setdefault("VLM_MODEL", "synthetic-tiny")

from helpers import chat, devices, export, models, standins, store  # noqa: E402  (after the folders are set)


@pytest.fixture(scope="session")
def tiny_standin() -> Path:
    """Path of the tiny stand-in, built once into the cache."""
    return Path(standins.build("synthetic-tiny", models.standin_path("synthetic-tiny")))


@pytest.fixture(scope="session")
def tiny_processor(tiny_standin):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_standin)


@pytest.fixture(scope="session")
def smollm2_standin() -> Path:
    """Path of the speaking stand-in (real SmolLM2-135M-Instruct language model, random vision), built once."""
    return Path(standins.build("smollm2-256m", models.standin_path("smollm2-256m")))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny stand-in (a ``ModelChoice``) with a models folder of this test module's own, so its builds never
    touch the repository's ``models/`` or another module's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLM_MODELS_DIR", str(tmp_path_factory.mktemp("models")))
        yield models.resolve_model("synthetic-tiny")


@pytest.fixture(scope="module")
def tiny_fp32(tiny):
    """The FP32 IR folder of :func:`tiny`, exported once per module."""
    return export.export_fp32(tiny)


@pytest.fixture(scope="module")
def tiny_pytorch(tiny):
    """The tiny stand-in in PyTorch, FP32 with SDPA attention (the benchmark's baseline), loaded once per module."""
    import torch
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(tiny.source, dtype=torch.float32,
                                                       attn_implementation="sdpa").eval()


@pytest.fixture(scope="module")
def tiny_openvino(tiny_fp32):
    """The tiny FP32 IR compiled with 2 threads, loaded once per module."""
    from optimum.intel import OVModelForVisualCausalLM

    from helpers import machine

    return OVModelForVisualCausalLM.from_pretrained(tiny_fp32, device="CPU", ov_config=machine.openvino_config(2))


@pytest.fixture(scope="module")
def tiny_loaded(tiny_fp32):
    """``(model, processor)`` of the tiny FP32 IR on the CPU, loaded once per module."""
    return chat.load_model(tiny_fp32, "CPU")


def absent_device() -> str:
    """A device name OpenVINO does not report on this machine."""
    return next(d for d in ("NPU", "GPU", "GPU.1", "NPU.1") if d not in devices.available_devices())


def one_sentence(error_type, call, *args, **kwargs) -> str:
    """The message of the ``error_type`` that ``call(*args, **kwargs)`` raises, checked to be one sentence."""
    with pytest.raises(error_type) as err:
        call(*args, **kwargs)
    message = str(err.value)
    assert isinstance(err.value, ValueError) and message.endswith(".") and "\n" not in message
    return message


def fake_export(folder) -> None:
    """Write the files of a SmolVLM export into ``folder`` (their contents don't matter to the build logic: a
    ``make`` function for :func:`helpers.store.build`): its config and processor files, three submodels."""
    for name in ("config.json", "preprocessor_config.json", "tokenizer_config.json", "tokenizer.json"):
        (folder / name).write_text("{}")
    for stem in ("language_model", "text_embeddings_model", "vision_embeddings_model"):
        (folder / f"openvino_{stem}.xml").write_text("<net/>")
        (folder / f"openvino_{stem}.bin").write_bytes(b"\0" * 10)


def fake_hub_cache(monkeypatch, root: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """A Hugging Face cache in ``root`` (made the cache for this test) holding ``files`` of ``repo_id``'s main
    revision, laid out as huggingface_hub lays it out; the snapshot folder."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "snapshots" / "abc").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text("abc")
    for name, data in files.items():
        (repo / "snapshots" / "abc" / name).write_bytes(data)
    return repo / "snapshots" / "abc"


def build_fake_export(dest, make=fake_export, **options) -> Path:
    """``dest`` built by ``make`` as :func:`helpers.export.export_fp32` builds an export: the facts of this
    environment, the files an export requires."""
    return store.build(dest, make, facts=export.facts(dest), required=export.REQUIRED, **options)


def check_results(results: dict, contenders, workloads) -> list[str]:
    """Problems with a results dict as notebook 04 writes it (``results.json``): a missing contender, workload or
    section, or a figure out of range (most must be positive and finite). An empty list means the file is complete."""
    import math

    problems = []

    def check(path: str, value, ok=lambda v: v > 0, expected: str = "a positive finite number") -> None:
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and ok(value)):
            problems.append(f"{path} is {value!r}, not {expected}")

    def section(parent: dict, key: str, path: str):
        value = parent.get(key) if isinstance(parent, dict) else None
        if value is None:
            problems.append(f"{path} is missing")
        return value

    def interval(path: str, value, low=-math.inf, high=math.inf) -> None:
        numbers = isinstance(value, list) and len(value) == 2 and all(
            isinstance(v, (int, float)) and math.isfinite(v) for v in value)
        if not (numbers and low <= value[0] <= value[1] <= high):
            problems.append(f"{path} is {value!r}, not an interval [low, high] within [{low}, {high}]")

    for key in ("created", "plan", "versions", "model", "recommendation"):
        section(results, key, key)
    if not (results.get("plan") or {}).get("mode"):
        problems.append("plan.mode is missing")
    machine = results.get("machine", {})
    if not machine.get("cpu_model"):
        problems.append("machine.cpu_model is missing")
    for key in ("threads_used", "usable_cores", "memory_GB"):
        check(f"machine.{key}", machine.get(key))
    if not machine.get("openvino_capabilities"):
        problems.append("machine.openvino_capabilities is missing")
    if not results.get("versions", {}).get("openvino"):
        problems.append("versions.openvino is missing")
    for name in workloads:
        facts = section(results.get("workloads", {}), name, f"workloads.{name}")
        if facts is not None:
            photo = ("image_tiles", "image_tokens", "longest_edge") if facts.get("photo") else ()
            for key in ("prompt_tokens", "new_tokens", "preprocess_s") + photo:
                check(f"workloads.{name}.{key}", facts.get(key))
    for key in contenders:
        record = section(results.get("contenders", {}), key, f"contenders.{key}")
        if record is None:
            continue
        if "error" in record:
            problems.append(f"contenders.{key} was not measured: {record['error']}")
            continue
        path = f"contenders.{key}"
        for field_name in ("load_s", "peak_rss_MB"):
            check(f"{path}.{field_name}", record.get(field_name))
        check(f"{path}.other_processes_cpu_share", record.get("other_processes_cpu_share"), lambda v: 0 <= v <= 1,
              "a share in [0, 1]")
        for field_name in ("precision", "threading"):
            if not record.get(field_name):
                problems.append(f"{path}.{field_name} is missing")
        for name in workloads:
            figures = section(record.get("workloads", {}), name, f"{path}.workloads.{name}")
            if figures is None:
                continue
            for figure in ("ttft_s", "tpot_s", "decode_tok_s", "e2e_s"):
                stats = figures.get(figure, {})
                for stat in ("median", "min", "max", "n"):
                    check(f"{path}.workloads.{name}.{figure}.{stat}", stats.get(stat))
                if not all(isinstance(stats.get(s), (int, float)) and math.isfinite(stats[s])
                           for s in ("median", "min", "max")):
                    continue  # already named above
                if not stats["min"] <= stats["median"] <= stats["max"]:
                    problems.append(f"{path}.workloads.{name}.{figure} has min <= median <= max out of order")
        q = section(results.get("quality", {}), key, f"quality.{key}")
        if q is None:
            continue
        for figure in ("token_agreement", "similarity", "repetition_rate"):
            check(f"quality.{key}.{figure}", q.get(figure), lambda v: -1 <= v <= 1, "a number in [-1, 1]")
            interval(f"quality.{key}.{figure}_ci", q.get(f"{figure}_ci"), -1, 1)
        check(f"quality.{key}.kl_mean", q.get("kl_mean"), lambda v: v >= 0, "a finite number >= 0")
        interval(f"quality.{key}.kl_mean_ci", q.get("kl_mean_ci"), 0)
        check(f"quality.{key}.samples", q.get("samples"))
        for figure in ("accuracy", "text_accuracy"):
            if q.get(figure) is not None:
                check(f"quality.{key}.{figure}", q[figure], lambda v: 0 <= v <= 1, "null or a share in [0, 1]")
                interval(f"quality.{key}.{figure}_ci", q.get(f"{figure}_ci"), 0, 1)
                interval(f"quality.{key}.{figure}_vs_baseline_ci", q.get(f"{figure}_vs_baseline_ci"), -1, 1)
    return problems


def make_odd_images(folder: Union[str, os.PathLike], photo: Union[str, os.PathLike]) -> dict[str, Path]:
    """Write ``photo`` as the odd but valid files users upload (grayscale, CMYK, transparent, 16-bit, EXIF-rotated,
    96 megapixels, 4x3 px); returns ``{kind: path}``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = Image.open(photo).convert("RGB")
    gray = base.convert("L")
    rgba = base.convert("RGBA")
    alpha = Image.new("L", base.size, 0)
    alpha.paste(255, (base.width // 8, base.height // 8, base.width * 7 // 8, base.height * 7 // 8))
    rgba.putalpha(alpha)
    palette = rgba.convert("P", palette=Image.Palette.ADAPTIVE, colors=255)
    palette.info["transparency"] = palette.getpixel((0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated; viewers turn it 90 degrees clockwise
    files = {
        "grayscale": (gray, "grayscale.png", {}),
        "CMYK": (base.convert("CMYK"), "cmyk.jpg", {"quality": 90}),
        "RGBA": (rgba, "rgba.png", {}),
        "palette + transparency": (palette, "palette.png", {}),
        "16-bit grayscale": (Image.fromarray(np.asarray(gray, dtype=np.uint16) * 257), "gray16.png", {}),
        "EXIF-rotated": (base.transpose(Image.Transpose.ROTATE_90), "exif_rotated.jpg", {"exif": exif}),
        "very large": (base.resize((12000, 12000 * base.height // base.width)), "very_large.jpg", {"quality": 80}),
        "very small": (base.resize((4, 3)), "very_small.png", {}),
    }
    for image, file_name, options in files.values():
        image.save(folder / file_name, **options)
    return {kind: folder / file_name for kind, (_, file_name, _) in files.items()}
