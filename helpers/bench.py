"""Speed benchmark of PyTorch and OpenVINO variants, measured the way the field measures (optimum-benchmark's
``scenarios/inference`` and OpenVINO GenAI's ``tools/llm_bench``).

Why by hand and not optimum-benchmark: optimum-benchmark 0.6.0 (the current release) has no OpenVINO backend
for ``image-text-to-text`` (it stops with "OVBackend does not support task image-text-to-text"), and it feeds
random tensors, while we want real photos through the real processor. What it measures we measure the same way:

- warm-up calls first (not counted), then several timed calls; the median and the spread (min, max) of each;
- greedy, batch 1, a fixed output length (``min_new_tokens = max_new_tokens``);
- **TTFT**: from the call to ``generate`` to the first new token (vision encoding and prefill included, the
  processor's resizing and tiling not: that is ``preprocess_s``, the same for every variant);
- **TPOT**: the mean gap between later tokens, ``(t_last - t_first) / (n - 1)``; decode tokens/s = 1 / TPOT;
- **end-to-end**: the whole ``generate`` call; load + compile time; peak memory (RSS, sampled);
- threads set explicitly (:mod:`helpers.hardware`).

Token times come from a streamer (:class:`TokenTimes`), which ``generate`` calls once with the prompt and then
once per new token, in PyTorch and in Optimum Intel alike.
"""

from __future__ import annotations

import gc
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import data, hardware
from helpers.paths import runs_dir

QUICK_ENV = "VLM_QUICK"
RESULTS_FILE = "results.json"
TILE_SIZE = 512  # SmolVLM's tile edge in pixels

# The source blog's table (Hugging Face blog "Get your VLM running in 3 simple steps on Intel CPUs", Oct 2025):
# Core Ultra 7 265K, 20 cores, OpenVINO 2025.2, 16 new tokens.
SOURCE_TABLE = {
    "machine": "Intel Core Ultra 7 265K (20 cores), DDR5-6400; OpenVINO 2025.2, optimum-intel 1.25.2",
    "rows": {
        "pytorch-fp32": {"ttft_s": 5.15, "tpot_s": 1.385, "decode_tok_s": 0.72, "e2e_s": 25.9},
        "openvino-fp32": {"ttft_s": 0.420, "tpot_s": 0.021, "decode_tok_s": 47.2, "e2e_s": 0.738, "ir_size_MB": 1028},
        "openvino-int8": {"ttft_s": 0.247, "tpot_s": 0.016, "decode_tok_s": 63.9, "e2e_s": 0.482, "ir_size_MB": 261},
    },
}

