"""Images and videos in, as a VLM's processor wants them (8-bit RGB, upright, 16..2048 px), or one clear error;
and SmolVLM's tiles, with every size read from the model's own processor.

:func:`load_image` takes a path, bytes or a PIL image, applies EXIF orientation, converts any mode to RGB,
composites transparency on white and fits the size; ``image.info["changes"]`` lists what it did. Bad input raises
:class:`ImageError` (a ``ValueError``) naming the file; :func:`load_video` does the same for a clip.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_EDGE = 2048  # larger photos are decoded small: no VLM here reads more (SmolVLM's processor resizes to 2048)
MIN_EDGE = 16  # processors guess the channel axis from the shape: an edge of 1 or 3 px fools them
ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image]


class ImageError(ValueError):
    """An image can't be used; the message says which file and why, in one sentence."""


class VideoError(ValueError):
    """A video can't be used; the message says which file and why, in one sentence."""


def _open(source: ImageSource, name: str | None, max_edge: int) -> tuple[Image.Image, str, tuple[int, int]]:
    """Check and decode ``source``; ``(image, label for messages, stored size)``."""
    if isinstance(source, Image.Image):
        return source, repr(name) if name else "the image", source.size
    if isinstance(source, (bytes, bytearray, memoryview)):
        file, label = io.BytesIO(bytes(source)), repr(name) if name else "the uploaded data"
        empty = len(source) == 0
    elif isinstance(source, str) and re.match(r"^(https?|ftp)://|^www\.", source.strip(), re.IGNORECASE):
        raise ImageError(f"{source!r} is a web address, and images are not downloaded here: save the image to a "
                         "file first and pass its path.")
    elif isinstance(source, (str, os.PathLike)):
        file, label = Path(source).expanduser(), repr(str(name or source))
        if not file.exists():
            raise ImageError(f"There is no file {label} (looked at {file.resolve()}).")
        if file.is_dir():
            raise ImageError(f"{label} is a folder, not an image file.")
        if not os.access(file, os.R_OK):
            raise ImageError(f"{label} exists but can't be read (permission denied).")
        empty = file.stat().st_size == 0
    else:
        raise ImageError(f"load_image takes a file path, bytes or a PIL image, not {type(source).__name__}.")
    if empty:
        raise ImageError(f"{label} is empty (0 bytes), so it holds no image.")
    try:
        with warnings.catch_warnings():
            # Between 89 and 179 megapixels Pillow only warns; we downscale such images, so the warning says nothing.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(file)
            stored_size = image.size
            image.draft("RGB", (max_edge, max_edge))  # JPEG only: decode at 1/2, 1/4 or 1/8 scale; else no-op
            image.load()
    except Image.DecompressionBombError as err:  # ~179 MP: such a file is more often broken or hostile than a photo
        found = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{int(found.group(1)) / 1e6:.0f} megapixels, " if found else ""
        raise ImageError(
            f"{label} is too large to open safely ({size}more than Pillow's limit of "
            f"{2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels): downscale it first."
        ) from None
    except UnidentifiedImageError:
        formats = "JPEG, PNG, GIF, BMP, TIFF, WebP, ..."
        raise ImageError(f"{label} is not an image file Pillow can read ({formats}).") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{label} is damaged or truncated and can't be decoded ({err}).") from None
    return image, label, stored_size


def _to_8bit_rgb(image: Image.Image, label: str, changes: list[str]) -> Image.Image:
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        # 16-bit and 32-bit grayscale: scale to 0..255 (Pillow's convert() would clip everything above 255).
        values = np.asarray(image, dtype=np.float64)
        if mode == "F":
            top = 1.0 if values.max(initial=0) <= 1.0 else 255.0
        elif mode.startswith("I;16") or values.max(initial=0) > 255:
            top = 65535.0
        else:
            top = 255.0
        gray = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
        changes.append(f"{mode} grayscale scaled to 8-bit")
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        # Composite on white: the processor would drop alpha and show whatever the transparent pixels hold.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        changes.append(f"{mode} with transparency composited on white")
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "RGB":
        return image
    try:
        rgb = image.convert("RGB")
    except ValueError:
        raise ImageError(f"{label} uses the colour mode {mode}, which can't be converted to RGB here.") from None
    changes.append(f"{mode} converted to RGB")
    return rgb


def _fit_size(image: Image.Image, max_edge: int, min_edge: int, changes: list[str]) -> Image.Image:
    w, h = image.size
    if max(w, h) > max_edge:
        scale = max_edge / max(w, h)
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
        changes.append(f"downscaled from {w}x{h} to {image.width}x{image.height}")
    w, h = image.size
    if min(w, h) < min_edge:
        scale = min(min_edge / min(w, h), max_edge / max(w, h))
        if scale > 1:
            image = image.resize((round(w * scale), round(h * scale)), Image.Resampling.BICUBIC)
        if min(image.size) < min_edge:  # a very thin strip: pad the short side with white instead
            canvas = Image.new("RGB", (max(image.width, min_edge), max(image.height, min_edge)), "white")
            canvas.paste(image, (0, 0))
            image = canvas
        changes.append(f"enlarged from {w}x{h} to {image.width}x{image.height}")
    return image


