"""``make run``: execute the notebooks in order into the runs folder (.ipynb and .html), then write ``RESULTS.md``
from ``results.json``; ``run_summary.json`` records each notebook's time and peak memory, the model folders it
built, and the install (PyTorch build, size of the virtual environment). Stops at the first failing notebook.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
from pathlib import Path

from helpers import machine, quality, report, store
from helpers.models import ModelUnavailableError, resolve_model, show_banner


def _folders(parent: Path) -> set[str]:
    return {p.name for p in parent.iterdir() if p.is_dir()} if parent.is_dir() else set()


def execute_notebook(path: Path, out_dir: Path) -> dict:
    """Execute one notebook cell by cell with a progress bar; write executed .ipynb and .html to ``out_dir``."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, DeadKernelError
    from nbconvert import HTMLExporter
    from tqdm import tqdm

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=None, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    record: dict = {"notebook": path.name, "status": "ok", "kernel_peak_MB": None}
    start = time.perf_counter()
    try:
        with client.setup_kernel():
            for index in tqdm([i for i, c in enumerate(nb.cells) if c.cell_type == "code"], desc=path.stem,
                              unit="cell", file=sys.stdout):
                client.execute_cell(nb.cells[index], index)
                # the kernel's own high-water mark (VmHWM): its peak resident memory, without sampling
                record["kernel_peak_MB"] = machine.peak_rss_mb(client.km.provisioner.pid)
            client.set_widgets_metadata()  # so the executed .ipynb and .html show the widgets, not just text
    except CellExecutionError as err:
        record.update(status="failed", error=re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip().splitlines()[-1][:500])
    except DeadKernelError:
        record.update(status="failed", error="the notebook's Python process (its kernel) died, often from running out "
                                             "of memory: close other programs, or run the notebook alone to see where")
    finally:
        record["seconds"] = round(time.perf_counter() - start, 1)
        out_dir.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out_dir / path.name)
        (out_dir / f"{path.stem}.html").write_text(HTMLExporter().from_notebook_node(nb)[0])
    return record


def install_facts() -> dict:
    """Which PyTorch build this environment has (CPU-only, or with CUDA libraries) and how big it is."""
    import torch

    venv = Path(sys.prefix)
    size = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink())
    return {"torch": torch.__version__, "torch_build": "CPU-only" if torch.version.cuda is None
            else f"with CUDA {torch.version.cuda} libraries", "venv": str(venv), "venv_GB": round(size / 1e9, 2)}


def _markdown_table(table) -> str:
    def cell(v) -> str:
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else \
            f"{v:.3g}" if isinstance(v, float) else str(v)

    header = [table.index.name or "", *map(str, table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return "\n".join(lines + ["| " + " | ".join([str(i), *map(cell, row)]) + " |" for i, row in table.iterrows()])


def results_markdown(results: dict) -> str:
    """``RESULTS.md``: the machine, each workload's speed table, quality, the recommendation, the source's ratios,
    and notebook 05's limits where it ran."""
    import pandas as pd

    m, model = results.get("machine", {}), results.get("model", {})
    parts = [f"# Results of `make run` ({results.get('created', '')})",
             f"Model `{model.get('slug')}`{' (stand-in: ' + model.get('note', '') + ')' if model.get('stand_in') else ''}"
             f"; {m.get('cpu_model')}, {m.get('threads_used')} threads, OpenVINO CPU capabilities "
             f"{', '.join(m.get('openvino_capabilities', []))}; plan `{results.get('plan', {}).get('mode')}`; "
             f"medians of the timed calls. Versions: "
             + ", ".join(f"{k} {v}" for k, v in results.get("versions", {}).items()) + "."]
    for name, facts in results.get("workloads", {}).items():
        parts += [f"## {name}: {facts['description']} ({facts['prompt_tokens']} prompt tokens)",
                  _markdown_table(report.speed_table(results, name).drop(columns=["error"], errors="ignore"))]
    if results.get("quality"):
        parts += ["## Quality against the baseline (95% intervals over the questions)",
                  _markdown_table(quality.summary_table(results["quality"]))]
    parts += ["## Which one to pick", report.recommendation_text(results)]
    if results.get("contenders"):
        parts += ["## The source's speed-ups beside ours (blog workload)",
                  _markdown_table(pd.DataFrame(report.source_comparison(results)).set_index("comparison"))]
    for section, rows in results.get("deep_dives", {}).get("tables", {}).items():
        parts += [f"## {section} (notebook 05)", _markdown_table(pd.DataFrame(rows).T.rename_axis(""))]
    return "\n\n".join(parts) + "\n"


def write_results_markdown(results_path: Path | None = None) -> Path | None:
    """Write ``RESULTS.md`` beside ``results.json`` (after the notebooks); ``None`` when there is no result yet."""
    results = report.load(results_path)
    if not results.get("contenders"):
        return None
    path = Path(results_path or store.runs_dir() / report.RESULTS_FILE).with_name("RESULTS.md")
    path.write_text(results_markdown(results))
    return path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # PyTorch's idle threads sleep (notebook 05 measures why)
    notebooks = sorted((store.REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    notebooks = [nb for nb in notebooks if not argv or any(nb.name.startswith(a) for a in argv)]
    start = time.perf_counter()
    try:
        choice = resolve_model()  # fail fast, before any kernel starts, with one clear sentence
    except ModelUnavailableError as err:
        print(f"\n{err}\n", file=sys.stderr)
        return 2
    out_dir, model_folders = store.runs_dir(), store.models_dir() / choice.slug
    print(f"Running {len(notebooks)} notebooks with model {choice.slug!r} into {out_dir}")
    if choice.is_standin:
        print(show_banner(choice).text)
    from helpers.bench import plan_mode

    summary = {"model": choice.requested, "resolved": choice.slug, "stand_in": choice.is_standin,
               "fell_back": choice.fell_back, "resolve_model_s": round(time.perf_counter() - start, 1),
               "plan": plan_mode(), "install": install_facts(), "notebooks": []}
    cold = not _folders(model_folders)  # this run began with no model folder (the stand-in may be cached)
    # `make run NOTEBOOKS=04` after a full run keeps the other notebooks' records of the same model
    earlier = store.read_json(out_dir / "run_summary.json") or {}
    done = [r for r in earlier.get("notebooks", []) if earlier.get("resolved") == choice.slug]
    for nb in notebooks:
        before = _folders(model_folders)
        record = execute_notebook(nb, out_dir)
        record.update(cold_start=cold, built=sorted(_folders(model_folders) - before))
        done = sorted([r for r in done if r.get("notebook") != nb.name] + [record], key=lambda r: r["notebook"])
        summary["notebooks"] = done
        print(f"  {nb.name}: {record['status']} in {record['seconds']} s, kernel peak memory "
              f"{record['kernel_peak_MB']} MB")
        report.save(summary, out_dir / "run_summary.json")  # atomically, as results.json
        if record["status"] != "ok":
            print(f"\n{nb.name} failed: {record.get('error', '')}\nSee {out_dir / (nb.stem + '.html')}",
                  file=sys.stderr)
            return 1
    written = write_results_markdown()
    print(f"All notebooks ran. Open {out_dir} for the executed notebooks and HTML"
          + (f"; the figures are summed up in {written}." if written else "."))
    return 0


if __name__ == "__main__":
    sys.exit(main())
