"""helpers.run_series: notebooks executed as `make run` executes them, each with its time and the kernel's peak
memory, the install recorded, RESULTS.md written from results.json."""

from __future__ import annotations

import json
import re

import nbformat

from helpers import report, run_series, store


def _notebook(path, *sources: str):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def test_a_notebook_runs_with_its_time_and_memory(tmp_path):
    path = _notebook(tmp_path / "01_alloc.ipynb",
                     "import numpy, time\nblock = numpy.ones(50_000_000)  # 400 MB\ntime.sleep(1.5)", "del block",
                     "print('done')")
    record = run_series.execute_notebook(path, tmp_path / "out")
    assert record["status"] == "ok" and record["seconds"] > 1.5 and "error" not in record
    assert record["kernel_peak_MB"] > 400  # the kernel's high-water mark: the block, though freed before the end
    assert "done" in (tmp_path / "out" / "01_alloc.ipynb").read_text()
    assert (tmp_path / "out" / "01_alloc.html").stat().st_size > 1000


def test_a_failing_notebook_is_recorded_with_its_error(tmp_path):
    path = _notebook(tmp_path / "02_fail.ipynb", "raise RuntimeError('no such photo')", "print('after' + 'wards')")
    record = run_series.execute_notebook(path, tmp_path / "out")
    assert record["status"] == "failed" and "no such photo" in record["error"]
    executed = (tmp_path / "out" / "02_fail.ipynb").read_text()
    assert "no such photo" in executed and "afterwards" not in executed  # stopped at the failing cell


def test_a_notebook_whose_kernel_dies_is_recorded_in_one_sentence(tmp_path):
    path = _notebook(tmp_path / "03_dies.ipynb", "import os\nos._exit(9)  # as the kernel killed for lack of memory",
                     "print('never')")
    record = run_series.execute_notebook(path, tmp_path / "out")
    assert record["status"] == "failed" and record["error"].startswith("the notebook's Python process (its kernel) died")
    assert (tmp_path / "out" / "03_dies.html").is_file()


def test_the_install_is_recorded():
    import sys

    import torch

    facts = run_series.install_facts()
    assert facts["torch"] == torch.__version__ and facts["venv"] == sys.prefix and facts["venv_GB"] > 0
    assert facts["torch_build"] == ("CPU-only" if torch.version.cuda is None
                                    else f"with CUDA {torch.version.cuda} libraries")


def _results() -> dict:
    """The smallest results.json notebook 04 writes with a measured contender."""
    figure = {"median": 0.5, "min": 0.4, "max": 0.6, "n": 2}
    workloads = {w: dict.fromkeys(("ttft_s", "tpot_s", "decode_tok_s", "e2e_s"), figure) for w in ("blog", "text")}
    return {"created": "2025-10-15 12:00:00", "plan": {"mode": "quick"},
            "machine": {"cpu_model": "a CPU", "threads_used": 2, "openvino_capabilities": ["FP32"]},
            "model": {"slug": "synthetic-tiny", "stand_in": True, "note": "a stand-in"},
            "workloads": {"blog": {"description": "one tile", "prompt_tokens": 81},
                          "text": {"description": "no image", "prompt_tokens": 20}},
            "contenders": {"openvino-fp32": {"load_s": 1.0, "peak_rss_MB": 900, "precision": "float32",
                                             "workloads": workloads}}}


def test_make_run_executes_the_notebooks_in_order_and_keeps_earlier_records(tmp_path, monkeypatch, capsys):
    repo = tmp_path / "repo"
    _notebook(repo / "notebooks" / "01_first.ipynb", "print('first')")
    _notebook(repo / "notebooks" / "02_second.ipynb", "import json, os, pathlib\n"
              "folder = pathlib.Path(os.environ['VLM_RUN_DIR'])\n"
              f"(folder / 'results.json').write_text(json.dumps({_results()!r}))")
    _notebook(repo / "notebooks" / "03_fails.ipynb", "raise RuntimeError('the third one fails')")
    monkeypatch.setattr(store, "REPO_ROOT", repo)
    monkeypatch.setenv("VLM_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("VLM_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("VLM_MODEL", "synthetic-tiny")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")

    assert run_series.main(["01", "02"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "run" / "run_summary.json").read_text())
    assert (summary["model"], summary["resolved"], summary["stand_in"], summary["fell_back"]) == (
        "synthetic-tiny", "synthetic-tiny", True, False)
    assert summary["plan"] == "quick" and summary["install"]["venv_GB"] > 0
    assert [r["notebook"] for r in summary["notebooks"]] == ["01_first.ipynb", "02_second.ipynb"]
    assert all(r["status"] == "ok" and r["kernel_peak_MB"] > 0 and r["built"] == [] for r in summary["notebooks"])
    markdown = tmp_path / "run" / "RESULTS.md"
    assert markdown.read_text() == run_series.results_markdown(report.load(tmp_path / "run" / report.RESULTS_FILE))
    assert f"the figures are summed up in {markdown}." in out

    assert run_series.main(["03"]) == 1  # a failing notebook stops the run, its record beside the earlier ones
    err = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().err)  # IPython colours the error's name
    assert f"03_fails.ipynb failed: RuntimeError: the third one fails\nSee {tmp_path / 'run' / '03_fails.html'}" in err
    summary = json.loads((tmp_path / "run" / "run_summary.json").read_text())
    assert [(r["notebook"], r["status"]) for r in summary["notebooks"]] == [
        ("01_first.ipynb", "ok"), ("02_second.ipynb", "ok"), ("03_fails.ipynb", "failed")]
