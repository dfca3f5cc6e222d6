"""``results.json`` (every figure notebooks 04 and 05 measure), the tables and the recommendation (``make run``
writes ``RESULTS.md`` from them). :mod:`helpers.bench` measures; this module only arranges what was measured.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from helpers import quality, store

RESULTS_FILE = "results.json"
# The source blog's table (Hugging Face, "Get your VLM running in 3 simple steps on Intel CPUs", Oct 2025): Core
# Ultra 7 265K, 20 cores, OpenVINO 2025.2, one 512x512 tile, 16 new tokens.
SOURCE = {"pytorch-fp32": {"ttft_s": 5.15, "decode_tok_s": 0.72}, "openvino-fp32": {"ttft_s": 0.420,
          "decode_tok_s": 47.2}, "openvino-int8": {"ttft_s": 0.247, "decode_tok_s": 63.9}}
PURPOSES = {"photos": ("photo", "ttft_s", False), "long answers": ("text", "decode_tok_s", True)}


def save(results: dict, path: Path | None = None) -> Path:
    """Write ``results`` to ``results.json`` in the runs folder (atomically: a temporary file of this writer's own,
    renamed into place, so two writers never mix their text)."""
    path = Path(path or store.runs_dir() / RESULTS_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2, default=lambda v: v.item() if hasattr(v, "item") else str(v))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".partial")
    try:
        with os.fdopen(fd, "w") as file:
            file.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)  # a full disk leaves nothing half-written behind
        raise
    return path


def load(path: Path | None = None) -> dict:
    """The results file :func:`save` wrote (``{}`` when there is none yet)."""
    return store.read_json(Path(path or store.runs_dir() / RESULTS_FILE)) or {}


def _figure(record: dict, workload: str, figure: str, stat: str = "median") -> float | None:
    return record.get("workloads", {}).get(workload, {}).get(figure, {}).get(stat)


def speed_table(results: dict, workload: str):
    """One row per contender on ``workload``: medians of TTFT, TPOT, decode speed, end-to-end (with the spread
    of the timed calls), load time, peak memory, the CPU share other programs took."""
    import pandas as pd

    rows = {}
    for key, r in results["contenders"].items():
        get = lambda figure, stat="median": _figure(r, workload, figure, stat)  # noqa: E731
        rows[key] = {"computes in": r.get("precision"), "TTFT (s)": get("ttft_s"),
                     "TPOT (ms)": get("tpot_s") and 1000 * get("tpot_s"), "decode (tok/s)": get("decode_tok_s"),
                     "end-to-end (s)": get("e2e_s"),
                     "spread (s)": get("e2e_s") and f"{get('e2e_s', 'min'):.3g}-{get('e2e_s', 'max'):.3g}",
                     "load (s)": r.get("load_s"), "peak RSS (MB)": r.get("peak_rss_MB"),
                     "others' CPU": r.get("other_processes_cpu_share"), "error": r.get("error")}
    return pd.DataFrame(rows).T.rename_axis("contender").dropna(axis=1, how="all")


def recommend(results: dict) -> dict:
    """Per purpose, the fastest contender whose quality holds (:func:`helpers.quality.verdict`), the contenders
    within noise of it (their fastest-to-slowest ranges of timed calls overlap), faster ones whose quality the
    questions were too few to judge, and the figures the pick rests on."""
    scores, picks = results.get("quality", {}), {}
    verdicts = {k: "baseline" if s["baseline"] else quality.verdict(s) for k, s in scores.items()}
    for purpose, (workload, figure, higher) in PURPOSES.items():
        measured = {k: r for k, r in results["contenders"].items() if _figure(r, workload, figure)}
        ranked = sorted(measured, key=lambda k: _figure(measured[k], workload, figure), reverse=higher)
        held = [k for k in ranked if verdicts.get(k) in ("holds", "baseline")]
        if not held:
            continue
        pick = held[0]
        low, high = (_figure(measured[pick], workload, figure, s) for s in ("min", "max"))
        picks[purpose] = {
            "contender": pick, "workload": workload, figure: _figure(measured[pick], workload, figure),
            "within_noise": [k for k in held[1:] if _figure(measured[k], workload, figure, "min") <= high
                             and _figure(measured[k], workload, figure, "max") >= low],
            "faster_but_unclear": [k for k in ranked[:ranked.index(pick)] if verdicts.get(k) != "worse"],
            "faster_but_worse": [k for k in ranked[:ranked.index(pick)] if verdicts.get(k) == "worse"],
            "figures": [f"{figure} on the {workload} workload (median and range of the timed calls)",
                        f"token agreement with the baseline, 95% interval against {quality.AGREEMENT_FLOOR}",
                        "accuracy against the baseline's, paired 95% interval (where the weights are real)"]}
    return picks


def recommendation_text(results: dict) -> str:
    """:func:`recommend` in sentences, naming the figures."""
    picks, scores, lines = results.get("recommendation") or recommend(results), results.get("quality", {}), []
    if not picks:
        return "No recommendation: no contender's quality could be compared with the baseline's."
    for purpose, p in picks.items():
        figure = "ttft_s" if "ttft_s" in p else "decode_tok_s"
        unit = "s to the first token" if figure == "ttft_s" else "tokens/s"
        line = f"For {purpose}: {p['contender']}, {p[figure]:.3g} {unit} on the {p['workload']} workload"
        if p["within_noise"]:
            line += f"; within the noise of the timings: {', '.join(p['within_noise'])}"
        for key in p["faster_but_unclear"]:
            if key not in scores:  # timed, but its answers were not scored (it failed there)
                line += f"; {key} is faster, but its quality was not measured"
                continue
            ci = scores[key]["token_agreement_ci"]
            line += (f"; {key} is faster, but {scores[key]['samples']} questions are too few to tell whether its "
                     f"quality holds (token agreement [{ci[0]:.2f}, {ci[1]:.2f}])")
        if p["faster_but_worse"]:
            line += f"; faster but worse than the baseline beyond noise: {', '.join(p['faster_but_worse'])}"
        lines.append(line + ".")
    return "\n".join(lines)


def source_comparison(results: dict) -> list[dict]:
    """Speed-ups on the blog workload beside the source's: OpenVINO FP32 over PyTorch FP32, INT8 over FP32."""
    records, rows = results["contenders"], []
    for fast, slow in (("openvino-fp32", "pytorch-fp32"), ("openvino-int8", "openvino-fp32")):
        for figure, name in (("ttft_s", "TTFT speed-up"), ("decode_tok_s", "decode speed-up")):
            num, den = (slow, fast) if figure == "ttft_s" else (fast, slow)
            ours = [_figure(records.get(k, {}), "blog", figure) for k in (num, den)]
            rows.append({"comparison": f"{fast} over {slow}", "figure": name,
                         "source": round(SOURCE[num][figure] / SOURCE[den][figure], 2),
                         "ours": round(ours[0] / ours[1], 2) if all(ours) else None})
    return rows