def load_image(source: ImageSource, *, name: str | None = None, max_edge: int = MAX_EDGE,
               min_edge: int = MIN_EDGE) -> Image.Image:
    """An 8-bit RGB, upright, sensibly sized copy of ``source``; ``name`` labels bytes in error messages.

    ``image.info`` holds ``"changes"`` (e.g. ``["rotated upright (EXIF orientation 6)"]``), ``"original_mode"``
    and ``"original_size"``. Raises :class:`ImageError`.
    """
    image, label, original_size = _open(source, name, max_edge)
    original_mode = image.mode
    changes: list[str] = []
    if image.size != original_size:
        changes.append(f"JPEG decoded at reduced scale ({original_size[0]}x{original_size[1]} -> "
                       f"{image.width}x{image.height})")
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
        changes.append(f"first of {image.n_frames} frames")
    orientation = image.getexif().get(0x0112, 1)  # EXIF "Orientation" tag
    if orientation not in (None, 1):
        image = ImageOps.exif_transpose(image)
        changes.append(f"rotated upright (EXIF orientation {orientation})")
    image = _fit_size(_to_8bit_rgb(image, label, changes), max_edge, min_edge, changes)
    if image is source:
        image = image.copy()  # never hand back (and later modify) the caller's own object
    image.info = {"source": label, "original_mode": original_mode, "original_size": original_size,
                  "changes": changes}
    return image


def load_video(path: Union[str, os.PathLike]):
    """All frames of a video as ``(frames [n, height, width, 3] uint8, VideoMetadata)``, via transformers and PyAV.

    Raises :class:`VideoError` for a missing file or one that isn't a video.
    """
    from transformers.video_utils import load_video as hf_load_video

    path = Path(path).expanduser()
    label = repr(str(path))
    if not path.is_file():
        raise VideoError(f"There is no video file {label} (looked at {path.resolve()}).")
    try:
        frames, metadata = hf_load_video(str(path), backend="pyav")
    except Exception as err:  # PyAV raises its own error classes per container/codec problem
        raise VideoError(f"{label} is not a video PyAV can decode ({err}).") from None
    if len(frames) == 0:
        raise VideoError(f"{label} holds no video frames.")
    return frames, metadata


def tile_size(processor) -> int | None:
    """The edge in pixels of the tiles the processor cuts images into (SmolVLM: 512 for 256M and 500M, 384 for
    2.2B), from its own settings; ``None`` for a processor that does not cut tiles."""
    image_processor = getattr(processor, "image_processor", None)
    tile = getattr(image_processor, "max_image_size", None)
    return int(tile["longest_edge"]) if isinstance(tile, dict) and getattr(processor, "image_seq_len", None) else None


@dataclass
class Tiles:
    """What SmolVLM's processor makes of one image: a grid of tiles (plus a shrunk global view) and their tokens."""

    longest_edge: int
    rows: int  # 0 when the image was not split (it fits one tile)
    cols: int
    pixels: np.ndarray  # (tiles, height, width, 3) uint8, row by row, the global view last
    tokens_per_tile: int

    @property
    def n_tiles(self) -> int:
        return len(self.pixels)

    @property
    def image_tokens(self) -> int:
        return self.n_tiles * self.tokens_per_tile

    def summary(self) -> str:
        grid = f"{self.rows}x{self.cols} tiles + 1 global view" if self.rows else "1 tile (no split)"
        edge = self.pixels.shape[1]
        return (f"longest edge {self.longest_edge} px: {grid} of {edge}x{edge} px = {self.n_tiles} x "
                f"{self.tokens_per_tile} = {self.image_tokens} image tokens")


def cut_into_tiles(processor, image: Image.Image, longest_edge: int | None = None) -> Tiles:
    """Run SmolVLM's image processor on ``image`` (resized to ``longest_edge`` first, default the processor's)."""
    image_processor = processor.image_processor
    edge = int(longest_edge or image_processor.size["longest_edge"])
    out = image_processor(images=[[image]], size={"longest_edge": edge}, return_row_col_info=True, return_tensors="np")
    mean = np.asarray(image_processor.image_mean).reshape(1, 3, 1, 1)
    std = np.asarray(image_processor.image_std).reshape(1, 3, 1, 1)
    pixels = np.clip(np.rint((out["pixel_values"][0] * std + mean) * 255), 0, 255).astype(np.uint8)
    return Tiles(longest_edge=edge, rows=int(out["rows"][0][0]), cols=int(out["cols"][0][0]),
                 pixels=pixels.transpose(0, 2, 3, 1), tokens_per_tile=int(processor.image_seq_len))


def plot_tiles(tiles: Tiles, title: str = ""):
    """Figure: the tiles in their grid, and the global view beside them."""
    import matplotlib.pyplot as plt

    rows, cols = max(tiles.rows, 1), max(tiles.cols, 1)
    split = tiles.rows > 0
    fig, axes = plt.subplots(rows, cols + split, figsize=(1.6 * (cols + split) + 0.4, 1.6 * rows + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k in range(tiles.n_tiles - split):
        axes[k // cols][k % cols].imshow(tiles.pixels[k])
        axes[k // cols][k % cols].set_title(f"row {k // cols + 1}, col {k % cols + 1}" if split else "one tile",
                                            fontsize=7)
    if split:
        axes[0][cols].imshow(tiles.pixels[-1])
        axes[0][cols].set_title("global view", fontsize=7)
    fig.suptitle(title or tiles.summary(), fontsize=9)
    fig.tight_layout()
    return fig
