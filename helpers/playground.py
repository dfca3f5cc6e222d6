"""ipywidgets for notebook 03: the playground (a multi-turn chat about a photo) and the tile explorer.

tests/test_browser.py relies on these, so keep them stable: a ``Button`` "Ask", a ``Textarea`` "Question"
(pre-filled), an ``HTML`` answer with class ``vlm-answer`` that ends with a ``vlm-stats`` line
(``time to first token ... tokens/s ...``) when done, and an ``HTML`` status line with class ``vlm-status``.
``Playground.ask()`` and ``Playground.clear()`` do what the Ask and Clear chat buttons do.
"""

from __future__ import annotations

import html
import io
import time
from pathlib import Path

import ipywidgets as widgets

from helpers import chat, data, devices, images, recipes
from helpers.models import ModelChoice

ANSWER_CLASS = "vlm-answer"
STATUS_CLASS = "vlm-status"
STATS_CLASS = "vlm-stats"
UPLOAD_PREFIX = "upload: "
NO_IMAGE = "(no image)"


def _transcript_html(messages: list[dict]) -> str:
    """Earlier turns of a conversation, one line per turn."""
    lines = []
    for m in messages:
        text = " ".join(c["text"] for c in m["content"] if c["type"] == "text")
        n_images = sum(1 for c in m["content"] if c["type"] == "image")
        who = "You" if m["role"] == "user" else "Model"
        extra = f" [+{n_images} image{'s' if n_images > 1 else ''}]" if n_images else ""
        lines.append(f"<div style='color:#555'><b>{who}:</b> {html.escape(text)}{extra}</div>")
    return "".join(lines)


def _answer_html(text: str, stats: str = "", streaming: bool = False, earlier: str = "") -> str:
    body = html.escape(text) + ("▌" if streaming else "")
    stats_html = (f'<div class="{STATS_CLASS}" style="color:#555;font-size:0.9em;margin-top:4px">'
                  f"{html.escape(stats)}</div>") if stats else ""
    return (f"{earlier}"
            f'<div style="white-space:pre-wrap;border-left:3px solid #4a90d9;padding:4px 8px;min-height:1.4em">'
            f"{body}</div>{stats_html}")


def _jpeg_bytes(image, edge: int = 256) -> bytes:
    image.thumbnail((edge, edge))  # in place: only called with load_image's own copy
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


