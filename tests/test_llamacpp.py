"""llama.cpp beside OpenVINO (helpers.deep.llamacpp): conversion to GGUF, a photo answered through llama.cpp's mtmd,
exact token counts, and the same prompt tokens as transformers' processor, all on the tiny stand-in (random
weights, SmolLM2's real tokenizer, which llama.cpp's SmolVLM image wrapper needs).
"""

from __future__ import annotations

import os

import pytest

try:
    import llama_cpp  # noqa: F401
except ImportError:
    if os.environ.get("CI"):
        raise  # CI installs llama-cpp-python: a missing one is a broken install, not a reason to skip
    pytest.skip("llama-cpp-python is not installed (it is built from source; see the Makefile)",
                allow_module_level=True)

from helpers import bench, chat, data, images, store
from helpers.deep import llamacpp


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
    return llamacpp.convert(tiny), store.models_dir()


@pytest.fixture(scope="module")
def model(gguf):
    m = llamacpp.load(gguf[0], "q4_0", threads=2, n_ctx=2048)
    yield m
    m.close()


QUESTION = "What is in this image?"


def test_the_build_is_this_cpus_with_its_own_thread_pool():
    info = llamacpp.system_info()
    assert "CPU :" in info and "OPENMP = 1" not in info
    assert llamacpp.threading().startswith("llama.cpp's own thread pool")
    flags = set(open("/proc/cpuinfo").read().split("flags")[1].split("\n")[0].split())
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"} <= flags:  # built for the AVX-512 this CPU has
        assert "AVX512 = 1" in info
    assert "AMX" not in info  # AMX off: it traps on some AMX machines and serves prompts only


def test_a_tokenizer_without_the_image_wrapper_tokens_is_refused_with_a_reason(tmp_path, tiny_standin):
    import shutil

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    shutil.copy(tiny_standin / "config.json", tmp_path / "config.json")
    words = ["\n", "<fake_token_around_image>", "<global-img>", "[UNK]"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split("\n", "isolated")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(tmp_path)
    with pytest.raises(llamacpp.LlamaCppUnsupported, match=r"no single token for '\\n\\n'"):
        llamacpp.check_tokenizer(tmp_path)


def test_every_standin_tokenizer_has_the_image_wrapper_tokens(tiny_standin):
    llamacpp.check_tokenizer(tiny_standin)  # raises if one is missing


def test_another_architecture_is_skipped_with_one_sentence(tmp_path, tiny_standin):
    import json

    config = json.loads((tiny_standin / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "llava"}))
    with pytest.raises(llamacpp.LlamaCppUnsupported, match="converts only SmolVLM models to GGUF, and this one is a "
                                                           "'llava'"):
        llamacpp.check_tokenizer(tmp_path)


@pytest.mark.slow
def test_conversion_files_and_skip(gguf, tiny, monkeypatch, capsys):
    folder, models = gguf
    assert folder == models / tiny.slug / "gguf"
    names = {p.name for p in folder.iterdir()}
    assert names == {"model-f16.gguf", "model-q4_0.gguf", "mmproj-f16.gguf", store.MARKER}
    assert store.problems(folder) == []
    for name in names - {store.MARKER}:
        assert (folder / name).read_bytes()[:4] == b"GGUF"
    sizes = {n: (folder / llamacpp.lm_file(n)).stat().st_size for n in llamacpp.LM_TYPES}
    assert sizes["f16"] > sizes["q4_0"]

    from gguf import GGUFReader

    assert "Q4_0" in {t.tensor_type.name for t in GGUFReader(folder / "model-q4_0.gguf").tensors}
    assert GGUFReader(folder / llamacpp.MMPROJ).get_field("clip.projector_type").contents() == "idefics3"
    assert store.record(folder)["facts"]["standin_version"] is not None  # made from a stand-in: rebuilt with it
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    monkeypatch.setenv("VLM_MODELS_DIR", str(models))
    capsys.readouterr()
    assert llamacpp.convert(tiny) == folder
    assert "Skipped" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


@pytest.mark.slow
@pytest.mark.parametrize("photo", ["cat", None])
def test_exactly_n_new_tokens(model, tiny_processor, photo):
    p = llamacpp.prompt(model, tiny_processor, "Describe this image in detail.", data.photo_path(photo) if photo else None)
    tokens, times, start, end = llamacpp.generate(model, p, 12, min_new_tokens=12)
    assert len(tokens) == len(times) == 12 and start < times[0] <= times[-1] <= end
    figures = llamacpp.time_generation(model, p, 6)
    assert set(figures) == {"ttft_s", "tpot_s", "decode_tok_s", "e2e_s"}
    assert all(v > 0 for v in figures.values()) and figures["ttft_s"] < figures["e2e_s"]
    assert figures["decode_tok_s"] == pytest.approx(1 / figures["tpot_s"])