# What each field of results.json means (for the README and for readers of the file).
RESULT_FIELDS = {
    "created": "when the run finished (local time)",
    "quick_mode": "true when VLM_QUICK=1 cut the iterations (tests); such figures are not for quoting",
    "plan": "how much was measured: warm-up calls, timed iterations per workload, sweep settings",
    "machine.cpu_model": "CPU name from /proc/cpuinfo",
    "machine.logical_cores / physical_cores / usable_cores": "cores the OS reports / physical cores / cores "
    "this process may use (affinity)",
    "machine.threads_used": "threads given to PyTorch (torch.set_num_threads) and OpenVINO "
    "(INFERENCE_NUM_THREADS) in the main benchmark",
    "machine.cpu_flags / bf16_instructions": "instruction sets that matter for inference (AVX-512, VNNI, BF16, "
    "AMX) / whether the CPU has bf16 instructions (PyTorch BF16 is measured only then)",
    "machine.memory_GB / os": "installed memory and operating system",
    "machine.cache_MB": "CPU cache sizes one core sees (L1d, L2, L3); weights smaller than the last-level cache "
    "can partly stay there between tokens",
    "machine.read_bandwidth_GB_s": "measured main-memory READ bandwidth in GB/s per thread count (NumPy sum "
    "over an array 4x the last-level cache, at least 1 GB; best of several runs)",
    "versions": "Python and package versions",
    "model": "the model: requested name, slug, stand_in (true: random weights, timings real, text meaningless)",
    "workloads.<w>": "each workload: photo (null: text only), question, new_tokens, prompt_tokens (text + image "
    "tokens), image_tiles (512x512 tiles the processor made), preprocess_s (processor time, same for all variants)",
    "variants.<v>.label / backend / precision / threads": "what ran: PyTorch, OpenVINO or llama.cpp, weights, the "
    "precision the runtime computes in (an FP32 IR runs in bf16 on CPUs with bf16 instructions unless told f32; "
    "for llama.cpp the GGUF type of the language model: f16, q8_0, q4_0), threads",
    "variants.<v>.gguf_size_MB / mmproj_size_MB / llama_cpp_python": "llama.cpp only: size on disk of the GGUF "
    "language model and of the vision projector (F16), and the llama-cpp-python version; its "
    "workloads.<w>.facts hold llama.cpp's own image_tiles, image_tokens and prompt_tokens",
    "variants.<v>.load_compile_s": "seconds from from_pretrained to a model ready to generate (OpenVINO: "
    "reading and compiling the IR; PyTorch: loading the checkpoint)",
    "variants.<v>.peak_rss_MB / rss_before_MB": "peak resident memory of the process while loading and "
    "benchmarking this variant (psutil, sampled every 0.1 s) / before loading it; variants run one after "
    "another in one process and are freed in between, so the difference is the variant's own cost",
    "variants.<v>.ir_size_MB": "OpenVINO IR size on disk (.xml + .bin of the three submodels); null for PyTorch",
    "variants.<v>.lm_bytes_per_token_MB": "bytes of language-model weights read per generated token, at the "
    "precision the runtime holds them in (the input embedding table is excluded: one row is read per token)",
    "variants.<v>.workloads.<w>.ttft_s / tpot_s / decode_tok_s / e2e_s": "time to first token, time per output "
    "token, decode tokens per second (1/TPOT), whole generate() call; each {median, min, max, n} over the "
    "timed iterations",
    "variants.<v>.workloads.<w>.bandwidth_bound_tok_s / fraction_of_bound": "decode tokens/s that memory "
    "bandwidth allows (read bandwidth / lm_bytes_per_token) and the measured decode speed as a fraction of it",
    "variants.<v>.stages.<w>": "PyTorch and OpenVINO: where the time of one generate call went (helpers.stages; "
    "medians of separate runs with the clock on, in seconds): first_token (vision: the vision encoder with its "
    "connector, text_embeddings, language_model: the prefill, rest: generate's own Python; together ttft), "
    "vision_per_tile, per_token (language_model, text_embeddings, rest; together tpot, the mean decoding step), e2e",
    "variants.<v>.other_processes_cpu_share": "share of the machine's CPU (all cores) that other programs used "
    "while this variant was loaded and timed; above 0.15 the notebook says its figures are slower than on a quiet "
    "machine",
    "variants.<v>.error": "present when a variant could not be measured, with the reason",
    "comparison": "speed-ups (TTFT: slower/faster; decode: faster/slower) of OpenVINO FP32 over PyTorch FP32 and "
    "BF16, and of INT8, INT4 and mixed + INT4 over the FP32 IR; rows: comparison, figure, source (blog workload; "
    "null where "
    "the source had no such pair), ours (blog), ours (photo)",
    "peer_comparison": "OpenVINO against llama.cpp per workload: pairs at about the same bits per weight (FP32 IR, "
    "which computes in bf16 on CPUs with bf16 instructions, and F16; INT8 and Q8_0; INT4 and Q4_0), then the "
    "fastest of each; both runtimes' TTFT and decode medians and "
    "OpenVINO's speed-ups (above 1: OpenVINO is faster)",
    "generate_vs_direct.<v>": "OpenVINO variants on the text workload: median TTFT and TPOT (ttft_s, tpot_s) of "
    "optimum-intel's generate and of a plain greedy loop over the same compiled requests (helpers/greedy.py), "
    "which chose the same tokens (same_tokens); gap, how much longer generate's TPOT is (0.1: 10%)",
    "compile_cache.<v>": "OpenVINO variants: load + compile with OpenVINO's compile cache (CACHE_DIR) in an empty "
    "folder, first_s (compiles and writes the compiled model) and cached_s (reads it back), and cache_MB, what "
    "the cache holds; the main benchmark's load_compile_s uses no cache",
    "compute_limit": "the first token's limit: peak_GFLOP_s (one large matrix product compiled by OpenVINO in f32, "
    "bf16 and int8), vision_GFLOP_per_tile (counted from the vision encoder's IR) and per variant, on the photo "
    "workload: vision_GFLOP and prefill_GFLOP, the GFLOP/s each reached (from the stage split) and its fraction "
    "of the peak of the precision it runs in",
    "busy_core": "decode tokens/s of the variant named (OpenVINO INT4) on a text prompt in a fresh process, idle "
    "(idle_tok_s) and with another program keeping one core busy (busy_tok_s), and loss, the share of the idle "
    "speed lost; once with OMP_WAIT_POLICY unset and once PASSIVE (policies)",
    "four_bit_vs_int4.<v>": "the data-aware 4-bit variants (int4-awq, int4-ratio) against plain INT4 on the same "
    "questions: per figure (token_agreement, kl_mean; text_accuracy with a real language model) the mean "
    "difference (theirs minus INT4's), its 95% paired bootstrap interval (ci) and real (the interval leaves out 0)",
    "recommendation": "which variant to pick, derived from the figures: for photos (lowest photo TTFT) and for long "
    "answers (fastest text decoding) among the variants whose answer similarity is at least 0.90; each with its "
    "figure, similarity and the runner-up",
    "scaling.tiles": "per variant: TTFT (median, s) for one photo scaled to longest_edge 512/1024/1536/2048 px "
    "(rows: longest_edge, image_tiles, image_tokens, prompt_tokens, ttft_s)",
    "scaling.context": "per variant: TPOT and TTFT (medians, s) of text-only prompts of context_tokens tokens "
    "(rows: context_tokens, tpot_s, ttft_s)",
    "scaling.threads": "per variant: blog-workload TTFT and TPOT against the number of threads (rows: threads, "
    "ttft_s, tpot_s, decode_tok_s; or skipped with the reason)",
    "quality.<v>": "against the reference (PyTorch FP32, reference: true) on `samples` questions: "
    "photo_questions of data/eval.jsonl (one tile per photo) and text_questions of data/text_questions.jsonl; "
    "token_agreement (share of "
    "positions where the variant's top token equals the reference's, teacher-forced on the reference's "
    "greedy tokens), kl_mean (mean KL(reference || variant) of next-token distributions, nats), similarity "
    "(mean cosine similarity of all-MiniLM-L6-v2 embeddings of the free-running answers; similarity_min: the "
    "lowest), below_floor "
    "(similarity < 0.90), repetition_rate (share of answers that fall into repeating one phrase), accuracy "
    "(share of photo answers containing the reference answer; real vision encoder only, else null), "
    "text_accuracy (the same on the text questions; real language model only, else null); every figure f with "
    "f_ci, its 95% bootstrap interval over the questions, and each accuracy with f_vs_reference_ci, the "
    "interval of its difference from the reference's on the same questions (holding 0: within noise)",
}


