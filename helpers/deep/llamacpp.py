"""llama.cpp beside OpenVINO (notebook 05): the same model as GGUF files, run with llama-cpp-python, timed and scored
like :mod:`helpers.bench` and :mod:`helpers.quality` time and score the others.

:func:`convert` makes the GGUF files with llama.cpp's own converter (from llama-cpp-python's source archive, which
pip does not install) and quantizer; images go through llama.cpp's multimodal library (mtmd). The timing loop is
written against llama.cpp's C API because ``create_completion`` has no minimum length and no per-token clock.
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
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from helpers import bench, chat, images, standins, store
from helpers.models import ModelChoice

VERSION = "0.3.36"  # llama-cpp-python, whose source archive carries the converter we run
# The language model's weights in llama.cpp's types (the vision projector stays F16). Q4_0, not Q4_K: k-quants work
# in blocks of 256, and most of SmolVLM2-256M's rows are 576 long (they would fall back to other types); Q4_0's blocks
# of 32 fit every row.
LM_TYPES, MMPROJ = ("f16", "q4_0"), "mmproj-f16.gguf"
# Tokens llama.cpp's SmolVLM image wrapper looks up as single tokens (tools/mtmd/mtmd.cpp); a missing one aborts.
IMAGE_WRAPPER_TOKENS = ("\n\n", "\n", "<fake_token_around_image>", "<global-img>")


class LlamaCppUnsupported(RuntimeError):
    """llama.cpp can't run here, or can't run this model; the message says why and what to do."""


def require() -> None:
    """One sentence with what to do when llama-cpp-python is not built in this environment."""
    try:
        version("llama_cpp_python")
    except PackageNotFoundError:
        raise LlamaCppUnsupported("llama.cpp is not built in this environment: run `make llamacpp` once (4 to 8 "
                                  "minutes on 2 cores), then run this notebook again.") from None


def system_info() -> str:
    """What llama.cpp says it was built with and runs on here: its CPU kernels (``AVX512_VNNI = 1``...)."""
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode().strip()


def threading() -> str:
    """How llama.cpp's threads wait: its own thread pool, or OpenMP (then ``OMP_WAIT_POLICY=PASSIVE`` puts them to
    sleep between the tiny steps of decoding, several times slower)."""
    if "OPENMP = 1" not in system_info():
        return "llama.cpp's own thread pool (built with GGML_OPENMP=OFF; OMP_WAIT_POLICY does not apply)"
    return f"OpenMP, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"


def lm_file(lm_type: str) -> str:
    return f"model-{lm_type}.gguf"


def check_tokenizer(folder: Path) -> None:
    """:class:`LlamaCppUnsupported` when llama.cpp's SmolVLM image wrapper can't find its tokens, or the model is
    not a SmolVLM (llama.cpp's converter routes this course's models by SmolVLM's architecture)."""
    from transformers import AutoConfig, AutoTokenizer

    model_type = AutoConfig.from_pretrained(folder).model_type
    if model_type not in ("smolvlm", "idefics3"):
        raise LlamaCppUnsupported(f"the course converts only SmolVLM models to GGUF, and this one is a {model_type!r}:"
                                  " the llama.cpp comparison is skipped.")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    missing = [t for t in IMAGE_WRAPPER_TOKENS if len(tokenizer(t, add_special_tokens=False)["input_ids"]) != 1]
    if missing:
        raise LlamaCppUnsupported(f"llama.cpp can't run {folder.name} with images: its tokenizer has no single token "
                                  f"for {', '.join(map(repr, missing))}, which llama.cpp's SmolVLM support needs.")


def converter_dir() -> Path:
    """llama.cpp's ``convert_hf_to_gguf.py`` and what it imports, unpacked once from the source archive ``make``
    keeps in the cache."""
    archive = store.cache_dir() / "llama.cpp" / f"llama_cpp_python-{VERSION}.tar.gz"
    if not archive.is_file():
        raise LlamaCppUnsupported(f"llama.cpp's converter comes from {archive.name}, which is not in {archive.parent}:"
                                  " run `make llamacpp` once.")
    prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"

    def unpack(folder: Path) -> None:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.name[len(prefix):].startswith(
                ("convert_hf_to_gguf.py", "conversion/", "gguf-py/gguf/", "LICENSE"))]
            for m in members:
                m.name = m.name[len(prefix):]
            tar.extractall(folder, members=members, filter="data")

    return store.build(archive.parent / f"convert-{VERSION}", unpack, facts={"version": VERSION},
                       required=["convert_hf_to_gguf.py"], quiet=True)


