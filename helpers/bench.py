"""Speed benchmark of *contenders* (runtime + weights + settings: PyTorch FP32, OpenVINO INT8...), measured as
optimum-benchmark (``scenarios/inference``) and OpenVINO GenAI's ``tools/llm_bench`` do: warm-up, then the median
and spread of timed greedy ``generate`` calls of a fixed length; TTFT, TPOT, decode tokens/s, end-to-end, load
time, peak memory. By hand because optimum-benchmark 0.6.0 has no OpenVINO ``image-text-to-text`` (notebook 04).
"""

from __future__ import annotations

import gc
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import chat, data, hardware, images

QUICK_ENV = "VLM_QUICK"  # the test suite sets it: every figure a couple of times, to check that all works
FULL_ENV = "VLM_FULL"  # `make run FULL=1`: every contender, more iterations, the long sweeps (about an hour)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def quick_mode() -> bool:
    """True when ``VLM_QUICK`` is set (the test suite sets it): few iterations and small sweeps."""
    return _env_flag(QUICK_ENV)


def plan_mode() -> str:
    """``"quick"`` (``VLM_QUICK=1``, tests), ``"full"`` (``VLM_FULL=1``) or ``"default"`` (a class: minutes)."""
    return "quick" if quick_mode() else "full" if _env_flag(FULL_ENV) else "default"


@dataclass(frozen=True)
class Plan:
    """How much notebook 04 measures; :func:`plan` picks the quick, default or full setting."""

    mode: str  # "quick", "default" or "full"
    contenders: tuple[str, ...] | None  # keys of the contenders measured (None: every one)
    llamacpp_types: tuple[str, ...]  # GGUF types of the language model measured in llama.cpp
    side_contenders: tuple[str, ...] | None  # contenders of the side studies (loop, compile cache, sweeps); None: all
    warmup: dict[str, int]  # untimed generate calls per workload, before the timed ones
    iterations: dict[str, int]  # timed generate calls per workload
    tile_edges: tuple[int, ...]  # processor longest_edge values for the TTFT-vs-tiles sweep
    context_lengths: tuple[int, ...]  # prompt lengths (tokens) for the TPOT-vs-context sweep
    thread_counts: tuple[int, ...]  # thread counts for the thread sweep
    sweep_iterations: int  # timed calls per point of a sweep (after one warm-up call per sweep)
    eval_samples: int  # photo questions of data/eval.jsonl used for quality
    text_samples: int | None  # text questions of data/text_questions.jsonl used for quality (None: all)
    eval_new_tokens: int  # longest answer (tokens) in the quality evaluation
    stage_iterations: int  # runs per workload split into stages (helpers.stages), after the timed ones
    busy_seconds: float  # timed decoding per measurement of the busy-core test (helpers.busy)

    def measures(self, key: str) -> bool:
        """True when the contender ``key`` is in this plan."""
        return self.contenders is None or key in self.contenders

    def side_study(self, key: str) -> bool:
        """True when the side studies (loop, compile cache, sweeps) cover the contender ``key``."""
        return self.measures(key) and (self.side_contenders is None or key in self.side_contenders)

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def thread_counts(max_threads: int | None = None) -> tuple[int, ...]:
    """1, 2, 4, ... up to ``max_threads`` (default: the usable cores), and ``max_threads`` itself."""
    top = max_threads or hardware.usable_cores()
    counts, n = {top}, 1
    while n < top:
        counts.add(n)
        n *= 2
    return tuple(sorted(counts))


# The default plan: what a class compares, side studies on two (under 10 minutes, 256M model, 2 cores). The photo
# gets no warm-up call of its own there: after the blog's warm-up, a first photo call took within a few percent of
# the next two (TTFT OpenVINO INT4 7.97 s vs 8.46/8.59, PyTorch FP32 24.2 vs 27.0/22.8, llama.cpp Q4_0 22.2 vs
# 21.7/21.2), and skipping it saves a minute and a half on 2 cores.
DEFAULT_CONTENDERS = ("pytorch-fp32", "openvino-fp32", "openvino-int8", "openvino-int4", "openvino-mixed")
DEFAULT_SIDE_CONTENDERS = ("openvino-fp32", "openvino-int4")


