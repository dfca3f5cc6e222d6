"""What ``generate`` costs: the same greedy decoding as a plain loop over OpenVINO's compiled submodels.

:func:`direct_greedy` runs only the language model, the text embeddings and an argmax through the very requests
``generate`` uses, so the gap between the two is the price of transformers' Python loop. Hand-written because no
library offers a plain loop over an Optimum Intel model (OpenVINO GenAI's C++ pipeline has no SmolVLM support).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator

import numpy as np

# Generation-config fields greedy decoding in transformers honours that the loop below does not: it refuses a
# config that sets them (it applies suppress_tokens and begin_suppress_tokens, which the stand-ins set).
_NOT_REPLICATED = ("repetition_penalty", "no_repeat_ngram_size", "bad_words_ids", "forced_bos_token_id",
                   "forced_eos_token_id", "sequence_bias", "encoder_repetition_penalty")


def _ids(value) -> list[int]:
    return [] if value is None else [value] if isinstance(value, int) else list(value)


def greedy_tokens(model, inputs, max_new_tokens: int, *, min_new_tokens: int = 0) -> Iterator[int]:
    """Greedy tokens for processor output ``inputs`` from an ``OVModelForVisualCausalLM``, yielded as each is
    chosen, as ``model.generate(**inputs, max_new_tokens=..., min_new_tokens=..., do_sample=False)`` chooses them
    (an end-of-turn token is banned before ``min_new_tokens``; after, it is yielded and ends the answer)."""
    from transformers import GenerationConfig

    config, default = model.generation_config, GenerationConfig()
    unsupported = [name for name in _NOT_REPLICATED if getattr(config, name, None) != getattr(default, name, None)]
    if unsupported:
        raise ValueError(f"the direct loop does not apply {', '.join(unsupported)} from the generation config; "
                         "compare with generate only for models that leave them unset")
    ends, never, not_first = map(_ids, (config.eos_token_id, config.suppress_tokens, config.begin_suppress_tokens))
    language_model = model.language_model
    language_model.compile()
    request = language_model.request

    embeds, mask, positions = model.get_multimodal_embeddings(**inputs)[:3]
    mask = np.asarray(mask, dtype=np.int64)
    positions = (np.cumsum(mask, axis=1) - 1) if positions is None else np.asarray(positions, dtype=np.int64)
    request.reset_state()
    feed = {"inputs_embeds": np.asarray(embeds), "attention_mask": mask, "position_ids": positions,
            "beam_idx": np.zeros(1, dtype=np.int32)}
    for step in range(max_new_tokens):
        request.infer(feed, share_inputs=True)
        scores = request.get_tensor("logits").data[0, -1].copy()
        scores[never + (ends if step < min_new_tokens else []) + (not_first if step == 0 else [])] = -np.inf
        token = int(scores.argmax())
        yield token
        if token in ends:
            return
        mask = np.concatenate([mask, np.ones((1, 1), dtype=np.int64)], axis=1)
        feed = {"inputs_embeds": np.asarray(language_model.embed_tokens(np.array([[token]]))),
                "attention_mask": mask, "position_ids": positions[:, -1:] + step + 1,
                "beam_idx": np.zeros(1, dtype=np.int32)}


def direct_greedy(model, inputs, new_tokens: int) -> tuple[list[int], float, list[float]]:
    """Exactly ``new_tokens`` greedy tokens as ``(tokens, start, time of each token)`` (``time.perf_counter()``);
    the first token's time includes the vision encoder and the prefill, as TTFT does for ``generate``."""
    tokens, times = [], []
    start = time.perf_counter()
    for token in greedy_tokens(model, inputs, new_tokens, min_new_tokens=new_tokens):
        times.append(time.perf_counter())
        tokens.append(token)
    return tokens, start, times


def generate_vs_direct(model, inputs, new_tokens: int, iterations: int) -> dict:
    """Median TTFT and TPOT of ``generate`` and :func:`direct_greedy`, ``iterations`` alternating calls each after
    one warm-up, and ``gap``: how much longer ``generate``'s TPOT is (0.1: 10%). ``AssertionError`` if their
    tokens differ."""
    from helpers.bench import generate_timed, token_figures

    if new_tokens < 2 or iterations < 1:
        raise ValueError(f"need new_tokens >= 2 and iterations >= 1, got {new_tokens} and {iterations}")
    prompt = inputs["input_ids"].shape[1]
    reference = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                               do_sample=False)[0, prompt:].tolist()
    tokens = direct_greedy(model, inputs, new_tokens)[0]
    if tokens != reference:
        raise AssertionError(f"the direct loop chose other tokens than generate: {tokens[:8]}... against "
                             f"{reference[:8]}...")
    runs = {"generate": [], "direct": []}
    for _ in range(iterations):
        runs["generate"].append(token_figures(*generate_timed(model, inputs, new_tokens)))
        _, start, times = direct_greedy(model, inputs, new_tokens)
        runs["direct"].append(token_figures(start, times, time.perf_counter()))
    result = {name: {figure: statistics.median(r[figure] for r in rows) for figure in ("ttft_s", "tpot_s")}
              for name, rows in runs.items()}
    return {**result, "gap": result["generate"]["tpot_s"] / result["direct"]["tpot_s"] - 1, "same_tokens": True,
            "iterations": iterations}
