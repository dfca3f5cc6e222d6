"""Plots of notebook 04: speed per contender, where the time goes, how cost grows, the bandwidth limit, speed
against quality. Each takes the results dict (as in ``results.json``) and returns a matplotlib figure; :func:`save`
writes it as a PNG next to the results.
"""

from __future__ import annotations

from pathlib import Path

from helpers.paths import runs_dir

BACKEND_COLORS = {"pytorch": "#dd8452", "openvino": "#4c72b0", "llama.cpp": "#55a868"}  # bars: a colour per backend
BACKEND_NAMES = {"pytorch": "PyTorch", "openvino": "OpenVINO", "llama.cpp": "llama.cpp"}
BACKEND_MARKERS = {"pytorch": "s", "openvino": "o", "llama.cpp": "^"}


def _color(record: dict) -> str:
    return BACKEND_COLORS.get(record.get("backend"), BACKEND_COLORS["openvino"])


def _contender_styles(results: dict) -> dict[str, dict]:
    """Curves and points: a fixed colour per contender (the same in every plot) and a marker per backend."""
    import matplotlib.pyplot as plt

    palette = plt.get_cmap("tab10").colors
    return {key: {"color": palette[i % len(palette)], "marker": BACKEND_MARKERS.get(r.get("backend"), "o"),
                  "label": r["label"]}
            for i, (key, r) in enumerate(results["contenders"].items())}


def _measured(results: dict, workload: str) -> list[tuple[str, dict, dict]]:
    """``(key, record, figures)`` of the contenders measured on ``workload``, in results order."""
    return [(k, r, r["workloads"][workload]) for k, r in results["contenders"].items()
            if workload in r.get("workloads", {})]


def speed_bars(results: dict, workloads: tuple[str, ...] = ("blog", "photo", "text")):
    """A row per workload, a panel per figure (TTFT, decode tokens/s, end-to-end): each contender's median, with a
    line from its fastest to its slowest timed call."""
    import matplotlib.pyplot as plt

    panels = (("ttft_s", "time to first token (s)"), ("decode_tok_s", "decode (tokens/s, higher is better)"),
              ("e2e_s", "end-to-end (s)"))
    workloads = tuple(w for w in workloads if _measured(results, w))
    height = 1.2 + 0.45 * len(results["contenders"]) * len(workloads)
    fig, axes = plt.subplots(len(workloads), len(panels), figsize=(14, height), squeeze=False)
    for row, workload in enumerate(workloads):
        measured = _measured(results, workload)
        labels = [r["label"] for _, r, _ in measured]
        for col, (name, title) in enumerate(panels):
            ax = axes[row][col]
            medians = [f[name]["median"] for _, _, f in measured]
            low = [m - f[name]["min"] for m, (_, _, f) in zip(medians, measured)]
            high = [f[name]["max"] - m for m, (_, _, f) in zip(medians, measured)]
            ax.barh(range(len(measured)), medians, xerr=[low, high], color=[_color(r) for _, r, _ in measured],
                    error_kw={"elinewidth": 1, "capsize": 2})
            for i, m in enumerate(medians):
                ax.text(m, i, f" {m:.3g}", va="center", fontsize="small", clip_on=True,
                        bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 1})
            ax.set_yticks(range(len(measured)), labels if col == 0 else [""] * len(measured))
            ax.invert_yaxis()
            if max(medians) / max(min(medians), 1e-9) > 30:
                ax.set_xscale("log")
            # the axis follows the medians; a far outlier's whisker runs off the edge rather than squash the bars
            ax.set_xlim(right=max(medians) * (3 if ax.get_xscale() == "log" else 1.35))
            ax.set_title(f"{workload}: {title}", fontsize="medium")
    fig.suptitle(_caption(results), fontsize="small")
    fig.tight_layout()
    return fig