def quick_mode() -> bool:
    """True when ``VLM_QUICK`` is set (the test suite sets it): few iterations and small sweeps."""
    return os.environ.get(QUICK_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Plan:
    """How much the notebook measures. :func:`plan` picks the quick or the full setting."""

    warmup: int  # untimed generate calls per workload, before the timed ones
    iterations: dict[str, int]  # timed generate calls per workload
    tile_edges: tuple[int, ...]  # processor longest_edge values for the TTFT-vs-tiles sweep
    context_lengths: tuple[int, ...]  # prompt lengths (tokens) for the TPOT-vs-context sweep
    thread_counts: tuple[int, ...]  # thread counts for the thread sweep
    sweep_iterations: int  # timed calls per point of a sweep (after one warm-up call per sweep)
    eval_samples: int  # photo questions of data/eval.jsonl used for quality
    text_samples: int | None  # text questions of data/text_questions.jsonl used for quality (None: all)
    eval_new_tokens: int  # longest answer (tokens) in the quality evaluation
    stage_iterations: int  # runs per workload split into stages (helpers.stages), after the timed ones

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def thread_counts(max_threads: int | None = None) -> tuple[int, ...]:
    """1, 2, 4, ... up to ``max_threads`` (default: the usable cores), and ``max_threads`` itself."""
    top = max_threads or hardware.usable_cores()
    counts = {top}
    n = 1
    while n < top:
        counts.add(n)
        n *= 2
    return tuple(sorted(counts))


def plan(quick: bool | None = None) -> Plan:
    """The quick plan (tests: a few calls each; about 2 minutes with the tiny stand-in) or the full one
    (``make run``; about 20 minutes for notebook 04 with the 256M model on 2 cores, most of it PyTorch)."""
    quick = quick_mode() if quick is None else quick
    if quick:
        return Plan(warmup=1, iterations={"blog": 2, "photo": 2, "text": 2}, tile_edges=(512, 1024),
                    context_lengths=(64, 256),
                    thread_counts=thread_counts(), sweep_iterations=1, eval_samples=3, text_samples=3,
                    eval_new_tokens=8, stage_iterations=1)
    return Plan(warmup=1, iterations={"blog": 10, "photo": 3, "text": 5}, tile_edges=(512, 1024, 1536, 2048),
                context_lengths=(128, 512, 1024, 2048, 4096), thread_counts=thread_counts(), sweep_iterations=3,
                eval_samples=12, text_samples=None, eval_new_tokens=24, stage_iterations=2)


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
    "blog": Workload("blog", "astronaut", "What is in this image?", 16, TILE_SIZE,
                     "the source's setup: one 512x512 tile, a short prompt, exactly 16 new tokens"),
    "photo": Workload("photo", "cat", "Describe this image in detail.", 64, None,
                      "a real photo with the processor's default tiling, 64 new tokens"),
    "text": Workload("text", None, "Write a short story about a cat who watches the stars at night.", 64, None,
                     "a text-only prompt, no image: the language model alone, 64 new tokens"),
}


def chat_prompt(processor, question: str, with_image: bool = True) -> str:
    """The chat-template prompt for one user turn (an image, then ``question``), ready for the answer."""
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": question}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


def image_inputs(processor, image, question: str, longest_edge: int | None = None):
    """Processor output (``input_ids``, ``attention_mask``, ``pixel_values``...) for one photo and question.

    ``longest_edge`` sets how large the processor scales the photo before cutting 512-pixel tiles: 512 gives one
    tile, 1024 a 2x2 grid plus the global view (5 tiles), 2048 (SmolVLM's default) up to 4x4 + 1 = 17.
    """
    kwargs = {"size": {"longest_edge": longest_edge}} if longest_edge else {}
    return processor(text=chat_prompt(processor, question), images=[image], return_tensors="pt", **kwargs)


def input_facts(model_config, inputs) -> dict:
    """Prompt tokens (text + image tokens) and image tiles of processor output ``inputs``."""
    facts = {"prompt_tokens": int(inputs["input_ids"].shape[1]), "image_tiles": 0, "image_tokens": 0}
    if inputs.get("pixel_values") is not None:
        facts["image_tiles"] = int(inputs["pixel_values"].shape[1])
        facts["image_tokens"] = int((inputs["input_ids"] == model_config.image_token_id).sum())
    return facts


@dataclass
class PreparedWorkload:
    """A workload turned into model inputs once, so every variant gets exactly the same tensors."""

    workload: Workload
    inputs: Any
    facts: dict = field(default_factory=dict)


