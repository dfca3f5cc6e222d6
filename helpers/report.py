"""What notebook 04 does with its measurements: results.json (what each field means, save, load, check), the
tables and Markdown, the speed-ups against the source blog and against llama.cpp, and the recommendation.

:mod:`helpers.bench` measures; this module only reads and arranges what it measured.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

from helpers.bench import significant
from helpers.paths import runs_dir

RESULTS_FILE = "results.json"

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
    "plan": "how much was measured: mode (quick, default or full: VLM_QUICK, VLM_FULL), the contenders and "
    "llama.cpp types measured (null: every one), warm-up calls, timed iterations per workload, sweep settings",
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
    "model": "the model: requested name, slug, stand_in (true: a stand-in's weights; its banner says which are real)",
    "workloads.<w>": "each workload: photo (null: text only), question, new_tokens, prompt_tokens (text + image "
    "tokens), image_tiles (512x512 tiles the processor made), preprocess_s (processor time, the same for every contender)",
    "contenders.<c>.label / backend / precision / threads": "what ran: PyTorch, OpenVINO or llama.cpp, weights, the "
    "precision the runtime computes in (an FP32 IR runs in bf16 on CPUs with bf16 instructions unless told f32; "
    "for llama.cpp the GGUF type of the language model: f16, q8_0, q4_0), threads",
    "contenders.<c>.gguf_size_MB / mmproj_size_MB / llama_cpp_python": "llama.cpp only: size on disk of the GGUF "
    "language model and of the vision projector (F16), and the llama-cpp-python version; its "
    "workloads.<w>.facts hold llama.cpp's own image_tiles, image_tokens and prompt_tokens",
    "contenders.<c>.load_compile_s": "seconds from from_pretrained to a model ready to generate (OpenVINO: "
    "reading and compiling the IR; PyTorch: loading the checkpoint)",
    "contenders.<c>.peak_rss_MB / rss_before_MB": "peak resident memory of the process while this contender "
    "was loaded, benchmarked and asked the quality questions (psutil, sampled every 0.1 s) / before loading it; "
    "contenders run one after "
    "another in one process and are freed in between, so the difference is the contender's own cost",
    "contenders.<c>.ir_size_MB": "OpenVINO IR size on disk (.xml + .bin of the three submodels); null for PyTorch",
    "contenders.<c>.lm_bytes_per_token_MB": "bytes of language-model weights read per generated token, at the "
    "precision the runtime holds them in (the input embedding table is excluded: one row is read per token)",
    "contenders.<c>.workloads.<w>.ttft_s / tpot_s / decode_tok_s / e2e_s": "time to first token, time per output "
    "token, decode tokens per second (1/TPOT), whole generate() call; each {median, min, max, n} over the "
    "timed iterations",
    "contenders.<c>.workloads.<w>.bandwidth_bound_tok_s / fraction_of_bound": "decode tokens/s that memory "
    "bandwidth allows (read bandwidth / lm_bytes_per_token) and the measured decode speed as a fraction of it",
    "contenders.<c>.stages.<w>": "PyTorch and OpenVINO: where the time of one generate call went (helpers.stages; "
    "medians of separate runs with the clock on, in seconds): first_token (vision: the vision encoder with its "
    "connector, text_embeddings, language_model: the prefill, rest: generate's own Python; together ttft), "
    "vision_per_tile, per_token (language_model, text_embeddings, rest; together tpot, the mean decoding step), e2e",
    "contenders.<c>.other_processes_cpu_share": "share of the machine's CPU (all cores) that other programs used "
    "while this contender was loaded and timed; above 0.15 the notebook says its figures are slower than on a quiet "
    "machine",
    "contenders.<c>.error": "present when a contender could not be measured, with the reason",
    "comparison": "speed-ups (TTFT: slower/faster; decode: faster/slower) of OpenVINO FP32 over PyTorch FP32 and "
    "BF16, and of INT8, INT4 and mixed + INT4 over the FP32 IR; rows: comparison, figure, source (blog workload; "
    "null where "
    "the source had no such pair), ours (blog), ours (photo)",
    "peer_comparison": "OpenVINO against llama.cpp per workload: pairs at about the same bits per weight (FP32 IR, "
    "which computes in bf16 on CPUs with bf16 instructions, and F16; INT8 and Q8_0; INT4 and Q4_0), then the "
    "fastest of each; both runtimes' TTFT and decode medians and "
    "OpenVINO's speed-ups (above 1: OpenVINO is faster)",
    "generate_vs_direct.<c>": "OpenVINO contenders on the text workload: median TTFT and TPOT (ttft_s, tpot_s) of "
    "optimum-intel's generate and of a plain greedy loop over the same compiled requests (helpers/greedy.py), "
    "which chose the same tokens (same_tokens); gap, how much longer generate's TPOT is (0.1: 10%)",
    "compile_cache.<c>": "OpenVINO contenders: load + compile with OpenVINO's compile cache (CACHE_DIR) in an empty "
    "folder, first_s (compiles and writes the compiled model) and cached_s (reads it back), and cache_MB, what "
    "the cache holds; the main benchmark's load_compile_s uses no cache",
    "compute_limit": "the first token's limit: peak_GFLOP_s (one large matrix product compiled by OpenVINO in f32, "
    "bf16 and int8), vision_GFLOP_per_tile (counted from the vision encoder's IR) and per contender, on the photo "
    "workload: vision_GFLOP and prefill_GFLOP, the GFLOP/s each reached (from the stage split) and its fraction "
    "of the peak of the precision it runs in",
    "busy_core": "decode tokens/s of the contender named (OpenVINO INT4) on a text prompt in a fresh process, idle "
    "(idle_tok_s) and with another program keeping one core busy (busy_tok_s), and loss, the share of the idle "
    "speed lost; once with OMP_WAIT_POLICY unset and once PASSIVE (policies)",
    "four_bit_vs_int4.<c>": "the data-aware 4-bit contenders (openvino-int4-awq, openvino-int4-ratio) against plain INT4 "
    "on the same "
    "questions: per figure (token_agreement, kl_mean; text_accuracy with a real language model) the mean "
    "difference (theirs minus INT4's), its 95% paired bootstrap interval (ci) and real (the interval leaves out 0)",
    "recommendation": "which contender to pick (its key: contender), derived from the figures: for photos (lowest "
    "photo TTFT) and for long "
    "answers (fastest text decoding) among the contenders whose answer similarity is at least 0.90; each with its "
    "figure, similarity and the runner-up",
    "scaling.tiles": "per contender: TTFT (median, s) for one photo scaled to longest_edge 512/1024/1536/2048 px "
    "(rows: longest_edge, image_tiles, image_tokens, prompt_tokens, ttft_s)",
    "scaling.context": "per contender: TPOT and TTFT (medians, s) of text-only prompts of context_tokens tokens "
    "(rows: context_tokens, tpot_s, ttft_s)",
    "scaling.threads": "per contender: blog-workload TTFT and TPOT against the number of threads (rows: threads, "
    "ttft_s, tpot_s, decode_tok_s; or skipped with the reason)",
    "quality.<c>": "against the reference (PyTorch FP32, reference: true) on `samples` questions: "
    "photo_questions of data/eval.jsonl (one tile per photo) and text_questions of data/text_questions.jsonl; "
    "token_agreement (share of "
    "positions where the contender's top token equals the reference's, teacher-forced on the reference's "
    "greedy tokens), kl_mean (mean KL(reference || contender) of next-token distributions, nats), similarity "
    "(mean cosine similarity of all-MiniLM-L6-v2 embeddings of the free-running answers; similarity_min: the "
    "lowest), below_floor "
    "(similarity < 0.90), repetition_rate (share of answers that fall into repeating one phrase), accuracy "
    "(share of photo answers containing the reference answer; real vision encoder only, else null), "
    "text_accuracy (the same on the text questions; real language model only, else null); every figure f with "
    "f_ci, its 95% bootstrap interval over the questions, and each accuracy with f_vs_reference_ci, the "
    "interval of its difference from the reference's on the same questions (holding 0: within noise)",
}



def recommend(results: dict, floor: float = 0.90) -> dict[str, dict]:
    """Which measured contender to pick, derived from the figures: for photos (lowest median TTFT on the photo
    workload) and for long answers (highest decode tokens/s on the text workload), among the contenders whose
    answer similarity to the reference stays at or above ``floor``; each pick with its figure and the runner-up.
    A workload nobody measured is left out."""
    quality = results.get("quality", {})
    picks = {}
    for purpose, workload, figure, best in (("photos", "photo", "ttft_s", min),
                                            ("long answers", "text", "decode_tok_s", max)):
        measured = {k: r["workloads"][workload][figure]["median"] for k, r in results["contenders"].items()
                    if workload in r.get("workloads", {}) and quality.get(k, {}).get("similarity", 0) >= floor}
        if not measured:
            continue
        ranked = sorted(measured, key=measured.get, reverse=best is max)
        picks[purpose] = {"contender": ranked[0], "label": results["contenders"][ranked[0]]["label"], "workload": workload,
                          figure: measured[ranked[0]], "similarity": quality[ranked[0]]["similarity"],
                          "runner_up": ranked[1] if len(ranked) > 1 else None,
                          "runner_up_" + figure: measured[ranked[1]] if len(ranked) > 1 else None}
    return picks



# --- tables and comparisons ------------------------------------------------------------------------------------------


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return numerator / denominator


# (title, faster contender, slower contender, the source's rows for the same pair or None)
COMPARISONS = (
    ("OpenVINO FP32 vs PyTorch FP32", "openvino-fp32", "pytorch-fp32", ("openvino-fp32", "pytorch-fp32")),
    ("OpenVINO FP32 vs PyTorch BF16", "openvino-fp32", "pytorch-bf16", None),
    ("OpenVINO INT8 vs OpenVINO FP32", "openvino-int8", "openvino-fp32", ("openvino-int8", "openvino-fp32")),
    ("OpenVINO INT4 vs OpenVINO FP32", "openvino-int4", "openvino-fp32", None),
    ("OpenVINO mixed + INT4 vs OpenVINO FP32", "openvino-mixed-int4", "openvino-fp32", None),
)


def comparison(records: dict[str, dict], workloads: Sequence[str] = ("blog", "photo")) -> list[dict]:
    """Speed-ups of one contender over another (TTFT and decode), ours per workload beside the source's.

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
    """One row per contender for ``workload``: medians of TTFT, TPOT, decode, e2e, and load time, memory, size."""
    import pandas as pd

    rows = []
    for key, r in results["contenders"].items():
        row = {"contender": key, "label": r["label"], "precision": r.get("precision")}
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
    return pd.DataFrame(rows).set_index("contender")


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
    lines = ["| contender | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
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


def check_results(results: dict, contenders: Sequence[str], workloads: Sequence[str]) -> list[str]:
    """Problems with a results dict: a missing contender, workload or section, or a figure that is not a positive,
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
    for key in contenders:
        record = section(results.get("contenders", {}), key, f"contenders.{key}")
        if record is None:
            continue
        if "error" in record:
            problems.append(f"contenders.{key} was not measured: {record['error']}")
            continue
        for field_name in ("load_compile_s", "peak_rss_MB", "lm_bytes_per_token_MB"):
            positive(f"contenders.{key}.{field_name}", record.get(field_name))
        if record.get("backend") == "openvino":
            positive(f"contenders.{key}.ir_size_MB", record.get("ir_size_MB"))
        for name in workloads:
            figures = section(record.get("workloads", {}), name, f"contenders.{key}.workloads.{name}")
            if figures is None:
                continue
            for figure in ("ttft_s", "tpot_s", "decode_tok_s", "e2e_s"):
                for stat in ("median", "min", "max"):
                    positive(f"contenders.{key}.workloads.{name}.{figure}.{stat}", figures.get(figure, {}).get(stat))
            for figure in ("bandwidth_bound_tok_s", "fraction_of_bound"):
                positive(f"contenders.{key}.workloads.{name}.{figure}", figures.get(figure))
        if record.get("backend") in ("pytorch", "openvino"):
            for name in workloads:
                split = record.get("stages", {}).get(name)
                if split is None:
                    problems.append(f"contenders.{key}.stages.{name} is missing")
                    continue
                for part in ("first_token", "per_token"):
                    for stage, value in split[part].items():
                        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                            problems.append(f"contenders.{key}.stages.{name}.{part}.{stage} is {value!r}, "
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
