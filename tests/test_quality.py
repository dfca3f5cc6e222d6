"""Quality against a reference: teacher-forced token agreement and KL, answer similarity, accuracy, flags."""

from __future__ import annotations

import math

import pytest

from helpers import data, quality


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
def reference_model(tiny):
    return _load(tiny, "float32")


@pytest.fixture(scope="module")
def samples(processor):
    return quality.eval_samples(processor, 3)


@pytest.fixture(scope="module")
def reference(reference_model, processor, samples):
    return quality.run(reference_model, processor, samples, 6)


@pytest.fixture(scope="module")
def embedder():
    return quality.load_embedder()


def test_eval_samples_are_one_tile_questions_with_answers(samples):
    assert len(samples) == 3
    for s in samples:
        assert s.question.endswith("?") and s.answer and s.photo
        assert s.inputs["pixel_values"].shape[1] == 1  # one 512x512 tile each


def test_eval_samples_refuse_zero(processor):
    with pytest.raises(ValueError, match="n must be"):
        quality.eval_samples(processor, 0)


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


def test_reference_keeps_its_logits(reference, tiny):
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(tiny.source).text_config.vocab_size
    for answer in reference:
        assert 1 <= len(answer.tokens) <= 6
        assert tuple(answer.logits.shape) == (len(answer.tokens), vocab)
        assert answer.logits.argmax(-1).tolist() == answer.tokens  # greedy: each token is its step's argmax


def test_teacher_forcing_makes_the_model_emit_given_tokens(reference_model, samples, reference):
    forced_tokens = [5, 17, 3, 42]
    logits = quality.teacher_forced_logits(reference_model, samples[0].inputs, forced_tokens)
    assert logits.shape[0] == len(forced_tokens)
    # forcing the model's own answer gives back its own logits
    own = quality.teacher_forced_logits(reference_model, samples[0].inputs, reference[0].tokens)
    assert own.allclose(reference[0].logits, atol=1e-5)


def test_the_reference_against_itself_scores_perfectly(reference_model, processor, samples, reference):
    again = quality.run(reference_model, processor, samples, 6, reference=reference)
    for answer in again:
        assert answer.scores["token_agreement"] == 1.0
        assert answer.scores["kl_mean"] == pytest.approx(0.0, abs=1e-9)
        assert answer.logits is None


def test_a_lower_precision_variant_scores_finite_and_close(tiny, processor, samples, reference):
    variant = quality.run(_load(tiny, "bfloat16"), processor, samples, 6, reference=reference)
    for answer in variant:
        assert 0.0 <= answer.scores["token_agreement"] <= 1.0
        assert 0.0 <= answer.scores["kl_mean"] < 0.1


def test_run_refuses_a_reference_of_another_length(reference_model, processor, samples, reference):
    with pytest.raises(ValueError, match="reference answers"):
        quality.run(reference_model, processor, samples, 6, reference=reference[:1])


