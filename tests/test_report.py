"""results.json and what is made of it (helpers/report.py): saving and loading, the check that a results file is
complete, the speed tables, the source's ratios beside ours, the recommendation, RESULTS.md."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import check_results
from helpers import quality, report, run_series

WORKLOADS = ("blog", "photo", "text")


def _record(ttft: float, decode: float, spread: float = 0.0) -> dict:
    """A measured contender as bench.measuring and bench.measure record it; ``spread``: the timed calls' range."""
    fig = lambda v: {"median": v, "min": v * (1 - spread), "max": v * (1 + spread), "n": 3}  # noqa: E731
    return {"load_s": 0.5, "peak_rss_MB": 1000, "other_processes_cpu_share": 0.01, "precision": "float32",
            "threading": "OpenMP, OMP_WAIT_POLICY=PASSIVE",
            "workloads": {w: {"ttft_s": fig(ttft), "tpot_s": fig(1 / decode), "decode_tok_s": fig(decode),
                              "e2e_s": fig(ttft + 15 / decode)} for w in WORKLOADS}}


def _quality(agreement_ci: list[float], baseline: bool = False, text_vs_baseline=(0.0, 0.0)) -> dict:
    """A contender's row of quality.score."""
    return {"baseline": baseline, "samples": 30, "token_agreement": sum(agreement_ci) / 2,
            "token_agreement_ci": list(agreement_ci), "kl_mean": 0.01, "kl_mean_ci": [0.0, 0.02],
            "similarity": 0.98, "similarity_ci": [0.95, 1.0], "repetition_rate": 0.0, "repetition_rate_ci": [0.0, 0.0],
            "below_floor": False, "photo_questions": 2, "accuracy": None, "accuracy_ci": None,
            "accuracy_vs_baseline_ci": None, "text_questions": 28, "text_accuracy": 0.5,
            "text_accuracy_ci": [0.3, 0.7], "text_accuracy_vs_baseline_ci": list(text_vs_baseline)}


def _results(tmp_path=None) -> dict:
    """A results dict laid out as notebook 04 writes it."""
    contenders = {"pytorch-fp32": _record(4.0, 2.0), "openvino-fp32": _record(0.5, 20.0),
                  "openvino-int8": _record(0.25, 30.0)}
    workload = {"description": "one tile", "prompt_tokens": 81, "image_tokens": 64, "image_tiles": 1,
                "longest_edge": 512, "new_tokens": 16, "preprocess_s": 0.01, "photo": "astronaut",
                "question": "What is in this image?"}
    results = {
        "created": "2025-10-15 12:00:00", "plan": {"mode": "quick"},
        "machine": {"cpu_model": "a CPU", "usable_cores": 2, "threads_used": 2, "memory_GB": 8.0,
                    "openvino_capabilities": ["FP32", "BF16"], "os": "Linux"},
        "versions": {"openvino": "2026.0.0", "optimum-intel": "2.2.0"},
        "model": {"requested": "synthetic-tiny", "slug": "synthetic-tiny", "stand_in": True, "note": "a stand-in",
                  "fell_back": False},
        "workloads": {"blog": workload, "photo": {**workload, "description": "a photo", "image_tiles": 5,
                                                  "longest_edge": 1024, "photo": tmp_path or "cat"},
                      "text": {**workload, "description": "no image", "photo": None, "image_tiles": None,
                               "image_tokens": 0, "longest_edge": None, "new_tokens": 64}},
        "contenders": contenders,
        "quality": {"pytorch-fp32": _quality([1.0, 1.0], baseline=True), "openvino-fp32": _quality([0.97, 1.0]),
                    "openvino-int8": _quality([0.95, 0.99])},
    }
    results["recommendation"] = report.recommend(results)
    return results


# --- saving, loading, checking ------------------------------------------------------------------------------


