"""The speed benchmark (helpers/bench.py): the plans, the definitions (TTFT, TPOT, spread), the inputs, each
contender's record, and notebook 04 in miniature writing a complete results file."""

from __future__ import annotations

import ast
import json
import math
import os
import re
import time
import weakref

import pytest

from conftest import check_results
from helpers import bench, images, machine, quality, report, run_series
from helpers.store import REPO_ROOT


@pytest.fixture(scope="module")
def processor(tiny):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny.source)


@pytest.fixture(scope="module")
def prepared(processor):
    return bench.prepare_workloads(processor)


class FakeModel:
    """Stands for a model in ``generate``: hands the streamer the prompt, then ``max_new_tokens`` tokens (at most
    ``stop_after``) a millisecond apart, and counts the calls per prompt length."""

    def __init__(self, stop_after: int | None = None) -> None:
        import torch

        self.dtype, self.calls, self.stop_after = torch.float32, {}, stop_after

    def generate(self, input_ids, max_new_tokens, streamer, **options):
        import torch

        key = (int(input_ids.shape[1]), max_new_tokens)
        self.calls[key] = self.calls.get(key, 0) + 1
        streamer.put(input_ids)
        for i in range(min(max_new_tokens, self.stop_after or max_new_tokens)):
            time.sleep(0.001)
            streamer.put(torch.tensor([i]))
        streamer.end()


# --- settings ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("quick, full, mode", [("1", "", "quick"), ("yes", "1", "quick"), ("", "", "default"),
                                               ("0", "", "default"), ("", "1", "full"), ("no", "on", "full")])
def test_plan_mode_follows_the_environment(monkeypatch, quick, full, mode):
    monkeypatch.setenv("VLM_QUICK", quick)
    monkeypatch.setenv("VLM_FULL", full)
    assert bench.plan_mode() == mode
    assert bench.plan() == bench.plan(mode) and bench.plan().mode == mode


def test_the_default_plan_measures_less_than_the_full_one():
    quick, default, full = bench.plan("quick"), bench.plan("default"), bench.plan("full")
    assert 1 <= quick.iterations < full.iterations and 1 <= default.iterations < full.iterations
    assert quick.eval_samples <= default.eval_samples < full.eval_samples
    assert default.text_samples < len(bench.data.load_text_questions()) and full.text_samples is None  # None: all
    assert default.sweep_iterations < full.sweep_iterations
    # the photo: scaled to 1024 px (5 tiles) by default, tiled as the processor tiles it (13 tiles) in the full plan
    assert quick.photo_edge == default.photo_edge == 1024 and full.photo_edge is None
    # the tests and the full run measure every contender; the default run the five a class compares
    assert quick.contenders is None and full.contenders is None
    assert default.contenders == bench.DEFAULT_CONTENDERS
    assert {"pytorch-fp32", "openvino-int4"} <= set(default.contenders)
    assert "openvino-int4-awq" not in default.contenders
    # every workload is warmed up once, in every plan
    assert quick.warmup == default.warmup == full.warmup == 1 and list(bench.WORKLOADS)[0] == "blog"
    assert json.loads(json.dumps(default.as_dict()))["contenders"] == list(bench.DEFAULT_CONTENDERS)
    with pytest.raises(ValueError) as err:
        bench.plan("fast")
    assert str(err.value) == "plan mode 'fast' is not one of quick, default, full"


def test_the_default_contenders_are_notebook_04s():
    cells = json.loads((REPO_ROOT / "notebooks" / "04_evaluate.ipynb").read_text())["cells"]
    code = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    variants = re.search(r"recipes\.build\(choice, v\) for v in (\([^)]*\))", code)
    assert variants and '"pytorch-fp32"' in code and 'f"openvino-{v}"' in code
    keys = {"pytorch-fp32"} | {f"openvino-{v}" for v in ast.literal_eval(variants.group(1))}
    assert set(bench.DEFAULT_CONTENDERS) <= keys and "openvino-mixed" in keys


# --- measuring --------------------------------------------------------------------------------------------