def _convert_one(model_dir: Path, out: Path, outtype: str, mmproj: bool = False) -> None:
    done = subprocess.run([sys.executable, str(converter_dir() / "convert_hf_to_gguf.py"), str(model_dir),
                           "--outtype", outtype, "--outfile", str(out), *(["--mmproj"] if mmproj else [])],
                          capture_output=True, text=True, cwd=out.parent)
    if done.returncode != 0 or not out.is_file():
        raise RuntimeError(f"llama.cpp's converter failed on {model_dir.name} ({outtype}):\n"
                           + "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:]))


def convert(choice: ModelChoice, *, force: bool = False) -> Path:
    """The GGUF files of ``choice`` (:data:`LM_TYPES` and the F16 mmproj) in ``<models>/<slug>/gguf``, converted now
    unless on disk; :class:`LlamaCppUnsupported` when llama.cpp is not built or can't run the model."""
    require()
    source = Path(choice.source)
    if not source.is_dir():  # a Hub id, already in the Hugging Face cache
        from huggingface_hub import snapshot_download

        source = Path(snapshot_download(choice.source))
    check_tokenizer(source)

    def make(folder: Path) -> None:
        import llama_cpp

        with tempfile.TemporaryDirectory() as scratch:
            model_dir = Path(scratch)  # links to the model, with the architecture the converter routes by
            config = json.loads((source / "config.json").read_text())
            config.setdefault("text_config", {}).setdefault("architectures", ["VLlama3ForCausalLM"])
            for path in source.iterdir():
                if path.name != "config.json":
                    (model_dir / path.name).symlink_to(path.resolve())
            (model_dir / "config.json").write_text(json.dumps(config))
            _convert_one(model_dir, folder / lm_file("f16"), "f16")
            _convert_one(model_dir, folder / MMPROJ, "f16", mmproj=True)
        params = llama_cpp.llama_model_quantize_default_params()  # the converter has no Q4_0: llama.cpp's quantizer
        params.nthread, params.ftype = 2, llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
        if llama_cpp.llama_model_quantize(str(folder / lm_file("f16")).encode(), str(folder / lm_file("q4_0")).encode(),
                                          ctypes.byref(params)) != 0:
            raise RuntimeError("llama.cpp could not quantize the language model to Q4_0")

    made_from = standins.record(source) or {}
    return store.build(store.models_dir() / choice.slug / "gguf", make, force=force,
                       facts={"llama_cpp_python": VERSION, "standin_version": made_from.get("version")},
                       required=[*map(lm_file, LM_TYPES), MMPROJ])


@dataclass
class LlamaCppVLM:
    """A GGUF language model with its vision projector, loaded with llama-cpp-python."""

    llm: Any  # llama_cpp.Llama
    mmproj: Path
    threads: int
    eog: list[int] = field(default_factory=list)  # end-of-generation tokens
    _vision: dict = field(default_factory=dict)

    def vision(self, max_image_tokens: int | None = None):
        """The mtmd context that turns images into tokens, at most ``max_image_tokens`` per image (llama.cpp's only
        tiling setting; ``None``: the mmproj's own longest edge)."""
        if max_image_tokens not in self._vision:
            from llama_cpp import mtmd_cpp

            params = mtmd_cpp.mtmd_context_params_default()
            params.use_gpu, params.print_timings, params.warmup, params.n_threads = False, False, False, self.threads
            if max_image_tokens:
                params.image_max_tokens = max_image_tokens
            ctx = mtmd_cpp.mtmd_init_from_file(str(self.mmproj).encode(), self.llm.model, params)
            if not ctx:
                raise RuntimeError(f"llama.cpp could not load the vision projector {self.mmproj}")
            self.llm._stack.callback(mtmd_cpp.mtmd_free, ctx)  # freed before the model it points to
            self._vision[max_image_tokens] = ctx
        return self._vision[max_image_tokens]

    def close(self) -> None:
        self._vision.clear()
        self.llm.close()


def load(folder: Path, lm_type: str, threads: int, *, n_ctx: int = 4096) -> LlamaCppVLM:
    """Load ``lm_type`` and the mmproj of a :func:`convert` folder with ``threads`` threads and flash attention (as
    llama.cpp's own tools run it on a CPU)."""
    import llama_cpp
    from llama_cpp import mtmd_cpp
    from llama_cpp._logger import llama_log_callback

    mtmd_cpp.mtmd_log_set(llama_log_callback, None)  # through llama-cpp-python's logger: quiet unless verbose
    mtmd_cpp.mtmd_helper_log_set(llama_log_callback, None)
    llm = llama_cpp.Llama(model_path=str(Path(folder) / lm_file(lm_type)), n_ctx=n_ctx, n_batch=2048, n_ubatch=512,
                          n_threads=threads, n_threads_batch=threads, flash_attn=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    model = LlamaCppVLM(llm, Path(folder) / MMPROJ, threads,
                        [t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)])
    model.vision()
    return model


@dataclass
class Prompt:
    """A prompt tokenized by mtmd (text and image chunks), reusable across generations, with its facts."""

    chunks: Any
    vision: Any  # the mtmd context that tokenized it, and encodes its images
    facts: dict = field(default_factory=dict)


def prompt(model: LlamaCppVLM, processor, question: str, image=None, max_image_tokens: int | None = None) -> Prompt:
    """``question`` (and ``image``: a PIL image or a path) in the model's chat template, tokenized by mtmd, which
    resizes and tiles the image itself (its time: ``facts["preprocess_s"]``, kept out of TTFT as bench does)."""
    from llama_cpp import mtmd_cpp

    ctx, start, bitmaps = model.vision(max_image_tokens), time.perf_counter(), []
    if image is not None:
        image = images.load_image(image)  # as the course loads every image: upright, 8-bit RGB, at most 2048 px
        pixels = bytearray(image.tobytes())
        bitmaps.append(mtmd_cpp.mtmd_bitmap_init(image.width, image.height,
                                                  (ctypes.c_uint8 * len(pixels)).from_buffer(pixels)))
    text = processor.apply_chat_template(chat.user_message(question, int(image is not None)),
                                         add_generation_prompt=True)
    encoded = text.replace(processor.image_token, mtmd_cpp.mtmd_default_marker().decode(), 1).encode()
    inp = mtmd_cpp.mtmd_input_text(text=encoded, text_len=len(encoded), add_special=True, parse_special=True)
    result = Prompt(mtmd_cpp.mtmd_input_chunks_init(), ctx)
    weakref.finalize(result, mtmd_cpp.mtmd_input_chunks_free, result.chunks)
    code = mtmd_cpp.mtmd_tokenize(ctx, result.chunks, ctypes.byref(inp),
                                  (mtmd_cpp.mtmd_bitmap_p_ctypes * len(bitmaps))(*bitmaps), len(bitmaps))
    seconds = time.perf_counter() - start
    for bitmap in bitmaps:
        mtmd_cpp.mtmd_bitmap_free(bitmap)
    if code != 0:
        raise RuntimeError(f"llama.cpp could not tokenize the prompt (mtmd_tokenize returned {code})")
    chunks = [mtmd_cpp.mtmd_input_chunks_get(result.chunks, i) for i in range(mtmd_cpp.mtmd_input_chunks_size(
        result.chunks))]
    pictures = [c for c in chunks if mtmd_cpp.mtmd_input_chunk_get_type(c) == mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_IMAGE]
    result.facts = {"prompt_tokens": int(mtmd_cpp.mtmd_helper_get_n_tokens(result.chunks)),
                    "image_tiles": len(pictures),  # the images its encoder sees: tiles plus the global view
                    "image_tokens": sum(int(mtmd_cpp.mtmd_input_chunk_get_n_tokens(c)) for c in pictures),
                    "preprocess_s": bench.significant(seconds)}
    return result


def generate(model: LlamaCppVLM, p: Prompt, max_new_tokens: int, min_new_tokens: int = 0, *, ends: bool = True,
             force: list[int] | None = None, logits: list | None = None) -> tuple[list[int], list[float], float, float]:
    """Greedy decoding: ``(new token ids, the time each was chosen, start, end)``, ``time.perf_counter()`` values.
    End-of-generation tokens are banned before ``min_new_tokens`` (as in transformers) and stop it after;
    ``ends=False``: they never stop it, and with ``min_new_tokens=0`` none is banned (timing: exactly
    ``max_new_tokens``, as ``generate`` is timed with ``bench.EXACT_LENGTH``);
    ``force``: teacher forcing, step ``i`` emits ``force[i]``; ``logits``: each step's raw logits are appended."""
    import llama_cpp
    import numpy as np
    from llama_cpp import mtmd_cpp

    ctx, n_vocab = model.llm._ctx.ctx, model.llm.n_vocab()
    is_eog = np.isin(np.arange(n_vocab), model.eog)
    max_new_tokens = len(force) if force is not None else max_new_tokens
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
    tokens, times, start, n_past = [], [], time.perf_counter(), llama_cpp.llama_pos(0)
    if mtmd_cpp.mtmd_helper_eval_chunks(p.vision, ctx, p.chunks, 0, 0, model.llm.n_batch, True,
                                        ctypes.byref(n_past)) != 0:
        raise RuntimeError("llama.cpp could not evaluate the prompt")
    while True:
        scores = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
        if logits is not None:
            logits.append(scores.astype(np.float32, copy=True))
        token = force[len(tokens)] if force is not None else int(
            (np.where(is_eog, -np.inf, scores) if len(tokens) < min_new_tokens else scores).argmax())
        tokens.append(token)
        times.append(time.perf_counter())
        if len(tokens) >= max_new_tokens or (force is None and ends and is_eog[token]):
            break
        if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one((llama_cpp.llama_token * 1)(token), 1)) != 0:
            raise RuntimeError("llama_decode failed (is the context full? load with a larger n_ctx)")
    return tokens, times, start, time.perf_counter()


def time_generation(model: LlamaCppVLM, p: Prompt, new_tokens: int) -> dict:
    """One greedy generation of exactly ``new_tokens`` tokens, figures as :func:`helpers.bench.time_generation`."""
    _, times, start, end = generate(model, p, new_tokens, ends=False)
    return bench.token_figures(start, times, end)


def prepare(model: LlamaCppVLM, processor, prepared: dict[str, bench.PreparedWorkload]) -> dict:
    """Notebook 04's workloads as llama.cpp prompts, each photo with a budget of as many image tokens as the
    processor made of it (llama.cpp's nearest setting to the processor's tiling; one tile still comes with a global
    view), with llama.cpp's own facts."""
    from helpers import data

    ours = {}
    for name, p in prepared.items():
        w, budget = p.workload, p.facts["image_tokens"] or None
        mine = prompt(model, processor, w.question, data.photo_path(w.photo) if w.photo else None, budget)
        ours[name] = bench.PreparedWorkload(w, mine, {**mine.facts, "max_image_tokens": budget})
    return ours
