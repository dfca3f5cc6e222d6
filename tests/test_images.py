"""Image and video input (helpers/images.py): odd but valid images work, bad files give one clear sentence."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from conftest import make_odd_images
from helpers import data, images

CAT = data.photo_path("cat")


@pytest.fixture(scope="module")
def odd_files(tmp_path_factory):
    return make_odd_images(tmp_path_factory.mktemp("odd"), CAT)


@pytest.fixture(scope="module")
def cat_rgb():
    return np.asarray(Image.open(CAT).convert("RGB"), dtype=np.int16)


def _is_clean_rgb(image: Image.Image) -> None:
    assert image.mode == "RGB"
    assert images.MIN_EDGE <= min(image.size) and max(image.size) <= images.MAX_EDGE
    assert np.asarray(image).dtype == np.uint8


def _one_sentence(message: str) -> None:
    assert message.endswith(".") and "\n" not in message and "Traceback" not in message


def test_odd_files_are_what_they_claim(odd_files):
    expected = {"grayscale": "L", "CMYK": "CMYK", "RGBA": "RGBA", "palette + transparency": "P",
                "16-bit grayscale": "I;16", "EXIF-rotated": "RGB", "very small": "RGB"}
    for kind, mode in expected.items():
        with Image.open(odd_files[kind]) as raw:
            assert raw.mode == mode, kind
    with pytest.warns(Image.DecompressionBombWarning), Image.open(odd_files["very large"]) as raw:
        assert raw.mode == "RGB"
        assert raw.width * raw.height > Image.MAX_IMAGE_PIXELS  # above Pillow's warning threshold
    with Image.open(odd_files["EXIF-rotated"]) as raw:
        assert raw.getexif()[0x0112] == 6 and raw.size == (300, 451)


@pytest.mark.parametrize("kind", ["grayscale", "CMYK", "RGBA", "palette + transparency", "16-bit grayscale",
                                  "EXIF-rotated", "very large", "very small"])
def test_odd_images_become_clean_rgb(odd_files, kind):
    image = images.load_image(odd_files[kind])
    _is_clean_rgb(image)
    assert image.info["changes"], f"{kind}: load_image should say what it changed"


def test_grayscale_keeps_its_brightness(odd_files, cat_rgb):
    image = np.asarray(images.load_image(odd_files["grayscale"]), dtype=np.int16)
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
    gray = np.asarray(Image.open(CAT).convert("L"), dtype=np.float64)
    assert abs(image[..., 0].mean() - gray.mean()) < 0.5


def test_sixteen_bit_is_scaled_not_clipped(odd_files):
    gray = np.asarray(Image.open(CAT).convert("L"), dtype=np.int16)
    naive = np.asarray(Image.open(odd_files["16-bit grayscale"]).convert("RGB"))
    assert naive.min() > 250  # what Pillow's plain convert does: nearly everything white
    image = np.asarray(images.load_image(odd_files["16-bit grayscale"]), dtype=np.int16)
    assert np.abs(image[..., 0] - gray).max() <= 1


def test_cmyk_looks_like_the_photo(odd_files, cat_rgb):
    image = np.asarray(images.load_image(odd_files["CMYK"]), dtype=np.int16)
    assert np.abs(image - cat_rgb).mean() < 8  # JPEG noise only


@pytest.mark.parametrize("kind", ["RGBA", "palette + transparency"])
def test_transparency_is_composited_on_white(odd_files, cat_rgb, kind):
    image = np.asarray(images.load_image(odd_files[kind]), dtype=np.int16)
    assert (image[0, 0] == 255).all() and (image[-1, -1] == 255).all()  # the transparent border
    h, w = image.shape[:2]
    centre = (slice(h // 4, 3 * h // 4), slice(w // 4, 3 * w // 4))
    tolerance = 1 if kind == "RGBA" else 12  # the palette has 255 colours
    assert np.abs(image[centre] - cat_rgb[centre]).mean() < tolerance


def test_exif_rotated_photo_is_turned_upright(odd_files, cat_rgb):
    image = images.load_image(odd_files["EXIF-rotated"])
    assert image.size == (451, 300)
    assert np.abs(np.asarray(image, dtype=np.int16) - cat_rgb).mean() < 8
    assert image.info["changes"] == ["rotated upright (EXIF orientation 6)"]


def test_very_large_jpeg_is_decoded_small_without_warnings(odd_files):
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = images.load_image(odd_files["very large"])
    assert image.size == (2048, 1362)
    assert image.info["original_size"] == (12000, 7982)
    assert any("reduced scale" in change for change in image.info["changes"])


def test_very_small_images_are_enlarged_and_thin_ones_padded():
    tiny = images.load_image(Image.new("RGB", (4, 3), "red"))
    assert tiny.size == (21, 16) and tiny.getpixel((10, 8)) == (255, 0, 0)
    one = images.load_image(Image.new("RGB", (1, 1), "blue"))
    assert one.size == (16, 16) and one.getpixel((8, 8)) == (0, 0, 255)
    strip = images.load_image(Image.new("RGB", (3000, 2), "green"))
    assert strip.size == (2048, 16)
    assert strip.getpixel((5, 0)) == (0, 128, 0) and strip.getpixel((5, 15)) == (255, 255, 255)


def test_odd_images_go_through_the_processor_without_guessing(odd_files, tiny_processor, caplog):
    """The processor guesses the channel axis from the shape; a raw 4x3 image fools it, a loaded one doesn't."""
    prompt = tiny_processor.image_token
    for kind, path in odd_files.items():
        caplog.clear()
        inputs = tiny_processor(text=prompt, images=[[images.load_image(path)]], size={"longest_edge": 512},
                                return_tensors="pt")
        assert tuple(inputs["pixel_values"].shape[-3:]) == (3, 512, 512), kind
        assert "ambiguous" not in caplog.text, kind