@pytest.mark.slow
def test_tiles_and_tokens_match_transformers(model, tiny_processor):
    image = images.load_image(data.photo_path("cat"))
    hf = chat.question_inputs(tiny_processor, QUESTION, image)
    p = llamacpp.prompt(model, tiny_processor, QUESTION, image)
    image_token = tiny_processor.tokenizer.convert_tokens_to_ids("<image>")
    assert p.facts["image_tiles"] == hf["pixel_values"].shape[1] == 13  # 4x3 tiles + the global view
    assert p.facts["image_tokens"] == 13 * tiny_processor.image_seq_len
    assert _token_ids(p, image_token) == hf["input_ids"][0].tolist()
    # The blog's one tile: transformers makes 1 image; llama.cpp's nearest setting makes a tile + the global view.
    one = llamacpp.prompt(model, tiny_processor, QUESTION, data.photo_path("astronaut"),
                          max_image_tokens=tiny_processor.image_seq_len).facts
    assert (one["image_tiles"], one["image_tokens"]) == (2, 2 * tiny_processor.image_seq_len)


@pytest.mark.slow
def test_the_workloads_get_the_processors_image_token_budget(model, tiny_processor):
    prepared = bench.prepare_workloads(tiny_processor, 1024)
    ours = llamacpp.prepare(model, tiny_processor, prepared)
    assert set(ours) == set(prepared)
    assert ours["text"].facts["image_tokens"] == 0 and ours["text"].facts["max_image_tokens"] is None
    assert ours["photo"].facts["max_image_tokens"] == prepared["photo"].facts["image_tokens"]
    figures = bench.run_workload(model, ours["text"], 0, 2, timer=llamacpp.time_generation)
    assert figures["ttft_s"]["n"] == 2 and figures["decode_tok_s"]["median"] > 0


def test_without_the_build_the_notebook_is_told_what_to_do(monkeypatch):
    from importlib import metadata

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(llamacpp, "version", not_installed)
    with pytest.raises(llamacpp.LlamaCppUnsupported) as err:
        llamacpp.require()
    assert str(err.value) == ("llama.cpp is not built in this environment: run `make llamacpp` once (4 to 8 minutes "
                              "on 2 cores), then run this notebook again.")


def _answer_all(model, processor, samples: list, max_new_tokens: int, baseline: list) -> list:
    """quality.answer_all for llama.cpp: each sample answered greedily (at least one token) and scored by teacher
    forcing on the baseline's answer (photos through llama.cpp's own preprocessing, at one tile's token budget)."""
    import numpy as np
    import torch

    from helpers import quality

    answers = []
    for sample, ref in zip(samples, baseline):
        p = llamacpp.prompt(model, processor, sample.question, sample.image, processor.image_seq_len)
        tokens = llamacpp.generate(model, p, max_new_tokens, min_new_tokens=1)[0]
        forced: list = []
        llamacpp.generate(model, p, 0, force=ref.tokens, logits=forced)
        text = model.llm.detokenize([t for t in tokens if t not in model.eog]).decode(errors="replace").strip()
        answers.append(quality.EvalAnswer(tokens, text, scores=quality.token_metrics(
            ref.logits, torch.from_numpy(np.stack(forced)), ref.tokens)))
    return answers


@pytest.mark.slow
def test_quality_against_the_pytorch_baseline(gguf, tiny, tiny_processor):
    import torch
    from transformers import AutoModelForImageTextToText

    from helpers import quality

    samples = quality.samples(tiny_processor, 1, 1, images.tile_size(tiny_processor))
    baseline_model = AutoModelForImageTextToText.from_pretrained(tiny.source, dtype=torch.float32).eval()
    baseline = quality.answer_all(baseline_model, tiny_processor, samples, 6)
    m = llamacpp.load(gguf[0], "f16", threads=2, n_ctx=2048)
    try:
        answers = _answer_all(m, tiny_processor, samples, 6, baseline)
        forced: list = []
        tokens = llamacpp.generate(m, llamacpp.prompt(m, tiny_processor, samples[1].question), 99,
                                   force=baseline[1].tokens, logits=forced)[0]
    finally:
        m.close()
    assert tokens == baseline[1].tokens and len(forced) == len(tokens)
    assert [len(a.tokens) >= 1 for a in answers] == [True, True]
    for a in answers:
        assert 0.0 <= a.scores["token_agreement"] <= 1.0 and a.scores["kl_mean"] >= 0.0
    # the same weights in F16 on the same text prompt: llama.cpp's next-token distributions are PyTorch's
    assert answers[1].scores["kl_mean"] < 1e-3


@pytest.mark.slow
def test_decoding_with_a_busy_core_runs_llama_cpp_too(gguf, tiny):
    from helpers.deep import busy

    figures = busy.decode_with_a_busy_core(gguf[0], 2, "PASSIVE", new_tokens=4, seconds=0.5,
                                           processor_folder=tiny.source)
    assert figures["idle_tok_s"] > 0 and figures["busy_tok_s"] > 0 and figures["wait_policy"] == "PASSIVE"
