"""Asking SmolVLM about images and a video: load a variant, build inputs, stream the answer, time it.

The same calls notebook 03 shows (chat template, processor, greedy decoding via :mod:`helpers.greedy`), with
checks that turn bad input into one sentence (:class:`ChatError`, ``images.ImageError``, ``ValueError``).
Timings as OpenVINO GenAI's llm_bench takes them: TTFT from the start of :func:`ask` to the first new token;
decode speed ``(new tokens - 1) / (last token time - first token time)``.
"""

from __future__ import annotations

import numbers
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from helpers import devices, export, images
from helpers.models import ModelChoice
from helpers.paths import openvino_cache_dir

DEFAULT_QUESTION = "What is in this image? Answer in one sentence."


class ChatError(ValueError):
    """The question, the images or the model choice can't be used; the message says why in one sentence."""


def model_folder(choice: ModelChoice, variant: str) -> Path:
    """Folder of a complete IR ``variant`` of ``choice``, or a :class:`ChatError` naming the variants that exist."""
    folder = export.variant_dir(choice, variant)
    if not export.is_complete(folder):
        have = ", ".join(export.existing_variants(choice)) or "none yet"
        raise ChatError(
            f"Variant {variant!r} of {choice.slug} is not on disk (no complete export in {folder}): make it with "
            f"notebook 01 or 02, or pick one that exists ({have})."
        )
    return folder


def load_model(folder: Path, device: str = "CPU", *, compile_cache: bool = True):
    """``(model, processor)`` for the IR in ``folder``, compiled for ``device`` (checked first).

    ``compile_cache`` keeps the compiled model in :func:`helpers.paths.openvino_cache_dir`, so reloading is faster.
    """
    from optimum.intel import OVModelForVisualCausalLM
    from transformers import AutoProcessor

    device = devices.check_device(device)
    folder = Path(folder)
    if not export.is_complete(folder):
        missing = ", ".join(export.missing_files(folder)) if folder.is_dir() else "the whole folder"
        if missing:
            raise ChatError(f"No complete OpenVINO model in {folder} (missing: {missing}): run notebook 01 first.")
        raise ChatError(f"The OpenVINO model in {folder} is damaged or stale ({'; '.join(export.problems(folder))}): "
                        "delete the folder and run the notebook that made it again.")
    try:
        export.check_ir(folder)  # parses the graphs too: a same-size corrupted file, named before OpenVINO trips on it
    except export.CorruptIRError as err:
        raise ChatError(str(err)) from None
    ov_config = {"CACHE_DIR": str(openvino_cache_dir())} if compile_cache else None
    model = OVModelForVisualCausalLM.from_pretrained(folder, device=device, ov_config=ov_config)
    return model, AutoProcessor.from_pretrained(folder)


def check_question(question: str, processor=None) -> str:
    """``question`` stripped; :class:`ChatError` if it is not text, empty, or holds the model's markers."""
    if question is not None and not isinstance(question, str):
        raise ChatError(f"The question must be text (a str), not {type(question).__name__}: "
                        f"e.g. \"What is in this image?\".")
    text = (question or "").strip()
    if not text:
        raise ChatError("The question is empty: type what you want to know about the image.")
    if processor is not None:
        for marker in [processor.image_token, processor.video_token, *processor.tokenizer.all_special_tokens]:
            if marker and marker in text:
                raise ChatError(
                    f"The question contains {marker!r}, a marker the model reserves for images and turns: "
                    "remove it (add images with one {'type': 'image'} entry each instead)."
                )
    return text


def check_image_list(image_list) -> list:
    """``image_list`` as a list; :class:`ChatError` when it is one image instead of a list, or not a list."""
    if isinstance(image_list, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)):
        shown = (repr(str(image_list)) if isinstance(image_list, (str, os.PathLike))
                 else "image" if isinstance(image_list, Image.Image) else "data")
        raise ChatError(f"Images go in a list, even a single one: pass [{shown}] instead of {shown}.")
    if not isinstance(image_list, (list, tuple)):
        raise ChatError(f"image_list must be a list of images (file paths, bytes or PIL images), "
                        f"not {type(image_list).__name__}.")
    return list(image_list)