def scaling_curves(results: dict):
    """Three panels: TTFT against image tiles, TPOT against context length, decode speed against threads."""
    import matplotlib.pyplot as plt

    scaling = results.get("scaling", {})
    styles = _contender_styles(results)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for key, rows in scaling.get("tiles", {}).items():
        axes[0].plot([r["image_tiles"] for r in rows], [r["ttft_s"] for r in rows], "-", **styles[key])
    axes[0].set(xlabel="image tiles (512x512 each, 64 tokens each)", ylabel="time to first token (s)",
                title="TTFT grows with the number of tiles")
    for key, rows in scaling.get("context", {}).items():
        axes[1].plot([r["context_tokens"] for r in rows], [1000 * r["tpot_s"] for r in rows], "-", **styles[key])
    axes[1].set(xlabel="context length (tokens)", ylabel="time per output token (ms)",
                title="TPOT against context length")
    axes[1].set_xscale("log", base=2)
    for key, rows in scaling.get("threads", {}).items():
        done = [r for r in rows if "decode_tok_s" in r]
        if done:
            axes[2].plot([r["threads"] for r in done], [r["decode_tok_s"] for r in done], "-", **styles[key])
    axes[2].set(xlabel="threads", ylabel="decode tokens/s", title="Decode speed against threads (blog workload)")
    threads = sorted({r["threads"] for rows in scaling.get("threads", {}).values() for r in rows})
    if threads:
        axes[2].set_xticks(threads)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        if ax.get_lines():
            ax.legend(fontsize="x-small")
    fig.suptitle(_caption(results), fontsize="small")
    fig.tight_layout()
    return fig


STAGE_COLORS = {"vision": "#8172b3", "text_embeddings": "#ccb974", "language_model": "#4c72b0", "rest": "#c4c4c4"}


def stage_bars(results: dict, workloads: tuple[str, ...] = ("blog", "photo")):
    """Per workload, stacked bars per contender: what the first token and one later token are made of (vision
    encoder, text embeddings, the language model, the rest of ``generate``)."""
    import matplotlib.pyplot as plt

    workloads = tuple(w for w in workloads if any(w in r.get("stages", {}) for r in results["contenders"].values()))
    rows = {w: [(r["label"], r["stages"][w]) for r in results["contenders"].values() if w in r.get("stages", {})]
            for w in workloads}
    n = max((len(v) for v in rows.values()), default=1)
    fig, axes = plt.subplots(len(workloads), 2, figsize=(14, 1.0 + 0.45 * n * len(workloads)), squeeze=False)
    for row, workload in enumerate(workloads):
        labels = [label for label, _ in rows[workload]]
        for col, (part, scale, xlabel, title) in enumerate((
                ("first_token", 1.0, "time to first token (s)", "the first token"),
                ("per_token", 1000.0, "one later token (ms)", "each later token"))):
            ax = axes[row][col]
            left = [0.0] * len(labels)
            for stage, color in STAGE_COLORS.items():
                widths = [split[part].get(stage, 0.0) * scale for _, split in rows[workload]]
                if not any(widths):
                    continue
                ax.barh(range(len(labels)), widths, left=left, color=color, label=stage.replace("_", " "))
                left = [a + b for a, b in zip(left, widths)]
            ax.set_yticks(range(len(labels)), labels if col == 0 else [""] * len(labels))
            ax.invert_yaxis()
            ax.set_xlabel(xlabel)
            ax.set_title(f"{workload}: {title}", fontsize="medium")
        axes[row][0].legend(fontsize="small", loc="lower right")
    fig.suptitle(_caption(results) + "; the rest: generate's own Python around the submodels", fontsize="small")
    fig.tight_layout()
    return fig


def bandwidth_bound(results: dict, workload: str = "blog"):
    """Per contender: measured decode tokens/s beside what memory bandwidth allows, with the fraction reached."""
    import matplotlib.pyplot as plt

    measured = [(k, r, f) for k, r, f in _measured(results, workload) if "bandwidth_bound_tok_s" in f]
    fig, ax = plt.subplots(figsize=(10, 0.6 + 0.5 * max(len(measured), 1)))
    for i, (_, r, f) in enumerate(measured):
        bound, got = f["bandwidth_bound_tok_s"], f["decode_tok_s"]["median"]
        ax.barh(i, bound, color="#dddddd", edgecolor="#999999")
        ax.barh(i, got, height=0.5, color=_color(r))
        ax.text(max(bound, got), i, f" {100 * f['fraction_of_bound']:.0f}% of {bound:.3g} tok/s "
                f"({r['lm_bytes_per_token_MB']:.3g} MB/token)", va="center", fontsize="small")
    ax.set_yticks(range(len(measured)), [r["label"] for _, r, _ in measured])
    ax.invert_yaxis()
    top = max((f["bandwidth_bound_tok_s"] for _, _, f in measured), default=1)
    ax.set_xlim(0, top * 1.9)
    ax.set_xlabel("decode tokens/s")
    bandwidth = results["machine"].get("read_bandwidth_GB_s", {}).get(str(results["machine"]["threads_used"]))
    ax.set_title(f"{workload}: decode speed against the memory-bandwidth limit "
                 f"(read bandwidth {bandwidth} GB/s, weights read once per token)", fontsize="medium")
    from matplotlib.patches import Patch

    backends = {r.get("backend") for _, r, _ in measured}
    handles = [Patch(facecolor="#dddddd", edgecolor="#999999", label="memory bandwidth allows")] + [
        Patch(color=color, label=f"measured, {BACKEND_NAMES[backend]}") for backend, color in BACKEND_COLORS.items()
        if backend in backends]
    ax.legend(handles=handles, loc="lower right", fontsize="small")
    fig.tight_layout()
    return fig