def prepare_workloads(processor, model_config, workloads: dict[str, Workload] = WORKLOADS,
                      repeats: int = 3) -> dict[str, PreparedWorkload]:
    """Run the processor on each workload (timing it: ``preprocess_s``, best of ``repeats``)."""
    from PIL import Image

    prepared = {}
    for name, w in workloads.items():
        image = Image.open(data.photo_path(w.photo)).convert("RGB") if w.photo else None
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            inputs = (image_inputs(processor, image, w.question, w.longest_edge) if image else
                      processor(text=chat_prompt(processor, w.question, with_image=False), return_tensors="pt"))
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
    head_text, tail_text = chat_prompt(processor, "Summarise this text: " + marker, with_image=False).split(marker)
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
    """A ``generate`` streamer that records when each new token arrives (the chat's own loop,
    :func:`helpers.chat.stream_answer`, stamps each token the same way: when it is chosen).

    ``generate`` first hands the streamer the prompt, then each new token as soon as it is chosen; we skip the
    prompt and keep a ``time.perf_counter()`` stamp per token.
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        now = time.perf_counter()
        self.times.extend([now] * max(1, getattr(value, "numel", lambda: 1)()))

    def end(self) -> None:
        pass


def generate_timed(model, inputs, new_tokens: int) -> tuple[float, list[float], float]:
    """One greedy ``generate`` call of exactly ``new_tokens`` tokens: ``(start, time of each new token, end)``
    (``time.perf_counter()`` values)."""
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


def time_generation(model, inputs, new_tokens: int) -> dict:
    """One greedy ``generate`` call of exactly ``new_tokens`` tokens: ttft_s, tpot_s, decode_tok_s, e2e_s."""
    start, times, end = generate_timed(model, inputs, new_tokens)
    tpot = (times[-1] - times[0]) / (new_tokens - 1)
    return {"ttft_s": times[0] - start, "tpot_s": tpot, "decode_tok_s": 1.0 / tpot, "e2e_s": end - start}


def significant(value: float, digits: int = 4) -> float:
    """``value`` rounded to ``digits`` significant figures. Unlike rounding to fixed decimals, a small figure
    (a tiny model, a slow or a very fast CPU) never becomes 0."""
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


# --- variants ---------------------------------------------------------------------------------------------


@dataclass
class Candidate:
    """One row of the benchmark: how to load it (``load(threads) -> model``) and what it is."""

    key: str  # e.g. "openvino-int8"
    label: str  # e.g. "OpenVINO INT8 weight-only"
    backend: str  # "pytorch" or "openvino"
    load: Callable[[int], Any]
    ir_dir: Path | None = None  # OpenVINO: the IR folder
    precision_hint: str | None = None  # OpenVINO: INFERENCE_PRECISION_HINT passed, if any

    def compiles_with(self, threads: int) -> bool:
        """False when OpenVINO would crash compiling this variant with ``threads`` (see hardware)."""
        if self.backend != "openvino" or self.ir_dir is None:
            return True
        return hardware.openvino_compiles(self.ir_dir, hardware.openvino_config(threads, self.precision_hint))


_PRECISION_NAMES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}  # OpenVINO's names, as torch spells them


def runtime_precision(model) -> str:
    """The precision the model computes in (``float32``, ``bfloat16``...): OpenVINO's ``INFERENCE_PRECISION_HINT``
    as compiled for the language model, or the torch dtype."""
    if hasattr(model, "language_model") and hasattr(model.language_model, "request"):
        compiled = model.language_model.request.get_compiled_model()
        name = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        return _PRECISION_NAMES.get(name, name)
    return str(model.dtype).replace("torch.", "")


_HALF = {"bfloat16", "float16"}


def lm_bytes_per_token(model) -> int:
    """Bytes of language-model weights read to generate one token, as the runtime holds them.

    OpenVINO: the constants of the language-model IR (weights, scales, zero points); FP32 weights count 2 bytes
    when the model runs in bf16/f16, since the CPU plugin converts them when it compiles. PyTorch: the
    parameters of the text model and output head. Both leave out the input embedding table (each token reads
    one row of it). The KV cache is left out too: for SmolVLM2-256M about 23 kB per token of context at 16 bits
    (30 layers x keys and values x 3 heads x 64), a couple of MB for the blog prompt but about 100 MB at 4,096
    tokens, which is why time per token grows with the context.
    """
    if hasattr(model, "language_model") and hasattr(model.language_model, "model"):
        half = runtime_precision(model) in _HALF
        total = 0
        for op in model.language_model.model.get_ops():
            if op.get_type_name() != "Constant":
                continue
            nbytes = op.get_byte_size()
            if half and op.get_output_element_type(0).get_type_name() == "f32":
                nbytes //= 2
            total += nbytes
        return total
    text_model = model.model.text_model
    embed = text_model.get_input_embeddings().weight
    params = [p for p in text_model.parameters() if p is not embed] + list(model.lm_head.parameters())
    return sum(p.numel() * p.element_size() for p in params)


def free_memory() -> None:
    """Collect garbage (call after ``del model``) so the next variant starts from a clean slate."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap pages back to the OS (glibc)
    except (OSError, AttributeError):
        pass


