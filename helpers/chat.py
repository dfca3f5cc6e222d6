"""Asking a VLM about images or a video: the one prompt builder, answers streamed by ``generate``, the one token clock.

Every input is checked first, so bad input ends in one sentence (:class:`ChatError`, ``images.ImageError``).
Time to first token (TTFT) is counted, here and in every benchmark of the course, from the call to ``generate``
(the processor's work is done and timed apart, as ``preprocess_s``) to the moment ``generate`` hands out the first
new token; decode speed is ``(new tokens - 1) / (time of the last token - time of the first)``.
"""

from __future__ import annotations

import numbers
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from transformers import TextStreamer

from helpers import devices, export, images, store
from helpers.models import ModelChoice

DEFAULT_QUESTION = "What is in this image? Answer in one sentence."


class ChatError(ValueError):
    """The question, the images or the model choice can't be used; the message says why in one sentence."""


def model_folder(choice: ModelChoice, variant: str) -> Path:
    """Folder of a complete IR ``variant`` of ``choice``, or a :class:`ChatError` naming the variants that exist."""
    folder = export.variant_dir(choice, variant)
    if not export.is_complete(folder):
        have = ", ".join(p.name for p in sorted(folder.parent.glob("*")) if export.is_complete(p)) or "none yet"
        raise ChatError(f"Variant {variant!r} of {choice.slug} is not on disk (no complete export in {folder}): make "
                        f"it with notebook 01 or 02, or pick one that exists ({have}).")
    return folder


def load_model(folder: Path, device: str = "CPU", *, compile_cache: bool = True):
    """``(model, processor)`` for the IR in ``folder``, checked, then compiled for ``device`` (checked first); with
    ``compile_cache``, OpenVINO keeps the compiled model in the cache folder, so the next load is faster."""
    from optimum.intel import OVModelForVisualCausalLM
    from transformers import AutoProcessor

    device, folder = devices.check_device(device), Path(folder)
    found = export.problems(folder)
    missing = [p.removeprefix("missing ") for p in found if p.startswith("missing ") or p == "not built yet"]
    if missing:
        raise ChatError(f"No complete OpenVINO model in {folder} (missing: {', '.join(missing)}): run notebook 01 "
                        "first.")
    if found:
        raise ChatError(f"The OpenVINO model in {folder} is damaged or stale ({'; '.join(found)}): delete the folder "
                        "and run the notebook that made it again.")
    try:
        export.check_ir(folder)  # parses the graphs: a same-size damaged file, named before OpenVINO trips on it
    except export.CorruptIRError as err:
        raise ChatError(str(err)) from None
    ov_config = {"CACHE_DIR": str(store.cache_dir() / "openvino-compiled")} if compile_cache else None
    model = OVModelForVisualCausalLM.from_pretrained(folder, device=device, ov_config=ov_config)
    return model, AutoProcessor.from_pretrained(folder)


