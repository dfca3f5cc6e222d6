"""llama.cpp beside OpenVINO (helpers.llamacpp): conversion to GGUF, a photo answered through llama.cpp's mtmd,
exact token counts, and the same prompt tokens as transformers' processor, all on the tiny stand-in (random
weights, SmolLM2's real tokenizer, which llama.cpp's SmolVLM image wrapper needs).
"""

from __future__ import annotations

import dataclasses
import os

import pytest

try:
    import llama_cpp  # noqa: F401
except ImportError:
    if os.environ.get("CI"):
        raise  # CI installs llama-cpp-python: a missing one is a broken install, not a reason to skip
    pytest.skip("llama-cpp-python is not installed (it is built from source; see the Makefile)",
                allow_module_level=True)

from helpers import bench, chat, data, images, llamacpp
from helpers.paths import models_dir


def _token_ids(p: llamacpp.Prompt, image_token_id: int) -> list[int]:
    """The prompt's token ids, each image token shown as ``image_token_id`` (to compare with transformers' ids)."""
    import ctypes

    from llama_cpp import mtmd_cpp

    ids: list[int] = []
    for i in range(mtmd_cpp.mtmd_input_chunks_size(p.chunks)):
        chunk = mtmd_cpp.mtmd_input_chunks_get(p.chunks, i)
        if mtmd_cpp.mtmd_input_chunk_get_type(chunk) == mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_TEXT:
            n = ctypes.c_size_t()
            tokens = mtmd_cpp.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
            ids += [tokens[j] for j in range(n.value)]
        else:
            ids += [image_token_id] * mtmd_cpp.mtmd_input_chunk_get_n_tokens(chunk)
    return ids


@pytest.fixture(scope="module")
def gguf(tiny):
    """The tiny model converted into this module's models folder: (GGUF folder, the models folder)."""
    return llamacpp.convert(tiny, threads=2), models_dir()


@pytest.fixture(scope="module")
def model(gguf):
    m = llamacpp.load(gguf[0], "q8_0", threads=2, n_ctx=2048)
    yield m
    m.close()


def test_chat_text_is_the_processors_prompt(tiny_processor):
    assert llamacpp.chat_text("What is in this image?", True) == chat.prompt_text(tiny_processor,
                                                                                 "What is in this image?", 1)
    assert llamacpp.chat_text("Hi?", False) == chat.prompt_text(tiny_processor, "Hi?")


