"""The course's small, offline data in ``data/`` (sources: ``data/SOURCES.md``): six photos, calibration and
evaluation sets, a demo video. JSONL files are read with ``datasets.load_dataset("json", ...)``: no network."""

from __future__ import annotations

from pathlib import Path

import datasets

from helpers.store import REPO_ROOT

DATA_DIR = REPO_ROOT / "data"
IMAGES_DIR = DATA_DIR / "images"
CALIBRATION_FILE = DATA_DIR / "calibration.jsonl"
EVAL_FILE = DATA_DIR / "eval.jsonl"
TEXT_QUESTIONS_FILE = DATA_DIR / "text_questions.jsonl"
TEXT_CALIBRATION_FILE = DATA_DIR / "calibration_text.jsonl"
VIDEO_FILE = DATA_DIR / "video" / "slideshow.mp4"

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")


def list_photos() -> list[Path]:
    """The photos in ``data/images``, sorted by file name."""
    return sorted(p for p in IMAGES_DIR.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)


def photo_path(name: str) -> Path:
    """Path of one photo, by stem (``"cat"``) or file name (``"cat.jpg"``)."""
    for p in list_photos():
        if name in (p.name, p.stem):
            return p
    available = ", ".join(p.stem for p in list_photos())
    raise FileNotFoundError(f"No photo named {name!r} in {IMAGES_DIR}. Available: {available}")


def _load_jsonl(path: Path) -> datasets.Dataset:
    """One of the JSONL files; ``image`` paths (relative to ``data/``) become PIL images."""
    ds = datasets.load_dataset("json", data_files=str(path), split="train")
    ds = ds.map(lambda row: {"image": str(DATA_DIR / row["image"])})
    return ds.cast_column("image", datasets.Image())


def load_calibration_dataset(num_samples: int = 50) -> datasets.Dataset:
    """The first ``num_samples`` rows (at most all) of ``data/calibration.jsonl``: columns image, question.

    Rows are stored round-robin over the photos, so even a small ``num_samples`` covers several of them.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    ds = _load_jsonl(CALIBRATION_FILE)
    return ds.select(range(min(num_samples, len(ds))))


def load_text_calibration(num_samples: int = 50) -> list[str]:
    """The first ``num_samples`` text-only prompts (none an evaluation question) of ``data/calibration_text.jsonl``,
    for the data-aware 4-bit recipes."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    rows = datasets.load_dataset("json", data_files=str(TEXT_CALIBRATION_FILE), split="train")
    return rows["question"][:num_samples]


def load_eval_set() -> datasets.Dataset:
    """The questions of ``data/eval.jsonl`` with short reference answers (columns image, question, answer)."""
    return _load_jsonl(EVAL_FILE)


def load_text_questions() -> datasets.Dataset:
    """The text-only questions of ``data/text_questions.jsonl`` (columns question, answer), for a model with a real
    language model (e.g. the ``smollm2-256m`` stand-in)."""
    return datasets.load_dataset("json", data_files=str(TEXT_QUESTIONS_FILE), split="train")


def video_path() -> Path:
    """Path of the committed demo clip ``data/video/slideshow.mp4``."""
    return VIDEO_FILE
