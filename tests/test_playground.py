"""The playground (helpers/playground.py): the widgets and CSS classes the browser test relies on, streamed
answers with timings, bad input in the status line, uploads and a multi-turn chat."""

from __future__ import annotations

import pytest

from conftest import absent_device
from helpers import chat, data, playground


def _all_widgets(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from _all_widgets(child)


@pytest.fixture
def pg(tiny, tiny_fp32):
    return playground.make_playground(tiny)


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
    assert isinstance(answer, chat.Answer) and answer.new_tokens >= 1
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
    assert text_only.tiles == 0 and text_only.image_tokens == 0 and not pg.conversation.images
