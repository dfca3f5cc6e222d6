"""Where the time of one ``generate`` call goes: vision encoder, text embeddings, language model, and the rest.

A :class:`StageClock` times every submodel call while ``generate`` runs; :func:`split` assigns each call to the
token it served. "The rest" (``generate``'s own Python) is the remainder, so the parts add up to the whole.
Hand-written because neither Optimum Intel nor transformers reports a per-submodel split of ``generate``.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

STAGES = ("vision", "text_embeddings", "language_model")


class StageClock:
    """Context manager: while active, ``events`` collects ``(stage, start, end)`` for every submodel call.

    OpenVINO (Optimum Intel): wraps the methods that run the compiled submodels; PyTorch: forward hooks.
    """

    def __init__(self, model) -> None:
        self.model = model
        self.events: list[tuple[str, float, float]] = []
        self._undo: list = []

    def _wrap(self, owner, name: str, stage: str) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.events.append((stage, start, time.perf_counter()))

        had_own = name in vars(owner)  # an attribute of the instance itself (put back) or of its class (removed)
        setattr(owner, name, timed)
        self._undo.append(lambda: setattr(owner, name, original) if had_own else delattr(owner, name))

    def _hook(self, module, stage: str) -> None:
        starts: list[float] = []
        pre = module.register_forward_pre_hook(lambda *_: starts.append(time.perf_counter()))
        post = module.register_forward_hook(lambda *_: self.events.append((stage, starts.pop(), time.perf_counter())))
        self._undo += [pre.remove, post.remove]

    def __enter__(self) -> "StageClock":
        m = self.model
        try:
            if hasattr(m, "language_model") and hasattr(m, "vision_embeddings"):  # Optimum Intel
                self._wrap(m.vision_embeddings, "forward", "vision")
                self._wrap(m.language_model, "embed_tokens", "text_embeddings")
                self._wrap(m.language_model, "forward", "language_model")
            else:  # transformers' SmolVLMForConditionalGeneration
                inner = m.model
                self._hook(inner.vision_model, "vision")
                self._hook(inner.connector, "vision")
                self._hook(inner.text_model.get_input_embeddings(), "text_embeddings")
                self._hook(inner.text_model, "language_model")
                self._hook(m.lm_head, "language_model")
        except Exception:
            self.__exit__()  # take off what was put on before the failure
            raise
        return self

    def __exit__(self, *exc) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()


def split(events: list[tuple[str, float, float]], start: float, token_times: list[float], end: float,
          tiles: int) -> dict:
    """The first token and the mean decoding step of one timed generation split into stages (seconds).

    ``first_token``: its stages and ``rest``, adding up to ``ttft``; ``per_token``: ``language_model``,
    ``text_embeddings`` and ``rest``, adding up to ``tpot``; ``vision_per_tile``; ``e2e``.
    """
    steps: list[dict[str, float]] = [dict.fromkeys(STAGES, 0.0) for _ in token_times]
    for stage, began, ended in events:
        # the token an event served: the first token time at or after its end (the last token's step otherwise)
        step = next((i for i, t in enumerate(token_times) if ended <= t), len(token_times) - 1)
        steps[step][stage] += ended - began
    ttft = token_times[0] - start
    first = {**steps[0], "ttft": ttft, "rest": ttft - sum(steps[0].values())}
    later = steps[1:]
    tpot = (token_times[-1] - token_times[0]) / max(len(later), 1)
    per_token = {stage: statistics.fmean(s[stage] for s in later) if later else 0.0
                 for stage in ("language_model", "text_embeddings")}
    per_token.update(tpot=tpot, rest=tpot - sum(per_token.values()))
    return {"first_token": first, "vision_per_tile": first["vision"] / tiles if tiles else 0.0,
            "per_token": per_token, "e2e": end - start}


def measure(model, inputs, new_tokens: int, tiles: int, iterations: int = 1) -> dict:
    """:func:`split` of ``iterations`` timed generations (after the caller's warm-up): the first token of the
    median-TTFT run and the step of the median-TPOT run (so their parts still add up), and the median e2e."""
    from helpers.bench import generate_timed

    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    runs = []
    for _ in range(iterations):
        with StageClock(model) as clock:
            start, times, end = generate_timed(model, inputs, new_tokens)
        runs.append(split(clock.events, start, times, end, tiles))
    first = sorted(runs, key=lambda r: r["first_token"]["ttft"])[(len(runs) - 1) // 2]
    step = sorted(runs, key=lambda r: r["per_token"]["tpot"])[(len(runs) - 1) // 2]
    return {"first_token": first["first_token"], "vision_per_tile": first["vision_per_tile"],
            "per_token": step["per_token"], "e2e": statistics.median(r["e2e"] for r in runs)}


def vision_flops_per_tile(folder: Path) -> int:
    """FLOPs of the vision encoder and connector for one 512x512 tile, counted from its IR: 2 per multiply-add of
    every MatMul, Convolution and ScaledDotProductAttention (the exporter fuses attention into that op)."""
    import numpy as np
    import openvino as ov

    from helpers import export

    model = ov.Core().read_model(export.ir_files(folder)["vision_embeddings_model"][0])
    side = 512 // 16  # patches per side of a tile
    model.reshape({"pixel_values": [1, 3, 512, 512], "patch_attention_mask": [1, side, side],
                   "patch_position_ids": [1, side * side]})
    flops = 0
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in ("MatMul", "Convolution", "ScaledDotProductAttention"):
            continue
        out = int(np.prod(op.get_output_partial_shape(0).to_shape()))
        if kind == "ScaledDotProductAttention":  # scores q.k (over the keys), then their weighted sum of values
            query = op.input_value(0).get_partial_shape().to_shape()
            keys = op.input_value(1).get_partial_shape().to_shape()[-2]
            flops += 2 * int(np.prod(query)) * keys + 2 * out * keys
        elif kind == "MatMul":
            a = op.input_value(0).get_partial_shape().to_shape()
            flops += 2 * out * a[-2 if op.get_transpose_a() else -1]
        else:
            flops += 2 * out * int(np.prod(op.input_value(1).get_partial_shape().to_shape()[1:]))
    return flops


def prefill_flops(text_config, tokens: int) -> int:
    """FLOPs of the language model's prefill over ``tokens`` tokens: linear layers (2 per weight per token),
    causal attention, and the output head for the one token whose logits are needed."""
    c = text_config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    q, kv = c.num_attention_heads * head_dim, c.num_key_value_heads * head_dim
    per_layer = c.hidden_size * (q + 2 * kv) + q * c.hidden_size + 3 * c.hidden_size * c.intermediate_size
    linear = 2 * per_layer * c.num_hidden_layers * tokens
    attention = 2 * 2 * c.num_hidden_layers * q * tokens * (tokens + 1) // 2
    return linear + attention + 2 * c.hidden_size * c.vocab_size


def compute_fractions(split: dict, vision_flops: int, tiles: int, lm_flops: int, peak_vision: float,
                      peak_lm: float) -> dict:
    """Achieved GFLOP/s of the vision encoder and the prefill in one :func:`split`, and their fractions of the
    measured peaks (GFLOP/s)."""
    first = split["first_token"]
    out: dict = {"vision_GFLOP": vision_flops * tiles / 1e9, "prefill_GFLOP": lm_flops / 1e9}
    if tiles and first["vision"] > 0:
        out["vision_GFLOP_s"] = out["vision_GFLOP"] / first["vision"]
        out["vision_fraction_of_peak"] = out["vision_GFLOP_s"] / peak_vision
    if first["language_model"] > 0:
        out["prefill_GFLOP_s"] = out["prefill_GFLOP"] / first["language_model"]
        out["prefill_fraction_of_peak"] = out["prefill_GFLOP_s"] / peak_lm
    return out
