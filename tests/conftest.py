"""Shared fixtures. The suite runs offline with the tiny stand-in (``make test`` sets VLM_MODEL=synthetic-tiny)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("VLM_MODEL", "synthetic-tiny")


@pytest.fixture(scope="session")
def tiny_standin():
    """Path of the tiny stand-in, built once into the cache."""
    from helpers.models import ensure_standin

    return ensure_standin("synthetic-tiny")


@pytest.fixture(scope="session")
def tiny_processor(tiny_standin):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_standin)


@pytest.fixture(scope="session")
def smollm2_standin():
    """Path of the speaking stand-in (real SmolLM2-135M-Instruct language model, random vision), built once."""
    from helpers.models import ensure_standin

    return ensure_standin("smollm2-256m")
