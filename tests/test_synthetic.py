"""The stand-ins are right: real architecture, real tiling and token counts, the real chat template."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from PIL import Image

from helpers import data, synthetic


def _expected_tiles(width: int, height: int) -> int:
    """SmolVLM2's rule, from its model card: longest edge to 2048, cut into 512-px tiles, plus one global image."""
    scale = 2048 / max(width, height)
    w, h = round(width * scale), round(height * scale)
    return -(-w // 512) * -(-h // 512) + 1


@pytest.mark.parametrize("size", [(512, 512), (640, 480), (300, 1200), (2000, 300)])
def test_processor_tiles_and_image_tokens(tiny_processor, size):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    prompt = tiny_processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = tiny_processor(text=prompt, images=[Image.new("RGB", size, "gray")], return_tensors="pt")
    tiles = _expected_tiles(*size)
    assert inputs["pixel_values"].shape[:3] == (1, tiles, 3)
    assert inputs["pixel_values"].shape[-2:] == (512, 512)
    assert int((inputs["input_ids"] == tiny_processor.image_token_id).sum()) == 64 * tiles


def test_a_real_photo_becomes_17_tiles_of_64_tokens(tiny_processor):
    photo = Image.open(data.photo_path("astronaut")).convert("RGB")  # 512 x 512
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]}]
    prompt = tiny_processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = tiny_processor(text=prompt, images=[photo], return_tensors="pt")
    assert inputs["pixel_values"].shape[1] == 17
    assert int((inputs["input_ids"] == tiny_processor.image_token_id).sum()) == 17 * 64


def test_chat_template_renders_as_the_real_one(tiny_processor):
    from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE

    assert synthetic.CHAT_TEMPLATE == DEFAULT_CHAT_TEMPLATE
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        {"role": "user", "content": [{"type": "text", "text": "And this?"}, {"type": "video"}]},
    ]
    rendered = tiny_processor.apply_chat_template(messages, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>User:<image>What is this?<end_of_utterance>\n"
        "Assistant: A cat.<end_of_utterance>\n"
        "User: And this?<video><end_of_utterance>\n"
        "Assistant:"
    )


def test_256m_has_the_real_architecture():
    import torch
    from transformers import SmolVLMForConditionalGeneration

    spec = synthetic.SPECS["synthetic-256m"]
    tokenizer = synthetic.build_tokenizer(spec)
    config = synthetic.build_config(spec, tokenizer)
    with torch.device("meta"):
        model = SmolVLMForConditionalGeneration(config)
    n_params = sum(p.numel() for p in model.parameters())
    assert 256.0e6 < n_params < 257.0e6, n_params
    lm = sum(p.numel() for n, p in model.named_parameters() if ".text_model.layers." in n) / 30
    assert 3.5e6 < lm < 3.6e6  # 3.54M per layer: q, o 576x576; k, v 576x192; MLP 3 x 576x1536
    assert config.image_token_id == 49190
    assert tokenizer.convert_tokens_to_ids("<end_of_utterance>") == 49279
    assert len(tokenizer) == config.text_config.vocab_size == 49280
    # every row of the model decodes to text
    decoded = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    assert len(decoded) == 49280 and all(isinstance(t, str) for t in decoded)
    assert sum(1 for t in decoded if t) == 49280


def test_tiny_is_small_and_the_build_is_deterministic(tmp_path, tiny_standin):
    marker = synthetic.read_marker(tiny_standin)
    assert marker["name"] == "synthetic-tiny"
    assert 6_000_000 < marker["parameters"] < 7_000_000  # 2 x 49,280 x 64 of it: the embedding and output head
    again = synthetic.build_standin("synthetic-tiny", tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        first = hashlib.sha256((tiny_standin / name).read_bytes()).hexdigest()
        assert hashlib.sha256((again / name).read_bytes()).hexdigest() == first, name
    assert not (tmp_path / "again.partial").exists()


@pytest.mark.parametrize("damage, expected", [
    ("model.safetensors", "model.safetensors is 100 bytes but was"),
    ("standin.json", "standin.json is missing or damaged"),
])
def test_a_damaged_standin_cache_is_named_and_rebuilt(tmp_path, monkeypatch, tiny_standin, capsys, damage,
                                                      expected):
    import shutil

    from helpers import models

    monkeypatch.setenv("VLM_CACHE", str(tmp_path))
    folder = models.standin_path("synthetic-tiny")
    shutil.copytree(tiny_standin, folder)
    assert synthetic.problems(folder) == []
    path = folder / damage
    path.write_bytes(path.read_bytes()[:100] if damage == "model.safetensors" else b"")  # a copy cut short
    assert any(expected in p for p in synthetic.problems(folder))
    models.ensure_standin("synthetic-tiny")
    out = capsys.readouterr().out
    assert "can't be reused" in out and expected in out
    assert synthetic.problems(folder) == []
    assert (folder / "model.safetensors").read_bytes() == (tiny_standin / "model.safetensors").read_bytes()
    assert synthetic.read_marker(folder)["file_sizes"] == synthetic.read_marker(tiny_standin)["file_sizes"]


def test_an_ir_from_an_earlier_standin_build_is_stale(tmp_path):
    import json

    def ir(standin: dict) -> Path:
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": "smolvlm", "standin": standin}))
        return folder

    old_tiny = ir({"name": "synthetic-tiny", "note": "an IR exported before version 3"})
    assert synthetic.stale_source(old_tiny) == ("made from an earlier build of the stand-in synthetic-tiny "
                                                "(version 2, now 3)")
    assert synthetic.stale_source(ir({"name": "synthetic-tiny", "note": "", "version": 3})) is None
    assert synthetic.stale_source(ir({"name": "smollm2-256m", "note": ""})) is None  # unchanged since version 2
    assert synthetic.stale_source(tmp_path) is None  # not an export of a stand-in
