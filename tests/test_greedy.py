"""The direct greedy loop chooses exactly the tokens generate chooses, and its timing comparison is complete."""

from __future__ import annotations

import pytest
from PIL import Image

from helpers import chat, greedy


@pytest.fixture(scope="module")
def text_inputs(tiny_loaded):
    _, processor = tiny_loaded
    return chat.question_inputs(processor, "Tell me about the sea.")


def _generate(model, inputs, n):
    prompt = inputs["input_ids"].shape[1]
    return model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)[0, prompt:].tolist()


def test_same_tokens_as_generate_with_and_without_an_image(tiny_loaded, text_inputs):
    model, processor = tiny_loaded
    photo = chat.question_inputs(processor, "What is this?", Image.new("RGB", (640, 480), "orange"), longest_edge=512)
    for inputs in (text_inputs, photo):
        tokens, start, times = greedy.direct_greedy(model, inputs, 12)
        assert tokens == _generate(model, inputs, 12)
        assert len(times) == 12 and start < times[0] and times == sorted(times)


def test_the_generation_rules_are_followed_as_generate_follows_them(tiny_loaded, text_inputs):
    model, _ = tiny_loaded
    free = greedy.direct_greedy(model, text_inputs, 6)[0]
    config = model.generation_config
    saved = config.begin_suppress_tokens, config.eos_token_id
    try:
        # the token it would choose first may not come first; the one it would choose third never comes
        config.begin_suppress_tokens = [free[0]]
        config.eos_token_id = [*saved[1], free[2]] if free[2] != free[0] else saved[1]
        tokens = greedy.direct_greedy(model, text_inputs, 6)[0]
        assert tokens[0] != free[0]
        assert tokens == _generate(model, text_inputs, 6)
        assert free[2] == free[0] or free[2] not in tokens
    finally:
        config.begin_suppress_tokens, config.eos_token_id = saved


def test_a_rule_the_loop_does_not_apply_is_refused(tiny_loaded, text_inputs):
    model, _ = tiny_loaded
    model.generation_config.repetition_penalty = 1.3
    try:
        with pytest.raises(ValueError, match="does not apply repetition_penalty"):
            greedy.direct_greedy(model, text_inputs, 4)
    finally:
        model.generation_config.repetition_penalty = 1.0


def test_generate_vs_direct_reports_both_and_the_gap(tiny_loaded, text_inputs):
    model, _ = tiny_loaded
    found = greedy.generate_vs_direct(model, text_inputs, 8, iterations=2)
    for name in ("generate", "direct"):
        assert 0 < found[name]["ttft_s"] and 0 < found[name]["tpot_s"]
    assert found["gap"] == pytest.approx(found["generate"]["tpot_s"] / found["direct"]["tpot_s"] - 1)
    assert found["same_tokens"] and found["iterations"] == 2
    with pytest.raises(ValueError, match="new_tokens >= 2"):
        greedy.generate_vs_direct(model, text_inputs, 1, iterations=2)
