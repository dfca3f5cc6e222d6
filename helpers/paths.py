"""Where the course keeps things: repository folders and the work folders that runs create."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"


def cache_dir() -> Path:
    """Folder for built stand-in models and prefetched downloads (``VLM_CACHE``, default ``<repo>/cache``)."""
    return Path(os.environ.get("VLM_CACHE", REPO_ROOT / "cache")).resolve()


def openvino_cache_dir() -> Path:
    """OpenVINO's compile cache (``CACHE_DIR``): compiled models, so a model loads faster the second time."""
    return cache_dir() / "openvino-compiled"


def models_dir() -> Path:
    """Folder for exported and quantized OpenVINO IRs (``VLM_MODELS_DIR``, default ``<repo>/models``)."""
    return Path(os.environ.get("VLM_MODELS_DIR", REPO_ROOT / "models")).resolve()


def runs_dir() -> Path:
    """Folder where ``make run`` writes executed notebooks and results (``VLM_RUN_DIR``, default ``runs/latest``)."""
    return Path(os.environ.get("VLM_RUN_DIR", REPO_ROOT / "runs" / "latest")).resolve()
