"""llama.cpp beside OpenVINO: the same SmolVLM as GGUF files, run with llama-cpp-python and timed like bench.py.

:func:`convert` makes the GGUF files with llama.cpp's own converter (taken from llama-cpp-python's sdist, which
pip does not install) and quantizer; :func:`load` opens them; images go through llama.cpp's multimodal library
(mtmd). Notebook 04's llama.cpp section explains how llama.cpp's image preprocessing differs from transformers'.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from helpers import atomic, bench, data, hardware, synthetic
from helpers.models import ModelChoice
from helpers.paths import cache_dir, models_dir

VERSION = "0.3.36"  # llama-cpp-python, the release whose sdist carries the converter we run
# Language-model weights (the vision projector stays F16). Q4_0, not Q4_K: k-quants need rows that are multiples
# of 256 and SmolVLM2-256M's are 576 or 1536 long; Q4_0's blocks of 32 fit (and llama.cpp repacks them for AVX2).
LM_TYPES = ("f16", "q8_0", "q4_0")
MMPROJ = "mmproj-f16.gguf"
MARKER = "gguf_complete.json"
# Tokens llama.cpp's SmolVLM image wrapper looks up as single tokens (tools/mtmd/mtmd.cpp); a missing one aborts.
IMAGE_WRAPPER_TOKENS = ("\n\n", "\n", "<fake_token_around_image>", "<global-img>")


class LlamaCppUnsupported(RuntimeError):
    """llama.cpp can't run this model or its inputs; the message says why and what to do."""


def lm_file(lm_type: str) -> str:
    """File name of the language model in ``lm_type`` (one of :data:`LM_TYPES`)."""
    return f"model-{lm_type}.gguf"


def gguf_dir(choice: ModelChoice) -> Path:
    """Folder of the GGUF files of ``choice``: ``<models_dir>/<slug>/gguf``."""
    return models_dir() / choice.slug / "gguf"



def sdist_path(version: str = VERSION) -> Path:
    """llama-cpp-python's source archive in the cache (``make`` puts it there), else downloaded from PyPI by pip."""
    folder = cache_dir() / "llama.cpp"
    path = folder / f"llama_cpp_python-{version}.tar.gz"
    if not path.is_file():
        print(f"Downloading llama-cpp-python {version}'s source archive (77 MB) into {folder} ...", flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                               "--disable-pip-version-check", "-q", f"llama-cpp-python=={version}", "-d", str(folder)],
                              capture_output=True, text=True)
        if done.returncode != 0 or not path.is_file():
            raise LlamaCppUnsupported(f"llama.cpp's converter comes from {path.name} (PyPI), which is not in {folder} "
                                      f"and could not be downloaded: {done.stderr.strip()[-400:]}")
    return path


def converter_dir(version: str = VERSION) -> Path:
    """A cache folder with llama.cpp's ``convert_hf_to_gguf.py`` and what it imports, unpacked once from the sdist."""
    dest = cache_dir() / "llama.cpp" / f"convert-{version}"
    if (dest / "convert_hf_to_gguf.py").is_file():
        return dest
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/gguf/", "LICENSE")
    with atomic.locked(dest):
        if (dest / "convert_hf_to_gguf.py").is_file():
            return dest
        with atomic.partial_folder(dest) as tmp, tarfile.open(sdist_path(version)) as archive:
            members = []
            for member in archive.getmembers():
                if member.name.startswith(prefix) and member.name[len(prefix):].startswith(wanted):
                    member.name = member.name[len(prefix):]
                    members.append(member)
            archive.extractall(tmp, members=members, filter="data")
            if not (tmp / "convert_hf_to_gguf.py").is_file():
                raise LlamaCppUnsupported(f"{sdist_path(version)} has no vendor/llama.cpp/convert_hf_to_gguf.py")
    return dest