def plan(mode: str | None = None) -> Plan:
    """The plan for ``mode`` (default: :func:`plan_mode`): quick (tests, every contender a couple of times),
    default (five contenders and llama.cpp Q4_0) or full (everything, about an hour)."""
    mode = mode or plan_mode()
    every = dict(contenders=None, llamacpp_types=("f16", "q8_0", "q4_0"), side_contenders=None,
                 warmup={"blog": 1, "photo": 1, "text": 1})
    settings = {
        "quick": dict(every, iterations={"blog": 2, "photo": 2, "text": 2}, tile_edges=(512, 1024),
                      context_lengths=(64, 256), sweep_iterations=1, eval_samples=3, text_samples=3,
                      eval_new_tokens=8, stage_iterations=1, busy_seconds=1.0),
        "default": dict(contenders=DEFAULT_CONTENDERS, llamacpp_types=("q4_0",),
                        side_contenders=DEFAULT_SIDE_CONTENDERS, warmup={"blog": 1, "photo": 0, "text": 1},
                        iterations={"blog": 3, "photo": 1, "text": 2},
                        tile_edges=(512, 1024), context_lengths=(128, 1024), sweep_iterations=1, eval_samples=2,
                        text_samples=16, eval_new_tokens=24, stage_iterations=1, busy_seconds=2.0),
        "full": dict(every, iterations={"blog": 10, "photo": 3, "text": 5}, tile_edges=(512, 1024, 1536, 2048),
                     context_lengths=(128, 512, 1024, 2048, 4096), sweep_iterations=3, eval_samples=12,
                     text_samples=None, eval_new_tokens=24, stage_iterations=2, busy_seconds=8.0),
    }
    if mode not in settings:
        raise ValueError(f"plan mode {mode!r} is not one of 'quick', 'default', 'full'")
    return Plan(mode, thread_counts=thread_counts(), **settings[mode])


# --- workloads --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """One benchmark input: a photo, a question, how many tokens to generate, and how the photo is tiled."""

    name: str
    photo: str | None  # a photo of data/images, by stem; None: a text-only prompt
    question: str
    new_tokens: int
    longest_edge: int | None  # the processor resizes the photo to this longest edge; None: its default (2048)
    description: str


WORKLOADS = {
    "blog": Workload("blog", "astronaut", "What is in this image?", 16, images.TILE_SIZE,
                     "the source's setup: one 512x512 tile, a short prompt, exactly 16 new tokens"),
    "photo": Workload("photo", "cat", "Describe this image in detail.", 64, None,
                      "a real photo with the processor's default tiling, 64 new tokens"),
    "text": Workload("text", None, "Write a short story about a cat who watches the stars at night.", 64, None,
                     "a text-only prompt, no image: the language model alone, 64 new tokens"),
}


def input_facts(model_config, inputs) -> dict:
    """Prompt tokens (text + image tokens) and image tiles of processor output ``inputs``."""
    facts = {"prompt_tokens": int(inputs["input_ids"].shape[1]), "image_tiles": 0, "image_tokens": 0}
    if inputs.get("pixel_values") is not None:
        facts["image_tiles"] = int(inputs["pixel_values"].shape[1])
        facts["image_tokens"] = int((inputs["input_ids"] == model_config.image_token_id).sum())
    return facts


@dataclass
class PreparedWorkload:
    """A workload turned into model inputs once, so every contender gets exactly the same tensors."""

    workload: Workload
    inputs: Any
    facts: dict = field(default_factory=dict)


