"""The playground (helpers/playground.py): the widgets and CSS classes the browser test relies on, streamed
answers with timings, bad input in the status line, uploads and a multi-turn chat."""

from __future__ import annotations

import pytest

from conftest import absent_device, one_sentence
from helpers import chat, data, images, playground, recipes


def _all_widgets(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from _all_widgets(child)


@pytest.fixture
def pg(tiny, tiny_fp32):
    return playground.make_playground(tiny)


def test_the_playground_offers_the_variants_on_disk_and_says_when_there_is_none(tiny, tiny_fp32):
    assert playground.Playground(tiny).variants == recipes.on_disk(tiny) == {"fp32": tiny_fp32}
    message = one_sentence(chat.ChatError, playground.Playground, tiny, variants={})
    assert message == "No exported model of synthetic-tiny on disk: run notebook 01 (or export.export_fp32)."


def test_playground_has_the_widgets_the_browser_test_needs(pg):
    import ipywidgets as widgets

    everything = list(_all_widgets(pg.widget))
    assert [w for w in everything if isinstance(w, widgets.Button) and w.description == "Ask"]
    assert pg.question.value.strip() and isinstance(pg.question, widgets.Textarea)
    assert pg.image.value == "cat" and set(pg.image.options) >= {p.stem for p in data.list_photos()}
    assert list(pg.variant.options) == ["fp32"] and "CPU" in pg.device.options and "AUTO" in pg.device.options
    assert isinstance(pg.max_new_tokens, widgets.IntSlider) and pg.preview.value  # the preview shows the photo
    assert any("vlm-answer" in w._dom_classes for w in everything)
    assert any("vlm-status" in w._dom_classes for w in everything)
    assert "application/vnd.jupyter.widget-view+json" in pg._repr_mimebundle_()


def test_playground_ask_streams_an_answer_with_timings(pg):
    answer = pg.ask()
    assert isinstance(answer, chat.Reply) and answer.new_tokens >= 1
    area = [w for w in _all_widgets(pg.widget) if "vlm-answer" in w._dom_classes]
    assert len(area) == 1 and area[0] is pg.answer
    assert "time to first token" in pg.answer.value and "tokens/s" in pg.answer.value
    assert "Done: fp32 on CPU" in pg.status.value and not pg.button.disabled


@pytest.mark.parametrize("setting, expected", [
    ("empty question", "The question is empty: type what you want to know about the image."),
    ("absent device", "is not available on this machine; OpenVINO reports: CPU"),
])
def test_playground_shows_bad_input_in_the_status_line(pg, setting, expected):
    import html

    if setting == "empty question":
        pg.question.value = "  "
    else:
        pg.device.options = [*pg.device.options, absent_device()]
        pg.device.value = absent_device()
    assert pg.ask() is None
    assert expected in html.unescape(pg.status.value) and "tokens/s" not in pg.answer.value
    assert not pg.button.disabled


def test_playground_upload(pg):
    import html

    pg._on_upload({"new": ({"name": "notes.txt", "content": memoryview(b"milk, eggs")},)})
    assert "'notes.txt' is not an image file" in html.unescape(pg.status.value) and pg.image.value == "cat"
    astronaut = data.photo_path("astronaut")
    pg._on_upload({"new": ({"name": "mine.jpg", "content": memoryview(astronaut.read_bytes())},)})
    assert pg.image.value == "upload: mine.jpg" and "Added mine.jpg" in pg.status.value
    assert pg.ask().tiles == 17  # the upload is used: a square photo makes 4x4 tiles + global view (cat.jpg: 13)


def test_the_playground_is_a_multi_turn_chat_with_a_clear_button(pg):
    first = pg.ask()
    pg.question.value = "Tell me more."
    second = pg.ask()
    assert pg.conversation.turns == 2 and len(pg.conversation.images) == 1  # the photo is sent once
    assert chat.DEFAULT_QUESTION in pg.answer.value and "turn 2" in pg.status.value
    assert second.tiles == first.tiles
    pg.clear_button.click()
    assert pg.conversation.turns == 0 and "Cleared" in pg.status.value
    pg.image.value = playground.NO_IMAGE
    text_only = pg.ask()
    assert text_only.tiles is None and text_only.image_tokens == 0 and not pg.conversation.images


def test_the_tile_explorer_slides_from_half_a_tile_to_the_processors_longest_edge(tiny_loaded):
    import ipywidgets as widgets

    model, processor = tiny_loaded
    explorer = playground.tile_explorer(model, processor, images.load_image(data.photo_path("cat")),
                                        question="What is this?")
    slider, line, figure = explorer.children
    assert isinstance(slider, widgets.IntSlider) and isinstance(figure, widgets.Image)
    assert (slider.min, slider.max, slider.step, slider.value) == (256, 2048, 128, 2048)  # tile 512, edge 2048
    assert "longest edge 2048 px: 3x4 tiles + 1 global view of 512x512 px = 13 x 64 = 832 image tokens" in line.value
    assert "time to first token" in line.value and bytes(figure.value).startswith(b"\x89PNG")
    first = bytes(figure.value)
    slider.value = 512
    assert "longest edge 512 px: 1 tile (no split) of 512x512 px = 1 x 64 = 64 image tokens" in line.value
    assert "time to first token" in line.value and bytes(figure.value) != first
