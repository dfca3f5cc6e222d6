"""Asking the model (helpers/chat.py): every bad input ends in the one sentence a user sees; streamed answers
equal plain ``generate``, timed by the one token clock; conversations keep their turns."""

from __future__ import annotations

import threading

import pytest

from conftest import build_fake_export, one_sentence
from helpers import chat, data, images, store

CAT, COFFEE = data.photo_path("cat"), data.photo_path("coffee")
QUESTION = "What is in this image?"


# --- model folders -----------------------------------------------------------------------------------------


def test_missing_variant_names_the_ones_that_exist(tiny, tiny_fp32):
    assert chat.model_folder(tiny, "fp32") == tiny_fp32
    message = one_sentence(chat.ChatError, chat.model_folder, tiny, "int4")
    assert message == (f"Variant 'int4' of synthetic-tiny is not on disk (no complete export in "
                       f"{tiny_fp32.parent / 'int4'}): make it with notebook 01 or 02, or pick one that exists (fp32).")


def test_incomplete_folder_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    message = one_sentence(chat.ChatError, chat.load_model, tmp_path)
    assert message == (f"No complete OpenVINO model in {tmp_path} (missing: openvino_language_model.xml, "
                       "openvino_language_model.bin): run notebook 01 first.")
    assert one_sentence(chat.ChatError, chat.load_model, tmp_path / "nothing") == (
        f"No complete OpenVINO model in {tmp_path / 'nothing'} (missing: not built yet): run notebook 01 first.")


# --- questions and image places ----------------------------------------------------------------------------


@pytest.mark.parametrize("question", ["", "   ", "\n\t", None])
def test_empty_question(question):
    assert one_sentence(chat.ChatError, chat.check_question, question) == (
        "The question is empty: type what you want to know about the image.")


def test_question_with_a_reserved_marker(tiny_loaded):
    _, processor = tiny_loaded
    for marker in ("<image>", "<video>", "<end_of_utterance>"):
        message = one_sentence(chat.ChatError, chat.check_question, f"Compare {marker} please", processor)
        assert message.startswith(f"The question contains {marker!r}, a marker the model reserves")
    assert chat.check_question("  What is this?  ", processor) == "What is this?"


def test_more_images_than_places(tiny_loaded):
    _, processor = tiny_loaded
    message = one_sentence(chat.ChatError, chat.prepare_inputs, processor, chat.user_message(QUESTION, 1), [CAT, COFFEE])
    assert message == ("You passed 2 images but the prompt has places for 1: "
                       "add one {'type': 'image'} entry to the message for each image.")


def test_fewer_images_than_places(tiny_loaded):
    _, processor = tiny_loaded
    message = one_sentence(chat.ChatError, chat.prepare_inputs, processor, chat.user_message(QUESTION, 2), [CAT])
    assert message == ("The prompt has places for 2 images but you passed 1: "
                       "pass one image for each {'type': 'image'} entry.")


def test_images_and_video_together(tiny_loaded):
    _, processor = tiny_loaded
    messages = chat.user_message(QUESTION, 1, video=True)
    message = one_sentence(chat.ChatError, chat.prepare_inputs, processor, messages, [CAT], data.video_path())
    assert message.startswith("SmolVLM's processor takes either images or one video")


def test_video_place_without_video(tiny_loaded):
    _, processor = tiny_loaded
    message = one_sentence(chat.ChatError, chat.prepare_inputs, processor, chat.user_message(QUESTION, 0, video=True))
    assert message.startswith("The prompt has 1 video place but you passed none")


@pytest.mark.parametrize("bad, expected", [
    ("holiday.jpg", "There is no file 'holiday.jpg'"),
    (data.video_path(), "slideshow.mp4' is not an image file Pillow can read"),
])
def test_bad_image_files_through_ask(tiny_loaded, bad, expected):
    model, processor = tiny_loaded
    assert expected in one_sentence(images.ImageError, chat.ask, model, processor, QUESTION, [bad])


def test_prompt_longer_than_the_model_reads(tiny_loaded):
    model, processor = tiny_loaded
    message = one_sentence(chat.ChatError, chat.ask, model, processor, "why " * 9000, [CAT])
    assert "exceeds the 8192 the model can read" in message


# --- answers ---------------------------------------------------------------------------------------------------