def test_a_pil_image_is_copied_not_changed():
    original = Image.new("RGBA", (40, 30), (10, 20, 30, 0))
    loaded = images.load_image(original)
    assert original.mode == "RGBA" and original.size == (40, 30)
    assert loaded is not original and loaded.getpixel((0, 0)) == (255, 255, 255)
    rgb = Image.new("RGB", (40, 30))
    assert images.load_image(rgb) is not rgb


def test_bytes_load_like_the_file():
    from_bytes = images.load_image(CAT.read_bytes(), name="cat.jpg")
    assert np.array_equal(np.asarray(from_bytes), np.asarray(images.load_image(CAT)))
    assert from_bytes.info["source"] == "'cat.jpg'"


def test_animated_gif_uses_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (32, 32), colour) for colour in ("red", "blue")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    image = images.load_image(tmp_path / "anim.gif")
    assert image.getpixel((5, 5)) == (255, 0, 0) and "first of 2 frames" in image.info["changes"]


# --- bad input: one clear sentence that names the file ---------------------------------------------------


def _error(source, **kwargs) -> str:
    with pytest.raises(images.ImageError) as err:
        images.load_image(source, **kwargs)
    assert isinstance(err.value, ValueError)
    _one_sentence(str(err.value))
    return str(err.value)


def test_missing_file(tmp_path):
    message = _error(tmp_path / "holiday.jpg")
    assert message.startswith("There is no file ") and "holiday.jpg" in message


def test_folder_instead_of_file(tmp_path):
    assert _error(tmp_path) == f"{str(tmp_path)!r} is a folder, not an image file."


def test_empty_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    assert _error(tmp_path / "empty.png").endswith("empty.png' is empty (0 bytes), so it holds no image.")


def test_unreadable_file(tmp_path, monkeypatch):
    # Running as root, chmod 000 still reads; so ask for the permission check's answer directly.
    path = tmp_path / "secret.jpg"
    path.write_bytes(CAT.read_bytes())
    monkeypatch.setattr(images.os, "access", lambda *args: False)
    assert _error(path).endswith("secret.jpg' exists but can't be read (permission denied).")


def test_text_file_is_not_an_image(tmp_path):
    (tmp_path / "notes.txt").write_text("milk, eggs")
    message = _error(tmp_path / "notes.txt")
    assert "notes.txt' is not an image file Pillow can read" in message


def test_video_is_not_an_image():
    assert "slideshow.mp4' is not an image file" in _error(data.video_path())


