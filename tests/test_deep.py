"""What only notebook 05 uses (helpers.deep): where the time goes, a busy core, and the hardware's yardsticks."""

from __future__ import annotations

import pytest

from helpers import bench, chat, images, machine
from helpers.deep import busy, limits, stages


@pytest.fixture(scope="module")
def prepared(tiny_processor):
    return bench.prepare_workloads(tiny_processor)


# --- where the time goes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", ["pytorch", "openvino"])
def test_stages_add_up_and_land_where_they_belong(runtime, tiny_pytorch, tiny_openvino, prepared):
    model = tiny_pytorch if runtime == "pytorch" else tiny_openvino
    photo, text = prepared["photo"], prepared["text"]
    bench.time_generation(model, photo.inputs, 4)  # warm-up
    split = stages.measure(model, photo.inputs, 6, photo.facts["image_tiles"])
    first, step = split["first_token"], split["per_token"]
    # every stage ran, and the clock never counted more time than there was (the rest is never negative)
    assert first["vision"] > 0 and first["text_embeddings"] > 0 and first["language_model"] > 0
    assert first["rest"] >= 0 and step["rest"] >= 0 and step["language_model"] > 0
    assert sum(first[s] for s in (*stages.STAGES, "rest")) == pytest.approx(first["ttft"])
    assert split["vision_per_tile"] == pytest.approx(first["vision"] / 13)
    assert 0 < first["ttft"] < split["e2e"] and step["tpot"] > 0
    text_split = stages.measure(model, text.inputs, 4, None)
    assert text_split["first_token"]["vision"] == 0 and text_split["vision_per_tile"] == 0
    # the clock leaves the model as it found it
    if runtime == "pytorch":
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    else:
        assert not {"forward", "embed_tokens"} & set(vars(model.language_model))
        assert "forward" not in vars(model.vision_embeddings)


def test_a_stage_event_is_given_to_the_token_it_served():
    events = [("vision", 0.0, 0.5), ("text_embeddings", 0.5, 0.6), ("language_model", 0.6, 0.9),
              ("text_embeddings", 1.0, 1.05), ("language_model", 1.05, 1.15),
              ("text_embeddings", 1.2, 1.25), ("language_model", 1.25, 1.35)]
    split = stages.split(events, 0.0, [1.0, 1.2, 1.4], 1.45, tiles=2)
    assert split["first_token"] == pytest.approx({"vision": 0.5, "text_embeddings": 0.1, "language_model": 0.3,
                                                  "ttft": 1.0, "rest": 0.1})
    assert split["per_token"] == pytest.approx({"language_model": 0.1, "text_embeddings": 0.05, "tpot": 0.2,
                                                "rest": 0.05})
    assert split["vision_per_tile"] == pytest.approx(0.25) and split["e2e"] == pytest.approx(1.45)


def test_decoding_with_a_busy_core_is_measured_in_a_fresh_process(tiny_fp32):
    figures = busy.decode_with_a_busy_core(tiny_fp32, 2, "PASSIVE", new_tokens=4, seconds=0.5)
    assert figures["idle_tok_s"] > 0 and figures["busy_tok_s"] > 0 and figures["wait_policy"] == "PASSIVE"
    assert figures["loss"] == pytest.approx(1 - figures["busy_tok_s"] / figures["idle_tok_s"])
    with pytest.raises(RuntimeError, match=r"^The busy-core measurement failed in its own process \(.+\)\.$"):
        busy.decode_with_a_busy_core(tiny_fp32.parent / "no-such-ir", 2, None, new_tokens=4, seconds=0.5)


# --- the work a model does -------------------------------------------------------------------------------------


