"""Shared fixtures. The suite runs offline with the tiny stand-in (``make test`` sets VLM_MODEL=synthetic-tiny)."""

from __future__ import annotations

import os

import pytest

from helpers import chat, devices, export, models

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
    """Write the files of a complete SmolVLM export into ``folder`` (their contents don't matter to the atomic
    logic: a build function for :func:`helpers.export.build_atomically`)."""
    for name in export.LOAD_FILES:
        (folder / name).write_text("{}")
    for stem in export.SUBMODELS.values():
        (folder / f"{stem}.xml").write_text("<net/>")
        (folder / f"{stem}.bin").write_bytes(b"\0" * 10)
