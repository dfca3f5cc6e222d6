"""Offline stand-ins for SmolVLM2: the real classes and code path, built locally without the Hugging Face Hub.

``synthetic-tiny`` (6.5M parameters, for tests), ``synthetic-256m`` (the full SmolVLM2-256M architecture, random)
and ``smollm2-256m`` (the same, with SmolLM2-135M-Instruct's real language model from ``helpers.smollm2``); all
have SmolLM2's real tokenizer, so shapes, tiling, token counts and timings are real. The README describes them.
Written by hand: no library ships a SmolVLM with random weights and a matching tokenizer.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from helpers import atomic, smollm2

# The real model's chat template (SmolVLM2-256M-Video-Instruct); the tests check it renders the same way.
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}{{ '<video>' }}{% endif %}"
    "{% endfor %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

STANDIN_MARKER = "standin.json"
STANDIN_NOTE = "Random weights with SmolLM2's real tokenizer: its text is meaningless, its timings are real."
SMOLLM2_NOTE = (
    "language model: real SmolLM2-135M-Instruct weights (from a 4-bit GGUF, dequantized); "
    "vision encoder: random, so it writes real English but does not see the image; timings real"
)
SEED = 20251015  # the source blog's date; any fixed value makes the build deterministic

_ROW_COL = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
# Added after SmolLM2's 49,152-token vocabulary in the real model's order, so that
# <fake_token_around_image> is 49189 and <image> is 49190, as in the real config.
_ADDED = ["<global-img>", *_ROW_COL, "<fake_token_around_image>", "<image>", "<video>"]
_END_OF_UTTERANCE = "<end_of_utterance>"  # always the last id, like the real 49279


@dataclass(frozen=True)
class StandinSpec:
    """Sizes of one stand-in. Vision and processor settings match the real model in every size."""

    name: str
    text_hidden: int
    text_intermediate: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    head_dim: int
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_heads: int
    base_vocab: int = 49152  # SmolLM2's tokenizer
    vocab_size: int = 49280  # rows of the embedding and output head
    real_language_model: bool = False  # True: SmolLM2-135M-Instruct's real weights (helpers.smollm2)
    # Bump to make earlier builds, and the IRs exported from them, stale. 2: the marker records file sizes;
    # 3: SmolLM2's real tokenizer instead of one trained locally.
    version: int = 3

    @property
    def note(self) -> str:
        """What is real and what is not, as the marker file and config.json say it."""
        return SMOLLM2_NOTE if self.real_language_model else STANDIN_NOTE


_SIZES_256M = dict(text_hidden=576, text_intermediate=1536, text_layers=30, text_heads=9, text_kv_heads=3,
                   head_dim=64, vision_hidden=768, vision_intermediate=3072, vision_layers=12, vision_heads=12)
SPECS: dict[str, StandinSpec] = {
    "synthetic-tiny": StandinSpec(
        name="synthetic-tiny", text_hidden=64, text_intermediate=128, text_layers=2, text_heads=4, text_kv_heads=2,
        head_dim=16, vision_hidden=32, vision_intermediate=64, vision_layers=2, vision_heads=2,
    ),
    "synthetic-256m": StandinSpec(name="synthetic-256m", **_SIZES_256M),
    # built this way since version 2
    "smollm2-256m": StandinSpec(name="smollm2-256m", **_SIZES_256M, real_language_model=True, version=2),
}

# Real SmolVLM2 processor settings (every stand-in uses them, so tiling and token counts are real).
IMAGE_SIZE = 512  # one tile, pixels
PATCH_SIZE = 16
SCALE_FACTOR = 4
IMAGE_SEQ_LEN = (IMAGE_SIZE // PATCH_SIZE) ** 2 // SCALE_FACTOR**2  # 64 tokens per tile
LONGEST_EDGE = 2048  # a photo is resized to this longest edge, then cut into 512-pixel tiles


def build_tokenizer(spec: StandinSpec):
    """SmolLM2's real tokenizer (from the GGUF file) plus SmolVLM2's 128 added tokens at their real ids, as a
    ``GPT2TokenizerFast`` like the real model's. As in SmolVLM2's own ``tokenizer.json``: no BOS token is
    prepended (its chat template writes ``<|im_start|>``) and decoding is plain byte-level."""
    from tokenizers import AddedToken, Tokenizer, decoders, processors
    from transformers import GPT2TokenizerFast

    tok = Tokenizer.from_str(smollm2.load_tokenizer().backend_tokenizer.to_str())
    if tok.get_vocab_size(with_added_tokens=True) != spec.base_vocab:
        raise RuntimeError(f"SmolLM2's tokenizer has {tok.get_vocab_size()} tokens, expected {spec.base_vocab}")
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    n_reserved = spec.vocab_size - spec.base_vocab - len(_ADDED) - 1
    ordered = [*_ADDED, *(f"<|reserved_{i}|>" for i in range(n_reserved)), _END_OF_UTTERANCE]
    # As in the real tokenizer, the image/row/column tokens are special: skip_special_tokens drops them.
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in ordered])
    # GPT2TokenizerFast, as in the real model's tokenizer_config.json (input_ids + attention_mask only).
    fast = GPT2TokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token=_END_OF_UTTERANCE,
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=["<fake_token_around_image>", "<image>", _END_OF_UTTERANCE],
        model_max_length=8192,
        clean_up_tokenization_spaces=False,
    )
    if len(fast) != spec.vocab_size:
        raise RuntimeError(f"tokenizer has {len(fast)} tokens, the model has {spec.vocab_size} rows")
    return fast


def build_processor(tokenizer):
    """SmolVLM2's processor with the real model's settings (tiling, normalisation, video sampling)."""
    from transformers import SmolVLMImageProcessor, SmolVLMProcessor, SmolVLMVideoProcessor
    from transformers.image_utils import PILImageResampling

    tile, normalise = {"longest_edge": IMAGE_SIZE}, {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
    image_processor = SmolVLMImageProcessor(
        do_resize=True, size={"longest_edge": LONGEST_EDGE}, resample=PILImageResampling.LANCZOS,
        do_image_splitting=True, max_image_size=tile, **normalise,
    )
    video_processor = SmolVLMVideoProcessor(
        video_sampling={"fps": 1, "max_frames": 64, "video_size": tile}, size=tile, max_image_size=tile,
        **normalise, do_sample_frames=True,
    )
    return SmolVLMProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                            image_seq_len=IMAGE_SEQ_LEN, chat_template=CHAT_TEMPLATE)


def build_config(spec: StandinSpec, tokenizer):
    """A ``SmolVLMConfig`` of the given size; token ids are taken from the tokenizer."""
    from transformers import SmolVLMConfig

    eou = tokenizer.convert_tokens_to_ids(_END_OF_UTTERANCE)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = SmolVLMConfig(
        vision_config={
            "hidden_size": spec.vision_hidden, "intermediate_size": spec.vision_intermediate,
            "num_hidden_layers": spec.vision_layers, "num_attention_heads": spec.vision_heads,
            "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE,
        },
        text_config={
            "model_type": "llama", "vocab_size": spec.vocab_size, "hidden_size": spec.text_hidden,
            "intermediate_size": spec.text_intermediate, "num_hidden_layers": spec.text_layers,
            "num_attention_heads": spec.text_heads, "num_key_value_heads": spec.text_kv_heads,
            "head_dim": spec.head_dim, "max_position_embeddings": 8192, "rope_theta": 100000.0,
            "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "pad_token_id": im_end,
            "bos_token_id": tokenizer.convert_tokens_to_ids("<|im_start|>"), "eos_token_id": eou,
        },
        scale_factor=SCALE_FACTOR,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=im_end,
        tie_word_embeddings=False,
    )
    config.eos_token_id = eou
    # Travels inside config.json through export and quantization, so every IR folder says it is a stand-in.
    config.standin = {"name": spec.name, "note": spec.note, "version": spec.version}
    config.bos_token_id = config.text_config.bos_token_id
    return config


def build_standin(name: str, dest: Path, seed: int = SEED, *, force: bool = False) -> Path:
    """Build stand-in ``name`` into ``dest`` (model, processor, generation config, marker with every file's size
    last), deterministically for ``seed`` and atomically (:mod:`helpers.atomic`); a usable build is reused
    unless ``force``."""
    if name not in SPECS:
        raise ValueError(f"unknown stand-in {name!r}; choose one of {sorted(SPECS)}")
    dest = Path(dest)
    with atomic.locked(dest):
        if not force and not problems(dest):
            return dest
        with atomic.partial_folder(dest) as tmp:
            _write_standin(SPECS[name], tmp, seed)
    return dest


def _write_standin(spec: StandinSpec, tmp: Path, seed: int) -> None:
    import torch
    from transformers import GenerationConfig, SmolVLMForConditionalGeneration

    start = time.perf_counter()
    tokenizer = build_tokenizer(spec)
    processor = build_processor(tokenizer)
    config = build_config(spec, tokenizer)
    torch.manual_seed(seed)
    model = SmolVLMForConditionalGeneration(config).eval()
    if spec.real_language_model:
        smollm2.copy_language_model(model, smollm2.load_language_model(), tokenizer, seed)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=[config.pad_token_id, config.eos_token_id],
        pad_token_id=config.pad_token_id,
        # SmolLM2 was tuned on another chat format than SmolVLM2's ("<|im_start|>user\n...") and, given
        # SmolVLM2's "User: ...<end_of_utterance>\nAssistant:", often ends its turn before saying anything;
        # forbidding the two end tokens as the very first token makes it answer (see helpers.smollm2).
        **({"begin_suppress_tokens": [config.pad_token_id, config.eos_token_id]} if spec.real_language_model else {}),
    )
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    marker = {
        "name": spec.name,
        "version": spec.version,
        "seed": seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "note": spec.note,
        **({"language_model": smollm2.SOURCE} if spec.real_language_model else {}),
        "build_seconds": round(time.perf_counter() - start, 1),
        "file_sizes": atomic.file_sizes(tmp),
    }
    (tmp / STANDIN_MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def read_marker(folder: Path) -> dict | None:
    """The stand-in marker of a built stand-in, or the record an IR made from one carries; ``None`` if neither."""
    path = Path(folder) / STANDIN_MARKER
    if path.is_file():
        return atomic.read_record(path)
    config = atomic.read_record(Path(folder) / "config.json")
    return config.get("standin") if config else None


def stale_record(standin: dict | None) -> str | None:
    """Why something made from the stand-in ``standin`` (a :func:`read_marker` record) is stale because that
    stand-in changed version since, or ``None``. A record without a version predates version 3."""
    spec = SPECS.get(standin.get("name")) if standin else None
    if spec is None or standin.get("version", 2) == spec.version:
        return None
    return (f"made from an earlier build of the stand-in {spec.name} (version {standin.get('version', 2)}, "
            f"now {spec.version})")


def stale_source(ir_folder: Path) -> str | None:
    """:func:`stale_record` of an IR folder (IRs carry their stand-in's record in ``config.json``)."""
    return stale_record(read_marker(ir_folder))


def problems(folder: Path) -> list[str]:
    """Why the built stand-in in ``folder`` can't be reused (empty list: it can)."""
    folder = Path(folder)
    if not folder.is_dir():
        return ["not built yet"]
    marker = atomic.read_record(folder / STANDIN_MARKER)
    if marker is None:
        return [f"{STANDIN_MARKER} is missing or damaged"]
    spec = SPECS.get(marker.get("name"))
    if spec is None or marker.get("version") != spec.version:
        return [f"built by version {marker.get('version')} of this code, which is now "
                f"{spec.version if spec else 'unknown'}"]
    return atomic.changed_files(folder, marker.get("file_sizes", {}))