class Playground:
    """Pick or upload an image, ask a question, choose variant, device and length; watch the answer stream in."""

    def __init__(self, choice: ModelChoice, *, variants: dict[str, Path] | None = None,
                 device_list: list[str] | None = None, photo: str = "cat", question: str = chat.DEFAULT_QUESTION,
                 max_new_tokens: int = 48) -> None:
        self.choice = choice
        self.variants = dict(recipes.on_disk(choice) if variants is None else variants)
        if not self.variants:
            raise chat.ChatError(f"No exported model of {choice.slug} on disk: "
                                 "run notebook 01 (or export.export_fp32).")
        photos = {p.stem: p for p in data.list_photos()}
        self.sources: dict[str, images.ImageSource | None] = {NO_IMAGE: None, **photos}
        self._loaded: tuple[tuple[str, str], object, object] | None = None
        self.conversation = chat.Conversation()
        self._sent_image: str | None = None  # the image the conversation last received

        self.image = widgets.Dropdown(options=list(self.sources), description="Image",
                                      value=photo if photo in self.sources else next(iter(self.sources)))
        self.upload = widgets.FileUpload(accept="image/*", multiple=False, description="Upload")
        self.preview = widgets.Image(format="jpeg", layout=widgets.Layout(max_width="256px", max_height="256px"))
        self.question = widgets.Textarea(value=question, description="Question", rows=2,
                                         layout=widgets.Layout(width="95%"))
        self.variant = widgets.Dropdown(options=list(self.variants), description="Variant")
        device_list = device_list or devices.available_devices()
        self.device = widgets.Dropdown(options=device_list, description="Device",
                                       value="CPU" if "CPU" in device_list else device_list[0])
        self.max_new_tokens = widgets.IntSlider(value=max_new_tokens, min=1, max=256, description="Max new tokens",
                                                style={"description_width": "initial"})
        self.button = widgets.Button(description="Ask", button_style="primary", tooltip="Ask the model")
        self.clear_button = widgets.Button(description="Clear chat", tooltip="Forget the earlier turns")
        self.status = widgets.HTML()
        self.status.add_class(STATUS_CLASS)
        self.answer_box = widgets.VBox()
        self._new_answer()

        note = ("" if not choice.is_standin else
                " (stand-in: real SmolLM2 language model, random vision encoder: it writes English but does not "
                "see the image; timings real)" if choice.real_language_model else
                " (stand-in model: its text is meaningless, its timings are real)")
        controls = widgets.VBox([widgets.HBox([self.image, self.upload]), self.question,
                                 widgets.HBox([self.variant, self.device]), self.max_new_tokens,
                                 widgets.HBox([self.button, self.clear_button])])
        title = widgets.HTML(f"<b>Playground</b> · {html.escape(choice.slug)}{html.escape(note)}")
        self.widget = widgets.VBox([title, widgets.HBox([controls, self.preview]), self.status, self.answer_box])
        self.button.on_click(self._on_click)
        self.clear_button.on_click(lambda _button: self.clear())
        self.image.observe(self._show_preview, names="value")
        self.upload.observe(self._on_upload, names="value")
        self._show_preview()
        self._set_status("Ready: pick an image, type a question and press Ask.")

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def _set_status(self, text: str, error: bool = False) -> None:
        color, prefix = ("#b00020", "⚠ ") if error else ("#333", "")
        self.status.value = f'<span style="color:{color}">{prefix}{html.escape(text)}</span>'

    def _new_answer(self, value: str = "") -> None:
        """Put a fresh answer widget in the answer box (each ask gets its own)."""
        self.answer = widgets.HTML(value=value, layout=widgets.Layout(width="95%"))
        self.answer.add_class(ANSWER_CLASS)
        self.answer_box.children = (self.answer,)

    def _show_preview(self, _change=None) -> None:
        source = self.sources[self.image.value]
        try:
            self.preview.value = _jpeg_bytes(images.load_image(source)) if source is not None else b""
        except images.ImageError as err:
            self._set_status(str(err), error=True)

    def _on_upload(self, change) -> None:
        for item in change["new"] or ():
            try:
                self.add_image(bytes(item["content"]), item["name"])
            except images.ImageError as err:
                self._set_status(str(err), error=True)

    def add_image(self, source: images.ImageSource, name: str) -> None:
        """Add an image to the picker as ``upload: <name>`` and select it; ``images.ImageError`` if unusable."""
        picture = images.load_image(source, name=name)
        label = UPLOAD_PREFIX + name
        self.sources[label] = picture
        self.image.options = list(self.sources)
        self.image.value = label
        changes = "; ".join(picture.info["changes"]) or "used as is"
        self._set_status(f"Added {name} ({picture.width}x{picture.height}; {changes}).")

    def _model(self, variant: str, device: str):
        key = (variant, device)
        if self._loaded is None or self._loaded[0] != key:
            self._loaded = None  # free the previous model before compiling the next one
            self._set_status(f"Loading {variant} on {device} (compiling for the device, then one warm-up run)...")
            start = time.perf_counter()
            model, processor = chat.load_model(self.variants[variant], device)
            # The first run of a freshly compiled model pays one-time costs; keep them out of the timings shown.
            chat.ask(model, processor, chat.DEFAULT_QUESTION, [data.photo_path("cat")], max_new_tokens=2)
            self._loaded = (key, model, processor)
            self._set_status(f"Loaded and warmed up {variant} on {device} in {time.perf_counter() - start:.1f} s.")
        return self._loaded[1], self._loaded[2]

    def _on_click(self, _button=None) -> None:
        try:
            self.ask()
        except Exception as err:  # a click has no cell to show a traceback in: say what happened in the status
            self._set_status(f"Unexpected problem ({type(err).__name__}): {err}", error=True)

    def ask(self) -> chat.Reply | None:
        """The next turn (what Ask does): the question, and the chosen image if the chat hasn't had it yet."""
        self.button.disabled = True
        earlier = _transcript_html(self.conversation.messages)
        self._new_answer(_answer_html("", streaming=True, earlier=earlier))
        variant, device, label = self.variant.value, self.device.value, self.image.value
        new_image = [self.sources[label]] if self.sources[label] is not None and label != self._sent_image else []
        try:
            model, processor = self._model(variant, device)
            self._set_status(f"Generating with {variant} on {device}...")
            pieces: list[str] = []

            def show(piece: str) -> None:
                pieces.append(piece)
                self.answer.value = _answer_html("".join(pieces), streaming=True, earlier=earlier)

            answer = self.conversation.ask(model, processor, self.question.value, new_image,
                                           max_new_tokens=self.max_new_tokens.value, on_text=show)
        except ValueError as err:  # ChatError, ImageError, an absent device: one clear sentence each
            self.answer.value = _answer_html("", earlier=earlier)
            self._set_status(str(err), error=True)
            return None
        finally:
            self.button.disabled = False
        if new_image:
            self._sent_image = label
        self.answer.value = _answer_html(answer.text, answer.stats_line(), earlier=earlier)
        turn = self.conversation.turns
        self._set_status(f"Done: {variant} on {device}, image {label!r}"
                         + (f"; turn {turn} of this chat (Clear chat starts over)." if turn > 1 else "."))
        return answer

    def clear(self) -> None:
        """Forget the conversation (what Clear chat does)."""
        self.conversation.clear()
        self._sent_image = None
        self._new_answer()
        self._set_status("Cleared: the next question starts a new conversation.")