def test_streamed_answer_equals_plain_generate(tiny_loaded):
    model, processor = tiny_loaded
    inputs = chat.prepare_inputs(processor, chat.user_message(QUESTION), [CAT])
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    new_ids = output[:, inputs["input_ids"].shape[1]:]
    expected = processor.batch_decode(new_ids, skip_special_tokens=True)[0].strip()

    pieces = []
    answer = chat.ask(model, processor, QUESTION, [CAT], max_new_tokens=12, on_text=pieces.append)
    assert isinstance(answer, chat.Reply)
    assert answer.text == expected == "".join(pieces).strip()
    assert list(answer.token_ids) == new_ids[0].tolist() and answer.new_tokens == new_ids.shape[1] <= 12
    assert answer.prompt_tokens == inputs["input_ids"].shape[1]
    assert answer.tiles == 13 and answer.image_tokens == 13 * 64
    # TTFT from the call to generate; the processor's work apart, in preprocess_s; the total holds both
    assert answer.preprocess_s > 0 and 0 < answer.ttft_s and 0 <= answer.decode_s
    assert answer.preprocess_s + answer.ttft_s + answer.decode_s <= answer.total_s
    assert answer.tokens_per_s is None or answer.tokens_per_s > 0
    assert "time to first token" in answer.stats_line() and "tokens/s" in answer.stats_line()


def test_several_images_cost_their_tiles(tiny_loaded):
    model, processor = tiny_loaded
    one = chat.ask(model, processor, QUESTION, [CAT], max_new_tokens=2, longest_edge=1024)
    two = chat.ask(model, processor, QUESTION, [CAT, COFFEE], max_new_tokens=2, longest_edge=1024)
    assert one.tiles == 5 and two.tiles == 10
    assert two.image_tokens == 2 * one.image_tokens == 10 * 64


def test_video_is_sampled_at_one_frame_per_second(tiny_loaded):
    model, processor = tiny_loaded
    frames, metadata = images.load_video(data.video_path())
    inputs = chat.prepare_inputs(processor, chat.user_message(QUESTION, 0, video=True), video=(frames, metadata))
    assert metadata.frames_indices.tolist() == [0, 11, 23, 35, 47, 59]  # 6 s at 1 frame/s
    assert tuple(inputs["pixel_values"].shape[:2]) == (1, 6)
    answer = chat.ask(model, processor, QUESTION, video=data.video_path(), max_new_tokens=3)
    assert answer.tiles == 6 and answer.image_tokens == 6 * 64 and 1 <= answer.new_tokens <= 3


def test_a_failing_model_call_is_raised_not_hung(tiny_loaded, monkeypatch):
    model, processor = tiny_loaded
    inputs = chat.prepare_inputs(processor, chat.user_message(QUESTION), [CAT], longest_edge=512)

    def broken(*args, **kwargs):
        raise RuntimeError("the device went away")

    monkeypatch.setattr(model, "get_multimodal_embeddings", broken)
    outcome = {}

    def run():
        try:
            chat.stream(model, processor, inputs, max_new_tokens=4)
        except RuntimeError as err:
            outcome["error"] = str(err)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "stream hung after the model failed"
    assert outcome == {"error": "the device went away"}


@pytest.mark.parametrize("kind", ["text", "video"])  # a photo: test_streamed_answer_equals_plain_generate
def test_the_chat_answers_what_generate_answers(tiny_loaded, kind):
    model, processor = tiny_loaded
    if kind == "video":
        messages = chat.user_message(QUESTION, n_images=0, video=True)
        inputs = chat.prepare_inputs(processor, messages, video=data.video_path())
    else:
        inputs = chat.prepare_inputs(processor, chat.user_message(QUESTION, n_images=0))
    pieces = []
    answer = chat.stream(model, processor, inputs, max_new_tokens=12, on_text=pieces.append)
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    assert answer.text == processor.decode(output, skip_special_tokens=True).strip()
    assert list(answer.token_ids) == output.tolist() and "".join(pieces).strip() == answer.text
    assert answer.preprocess_s == 0 and answer.total_s >= answer.ttft_s > 0  # nothing preprocessed in the call
    video = kind == "video"
    assert answer.tiles == (6 if video else None) and answer.image_tokens == (6 * 64 if video else 0)


def test_a_failing_consumer_stops_generation(tiny_loaded):
    model, processor = tiny_loaded
    seen = []

    def stop_after_first(piece):
        seen.append(piece)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        chat.ask(model, processor, QUESTION, [CAT], max_new_tokens=200, longest_edge=512, on_text=stop_after_first)
    assert len(seen) == 1


def test_a_damaged_model_folder_is_named_not_loaded(tmp_path):
    folder = build_fake_export(tmp_path / "int8")
    (folder / "openvino_language_model.bin").write_bytes(b"\0" * 3)  # truncated copy
    message = one_sentence(chat.ChatError, chat.load_model, folder)
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
def test_wrong_argument_types_and_values_get_one_sentence(tiny_loaded, call, expected):
    model, processor = tiny_loaded
    assert one_sentence(ValueError, call, model, processor) == expected


# --- damaged model folders are named before OpenVINO or transformers trip on them -----------------------------


