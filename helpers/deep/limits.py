"""The hardware's limits, as yardsticks for notebook 05: read bandwidth at each working-set size, matrix-product peaks
measured with OpenVINO's own kernels beside the documented throughput of the instructions they use, which kernels a
compiled model runs (``PERF_COUNT``), and the work a model does (bytes per token, FLOPs per tile and per prefill).

A measured speed above its yardstick (a fraction above 1) means the yardstick is wrong: notebook 05 says so and keeps
the figure as measured. Written by hand: no library we install measures these for OpenVINO's kernels.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# Operations per core and cycle, as the vendors document them (Intel 64 and IA-32 Architectures Optimization
# Reference Manual; AMD Software Optimization Guides for families 19h and 1Ah): an FMA is 2 operations. Only CPUs with
# AVX-512 are covered: Intel's row is a core with two 512-bit FMA units (a Xeon with one has half), Zen 4 runs 512-bit
# instructions on 256-bit units in two cycles, Zen 5 (EPYC) has full 512-bit units. Elsewhere no documented figure.
PER_CYCLE = {"intel": {"f32": 64, "bf16": 128, "int8": 256, "amx_bf16": 1024, "amx_int8": 2048},
             "zen4": {"f32": 32, "bf16": 64, "int8": 128}, "zen5": {"f32": 64, "bf16": 128, "int8": 256}}


def cpu_kind(cpuinfo: str | None = None) -> str:
    """``intel``, ``zen4`` or ``zen5`` (AMD family 25 / 26) for a CPU with AVX-512, from /proc/cpuinfo (or the text
    ``cpuinfo``); ``other`` elsewhere (e.g. an AVX2-only laptop, or a Zen 3, which is family 25 too)."""
    try:
        block = (cpuinfo if cpuinfo is not None else Path("/proc/cpuinfo").read_text()).split("\n\n")[0]
    except OSError:
        return "other"
    info = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in block.splitlines())}
    if "avx512f" not in info.get("flags", "").split():
        return "other"
    if info.get("vendor_id") == "GenuineIntel":
        return "intel"
    return {"25": "zen4", "26": "zen5"}.get(info.get("cpu family", ""), "other")


def last_level_cache_mb() -> float:
    """The largest data cache one core sees, in MB (sysfs); 0 when unknown."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        if (index / "type").read_text().strip() != "Instruction":
            size = (index / "size").read_text().strip()
            sizes.append(float(size.rstrip("KMG")) * {"K": 2**10, "M": 2**20, "G": 2**30}.get(size[-1], 1) / 1e6)
    return max(sizes, default=0.0)


