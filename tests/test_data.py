"""The course data in data/ and the helpers that load it (helpers/data.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import pytest
from PIL import Image

from helpers import data
from helpers.data import DATA_DIR
from helpers.store import REPO_ROOT


@pytest.fixture(scope="module")
def make_video():
    """``data/make_video.py``, the script that made the committed clip, imported once as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_video", DATA_DIR / "make_video.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

EXPECTED_PHOTOS = ["astronaut", "cameraman", "cat", "coffee", "hubble", "rocket"]
# Committed clip: 3 photos x 2 s x 10 fps.
EXPECTED_FRAMES = 60


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _decode(path: Path) -> tuple[int, tuple[int, int], float]:
    """(decoded frame count, (width, height), average fps) of a video file."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        return len(frames), (frames[0].width, frames[0].height), float(stream.average_rate)


def test_photos_exist_and_open_as_rgb():
    photos = data.list_photos()
    assert [p.stem for p in photos] == EXPECTED_PHOTOS
    for p in photos:
        with Image.open(p) as im:
            im.load()
            assert im.mode == "RGB", p.name
            assert 256 <= min(im.size) and max(im.size) <= 1024, (p.name, im.size)


def test_data_folder_is_small():
    total = sum(p.stat().st_size for p in DATA_DIR.rglob("*") if p.is_file())
    assert total < 2_000_000


def test_photo_path_accepts_stem_and_file_name():
    assert data.photo_path("cat") == DATA_DIR / "images" / "cat.jpg"
    assert data.photo_path("cat.jpg") == data.photo_path("cat")


def test_photo_path_error_lists_available_names():
    with pytest.raises(FileNotFoundError) as err:
        data.photo_path("nope")
    message = str(err.value)
    assert "'nope'" in message
    for name in EXPECTED_PHOTOS:
        assert name in message


@pytest.mark.parametrize("file_name", ["calibration.jsonl", "eval.jsonl"])
def test_every_referenced_image_exists(file_name):
    rows = _jsonl(DATA_DIR / file_name)
    assert rows
    for row in rows:
        assert (DATA_DIR / row["image"]).is_file(), row["image"]
        assert row["question"].strip()


def test_calibration_covers_every_photo_four_times():
    rows = _jsonl(DATA_DIR / "calibration.jsonl")
    assert len(rows) == 24
    counts = {Path(r["image"]).stem: 0 for r in rows}
    for r in rows:
        counts[Path(r["image"]).stem] += 1
    assert counts == {name: 4 for name in EXPECTED_PHOTOS}


def test_load_calibration_dataset_small():
    ds = data.load_calibration_dataset(5)
    assert len(ds) == 5
    assert set(ds.column_names) == {"image", "question"}
    for row in ds:
        assert isinstance(row["image"], Image.Image)
        assert row["image"].width > 0 and row["image"].height > 0
        assert row["question"].strip()
    # round-robin order: the first rows are from different photos
    assert len({row["image"].size for row in ds}) > 1


def test_load_calibration_dataset_more_than_available_returns_all():
    available = len(_jsonl(DATA_DIR / "calibration.jsonl"))
    assert len(data.load_calibration_dataset(1000)) == available
    assert len(data.load_calibration_dataset()) == available


@pytest.mark.parametrize("bad", [0, -3])
def test_load_calibration_dataset_rejects_non_positive(bad):
    with pytest.raises(ValueError):
        data.load_calibration_dataset(bad)


def test_loading_needs_no_network(tmp_path):
    """Fresh HF cache, offline flags, and a dead proxy: any network use would fail."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    code = (
        "from helpers import data; "
        "print(len(data.load_calibration_dataset(3)), len(data.load_eval_set()))"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["3", "12"]


def test_eval_set_has_answers():
    ds = data.load_eval_set()
    assert len(ds) == 12
    assert set(ds.column_names) == {"image", "question", "answer"}
    for row in ds:
        assert isinstance(row["image"], Image.Image)
        assert row["question"].strip()
        assert row["answer"].strip()
    answers = {row["question"]: row["answer"] for row in ds}
    assert answers["What animal is this?"] == "a cat"


def test_committed_video_decodes(make_video):
    path = data.video_path()
    assert path == DATA_DIR / "video" / "slideshow.mp4"
    assert path.stat().st_size < 500_000
    n_frames, size, fps = _decode(path)
    assert n_frames == EXPECTED_FRAMES
    assert size == make_video.VIDEO_SIZE
    assert fps == make_video.VIDEO_FPS


def test_make_demo_video_reproduces_committed_clip(make_video, tmp_path):
    out = make_video.make_demo_video(tmp_path / "sub" / "clip.mp4")
    assert out == tmp_path / "sub" / "clip.mp4"
    assert not list(out.parent.glob("*.partial*"))
    assert _decode(out) == _decode(data.video_path())
    # Same PyAV build -> same bytes. If this fails after a PyAV upgrade, remake data/video/slideshow.mp4.
    assert out.read_bytes() == data.video_path().read_bytes()


def test_make_demo_video_frame_count_follows_arguments(make_video, tmp_path):
    out = make_video.make_demo_video(
        tmp_path / "short.mp4", photos=["cat", "coffee"], size=(160, 120), fps=8, seconds_per_photo=1.0
    )
    assert _decode(out) == (16, (160, 120), 8.0)