def measure_variant(candidate: Candidate, prepared: dict[str, PreparedWorkload], threads: int, *,
                    warmup: int, iterations: dict[str, int], then: Callable[[Any], Any] | None = None,
                    stage_iterations: int = 1) -> tuple[dict, Any]:
    """Load ``candidate`` with ``threads`` threads, benchmark every prepared workload (``warmup`` untimed calls,
    then ``iterations[workload]`` timed ones, then ``stage_iterations`` runs split into stages by
    :mod:`helpers.stages`), then call ``then(model)`` while the model is still loaded.

    Returns ``(record, then_result)``. The record holds load + compile time, peak memory, IR size, bytes read
    per token and, per workload, TTFT/TPOT/decode/e2e summaries and (``stages``) where the time went. The model
    is freed before returning. A variant that fails is recorded with ``error`` instead of stopping the whole
    benchmark.
    """
    record: dict = {"label": candidate.label, "backend": candidate.backend, "threads": threads,
                    "ir_size_MB": None}
    if candidate.ir_dir is not None:
        from helpers.export import ir_size_bytes

        record["ir_size_MB"] = significant(ir_size_bytes(candidate.ir_dir) / 1e6)
    if not candidate.compiles_with(threads):
        record["error"] = f"OpenVINO crashes compiling this variant with {threads} thread(s) (see helpers.hardware)"
        return record, None
    def run(model) -> dict:
        from helpers import stages

        record["precision"] = runtime_precision(model)
        record["lm_bytes_per_token_MB"] = significant(lm_bytes_per_token(model) / 1e6)
        timed = {name: run_workload(model, p, warmup, iterations[name]) for name, p in prepared.items()}
        # Where the time goes: separate runs with the stage clock on, so its cost stays out of the figures above
        if stage_iterations:
            record["stages"] = {name: stages.measure(model, p.inputs, p.workload.new_tokens,
                                                     p.facts["image_tiles"], stage_iterations)
                                for name, p in prepared.items()}
        return timed

    return record, measure_session(record, lambda: candidate.load(threads), run, then)


COMPETITION_WARNING = 0.15  # share of the machine's CPU used by other programs above which a record says so


def measure_session(record: dict, load: Callable[[], Any], run: Callable[[Any], dict],
                    then: Callable[[Any], Any] | None = None, close: Callable[[Any], None] | None = None) -> Any:
    """The part every runtime's ``measure_variant`` shares: ``load()`` timed (``load_compile_s``),
    ``run(model)`` (``workloads``), peak memory sampled over both, then ``then(model)`` while it is loaded,
    and the model freed (``close(model)`` first, if given). Fills ``record`` in place and returns ``then``'s
    result. A failure is recorded as ``error`` instead of stopping the whole benchmark."""
    from helpers.memory import measure

    model = result = None
    try:
        with measure() as memory, hardware.CpuCompetition() as others:
            start = time.perf_counter()
            model = load()
            record["load_compile_s"] = significant(time.perf_counter() - start)
            record["workloads"] = run(model)
        record["peak_rss_MB"], record["rss_before_MB"] = memory["peak_rss_MB"], memory["start_rss_MB"]
        record["other_processes_cpu_share"] = round(others.other_share, 3)
        if others.other_share > COMPETITION_WARNING:
            print(f"Note: other programs used {others.other_share:.0%} of this machine's CPU while {record['label']} "
                  "was measured; its figures are slower than on a quiet machine.")
        if then is not None:
            result = then(model)
    except Exception as err:  # one broken variant must not cost the whole run; the record says what happened
        record["error"] = f"{type(err).__name__}: {err}"
        print(f"{record['label']}: failed, {record['error']}")
    finally:
        if model is not None and close is not None:
            close(model)
    del model
    free_memory()
    return result


def compile_cache_times(folder: Path, threads: int, cache_dir: Path) -> dict:
    """Load + compile of the IR in ``folder`` twice with OpenVINO's compile cache in ``cache_dir`` (give an empty
    folder): ``first_s`` compiles and writes the compiled model, ``cached_s`` reads it back; ``cache_MB`` is what
    the cache holds afterwards."""
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


def recommend(results: dict, floor: float = 0.90) -> dict[str, dict]:
    """Which measured variant to pick, derived from the figures: for photos (lowest median TTFT on the photo
    workload) and for long answers (highest decode tokens/s on the text workload), among the variants whose
    answer similarity to the reference stays at or above ``floor``; each pick with its figure and the runner-up.
    A workload nobody measured is left out."""
    quality = results.get("quality", {})
    picks = {}
    for purpose, workload, figure, best in (("photos", "photo", "ttft_s", min),
                                            ("long answers", "text", "decode_tok_s", max)):
        measured = {k: r["workloads"][workload][figure]["median"] for k, r in results["variants"].items()
                    if workload in r.get("workloads", {}) and quality.get(k, {}).get("similarity", 0) >= floor}
        if not measured:
            continue
        ranked = sorted(measured, key=measured.get, reverse=best is max)
        picks[purpose] = {"variant": ranked[0], "label": results["variants"][ranked[0]]["label"], "workload": workload,
                          figure: measured[ranked[0]], "similarity": quality[ranked[0]]["similarity"],
                          "runner_up": ranked[1] if len(ranked) > 1 else None,
                          "runner_up_" + figure: measured[ranked[1]] if len(ranked) > 1 else None}
    return picks


