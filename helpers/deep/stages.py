"""Where the time of one ``generate`` call goes (notebook 05): vision encoder, text embeddings, language model, and
the rest.

A :class:`StageClock` times every submodel call while ``generate`` runs; :func:`split` assigns each call to the
token it served. "The rest" (``generate``'s own Python) is the remainder, so the parts add up to the whole.
Hand-written because neither Optimum Intel nor transformers reports a per-submodel split of ``generate``.
"""

from __future__ import annotations

import statistics
import time

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


def measure(model, inputs, new_tokens: int, tiles: int | None, iterations: int = 1) -> dict:
    """:func:`split` of ``iterations`` timed generations (after the caller's warm-up): the first token of the
    median-TTFT run and the step of the median-TPOT run (so their parts still add up), and the median e2e."""
    from helpers.bench import EXACT_LENGTH
    from helpers.chat import TokenClock

    runs = []
    for _ in range(max(iterations, 1)):
        with StageClock(model) as clock:
            times, start = TokenClock(), time.perf_counter()
            model.generate(**inputs, max_new_tokens=new_tokens, **EXACT_LENGTH, streamer=times)
            runs.append(split(clock.events, start, times.times, time.perf_counter(), tiles or 0))
    first = sorted(runs, key=lambda r: r["first_token"]["ttft"])[(len(runs) - 1) // 2]
    step = sorted(runs, key=lambda r: r["per_token"]["tpot"])[(len(runs) - 1) // 2]
    return {"first_token": first["first_token"], "vision_per_tile": first["vision_per_tile"],
            "per_token": step["per_token"], "e2e": statistics.median(r["e2e"] for r in runs)}
