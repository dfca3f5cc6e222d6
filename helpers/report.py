"""Notebook 04's results: results.json (save, load, check; its fields are described in the README), the tables
and Markdown, the speed-ups against the source blog and against llama.cpp, and the recommendation.
:mod:`helpers.bench` measures; this module only arranges what it measured.
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

def recommend(results: dict, floor: float = 0.90) -> dict[str, dict]:
    """The contender to pick for photos (lowest photo TTFT) and for long answers (fastest text decoding) among
    those whose answer similarity is at least ``floor``, each with its figure and the runner-up."""
    quality = results.get("quality", {})
    picks = {}
    for purpose, workload, figure, highest in (("photos", "photo", "ttft_s", False),
                                               ("long answers", "text", "decode_tok_s", True)):
        measured = {k: r["workloads"][workload][figure]["median"] for k, r in results["contenders"].items()
                    if workload in r.get("workloads", {}) and quality.get(k, {}).get("similarity", 0) >= floor}
        if not measured:
            continue
        ranked = sorted(measured, key=measured.get, reverse=highest)
        pick, runner_up = ranked[0], (ranked[1] if len(ranked) > 1 else None)
        picks[purpose] = {"contender": pick, "label": results["contenders"][pick]["label"], "workload": workload,
                          figure: measured[pick], "similarity": quality[pick]["similarity"],
                          "runner_up": runner_up, "runner_up_" + figure: measured.get(runner_up)}
    return picks


# --- tables and comparisons ------------------------------------------------------------------------------------------


def _median(records: dict[str, dict], key: str | None, workload: str, figure: str) -> float | None:
    return records.get(key, {}).get("workloads", {}).get(workload, {}).get(figure, {}).get("median")


def _speedup(numerator: float | None, denominator: float | None) -> float | None:
    return round(numerator / denominator, 2) if numerator and denominator else None


# (title, faster contender, slower contender); the source's figure is shown where it measured both
COMPARISONS = (
    ("OpenVINO FP32 vs PyTorch FP32", "openvino-fp32", "pytorch-fp32"),
    ("OpenVINO FP32 vs PyTorch BF16", "openvino-fp32", "pytorch-bf16"),
    ("OpenVINO INT8 vs OpenVINO FP32", "openvino-int8", "openvino-fp32"),
    ("OpenVINO INT4 vs OpenVINO FP32", "openvino-int4", "openvino-fp32"),
    ("OpenVINO mixed + INT4 vs OpenVINO FP32", "openvino-mixed-int4", "openvino-fp32"),
)


def comparison(records: dict[str, dict], workloads: Sequence[str] = ("blog", "photo")) -> list[dict]:
    """TTFT and decode speed-ups of each pair of :data:`COMPARISONS`, ours per workload beside the source's
    (blog workload only). Pairs not measured are left out."""
    src = SOURCE_TABLE["rows"]
    rows = []
    for title, fast, slow in COMPARISONS:
        if fast not in records or slow not in records:
            continue
        for figure, name in (("TTFT speed-up", "ttft_s"), ("decode speed-up", "decode_tok_s")):
            num, den = (slow, fast) if name == "ttft_s" else (fast, slow)  # times: slow / fast; speeds: fast / slow
            rows.append({"comparison": title, "figure": figure,
                         "source (blog workload)": _speedup(src[num][name], src[den][name])
                         if num in src and den in src else None,
                         **{f"ours ({w})": _speedup(_median(records, num, w, name), _median(records, den, w, name))
                            for w in workloads}})
    return rows


# The same bits per weight in both runtimes: the FP32 IR (computed in bf16 where the CPU has it) beside llama.cpp's
# F16, 8-bit beside Q8_0, 4-bit beside Q4_0.
PEER_PAIRS = (("openvino-fp32", "llamacpp-f16"), ("openvino-int8", "llamacpp-q8_0"), ("openvino-int4", "llamacpp-q4_0"))


def peer_comparison(records: dict[str, dict], workloads: Sequence[str] = ("blog", "photo", "text")) -> list[dict]:
    """OpenVINO against llama.cpp per workload: each pair of :data:`PEER_PAIRS`, then the fastest of each runtime;
    speed-ups are OpenVINO's over llama.cpp's (above 1: OpenVINO is faster). Pairs not measured are left out."""

    def best(backend: str, workload: str, figure: str, fastest) -> str | None:
        keys = [k for k, r in records.items() if r.get("backend") == backend and _median(records, k, workload, figure)]
        return fastest(keys, key=lambda k: _median(records, k, workload, figure)) if keys else None

    rows = []
    for w in workloads:
        pairs = [(ov, cpp, "same bits per weight") for ov, cpp in PEER_PAIRS] + [
            (best("openvino", w, "ttft_s", min), best("llama.cpp", w, "ttft_s", min), "fastest first token of each"),
            (best("openvino", w, "decode_tok_s", max), best("llama.cpp", w, "decode_tok_s", max),
             "fastest decoding of each")]
        for ov, cpp, why in pairs:
            ov_ttft, cpp_ttft = _median(records, ov, w, "ttft_s"), _median(records, cpp, w, "ttft_s")
            if not (ov_ttft and cpp_ttft):
                continue
            ov_decode, cpp_decode = _median(records, ov, w, "decode_tok_s"), _median(records, cpp, w, "decode_tok_s")
            rows.append({"workload": w, "pair": why, "OpenVINO": ov, "llama.cpp": cpp,
                         "TTFT (s), OpenVINO": ov_ttft, "TTFT (s), llama.cpp": cpp_ttft,
                         "TTFT speed-up": _speedup(cpp_ttft, ov_ttft),
                         "decode (tok/s), OpenVINO": ov_decode, "decode (tok/s), llama.cpp": cpp_decode,
                         "decode speed-up": _speedup(ov_decode, cpp_decode)})
    return rows


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


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in rows])


def _cell(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def markdown_table(results: dict, workload: str = "blog", digits: int = 3) -> str:
    """:func:`speed_table` as a Markdown table (for the README), with the machine and model in a caption line."""
    table = speed_table(results, workload)
    m = results["machine"]
    bandwidth = m.get("read_bandwidth_GB_s", {}).get(str(m["threads_used"]))
    caption = (f"*{workload} workload ({results['workloads'][workload]['description']}); "
               f"model {results['model']['slug']}"
               f"{' (stand-in: random weights)' if results['model']['stand_in'] else ''}; {m['cpu_model']}, "
               f"{m['threads_used']} threads"
               + (f", read bandwidth {bandwidth} GB/s" if bandwidth else "") + "; medians.*")
    rows = [[str(key)] + [_cell(v, digits) for v in row] for key, row in table.iterrows()]
    return caption + "\n\n" + _markdown(["contender"] + [str(c) for c in table.columns], rows)


def comparison_markdown(results: dict) -> str:
    """The source-vs-ours speed-up table (``results["comparison"]``) as Markdown."""
    rows = results["comparison"]
    columns = list(rows[0]) if rows else []
    return _markdown(columns, [[_cell(row[c], 3) + ("x" if isinstance(row[c], float) else "") for c in columns]
                               for row in rows])


def check_results(results: dict, contenders: Sequence[str], workloads: Sequence[str]) -> list[str]:
    """Problems with a results dict: a missing contender, workload or section, or a figure out of range (most must
    be positive and finite). An empty list means the file is complete."""
    problems = []

    def check(path: str, value, ok=lambda v: v > 0 and not isinstance(v, bool),
              expected: str = "a positive finite number") -> None:
        if not (isinstance(value, (int, float)) and math.isfinite(value) and ok(value)):
            problems.append(f"{path} is {value!r}, not {expected}")

    def section(parent: dict, key: str, path: str):
        value = parent.get(key)
        if value is None:
            problems.append(f"{path} is missing")
        return value

    machine = results.get("machine", {})
    if not machine.get("cpu_model"):
        problems.append("machine.cpu_model is missing")
    check("machine.threads_used", machine.get("threads_used"))
    bandwidth = machine.get("read_bandwidth_GB_s") or {}
    if not bandwidth:
        problems.append("machine.read_bandwidth_GB_s is missing")
    for n, value in bandwidth.items():
        check(f"machine.read_bandwidth_GB_s.{n}", value)
    if not results.get("versions", {}).get("openvino"):
        problems.append("versions.openvino is missing")
    for name in workloads:
        facts = section(results.get("workloads", {}), name, f"workloads.{name}")
        if facts is not None:
            photo = ("image_tiles",) if facts.get("photo") else ()
            for key in ("prompt_tokens", "new_tokens", "preprocess_s") + photo:
                check(f"workloads.{name}.{key}", facts.get(key))
    for key in contenders:
        record = section(results.get("contenders", {}), key, f"contenders.{key}")
        if record is None:
            continue
        if "error" in record:
            problems.append(f"contenders.{key} was not measured: {record['error']}")
            continue
        path = f"contenders.{key}"
        for field_name in ("load_compile_s", "peak_rss_MB", "lm_bytes_per_token_MB"):
            check(f"{path}.{field_name}", record.get(field_name))
        if record.get("backend") == "openvino":
            check(f"{path}.ir_size_MB", record.get("ir_size_MB"))
        for name in workloads:
            figures = section(record.get("workloads", {}), name, f"{path}.workloads.{name}")
            if figures is None:
                continue
            for figure in ("ttft_s", "tpot_s", "decode_tok_s", "e2e_s"):
                for stat in ("median", "min", "max"):
                    check(f"{path}.workloads.{name}.{figure}.{stat}", figures.get(figure, {}).get(stat))
            for figure in ("bandwidth_bound_tok_s", "fraction_of_bound"):
                check(f"{path}.workloads.{name}.{figure}", figures.get(figure))
        for name in workloads if record.get("backend") in ("pytorch", "openvino") else ():
            split = section(record.get("stages", {}), name, f"{path}.stages.{name}")
            if split is None:
                continue
            for part in ("first_token", "per_token"):
                for stage, value in split[part].items():
                    check(f"{path}.stages.{name}.{part}.{stage}", value, lambda v: v >= 0, "a number >= 0")
        q = section(results.get("quality", {}), key, f"quality.{key}")
        if q is None:
            continue
        for figure in ("token_agreement", "similarity", "repetition_rate"):
            check(f"quality.{key}.{figure}", q.get(figure), lambda v: -1 <= v <= 1, "a number in [-1, 1]")
        for figure in ("accuracy", "text_accuracy"):
            if q.get(figure) is not None:
                check(f"quality.{key}.{figure}", q[figure], lambda v: 0 <= v <= 1, "null or a share in [0, 1]")
        check(f"quality.{key}.kl_mean", q.get("kl_mean"), lambda v: v >= 0, "a finite number >= 0")
    scaling = results.get("scaling", {})
    for part, names in (("tiles", ["ttft_s"]), ("context", ["tpot_s"]),
                        ("threads", ["ttft_s", "tpot_s", "decode_tok_s"])):
        curves = section(scaling, part, f"scaling.{part}") or {}
        for key, rows in curves.items():
            for i, row in enumerate(rows):
                if "skipped" not in row:
                    for name in names:
                        check(f"scaling.{part}.{key}[{i}].{name}", row.get(name))
    if not results.get("comparison"):
        problems.append("comparison is missing")
    return problems