def summary_line(record: dict) -> str:
    """One line per measured variant, printed as the benchmark goes: load time, blog TTFT and decode speed."""
    if "error" in record:
        return f"{record['label']:28s} {record['error']}"
    blog = record["workloads"].get("blog")
    speed = (f", blog TTFT {blog['ttft_s']['median']:.3f} s, decode {blog['decode_tok_s']['median']:.1f} tok/s"
             if blog else "")
    return f"{record['label']:28s} load {record['load_compile_s']:.1f} s{speed}, computes in {record.get('precision')}"


def add_bandwidth_bound(records: dict[str, dict], bandwidth_gb_s: float) -> None:
    """Add ``bandwidth_bound_tok_s`` and ``fraction_of_bound`` to each workload of each record (in place).

    The bound: decoding one token reads ``lm_bytes_per_token`` bytes, so memory can feed at most
    ``bandwidth / bytes`` tokens per second.
    """
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
    """TTFT for the same photo scaled to each longest edge in ``edges`` (more pixels, more 512px tiles)."""
    from PIL import Image

    image = Image.open(data.photo_path(photo)).convert("RGB")
    rows = []
    for i, edge in enumerate(edges):
        inputs = image_inputs(processor, image, question, edge)
        if i == 0:
            time_generation(model, inputs, 2)  # warm-up
        ttft = summarize([time_generation(model, inputs, 2)["ttft_s"] for _ in range(iterations)])
        rows.append({"longest_edge": edge, **input_facts(model.config, inputs), "ttft_s": ttft["median"]})
    return rows


def tpot_vs_context(model, processor, lengths: Sequence[int], iterations: int, new_tokens: int = 16) -> list[dict]:
    """TPOT (and TTFT) of text-only prompts of each length in ``lengths`` tokens: decoding slows as the KV
    cache it attends to grows."""
    rows = []
    for i, length in enumerate(lengths):
        inputs = context_inputs(processor, length)
        if i == 0:
            time_generation(model, inputs, new_tokens)  # warm-up
        runs = [time_generation(model, inputs, new_tokens) for _ in range(iterations)]
        rows.append({"context_tokens": length, "tpot_s": statistics.median(r["tpot_s"] for r in runs),
                     "ttft_s": statistics.median(r["ttft_s"] for r in runs)})
    return rows