def prepare_workloads(processor, model_config, workloads: dict[str, Workload] = WORKLOADS,
                      repeats: int = 3) -> dict[str, PreparedWorkload]:
    """Run the processor on each workload (timing it: ``preprocess_s``, best of ``repeats``)."""
    prepared = {}
    for name, w in workloads.items():
        image = images.load_image(data.photo_path(w.photo)) if w.photo else None
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            inputs = chat.question_inputs(processor, w.question, image, longest_edge=w.longest_edge)
            times.append(time.perf_counter() - start)
        facts = {"photo": w.photo, "photo_size": list(image.size) if image else None, "question": w.question,
                 "new_tokens": w.new_tokens, "description": w.description,
                 **input_facts(model_config, inputs), "preprocess_s": significant(min(times))}
        prepared[name] = PreparedWorkload(w, inputs, facts)
    return prepared


def context_inputs(processor, length: int):
    """A text-only chat prompt of exactly ``length`` tokens (filler text), for the TPOT-vs-context sweep."""
    import torch

    tokenizer = processor.tokenizer
    marker = "@@TEXT@@"
    head_text, tail_text = chat.prompt_text(processor, "Summarise this text: " + marker).split(marker)
    head = tokenizer(head_text, add_special_tokens=False)["input_ids"]
    tail = tokenizer(tail_text, add_special_tokens=False)["input_ids"]
    room = length - len(head) - len(tail)
    if room < 1:
        raise ValueError(f"length must be more than {len(head) + len(tail)} tokens, got {length}")
    sentence = "The quick brown fox jumps over the lazy dog while the cat watches from the warm windowsill. "
    filler: list[int] = []
    while len(filler) < room:
        filler += tokenizer(sentence, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([head + filler[:room] + tail])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


# --- timing one generate call -----------------------------------------------------------------------------


class TokenTimes:
    """A ``generate`` streamer that stamps ``time.perf_counter()`` for each new token as it is chosen
    (``generate`` hands it the prompt first: skipped)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if self._prompt_seen:
            self.times.extend([time.perf_counter()] * max(1, getattr(value, "numel", lambda: 1)()))
        self._prompt_seen = True

    def end(self) -> None:
        pass


def generate_timed(model, inputs, new_tokens: int) -> tuple[float, list[float], float]:
    """One greedy ``generate`` call of exactly ``new_tokens`` tokens: ``(start, [time of each token], end)``."""
    if new_tokens < 2:
        raise ValueError(f"new_tokens must be >= 2 to measure time per token, got {new_tokens}")
    clock = TokenTimes()
    start = time.perf_counter()
    model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                   streamer=clock)
    end = time.perf_counter()
    if len(clock.times) != new_tokens:
        raise RuntimeError(f"asked for {new_tokens} new tokens, the streamer saw {len(clock.times)}")
    return start, clock.times, end


def token_figures(start: float, times: Sequence[float], end: float) -> dict:
    """ttft_s, tpot_s (mean gap between later tokens), decode_tok_s (1/TPOT) and e2e_s of one generation."""
    tpot = (times[-1] - times[0]) / (len(times) - 1)
    return {"ttft_s": times[0] - start, "tpot_s": tpot, "decode_tok_s": 1.0 / tpot, "e2e_s": end - start}


def time_generation(model, inputs, new_tokens: int) -> dict:
    """:func:`token_figures` of one :func:`generate_timed` call."""
    return token_figures(*generate_timed(model, inputs, new_tokens))


def significant(value: float, digits: int = 4) -> float:
    """``value`` rounded to ``digits`` significant figures (a tiny figure never becomes 0)."""
    return float(f"{value:.{digits}g}")


def summarize(values: Sequence[float]) -> dict:
    """``{median, min, max, n}`` of positive, finite measurements."""
    values = [float(v) for v in values]
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"expected positive finite measurements, got {values}")
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def run_workload(model, prepared: PreparedWorkload, warmup: int, iterations: int) -> dict:
    """``warmup`` untimed calls, then ``iterations`` timed ones; each figure summarised by :func:`summarize`."""
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    n = prepared.workload.new_tokens
    for _ in range(warmup):
        time_generation(model, prepared.inputs, n)
    runs = [time_generation(model, prepared.inputs, n) for _ in range(iterations)]
    return {key: summarize([r[key] for r in runs]) for key in ("ttft_s", "tpot_s", "decode_tok_s", "e2e_s")}


# --- contenders -------------------------------------------------------------------------------------------


@dataclass
class Contender:
    """One row of the benchmark: how to load it (``load(threads) -> model``) and what it is."""

    key: str  # e.g. "openvino-int8"
    label: str  # e.g. "OpenVINO INT8 weight-only"
    backend: str  # "pytorch" or "openvino"
    load: Callable[[int], Any]
    ir_dir: Path | None = None  # OpenVINO: the IR folder
    precision_hint: str | None = None  # OpenVINO: INFERENCE_PRECISION_HINT passed, if any

    def compiles_with(self, threads: int) -> bool:
        """False when OpenVINO would crash compiling this contender with ``threads`` (see hardware)."""
        return (self.backend != "openvino" or self.ir_dir is None
                or hardware.openvino_compiles(self.ir_dir, hardware.openvino_config(threads, self.precision_hint)))

    def open(self, threads: int):
        """The model, loaded with ``threads`` threads; :class:`RuntimeError` where OpenVINO would crash instead."""
        if not self.compiles_with(threads):
            raise RuntimeError(f"OpenVINO crashes compiling this contender with {threads} thread(s) "
                               "(see helpers.hardware)")
        return self.load(threads)


_PRECISION_NAMES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}  # OpenVINO's names, as torch spells them


def runtime_precision(model) -> str:
    """The precision the model computes in (``float32``, ``bfloat16``...): OpenVINO's ``INFERENCE_PRECISION_HINT``
    as compiled for the language model, or the torch dtype."""
    if hasattr(model, "language_model") and hasattr(model.language_model, "request"):
        compiled = model.language_model.request.get_compiled_model()
        name = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        return _PRECISION_NAMES.get(name, name)
    return str(model.dtype).replace("torch.", "")


def lm_bytes_per_token(model) -> int:
    """Bytes of language-model weights read per generated token, as the runtime holds them (OpenVINO's CPU plugin
    converts FP32 constants to bf16/f16 when it computes in those). Leaves out the input embedding table (one row
    per token) and the KV cache (about 23 kB per token of context for SmolVLM2-256M at 16 bits)."""
    if hasattr(model, "language_model") and hasattr(model.language_model, "model"):
        half = runtime_precision(model) in {"bfloat16", "float16"}
        total = 0
        for op in model.language_model.model.get_ops():
            if op.get_type_name() == "Constant":
                f32 = op.get_output_element_type(0).get_type_name() == "f32"
                total += op.get_byte_size() // (2 if half and f32 else 1)
        return total
    text_model = model.model.text_model
    embed = text_model.get_input_embeddings().weight
    params = [p for p in text_model.parameters() if p is not embed] + list(model.lm_head.parameters())
    return sum(p.numel() * p.element_size() for p in params)


def free_memory() -> None:
    """Collect garbage (call after ``del model``) so the next contender starts from a clean slate."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap pages back to the OS (glibc)
    except (OSError, AttributeError):
        pass


def new_record(contender: Contender, threads: int) -> dict:
    """The start of ``contender``'s record: what it is, its threads and (OpenVINO) its IR size."""
    record: dict = {"label": contender.label, "backend": contender.backend, "threads": threads, "ir_size_MB": None}
    if contender.ir_dir is not None:
        from helpers.export import ir_size_bytes

        record["ir_size_MB"] = significant(ir_size_bytes(contender.ir_dir) / 1e6)
    return record


def calls_for(calls: int | dict[str, int], workload: str) -> int:
    """Calls for ``workload``: ``calls`` itself, or its entry per workload (a plan's ``warmup``, ``iterations``)."""
    return calls if isinstance(calls, int) else calls[workload]


def measure_workloads(model, record: dict, prepared: dict[str, PreparedWorkload], warmup: int | dict[str, int],
                      iterations: dict[str, int], stage_iterations: int = 1) -> None:
    """Into ``record``: the model's precision, bytes per token, each workload's timings (:func:`run_workload`)
    and then, in separate runs so the stage clock stays out of the timings, its stage split (helpers.stages)."""
    from helpers import stages

    record["precision"] = runtime_precision(model)
    record["lm_bytes_per_token_MB"] = significant(lm_bytes_per_token(model) / 1e6)
    record["workloads"] = {name: run_workload(model, p, calls_for(warmup, name), iterations[name])
                           for name, p in prepared.items()}
    if stage_iterations:
        record["stages"] = {name: stages.measure(model, p.inputs, p.workload.new_tokens, p.facts["image_tiles"],
                                                 stage_iterations)
                            for name, p in prepared.items()}


@dataclass
class Session:
    """What :func:`loaded` yields: the loaded model (``None`` when loading failed: the record says why)."""

    model: Any = None


COMPETITION_WARNING = 0.15  # share of the machine's CPU used by other programs above which a record says so


@contextmanager
def loaded(record: dict, load: Callable[[], Any], close: Callable[[Any], None] | None = None) -> Iterator[Session]:
    """``with loaded(record, load) as session:`` times ``load()`` (``load_compile_s``), records peak memory and
    other programs' CPU share while the body runs, then frees the model (``close(model)`` first, if given).
    A failure, loading or in the body, is recorded as ``error`` instead of stopping the benchmark."""
    from helpers.memory import measure

    def failed(err: Exception) -> None:  # one broken contender must not cost the whole run
        record["error"] = f"{type(err).__name__}: {err}"
        print(f"{record['label']}: failed, {record['error']}")

    session = Session()
    try:
        with measure() as memory, hardware.CpuCompetition() as others:
            start = time.perf_counter()
            try:
                session.model = load()
                record["load_compile_s"] = significant(time.perf_counter() - start)
            except Exception as err:
                failed(err)
            try:
                yield session
            except Exception as err:
                failed(err)
        if "error" not in record:
            record["peak_rss_MB"], record["rss_before_MB"] = memory["peak_rss_MB"], memory["start_rss_MB"]
            record["other_processes_cpu_share"] = round(others.other_share, 3)
            if others.other_share > COMPETITION_WARNING:
                print(f"Note: other programs used {others.other_share:.0%} of this machine's CPU while "
                      f"{record['label']} was measured; its figures are slower than on a quiet machine.")
    finally:
        if session.model is not None and close is not None:
            close(session.model)
        session.model = None
        free_memory()


def measure_contender(contender: Contender, prepared: dict[str, PreparedWorkload], threads: int, *,
                      warmup: int | dict[str, int], iterations: dict[str, int], stage_iterations: int = 1) -> dict:
    """The whole measurement of one contender with ``threads`` threads: :func:`new_record`, then
    :func:`measure_workloads` inside :func:`loaded` (notebook 04 writes these steps out)."""
    record = new_record(contender, threads)
    with loaded(record, lambda: contender.open(threads)) as session:
        if session.model is not None:
            measure_workloads(session.model, record, prepared, warmup, iterations, stage_iterations)
    return record


def compile_cache_times(folder: Path, threads: int, cache_dir: Path) -> dict:
    """Load + compile the IR in ``folder`` twice with OpenVINO's compile cache in (empty) ``cache_dir``:
    ``first_s`` writes the cache, ``cached_s`` reads it; ``cache_MB`` is its size."""
    from optimum.intel import OVModelForVisualCausalLM

    config = hardware.openvino_config(threads, cache_dir=cache_dir)
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        model = OVModelForVisualCausalLM.from_pretrained(folder, device="CPU", ov_config=config)
        seconds.append(time.perf_counter() - start)
        del model
        free_memory()
    size = sum(f.stat().st_size for f in Path(cache_dir).rglob("*") if f.is_file())
    return {"first_s": significant(seconds[0]), "cached_s": significant(seconds[1]),
            "cache_MB": significant(size / 1e6)}


def summary_line(record: dict) -> str:
    """One line per measured contender: load time, blog TTFT and decode speed, or the error."""
    if "error" in record:
        return f"{record['label']:28s} {record['error']}"
    blog = record["workloads"].get("blog")
    speed = (f", blog TTFT {blog['ttft_s']['median']:.3f} s, decode {blog['decode_tok_s']['median']:.1f} tok/s"
             if blog else "")
    return f"{record['label']:28s} load {record['load_compile_s']:.1f} s{speed}, computes in {record.get('precision')}"


def add_bandwidth_bound(records: dict[str, dict], bandwidth_gb_s: float) -> None:
    """Add ``bandwidth_bound_tok_s`` (bandwidth / bytes read per token) and ``fraction_of_bound`` to each
    workload of each record, in place."""
    for record in records.values():
        mb = record.get("lm_bytes_per_token_MB")
        if not mb:
            continue
        bound = bandwidth_gb_s * 1e9 / (mb * 1e6)
        for figures in record.get("workloads", {}).values():
            figures["bandwidth_bound_tok_s"] = significant(bound)
            figures["fraction_of_bound"] = significant(figures["decode_tok_s"]["median"] / bound)


# --- how cost grows ---------------------------------------------------------------------------------------


def ttft_vs_tiles(model, processor, photo: str, question: str, edges: Sequence[int], iterations: int) -> list[dict]:
    """Median TTFT of the same photo scaled to each longest edge in ``edges`` (more pixels, more tiles)."""
    image = images.load_image(data.photo_path(photo))
    rows = []
    for i, edge in enumerate(edges):
        inputs = chat.question_inputs(processor, question, image, longest_edge=edge)
        if i == 0:
            time_generation(model, inputs, 2)  # warm-up
        ttft = summarize([time_generation(model, inputs, 2)["ttft_s"] for _ in range(iterations)])
        rows.append({"longest_edge": edge, **input_facts(model.config, inputs), "ttft_s": ttft["median"]})
    return rows


def tpot_vs_context(model, processor, lengths: Sequence[int], iterations: int, new_tokens: int = 16) -> list[dict]:
    """Median TPOT and TTFT of text-only prompts of each length in ``lengths`` tokens."""
    rows = []
    for i, length in enumerate(lengths):
        inputs = context_inputs(processor, length)
        if i == 0:
            time_generation(model, inputs, new_tokens)  # warm-up
        runs = [time_generation(model, inputs, new_tokens) for _ in range(iterations)]
        rows.append({"context_tokens": length, "tpot_s": statistics.median(r["tpot_s"] for r in runs),
                     "ttft_s": statistics.median(r["ttft_s"] for r in runs)})
    return rows


def threads_sweep(contender: Contender, prepared: PreparedWorkload, counts: Sequence[int], iterations: int,
                  known: dict[int, dict] | None = None) -> list[dict]:
    """TTFT, TPOT and decode speed of one workload per thread count, a fresh load each (OpenVINO fixes its
    threads when it compiles). ``known``: ``{threads: workload figures}`` already measured, reused."""
    import torch

    torch_threads = torch.get_num_threads()  # PyTorch loaders set it; give it back as it was
    name = prepared.workload.name
    rows = []
    try:
        for threads in counts:
            figures = (known or {}).get(threads)
            if figures is None:
                record = measure_contender(contender, {name: prepared}, threads, warmup=1,
                                           iterations={name: iterations}, stage_iterations=0)
                if "error" in record:
                    rows.append({"threads": threads, "skipped": record["error"]})
                    continue
                figures = record["workloads"][name]
            rows.append({"threads": threads,
                         **{k: figures[k]["median"] for k in ("ttft_s", "tpot_s", "decode_tok_s")}})
    finally:
        torch.set_num_threads(torch_threads)
    return rows