def test_summary_is_median_and_spread():
    assert bench.summarize([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    for bad in ([], [1.0, 0.0], [1.0, float("nan")], [float("inf")]):
        with pytest.raises(ValueError, match="expected positive finite measurements"):
            bench.summarize(bad)


@pytest.mark.parametrize("value, expected", [(0.0004321987, 0.0004322), (123456.7, 123500.0), (2.0, 2.0)])
def test_significant_keeps_four_figures(value, expected):
    assert bench.significant(value) == expected


def test_token_figures_follow_the_definitions():
    figures = bench.token_figures(10.0, [11.0, 11.5, 12.0], 12.5)
    assert figures == {"ttft_s": 1.0, "tpot_s": 0.5, "decode_tok_s": 2.0, "e2e_s": 2.5}
    with pytest.raises(ValueError, match="a time per token needs at least 2 new tokens, got 1"):
        bench.token_figures(10.0, [11.0], 11.5)  # llama.cpp's timing asked for one token: one sentence, no ZeroDivision


@pytest.mark.parametrize("backend", ["pytorch", "openvino"])
def test_one_generation_gives_consistent_figures(request, prepared, backend):
    model = request.getfixturevalue(f"tiny_{backend}")
    figures = bench.time_generation(model, prepared["blog"].inputs, 6)
    assert 0 < figures["ttft_s"] < figures["e2e_s"]
    assert figures["tpot_s"] > 0 and math.isclose(figures["decode_tok_s"], 1 / figures["tpot_s"])
    # first token + 5 gaps can't take longer than the whole call
    assert figures["ttft_s"] + 5 * figures["tpot_s"] <= figures["e2e_s"] * 1.0001


@pytest.mark.parametrize("backend", ["pytorch", "openvino"])
def test_timed_calls_run_no_logits_processor(request, prepared, monkeypatch, backend):
    # min_new_tokens and begin_suppress_tokens each add a per-step rule over the whole vocabulary; a timed call has
    # neither, and still gets exactly the tokens it asks for
    from transformers.generation.utils import GenerationMixin

    model, seen, original = request.getfixturevalue(f"tiny_{backend}"), [], GenerationMixin._get_logits_processor

    def spy(self, *args, **kwargs):
        processors = original(self, *args, **kwargs)
        seen.append(sorted(type(p).__name__ for p in processors))
        return processors

    monkeypatch.setattr(GenerationMixin, "_get_logits_processor", spy)
    monkeypatch.setattr(model.generation_config, "begin_suppress_tokens", model.generation_config.eos_token_id)
    model.generate(**prepared["text"].inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert "MinNewTokensLengthLogitsProcessor" in seen[-1] and "SuppressTokensAtBeginLogitsProcessor" in seen[-1]
    assert bench.time_generation(model, prepared["text"].inputs, 5)["e2e_s"] > 0 and seen[-1] == []


def test_time_per_token_needs_two_tokens_and_all_of_them(tiny_pytorch, prepared):
    with pytest.raises(ValueError, match="new_tokens must be >= 2 to measure time per token, got 1"):
        bench.time_generation(tiny_pytorch, prepared["blog"].inputs, 1)
    with pytest.raises(RuntimeError) as err:
        bench.time_generation(FakeModel(stop_after=3), prepared["blog"].inputs, 6)
    assert str(err.value) == "asked for 6 new tokens, the streamer saw 3"


def test_workload_run_counts_its_iterations(tiny_pytorch, prepared):
    figures = bench.run_workload(tiny_pytorch, prepared["blog"], warmup=1, iterations=3)
    assert set(figures) == {"ttft_s", "tpot_s", "decode_tok_s", "e2e_s"}
    assert all(f["n"] == 3 and f["min"] <= f["median"] <= f["max"] for f in figures.values())
    with pytest.raises(ValueError, match="iterations must be >= 1, got 0"):
        bench.run_workload(tiny_pytorch, prepared["blog"], warmup=1, iterations=0)


def test_measure_warms_up_then_times_each_workload_as_the_plan_says(prepared, monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    model, plan = FakeModel(), bench.plan("default")
    record = bench.measure(model, prepared, plan)
    assert record["precision"] == "float32" and record["threading"] == "OpenMP, OMP_WAIT_POLICY=PASSIVE"
    assert model.calls == {(p.facts["prompt_tokens"], p.workload.new_tokens): plan.warmup + plan.iterations
                           for p in prepared.values()}  # warm-up calls + timed calls, each of the workload's length
    for name in prepared:
        assert all(record["workloads"][name][f]["n"] == plan.iterations for f in ("ttft_s", "e2e_s"))


# --- inputs -----------------------------------------------------------------------------------------------


def test_blog_workload_is_one_tile_and_photo_uses_default_tiling(prepared, processor):
    blog, photo, text = prepared["blog"].facts, prepared["photo"].facts, prepared["text"].facts
    assert blog["image_tiles"] == 1 and blog["image_tokens"] == 64 and blog["new_tokens"] == 16
    assert blog["longest_edge"] == images.tile_size(processor) == 512
    # the cat photo (451x300) is scaled to 2048 on its long side: 4x3 tiles plus the global view
    assert photo["image_tiles"] == 13 and photo["image_tokens"] == 13 * 64 and photo["new_tokens"] == 64
    assert photo["longest_edge"] is None and photo["photo"] == "cat"
    for facts, p in ((blog, prepared["blog"]), (photo, prepared["photo"])):
        assert facts["prompt_tokens"] == p.inputs["input_ids"].shape[1] > facts["image_tokens"]
        assert facts["preprocess_s"] > 0
    assert text["image_tiles"] is None and text["photo"] is None and text["image_tokens"] == 0
    assert "pixel_values" not in prepared["text"].inputs and text["new_tokens"] == 64


def test_the_plans_photo_edge_scales_the_photo_only(processor, prepared):
    scaled = bench.prepare_workloads(processor, photo_edge=1024)
    assert scaled["photo"].facts["image_tiles"] == 5 and scaled["photo"].facts["longest_edge"] == 1024
    for name in ("blog", "text"):
        assert scaled[name].facts["prompt_tokens"] == prepared[name].facts["prompt_tokens"]


# --- precision, threads, records ----------------------------------------------------------------------------


def test_the_precision_and_threads_each_runtime_computes_with(tiny, tiny_pytorch, tiny_fp32, tiny_openvino):
    import torch
    from optimum.intel import OVModelForVisualCausalLM
    from transformers import AutoModelForImageTextToText

    assert bench.runtime_precision(tiny_pytorch) == "float32"
    bf16 = AutoModelForImageTextToText.from_pretrained(tiny.source, dtype=torch.bfloat16)
    assert bench.runtime_precision(bf16) == "bfloat16"
    strict = OVModelForVisualCausalLM.from_pretrained(tiny_fp32, ov_config=machine.openvino_config(
        2, INFERENCE_PRECISION_HINT="f32"))
    assert bench.runtime_precision(strict) == "float32"
    # FP32 weights compute in bf16 where the CPU has bf16 instructions (OpenVINO's default)
    assert bench.runtime_precision(tiny_openvino) == ("bfloat16" if machine.supports_bf16() else "float32")
    assert bench.threading(tiny_openvino) == ("OpenVINO's TBB thread pool; the PyTorch operations inside generate use "
                                              f"OpenMP, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    assert bench.threading(tiny_pytorch).startswith("OpenMP, OMP_WAIT_POLICY=")


def test_a_contender_that_fails_to_load_is_recorded_with_the_reason(capsys):
    def load():
        raise OSError("no such checkpoint")

    record = {}
    with bench.measuring(record, load, "pytorch-fp32") as model:
        assert model is None
    assert record["error"] == "OSError: no such checkpoint" and "load_s" not in record
    assert record["peak_rss_MB"] > 0 and 0 <= record["other_processes_cpu_share"] <= 1
    assert "pytorch-fp32 failed: OSError: no such checkpoint" in capsys.readouterr().out


class _Model:
    """Something loaded, to see whether it is let go."""


def test_a_failure_inside_the_block_is_recorded_and_the_model_freed(capsys):
    loaded = []

    def load():
        model = _Model()
        loaded.append(weakref.ref(model))
        return model

    record = {}
    with bench.measuring(record, load, "openvino-int8"):  # (no `as`: this test keeps no reference of its own)
        raise MemoryError("out of memory while answering")
    assert record["error"] == "MemoryError: out of memory while answering" and record["load_s"] > 0
    assert loaded[0]() is None  # freed at the end of the block
    assert "openvino-int8 failed: MemoryError: out of memory while answering" in capsys.readouterr().out
    quiet = {}
    with bench.measuring(quiet, load) as model:
        assert isinstance(model, _Model)
        del model
    assert "error" not in quiet and quiet["load_s"] > 0 and quiet["peak_rss_MB"] > 0
    assert 0 <= quiet["other_processes_cpu_share"] <= 1 and loaded[1]() is None
    assert capsys.readouterr().out == ""


def test_a_contender_that_would_crash_openvino_is_recorded_not_loaded(tiny_fp32, monkeypatch):
    from optimum.intel import OVModelForVisualCausalLM

    monkeypatch.setattr(machine, "_compiles", lambda xml, config: False)
    monkeypatch.setattr(OVModelForVisualCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("must not load"))
    config = {"INFERENCE_NUM_THREADS": 1}

    def load():  # as notebook 04's load_openvino
        machine.check_compiles(tiny_fp32, config)
        return OVModelForVisualCausalLM.from_pretrained(tiny_fp32, device="CPU", ov_config=config)

    record = {}
    with bench.measuring(record, load) as model:
        assert model is None
    assert record["error"] == (f"RuntimeError: OpenVINO crashes compiling fp32's language model with these settings "
                               f"({config}): give it 2 threads, or INFERENCE_PRECISION_HINT='f32'.")
    assert "workloads" not in record


# --- notebook 04 in miniature ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_notebook_04_in_miniature_writes_a_complete_results_file(tiny, tiny_fp32, processor, tmp_path):
    """The steps of notebook 04 on the tiny model: the results file has every figure check_results asks for."""
    import torch
    from optimum.intel import OVModelForVisualCausalLM
    from transformers import AutoModelForImageTextToText

    plan, threads = bench.plan("quick"), 2
    contenders = {
        "pytorch-fp32": lambda: AutoModelForImageTextToText.from_pretrained(tiny.source, dtype=torch.float32).eval(),
        "openvino-fp32": lambda: OVModelForVisualCausalLM.from_pretrained(
            tiny_fp32, device="CPU", ov_config=machine.openvino_config(threads)),
        "openvino-broken": lambda: OVModelForVisualCausalLM.from_pretrained(tmp_path / "nothing"),
    }
    prepared = bench.prepare_workloads(processor, plan.photo_edge)
    samples = quality.samples(processor, 2, 2, longest_edge=images.tile_size(processor))
    records, answers = {}, {}
    for key, load in contenders.items():
        record = records[key] = {}
        with bench.measuring(record, load) as model:
            if model is not None:
                record.update(bench.measure(model, prepared, plan))
                answers[key] = quality.answer_all(model, processor, samples, 4, baseline=answers.get("pytorch-fp32"))
        del model
    results = {"created": time.strftime("%Y-%m-%d %H:%M:%S"), "plan": plan.as_dict(),
               "machine": machine.facts(threads), "versions": machine.versions(),
               "model": {"requested": tiny.requested, "slug": tiny.slug, "stand_in": tiny.is_standin,
                         "note": "", "fell_back": tiny.fell_back},
               "workloads": {name: p.facts for name, p in prepared.items()}, "contenders": records}
    results["quality"] = quality.score(answers, samples, "pytorch-fp32", quality.load_embedder(),
                                       real_vision=tiny.real_vision, real_language_model=tiny.real_language_model)
    results["recommendation"] = report.recommend(results)
    path = report.save(results, tmp_path / "run" / "results.json")
    loaded = report.load(path)
    assert check_results(loaded, ["pytorch-fp32", "openvino-fp32"], list(bench.WORKLOADS)) == []
    assert check_results(loaded, ["openvino-broken"], []) == [
        f"contenders.openvino-broken was not measured: {records['openvino-broken']['error']}"]
    assert set(loaded["quality"]) == {"pytorch-fp32", "openvino-fp32"} and loaded["quality"]["pytorch-fp32"]["baseline"]
    assert run_series.write_results_markdown(path) == path.with_name("RESULTS.md")
