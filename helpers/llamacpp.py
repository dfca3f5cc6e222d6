"""llama.cpp beside OpenVINO: the same SmolVLM as GGUF files, run with llama-cpp-python and timed like bench.py.

- :func:`convert` turns a SmolVLM folder (saved with ``save_pretrained``) into ``<models_dir>/<slug>/gguf/``:
  the language model in F16, Q8_0 and Q4_0 and the vision projector (``mmproj``) in F16, with llama.cpp's own
  converter ``convert_hf_to_gguf.py``. pip installs llama-cpp-python's Python package only, not that script,
  so :func:`converter_dir` takes it from the package's source archive (the sdist on PyPI, kept in
  ``<cache>/llama.cpp/``) and unpacks it once. Q4_0 comes from llama.cpp's quantizer
  (``llama_cpp.llama_model_quantize``, the function behind ``llama-quantize``, which the wheel does not ship).
- :func:`load` opens a GGUF language model and its ``mmproj`` with threads set explicitly; images go through
  llama.cpp's multimodal library (mtmd), which cuts tiles and wraps them in SmolVLM's image tokens itself.
- :func:`time_generation` times one greedy generation of exactly N new tokens as :func:`helpers.bench.time_generation`
  times OpenVINO: TTFT from the start of the call to the first token (vision encoder and prefill included, the
  image preprocessing not: that is ``preprocess_s``), TPOT the mean gap after it, decode tokens/s = 1 / TPOT,
  and end-to-end. :func:`measure_contender` gives a record shaped like bench's.

Why Q4_0 and not Q4_K: k-quants work on blocks of 256 weights along a row, and SmolVLM2-256M's rows are 576 or
1536 long; 576 is not a multiple of 256, so llama.cpp would fall back to another type for most tensors. Q4_0 uses
blocks of 32 (576 = 18 x 32), and llama.cpp's CPU backend repacks it for fast AVX2 kernels.

Where llama.cpp's image preprocessing differs from transformers' (see :func:`image_facts`): both resize a photo
to the longest edge in the model's preprocessor config (2048), round the sides up to multiples of 512, cut
512-pixel tiles in rows and add a 512x512 global view last, 64 tokens each, with the same wrapper tokens (for
the cat photo: 12 tiles + the global view, the same 876 prompt token ids with SmolLM2's tokenizer). They differ
in (1) the resampling code (PIL's Lanczos in transformers, llama.cpp's own C++ Lanczos), so the pixels differ
slightly; (2) the longest edge is fixed in the mmproj file: llama.cpp has no per-call ``size``; its only knob is
a token budget per image (``max_image_tokens``), and even one tile comes with the global view, so the blog's
single 512x512 tile (64 image tokens) becomes a tile plus a global view (128 tokens) here; (3) llama.cpp only
accepts a tokenizer in which ``"\\n\\n"`` is one token (its image wrapper starts with it): SmolLM2's, which the
real SmolVLM2 and every stand-in use, has it; :func:`check_tokenizer` refuses other tokenizers with a reason.
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
LM_TYPES = ("f16", "q8_0", "q4_0")  # language-model weights; the vision projector stays F16
MMPROJ = "mmproj-f16.gguf"
MARKER = "gguf_complete.json"
# Tokens llama.cpp's SmolVLM image wrapper looks up as single tokens (tools/mtmd/mtmd.cpp); a missing one aborts.
IMAGE_WRAPPER_TOKENS = ("\n\n", "\n", "<fake_token_around_image>", "<global-img>")


class LlamaCppUnsupported(RuntimeError):
    """llama.cpp can't run this model or its inputs; the message says why and what to do."""


def lm_file(lm_type: str) -> str:
    """File name of the language model in ``lm_type`` (``f16``, ``q8_0``, ``q4_0``)."""
    return f"model-{lm_type}.gguf"


def gguf_dir(choice: ModelChoice) -> Path:
    """Folder of the GGUF files of ``choice``: ``<models_dir>/<slug>/gguf``."""
    return models_dir() / choice.slug / "gguf"


# --- the converter, from llama-cpp-python's source archive ----------------------------------------------