def measure_clock_ghz(iterations: int = 50_000_000) -> float | None:
    """The core's clock while busy, measured: a loop of 8 dependent additions per step (one cycle each on every x86-64
    since 2006), timed. ``None`` where the loop can't run (not x86-64, or no executable memory)."""
    import ctypes
    import mmap
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    # mov rcx, rdi; xor eax, eax; loop: 8 x add rax, 1; dec rcx; jnz loop; ret
    code = bytes.fromhex("4889f9" "31c0" + "4883c001" * 8 + "48ffc9" "75db" "c3")
    try:
        memory = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, ValueError):
        return None
    memory.write(code)
    loop = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_uint64)(ctypes.addressof(ctypes.c_char.from_buffer(memory)))
    loop(iterations // 10)  # warm-up: the clock ramps up
    best = min(_timed(loop, iterations) for _ in range(3))
    return 8 * iterations / best / 1e9


def _timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def documented_peak_gflops(kernel: str, threads: int, clock_ghz: float | None) -> float | None:
    """The most ``kernel`` instructions (``f32``, ``bf16``, ``int8``, ``amx_bf16``, ``amx_int8``) can do on
    ``threads`` cores at ``clock_ghz``, per :data:`PER_CYCLE`; ``None`` where the CPU or the clock is unknown."""
    per_cycle = PER_CYCLE.get(cpu_kind(), {}).get(kernel)
    return per_cycle * threads * clock_ghz if per_cycle and clock_ghz else None


def kernel_of(exec_type: str) -> str:
    """The instruction family an OpenVINO exec type (``brgemm_avx512_amx_bf16``, ``jit_avx512_core_vnni_I8``...)
    runs on, as :data:`PER_CYCLE` names it."""
    name = exec_type.lower()
    int8 = any(t in name for t in ("i8", "u8", "vnni", "int8"))
    if "amx" in name:
        return "amx_int8" if int8 else "amx_bf16"
    return "int8" if int8 else "bf16" if "bf16" in name else "f32"


def profile(compiled_model, inputs: dict, repeats: int = 3) -> dict[str, float]:
    """Seconds per inference of ``compiled_model`` (compiled with ``PERF_COUNT: True``) by node type and exec type,
    e.g. ``{"FullyConnected / brgemm_avx512_amx_bf16": 0.012}``: which kernels ran, and how long."""
    request = compiled_model.create_infer_request()
    request.infer(inputs)
    totals: dict[str, float] = {}
    for _ in range(repeats):
        request.infer(inputs)
        for key, (_, seconds) in kernels_of_last_call(request).items():
            totals[key] = totals.get(key, 0.0) + seconds / repeats
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def kernels_of_last_call(request) -> dict[str, tuple[int, float]]:
    """``{"node type / exec type": (nodes executed, seconds)}`` of an infer request's last call (compiled with
    ``PERF_COUNT: True``), slowest first: e.g. one decoding step of a stateful language model after ``generate``."""
    found: dict[str, tuple[int, float]] = {}
    for node in request.profiling_info:
        if node.status.name == "EXECUTED":
            key = f"{node.node_type} / {node.exec_type}"
            count, seconds = found.get(key, (0, 0.0))
            found[key] = (count + 1, seconds + node.real_time.total_seconds())
    return dict(sorted(found.items(), key=lambda kv: -kv[1][1]))


def read_bandwidth(size_mb: float, threads: int, repeats: int = 5) -> dict[str, float]:
    """Read bandwidth (GB/s) over a buffer of ``size_mb`` MB split over ``threads`` threads, best of ``repeats``, by
    two methods: NumPy summing the buffer, and OpenVINO multiplying a vector by a weight matrix of that size (what
    decoding does). Small buffers stay in the CPU's caches, and read faster: that is the point of the curve."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    buffer = np.ones(max(int(size_mb * 1e6 // 4), 1024), dtype=np.float32)
    chunks = np.array_split(buffer, threads)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(np.sum, chunks))
        numpy_s = min(_timed(lambda: list(pool.map(np.sum, chunks))) for _ in range(repeats))
    rows = max(int(size_mb * 1e6 // (4 * 1024)), 1)
    x = ops.parameter([1, 1024], np.float32)
    model = ov.Model([ops.matmul(x, ops.constant(np.ones((rows, 1024), np.float32)), False, True)], [x])
    request = ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                     "INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()
    vector = np.ones((1, 1024), np.float32)
    request.infer({0: vector})
    gemv_s = min(_timed(request.infer, {0: vector}) for _ in range(repeats * 4))
    return {"numpy_GB_s": buffer.nbytes / numpy_s / 1e9, "openvino_GB_s": rows * 1024 * 4 / gemv_s / 1e9}


def bandwidth_curve(sizes_mb: list[float], thread_counts: list[int], rounds: int = 3) -> dict[str, dict[str, dict]]:
    """``{threads: {size_mb: read_bandwidth(...) with "best_GB_s"}}`` over the sizes (keys as strings, for JSON), each
    method's best over ``rounds`` passes over every size: a busy spell on a shared machine then slows one pass of all
    sizes, not every reading of one size (which made 91 MB read 30% slower than 86 MB in one run)."""
    curve: dict = {}
    for _ in range(rounds):
        for threads in thread_counts:
            for size in sorted(sizes_mb):
                point = curve.setdefault(str(threads), {}).setdefault(f"{size:.4g}", {})
                for method, value in read_bandwidth(size, threads, repeats=2).items():
                    point[method] = max(point.get(method, 0.0), value)
                point["best_GB_s"] = max(point["numpy_GB_s"], point["openvino_GB_s"])
    return curve


def bandwidth_at(curve: dict, threads: int, size_mb: float) -> float:
    """The read bandwidth a working set of ``size_mb`` MB can have: the best measured at that size or any larger one
    in ``curve`` (at the largest if none is larger). A bigger buffer never reads faster, and noise only slows a
    reading, so each of those is a reading of the working set's bandwidth, or below it."""
    points = sorted((float(s), f["best_GB_s"]) for s, f in curve[str(threads)].items())
    return max([bw for s, bw in points if s >= size_mb * 0.999] or [points[-1][1]])


def matmul_peak_gflops(precision: str, threads: int, shapes: list[tuple[int, int, int]], repeats: int = 5) -> dict:
    """GFLOP/s of OpenVINO matrix products ``[m, k] x [k, n]`` in ``precision`` (``bf16``: f32 weights computed in
    bf16; ``int8``: both inputs quantized as static quantization leaves them), best over ``shapes`` and repeats, and
    the exec type that ran (what the documented peak is looked up by). Timed by the product's own node in
    ``PERF_COUNT``: the f32 input's conversion around it, which a model's chain of products does not pay at each one,
    made the whole call read 10-20% slower than the kernel, and a real encoder then ran above its "peak"."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    best = {"GFLOP_s": 0.0}
    for m, k, n in shapes:
        x = ops.parameter([m, k], np.float32)
        w = ops.constant(np.random.default_rng(0).standard_normal((n, k)).astype(np.float32))
        a, b = x, w
        if precision == "int8":
            zero, low, high = (ops.constant(np.float32(v)) for v in (0.0, -4.0, 4.0))
            a, b = ops.fake_quantize(x, zero, high, zero, high, 256), ops.fake_quantize(w, low, high, low, high, 255)
        model = ov.Model([ops.matmul(a, b, False, True)], [x])
        hint = "bf16" if precision == "bf16" else "f32"
        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERF_COUNT": True,
                                                          "INFERENCE_PRECISION_HINT": hint})
        request, data = compiled.create_infer_request(), np.abs(np.random.default_rng(1).standard_normal((m, k)))
        request.infer({0: data.astype(np.float32)})
        for _ in range(repeats):
            request.infer({0: data.astype(np.float32)})
            product = max(request.profiling_info, key=lambda node: node.real_time)  # the product, by far
            rate = 2 * m * k * n / product.real_time.total_seconds() / 1e9
            if rate > best["GFLOP_s"]:
                best = {"GFLOP_s": rate, "shape": [m, k, n], "exec_type": product.exec_type}
    return best


def lm_bytes_per_token(folder: Path, computes_in: str, context_tokens: int = 0, text_config=None) -> int:
    """Bytes a decoding step of the IR's language model reads: its weights as the CPU plugin holds them (FP32
    constants become bf16 when it computes in bf16), plus the KV cache of ``context_tokens`` earlier tokens."""
    import openvino as ov

    half = computes_in in ("bfloat16", "float16")
    weights = sum(op.get_byte_size() // (2 if half and op.get_output_element_type(0).get_type_name() == "f32" else 1)
                  for op in ov.Core().read_model(Path(folder) / "openvino_language_model.xml").get_ops()
                  if op.get_type_name() == "Constant")
    return weights + kv_cache_bytes(text_config, context_tokens) if text_config else weights


def kv_cache_bytes(text_config, tokens: int, bytes_per_value: int = 2) -> int:
    """Keys and values of ``tokens`` tokens, all layers: what each new token's attention reads."""
    c = text_config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * tokens * bytes_per_value


