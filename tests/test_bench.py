"""The speed benchmark: definitions (TTFT, TPOT, spread), inputs, bytes per token, records and the results file."""

from __future__ import annotations

import ast
import json
import math
import re

import pytest

from helpers import bench, hardware, report
from helpers.paths import REPO_ROOT


@pytest.fixture(scope="module")
def pytorch_model(tiny):
    import torch
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(tiny.source, dtype=torch.float32,
                                                       attn_implementation="sdpa").eval()


@pytest.fixture(scope="module")
def fp32_dir(tiny):
    from helpers import export

    return export.export_fp32(tiny)


@pytest.fixture(scope="module")
def openvino_model(fp32_dir):
    from optimum.intel import OVModelForVisualCausalLM

    return OVModelForVisualCausalLM.from_pretrained(fp32_dir, device="CPU", ov_config=hardware.openvino_config(2))


@pytest.fixture(scope="module")
def processor(tiny):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny.source)


@pytest.fixture(scope="module")
def prepared(processor, pytorch_model):
    return bench.prepare_workloads(processor, pytorch_model.config, repeats=1)


# --- settings ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("quick, full, mode", [("1", "", "quick"), ("yes", "1", "quick"), ("", "", "default"),
                                               ("0", "", "default"), ("", "1", "full"), ("no", "on", "full")])
def test_plan_mode_follows_the_environment(monkeypatch, quick, full, mode):
    monkeypatch.setenv(bench.QUICK_ENV, quick)
    monkeypatch.setenv(bench.FULL_ENV, full)
    assert bench.plan_mode() == mode
    assert bench.plan() == bench.plan(mode) and bench.plan().mode == mode


def test_the_default_plan_measures_less_than_the_full_one():
    quick, default, full = bench.plan("quick"), bench.plan("default"), bench.plan("full")
    for workload in bench.WORKLOADS:
        assert 1 <= quick.iterations[workload] < full.iterations[workload]
        assert 1 <= default.iterations[workload] < full.iterations[workload]
    assert len(default.context_lengths) < len(full.context_lengths) and default.eval_samples < full.eval_samples
    assert full.tile_edges == (512, 1024, 1536, 2048)  # 1, 5, 10, 17 tiles of a square photo
    # the tests and the full run measure every contender; the default run the five a class compares
    assert quick.contenders is None and full.contenders is None
    assert default.measures("pytorch-fp32") and default.measures("openvino-int4")
    assert not default.measures("openvino-int4-awq") and full.measures("openvino-int4-awq")
    assert default.llamacpp_types == ("q4_0",) and set(default.llamacpp_types) < set(full.llamacpp_types)
    # the side studies (loop, compile cache, sweeps): two of the five by default, all in the full plan
    assert default.side_study("openvino-int4") and not default.side_study("openvino-int8")
    assert not default.side_study("openvino-int4-awq") and full.side_study("openvino-int8")
    # every workload is warmed up, except the photo in the default plan (the blog's warm-up comes first)
    assert full.warmup == quick.warmup == dict.fromkeys(bench.WORKLOADS, 1)
    assert default.warmup == {"blog": 1, "photo": 0, "text": 1} and list(bench.WORKLOADS)[0] == "blog"
    with pytest.raises(ValueError, match="not one of"):
        bench.plan("fast")


def test_the_default_contenders_are_notebook_04s():
    cells = json.loads((REPO_ROOT / "notebooks" / "04_evaluate.ipynb").read_text())["cells"]
    keys = set(re.findall(r'bench\.Contender\("([a-z0-9-]+)"', "".join("".join(c["source"]) for c in cells)))
    assert set(bench.DEFAULT_CONTENDERS) <= keys and "openvino-mixed" in keys


@pytest.mark.parametrize("top, expected", [(1, (1,)), (2, (1, 2)), (6, (1, 2, 4, 6)), (8, (1, 2, 4, 8))])
def test_thread_counts_double_up_to_the_cores(top, expected):
    assert bench.thread_counts(top) == expected


# --- measuring --------------------------------------------------------------------------------------------


