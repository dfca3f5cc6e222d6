"""Asking the model (helpers/chat.py, helpers/devices.py) and the playground (helpers/playground.py).

Every bad input ends in the one sentence a user sees; streamed answers equal plain ``generate``; the playground
has the widgets and CSS classes the browser test relies on.
"""

from __future__ import annotations

import threading

import pytest

from helpers import chat, data, devices, export, images, models, playground

CAT, COFFEE = data.photo_path("cat"), data.photo_path("coffee")
QUESTION = "What is in this image?"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def tiny(models_dir):
    """``(choice, fp32 folder)`` of the tiny stand-in, exported once into a temporary models folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLM_MODELS_DIR", str(models_dir))
        choice = models.resolve_model("synthetic-tiny")
        return choice, export.export_fp32(choice)


@pytest.fixture(scope="module")
def loaded(tiny):
    return chat.load_model(tiny[1], "CPU")


@pytest.fixture
def in_models_dir(monkeypatch, models_dir):
    monkeypatch.setenv("VLM_MODELS_DIR", str(models_dir))


def _absent_device() -> str:
    return next(d for d in ("NPU", "GPU", "GPU.1", "NPU.1") if d not in devices.available_devices())


def _message(error_type, call, *args, **kwargs) -> str:
    with pytest.raises(error_type) as err:
        call(*args, **kwargs)
    message = str(err.value)
    assert isinstance(err.value, ValueError) and message.endswith(".") and "\n" not in message
    return message


# --- devices -----------------------------------------------------------------------------------------------


def test_devices_are_what_openvino_reports_plus_auto():
    import openvino as ov

    offered = devices.available_devices()
    assert offered == [*ov.Core().available_devices, "AUTO"] and "CPU" in offered
    assert set(devices.device_names()) == set(offered)


def test_check_device_normalises_spelling():
    assert devices.check_device("cpu") == "CPU"
    assert devices.check_device(" auto ") == "AUTO"
    assert devices.check_device("AUTO:CPU") == "AUTO:CPU"


def test_absent_device_names_the_available_ones():
    absent = _absent_device()
    message = _message(ValueError, devices.check_device, absent)
    assert message == (f"Device {absent!r} is not available on this machine; OpenVINO reports: "
                       f"{', '.join(devices.available_devices())}.")
    assert f"names {absent}, which is not here" in _message(ValueError, devices.check_device, f"AUTO:{absent},CPU")
    assert _message(ValueError, devices.check_device, "").startswith("No device given; pick one of: CPU")


def test_load_model_checks_the_device_before_compiling(tiny, monkeypatch):
    from optimum.intel import OVModelForVisualCausalLM

    def never(*args, **kwargs):
        raise AssertionError("from_pretrained must not run for an absent device")

    monkeypatch.setattr(OVModelForVisualCausalLM, "from_pretrained", never)
    absent = _absent_device()
    assert _message(ValueError, chat.load_model, tiny[1], absent).startswith(f"Device {absent!r} is not available")


# --- model folders -----------------------------------------------------------------------------------------


def test_missing_variant_names_the_ones_that_exist(tiny, in_models_dir):
    choice, fp_dir = tiny
    assert chat.model_folder(choice, "fp32") == fp_dir
    message = _message(chat.ChatError, chat.model_folder, choice, "int4")
    assert message.startswith("Variant 'int4' of synthetic-tiny is not on disk") and message.endswith("(fp32).")


def test_incomplete_folder_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    message = _message(chat.ChatError, chat.load_model, tmp_path)
    assert message.startswith(f"No complete OpenVINO model in {tmp_path} (missing: ") and "notebook 01" in message


# --- questions and image places ----------------------------------------------------------------------------


@pytest.mark.parametrize("question", ["", "   ", "\n\t", None])
def test_empty_question(question):
    assert _message(chat.ChatError, chat.check_question, question) == (
        "The question is empty: type what you want to know about the image.")


def test_question_with_a_reserved_marker(loaded):
    _, processor = loaded
    for marker in ("<image>", "<video>", "<end_of_utterance>"):
        message = _message(chat.ChatError, chat.check_question, f"Compare {marker} please", processor)
        assert message.startswith(f"The question contains {marker!r}, a marker the model reserves")
    assert chat.check_question("  What is this?  ", processor) == "What is this?"


def test_more_images_than_places(loaded):
    _, processor = loaded
    message = _message(chat.ChatError, chat.prepare_inputs, processor, chat.user_message(QUESTION, 1), [CAT, COFFEE])
    assert message == ("You passed 2 images but the prompt has places for 1: "
                       "add one {'type': 'image'} entry to the message for each image.")


def test_fewer_images_than_places(loaded):
    _, processor = loaded
    message = _message(chat.ChatError, chat.prepare_inputs, processor, chat.user_message(QUESTION, 2), [CAT])
    assert message == ("The prompt has places for 2 images but you passed 1: "
                       "pass one image for each {'type': 'image'} entry.")


def test_images_and_video_together(loaded):
    _, processor = loaded
    messages = chat.user_message(QUESTION, 1, video=True)
    message = _message(chat.ChatError, chat.prepare_inputs, processor, messages, [CAT], data.video_path())
    assert message.startswith("SmolVLM's processor takes either images or one video")


def test_video_place_without_video(loaded):
    _, processor = loaded
    message = _message(chat.ChatError, chat.prepare_inputs, processor, chat.user_message(QUESTION, 0, video=True))
    assert message.startswith("The prompt has 1 video place but you passed none")


@pytest.mark.parametrize("bad, expected", [
    ("holiday.jpg", "There is no file 'holiday.jpg'"),
    (data.video_path(), "slideshow.mp4' is not an image file Pillow can read"),
])
def test_bad_image_files_through_ask(loaded, bad, expected):
    model, processor = loaded
    assert expected in _message(images.ImageError, chat.ask, model, processor, QUESTION, [bad])


def test_prompt_longer_than_the_model_reads(loaded):
    model, processor = loaded
    message = _message(chat.ChatError, chat.ask, model, processor, "why " * 9000, [CAT])
    assert "exceeds the 8192 the model can read" in message


# --- answers ---------------------------------------------------------------------------------------------------


def test_streamed_answer_equals_plain_generate(loaded):
    model, processor = loaded
    inputs = chat.prepare_inputs(processor, chat.user_message(QUESTION), [CAT])
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    new_ids = output[:, inputs["input_ids"].shape[1]:]
    expected = processor.batch_decode(new_ids, skip_special_tokens=True)[0].strip()

    pieces = []
    answer = chat.ask(model, processor, QUESTION, [CAT], max_new_tokens=12, on_text=pieces.append)
    assert answer.text == expected == "".join(pieces).strip()
    assert answer.new_tokens == new_ids.shape[1] <= 12
    assert answer.prompt_tokens == inputs["input_ids"].shape[1]
    assert answer.tiles == 13 and answer.image_tokens == 13 * 64
    assert 0 < answer.ttft_s <= answer.total_s
    assert answer.tokens_per_s is None or answer.tokens_per_s > 0
    assert "time to first token" in answer.stats_line() and "tokens/s" in answer.stats_line()


def test_several_images_cost_their_tiles(loaded):
    model, processor = loaded
    one = chat.ask(model, processor, QUESTION, [CAT], max_new_tokens=2, longest_edge=1024)
    two = chat.ask(model, processor, QUESTION, [CAT, COFFEE], max_new_tokens=2, longest_edge=1024)
    assert one.tiles == 5 and two.tiles == 10
    assert two.image_tokens == 2 * one.image_tokens == 10 * 64


def test_video_is_sampled_at_one_frame_per_second(loaded):
    model, processor = loaded
    frames, metadata = images.load_video(data.video_path())
    inputs = chat.prepare_inputs(processor, chat.user_message(QUESTION, 0, video=True), video=(frames, metadata))
    assert metadata.frames_indices.tolist() == [0, 11, 23, 35, 47, 59]  # 6 s at 1 frame/s
    assert tuple(inputs["pixel_values"].shape[:2]) == (1, 6)
    answer = chat.ask(model, processor, QUESTION, video=data.video_path(), max_new_tokens=3)
    assert answer.tiles == 6 and answer.image_tokens == 6 * 64 and 1 <= answer.new_tokens <= 3


def test_a_failing_model_call_is_raised_not_hung(loaded, monkeypatch):
    model, processor = loaded
    inputs = chat.prepare_inputs(processor, chat.user_message(QUESTION), [CAT], longest_edge=512)

    def broken(**kwargs):
        raise RuntimeError("the device went away")

    monkeypatch.setattr(model, "get_multimodal_embeddings", broken)
    outcome = {}

    def run():
        try:
            chat.stream_answer(model, processor, inputs, max_new_tokens=4)
        except RuntimeError as err:
            outcome["error"] = str(err)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "stream_answer hung after the model failed"
    assert outcome == {"error": "the device went away"}


@pytest.mark.parametrize("kind", ["text", "photo", "video"])
def test_the_chat_answers_what_generate_answers(loaded, kind):
    model, processor = loaded
    if kind == "video":
        inputs = chat.prepare_inputs(processor, chat.user_message(QUESTION, n_images=0, video=True), video=data.video_path())
    else:
        pictures = [CAT] if kind == "photo" else []
        inputs = chat.prepare_inputs(processor, chat.user_message(QUESTION, n_images=len(pictures)), pictures,
                                     longest_edge=512)
    pieces = []
    answer = chat.stream_answer(model, processor, inputs, max_new_tokens=12, on_text=pieces.append)
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    assert answer.text == processor.decode(output, skip_special_tokens=True).strip()
    assert answer.new_tokens == len(output) and "".join(pieces).strip() == answer.text


def test_a_failing_consumer_stops_generation(loaded):
    model, processor = loaded
    seen = []

    def stop_after_first(piece):
        seen.append(piece)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        chat.ask(model, processor, QUESTION, [CAT], max_new_tokens=200, longest_edge=512, on_text=stop_after_first)
    assert len(seen) == 1


# --- playground --------------------------------------------------------------------------------------------


def _all_widgets(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from _all_widgets(child)


@pytest.fixture
def pg(tiny, in_models_dir):
    return playground.make_playground(tiny[0])


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
        pg.device.options = [*pg.device.options, _absent_device()]
        pg.device.value = _absent_device()
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


def test_a_damaged_model_folder_is_named_not_loaded(tmp_path):
    from helpers import export

    def fake_export(folder):
        for name in export.LOAD_FILES:
            (folder / name).write_text("{}")
        for stem in export.SUBMODELS.values():
            (folder / f"{stem}.xml").write_text("<net/>")
            (folder / f"{stem}.bin").write_bytes(b"\0" * 10)

    folder = export.build_atomically(tmp_path / "int8", fake_export)
    (folder / "openvino_language_model.bin").write_bytes(b"\0" * 3)  # truncated copy
    message = _message(chat.ChatError, chat.load_model, folder)
    assert message == (f"The OpenVINO model in {folder} is damaged or stale (openvino_language_model.bin is 3 bytes "
                       "but was 10 bytes when written): delete the folder and run the notebook that made it again.")


# --- wrong argument types and values: one sentence each ------------------------------------------------------


@pytest.mark.parametrize("call, expected", [
    (lambda m, p: chat.ask(m, p, QUESTION, str(CAT)),
     f"Images go in a list, even a single one: pass ['{CAT}'] instead of '{CAT}'."),
    (lambda m, p: chat.ask(m, p, QUESTION, CAT),
     f"Images go in a list, even a single one: pass ['{CAT}'] instead of '{CAT}'."),
    (lambda m, p: chat.ask(m, p, QUESTION, images.load_image(CAT)),
     "Images go in a list, even a single one: pass [image] instead of image."),
    (lambda m, p: chat.ask(m, p, QUESTION, {CAT}),
     "image_list must be a list of images (file paths, bytes or PIL images), not set."),
    (lambda m, p: chat.ask(m, p, 42, [CAT]), 'The question must be text (a str), not int: e.g. "What is in this image?".'),
    (lambda m, p: chat.ask(m, p, QUESTION, [CAT], max_new_tokens=None),
     "max_new_tokens must be a whole number, not None."),
    (lambda m, p: chat.ask(m, p, QUESTION, [CAT], max_new_tokens=2.5),
     "max_new_tokens must be a whole number, not 2.5."),
    (lambda m, p: chat.ask(m, p, QUESTION, [CAT], max_new_tokens=0),
     "max_new_tokens must be a whole number of at least 1, not 0."),
    (lambda m, p: chat.ask(m, p, QUESTION, [CAT], longest_edge=-1),
     "longest_edge must be a whole number from 16 to 2048, not -1."),
    (lambda m, p: chat.ask(m, p, QUESTION, [CAT], longest_edge="big"),
     "longest_edge must be a whole number, not 'big'."),
    (lambda m, p: chat.ask(m, p, QUESTION, ["https://example.com/cat.jpg"]),
     "'https://example.com/cat.jpg' is a web address, and images are not downloaded here: save the image to a "
     "file first and pass its path."),
    (lambda m, p: chat.ask(m, p, "What happens?", video=42),
     "video must be a file path or the (frames, metadata) of images.load_video, not int."),
])
def test_wrong_argument_types_and_values_get_one_sentence(loaded, call, expected):
    model, processor = loaded
    assert _message(ValueError, call, model, processor) == expected


# --- damaged model folders are named before OpenVINO or transformers trip on them -----------------------------


def test_a_same_size_corrupted_graph_is_named_by_load_model(tmp_path, tiny):
    import shutil

    folder = tmp_path / "fp32"
    shutil.copytree(tiny[1], folder)
    xml = folder / "openvino_language_model.xml"
    xml.write_text(xml.read_text()[:-300] + "#" * 300)  # same size: only parsing the graph finds it
    message = _message(chat.ChatError, chat.load_model, folder)
    assert message.startswith(f"{xml} is corrupted (not valid XML") and "delete" in message


@pytest.mark.parametrize("damage, expected", [
    ("export_complete.json", "export_complete.json is damaged (not a JSON record of the export)"),
    ("preprocessor_config.json", "missing: preprocessor_config.json"),
    ("tokenizer.json", "missing: tokenizer.json"),
])
def test_a_folder_missing_its_processor_or_tokenizer_or_with_an_empty_marker_is_named(tmp_path, tiny, damage,
                                                                                       expected):
    import shutil

    folder = tmp_path / "fp32"
    shutil.copytree(tiny[1], folder)
    if damage == "export_complete.json":
        (folder / damage).write_bytes(b"")  # a 0-byte marker: e.g. a copy cut short
    else:
        (folder / damage).unlink()
    message = _message(chat.ChatError, chat.load_model, folder)
    assert expected in message and str(folder) in message


# --- conversations -------------------------------------------------------------------------------------------


def test_a_conversation_keeps_earlier_turns_and_their_images(loaded):
    model, processor = loaded
    talk = chat.Conversation()
    first = talk.ask(model, processor, QUESTION, [CAT], max_new_tokens=3)
    second = talk.ask(model, processor, "And what colour is it?", max_new_tokens=3)
    assert talk.turns == 2 and len(talk.images) == 1
    assert [m["role"] for m in talk.messages] == ["user", "assistant", "user", "assistant"]
    prompt = processor.apply_chat_template(talk.messages[:3], add_generation_prompt=True)
    assert QUESTION in prompt and f"Assistant: {first.text}<end_of_utterance>" in prompt
    assert second.tiles == first.tiles and second.prompt_tokens > first.prompt_tokens  # the photo is read again
    talk.clear()
    assert talk.turns == 0 and not talk.images
    assert "not both" in _message(chat.ChatError, chat.Conversation.ask, _with_image(model, processor), model,
                                  processor, "What happens?", video=data.video_path())


def _with_image(model, processor) -> chat.Conversation:
    talk = chat.Conversation()
    talk.ask(model, processor, QUESTION, [CAT], max_new_tokens=1)
    return talk


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