def test_vision_flops_are_counted_from_the_ir_with_the_models_own_tile(tiny_fp32, tiny_pytorch):
    v = tiny_pytorch.config.vision_config
    h, inner, layers, patches = v.hidden_size, v.intermediate_size, v.num_hidden_layers, (v.image_size // v.patch_size) ** 2
    encoder = layers * (2 * patches * (4 * h * h + 2 * h * inner) + 2 * 2 * patches * patches * h)
    patch_embedding = 2 * patches * 3 * v.patch_size**2 * h
    scale, text_hidden = tiny_pytorch.config.scale_factor, tiny_pytorch.config.text_config.hidden_size
    connector = 2 * (patches // scale**2) * (scale**2 * h) * text_hidden  # pixel shuffle, then one linear layer
    assert limits.vision_flops_per_tile(tiny_fp32, tiny_pytorch.config) == encoder + patch_embedding + connector


def test_prefill_flops_grow_with_the_prompt(tiny_pytorch):
    c = tiny_pytorch.config.text_config
    one, two = limits.prefill_flops(c, 1), limits.prefill_flops(c, 2)
    head = 2 * c.hidden_size * c.vocab_size
    assert two - one > one - head > 0  # a second token costs its linear layers and attention over two tokens


def test_bytes_per_token_follow_the_precision_held_in_memory(tiny_fp32, tiny_pytorch):
    f32 = limits.lm_bytes_per_token(tiny_fp32, "float32")
    assert limits.lm_bytes_per_token(tiny_fp32, "bfloat16") == pytest.approx(f32 / 2, rel=0.01)
    text_model = tiny_pytorch.model.text_model
    weights = sum(p.numel() for n, p in text_model.named_parameters() if "embed_tokens" not in n)
    weights += tiny_pytorch.lm_head.weight.numel()
    assert f32 == pytest.approx(4 * weights, rel=0.02)  # every weight but the input embedding, once
    c = tiny_pytorch.config.text_config
    with_cache = limits.lm_bytes_per_token(tiny_fp32, "float32", 100, c)
    assert with_cache - f32 == limits.kv_cache_bytes(c, 100) == 2 * c.num_hidden_layers * c.num_key_value_heads * \
        c.head_dim * 100 * 2


# --- the yardsticks ---------------------------------------------------------------------------------------------


def test_read_bandwidth_by_two_methods_and_a_curve():
    figures = limits.read_bandwidth(16, 1, repeats=2)
    assert set(figures) == {"numpy_GB_s", "openvino_GB_s"} and all(0.5 < v < 5000 for v in figures.values())
    curve = limits.bandwidth_curve([4, 64], [1], rounds=2)
    assert set(curve["1"]) == {"4", "64"}
    assert all(f["best_GB_s"] == max(f["numpy_GB_s"], f["openvino_GB_s"]) for f in curve["1"].values())
    # a working set's bandwidth is the best measured at its size or any larger one (the largest, beyond all)
    best = {size: f["best_GB_s"] for size, f in curve["1"].items()}
    assert limits.bandwidth_at(curve, 1, 10) == best["64"] and limits.bandwidth_at(curve, 1, 1000) == best["64"]
    assert limits.bandwidth_at(curve, 1, 4) == max(best.values())


def test_a_bigger_buffer_read_faster_is_a_reading_of_the_smaller_one():
    # 91 MB read slower than 134 and 270 MB in one run: noise, since a bigger buffer never reads faster
    curve = {"2": {"8": {"best_GB_s": 83.0}, "86.34": {"best_GB_s": 34.9}, "91.26": {"best_GB_s": 24.8},
                   "134.2": {"best_GB_s": 25.5}, "270.4": {"best_GB_s": 26.5}}}
    assert limits.bandwidth_at(curve, 2, 91.26) == 26.5 and limits.bandwidth_at(curve, 2, 86.34) == 34.9
    assert limits.bandwidth_at(curve, 2, 300) == 26.5 and limits.bandwidth_at(curve, 2, 1) == 83.0


@pytest.mark.parametrize("precision, kernel", [("bf16", ("bf16", "amx_bf16", "f32")), ("int8", ("int8", "amx_int8"))])
def test_matmul_peaks_name_the_kernel_that_ran(precision, kernel):
    peak = limits.matmul_peak_gflops(precision, 2, [(256, 256, 256)], repeats=2)
    assert peak["GFLOP_s"] > 0 and peak["shape"] == [256, 256, 256]
    if precision == "bf16" and not machine.supports_bf16():
        return  # without bf16 instructions OpenVINO computes this in f32
    assert limits.kernel_of(peak["exec_type"]) in kernel, peak["exec_type"]


@pytest.mark.parametrize("exec_type, kernel", [("brgemm_avx512_amx_bf16", "amx_bf16"), ("brgemm_avx512_amx_I8", "amx_int8"),
                                                ("brgemm_avx512_bf16", "bf16"), ("jit_avx512_core_vnni_I8", "int8"),
                                                ("brgemm_avx512_I8", "int8"), ("jit_avx2_FP32", "f32")])
def test_an_exec_type_names_its_instruction_family(exec_type, kernel):
    assert limits.kernel_of(exec_type) == kernel


def test_the_documented_peak_is_per_cycle_times_cores_times_clock(monkeypatch):
    monkeypatch.setattr(limits, "cpu_kind", lambda: "zen4")
    assert limits.documented_peak_gflops("bf16", 2, 3.0) == 64 * 2 * 3.0
    assert limits.documented_peak_gflops("amx_bf16", 2, 3.0) is None  # Zen 4 has no AMX
    monkeypatch.setattr(limits, "cpu_kind", lambda: "intel")
    assert limits.documented_peak_gflops("amx_int8", 1, 2.0) == 2048 * 2.0
    assert limits.documented_peak_gflops("bf16", 2, None) is None


@pytest.mark.parametrize("vendor, family, flags, kind", [
    ("AuthenticAMD", 25, "fma avx2 avx512f avx512_bf16", "zen4"), ("AuthenticAMD", 25, "fma avx2", "other"),  # Zen 3
    ("AuthenticAMD", 26, "avx2 avx512f", "zen5"), ("GenuineIntel", 6, "avx2 avx512f amx_bf16", "intel"),
    ("GenuineIntel", 6, "fma avx2 avx_vnni", "other")])  # an AVX2-only Intel laptop: no documented figure
def test_the_documented_peaks_cover_only_the_cpus_they_describe(vendor, family, flags, kind):
    cpuinfo = (f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\nflags\t\t: fpu {flags}\n\n"
               "processor\t: 1\n")
    assert limits.cpu_kind(cpuinfo) == kind


def test_the_clock_is_measured_while_busy():
    clock = limits.measure_clock_ghz(5_000_000)
    assert clock is None or 0.3 < clock < 7.0


def test_a_profile_names_the_kernels_that_ran(tiny_fp32, tiny_processor):
    import numpy as np
    import openvino as ov

    compiled = ov.Core().compile_model(tiny_fp32 / "openvino_vision_embeddings_model.xml", "CPU",
                                       {"INFERENCE_NUM_THREADS": 2, "PERF_COUNT": True})
    tile, patch = images.tile_size(tiny_processor), 16
    feed = {"pixel_values": np.zeros((1, 3, tile, tile), np.float32),
            "patch_attention_mask": np.ones((1, tile // patch, tile // patch), bool),
            "patch_position_ids": np.arange((tile // patch) ** 2)[None]}
    kernels = limits.profile(compiled, feed, repeats=1)
    assert kernels and all(" / " in k and v >= 0 for k, v in kernels.items())
    assert any(k.startswith(("FullyConnected", "MatMul")) for k in kernels)


def test_one_decoding_step_is_profiled_after_generate(tiny_fp32, tiny_processor):
    from optimum.intel import OVModelForVisualCausalLM

    model = OVModelForVisualCausalLM.from_pretrained(tiny_fp32, ov_config={"INFERENCE_NUM_THREADS": 2,
                                                                           "PERF_COUNT": True})
    bench.time_generation(model, chat.question_inputs(tiny_processor, "Hello?"), 4)
    step = limits.kernels_of_last_call(model.language_model.request)
    assert step and all(" / " in k and n >= 1 and s >= 0 for k, (n, s) in step.items())
    assert any(k.startswith("FullyConnected") for k in step)
    assert list(step.values()) == sorted(step.values(), key=lambda v: -v[1])  # slowest first


def test_a_fraction_is_kept_as_measured():
    assert limits.fraction(1.5, 1.0) == 1.5  # above 1: the yardstick is wrong, and the notebook says so
    assert limits.fraction(1.0, None) is None


def test_a_fraction_above_one_is_found_wherever_it_is_recorded():
    results = {"bandwidth": {"bound": {"openvino-int4": {"fraction": 0.3}, "llamacpp-q4_0": {"fraction": 1.2}}},
               "compute": {"contenders": {"mixed": {"of measured peak": 1.01, "of documented peak": 0.9,
                                                    "vision GFLOP/s": 600.0}}}}
    assert limits.breaches(results) == ["bandwidth.bound.llamacpp-q4_0.fraction: 1.2",
                                        "compute.contenders.mixed.of measured peak: 1.01"]


def test_no_recorded_fraction_of_a_limit_is_above_one():
    """The rule, on the results.json of the run docs/RESULTS.md shows (a recorded run on a real machine)."""
    import json

    from helpers import store

    recorded = store.REPO_ROOT / "docs" / "results.json"
    assert recorded.is_file(), "docs/results.json (the documented run) is missing"
    assert limits.breaches(json.loads(recorded.read_text())) == []