def make_playground(choice: ModelChoice, **kwargs) -> Playground:
    """A :class:`Playground` for ``choice`` (display it as a cell's last line); kwargs as for ``Playground``."""
    return Playground(choice, **kwargs)


def tile_explorer(model, processor, image, *, question: str = chat.DEFAULT_QUESTION) -> widgets.VBox:
    """A slider for the longest edge ``image`` is resized to (from half a tile to the processor's own longest edge);
    each move redraws SmolVLM's tiles and measures the time to first token."""
    import matplotlib.pyplot as plt

    tile, high = images.tile_size(processor), int(processor.image_processor.size["longest_edge"])
    slider = widgets.IntSlider(value=high, min=tile // 2, max=high, step=tile // 4, continuous_update=False,
                               description="Longest edge (px)", style={"description_width": "initial"},
                               layout=widgets.Layout(width="60%"))
    line = widgets.HTML()
    # An Image widget with the figure as PNG, not an Output widget: nbclient (make run) hangs on an Output widget
    # that captures a large figure, and a PNG renders the same everywhere (JupyterLab, nbval, exported HTML).
    figure = widgets.Image(format="png")

    def update(_change=None) -> None:
        tiles = images.cut_into_tiles(processor, image, slider.value)
        line.value = f"<b>{html.escape(tiles.summary())}</b> · measuring time to first token..."
        answer = chat.ask(model, processor, question, [image], max_new_tokens=1, longest_edge=slider.value)
        line.value = (f"<b>{html.escape(tiles.summary())}</b> · prompt {answer.prompt_tokens} tokens · "
                      f"time to first token {answer.ttft_s:.2f} s")
        fig = images.plot_tiles(tiles)
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=90)
        plt.close(fig)
        figure.value = png.getvalue()

    slider.observe(update, names="value")
    update()
    return widgets.VBox([slider, line, figure])