def test_a_tokenizer_without_the_image_wrapper_tokens_is_refused_with_a_reason(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["\n", "<fake_token_around_image>", "<global-img>", "[UNK]"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split("\n", "isolated")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(tmp_path)
    with pytest.raises(llamacpp.LlamaCppUnsupported, match=r"no single token for '\\n\\n'"):
        llamacpp.check_tokenizer(tmp_path)


def test_every_standin_tokenizer_has_the_image_wrapper_tokens(tiny_standin):
    llamacpp.check_tokenizer(tiny_standin)  # raises if one is missing


def test_workload_image_tokens():
    assert llamacpp.image_tokens_for_edge(bench.WORKLOADS["blog"].longest_edge) == 64
    assert llamacpp.image_tokens_for_edge(bench.WORKLOADS["photo"].longest_edge) is None


@pytest.mark.slow
def test_conversion_files_and_skip(gguf, tiny, monkeypatch, capsys):
    folder, models = gguf
    assert folder == models / tiny.slug / "gguf"
    names = {p.name for p in folder.iterdir()}
    assert names == {"model-f16.gguf", "model-q8_0.gguf", "model-q4_0.gguf", "mmproj-f16.gguf", llamacpp.MARKER}
    assert llamacpp.problems(folder) == []
    for name in names - {llamacpp.MARKER}:
        assert (folder / name).read_bytes()[:4] == b"GGUF"
    sizes = {n: (folder / llamacpp.lm_file(n)).stat().st_size for n in llamacpp.LM_TYPES}
    assert sizes["f16"] > sizes["q8_0"] > sizes["q4_0"]

    from gguf import GGUFReader

    types = {t.tensor_type.name for t in GGUFReader(folder / "model-q4_0.gguf").tensors}
    assert "Q4_0" in types
    assert GGUFReader(folder / llamacpp.MMPROJ).get_field("clip.projector_type").contents() == "idefics3"

    assert llamacpp.read_marker(folder)["standin"]["name"] == "synthetic-tiny"
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    monkeypatch.setenv("VLM_MODELS_DIR", str(models))
    capsys.readouterr()
    assert llamacpp.convert(tiny) == folder
    assert "Skipped" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


@pytest.mark.slow
def test_answers_a_photo(model):
    text = llamacpp.answer(model, "What is in this image?", data.photo_path("cat"), max_new_tokens=8)
    assert isinstance(text, str) and text  # random weights: any text, but some


@pytest.mark.slow
@pytest.mark.parametrize("photo", ["cat", None])
def test_exactly_n_new_tokens(model, photo):
    p = llamacpp.prompt(model, "Describe this image in detail.", data.photo_path(photo) if photo else None)
    tokens, times, start, end = llamacpp.generate(model, p, 12, min_new_tokens=12)
    assert len(tokens) == len(times) == 12 and start < times[0] <= times[-1] <= end
    figures = llamacpp.time_generation(model, p, 6)
    assert set(figures) == {"ttft_s", "tpot_s", "decode_tok_s", "e2e_s"}
    assert all(v > 0 for v in figures.values())
    assert figures["ttft_s"] < figures["e2e_s"]
    assert figures["decode_tok_s"] == pytest.approx(1 / figures["tpot_s"])


@pytest.mark.slow
def test_tiles_and_tokens_match_transformers(model, tiny):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny.source)
    question = "What is in this image?"
    image = images.load_image(data.photo_path("cat"))
    hf = chat.question_inputs(processor, question, image)
    p = llamacpp.prompt(model, question, image)
    image_token = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert p.facts["image_tiles"] == hf["pixel_values"].shape[1] == 13  # 4x3 tiles + the global view
    assert p.facts["image_tokens"] == 13 * 64
    assert _token_ids(p, image_token) == hf["input_ids"][0].tolist()
    # The blog's one 512x512 tile: transformers makes 1 image; llama.cpp's nearest setting makes a tile + global view.
    one = llamacpp.prompt(model, question, data.photo_path("astronaut"), max_image_tokens=64).facts
    assert (one["image_tiles"], one["image_tokens"]) == (2, 128)


@pytest.mark.slow
def test_measure_contender_record(gguf):
    workloads = {"text": dataclasses.replace(bench.WORKLOADS["text"], new_tokens=4)}
    record, seen = llamacpp.measure_contender(gguf[0], "q4_0", 2, workloads, warmup=0, iterations={"text": 2},
                                            then=lambda m: m.lm_type)
    assert seen == "q4_0" and "error" not in record
    assert record["backend"] == "llama.cpp" and record["threads"] == 2 and record["load_compile_s"] > 0
    assert record["peak_rss_MB"] >= record["rss_before_MB"] > 0
    figures = record["workloads"]["text"]
    assert figures["ttft_s"]["n"] == 2 and figures["facts"]["image_tiles"] == 0
    # every tensor but the input embedding: less than the file, more than half of it (the output head alone is
    # as large as the embedding)
    assert 0.3 * record["gguf_size_MB"] < record["lm_bytes_per_token_MB"] < record["gguf_size_MB"]


@pytest.mark.slow
def test_a_missing_file_is_recorded_not_raised(gguf, tmp_path):
    import shutil

    broken = tmp_path / "gguf"
    shutil.copytree(gguf[0], broken)
    (broken / llamacpp.MMPROJ).write_bytes(b"GGUF")
    record, seen = llamacpp.measure_contender(broken, "q8_0", 2, {}, then=lambda m: "loaded")
    assert seen is None and "error" in record and "workloads" not in record


@pytest.mark.slow
def test_quality_against_the_pytorch_reference(gguf, tiny, tiny_processor):
    import torch
    from transformers import AutoModelForImageTextToText

    from helpers import quality

    samples = quality.eval_samples(tiny_processor, 1) + quality.text_samples(tiny_processor, 1)
    reference_model = AutoModelForImageTextToText.from_pretrained(tiny.source, dtype=torch.float32).eval()
    reference = quality.run(reference_model, tiny_processor, samples, 6)
    m = llamacpp.load(gguf[0], "f16", threads=2, n_ctx=2048)
    try:
        answers = llamacpp.run_quality(m, samples, 6, reference)
        forced: list = []
        tokens, _, _, _ = llamacpp.generate(m, llamacpp.prompt(m, samples[1].question), 99,
                                            force=reference[1].tokens, logits=forced)
    finally:
        m.close()
    assert tokens == reference[1].tokens and len(forced) == len(tokens)
    assert [len(a.tokens) >= 1 for a in answers] == [True, True]
    for a in answers:
        assert 0.0 <= a.scores["token_agreement"] <= 1.0 and a.scores["kl_mean"] >= 0.0
    # the same weights in F16 on the same text prompt: llama.cpp's next-token distributions are PyTorch's
    text = answers[1].scores
    assert text["kl_mean"] < 1e-3
