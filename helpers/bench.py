"""Timing ``generate`` the way the field does (optimum-benchmark's ``scenarios/inference``, OpenVINO GenAI's
``tools/llm_bench``): warm-up calls, then the median and spread of timed greedy calls of a fixed length; TTFT,
TPOT, decode tokens/s, end-to-end, load time, peak memory. Written by hand because optimum-benchmark 0.6.0 has no
OpenVINO ``image-text-to-text`` backend. The clock is :class:`helpers.chat.TokenClock` (TTFT defined there).
"""

from __future__ import annotations

import gc
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from helpers import chat, data, images, machine

# --- how much to measure -----------------------------------------------------------------------------------------


def plan_mode() -> str:
    """``"quick"`` (``VLM_QUICK=1``: the tests), ``"full"`` (``VLM_FULL=1``: about an hour) or ``"default"``."""
    flag = lambda name: os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}  # noqa: E731
    return "quick" if flag("VLM_QUICK") else "full" if flag("VLM_FULL") else "default"


@dataclass(frozen=True)
class Plan:
    """How much notebooks 04 and 05 measure (:func:`plan` picks the quick, default or full one)."""

    mode: str
    contenders: tuple[str, ...] | None  # notebook 04's contenders (None: every one)
    photo_edge: int | None  # the photo workload's longest edge (None: the processor's own, all its tiles)
    warmup: int  # untimed calls before the timed ones, per workload
    iterations: int  # timed calls per workload
    eval_samples: int  # photo questions of data/eval.jsonl scored for quality
    text_samples: int | None  # text questions of data/text_questions.jsonl (None: all 43)
    eval_new_tokens: int  # longest answer in the quality evaluation
    sweep_iterations: int  # notebook 05: timed calls per point of a sweep

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


# The default plan fits a class: notebook 04 in under 5 minutes on 2 cores with the 256M model. So the photo is
# scaled to a longest edge of 1024 px (5 tiles instead of 13: the full plan measures all of them), and PyTorch FP32
# (the reference for quality) faces the FP32 IR and the three recipes of notebook 02 a class compares.
DEFAULT_CONTENDERS = ("pytorch-fp32", "openvino-fp32", "openvino-int8", "openvino-int4", "openvino-mixed")


def plan(mode: str | None = None) -> Plan:
    """The plan for ``mode`` (default: :func:`plan_mode`)."""
    plans = {"quick": Plan("quick", None, 1024, 1, 2, 2, 3, 8, 1),
             "default": Plan("default", DEFAULT_CONTENDERS, 1024, 1, 3, 2, 16, 24, 1),
             "full": Plan("full", None, None, 1, 5, 12, None, 24, 3)}
    if (mode or plan_mode()) not in plans:
        raise ValueError(f"plan mode {mode!r} is not one of {', '.join(plans)}")
    return plans[mode or plan_mode()]


# --- workloads -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """One benchmark input: a photo (or none), a question, how many tokens to generate, and how big the photo is."""

    name: str
    photo: str | None  # a photo of data/images, by stem; None: a text-only prompt
    question: str
    new_tokens: int
    longest_edge: int | str | None  # resize the photo to this edge; "tile": one tile (if any); None: its own
    description: str


WORKLOADS = {
    "blog": Workload("blog", "astronaut", "What is in this image?", 16, "tile",
                     "the source's setup: one tile where the model cuts tiles (the source's SmolVLM2-256M: 512x512 px, "
                     "64 image tokens), exactly 16 new tokens"),
    "photo": Workload("photo", "cat", "Describe this image in detail.", 64, None,
                      "a real photo tiled as the processor tiles it, 64 new tokens"),
    "text": Workload("text", None, "Write a short story about a cat who watches the stars at night.", 64, None,
                     "a text-only prompt, no image: the language model alone, 64 new tokens"),
}


@dataclass
class PreparedWorkload:
    """A workload turned into model inputs once, so that every contender gets exactly the same tensors."""

    workload: Workload
    inputs: Any
    facts: dict = field(default_factory=dict)


def prepare_workloads(processor, photo_edge: int | None = None) -> dict[str, PreparedWorkload]:
    """Run the processor on each workload, timing it (``preprocess_s``, best of 3: the same for every contender,
    so it is reported apart, not in TTFT); ``photo_edge`` overrides the photo's longest edge."""
    prepared = {}
    for name, w in WORKLOADS.items():
        image = images.load_image(data.photo_path(w.photo)) if w.photo else None
        edge = images.tile_size(processor) if w.longest_edge == "tile" else w.longest_edge
        edge = photo_edge if name == "photo" and photo_edge else edge
        seconds = []
        for _ in range(3):
            start = time.perf_counter()
            inputs = chat.question_inputs(processor, w.question, image, longest_edge=edge)
            seconds.append(time.perf_counter() - start)
        facts = {"photo": w.photo, "longest_edge": edge, "question": w.question, "new_tokens": w.new_tokens,
                 "description": w.description, "prompt_tokens": int(inputs["input_ids"].shape[1]),
                 "image_tokens": chat.image_token_count(processor, inputs),
                 "image_tiles": chat.tile_count(inputs),
                 "preprocess_s": significant(min(seconds))}
        prepared[name] = PreparedWorkload(w, inputs, facts)
    return prepared


# --- timing generate ---------------------------------------------------------------------------------------------