def check_question(question, processor=None) -> str:
    """``question`` stripped; :class:`ChatError` if it is not text, empty, or holds the model's markers."""
    if question is not None and not isinstance(question, str):
        raise ChatError(f'The question must be text (a str), not {type(question).__name__}: e.g. "What is in this '
                        'image?".')
    text = (question or "").strip()
    if not text:
        raise ChatError("The question is empty: type what you want to know about the image.")
    markers = [getattr(processor, "image_token", None), getattr(processor, "video_token", None),
               *(processor.tokenizer.all_special_tokens if processor is not None else [])]
    for marker in filter(None, markers):
        if marker in text:
            raise ChatError(f"The question contains {marker!r}, a marker the model reserves for images and turns: "
                            "remove it (add images with one {'type': 'image'} entry each instead).")
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
    """The chat messages of one user turn: ``n_images`` image places (or a video place), then the question."""
    content = [{"type": "image"}] * n_images + ([{"type": "video"}] if video else [])
    return [{"role": "user", "content": [*content, {"type": "text", "text": question}]}]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def prepare_inputs(processor, messages: list[dict], image_list: Sequence[images.ImageSource] = (), video=None, *,
                   longest_edge: int | None = None):
    """Model inputs for ``messages`` (chat template, then processor) with ``image_list`` or one ``video`` (a path,
    or ``images.load_video``'s output). ``longest_edge`` resizes images first (SmolVLM: :func:`images.tile_size` is
    one tile). Raises :class:`ChatError` when the images don't match the places the prompt has for them."""
    image_list = check_image_list(image_list)
    if longest_edge is not None:
        longest_edge = check_count("longest_edge", longest_edge, images.MIN_EDGE, images.MAX_EDGE)
    if video is not None and not isinstance(video, (str, os.PathLike, tuple)):
        raise ChatError(f"video must be a file path or the (frames, metadata) of images.load_video, "
                        f"not {type(video).__name__}.")
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    image_places = prompt.count(processor.image_token)
    video_places = prompt.count(getattr(processor, "video_token", None) or "\0")
    n = len(image_list)
    if n and video is not None:
        raise ChatError("SmolVLM's processor takes either images or one video in a prompt, not both: ask separately.")
    if n != image_places:
        raise ChatError(f"You passed {_plural(n, 'image')} but the prompt has places for {image_places}: add one "
                        "{'type': 'image'} entry to the message for each image." if n > image_places else
                        f"The prompt has places for {_plural(image_places, 'image')} but you passed {n}: pass one "
                        "image for each {'type': 'image'} entry.")
    if (video is not None) != (video_places > 0) or video_places > 1:
        raise ChatError(f"The prompt has {_plural(video_places, 'video place')} but you passed "
                        f"{'a video' if video is not None else 'none'}: use one {{'type': 'video'}} entry with one "
                        "video.")
    if video is not None:
        frames, metadata = video if isinstance(video, tuple) else images.load_video(video)
        # SmolVLM2 expects the processor to sample the frames (fps per second, at most num_frames)
        return processor(text=prompt, videos=[[frames]], video_metadata=[metadata], do_sample_frames=True,
                         return_tensors="pt")
    pictures = [images.load_image(source) for source in image_list]
    if longest_edge and images.tile_size(processor):  # SmolVLM: the processor resizes (and may enlarge)
        return processor(text=prompt, images=[pictures], size={"longest_edge": longest_edge}, return_tensors="pt")
    if longest_edge:  # other processors: shrink the image to fit, keeping its aspect
        for picture in pictures:
            picture.thumbnail((longest_edge, longest_edge))
    return processor(text=prompt, images=[pictures] if pictures else None, return_tensors="pt")


def question_inputs(processor, question: str, image: images.ImageSource | None = None, *,
                    longest_edge: int | None = None):
    """:func:`prepare_inputs` for one question about one image (``None``: text only)."""
    pictures = [] if image is None else [image]
    return prepare_inputs(processor, user_message(question, len(pictures)), pictures, longest_edge=longest_edge)


class TokenClock(TextStreamer):
    """The course's one token clock: a ``generate`` streamer that stamps ``time.perf_counter()`` the moment each new
    token is chosen (``times``, ``tokens``); with ``on_text``, it also hands out the answer's text as it is decoded
    (transformers' ``TextStreamer`` decides when a piece of text is complete)."""

    def __init__(self, tokenizer=None, on_text: Callable[[str], None] | None = None) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.on_text, self.times, self.tokens, self.pieces = on_text, [], [], []

    def put(self, value) -> None:
        if self.next_tokens_are_prompt:  # generate hands over the prompt first
            self.next_tokens_are_prompt = False
            return
        now, ids = time.perf_counter(), [int(t) for t in value.reshape(-1)]
        self.times += [now] * len(ids)
        self.tokens += ids
        if self.tokenizer is not None:
            super().put(value)

    def end(self) -> None:
        if self.tokenizer is not None:
            super().end()

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.pieces.append(text)
            if self.on_text is not None:
                self.on_text(text)


@dataclass
class Reply:
    """What the model answered, and what it cost (see the module's docstring for the clock)."""

    text: str
    token_ids: tuple[int, ...]
    prompt_tokens: int
    image_tokens: int
    tiles: int | None  # SmolVLM's tiles (and video frames); None for a model that does not cut tiles
    preprocess_s: float
    ttft_s: float
    decode_s: float  # from the first to the last new token
    total_s: float = field(default=0.0)  # preprocessing and generate

    @property
    def new_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def tokens_per_s(self) -> float | None:
        """Decode speed, ``(new tokens - 1) / decode time``; ``None`` with fewer than two new tokens."""
        return (self.new_tokens - 1) / self.decode_s if self.new_tokens > 1 and self.decode_s > 0 else None

    def stats_line(self) -> str:
        speed = f"{self.tokens_per_s:.1f} tokens/s" if self.tokens_per_s else "tokens/s: n/a (fewer than 2 tokens)"
        tiles = f", {_plural(self.tiles, 'tile')}" if self.tiles else ""
        return (f"time to first token {self.ttft_s:.2f} s · {speed} · {self.new_tokens} new tokens in "
                f"{self.total_s:.2f} s · prompt {self.prompt_tokens} tokens ({self.image_tokens} image tokens{tiles})")

    def __repr__(self) -> str:
        return f"{self.text}\n[{self.stats_line()}]"


