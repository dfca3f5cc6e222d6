"""Makes ``data/video/slideshow.mp4``, the course's demo clip, from three of its photos (see SOURCES.md).

Run ``python data/make_video.py`` from the repository (inside ``.venv``); ``tests/test_data.py`` checks that it
reproduces the committed clip byte for byte.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers.data import photo_path, video_path  # noqa: E402

# The committed slideshow.mp4 was made with these defaults.
VIDEO_PHOTOS = ("astronaut", "rocket", "hubble")
VIDEO_SIZE = (320, 240)
VIDEO_FPS = 10
VIDEO_SECONDS_PER_PHOTO = 2.0
VIDEO_FADE_SECONDS = 0.5


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


if __name__ == "__main__":
    print(make_demo_video(video_path()))