def threads_sweep(candidate: Candidate, prepared: PreparedWorkload, counts: Sequence[int], iterations: int,
                  known: dict[int, dict] | None = None) -> list[dict]:
    """TTFT and TPOT of one workload with each thread count (a fresh load per count: OpenVINO fixes its
    threads when it compiles). ``known``: ``{threads: workload figures}`` already measured, reused as they are."""
    import torch

    torch_threads = torch.get_num_threads()  # PyTorch loaders set it; give it back as it was
    rows = []
    try:
        for threads in counts:
            if known and threads in known:
                figures = known[threads]
            else:
                name = prepared.workload.name
                record, _ = measure_variant(candidate, {name: prepared}, threads, warmup=1,
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


# --- the results ------------------------------------------------------------------------------------------


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return numerator / denominator


# (title, faster variant, slower variant, the source's rows for the same pair or None)
COMPARISONS = (
    ("OpenVINO FP32 vs PyTorch FP32", "openvino-fp32", "pytorch-fp32", ("openvino-fp32", "pytorch-fp32")),
    ("OpenVINO FP32 vs PyTorch BF16", "openvino-fp32", "pytorch-bf16", None),
    ("OpenVINO INT8 vs OpenVINO FP32", "openvino-int8", "openvino-fp32", ("openvino-int8", "openvino-fp32")),
    ("OpenVINO INT4 vs OpenVINO FP32", "openvino-int4", "openvino-fp32", None),
    ("OpenVINO mixed + INT4 vs OpenVINO FP32", "openvino-mixed-int4", "openvino-fp32", None),
)


def comparison(records: dict[str, dict], workloads: Sequence[str] = ("blog", "photo")) -> list[dict]:
    """Speed-ups of one variant over another (TTFT and decode), ours per workload beside the source's.

    The source measured only the blog workload, and only the pairs it had (PyTorch, OpenVINO FP32, INT8).
    """

    def fig(key: str, workload: str, name: str) -> float | None:
        try:
            return records[key]["workloads"][workload][name]["median"]
        except KeyError:
            return None

    src = SOURCE_TABLE["rows"]
    rows = []
    for title, fast, slow, source in COMPARISONS:
        if fast not in records or slow not in records:
            continue
        for figure, name in (("TTFT speed-up", "ttft_s"), ("decode speed-up", "decode_tok_s")):
            row = {"comparison": title, "figure": figure, "source (blog workload)": None}
            if source:
                s_fast, s_slow = src[source[0]], src[source[1]]
                row["source (blog workload)"] = round(
                    s_slow["ttft_s"] / s_fast["ttft_s"] if name == "ttft_s"
                    else s_fast["decode_tok_s"] / s_slow["decode_tok_s"], 2)
            for w in workloads:
                a, b = fig(fast, w, name), fig(slow, w, name)
                row[f"ours ({w})"] = _round(ratio(b, a) if name == "ttft_s" else ratio(a, b))
            rows.append(row)
    return rows


# The same bits per weight in both runtimes: OpenVINO's IR as exported (FP32 weights, computed in bf16 where the
# CPU has it) beside llama.cpp's F16, 8-bit beside Q8_0, 4-bit beside Q4_0.
PEER_PAIRS = (("openvino-fp32", "llamacpp-f16"), ("openvino-int8", "llamacpp-q8_0"), ("openvino-int4", "llamacpp-q4_0"))


def peer_comparison(records: dict[str, dict], workloads: Sequence[str] = ("blog", "photo", "text")) -> list[dict]:
    """OpenVINO against llama.cpp, per workload: each pair of :data:`PEER_PAIRS`, then the fastest of each
    runtime. ``TTFT speed-up`` and ``decode speed-up`` are OpenVINO's over llama.cpp's (above 1: OpenVINO
    is faster). Pairs or workloads not measured are left out."""
    def median(key: str, workload: str, figure: str) -> float | None:
        return records.get(key, {}).get("workloads", {}).get(workload, {}).get(figure, {}).get("median")

    def best(backend: str, workload: str, figure: str, fastest) -> str | None:
        keys = [k for k, r in records.items() if r.get("backend") == backend and median(k, workload, figure)]
        return fastest(keys, key=lambda k: median(k, workload, figure)) if keys else None

    rows = []
    for workload in workloads:
        pairs = [(ov, cpp, "same bits per weight") for ov, cpp in PEER_PAIRS]
        pairs.append((best("openvino", workload, "ttft_s", min), best("llama.cpp", workload, "ttft_s", min),
                      "fastest first token of each"))
        pairs.append((best("openvino", workload, "decode_tok_s", max), best("llama.cpp", workload, "decode_tok_s", max),
                      "fastest decoding of each"))
        for ov, cpp, why in pairs:
            if not (median(ov, workload, "ttft_s") and median(cpp, workload, "ttft_s")):
                continue
            rows.append({"workload": workload, "pair": why, "OpenVINO": ov, "llama.cpp": cpp,
                         "TTFT (s), OpenVINO": median(ov, workload, "ttft_s"),
                         "TTFT (s), llama.cpp": median(cpp, workload, "ttft_s"),
                         "TTFT speed-up": _round(ratio(median(cpp, workload, "ttft_s"),
                                                       median(ov, workload, "ttft_s"))),
                         "decode (tok/s), OpenVINO": median(ov, workload, "decode_tok_s"),
                         "decode (tok/s), llama.cpp": median(cpp, workload, "decode_tok_s"),
                         "decode speed-up": _round(ratio(median(ov, workload, "decode_tok_s"),
                                                         median(cpp, workload, "decode_tok_s")))})
    return rows


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def results_path() -> Path:
    """``<runs dir>/results.json`` (``runs/latest/results.json`` under ``make run``)."""
    return runs_dir() / RESULTS_FILE


def save_results(results: dict, path: Path | None = None) -> Path:
    """Write ``results`` as JSON (atomically: a temporary file renamed into place) and return its path."""
    path = Path(path or results_path())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(results, indent=2, default=_jsonable) + "\n")
    os.replace(tmp, path)
    return path


def _jsonable(value):
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def load_results(path: Path | None = None) -> dict:
    """Read a results file written by :func:`save_results`."""
    return json.loads(Path(path or results_path()).read_text())


def speed_table(results: dict, workload: str):
    """One row per variant for ``workload``: medians of TTFT, TPOT, decode, e2e, and load time, memory, size."""
    import pandas as pd

    rows = []
    for key, r in results["variants"].items():
        row = {"variant": key, "label": r["label"], "precision": r.get("precision")}
        w = r.get("workloads", {}).get(workload)
        if w:
            row.update({
                "TTFT (s)": w["ttft_s"]["median"], "TPOT (ms)": 1000 * w["tpot_s"]["median"],
                "decode (tok/s)": w["decode_tok_s"]["median"], "end-to-end (s)": w["e2e_s"]["median"],
                "e2e spread (s)": f"{w['e2e_s']['min']:.3g}-{w['e2e_s']['max']:.3g}",
            })
            if "fraction_of_bound" in w:
                row["% of bandwidth bound"] = 100 * w["fraction_of_bound"]
        gguf = (r.get("gguf_size_MB") or 0) + (r.get("mmproj_size_MB") or 0)
        row.update({"load+compile (s)": r.get("load_compile_s"), "peak RSS (MB)": r.get("peak_rss_MB"),
                    "size on disk (MB)": r.get("ir_size_MB") or (significant(gguf) if gguf else None)})
        if "error" in r:
            row["error"] = r["error"]
        rows.append(row)
    return pd.DataFrame(rows).set_index("variant")