def check_count(name: str, value, low: int = 1, high: int | None = None) -> int:
    """``value`` as an int when it is a whole number in ``[low, high]``; else one :class:`ChatError` sentence."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ChatError(f"{name} must be a whole number, not {value!r}.")
    if value < low or (high is not None and value > high):
        limits = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise ChatError(f"{name} must be a whole number {limits}, not {value}.")
    return int(value)


def user_message(question: str, n_images: int = 1, video: bool = False) -> list[dict]:
    """Chat messages for one user turn: ``n_images`` image places (or a video place), then the question."""
    content = [{"type": "image"} for _ in range(n_images)] + ([{"type": "video"}] if video else [])
    return [{"role": "user", "content": [*content, {"type": "text", "text": question}]}]


def prompt_text(processor, question: str, n_images: int = 0) -> str:
    """The chat-template prompt of one user turn, ready for the answer."""
    return processor.apply_chat_template(user_message(question, n_images), add_generation_prompt=True)


def question_inputs(processor, question: str, image: images.ImageSource | None = None, *,
                    longest_edge: int | None = None):
    """Model inputs for one question about one image (``None``: text only); see :func:`prepare_inputs`."""
    pictures = [] if image is None else [image]
    return prepare_inputs(processor, user_message(question, len(pictures)), pictures, longest_edge=longest_edge)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def prepare_inputs(processor, messages: list[dict], image_list: Sequence[images.ImageSource] = (), video=None, *,
                   longest_edge: int | None = None):
    """Model inputs for ``messages`` with ``image_list`` or one ``video`` (a path or ``images.load_video`` output).

    ``longest_edge`` overrides the size images are resized to before tiling (512: 1 tile, 2048: up to 4x4 + 1).
    Raises :class:`ChatError` when the images don't match the places the prompt has for them.
    """
    image_list = check_image_list(image_list)
    if longest_edge is not None:
        longest_edge = check_count("longest_edge", longest_edge, images.MIN_EDGE, images.MAX_EDGE)
    if video is not None and not isinstance(video, (str, os.PathLike, tuple)):
        raise ChatError(f"video must be a file path or the (frames, metadata) of images.load_video, "
                        f"not {type(video).__name__}.")
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    image_places, video_places = prompt.count(processor.image_token), prompt.count(processor.video_token)
    n_images = len(image_list)
    if n_images and video is not None:
        raise ChatError("SmolVLM's processor takes either images or one video in a prompt, not both: ask separately.")
    if n_images > image_places:
        raise ChatError(f"You passed {_plural(n_images, 'image')} but the prompt has places for {image_places}: "
                        "add one {'type': 'image'} entry to the message for each image.")
    if n_images < image_places:
        raise ChatError(f"The prompt has places for {_plural(image_places, 'image')} but you passed {n_images}: "
                        "pass one image for each {'type': 'image'} entry.")
    if (video is not None) != (video_places > 0) or video_places > 1:
        raise ChatError(
            f"The prompt has {_plural(video_places, 'video place')} but you passed "
            f"{'a video' if video is not None else 'none'}: use one {{'type': 'video'}} entry with one video."
        )
    if video is not None:
        frames, metadata = video if isinstance(video, tuple) else images.load_video(video)
        # SmolVLM2 expects the processor to sample the frames (fps per second, at most num_frames).
        return processor(text=prompt, videos=[[frames]], video_metadata=[metadata], do_sample_frames=True,
                         return_tensors="pt")
    if not n_images:
        return processor(text=prompt, return_tensors="pt")
    pictures = [images.load_image(source) for source in image_list]
    size = {"size": {"longest_edge": longest_edge}} if longest_edge else {}
    return processor(text=prompt, images=[pictures], return_tensors="pt", **size)


@dataclass
class Answer:
    """A generated answer and what it cost."""

    text: str
    new_tokens: int
    prompt_tokens: int
    image_tokens: int
    tiles: int
    ttft_s: float
    total_s: float
    decode_s: float  # from the first to the last new token
    token_ids: tuple[int, ...] = ()  # the new tokens, as chosen

    @property
    def tokens_per_s(self) -> float | None:
        """Decode speed, ``(new tokens - 1) / decode time``; ``None`` with fewer than two new tokens."""
        if self.new_tokens < 2 or self.decode_s <= 0:
            return None
        return (self.new_tokens - 1) / self.decode_s

    def stats_line(self) -> str:
        speed = f"{self.tokens_per_s:.1f} tokens/s" if self.tokens_per_s else "tokens/s: n/a (fewer than 2 tokens)"
        return (
            f"time to first token {self.ttft_s:.2f} s · {speed} · {self.new_tokens} new tokens in "
            f"{self.total_s:.2f} s · prompt {self.prompt_tokens} tokens ({self.image_tokens} image tokens, "
            f"{_plural(self.tiles, 'tile')})"
        )

    def __repr__(self) -> str:
        return f"{self.text}\n[{self.stats_line()}]"


def stream_answer(model, processor, inputs, *, max_new_tokens: int = 64,
                  on_text: Callable[[str], None] | None = None, start: float | None = None) -> Answer:
    """The greedy answer to processor output ``inputs``, each piece of text sent to ``on_text`` once decoded.

    Same tokens as ``model.generate(**inputs, do_sample=False)``, via :func:`helpers.greedy.greedy_tokens`.
    ``start`` (a ``time.perf_counter()`` value, default now) is where TTFT is counted from.
    """
    import numpy as np
    from transformers import TextStreamer

    from helpers import greedy

    max_new_tokens = check_count("max_new_tokens", max_new_tokens)
    start = time.perf_counter() if start is None else start
    prompt_tokens = int(inputs["input_ids"].shape[1])
    limit = getattr(model.config.text_config, "max_position_embeddings", None)
    if limit and prompt_tokens + max_new_tokens > limit:
        raise ChatError(
            f"The prompt has {prompt_tokens} tokens and with {max_new_tokens} new ones exceeds the {limit} the model "
            "can read: use fewer or smaller images (longest_edge), or a shorter question."
        )
    pieces: list[str] = []

    class Pieces(TextStreamer):  # transformers' streamer decides when a piece of text is complete (whole words)
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                pieces.append(text)
                if on_text is not None:
                    on_text(text)

    streamer, times, tokens = Pieces(processor.tokenizer, skip_special_tokens=True), [], []
    for token in greedy.greedy_tokens(model, inputs, max_new_tokens):
        times.append(time.perf_counter())
        tokens.append(int(token))
        streamer.put(np.array([token]))
    streamer.end()
    total = time.perf_counter() - start
    pixel_values = inputs.get("pixel_values")
    return Answer(
        text="".join(pieces).strip(),
        new_tokens=len(times),
        prompt_tokens=prompt_tokens,
        image_tokens=int((inputs["input_ids"] == processor.image_token_id).sum()),
        tiles=int(pixel_values.shape[0] * pixel_values.shape[1]) if pixel_values is not None else 0,
        ttft_s=(times[0] - start) if times else total,
        total_s=total,
        decode_s=(times[-1] - times[0]) if times else 0.0,
        token_ids=tuple(tokens),
    )


def ask(model, processor, question: str, image_list: Sequence[images.ImageSource] = (), video=None,
        **options) -> Answer:
    """Ask about ``image_list`` (or a ``video``) with no memory; ``options`` as for :meth:`Conversation.ask`."""
    return Conversation().ask(model, processor, question, image_list, video, **options)


class Conversation:
    """A multi-turn chat: each new prompt holds the earlier turns and their images (which cost their tiles again)."""

    def __init__(self) -> None:
        self.messages: list[dict] = []  # user and assistant turns, as the chat template takes them
        self.images: list = []  # the earlier turns' images, in the order of their places in the prompt
        self.video = None  # or the video of an earlier turn

    @property
    def turns(self) -> int:
        """How many questions have been answered so far."""
        return sum(1 for m in self.messages if m["role"] == "user")

    def clear(self) -> None:
        """Forget every earlier turn."""
        self.messages, self.images, self.video = [], [], None

    def ask(self, model, processor, question: str, image_list: Sequence[images.ImageSource] = (), video=None, *,
            max_new_tokens: int = 64, longest_edge: int | None = None,
            on_text: Callable[[str], None] | None = None) -> Answer:
        """Ask ``question`` (about new images or a ``video``, if any) as the next turn; checks every input first."""
        start = time.perf_counter()
        question = check_question(question, processor)
        pictures = [images.load_image(source) for source in check_image_list(image_list)]
        new_video = video is not None
        if (new_video and (self.images or self.video is not None)) or (pictures and self.video is not None):
            raise ChatError("SmolVLM's processor takes either images or one video in a prompt, not both: clear "
                            "the conversation first.")
        messages = self.messages + user_message(question, n_images=len(pictures), video=new_video)
        video = video if new_video else self.video
        inputs = prepare_inputs(processor, messages, self.images + pictures, video, longest_edge=longest_edge)
        answer = stream_answer(model, processor, inputs, max_new_tokens=max_new_tokens, on_text=on_text,
                               start=start)
        self.messages = [*messages, {"role": "assistant", "content": [{"type": "text", "text": answer.text}]}]
        self.images += pictures
        self.video = video
        return answer