def vision_flops_per_tile(folder: Path, config) -> int:
    """FLOPs of SmolVLM's vision encoder and connector for one tile (its edge and patch from the model's config),
    counted from the IR: 2 per multiply-add of every MatMul, Convolution and ScaledDotProductAttention."""
    import numpy as np
    import openvino as ov

    v = config.vision_config
    side = v.image_size // v.patch_size
    model = ov.Core().read_model(Path(folder) / "openvino_vision_embeddings_model.xml")
    model.reshape({"pixel_values": [1, 3, v.image_size, v.image_size], "patch_attention_mask": [1, side, side],
                   "patch_position_ids": [1, side * side]})
    flops = 0
    for op in model.get_ordered_ops():
        kind, shape = op.get_type_name(), lambda i: op.input_value(i).get_partial_shape().to_shape()
        if kind not in ("MatMul", "Convolution", "ScaledDotProductAttention"):
            continue
        out = int(np.prod(op.get_output_partial_shape(0).to_shape()))
        if kind == "ScaledDotProductAttention":  # q.k over the keys, then the weighted sum of the values
            flops += 2 * int(np.prod(shape(0))) * shape(1)[-2] + 2 * out * shape(1)[-2]
        elif kind == "MatMul":
            flops += 2 * out * shape(0)[-2 if op.get_transpose_a() else -1]
        else:
            flops += 2 * out * int(np.prod(shape(1)[1:]))
    return flops


def prefill_flops(text_config, tokens: int) -> int:
    """FLOPs of the language model's prefill over ``tokens`` tokens: 2 per weight per token, causal attention, and
    the output head for the last token."""
    c = text_config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    q, kv = c.num_attention_heads * head_dim, c.num_key_value_heads * head_dim
    per_layer = c.hidden_size * (q + 2 * kv) + q * c.hidden_size + 3 * c.hidden_size * c.intermediate_size
    return (2 * per_layer * c.num_hidden_layers * tokens + 4 * c.num_hidden_layers * q * tokens * (tokens + 1) // 2
            + 2 * c.hidden_size * c.vocab_size)


def fraction(measured: float, limit: float | None) -> float | None:
    """``measured / limit``, kept as measured: above 1 means the yardstick is wrong, and notebook 05 says so."""
    return None if not limit or math.isnan(limit) else measured / limit


def breaches(results: dict, path: str = "") -> list[str]:
    """Every recorded fraction of a limit above 1 in ``results`` (keys that say ``fraction`` or ``of ... peak``), as
    ``"path: value"``: each one a yardstick to find and fix, never a figure to print or clip."""
    found = []
    for key, value in results.items() if isinstance(results, dict) else ():
        where = f"{path}.{key}" if path else str(key)
        if isinstance(value, dict):
            found += breaches(value, where)
        elif isinstance(value, (int, float)) and ("fraction" in str(key) or "peak" in str(key) and "of" in str(key)) \
                and value > 1:
            found.append(f"{where}: {value:.3g}")
    return found