def test_damaged_jpeg(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(CAT.read_bytes()[:4000])
    assert "broken.jpg' is damaged or truncated" in _error(tmp_path / "broken.jpg")


def test_decompression_bomb_is_refused(tmp_path):
    Image.new("1", (15000, 15000)).save(tmp_path / "bomb.png")  # 225 megapixels in a few kilobytes
    message = _error(tmp_path / "bomb.png")
    assert "bomb.png' is too large to open safely (225 megapixels" in message and "downscale it first" in message


def test_uploaded_bytes_that_are_no_image():
    assert _error(b"hello", name="photo.png").startswith("'photo.png' is not an image file")
    assert _error(b"", name="photo.png") == "'photo.png' is empty (0 bytes), so it holds no image."
    assert _error(b"hello").startswith("the uploaded data is not an image file")


def test_wrong_type():
    assert _error(42) == "load_image takes a file path, bytes or a PIL image, not int."


# --- video -------------------------------------------------------------------------------------------------


def test_load_video_gives_frames_and_metadata():
    frames, metadata = images.load_video(data.video_path())
    assert frames.shape == (60, 240, 320, 3) and frames.dtype == np.uint8
    assert metadata.fps == 10 and metadata.total_num_frames == 60 and metadata.duration == 6


def test_load_video_errors(tmp_path):
    with pytest.raises(images.VideoError, match=r"There is no video file '.*clip.mp4'"):
        images.load_video(tmp_path / "clip.mp4")
    with pytest.raises(images.VideoError, match=r"cat.jpg' is not a video PyAV can decode"):
        images.load_video(CAT)


# --- tiles -------------------------------------------------------------------------------------------------


def test_the_tile_size_is_read_from_the_processor(tiny_processor):
    from dataclasses import replace

    from helpers import standins

    assert images.tile_size(tiny_processor) == 512  # SmolVLM2-256M and 500M
    spec = replace(standins.SPECS["synthetic-tiny"], tile=384, patch=14, scale_factor=3, longest_edge=1536)
    large = standins.build_processor(tiny_processor.tokenizer, spec)  # SmolVLM2-2.2B's geometry
    assert images.tile_size(large) == 384 and large.image_seq_len == 81
    assert images.tile_size(tiny_processor.tokenizer) is None  # no image processor: no tiles
    assert images.tile_size(object()) is None


def test_tiles_match_what_the_processor_puts_in_the_prompt(tiny_processor):
    cat = images.load_image(CAT)
    for edge in (512, 1024, 2048):
        tiles = images.cut_into_tiles(tiny_processor, cat, edge)
        inputs = tiny_processor(text=tiny_processor.image_token, images=[[cat]], size={"longest_edge": edge},
                                return_tensors="pt")
        assert tiles.n_tiles == inputs["pixel_values"].shape[1]
        assert tiles.image_tokens == int((inputs["input_ids"] == tiny_processor.image_token_id).sum())
        assert tiles.n_tiles == (tiles.rows * tiles.cols + 1 if tiles.rows else 1)
        assert tiles.pixels.shape[1:] == (512, 512, 3) and tiles.pixels.dtype == np.uint8
    assert images.cut_into_tiles(tiny_processor, cat, 512).rows == 0
    full = images.cut_into_tiles(tiny_processor, cat)
    assert (full.rows, full.cols, full.image_tokens) == (3, 4, 13 * 64)


def test_tiles_show_the_photo(tiny_processor):
    """The global view, undone from the processor's normalisation, is the photo squeezed into 512x512."""
    tiles = images.cut_into_tiles(tiny_processor, images.load_image(CAT))
    expected = np.asarray(Image.open(CAT).convert("RGB").resize((512, 512)), dtype=np.int16)
    assert np.abs(tiles.pixels[-1].astype(np.int16) - expected).mean() < 3


def test_plot_tiles_draws_every_tile(tiny_processor):
    import matplotlib

    matplotlib.use("Agg")
    tiles = images.cut_into_tiles(tiny_processor, images.load_image(CAT), 1024)
    figure = images.plot_tiles(tiles)
    assert sum(bool(ax.images) for ax in figure.axes) == tiles.n_tiles