def test_embedding_model_is_installed_offline():
    path = quality.embedding_model_path()
    assert (path / "modules.json").is_file() and (path / "model.safetensors").is_file()


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
    ref = [quality.Answer([1], text) for text in ("a cat on a blanket", "orange", "a camera")]
    near = [quality.Answer([1], t, scores={"token_agreement": 1.0, "kl_mean": 0.001}) for t in
            ("a cat on a blanket", "orange", "a camera")]
    far = [quality.Answer([2], t, scores={"token_agreement": 0.2, "kl_mean": 2.0}) for t in
           ("rocket launch", "zebra stripes", "deep ocean")]
    scores = quality.score({"ref": ref, "near": near, "far": far}, samples, "ref", embedder, real_vision=False,
                           real_language_model=False)
    assert scores["ref"]["reference"] and scores["ref"]["kl_mean"] == 0.0 and scores["ref"]["token_agreement"] == 1.0
    assert not scores["near"]["below_floor"] and scores["near"]["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert scores["far"]["below_floor"] and scores["far"]["similarity"] < quality.SIMILARITY_FLOOR
    assert scores["far"]["kl_mean"] == 2.0 and scores["far"]["accuracy"] is None
    real = quality.score({"ref": ref, "near": near}, samples, "ref", embedder, real_vision=True,
                         real_language_model=True)
    assert real["near"]["accuracy"] == pytest.approx(1 / 3)  # only the third answer ("a camera") is what its question expects


def test_text_questions_are_scored_apart_from_photo_questions(embedder, samples):
    text = [quality.Sample("", "What is the capital of France?", "Paris", inputs=None, kind="text"),
            quality.Sample("", "What colour is the sky on a clear day?", "blue", inputs=None, kind="text")]
    both = samples[:1] + text
    assert [s.kind for s in both] == ["photo", "text", "text"]
    ref = [quality.Answer([1], t) for t in ("orange", "The capital of France is Paris.", "It is green.")]
    scores = quality.score({"ref": ref}, both, "ref", embedder, real_vision=False, real_language_model=True)
    row = scores["ref"]
    assert row["accuracy"] is None and row["photo_questions"] == 1  # a random vision encoder: not scored
    assert row["text_accuracy"] == pytest.approx(1 / 2) and row["text_questions"] == 2
    random = quality.score({"ref": ref}, both, "ref", embedder, real_vision=False, real_language_model=False)
    assert random["ref"]["text_accuracy"] is None


def test_every_photo_question_counts_as_one(processor):
    samples = quality.eval_samples(processor) + quality.text_samples(processor)
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
    low, high = quality.bootstrap_ci(few)
    assert low < sum(few) / len(few) < high and quality.bootstrap_ci(few) == [low, high]  # seeded: repeatable
    many_low, many_high = quality.bootstrap_ci(few * 20)
    assert many_high - many_low < (high - low) / 2
    assert quality.bootstrap_ci([0.5] * 5) == [0.5, 0.5]


def test_score_gives_intervals_and_tells_noise_from_a_real_difference(embedder):
    text = [quality.Sample("", f"question {i}", "yes", inputs=None, kind="text") for i in range(30)]
    ref = [quality.Answer([1, 2, 3], "yes") for _ in range(30)]
    same = [quality.Answer([1, 2, 3], "yes", scores={"token_agreement": 1.0, "kl_mean": 0.0})] * 29 + [
        quality.Answer([4], "no", scores={"token_agreement": 0.0, "kl_mean": 1.0})]
    worse = [quality.Answer([7, 8] * 6, "no", scores={"token_agreement": 0.0, "kl_mean": 3.0})] * 20 + [
        quality.Answer([1, 2, 3], "yes", scores={"token_agreement": 1.0, "kl_mean": 0.0})] * 10
    scores = quality.score({"ref": ref, "same": same, "worse": worse}, text, "ref", embedder, real_vision=False,
                           real_language_model=True)
    low, high = scores["worse"]["text_accuracy_ci"]
    assert low <= 1 / 3 <= high and scores["worse"]["repetition_rate"] == pytest.approx(2 / 3)
    assert quality.differs_from_reference(scores["worse"]) is True  # 20 of 30 answers lost
    assert quality.differs_from_reference(scores["same"]) is False  # one of 30: within noise
    assert quality.differs_from_reference(scores["ref"]) is False and scores["ref"]["repetition_rate"] == 0
    table = quality.summary_table(scores)
    assert "photo accuracy" not in table.columns and table.loc["worse", "text accuracy"].startswith("0.33 [")


def test_paired_difference_tells_a_real_gain_from_noise():
    text = [quality.Sample("", f"question {i}", "yes", inputs=None, kind="text") for i in range(30)]

    def answers(agreements, kls, right):
        return [quality.Answer([1], "yes" if ok else "no", scores={"token_agreement": a, "kl_mean": k})
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
