"""Notebook 04's plots: speed per contender (with the spread of the timed calls) and speed against quality (with
95% intervals). Each takes the results dict (as in ``results.json``) and returns a matplotlib figure; :func:`save`
writes it as a PNG beside the results."""

from __future__ import annotations

from pathlib import Path

from helpers import quality, store

COLORS = {"pytorch": "#dd8452", "openvino": "#4c72b0", "llama.cpp": "#55a868"}


def _color(key: str) -> str:
    return next((c for prefix, c in COLORS.items() if key.startswith(prefix.split(".")[0])), "#4c72b0")


def caption(results: dict) -> str:
    m, model = results["machine"], results["model"]
    return (f"{model['slug']}{' (stand-in)' if model['stand_in'] else ''} on {m['cpu_model']}, {m['threads_used']} "
            f"threads" + (" (QUICK MODE: only checks that everything runs, not for quoting)"
                          if results["plan"]["mode"] == "quick" else ""))


def speed_bars(results: dict):
    """A row per workload, a panel per figure (TTFT, decode tokens/s): each contender's median, with a line from
    its fastest to its slowest timed call."""
    import matplotlib.pyplot as plt

    workloads = list(results["workloads"])
    keys = [k for k, r in results["contenders"].items() if "workloads" in r]
    fig, axes = plt.subplots(len(workloads), 2, figsize=(12, 1 + 0.4 * len(keys) * len(workloads)), squeeze=False)
    for row, workload in enumerate(workloads):
        for col, (figure, title) in enumerate((("ttft_s", "time to first token (s)"),
                                               ("decode_tok_s", "decode tokens/s (higher is better)"))):
            stats = [results["contenders"][k]["workloads"][workload][figure] for k in keys]
            medians = [s["median"] for s in stats]
            error = [[m - s["min"] for m, s in zip(medians, stats)], [s["max"] - m for m, s in zip(medians, stats)]]
            ax = axes[row][col]
            ax.barh(range(len(keys)), medians, xerr=error, color=[_color(k) for k in keys], capsize=2)
            for i, m in enumerate(medians):
                ax.text(m, i, f" {m:.3g}", va="center", fontsize="small")
            ax.set_yticks(range(len(keys)), keys if col == 0 else [""] * len(keys))
            ax.invert_yaxis()
            ax.set_xlim(right=max(medians) * 1.3)
            ax.set_title(f"{workload}: {title}", fontsize="medium")
    fig.suptitle(caption(results), fontsize="small")
    fig.tight_layout()
    return fig


def speed_vs_quality(results: dict, workload: str = "text"):
    """A point per contender: decode speed against token agreement with the baseline (and against text accuracy,
    where the language model is real), each with its 95% interval; the line is the agreement floor."""
    import matplotlib.pyplot as plt

    scores = results.get("quality", {})
    points = [k for k in scores if "workloads" in results["contenders"].get(k, {})]
    panels = [("token_agreement", "token agreement with the baseline")]
    if any(scores[k].get("text_accuracy") is not None for k in points):
        panels.append(("text_accuracy", "share of text questions right"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), squeeze=False)
    for ax, (name, label) in zip(axes[0], panels):
        for key in points:
            x, y, ci = results["contenders"][key]["workloads"][workload]["decode_tok_s"]["median"], \
                scores[key][name], scores[key][f"{name}_ci"]
            ax.errorbar(x, y, yerr=[[y - ci[0]], [ci[1] - y]], fmt="o", capsize=3, color=_color(key))
            ax.annotate(key, (x, y), fontsize="x-small", xytext=(4, 4), textcoords="offset points")
        if name == "token_agreement":
            ax.axhline(quality.AGREEMENT_FLOOR, color="#c44e52", linestyle="--", linewidth=1)
        ax.set(xlabel=f"decode tokens/s ({workload} workload)", ylabel=label)
        ax.grid(alpha=0.3)
    fig.suptitle(caption(results) + "; bars: 95% intervals over the questions", fontsize="small")
    fig.tight_layout()
    return fig


def save(fig, name: str) -> Path:
    """Write ``fig`` as ``<runs dir>/figures/<name>.png`` and return the path."""
    folder = store.runs_dir() / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    fig.savefig(folder / f"{name}.png", dpi=110, bbox_inches="tight")
    return folder / f"{name}.png"