def test_results_round_trip_and_a_complete_file_has_no_problems(tmp_path):
    results = _results(tmp_path)
    results["contenders"]["openvino-int8"]["peak_rss_MB"] = np.int64(1200)  # numpy figures are written as numbers
    path = report.save(results, tmp_path / "run" / "results.json")
    assert path == tmp_path / "run" / "results.json" and not list(path.parent.glob("*.partial"))
    loaded = report.load(path)
    assert loaded["workloads"]["photo"]["photo"] == str(tmp_path)  # paths are written as text
    assert loaded["contenders"]["openvino-int8"]["peak_rss_MB"] == 1200
    assert check_results(loaded, list(results["contenders"]), list(WORKLOADS)) == []
    assert report.load(tmp_path / "none.json") == {}


def test_a_failed_save_keeps_the_old_results_and_leaves_no_partial_file(tmp_path, monkeypatch):
    path = report.save({"first": 1}, tmp_path / "results.json")

    def full_disk(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report.os, "replace", full_disk)
    with pytest.raises(OSError):
        report.save({"second": 2}, path)
    assert report.load(path) == {"first": 1} and not list(tmp_path.glob("*.partial"))


def test_results_go_into_the_runs_folder_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("VLM_RUN_DIR", str(tmp_path / "runs"))
    assert report.save({"created": "now"}) == tmp_path / "runs" / "results.json"
    assert report.load() == {"created": "now"}


def test_figures_of_a_slow_cpu_and_a_tiny_model_pass_the_check(tmp_path):
    """A slow CPU and a tiny model give figures far below 0.001: none may round to 0."""
    results = _results()
    results["contenders"] = {"pytorch-fp32": _record(90.0, 0.004), "openvino-fp32": _record(40.0, 0.02)}
    for record in results["contenders"].values():
        record.update(load_s=0.0004, other_processes_cpu_share=0.0)
    loaded = report.load(report.save(results, tmp_path / "results.json"))
    assert 0 < loaded["contenders"]["pytorch-fp32"]["workloads"]["text"]["decode_tok_s"]["median"] < 0.01
    assert check_results(loaded, ["pytorch-fp32", "openvino-fp32"], list(WORKLOADS)) == []


def test_check_results_names_each_problem():
    results = json.loads(json.dumps(_results()))
    results["contenders"]["openvino-fp32"]["workloads"]["blog"]["tpot_s"]["median"] = float("nan")
    results["contenders"]["pytorch-fp32"]["load_s"] = 0
    results["contenders"]["openvino-int8"]["workloads"]["text"]["ttft_s"]["min"] = 9.0
    results["contenders"]["openvino-int8"]["other_processes_cpu_share"] = 1.5
    del results["quality"]["openvino-fp32"]
    results["quality"]["openvino-int8"]["token_agreement_ci"] = [0.99, 0.95]
    results["quality"]["openvino-int8"]["kl_mean"] = -0.1
    results["contenders"]["openvino-int4"] = {"error": "RuntimeError: OpenVINO crashes"}
    del results["recommendation"]
    del results["workloads"]["photo"]["image_tiles"]
    problems = check_results(results, ["pytorch-fp32", "openvino-fp32", "openvino-int8", "openvino-int4",
                                       "openvino-mixed"], ["blog", "photo", "text", "video"])
    assert problems == [
        "recommendation is missing",
        "workloads.photo.image_tiles is None, not a positive finite number",
        "workloads.video is missing",
        "contenders.pytorch-fp32.load_s is 0, not a positive finite number",
        "contenders.pytorch-fp32.workloads.video is missing",
        "contenders.openvino-fp32.workloads.blog.tpot_s.median is nan, not a positive finite number",
        "contenders.openvino-fp32.workloads.video is missing",
        "quality.openvino-fp32 is missing",
        "contenders.openvino-int8.other_processes_cpu_share is 1.5, not a share in [0, 1]",
        "contenders.openvino-int8.workloads.text.ttft_s has min <= median <= max out of order",
        "contenders.openvino-int8.workloads.video is missing",
        "quality.openvino-int8.token_agreement_ci is [0.99, 0.95], not an interval [low, high] within [-1, 1]",
        "quality.openvino-int8.kl_mean is -0.1, not a finite number >= 0",
        "contenders.openvino-int4 was not measured: RuntimeError: OpenVINO crashes",
        "contenders.openvino-mixed is missing",
    ]