def tile_count(inputs) -> int | None:
    """The tiles (and video frames) in prepared ``inputs``: SmolVLM's pixel values are (images, tiles, 3, h, w);
    ``None`` for a processor that does not cut tiles."""
    pixels = inputs.get("pixel_values")
    return int(pixels.shape[0] * pixels.shape[1]) if pixels is not None and pixels.ndim == 5 else None


def image_token_count(processor, inputs) -> int:
    token = getattr(processor, "image_token_id", None)
    return int((inputs["input_ids"] == token).sum()) if token is not None else 0


def stream(model, processor, inputs, *, max_new_tokens: int = 64, on_text: Callable[[str], None] | None = None,
           preprocess_s: float = 0.0) -> Reply:
    """Greedy ``model.generate(**inputs, streamer=...)``, each piece of text sent to ``on_text`` as it is decoded."""
    max_new_tokens = check_count("max_new_tokens", max_new_tokens)
    prompt_tokens = int(inputs["input_ids"].shape[1])
    text_config = getattr(model.config, "text_config", model.config)
    limit = getattr(text_config, "max_position_embeddings", None)
    if limit and prompt_tokens + max_new_tokens > limit:
        raise ChatError(f"The prompt has {prompt_tokens} tokens and with {max_new_tokens} new ones exceeds the "
                        f"{limit} the model can read: use fewer or smaller images (longest_edge), or a shorter "
                        "question.")
    clock = TokenClock(processor.tokenizer, on_text)
    start = time.perf_counter()
    model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, streamer=clock)
    end = time.perf_counter()
    return Reply(text="".join(clock.pieces).strip(), token_ids=tuple(clock.tokens), prompt_tokens=prompt_tokens,
                 image_tokens=image_token_count(processor, inputs), tiles=tile_count(inputs),
                 preprocess_s=preprocess_s, ttft_s=(clock.times[0] if clock.times else end) - start,
                 decode_s=(clock.times[-1] - clock.times[0]) if clock.times else 0.0,
                 total_s=preprocess_s + end - start)


def ask(model, processor, question: str, image_list: Sequence[images.ImageSource] = (), video=None,
        **options) -> Reply:
    """Ask about ``image_list`` (or a ``video``) with no memory; ``options`` as for :meth:`Conversation.ask`."""
    return Conversation().ask(model, processor, question, image_list, video, **options)


class Conversation:
    """A multi-turn chat: each new prompt holds the earlier turns and their images (which cost their tiles again)."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Forget every earlier turn."""
        self.messages: list[dict] = []  # user and assistant turns, as the chat template takes them
        self.images: list = []  # the earlier turns' images, in the order of their places in the prompt
        self.video = None  # or the video of an earlier turn

    @property
    def turns(self) -> int:
        return sum(m["role"] == "user" for m in self.messages)

    def ask(self, model, processor, question: str, image_list: Sequence[images.ImageSource] = (), video=None, *,
            max_new_tokens: int = 64, longest_edge: int | None = None,
            on_text: Callable[[str], None] | None = None) -> Reply:
        """Ask ``question`` (about new images or a ``video``, if any) as the next turn; checks every input first."""
        start = time.perf_counter()
        question = check_question(question, processor)
        pictures = [images.load_image(source) for source in check_image_list(image_list)]
        if (video is not None and (self.images or self.video is not None)) or (pictures and self.video is not None):
            raise ChatError("SmolVLM's processor takes either images or one video in a prompt, not both: clear "
                            "the conversation first.")
        messages = self.messages + user_message(question, len(pictures), video is not None)
        video = video if video is not None else self.video
        inputs = prepare_inputs(processor, messages, self.images + pictures, video, longest_edge=longest_edge)
        reply = stream(model, processor, inputs, max_new_tokens=max_new_tokens, on_text=on_text,
                       preprocess_s=time.perf_counter() - start)
        self.messages = [*messages, {"role": "assistant", "content": [{"type": "text", "text": reply.text}]}]
        self.images, self.video = self.images + pictures, video
        return reply
