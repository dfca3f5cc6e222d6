"""Where the time of one ``generate`` call goes: vision encoder, text embeddings, language model, and the rest.

A :class:`StageClock` notes the start and end of every call into a submodel while ``generate`` runs:

- OpenVINO (Optimum Intel): the three compiled submodels, by wrapping the Python methods that run their infer
  requests: ``vision_embeddings.forward`` (the vision encoder with its connector), ``language_model.embed_tokens``
  (the text-embeddings model) and ``language_model.forward`` (the language model);
- PyTorch: forward hooks on the same parts of ``SmolVLMForConditionalGeneration``: the vision model and the
  connector; the input embedding table; the text model and the output head.

:func:`split` then assigns each call to the token it served, by the time ``generate`` handed out each token
(bench's :class:`~helpers.bench.TokenTimes`): everything before the first token is the **first token** (vision
encoder, embeddings, the language model's prefill over the whole prompt, and the rest), everything between two
tokens is one **decoding step** (language model, embeddings, and the rest). "The rest" is what ``generate``
does in Python around the submodels (preparing inputs, logits processing, the streamer): measured as the
remainder, so the parts add up to the whole by construction, and a negative remainder would mean the clock
counted something twice (the tests check it never is).

These runs are separate from the headline timings: the clock's own cost (a few microseconds per call) stays
out of TTFT and TPOT. Written by hand because neither library reports a per-submodel split of ``generate``.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

STAGES = ("vision", "text_embeddings", "language_model")


class StageClock:
    """Context manager: while active, ``events`` collects ``(stage, start, end)`` for every submodel call."""

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
        return self

    def __exit__(self, *exc) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()


def split(events: list[tuple[str, float, float]], start: float, token_times: list[float], end: float,
          tiles: int) -> dict:
    """The first token and the mean decoding step split into stages (seconds), from one timed generation.

    ``first_token``: ``vision``, ``text_embeddings``, ``language_model`` (the prefill) and ``rest``, adding up to
    ``ttft``; ``vision_per_tile``; ``per_token``: ``language_model``, ``text_embeddings`` and ``rest``, adding up
    to ``tpot`` (the mean gap between later tokens).
    """
    steps: list[dict[str, float]] = [dict.fromkeys(STAGES, 0.0) for _ in token_times]
    for stage, began, ended in events:
        # the token an event served: the first token time at or after its end (the last token's step otherwise)
        step = next((i for i, t in enumerate(token_times) if ended <= t), len(token_times) - 1)
        steps[step][stage] += ended - began
    ttft = token_times[0] - start
    first = {**steps[0], "ttft": ttft}
    first["rest"] = ttft - sum(steps[0].values())
    later = steps[1:]
    tpot = (token_times[-1] - token_times[0]) / max(len(later), 1)
    per_token = {stage: statistics.fmean(s[stage] for s in later) if later else 0.0
                 for stage in ("language_model", "text_embeddings")}
    per_token["tpot"] = tpot
    per_token["rest"] = tpot - per_token["language_model"] - per_token["text_embeddings"]
    return {"first_token": first, "vision_per_tile": first["vision"] / tiles if tiles else 0.0,
            "per_token": per_token, "e2e": end - start}


def measure(model, inputs, new_tokens: int, tiles: int, iterations: int = 1) -> dict:
    """:func:`split` of ``iterations`` timed generations (after the caller's warm-up), each figure the median."""
    from helpers.bench import generate_timed

    runs = []
    for _ in range(iterations):
        with StageClock(model) as clock:
            start, times, end = generate_timed(model, inputs, new_tokens)
        runs.append(split(clock.events, start, times, end, tiles))
    return _median_of(runs)


def _median_of(runs: list[Any]) -> Any:
    if isinstance(runs[0], dict):
        return {key: _median_of([r[key] for r in runs]) for key in runs[0]}
    return statistics.median(runs)