# --- tables -------------------------------------------------------------------------------------------------


def test_speed_table_has_one_row_per_contender():
    results = _results()
    results["contenders"]["openvino-int8"] = _record(0.25, 30.0, spread=0.1)
    results["contenders"]["openvino-int4"] = {"error": "RuntimeError: crashed"}
    table = report.speed_table(results, "text")
    assert list(table.index) == ["pytorch-fp32", "openvino-fp32", "openvino-int8", "openvino-int4"]
    assert table.index.name == "contender" and "others' CPU" in table.columns
    row = table.loc["openvino-int8"]
    assert row["computes in"] == "float32" and row["TTFT (s)"] == 0.25
    assert row["TPOT (ms)"] == pytest.approx(1000 / 30) and row["decode (tok/s)"] == 30.0
    assert row["spread (s)"] == "0.675-0.825" and row["load (s)"] == 0.5 and row["peak RSS (MB)"] == 1000
    assert table.loc["openvino-int4", "error"] == "RuntimeError: crashed"
    assert table.loc["openvino-int4", "TTFT (s)"] is None or math.isnan(table.loc["openvino-int4", "TTFT (s)"])
    assert "error" not in report.speed_table(_results(), "text").columns  # columns with nothing in them are left out


def test_the_source_ratios_beside_ours():
    rows = report.source_comparison(_results())
    assert rows == [
        {"comparison": "openvino-fp32 over pytorch-fp32", "figure": "TTFT speed-up", "source": 12.26, "ours": 8.0},
        {"comparison": "openvino-fp32 over pytorch-fp32", "figure": "decode speed-up", "source": 65.56, "ours": 10.0},
        {"comparison": "openvino-int8 over openvino-fp32", "figure": "TTFT speed-up", "source": 1.7, "ours": 2.0},
        {"comparison": "openvino-int8 over openvino-fp32", "figure": "decode speed-up", "source": 1.35, "ours": 1.5},
    ]
    results = _results()
    del results["contenders"]["openvino-int8"]  # not measured: no ratio of ours, the source's still shown
    assert [r["ours"] for r in report.source_comparison(results)] == [8.0, 10.0, None, None]


# --- the recommendation ---------------------------------------------------------------------------------------


def _contest() -> dict:
    """Five contenders: the baseline, two whose quality holds (timings within noise of each other on photos), one
    faster whose questions are too few to judge, one faster but worse beyond noise."""
    return {"contenders": {"pytorch-fp32": _record(9.0, 2.0), "openvino-fp32": _record(0.52, 40.0, spread=0.1),
                           "openvino-int8": _record(0.5, 60.0, spread=0.1), "openvino-int4": _record(0.4, 80.0),
                           "openvino-mixed": _record(0.3, 50.0)},
            "quality": {"pytorch-fp32": _quality([1.0, 1.0], baseline=True), "openvino-fp32": _quality([0.97, 1.0]),
                        "openvino-int8": _quality([0.95, 0.99]), "openvino-int4": _quality([0.80, 0.95]),
                        "openvino-mixed": _quality([0.95, 0.99], text_vs_baseline=(-0.3, -0.05))}}