def markdown_table(results: dict, workload: str = "blog", digits: int = 3) -> str:
    """:func:`speed_table` as a Markdown table (for the README), with the machine and model in a caption line."""
    table = speed_table(results, workload)
    m = results["machine"]
    bandwidth = m.get("read_bandwidth_GB_s", {}).get(str(m["threads_used"]))
    caption = (f"*{workload} workload ({results['workloads'][workload]['description']}); model {results['model']['slug']}"
               f"{' (stand-in: random weights)' if results['model']['stand_in'] else ''}; {m['cpu_model']}, "
               f"{m['threads_used']} threads"
               + (f", read bandwidth {bandwidth} GB/s" if bandwidth else "") + "; medians.*")
    columns = [str(c) for c in table.columns]
    lines = ["| variant | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for key, row in table.iterrows():
        cells = [_cell(v, digits) for v in row]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return caption + "\n\n" + "\n".join(lines)


def comparison_markdown(results: dict) -> str:
    """The source-vs-ours speed-up table (``results["comparison"]``) as Markdown."""
    rows = results["comparison"]
    columns = list(rows[0]) if rows else []
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[c], 3) + ("x" if isinstance(row[c], float) else "")
                                        for c in columns) + " |")
    return "\n".join(lines)


def _cell(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def check_results(results: dict, variants: Sequence[str], workloads: Sequence[str]) -> list[str]:
    """Problems with a results dict: a missing variant, workload or section, or a figure that is not a positive,
    finite number. An empty list means the file is complete."""
    problems = []

    def positive(path: str, value) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            problems.append(f"{path} is {value!r}, not a positive finite number")

    def section(parent: dict, key: str, path: str):
        value = parent.get(key)
        if value is None:
            problems.append(f"{path} is missing")
        return value

    machine = results.get("machine", {})
    if not machine.get("cpu_model"):
        problems.append("machine.cpu_model is missing")
    positive("machine.threads_used", machine.get("threads_used"))
    bandwidth = machine.get("read_bandwidth_GB_s") or {}
    if not bandwidth:
        problems.append("machine.read_bandwidth_GB_s is missing")
    for n, value in bandwidth.items():
        positive(f"machine.read_bandwidth_GB_s.{n}", value)
    if not results.get("versions", {}).get("openvino"):
        problems.append("versions.openvino is missing")
    for name in workloads:
        facts = section(results.get("workloads", {}), name, f"workloads.{name}")
        if facts is None:
            continue
        for key in ("prompt_tokens", "new_tokens", "preprocess_s") + (("image_tiles",) if facts.get("photo") else ()):
            positive(f"workloads.{name}.{key}", facts.get(key))
    for key in variants:
        record = section(results.get("variants", {}), key, f"variants.{key}")
        if record is None:
            continue
        if "error" in record:
            problems.append(f"variants.{key} was not measured: {record['error']}")
            continue
        for field_name in ("load_compile_s", "peak_rss_MB", "lm_bytes_per_token_MB"):
            positive(f"variants.{key}.{field_name}", record.get(field_name))
        if record.get("backend") == "openvino":
            positive(f"variants.{key}.ir_size_MB", record.get("ir_size_MB"))
        for name in workloads:
            figures = section(record.get("workloads", {}), name, f"variants.{key}.workloads.{name}")
            if figures is None:
                continue
            for figure in ("ttft_s", "tpot_s", "decode_tok_s", "e2e_s"):
                for stat in ("median", "min", "max"):
                    positive(f"variants.{key}.workloads.{name}.{figure}.{stat}", figures.get(figure, {}).get(stat))
            for figure in ("bandwidth_bound_tok_s", "fraction_of_bound"):
                positive(f"variants.{key}.workloads.{name}.{figure}", figures.get(figure))
        if record.get("backend") in ("pytorch", "openvino"):
            for name in workloads:
                split = record.get("stages", {}).get(name)
                if split is None:
                    problems.append(f"variants.{key}.stages.{name} is missing")
                    continue
                for part in ("first_token", "per_token"):
                    for stage, value in split[part].items():
                        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                            problems.append(f"variants.{key}.stages.{name}.{part}.{stage} is {value!r}, "
                                            "not a number >= 0")
        q = section(results.get("quality", {}), key, f"quality.{key}")
        if q is not None:
            for figure in ("token_agreement", "similarity", "repetition_rate"):
                value = q.get(figure)
                if not isinstance(value, (int, float)) or not (math.isfinite(value) and -1.0 <= value <= 1.0):
                    problems.append(f"quality.{key}.{figure} is {value!r}, not a number in [-1, 1]")
            for figure in ("accuracy", "text_accuracy"):
                value = q.get(figure)
                if value is not None and not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                    problems.append(f"quality.{key}.{figure} is {value!r}, not null or a share in [0, 1]")
            kl = q.get("kl_mean")
            if not isinstance(kl, (int, float)) or not math.isfinite(kl) or kl < 0:
                problems.append(f"quality.{key}.kl_mean is {kl!r}, not a finite number >= 0")
    scaling = results.get("scaling", {})
    for part, figure in (("tiles", "ttft_s"), ("context", "tpot_s"), ("threads", None)):
        curves = section(scaling, part, f"scaling.{part}")
        if not curves:
            continue
        for key, rows in curves.items():
            for i, row in enumerate(rows):
                if "skipped" in row:
                    continue
                for name in ([figure] if figure else ["ttft_s", "tpot_s", "decode_tok_s"]):
                    positive(f"scaling.{part}.{key}[{i}].{name}", row.get(name))
    if not results.get("comparison"):
        problems.append("comparison is missing")
    return problems