def test_summary_is_median_and_spread():
    assert bench.summarize([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    for bad in ([], [1.0, 0.0], [1.0, float("nan")], [float("inf")]):
        with pytest.raises(ValueError):
            bench.summarize(bad)


def test_token_clock_skips_the_prompt():
    clock = bench.TokenTimes()
    clock.put("prompt ids")
    clock.put(1)
    clock.put(2)
    clock.end()
    assert len(clock.times) == 2 and clock.times[0] <= clock.times[1]


@pytest.mark.parametrize("backend", ["pytorch", "openvino"])
def test_one_generation_gives_consistent_figures(request, prepared, backend):
    model = request.getfixturevalue(f"{backend}_model")
    figures = bench.time_generation(model, prepared["blog"].inputs, 6)
    assert 0 < figures["ttft_s"] < figures["e2e_s"]
    assert figures["tpot_s"] > 0 and math.isclose(figures["decode_tok_s"], 1 / figures["tpot_s"])
    # first token + 5 gaps can't take longer than the whole call
    assert figures["ttft_s"] + 5 * figures["tpot_s"] <= figures["e2e_s"] * 1.0001


def test_time_per_token_needs_two_tokens(pytorch_model, prepared):
    with pytest.raises(ValueError, match="new_tokens"):
        bench.time_generation(pytorch_model, prepared["blog"].inputs, 1)


def test_workload_run_counts_its_iterations(pytorch_model, prepared):
    figures = bench.run_workload(pytorch_model, prepared["blog"], warmup=1, iterations=3)
    assert set(figures) == {"ttft_s", "tpot_s", "decode_tok_s", "e2e_s"}
    assert all(f["n"] == 3 and f["min"] <= f["median"] <= f["max"] for f in figures.values())


# --- inputs -----------------------------------------------------------------------------------------------


def test_blog_workload_is_one_tile_and_photo_uses_default_tiling(prepared):
    blog, photo = prepared["blog"].facts, prepared["photo"].facts
    assert blog["image_tiles"] == 1 and blog["image_tokens"] == 64 and blog["new_tokens"] == 16
    # the cat photo (451x300) is scaled to 2048 on its long side: 4x3 tiles plus the global view
    assert photo["image_tiles"] == 13 and photo["image_tokens"] == 13 * 64 and photo["new_tokens"] == 64
    for facts, p in ((blog, prepared["blog"]), (photo, prepared["photo"])):
        assert facts["prompt_tokens"] == p.inputs["input_ids"].shape[1] > facts["image_tokens"]
        assert facts["preprocess_s"] > 0


def test_context_prompt_has_exactly_the_asked_length(processor):
    for length in (40, 300):
        ids = bench.context_inputs(processor, length)["input_ids"][0]
        assert len(ids) == length
        text = processor.decode(ids)
        assert text.startswith("<|im_start|>User:") and text.endswith("Assistant:")
    with pytest.raises(ValueError, match="length"):
        bench.context_inputs(processor, 5)


# --- bytes per token --------------------------------------------------------------------------------------


def test_bytes_per_token_follow_the_precision_held_in_memory(tiny, pytorch_model, fp32_dir):
    import torch
    from optimum.intel import OVModelForVisualCausalLM
    from transformers import AutoModelForImageTextToText

    text = pytorch_model.model.text_model
    expected = 4 * (sum(p.numel() for p in text.parameters()) - text.embed_tokens.weight.numel()
                    + pytorch_model.lm_head.weight.numel())
    assert bench.lm_bytes_per_token(pytorch_model) == expected
    bf16 = AutoModelForImageTextToText.from_pretrained(tiny.source, dtype=torch.bfloat16)
    assert bench.lm_bytes_per_token(bf16) == expected // 2

    strict = OVModelForVisualCausalLM.from_pretrained(fp32_dir, ov_config=hardware.openvino_config(2, "f32"))
    assert bench.runtime_precision(strict) == "float32"
    assert bench.lm_bytes_per_token(strict) == pytest.approx(expected, rel=0.02)  # + a few small constants
    default = OVModelForVisualCausalLM.from_pretrained(fp32_dir, ov_config=hardware.openvino_config(2))
    if hardware.supports_bf16():
        assert bench.runtime_precision(default) == "bfloat16"
        assert bench.lm_bytes_per_token(default) == pytest.approx(expected / 2, rel=0.02)


# --- contenders and records -------------------------------------------------------------------------------


def _pytorch_contender(tiny, loads):
    import torch
    from transformers import AutoModelForImageTextToText

    def load(threads):
        loads.append(threads)
        hardware.set_torch_threads(threads)
        return AutoModelForImageTextToText.from_pretrained(tiny.source, dtype=torch.float32).eval()

    return bench.Contender("pytorch-fp32", "PyTorch FP32", "pytorch", load)


def test_measure_contender_records_everything(tiny, prepared):
    loads = []
    record = bench.measure_contender(_pytorch_contender(tiny, loads), prepared, 1, warmup=0,
                                     iterations={"blog": 2, "photo": 1, "text": 1})
    assert loads == [1] and "error" not in record
    assert record["threads"] == 1 and record["precision"] == "float32" and record["ir_size_MB"] is None
    assert record["load_compile_s"] > 0 and record["peak_rss_MB"] >= record["rss_before_MB"] > 0
    assert record["workloads"]["blog"]["e2e_s"]["n"] == 2 and record["workloads"]["photo"]["e2e_s"]["n"] == 1
    assert prepared["text"].facts["image_tiles"] == 0 and prepared["text"].facts["photo"] is None
    assert "pixel_values" not in prepared["text"].inputs and record["workloads"]["text"]["e2e_s"]["n"] == 1


def test_warm_up_calls_can_differ_per_workload(pytorch_model, prepared, monkeypatch):
    calls = {name: 0 for name in prepared}
    timed = bench.time_generation

    def counting(model, inputs, new_tokens):
        calls[next(name for name, p in prepared.items() if p.inputs is inputs)] += 1
        return timed(model, inputs, new_tokens)

    monkeypatch.setattr(bench, "time_generation", counting)
    record = {}
    bench.measure_workloads(pytorch_model, record, prepared, {"blog": 1, "photo": 0, "text": 2},
                            dict.fromkeys(prepared, 1), stage_iterations=0)
    assert calls == {"blog": 2, "photo": 1, "text": 3}  # warm-up calls + one timed call each
    assert all(record["workloads"][name]["e2e_s"]["n"] == 1 for name in prepared)


def test_a_contender_that_would_crash_openvino_is_recorded_not_loaded(fp32_dir, prepared, monkeypatch):
    monkeypatch.setattr(hardware, "openvino_compiles", lambda folder, config: False)

    def load(threads):
        raise AssertionError("must not be loaded")

    contender = bench.Contender("openvino-fp32", "OpenVINO FP32", "openvino", load, ir_dir=fp32_dir)
    record = bench.measure_contender(contender, prepared, 1, warmup=0, iterations={"blog": 1, "photo": 1})
    assert "crashes" in record["error"] and "workloads" not in record and record["ir_size_MB"] > 0
    rows = bench.threads_sweep(contender, prepared["blog"], (1, 2), 1, known={2: {
        "ttft_s": {"median": 0.5}, "tpot_s": {"median": 0.1}, "decode_tok_s": {"median": 10.0}}})
    assert "skipped" in rows[0] and rows[1] == {"threads": 2, "ttft_s": 0.5, "tpot_s": 0.1, "decode_tok_s": 10.0}


def test_sweeps_grow_tiles_and_context(openvino_model, processor):
    tiles = bench.ttft_vs_tiles(openvino_model, processor, "astronaut", "What is in this image?", (512, 1024), 1)
    assert [r["image_tiles"] for r in tiles] == [1, 5]
    assert tiles[1]["prompt_tokens"] > tiles[0]["prompt_tokens"] and all(r["ttft_s"] > 0 for r in tiles)
    context = bench.tpot_vs_context(openvino_model, processor, (64, 128), 1, new_tokens=4)
    assert [r["context_tokens"] for r in context] == [64, 128] and all(r["tpot_s"] > 0 for r in context)


def _record(backend, ttft, decode, mb=100.0):
    fig = lambda v: {"median": v, "min": v, "max": v, "n": 1}  # noqa: E731
    stages = {"first_token": {"vision": 0.5 * ttft, "text_embeddings": 0.0, "language_model": 0.4 * ttft,
                              "rest": 0.1 * ttft, "ttft": ttft},
              "per_token": {"language_model": 0.8 / decode, "text_embeddings": 0.0, "rest": 0.2 / decode,
                            "tpot": 1 / decode}}
    return {"label": backend, "backend": backend, "lm_bytes_per_token_MB": mb,
            "workloads": {"blog": {"ttft_s": fig(ttft), "tpot_s": fig(1 / decode), "decode_tok_s": fig(decode),
                                   "e2e_s": fig(ttft + 15 / decode)}},
            "stages": {"blog": stages}}


def test_bandwidth_bound_and_fraction():
    records = {"a": _record("openvino", 0.5, 20.0, mb=200.0), "b": {"label": "b", "error": "crashed"}}
    bench.add_bandwidth_bound(records, 10.0)  # 10 GB/s / 200 MB = 50 tokens/s
    blog = records["a"]["workloads"]["blog"]
    assert blog["bandwidth_bound_tok_s"] == 50.0 and blog["fraction_of_bound"] == 0.4


def test_comparison_sets_the_source_ratios_beside_ours():
    records = {"pytorch-fp32": _record("pytorch", 4.0, 2.0), "openvino-fp32": _record("openvino", 0.5, 20.0),
               "openvino-int8": _record("openvino", 0.25, 30.0)}
    rows = {(r["comparison"], r["figure"]): r for r in report.comparison(records, workloads=("blog",))}
    ov = rows[("OpenVINO FP32 vs PyTorch FP32", "TTFT speed-up")]
    assert ov["source (blog workload)"] == 12.26 and ov["ours (blog)"] == 8.0
    assert rows[("OpenVINO FP32 vs PyTorch FP32", "decode speed-up")]["ours (blog)"] == 10.0
    assert rows[("OpenVINO INT8 vs OpenVINO FP32", "decode speed-up")]["source (blog workload)"] == 1.35
    assert rows[("OpenVINO INT8 vs OpenVINO FP32", "TTFT speed-up")]["ours (blog)"] == 2.0
    assert not any("BF16" in title for title, _ in rows)  # pairs with a contender that didn't run are left out


# --- the results file -------------------------------------------------------------------------------------


def _results(tmp_path):
    records = {"pytorch-fp32": _record("pytorch", 4.0, 2.0), "openvino-fp32": _record("openvino", 0.5, 20.0)}
    records["openvino-fp32"]["ir_size_MB"] = 1.3
    for r in records.values():
        r.update(load_compile_s=0.5, peak_rss_MB=1000)
    bench.add_bandwidth_bound(records, 10.0)
    rows = [{"threads": 1, "ttft_s": 1.0, "tpot_s": 0.1, "decode_tok_s": 10.0}, {"threads": 2, "skipped": "crash"}]
    return {
        "machine": hardware.machine({1: 10.0}, threads=1), "versions": hardware.versions(),
        "model": {"slug": "synthetic-tiny", "stand_in": True},
        "workloads": {"blog": {"description": "one tile", "prompt_tokens": 81, "image_tiles": 1, "new_tokens": 16,
                               "preprocess_s": 0.01, "photo": tmp_path}},
        "contenders": records,
        "quality": {k: {"token_agreement": 1.0, "kl_mean": 0.0, "similarity": 1.0, "repetition_rate": 0.0}
                    for k in records},
        "scaling": {"tiles": {"openvino-fp32": [{"image_tiles": 1, "ttft_s": 0.5}]},
                    "context": {"openvino-fp32": [{"context_tokens": 64, "tpot_s": 0.05}]},
                    "threads": {"openvino-fp32": rows}},
        "comparison": report.comparison(records, workloads=("blog",)),
    }


def test_results_round_trip_and_a_complete_file_has_no_problems(tmp_path):
    results = _results(tmp_path)
    path = report.save_results(results, tmp_path / "run" / "results.json")
    assert not list(path.parent.glob("*.partial"))
    loaded = report.load_results(path)
    assert loaded["workloads"]["blog"]["photo"] == str(tmp_path)  # paths are written as text
    assert report.check_results(loaded, ["pytorch-fp32", "openvino-fp32"], ["blog"]) == []


def test_figures_of_a_slow_cpu_and_a_tiny_model_pass_the_check(tmp_path):
    """A slow CPU, a fast memory and a tiny model give figures far below 0.001: none may round to 0."""
    results = _results(tmp_path)
    slow = {"pytorch-fp32": _record("pytorch", 90.0, 0.004, mb=0.05), "openvino-fp32": _record("openvino", 40.0, 0.02)}
    for r in slow.values():
        r.update(load_compile_s=0.0004, peak_rss_MB=900, ir_size_MB=0.0007)
    bench.add_bandwidth_bound(slow, 200.0)  # 200 GB/s / 0.05 MB = 4 million tokens/s: a fraction of 1e-9
    results["contenders"] = slow
    loaded = report.load_results(report.save_results(results, tmp_path / "results.json"))
    fraction = loaded["contenders"]["pytorch-fp32"]["workloads"]["blog"]["fraction_of_bound"]
    assert 0 < fraction < 1e-8
    assert report.check_results(loaded, ["pytorch-fp32", "openvino-fp32"], ["blog"]) == []


@pytest.mark.parametrize("value, expected", [(0.0004321987, 0.0004322), (123456.7, 123500.0), (2.0, 2.0)])
def test_significant_keeps_four_figures(value, expected):
    assert bench.significant(value) == expected


def test_check_results_names_each_problem(tmp_path):
    results = json.loads(json.dumps(_results(tmp_path), default=str))
    results["contenders"]["openvino-fp32"]["workloads"]["blog"]["tpot_s"]["median"] = float("nan")
    results["contenders"]["pytorch-fp32"]["load_compile_s"] = 0
    del results["quality"]["openvino-fp32"]
    results["contenders"]["openvino-fp32"]["stages"]["blog"]["first_token"]["rest"] = -0.1
    del results["contenders"]["pytorch-fp32"]["stages"]
    problems = report.check_results(results, ["pytorch-fp32", "openvino-fp32", "openvino-int8"], ["blog", "photo"])
    text = "\n".join(problems)
    for expected in ("contenders.openvino-int8 is missing", "workloads.photo is missing",
                     "contenders.openvino-fp32.workloads.blog.tpot_s.median", "contenders.pytorch-fp32.load_compile_s",
                     "quality.openvino-fp32 is missing", "contenders.pytorch-fp32.stages.blog is missing",
                     "contenders.openvino-fp32.stages.blog.first_token.rest is -0.1"):
        assert expected in text


def test_markdown_tables(tmp_path):
    results = _results(tmp_path)
    results["contenders"]["openvino-int4"] = {"label": "INT4", "backend": "openvino", "error": "crashed"}
    table = report.markdown_table(results, "blog")
    lines = table.splitlines()
    assert lines[0].startswith("*blog workload") and "stand-in" in lines[0] and "10.0 GB/s" in lines[0]
    rows = [line for line in lines if line.startswith("| ")]
    assert len(rows) == 1 + 3  # header + one row per contender
    assert "crashed" in rows[-1]
    comparison = report.comparison_markdown(results).splitlines()
    assert comparison[0].startswith("| comparison | figure") and "12.3x" in comparison[2]


def _readme_fields() -> set[str]:
    """The keys the README's results.json table documents; ``a.b / c`` documents ``a.b`` and ``a.c``."""
    readme = (REPO_ROOT / "README.md").read_text()
    rows = readme[readme.index("| field | meaning |"):].split("\n\n")[0].splitlines()[2:]
    fields = set()
    for row in rows:
        first, *others = re.fullmatch(r"\| `([^`]+)` \| .+ \|", row).group(1).split(" / ")
        fields |= {first} | {first.rsplit(".", 1)[0] + "." + other for other in others}
    return fields


def _notebook_results_keys() -> set[str]:
    """Top-level keys notebook 04 writes into ``results``: its ``results = {...}`` and ``results["..."] =``."""
    cells = json.loads((REPO_ROOT / "notebooks" / "04_evaluate.ipynb").read_text())["cells"]
    keys = set()
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        code = "".join(line for line in "".join(cell["source"]).splitlines(keepends=True)
                       if not line.lstrip().startswith(("%", "!")))
        for node in ast.walk(ast.parse(code)):
            for target in node.targets if isinstance(node, ast.Assign) else ():
                if isinstance(target, ast.Name) and target.id == "results" and isinstance(node.value, ast.Dict):
                    keys |= {k.value for k in node.value.keys}
                if (isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name)
                        and target.value.id == "results" and isinstance(target.slice, ast.Constant)):
                    keys.add(target.slice.value)
    return keys


def test_the_readme_documents_every_field_of_results_json(tiny, prepared):
    fields = _readme_fields()
    documented = {f.split(".")[0] for f in fields}
    written = _notebook_results_keys()
    assert {"created", "contenders", "quality", "recommendation"} <= written  # the parsing found the notebook's keys
    assert written <= documented, f"undocumented in the README: {sorted(written - documented)}"
    # every key of a contender record, and of its figures per workload, has a row `contenders.<c>.<key>[...]`
    blog = {"blog": prepared["blog"]}
    record = bench.measure_contender(_pytorch_contender(tiny, []), blog, 1, warmup=0, iterations={"blog": 1})
    bench.add_bandwidth_bound({"c": record}, 10.0)
    failed = bench.new_record(bench.Contender("x", "X", "pytorch", lambda threads: 1 / 0), 1)
    with bench.loaded(failed, lambda: 1 / 0):
        pass
    assert "error" not in record and "error" in failed
    keys = {f"contenders.<c>.{k}" for k in {*record, *failed}}
    keys |= {f"contenders.<c>.workloads.<w>.{k}" for k in record["workloads"]["blog"]}
    undocumented = {k for k in keys if not any(f == k or f.startswith(k + ".") for f in fields)}
    assert not undocumented, f"undocumented in the README: {sorted(undocumented)}"


def test_a_contender_that_fails_is_recorded_with_the_reason(prepared, capsys):
    def load(threads):
        raise OSError("no such checkpoint")

    record = bench.measure_contender(bench.Contender("pytorch-fp32", "PyTorch FP32", "pytorch", load),
                                     prepared, 1, warmup=0, iterations={"blog": 1, "photo": 1})
    assert record["error"] == "OSError: no such checkpoint" and "workloads" not in record
    assert "failed" in capsys.readouterr().out


def test_a_failure_inside_the_loaded_block_is_recorded_and_the_model_freed(tiny, capsys):
    loads, closed = [], []
    record = bench.new_record(_pytorch_contender(tiny, loads), 1)
    with bench.loaded(record, lambda: "a model", close=closed.append) as session:
        assert session.model == "a model"
        raise MemoryError("out of memory while answering")
    assert record["error"] == "MemoryError: out of memory while answering" and record["load_compile_s"] > 0
    assert session.model is None and closed == ["a model"] and "failed" in capsys.readouterr().out
    quiet = bench.new_record(_pytorch_contender(tiny, loads), 1)
    with bench.loaded(quiet, lambda: "a model") as session:
        pass
    assert "error" not in quiet and quiet["peak_rss_MB"] >= quiet["rss_before_MB"] > 0
    assert 0 <= quiet["other_processes_cpu_share"] <= 1


def test_peer_comparison_pairs_the_same_bits_and_the_fastest_of_each():
    def record(backend: str, ttft: float, decode: float) -> dict:
        return {"backend": backend, "workloads": {"text": {"ttft_s": {"median": ttft},
                                                           "decode_tok_s": {"median": decode}}}}

    records = {"openvino-fp32": record("openvino", 0.2, 50.0), "openvino-int8": record("openvino", 0.1, 80.0),
               "llamacpp-f16": record("llama.cpp", 0.4, 40.0), "llamacpp-q8_0": record("llama.cpp", 0.05, 100.0),
               "pytorch-fp32": record("pytorch", 0.01, 500.0)}
    rows = report.peer_comparison(records, ["text", "photo"])
    pairs = [(r["pair"], r["OpenVINO"], r["llama.cpp"]) for r in rows]
    assert pairs == [("same bits per weight", "openvino-fp32", "llamacpp-f16"),
                     ("same bits per weight", "openvino-int8", "llamacpp-q8_0"),
                     ("fastest first token of each", "openvino-int8", "llamacpp-q8_0"),
                     ("fastest decoding of each", "openvino-int8", "llamacpp-q8_0")]  # no photo rows, no PyTorch
    assert rows[0]["TTFT speed-up"] == 2.0 and rows[0]["decode speed-up"] == 1.25  # OpenVINO faster
    assert rows[1]["TTFT speed-up"] == 0.5 and rows[1]["decode speed-up"] == 0.8  # llama.cpp faster


# --- where the time goes (helpers.stages) -------------------------------------------------------------------


@pytest.mark.parametrize("runtime", ["pytorch", "openvino"])
def test_stages_add_up_and_land_where_they_belong(runtime, pytorch_model, openvino_model, prepared):
    from helpers import stages

    model = pytorch_model if runtime == "pytorch" else openvino_model
    photo, text = prepared["photo"], prepared["text"]
    bench.time_generation(model, photo.inputs, 4)  # warm-up
    split = stages.measure(model, photo.inputs, 6, photo.facts["image_tiles"])
    first, step = split["first_token"], split["per_token"]
    # every stage ran, and the clock never counted more time than there was (the rest is never negative)
    assert first["vision"] > 0 and first["text_embeddings"] > 0 and first["language_model"] > 0
    assert first["rest"] >= 0 and step["rest"] >= 0 and step["language_model"] > 0
    assert first["vision"] + first["text_embeddings"] + first["language_model"] + first["rest"] == pytest.approx(
        first["ttft"])
    assert split["vision_per_tile"] == pytest.approx(first["vision"] / 13)
    assert 0 < first["ttft"] < split["e2e"] and step["tpot"] > 0
    text_split = stages.measure(model, text.inputs, 4, 0)
    assert text_split["first_token"]["vision"] == 0 and text_split["vision_per_tile"] == 0
    # the clock leaves the model as it found it
    if runtime == "pytorch":
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    else:
        assert not {"forward", "embed_tokens"} & set(vars(model.language_model))
        assert "forward" not in vars(model.vision_embeddings)


def test_a_stage_event_is_given_to_the_token_it_served():
    from helpers import stages

    events = [("vision", 0.0, 0.5), ("text_embeddings", 0.5, 0.6), ("language_model", 0.6, 0.9),
              ("text_embeddings", 1.0, 1.05), ("language_model", 1.05, 1.15),
              ("text_embeddings", 1.2, 1.25), ("language_model", 1.25, 1.35)]
    split = stages.split(events, 0.0, [1.0, 1.2, 1.4], 1.45, tiles=2)
    assert split["first_token"] == pytest.approx({"vision": 0.5, "text_embeddings": 0.1, "language_model": 0.3,
                                                  "ttft": 1.0, "rest": 0.1})
    assert split["per_token"] == pytest.approx({"language_model": 0.1, "text_embeddings": 0.05, "tpot": 0.2,
                                                "rest": 0.05})
    assert split["vision_per_tile"] == pytest.approx(0.25) and split["e2e"] == pytest.approx(1.45)


def test_compile_cache_is_written_then_read(fp32_dir, tmp_path):
    cache = tmp_path / "ov-cache"
    times = bench.compile_cache_times(fp32_dir, 2, cache)
    assert times["first_s"] > 0 and times["cached_s"] > 0
    blobs = [f for f in cache.rglob("*.blob")]
    assert blobs and times["cache_MB"] == pytest.approx(sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
                                                        / 1e6, rel=1e-3)


def test_chat_loads_through_the_compile_cache(fp32_dir, tmp_path, monkeypatch):
    from helpers import chat

    monkeypatch.setenv("VLM_CACHE", str(tmp_path / "cache"))
    chat.load_model(fp32_dir)
    assert list((tmp_path / "cache" / "openvino-compiled").rglob("*.blob"))
    chat.load_model(fp32_dir, compile_cache=False)  # still loads with the cache switched off


def test_decoding_with_a_busy_core_is_measured_in_a_fresh_process(fp32_dir):
    from helpers import busy

    figures = busy.decode_with_a_busy_core(fp32_dir, 2, "PASSIVE", new_tokens=4, seconds=0.5)
    assert figures["idle_tok_s"] > 0 and figures["busy_tok_s"] > 0 and figures["wait_policy"] == "PASSIVE"
    assert figures["loss"] == pytest.approx(1 - figures["busy_tok_s"] / figures["idle_tok_s"])
    with pytest.raises(RuntimeError, match="busy-core measurement failed"):
        busy.decode_with_a_busy_core(fp32_dir.parent / "no-such-ir", 2, None, new_tokens=4, seconds=0.5)


def test_vision_flops_are_counted_from_the_ir(fp32_dir, pytorch_model):
    from helpers import stages

    v = pytorch_model.config.vision_config
    h, inner, layers, patches = v.hidden_size, v.intermediate_size, v.num_hidden_layers, (512 // 16) ** 2
    encoder = layers * (2 * patches * (4 * h * h + 2 * h * inner) + 2 * 2 * patches * patches * h)
    patch_embedding = 2 * patches * 3 * 16 * 16 * h
    text_hidden = pytorch_model.config.text_config.hidden_size
    connector = 2 * (patches // 16) * (16 * h) * text_hidden  # pixel shuffle by 4, then one linear layer
    assert stages.vision_flops_per_tile(fp32_dir) == encoder + patch_embedding + connector


def test_prefill_flops_grow_with_the_prompt(pytorch_model):
    from helpers import stages

    c = pytorch_model.config.text_config
    one, two = stages.prefill_flops(c, 1), stages.prefill_flops(c, 2)
    head = 2 * c.hidden_size * c.vocab_size
    assert two - one > one - head > 0  # a second token costs its linear layers and attention over two tokens


@pytest.mark.parametrize("precision", ["f32", "bf16", "int8"])
def test_matmul_peak_is_measured(precision):
    assert hardware.measure_matmul_gflops(precision, 2, n=256, repeats=3) > 0


def test_matmul_peak_refuses_an_unknown_precision():
    with pytest.raises(ValueError, match="precision must be"):
        hardware.measure_matmul_gflops("fp8")


def test_the_recommendation_follows_the_figures_and_the_quality_floor():
    def rec(ttft: float, decode: float) -> dict:
        fig = lambda v: {"median": v}  # noqa: E731
        return {"label": "x", "workloads": {"photo": {"ttft_s": fig(ttft), "decode_tok_s": fig(decode)},
                                            "text": {"ttft_s": fig(0.1), "decode_tok_s": fig(decode)}}}

    results = {"contenders": {"fp32": rec(9.0, 40.0), "int4": rec(8.0, 60.0), "mixed": rec(6.0, 50.0),
                            "broken": rec(1.0, 500.0)},
               "quality": {"fp32": {"similarity": 1.0}, "int4": {"similarity": 0.93}, "mixed": {"similarity": 0.95},
                           "broken": {"similarity": 0.4}}}
    picks = report.recommend(results)
    assert picks["photos"]["contender"] == "mixed" and picks["photos"]["runner_up"] == "int4"
    assert picks["long answers"]["contender"] == "int4" and picks["long answers"]["runner_up_decode_tok_s"] == 50.0
    assert report.recommend({"contenders": {}, "quality": {}}) == {}