# Timed calls get exactly n new tokens by having no end-of-sequence token to stop on, not by min_new_tokens: that,
# and the begin_suppress_tokens of a generation config (the speaking stand-in has one), add logits processors that
# run torch.isin over the whole vocabulary at every step. On a 2-core Zen 4 they cost the 4-bit model a fifth of its
# time per token (85 against 107 tokens/s): the token rules' time, not the model's. What is left is the argmax.
EXACT_LENGTH = {"do_sample": False, "eos_token_id": None, "begin_suppress_tokens": None}


def time_generation(model, inputs, new_tokens: int) -> dict:
    """One greedy ``generate`` call of exactly ``new_tokens`` tokens, as notebook 04 times one by hand:
    ``ttft_s``, ``tpot_s`` (mean gap between later tokens), ``decode_tok_s`` (1 / TPOT) and ``e2e_s``."""
    if new_tokens < 2:
        raise ValueError(f"new_tokens must be >= 2 to measure time per token, got {new_tokens}")
    clock = chat.TokenClock()
    start = time.perf_counter()
    model.generate(**inputs, max_new_tokens=new_tokens, **EXACT_LENGTH, streamer=clock)
    end = time.perf_counter()
    if len(clock.times) != new_tokens:
        raise RuntimeError(f"asked for {new_tokens} new tokens, the streamer saw {len(clock.times)}")
    return token_figures(start, clock.times, end)


def token_figures(start: float, times: list[float], end: float) -> dict:
    """TTFT, TPOT, decode tokens/s and end-to-end of one generation from its token clock."""
    if len(times) < 2:
        raise ValueError(f"a time per token needs at least 2 new tokens, got {len(times)}")
    tpot = (times[-1] - times[0]) / (len(times) - 1)
    return {"ttft_s": times[0] - start, "tpot_s": tpot, "decode_tok_s": 1.0 / tpot, "e2e_s": end - start}


def significant(value: float, digits: int = 4) -> float:
    """``value`` rounded to ``digits`` significant figures (a tiny figure never becomes 0)."""
    return float(f"{value:.{digits}g}")


def summarize(values: list[float]) -> dict:
    """``{median, min, max, n}`` of positive, finite measurements."""
    values = [float(v) for v in values]
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"expected positive finite measurements, got {values}")
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def run_workload(model, prepared: PreparedWorkload, warmup: int, iterations: int,
                 timer: Callable = time_generation) -> dict:
    """``warmup`` untimed calls, then ``iterations`` timed ones (``timer(model, inputs, new_tokens)``, default
    :func:`time_generation`); each figure summarised by :func:`summarize`."""
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    n = prepared.workload.new_tokens
    for _ in range(warmup):
        timer(model, prepared.inputs, n)
    runs = [timer(model, prepared.inputs, n) for _ in range(iterations)]
    return {key: summarize([r[key] for r in runs]) for key in runs[0]}


def runtime_precision(model) -> str:
    """The precision the model computes in: OpenVINO's ``INFERENCE_PRECISION_HINT`` as compiled for the language
    model (``bf16`` for FP32 weights on a CPU with bf16 instructions), or PyTorch's dtype."""
    if hasattr(model, "language_model") and hasattr(model.language_model, "request"):
        hint = model.language_model.request.get_compiled_model().get_property("INFERENCE_PRECISION_HINT")
        return {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}.get(hint.get_type_name(), str(hint))
    return str(model.dtype).replace("torch.", "")


def threading(model) -> str:
    """How the runtime's threads wait for work (recorded beside each row: it decides who suffers from a busy core)."""
    openmp = f"OpenMP, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"
    if hasattr(model, "language_model") and hasattr(model.language_model, "request"):
        return f"OpenVINO's TBB thread pool; the PyTorch operations inside generate use {openmp}"
    return openmp


def free_memory() -> None:
    """Collect garbage (after ``del model``) and hand freed heap pages back to the OS (glibc), so the next
    contender starts from a clean slate."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextmanager
def measuring(record: dict, load: Callable[[], Any], name: str = "this contender") -> Iterator[Any]:
    """``with measuring(record, load, name) as model:`` times ``load()`` into ``record["load_s"]``, then records the
    peak memory and the share of the CPU other programs took while the block ran, and frees the model at the end
    (``del model`` after the block, so the caller's name lets go too: else the next contender's peak holds it). A
    failure, loading or in the block, is recorded as ``record["error"]`` (the model is then ``None``): one broken
    contender must not cost the whole run."""
    model = None
    free_memory()  # what an earlier contender left in the heap, before this one's peak is counted
    try:
        with machine.peak_memory() as memory, machine.CpuCompetition() as others:
            try:
                start = time.perf_counter()
                model = load()
                record["load_s"] = significant(time.perf_counter() - start)
            except Exception as err:
                record["error"] = f"{type(err).__name__}: {err}"
            try:
                yield model
            except Exception as err:
                record["error"] = f"{type(err).__name__}: {err}"
        record.update(peak_rss_MB=memory["peak_rss_MB"], other_processes_cpu_share=round(others.share, 3))
        if "error" in record:
            print(f"{name} failed: {record['error']}")
        elif others.share > 0.15:
            print(f"Note: other programs took {others.share:.0%} of the CPU while {name} was measured; "
                  "its figures are slower than on a quiet machine.")
    finally:
        model = None
        free_memory()


def measure(model, prepared: dict[str, PreparedWorkload], plan: Plan) -> dict:
    """What notebook 04 records of a loaded contender: its precision and threads, and each workload's timings."""
    return {"precision": runtime_precision(model), "threading": threading(model),
            "workloads": {name: run_workload(model, p, plan.warmup, plan.iterations) for name, p in prepared.items()}}
