"""``make run``: execute every notebook under ``notebooks/`` in order into ``runs/latest/`` (.ipynb and .html),
recording each one's wall time, peak memory (kernel and children, :class:`helpers.memory.PeakMemory`) and the model
folders it built in ``run_summary.json``; stops at the first failing notebook, keeping its partial output.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from helpers import atomic, bench
from helpers.memory import PeakMemory
from helpers.models import ModelUnavailableError, resolve_model, show_banner
from helpers.paths import REPO_ROOT, models_dir, runs_dir


def _folders(parent: Path) -> set[str]:
    return {p.name for p in parent.iterdir() if p.is_dir()} if parent.is_dir() else set()


def execute_notebook(path: Path, out_dir: Path) -> dict:
    """Execute one notebook cell by cell with a progress bar; write executed .ipynb and .html to ``out_dir``."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from nbconvert import HTMLExporter
    from tqdm import tqdm

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=None, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    record: dict = {"notebook": path.name, "status": "ok"}
    sampler = None
    start = time.perf_counter()
    try:
        with client.setup_kernel(), PeakMemory(client.km.provisioner.pid, children=True, interval=0.5) as sampler:
            for index in tqdm(code_cells, desc=path.stem, unit="cell", file=sys.stdout):
                client.execute_cell(nb.cells[index], index)
            client.set_widgets_metadata()  # so the executed .ipynb and .html show the widgets, not just text
    except CellExecutionError as err:
        record["status"] = "failed"
        record["error"] = str(err).strip().splitlines()[-1][:500]
    finally:
        record["seconds"] = round(time.perf_counter() - start, 1)
        out_dir.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out_dir / path.name)
        html, _ = HTMLExporter().from_notebook_node(nb)
        (out_dir / f"{path.stem}.html").write_text(html)
    record["peak_memory_MB"] = round(sampler.peak_bytes / 1e6, 1) if sampler else None
    record["memory_sampler_cpu_s"] = round(sampler.sampler_cpu_s, 3) if sampler else None  # what sampling cost
    return record


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # the kernels inherit it (helpers/busy.py says why)
    notebooks = sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if argv:
        notebooks = [nb for nb in notebooks if any(nb.name.startswith(a) for a in argv)]
    start = time.perf_counter()
    try:
        choice = resolve_model()  # fail fast, before any kernel starts, with one clear sentence
    except ModelUnavailableError as err:
        print(f"\n{err}\n", file=sys.stderr)
        return 2
    resolve_s = round(time.perf_counter() - start, 1)  # a stand-in is built here the first time
    model_folders = models_dir() / choice.slug
    out_dir = runs_dir()
    print(f"Running {len(notebooks)} notebooks with model {choice.slug!r} into {out_dir}")
    if choice.is_standin:
        print(show_banner(choice).text)
    summary = {"model": choice.requested, "resolved": choice.slug, "stand_in": choice.is_standin,
               "fell_back": choice.fell_back, "resolve_model_s": resolve_s, "plan": bench.plan_mode(), "notebooks": []}
    cold = not _folders(model_folders)  # cold: this run began with no model folder (the stand-in may be cached)
    # `make run NOTEBOOKS=04` after a full run keeps the other notebooks' records of the same model
    earlier = atomic.read_record(out_dir / "run_summary.json") or {}
    kept = earlier.get("notebooks", []) if earlier.get("resolved") == choice.slug else []
    done = []
    for nb in notebooks:
        before = _folders(model_folders)
        record = execute_notebook(nb, out_dir)
        record.update(cold_start=cold, built=sorted(_folders(model_folders) - before))
        done.append(record)
        ran = {r["notebook"] for r in done}
        summary["notebooks"] = sorted([r for r in kept if r.get("notebook") not in ran] + done,
                                      key=lambda r: r["notebook"])
        print(f"  {nb.name}: {record['status']} in {record['seconds']} s, "
              f"peak memory {record['peak_memory_MB']} MB (RSS)")
        (out_dir / "run_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if record["status"] != "ok":
            print(f"\n{nb.name} failed: {record.get('error', '')}\nSee {out_dir / (nb.stem + '.html')}",
                  file=sys.stderr)
            return 1
    print(f"All notebooks ran. Open {out_dir} for the executed notebooks and HTML.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
