"""helpers.run_series: one notebook executed as `make run` executes it, with its time and peak memory."""

from __future__ import annotations

import nbformat

from helpers import run_series


def _notebook(path, *sources: str):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_a_notebook_runs_with_its_time_and_memory(tmp_path):
    path = _notebook(tmp_path / "01_alloc.ipynb",
                     "import numpy, time\nblock = numpy.ones(50_000_000)  # 400 MB\ntime.sleep(1.5)", "print('done')")
    record = run_series.execute_notebook(path, tmp_path / "out")
    assert record["status"] == "ok" and record["seconds"] > 1.5
    assert record["peak_memory_MB"] > 400
    assert 0 <= record["memory_sampler_cpu_s"] < 0.05 * record["seconds"]  # the sampling costs little
    assert "done" in (tmp_path / "out" / "01_alloc.ipynb").read_text()
    assert (tmp_path / "out" / "01_alloc.html").stat().st_size > 1000


def test_a_failing_notebook_is_recorded_with_its_error(tmp_path):
    path = _notebook(tmp_path / "02_fail.ipynb", "raise RuntimeError('no such photo')", "print('after' + 'wards')")
    record = run_series.execute_notebook(path, tmp_path / "out")
    assert record["status"] == "failed" and "no such photo" in record["error"]
    executed = (tmp_path / "out" / "02_fail.ipynb").read_text()
    assert "no such photo" in executed and "afterwards" not in executed  # stopped at the failing cell