def check_tokenizer(folder: Path) -> None:
    """Raise :class:`LlamaCppUnsupported` when llama.cpp's SmolVLM image wrapper can't find its tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    missing = [t for t in IMAGE_WRAPPER_TOKENS if len(tokenizer(t, add_special_tokens=False)["input_ids"]) != 1]
    if missing:
        raise LlamaCppUnsupported(
            f"llama.cpp can't run {folder.name} with images: its tokenizer has no single token for "
            f"{', '.join(repr(t) for t in missing)}, which llama.cpp's SmolVLM support needs (llama.cpp would "
            "abort). SmolLM2's tokenizer (the real SmolVLM2's and every stand-in's) has them."
        )


def _converter_input(folder: Path, tmp: Path) -> Path:
    """Links to ``folder``'s files with a config.json whose ``text_config`` names the architecture the converter
    routes by (``VLlama3ForCausalLM``, as the real SmolVLM2's says; the stand-ins' configs leave it out)."""
    config = json.loads((folder / "config.json").read_text())
    config.setdefault("text_config", {}).setdefault("architectures", ["VLlama3ForCausalLM"])
    tmp.mkdir()
    for path in folder.iterdir():
        if path.name != "config.json":
            (tmp / path.name).symlink_to(path.resolve())
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    return tmp


def _run_converter(model_dir: Path, out: Path, outtype: str, *, mmproj: bool = False, threads: int) -> None:
    command = [sys.executable, str(converter_dir() / "convert_hf_to_gguf.py"), str(model_dir),
               "--outtype", outtype, "--outfile", str(out), *(["--mmproj"] if mmproj else [])]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=out.parent)
    if done.returncode != 0 or not out.is_file():
        raise RuntimeError(f"llama.cpp's converter failed on {model_dir.name} ({outtype}):\n"
                           + "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:]))


def quantize(source: Path, dest: Path, lm_type: str = "q4_0", threads: int | None = None) -> Path:
    """Quantize the GGUF language model ``source`` (F16) to ``lm_type`` with llama.cpp's own quantizer."""
    import llama_cpp
    from llama_cpp._logger import set_verbose

    set_verbose(False)  # llama.cpp logs every tensor it quantizes; errors still show
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = threads or hardware.usable_cores()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{lm_type.upper()}")  # e.g. q4_0, q8_0, q4_k_m
    if llama_cpp.llama_model_quantize(str(source).encode(), str(dest).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama.cpp could not quantize {source} to {lm_type}")
    return dest


def read_marker(folder: Path) -> dict | None:
    """The completion record of a GGUF folder (version, seconds and size per file), or ``None``."""
    return atomic.read_record(Path(folder) / MARKER)


def problems(folder: Path) -> list[str]:
    """Why ``folder`` is not a finished conversion made by this llama-cpp-python version (empty list: it is)."""
    marker = read_marker(folder)
    if marker is None:
        return [f"{MARKER} is missing or damaged"]
    found = [f"made for llama-cpp-python {marker.get('llama_cpp_python')}, this environment has {VERSION}"
             ] if marker.get("llama_cpp_python") != VERSION else []
    found += filter(None, [synthetic.stale_record(marker.get("standin"))])
    for name in [*map(lm_file, LM_TYPES), MMPROJ]:
        path = Path(folder) / name
        if not path.is_file() or path.stat().st_size != marker.get("file_sizes", {}).get(name):
            found.append(f"{name} is missing or not the size it was written with")
    return found


def system_info() -> str:
    """What llama.cpp says it was built with and uses here (``llama_print_system_info``: its CPU kernels, e.g.
    ``AVX512 = 1 | AVX512_VNNI = 1``)."""
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode().strip()


def threading() -> str:
    """How llama.cpp's threads wait between operations: its own thread pool, or OpenMP (then ``OMP_WAIT_POLICY``
    matters: ``PASSIVE`` puts them to sleep between the tiny steps of decoding and cuts its speed several times)."""
    if "OPENMP = 1" not in system_info():
        return "llama.cpp's own thread pool (built with GGML_OPENMP=OFF; OMP_WAIT_POLICY does not apply)"
    return f"OpenMP, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"


def require() -> None:
    """Raise :class:`LlamaCppUnsupported` with what to do when llama-cpp-python is not installed."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as err:
        raise LlamaCppUnsupported(
            f"llama-cpp-python is not installed in this environment ({err}): `make run` and `make test` build it "
            f"once (5-8 minutes on 2 cores), or see the Makefile for the pip command.") from None


def convert(choice: ModelChoice, *, force: bool = False, threads: int | None = None) -> Path:
    """The GGUF folder of ``choice`` (:data:`LM_TYPES` and the F16 mmproj), made atomically unless complete.

    Raises :class:`LlamaCppUnsupported` when llama-cpp-python is missing or llama.cpp can't use the tokenizer.
    """
    require()
    dest = gguf_dir(choice)
    threads = threads or hardware.usable_cores()
    with atomic.locked(dest):
        if not force and dest.is_dir() and not problems(dest):
            print(f"Skipped: the GGUF files are already in {dest}")
            return dest
        source = Path(choice.source)
        if not source.is_dir():  # a Hub id already in the Hugging Face cache
            from huggingface_hub import snapshot_download

            source = Path(snapshot_download(choice.source))
        check_tokenizer(source)
        seconds: dict[str, float] = {}
        with atomic.partial_folder(dest) as tmp, tempfile.TemporaryDirectory() as scratch:
            model_dir = _converter_input(source, Path(scratch) / "model")
            for name, outtype in ((lm_file("f16"), "f16"), (lm_file("q8_0"), "q8_0"), (MMPROJ, "f16"),
                                  (lm_file("q4_0"), None)):
                start = time.perf_counter()
                if outtype is None:  # the converter has no Q4_0: llama.cpp's quantizer makes it from F16
                    quantize(tmp / lm_file("f16"), tmp / name, "q4_0", threads)
                else:
                    _run_converter(model_dir, tmp / name, outtype, mmproj=name == MMPROJ, threads=threads)
                seconds[name] = round(time.perf_counter() - start, 1)
            sizes = {f.name: f.stat().st_size for f in sorted(tmp.iterdir())}
            marker = {"llama_cpp_python": VERSION, "source": choice.source, "standin": synthetic.read_marker(source),
                      "seconds": seconds, "file_sizes": sizes}
            (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    for name, size in sizes.items():
        print(f"{name}: {size / 1e6:,.1f} MB in {seconds[name]} s")
    return dest



@dataclass
class LlamaCppVLM:
    """A GGUF language model with its vision projector, loaded with llama-cpp-python."""

    llm: Any  # llama_cpp.Llama
    mmproj: Path
    lm_type: str
    threads: int
    load_s: float
    _vision: dict = field(default_factory=dict)
    _eog: Any = None

    def vision(self, max_image_tokens: int | None = None):
        """The mtmd context that turns images into tokens, at most ``max_image_tokens`` per image (``None``: the
        mmproj's longest edge, 2048 for SmolVLM2); llama.cpp's only tiling setting."""
        if max_image_tokens not in self._vision:
            from llama_cpp import mtmd_cpp

            params = mtmd_cpp.mtmd_context_params_default()
            params.use_gpu, params.print_timings, params.warmup = False, False, False
            params.n_threads = self.threads
            if max_image_tokens:
                params.image_max_tokens = max_image_tokens
            ctx = mtmd_cpp.mtmd_init_from_file(str(self.mmproj).encode(), self.llm.model, params)
            if not ctx:
                raise RuntimeError(f"llama.cpp could not load the vision projector {self.mmproj}")
            self.llm._stack.callback(mtmd_cpp.mtmd_free, ctx)  # freed before the model it points to
            self._vision[max_image_tokens] = ctx
        return self._vision[max_image_tokens]

    def close(self) -> None:
        """Free the model, its context and its vision contexts."""
        self._vision.clear()
        self.llm.close()


def load(folder: Path, lm_type: str = "q8_0", threads: int | None = None, *, n_ctx: int = 4096) -> LlamaCppVLM:
    """Load ``lm_type`` and the mmproj of a :func:`convert` folder, with ``threads`` (default: usable cores) threads."""
    import llama_cpp
    from llama_cpp import mtmd_cpp
    from llama_cpp._logger import llama_log_callback

    folder = Path(folder)
    threads = threads or hardware.usable_cores()
    mtmd_cpp.mtmd_log_set(llama_log_callback, None)  # through llama-cpp-python's logger: quiet unless verbose
    mtmd_cpp.mtmd_helper_log_set(llama_log_callback, None)
    start = time.perf_counter()
    llm = llama_cpp.Llama(model_path=str(folder / lm_file(lm_type)), n_ctx=n_ctx, n_batch=2048, n_ubatch=512,
                          n_threads=threads, n_threads_batch=threads, flash_attn=True, verbose=False)
    model = LlamaCppVLM(llm, folder / MMPROJ, lm_type, threads, 0.0)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    for text in IMAGE_WRAPPER_TOKENS:
        if len(llm.tokenize(text.encode(), add_bos=False, special=True)) != 1:
            model.close()
            raise LlamaCppUnsupported(f"{folder}: the tokenizer has no single token for {text!r}; llama.cpp's "
                                      "SmolVLM image support would abort on it")
    model._eog = [t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)]
    model.vision()
    model.load_s = time.perf_counter() - start
    return model


def chat_text(question: str, with_image: bool) -> str:
    """SmolVLM2's chat-template prompt (:data:`helpers.synthetic.CHAT_TEMPLATE`) for one user turn, rendered as
    transformers renders it: an image (if ``with_image``), then ``question``, ready for the answer."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from helpers.synthetic import CHAT_TEMPLATE

    template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(CHAT_TEMPLATE)
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": question}]
    return template.render(messages=[{"role": "user", "content": content}], add_generation_prompt=True)


@dataclass
class Prompt:
    """A prompt tokenized by mtmd (text and image chunks), reusable across generations, with its facts."""

    chunks: Any
    vision: Any  # the mtmd context that tokenized it, and encodes its images
    facts: dict = field(default_factory=dict)


def prompt(model: LlamaCppVLM, question: str, image=None, max_image_tokens: int | None = None) -> Prompt:
    """Tokenize ``question`` (and ``image``: a PIL image or a path) with SmolVLM2's chat template.

    mtmd resizes and tiles the image here: ``facts["preprocess_s"]``, kept out of TTFT as bench.py does.
    """
    from llama_cpp import mtmd_cpp
    from PIL import Image

    ctx = model.vision(max_image_tokens)
    start = time.perf_counter()
    bitmaps = []
    if image is not None:
        image = (image if isinstance(image, Image.Image) else Image.open(image)).convert("RGB")
        pixels = bytearray(image.tobytes())
        bitmaps.append(mtmd_cpp.mtmd_bitmap_init(image.width, image.height,
                                                  (ctypes.c_uint8 * len(pixels)).from_buffer(pixels)))
    text = chat_text(question, image is not None).replace("<image>", mtmd_cpp.mtmd_default_marker().decode(), 1)
    encoded = text.encode()
    inp = mtmd_cpp.mtmd_input_text(text=encoded, text_len=len(encoded), add_special=True, parse_special=True)
    chunks = mtmd_cpp.mtmd_input_chunks_init()
    result = Prompt(chunks, ctx)
    weakref.finalize(result, mtmd_cpp.mtmd_input_chunks_free, chunks)
    code = mtmd_cpp.mtmd_tokenize(ctx, chunks, ctypes.byref(inp),
                                  (mtmd_cpp.mtmd_bitmap_p_ctypes * len(bitmaps))(*bitmaps), len(bitmaps))
    seconds = time.perf_counter() - start
    for bitmap in bitmaps:
        mtmd_cpp.mtmd_bitmap_free(bitmap)
    if code != 0:
        raise RuntimeError(f"llama.cpp could not tokenize the prompt (mtmd_tokenize returned {code})")
    images = [mtmd_cpp.mtmd_input_chunks_get(chunks, i) for i in range(mtmd_cpp.mtmd_input_chunks_size(chunks))]
    images = [c for c in images if mtmd_cpp.mtmd_input_chunk_get_type(c) == mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_IMAGE]
    result.facts = {
        "prompt_tokens": int(mtmd_cpp.mtmd_helper_get_n_tokens(chunks)),
        "image_tiles": len(images),  # 512x512 images the encoder sees: tiles plus the global view
        "image_tokens": sum(int(mtmd_cpp.mtmd_input_chunk_get_n_tokens(c)) for c in images),
        "preprocess_s": bench.significant(seconds),
    }
    return result



def generate(model: LlamaCppVLM, p: Prompt, max_new_tokens: int, min_new_tokens: int = 0, *,
             force: list[int] | None = None, logits: list | None = None) -> tuple[list[int], list[float], float, float]:
    """Greedy decoding: ``(new token ids, time each was chosen, start, end)`` (``time.perf_counter()`` values).

    End-of-generation tokens are banned before ``min_new_tokens`` (as in transformers) and stop it after.
    ``force``: teacher forcing, step ``i`` emits ``force[i]``; ``logits``: each step's raw logits are appended.
    Hand-written on llama.cpp's C API: ``create_completion`` has no minimum length and no per-token clock.
    """
    import llama_cpp
    import numpy as np
    from llama_cpp import mtmd_cpp

    ctx = model.llm._ctx.ctx
    n_vocab = model.llm.n_vocab()
    is_eog = np.isin(np.arange(n_vocab), model._eog)
    if force is not None:
        max_new_tokens = len(force)
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
    tokens: list[int] = []
    times: list[float] = []
    start = time.perf_counter()
    n_past = llama_cpp.llama_pos(0)
    if mtmd_cpp.mtmd_helper_eval_chunks(p.vision, ctx, p.chunks, 0, 0, model.llm.n_batch,
                                        True, ctypes.byref(n_past)) != 0:
        raise RuntimeError("llama.cpp could not evaluate the prompt")
    while True:
        scores = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
        if logits is not None:
            logits.append(scores.astype(np.float32, copy=True))
        if force is not None:
            token = force[len(tokens)]
        elif len(tokens) < min_new_tokens:  # no end of generation yet
            token = int(np.where(is_eog, -np.inf, scores).argmax())
        else:
            token = int(scores.argmax())
        tokens.append(token)
        times.append(time.perf_counter())
        if len(tokens) >= max_new_tokens or (token in model._eog and force is None):
            break
        if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one((llama_cpp.llama_token * 1)(token), 1)) != 0:
            raise RuntimeError("llama_decode failed (is the context full? load with a larger n_ctx)")
    return tokens, times, start, time.perf_counter()


def answer(model: LlamaCppVLM, question: str, image=None, max_new_tokens: int = 64) -> str:
    """The greedy answer to ``question`` about ``image`` (or text only), at least one token long (SmolLM2 in
    SmolVLM2's format often ends its turn at once; the smollm2-256m stand-in's generation config forbids it too)."""
    tokens, _, _, _ = generate(model, prompt(model, question, image), max_new_tokens, min_new_tokens=1)
    return _text(model, tokens)


def _text(model: LlamaCppVLM, tokens: list[int]) -> str:
    """``tokens`` decoded, without the end-of-generation ones."""
    return model.llm.detokenize([t for t in tokens if t not in model._eog]).decode(errors="replace").strip()


def time_generation(model: LlamaCppVLM, p: Prompt, new_tokens: int) -> dict:
    """One greedy generation of exactly ``new_tokens`` tokens: ttft_s, tpot_s, decode_tok_s, e2e_s (as bench)."""
    if new_tokens < 2:
        raise ValueError(f"new_tokens must be >= 2 to measure time per token, got {new_tokens}")
    _, times, start, end = generate(model, p, new_tokens, new_tokens)
    return bench.token_figures(start, times, end)


def image_tokens_for_edge(longest_edge: int | None) -> int | None:
    """llama.cpp's nearest setting to transformers' ``longest_edge``: (edge / 64)^2 image tokens per image (64 for
    512 pixels, which llama.cpp still sends as a tile plus the global view); ``None`` keeps the mmproj's 2048."""
    return (longest_edge // 64) ** 2 if longest_edge else None


def run_workload(model: LlamaCppVLM, w: bench.Workload, warmup: int, iterations: int) -> dict:
    """``warmup`` untimed generations of workload ``w``, then ``iterations`` timed ones: ``{figure: summary}`` plus
    ``facts`` (of the prompt and the workload)."""
    max_image_tokens = image_tokens_for_edge(w.longest_edge)
    p = prompt(model, w.question, data.photo_path(w.photo) if w.photo else None, max_image_tokens)
    p.facts.update(photo=w.photo or None, question=w.question, new_tokens=w.new_tokens,
                   max_image_tokens=max_image_tokens)
    for _ in range(warmup):
        time_generation(model, p, w.new_tokens)
    runs = [time_generation(model, p, w.new_tokens) for _ in range(iterations)]
    figures = {key: bench.summarize([r[key] for r in runs]) for key in ("ttft_s", "tpot_s", "decode_tok_s", "e2e_s")}
    return {**figures, "facts": p.facts}


def lm_bytes_per_token(path: Path) -> int:
    """Bytes of weights a GGUF language model reads per token: all but the input embedding (as bench counts an IR's)."""
    from gguf import GGUFReader

    return sum(int(t.n_bytes) for t in GGUFReader(path).tensors if t.name != "token_embd.weight")


def measure_contender(folder: Path, lm_type: str, threads: int, workloads: dict[str, bench.Workload] = bench.WORKLOADS,
                    *, warmup: int | dict[str, int] = 1, iterations: dict[str, int] | None = None,
                    then: Callable[[LlamaCppVLM], Any] | None = None) -> tuple[dict, Any]:
    """Load ``lm_type`` with ``threads`` threads, time every workload, then call ``then(model)`` while it is loaded.

    Returns ``(record, then_result)``, the record shaped like :func:`helpers.bench.measure_contender`'s (GGUF sizes
    instead of the IR's); a failure is recorded as ``error``, as bench does.
    """
    iterations = iterations or bench.plan().iterations
    folder = Path(folder)
    record: dict = {"label": f"llama.cpp {lm_type.upper()}", "backend": "llama.cpp", "precision": lm_type,
                    "threads": threads, "llama_cpp_python": VERSION, "ir_size_MB": None}

    def load_and_describe() -> LlamaCppVLM:
        model = load(folder, lm_type, threads)
        record.update(system_info=system_info(), threading=threading())
        record.update(gguf_size_MB=bench.significant((folder / lm_file(lm_type)).stat().st_size / 1e6),
                      mmproj_size_MB=bench.significant((folder / MMPROJ).stat().st_size / 1e6),
                      lm_bytes_per_token_MB=bench.significant(lm_bytes_per_token(folder / lm_file(lm_type)) / 1e6))
        return model

    result = None
    with bench.loaded(record, load_and_describe, close=lambda model: model.close()) as session:
        if session.model is not None:
            record["workloads"] = {name: run_workload(session.model, w, bench.calls_for(warmup, name),
                                                      iterations.get(name, 3))
                                   for name, w in workloads.items()}
            if then is not None:
                result = then(session.model)
    return record, result


def run_quality(model: LlamaCppVLM, samples: list, max_new_tokens: int, reference: list) -> list:
    """:func:`helpers.quality.run` for llama.cpp: each sample answered greedily (at least one token) and scored
    against ``reference`` by teacher forcing on its tokens. Photos go through llama.cpp's own preprocessing at the
    nearest tiling to ``quality.EVAL_LONGEST_EDGE``, so their input is close to, not the same as, the reference's."""
    import numpy as np
    import torch

    from helpers import quality

    if len(reference) != len(samples):
        raise ValueError(f"{len(reference)} reference answers for {len(samples)} samples")
    answers = []
    for sample, ref in zip(samples, reference):
        p = prompt(model, sample.question, sample.image, image_tokens_for_edge(quality.EVAL_LONGEST_EDGE))
        tokens, _, _, _ = generate(model, p, max_new_tokens, min_new_tokens=1)
        forced: list = []
        generate(model, p, len(ref.tokens), force=ref.tokens, logits=forced)
        scores = quality.token_metrics(ref.logits, torch.from_numpy(np.stack(forced)), ref.tokens)
        answers.append(quality.Answer(tokens, _text(model, tokens), scores=scores))
    return answers