def test_the_recommendation_follows_the_figures_and_the_quality_verdicts():
    results = _contest()
    assert {k: quality.verdict(q) for k, q in results["quality"].items() if not q["baseline"]} == {
        "openvino-fp32": "holds", "openvino-int8": "holds", "openvino-int4": "too few samples to tell",
        "openvino-mixed": "worse"}
    picks = report.recommend(results)
    figures = ["token agreement with the baseline, 95% interval against 0.9",
               "accuracy against the baseline's, paired 95% interval (where the weights are real)"]
    assert picks == {
        "photos": {"contender": "openvino-int8", "workload": "photo", "ttft_s": 0.5, "within_noise": ["openvino-fp32"],
                   "faster_but_unclear": ["openvino-int4"], "faster_but_worse": ["openvino-mixed"],
                   "figures": ["ttft_s on the photo workload (median and range of the timed calls)", *figures]},
        "long answers": {"contender": "openvino-int8", "workload": "text", "decode_tok_s": 60.0, "within_noise": [],
                         "faster_but_unclear": ["openvino-int4"], "faster_but_worse": [],
                         "figures": ["decode_tok_s on the text workload (median and range of the timed calls)",
                                     *figures]}}
    assert report.recommendation_text(results) == (
        "For photos: openvino-int8, 0.5 s to the first token on the photo workload; within the noise of the "
        "timings: openvino-fp32; openvino-int4 is faster, but 30 questions are too few to tell whether its quality "
        "holds (token agreement [0.80, 0.95]); faster but worse than the baseline beyond noise: openvino-mixed.\n"
        "For long answers: openvino-int8, 60 tokens/s on the text workload; openvino-int4 is faster, but 30 "
        "questions are too few to tell whether its quality holds (token agreement [0.80, 0.95]).")


def test_a_contender_timed_but_not_scored_is_named_not_a_crash():
    results = _contest()
    del results["quality"]["openvino-int4"]  # its answers failed after its timings were recorded
    picks = report.recommend(results)
    assert picks["photos"]["contender"] == "openvino-int8" and "openvino-int4" in picks["photos"]["faster_but_unclear"]
    assert "openvino-int4 is faster, but its quality was not measured" in report.recommendation_text(results)


def test_no_recommendation_without_quality_to_compare():
    results = _contest()
    results["quality"] = {}
    assert report.recommend(results) == {}
    assert report.recommendation_text(results) == ("No recommendation: no contender's quality could be compared "
                                                   "with the baseline's.")
    assert report.recommend({"contenders": {}, "quality": {}}) == {}


# --- RESULTS.md -------------------------------------------------------------------------------------------------


def test_markdown_has_the_machine_the_tables_the_pick_and_the_sources_ratios():
    results = _results()
    results["contenders"]["openvino-int4"] = {"error": "RuntimeError: crashed"}
    results["deep_dives"] = {"tables": {"Where the time goes": {"openvino-fp32": {"vision (s)": 0.25}}}}
    text = run_series.results_markdown(results)
    sections = text.split("\n\n")
    assert sections[0] == "# Results of `make run` (2025-10-15 12:00:00)"
    assert sections[1] == ("Model `synthetic-tiny` (stand-in: a stand-in); a CPU, 2 threads, OpenVINO CPU capabilities "
                           "FP32, BF16; plan `quick`; medians of the timed calls. Versions: openvino 2026.0.0, "
                           "optimum-intel 2.2.0.")
    assert sections[2] == "## blog: one tile (81 prompt tokens)"
    table = sections[3].splitlines()
    assert table[0].startswith("| contender | computes in | TTFT (s) | TPOT (ms) |") and table[1].startswith("|---")
    assert [row.split(" | ")[0] for row in table[2:]] == [f"| {k}" for k in results["contenders"]]
    assert table[-1].startswith("| openvino-int4 | – |")  # a failed contender keeps its row
    assert "## photo: a photo (81 prompt tokens)" in sections and "## text: no image (81 prompt tokens)" in sections
    assert "## Quality against the baseline (95% intervals over the questions)" in sections
    pick = sections.index("## Which one to pick")
    assert sections[pick + 1] == report.recommendation_text(results)
    assert "## The source's speed-ups beside ours (blog workload)" in sections
    assert sections[-2] == "## Where the time goes (notebook 05)" and "| openvino-fp32 | 0.25 |" in sections[-1]
    assert text.endswith("\n")


def test_results_md_is_written_beside_the_results(tmp_path):
    path = report.save(_results(), tmp_path / "results.json")
    written = run_series.write_results_markdown(path)
    assert written == tmp_path / "RESULTS.md" and written.read_text() == run_series.results_markdown(report.load(path))
    empty = report.save({"created": "now", "contenders": {}}, tmp_path / "empty" / "results.json")
    assert run_series.write_results_markdown(empty) is None and not (tmp_path / "empty" / "RESULTS.md").exists()