def _error(q: dict, name: str, value: float, low_limit: float | None = None) -> list[list[float]] | None:
    """matplotlib's ``yerr`` from the 95% interval ``<name>_ci`` of a quality row (``None`` without one)."""
    interval = q.get(f"{name}_ci")
    if not interval:
        return None
    low = interval[0] if low_limit is None else max(interval[0], low_limit)
    return [[max(value - low, 0.0)], [max(interval[1] - value, 0.0)]]


def speed_vs_quality(results: dict, workload: str = "blog", floor: float = 0.90):
    """A point per contender, with its 95% interval: decode speed against KL divergence, answer similarity and
    (when computed) accuracy on the text questions."""
    import matplotlib.pyplot as plt

    quality = results.get("quality", {})
    styles = _contender_styles(results)
    points = [(k, f) for k, _, f in _measured(results, workload) if k in quality]
    reference = next((k for k, q in quality.items() if q.get("reference")), None)
    with_accuracy = any(q.get("text_accuracy") is not None for q in quality.values())
    fig, axes = plt.subplots(1, 3 if with_accuracy else 2, figsize=(19 if with_accuracy else 13, 4.5))
    for key, f in points:
        q, x = quality[key], f["decode_tok_s"]["median"]
        style = {**styles[key], "markersize": 8, "capsize": 3, "linestyle": "none"}
        if key != reference:  # the reference's KL to itself is 0: nothing to put on a log scale
            kl = max(q["kl_mean"], 1e-15)
            axes[0].errorbar(x, kl, yerr=_error(q, "kl_mean", kl, 1e-15), zorder=3, **style)
        axes[1].errorbar(x, q["similarity"], yerr=_error(q, "similarity", q["similarity"]), zorder=3, **style)
        if with_accuracy and q.get("text_accuracy") is not None:
            axes[2].errorbar(x, q["text_accuracy"], yerr=_error(q, "text_accuracy", q["text_accuracy"]), zorder=3,
                             **style)
    axes[0].set_yscale("log")
    axes[0].set(xlabel=f"decode tokens/s ({workload})", ylabel="KL(reference || contender), nats (lower is better)",
                title="Speed against next-token divergence")
    axes[1].axhline(floor, color="#c44e52", linestyle="--", linewidth=1)
    axes[1].text(axes[1].get_xlim()[0], floor, f" floor {floor}", color="#c44e52", va="bottom", fontsize="small")
    axes[1].set(xlabel=f"decode tokens/s ({workload})", ylabel="answer similarity to reference (higher is better)",
                title="Speed against answer similarity")
    if with_accuracy:
        axes[2].set(xlabel=f"decode tokens/s ({workload})", ylabel="share of text questions right",
                    title="Speed against accuracy (text questions)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    label = results["contenders"].get(reference, {}).get("label", reference)
    fig.suptitle(_caption(results) + f"; reference: {label}; bars: 95% intervals over the questions",
                 fontsize="small")
    fig.tight_layout()
    return fig


def _caption(results: dict) -> str:
    m, model = results["machine"], results["model"]
    return (f"{model['slug']}{' (stand-in, random weights)' if model['stand_in'] else ''} on {m['cpu_model']}, "
            f"{m['threads_used']} threads" + (" — QUICK MODE, not for quoting" if results.get("quick_mode") else ""))


def save(fig, name: str, folder: Path | None = None) -> Path:
    """Write ``fig`` as ``<runs dir>/figures/<name>.png`` and return the path."""
    folder = Path(folder or runs_dir() / "figures")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