def sdist_path(version: str = VERSION) -> Path:
    """llama-cpp-python's source archive in the cache, downloaded from PyPI with pip if it is not there yet.

    ``make`` puts it there before building llama-cpp-python from it, so a prepared machine needs no network.
    """
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
    """A folder with llama.cpp's ``convert_hf_to_gguf.py``, its ``conversion`` package and ``gguf-py``, unpacked
    once from llama-cpp-python's source archive (``vendor/llama.cpp``) into the cache."""
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


# --- conversion -----------------------------------------------------------------------------------------


def _source_folder(source: str) -> Path:
    """A local folder for ``source`` (a folder, or a Hub id already in the Hugging Face cache)."""
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(source))


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
    """``folder`` as the converter must see it: links to its files, and a config.json whose ``text_config`` names
    its architecture. The real SmolVLM2 config says ``VLlama3ForCausalLM`` there (the converter routes the language
    model by it); configs written by transformers' ``SmolVLMConfig``, as the stand-ins' are, leave it out."""
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
    ftypes = {"q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0, "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
              "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = threads or hardware.usable_cores()
    params.ftype = ftypes[lm_type]
    if llama_cpp.llama_model_quantize(str(source).encode(), str(dest).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama.cpp could not quantize {source} to {lm_type}")
    return dest


def read_marker(folder: Path) -> dict | None:
    """The completion record of a GGUF folder (versions, seconds per file, file sizes), or ``None``."""
    return atomic.read_record(Path(folder) / MARKER)


def problems(folder: Path) -> list[str]:
    """Why ``folder`` is not a finished conversion made by this llama-cpp-python version (empty list: it is)."""
    marker = read_marker(folder)
    if marker is None:
        return [f"{MARKER} is missing or damaged"]
    found = [f"made for llama-cpp-python {marker.get('llama_cpp_python')}, this environment has {VERSION}"
             ] if marker.get("llama_cpp_python") != VERSION else []
    stale = synthetic.stale_record(marker.get("standin"))
    if stale:
        found.append(stale)
    for name in [*map(lm_file, LM_TYPES), MMPROJ]:
        path = Path(folder) / name
        size = marker.get("file_sizes", {}).get(name)
        if not path.is_file() or path.stat().st_size != size:
            found.append(f"{name} is missing or not the size it was written with")
    return found


def require() -> None:
    """Raise :class:`LlamaCppUnsupported` with what to do when llama-cpp-python is not installed."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as err:
        raise LlamaCppUnsupported(
            f"llama-cpp-python is not installed in this environment ({err}): `make run` and `make test` build it "
            f"once (5-8 minutes on 2 cores), or see the Makefile for the pip command.") from None


def convert(choice: ModelChoice, *, force: bool = False, threads: int | None = None) -> Path:
    """GGUF files of ``choice`` in ``<models_dir>/<slug>/gguf/`` (see the module docstring), made now if missing.

    Written into a temporary folder and moved into place when complete, one process at a time
    (:mod:`helpers.atomic`); a complete folder is reused unless ``force``. Raises :class:`LlamaCppUnsupported`
    with a reason when llama-cpp-python is missing or the model's tokenizer can't work with llama.cpp.
    """
    require()
    dest = gguf_dir(choice)
    threads = threads or hardware.usable_cores()
    with atomic.locked(dest):
        if not force and dest.is_dir() and not problems(dest):
            print(f"Skipped: the GGUF files are already in {dest}")
            return dest
        source = _source_folder(choice.source)
        check_tokenizer(source)
        seconds: dict[str, float] = {}
        with atomic.partial_folder(dest) as tmp, tempfile.TemporaryDirectory() as scratch:
            model_dir = _converter_input(source, Path(scratch) / "model")
            for name, outtype, mmproj in ((lm_file("f16"), "f16", False), (lm_file("q8_0"), "q8_0", False),
                                          (MMPROJ, "f16", True)):
                start = time.perf_counter()
                _run_converter(model_dir, tmp / name, outtype, mmproj=mmproj, threads=threads)
                seconds[name] = round(time.perf_counter() - start, 1)
            start = time.perf_counter()
            quantize(tmp / lm_file("f16"), tmp / lm_file("q4_0"), "q4_0", threads)
            seconds[lm_file("q4_0")] = round(time.perf_counter() - start, 1)
            sizes = {f.name: f.stat().st_size for f in sorted(tmp.iterdir())}
            marker = {"llama_cpp_python": VERSION, "source": choice.source, "standin": synthetic.read_marker(source),
                      "seconds": seconds, "file_sizes": sizes}
            (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    for name, size in sizes.items():
        print(f"{name}: {size / 1e6:,.1f} MB in {seconds[name]} s")
    return dest


# --- loading and prompts --------------------------------------------------------------------------------


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
        """The mtmd context that turns images into tokens; ``max_image_tokens`` caps the tokens per image
        (llama.cpp's only tiling setting; ``None``: the mmproj's longest edge, 2048 for SmolVLM2)."""
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
    """Load ``model-<lm_type>.gguf`` and the mmproj of a :func:`convert` folder, with ``threads`` threads
    (default: the usable cores) for prefill, decoding and the vision encoder alike."""
    import llama_cpp
    from llama_cpp import mtmd_cpp
    from llama_cpp._logger import llama_log_callback

    folder = Path(folder)
    threads = threads or hardware.usable_cores()
    mtmd_cpp.mtmd_log_set(llama_log_callback, None)  # mtmd logs through llama-cpp-python's logger (quiet unless verbose)
    mtmd_cpp.mtmd_helper_log_set(llama_log_callback, None)
    start = time.perf_counter()
    llm = llama_cpp.Llama(model_path=str(folder / lm_file(lm_type)), n_ctx=n_ctx, n_batch=2048, n_ubatch=512,
                          n_threads=threads, n_threads_batch=threads, verbose=False)
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
    """SmolVLM2's chat-template prompt for one user turn (an image, then ``question``), ready for the answer.

    Rendered from :data:`helpers.synthetic.CHAT_TEMPLATE` (the real model's template) as transformers renders it.
    """
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

    mtmd resizes and tiles the image here; the seconds it takes are ``facts["preprocess_s"]``, kept out of TTFT
    as bench.py keeps transformers' processor out of it.
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


def prompt_token_ids(model: LlamaCppVLM, p: Prompt, image_token_id: int) -> list[int]:
    """The prompt's token ids, each image token shown as ``image_token_id`` (to compare with transformers' ids)."""
    from llama_cpp import mtmd_cpp

    ids: list[int] = []
    for i in range(mtmd_cpp.mtmd_input_chunks_size(p.chunks)):
        chunk = mtmd_cpp.mtmd_input_chunks_get(p.chunks, i)
        if mtmd_cpp.mtmd_input_chunk_get_type(chunk) == mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_TEXT:
            n = ctypes.c_size_t()
            tokens = mtmd_cpp.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
            ids += [tokens[j] for j in range(n.value)]
        else:
            ids += [image_token_id] * mtmd_cpp.mtmd_input_chunk_get_n_tokens(chunk)
    return ids


# --- generation and timing ------------------------------------------------------------------------------


def generate(model: LlamaCppVLM, p: Prompt, max_new_tokens: int, min_new_tokens: int = 0, *,
             force: list[int] | None = None, logits: list | None = None) -> tuple[list[int], list[float], float, float]:
    """Greedy decoding: ``(new token ids, time each was chosen, start, end)`` (``time.perf_counter()`` values).

    Stops at an end-of-generation token after ``min_new_tokens`` tokens; before that such tokens can't be chosen,
    as ``min_new_tokens`` does in transformers. With ``force`` (teacher forcing), step ``i`` emits ``force[i]``
    whatever the model prefers, for ``len(force)`` steps; with a ``logits`` list, a float32 copy of each step's
    raw logits (before any choice) is appended to it. Written by hand with llama.cpp's C API (``llama_decode``
    and the logits): llama-cpp-python's ``create_completion`` has no minimum length and no per-token clock.
    """
    import llama_cpp
    import numpy as np
    from llama_cpp import mtmd_cpp

    ctx = model.llm._ctx.ctx
    n_vocab = model.llm.n_vocab()
    if force is not None:
        max_new_tokens = min_new_tokens = len(force)

    def pick(step: int) -> int:
        scores = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
        if logits is not None:
            logits.append(scores.astype(np.float32, copy=True))
        if force is not None:
            return force[step]
        if step < min_new_tokens:
            scores = scores.copy()
            scores[model._eog] = -np.inf
        return int(scores.argmax())

    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
    tokens: list[int] = []
    times: list[float] = []
    start = time.perf_counter()
    n_past = llama_cpp.llama_pos(0)
    if mtmd_cpp.mtmd_helper_eval_chunks(p.vision, ctx, p.chunks, 0, 0, model.llm.n_batch,
                                        True, ctypes.byref(n_past)) != 0:
        raise RuntimeError("llama.cpp could not evaluate the prompt")
    while True:
        token = pick(len(tokens))
        tokens.append(token)
        times.append(time.perf_counter())
        if len(tokens) >= max_new_tokens or (token in model._eog and force is None):
            break
        if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one((llama_cpp.llama_token * 1)(token), 1)) != 0:
            raise RuntimeError("llama_decode failed (is the context full? load with a larger n_ctx)")
    return tokens, times, start, time.perf_counter()


def answer(model: LlamaCppVLM, question: str, image=None, max_new_tokens: int = 64) -> str:
    """The model's greedy answer to ``question`` about ``image`` (or text only).

    At least one token is generated: SmolLM2's language model in SmolVLM2's format often ends its turn at once
    (the smollm2-256m stand-in's generation config forbids that the same way).
    """
    tokens, _, _, _ = generate(model, prompt(model, question, image), max_new_tokens, min_new_tokens=1)
    return _text(model, tokens)


def _text(model: LlamaCppVLM, tokens: list[int]) -> str:
    """The answer's text: ``tokens`` without the end-of-generation ones, decoded."""
    return model.llm.detokenize([t for t in tokens if t not in model._eog]).decode(errors="replace").strip()


def time_generation(model: LlamaCppVLM, p: Prompt, new_tokens: int) -> dict:
    """One greedy generation of exactly ``new_tokens`` tokens: ttft_s, tpot_s, decode_tok_s, e2e_s (as bench)."""
    if new_tokens < 2:
        raise ValueError(f"new_tokens must be >= 2 to measure time per token, got {new_tokens}")
    tokens, times, start, end = generate(model, p, new_tokens, new_tokens)
    if len(tokens) != new_tokens:
        raise RuntimeError(f"asked for {new_tokens} new tokens, got {len(tokens)}")
    return bench.token_figures(start, times, end)


def image_tokens_for_edge(longest_edge: int | None) -> int | None:
    """llama.cpp's nearest setting to transformers' ``longest_edge``: a budget of (edge / 64)^2 image tokens per
    image (64 for a 512-pixel edge, which llama.cpp still sends as one tile plus the global view, 128 tokens);
    ``None`` keeps the mmproj's 2048."""
    return (longest_edge // 64) ** 2 if longest_edge else None


def workload_image_tokens(w: bench.Workload) -> int | None:
    """:func:`image_tokens_for_edge` of a workload's ``longest_edge``."""
    return image_tokens_for_edge(w.longest_edge)


def prepare(model: LlamaCppVLM, w: bench.Workload) -> Prompt:
    """The prompt of workload ``w`` (its photo from data/images, or text only), with its facts."""
    image = data.photo_path(w.photo) if w.photo else None
    p = prompt(model, w.question, image, workload_image_tokens(w))
    p.facts.update(photo=w.photo or None, question=w.question, new_tokens=w.new_tokens,
                   max_image_tokens=workload_image_tokens(w))
    return p


def run_workload(model: LlamaCppVLM, w: bench.Workload, warmup: int, iterations: int) -> dict:
    """``warmup`` untimed generations, then ``iterations`` timed ones: ``{figure: summary}`` plus ``facts``."""
    p = prepare(model, w)
    for _ in range(warmup):
        time_generation(model, p, w.new_tokens)
    runs = [time_generation(model, p, w.new_tokens) for _ in range(iterations)]
    figures = {key: bench.summarize([r[key] for r in runs]) for key in ("ttft_s", "tpot_s", "decode_tok_s", "e2e_s")}
    return {**figures, "facts": p.facts}


def lm_bytes_per_token(path: Path) -> int:
    """Bytes of weights a GGUF language model reads per generated token: every tensor but the input embedding
    table (each token reads one row of it), as :func:`helpers.bench.lm_bytes_per_token` counts an IR's."""
    from gguf import GGUFReader

    return sum(int(t.n_bytes) for t in GGUFReader(path).tensors if t.name != "token_embd.weight")


def measure_contender(folder: Path, lm_type: str, threads: int, workloads: dict[str, bench.Workload] = bench.WORKLOADS,
                    *, warmup: int = 1, iterations: dict[str, int] | None = None,
                    then: Callable[[LlamaCppVLM], Any] | None = None) -> tuple[dict, Any]:
    """Load ``lm_type`` from a :func:`convert` folder with ``threads`` threads, time every workload, then call
    ``then(model)`` while it is loaded: ``(record, then_result)``, the record shaped like
    :func:`helpers.bench.measure_contender`'s (``backend`` "llama.cpp", GGUF sizes instead of the IR's). A failure is
    recorded as ``error`` instead of stopping the benchmark, as bench does."""
    iterations = iterations or bench.plan().iterations
    folder = Path(folder)
    record: dict = {"label": f"llama.cpp {lm_type.upper()}", "backend": "llama.cpp", "precision": lm_type,
                    "threads": threads, "llama_cpp_python": VERSION, "ir_size_MB": None}

    def load_and_describe() -> LlamaCppVLM:
        model = load(folder, lm_type, threads)
        record.update(gguf_size_MB=bench.significant((folder / lm_file(lm_type)).stat().st_size / 1e6),
                      mmproj_size_MB=bench.significant((folder / MMPROJ).stat().st_size / 1e6),
                      lm_bytes_per_token_MB=bench.significant(lm_bytes_per_token(folder / lm_file(lm_type)) / 1e6))
        return model

    result = None
    with bench.loaded(record, load_and_describe, close=lambda model: model.close()) as session:
        if session.model is not None:
            record["workloads"] = {name: run_workload(session.model, w, warmup, iterations.get(name, 3))
                                   for name, w in workloads.items()}
            if then is not None:
                result = then(session.model)
    return record, result


def run_quality(model: LlamaCppVLM, samples: list, max_new_tokens: int, reference: list) -> list:
    """:func:`helpers.quality.run` for llama.cpp: each sample answered greedily (at least one token, as the
    stand-in's generation config asks) and scored against the reference's answers token by token (teacher
    forcing on the reference's tokens, llama.cpp's own logits). A photo goes through llama.cpp's own
    preprocessing with the same tiling (:func:`image_tokens_for_edge` of ``quality.EVAL_LONGEST_EDGE``), so on
    photo questions its input is close to, not the same as, the reference's."""
    import numpy as np
    import torch

    from helpers import quality

    if len(reference) != len(samples):
        raise ValueError(f"{len(reference)} reference answers for {len(samples)} samples")
    answers = []
    for sample, ref in zip(samples, reference):
        p = prompt(model, sample.question, sample.image, image_tokens_for_edge(quality.EVAL_LONGEST_EDGE))
        tokens, _, _, _ = generate(model, p, max_new_tokens, min_new_tokens=1)
        text = _text(model, tokens)
        forced: list = []
        generate(model, p, len(ref.tokens), force=ref.tokens, logits=forced)
        scores = quality.token_metrics(ref.logits, torch.from_numpy(np.stack(forced)), ref.tokens)
        answers.append(quality.Answer(tokens, text, scores=scores))
    return answers


def image_facts(model: LlamaCppVLM, photo: str, question: str = "What is in this image?",
                max_image_tokens: int | None = None) -> dict:
    """How llama.cpp tiles a photo of data/images: prompt tokens, images the encoder sees (tiles + global view),
    image tokens (64 per image for SmolVLM2)."""
    return prompt(model, question, data.photo_path(photo), max_image_tokens).facts

