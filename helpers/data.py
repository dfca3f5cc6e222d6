"""The course's small, offline data: six photos, a calibration set, an evaluation set and a demo video.

Everything lives in ``data/`` in the repository (see ``data/SOURCES.md`` for where each file comes from).
Nothing here touches the network: the JSONL files are read with ``datasets.load_dataset("json", ...)``,
which works with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import datasets
import numpy as np
from PIL import Image

from helpers.paths import DATA_DIR

IMAGES_DIR = DATA_DIR / "images"
CALIBRATION_FILE = DATA_DIR / "calibration.jsonl"
EVAL_FILE = DATA_DIR / "eval.jsonl"
TEXT_QUESTIONS_FILE = DATA_DIR / "text_questions.jsonl"
TEXT_CALIBRATION_FILE = DATA_DIR / "calibration_text.jsonl"
VIDEO_FILE = DATA_DIR / "video" / "slideshow.mp4"

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")

# The committed slideshow.mp4 was made with these defaults.
VIDEO_PHOTOS = ("astronaut", "rocket", "hubble")
VIDEO_SIZE = (320, 240)
VIDEO_FPS = 10
VIDEO_SECONDS_PER_PHOTO = 2.0
VIDEO_FADE_SECONDS = 0.5


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
    """Load one of the course's JSONL files; ``image`` paths (relative to ``data/``) become PIL images."""
    ds = datasets.load_dataset("json", data_files=str(path), split="train")
    ds = ds.map(lambda row: {"image": str(DATA_DIR / row["image"])})
    return ds.cast_column("image", datasets.Image())


def load_calibration_dataset(num_samples: int = 50) -> datasets.Dataset:
    """The first ``min(num_samples, available)`` rows of ``data/calibration.jsonl`` (columns image, question).

    Rows are stored round-robin over the photos, so even a small ``num_samples`` covers several of them.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    ds = _load_jsonl(CALIBRATION_FILE)
    return ds.select(range(min(num_samples, len(ds))))


def load_text_calibration(num_samples: int = 50) -> list[str]:
    """The first ``min(num_samples, available)`` requests of ``data/calibration_text.jsonl``: text-only prompts
    (none of them an evaluation question) on which the data-aware 4-bit recipes measure the language model's
    activations."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    rows = datasets.load_dataset("json", data_files=str(TEXT_CALIBRATION_FILE), split="train")
    return rows["question"][:num_samples]


def load_eval_set() -> datasets.Dataset:
    """The questions of ``data/eval.jsonl`` with short reference answers (columns image, question, answer)."""
    return _load_jsonl(EVAL_FILE)


def load_text_questions() -> datasets.Dataset:
    """The text-only questions of ``data/text_questions.jsonl`` with short reference answers (columns question,
    answer), for a model whose language model has real weights (e.g. the ``smollm2-256m`` stand-in)."""
    return datasets.load_dataset("json", data_files=str(TEXT_QUESTIONS_FILE), split="train")


def video_path() -> Path:
    """Path of the committed demo clip ``data/video/slideshow.mp4``."""
    return VIDEO_FILE


def _cover(img: Image.Image, aspect: float) -> Image.Image:
    """Centre-crop ``img`` to the aspect ratio ``aspect`` (width / height)."""
    w, h = img.size
    if w / h > aspect:
        new_w = round(h * aspect)
        left = (w - new_w) // 2
        return img.crop((left, 0, left + new_w, h))
    new_h = round(w / aspect)
    top = (h - new_h) // 2
    return img.crop((0, top, w, top + new_h))


def _zoomed(img: Image.Image, size: tuple[int, int], progress: float, max_zoom: float) -> np.ndarray:
    """A frame of a slow centred zoom: ``progress`` 0 shows the whole image, 1 shows ``1/max_zoom`` of it."""
    zoom = 1.0 + (max_zoom - 1.0) * min(max(progress, 0.0), 1.0)
    w, h = img.size
    cw, ch = w / zoom, h / zoom
    box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
    return np.asarray(img.resize(size, Image.Resampling.BICUBIC, box=box), dtype=np.float32)


def _slideshow_frame(
    images: Sequence[Image.Image],
    t: float,
    size: tuple[int, int],
    seconds_per_photo: float,
    fade_seconds: float,
    max_zoom: float,
) -> np.ndarray:
    """The RGB frame at ``t`` seconds: photo ``k`` zooming in, crossfading into photo ``k+1`` at its end."""
    k = min(int(t // seconds_per_photo), len(images) - 1)
    start = k * seconds_per_photo
    frame = _zoomed(images[k], size, (t - start) / seconds_per_photo, max_zoom)
    fade_start = start + seconds_per_photo - fade_seconds
    if k + 1 < len(images) and fade_seconds > 0 and t >= fade_start:
        alpha = (t - fade_start) / fade_seconds
        frame = (1 - alpha) * frame + alpha * _zoomed(images[k + 1], size, 0.0, max_zoom)
    return np.clip(np.rint(frame), 0, 255).astype(np.uint8)


def make_demo_video(
    path: Path,
    photos: Sequence[str] = VIDEO_PHOTOS,
    size: tuple[int, int] = VIDEO_SIZE,
    fps: int = VIDEO_FPS,
    seconds_per_photo: float = VIDEO_SECONDS_PER_PHOTO,
    fade_seconds: float = VIDEO_FADE_SECONDS,
    max_zoom: float = 1.15,
) -> Path:
    """Write a slideshow of ``photos`` (slow zoom on each, crossfades) as an H.264 mp4; return its path.

    The clip has ``round(len(photos) * seconds_per_photo * fps)`` frames, computed deterministically from
    the photos; with the same PyAV build the file is byte-for-byte the same on every run. It is written
    under a temporary name and renamed when complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    aspect = size[0] / size[1]
    images = [_cover(Image.open(photo_path(name)).convert("RGB"), aspect) for name in photos]
    n_frames = round(len(images) * seconds_per_photo * fps)

    frames = (
        _slideshow_frame(images, i / fps, size, seconds_per_photo, fade_seconds, max_zoom)
        for i in range(n_frames)
    )

    tmp = path.with_name(path.stem + ".partial" + path.suffix)
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps))
            stream.width, stream.height = size
            stream.pix_fmt = "yuv420p"
            # One thread and no macroblock-tree rate control: with mbtree, x264 gave slightly different bytes
            # for the same frames from run to run; without it the file is byte-for-byte reproducible.
            stream.options = {"crf": "26", "preset": "medium", "threads": "1", "x264-params": "mbtree=0"}
            for i, rgb in enumerate(frames):
                video_frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                video_frame.pts, video_frame.time_base = i, Fraction(1, fps)
                for packet in stream.encode(video_frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path