def test_a_same_size_corrupted_graph_is_named_by_load_model(tmp_path, tiny_fp32):
    import shutil

    folder = tmp_path / "fp32"
    shutil.copytree(tiny_fp32, folder)
    xml = folder / "openvino_language_model.xml"
    xml.write_text(xml.read_text()[:-300] + "#" * 300)  # same size: only parsing the graph finds it
    message = one_sentence(chat.ChatError, chat.load_model, folder)
    assert message.startswith(f"{xml} is corrupted (not valid XML") and "delete" in message


@pytest.mark.parametrize("damage", [store.MARKER, "preprocessor_config.json", "tokenizer.json"])
def test_a_folder_missing_its_processor_or_tokenizer_or_with_an_empty_marker_is_named(tmp_path, tiny_fp32, damage):
    import shutil

    folder = tmp_path / "fp32"
    shutil.copytree(tiny_fp32, folder)
    size = (folder / damage).stat().st_size
    if damage == store.MARKER:
        (folder / damage).write_bytes(b"")  # a 0-byte marker: e.g. a copy cut short
        problem = f"{store.MARKER} is missing or damaged"
    else:
        (folder / damage).unlink()
        problem = f"{damage} is missing (it was {size} bytes when written)"
    message = one_sentence(chat.ChatError, chat.load_model, folder)
    assert message == (f"The OpenVINO model in {folder} is damaged or stale ({problem}): delete the folder and run "
                       "the notebook that made it again.")


def test_chat_loads_through_the_compile_cache(tiny_fp32, tmp_path, monkeypatch):
    monkeypatch.setenv("VLM_CACHE", str(tmp_path / "cache"))
    chat.load_model(tiny_fp32)
    assert list((tmp_path / "cache" / "openvino-compiled").rglob("*.blob"))
    model, processor = chat.load_model(tiny_fp32, compile_cache=False)  # still loads with the cache switched off
    assert chat.ask(model, processor, QUESTION, max_new_tokens=2).new_tokens >= 1


# --- conversations -------------------------------------------------------------------------------------------


def test_a_conversation_keeps_earlier_turns_and_their_images(tiny_loaded):
    model, processor = tiny_loaded
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
    assert "not both" in one_sentence(chat.ChatError, chat.Conversation.ask, _with_image(model, processor), model,
                                  processor, "What happens?", video=data.video_path())


def _with_image(model, processor) -> chat.Conversation:
    talk = chat.Conversation()
    talk.ask(model, processor, QUESTION, [CAT], max_new_tokens=1)
    return talk


# --- the token clock and the reply ------------------------------------------------------------------------------


def test_token_clock_skips_the_prompt_and_stamps_each_new_token():
    import torch

    clock = chat.TokenClock()
    clock.put(torch.tensor([[1, 2, 3, 4]]))  # generate hands over the prompt first
    clock.put(torch.tensor([7]))
    clock.put(torch.tensor([8]))
    clock.end()
    assert clock.tokens == [7, 8] and len(clock.times) == 2 and clock.times[0] <= clock.times[1]
    assert clock.pieces == []  # no tokenizer: timing only


def test_token_clock_hands_out_the_answer_text(tiny_processor):
    import torch

    tokenizer, pieces = tiny_processor.tokenizer, []
    ids = tokenizer(" The cat sleeps on the warm blanket.", add_special_tokens=False)["input_ids"]
    clock = chat.TokenClock(tokenizer, pieces.append)
    clock.put(torch.tensor([[1, 2]]))
    for i in [*ids, tokenizer.convert_tokens_to_ids("<end_of_utterance>")]:
        clock.put(torch.tensor([i]))
    clock.end()
    assert "".join(pieces) == "".join(clock.pieces) and "".join(pieces).strip() == "The cat sleeps on the warm blanket."
    assert len(clock.times) == len(ids) + 1  # the end of turn is a token too, though it shows no text


def test_reply_figures_and_stats_line():
    reply = chat.Reply(text="A cat.", token_ids=(5, 6, 7), prompt_tokens=900, image_tokens=832, tiles=13,
                       preprocess_s=0.1, ttft_s=0.5, decode_s=1.0, total_s=1.6)
    assert reply.new_tokens == 3 and reply.tokens_per_s == 2.0
    assert reply.stats_line() == ("time to first token 0.50 s · 2.0 tokens/s · 3 new tokens in 1.60 s · prompt 900 "
                                  "tokens (832 image tokens, 13 tiles)")
    assert repr(reply) == f"A cat.\n[{reply.stats_line()}]"
    one = chat.Reply("A", (5,), 20, 0, None, 0.0, 0.2, 0.0, 0.2)
    assert one.tokens_per_s is None
    assert one.stats_line() == ("time to first token 0.20 s · tokens/s: n/a (fewer than 2 tokens) · 1 new tokens in "
                                "0.20 s · prompt 20 tokens (0 image tokens)")
