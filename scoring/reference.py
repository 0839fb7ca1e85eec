"""Scorers against a reference answer, each both a per-answer ``Scorer`` and a batch ``Utility``.

- ``ExactMatch``: 1 when the output equals the reference after ``scoring.text.normalise`` (optionally case-folded);
- ``EditSimilarity``: 1 minus the output's Levenshtein distance to the reference over the longer length (partial
  credit for a nearly right answer; 1 exactly when ``ExactMatch`` gives 1);
- ``TokenF1``: SQuAD-style token F1;
- ``MultipleChoice``: the first choice letter the output commits to equals the reference's letter;
- ``EmbeddingSimilarity``: cosine similarity of sentence embeddings, clipped to [0, 1].

Each is a deterministic function of (reference, output); without a reference each scores 0.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from scoring.base import PerExample, Utility
from scoring.examples import Example
from scoring.text import edit_similarity, exact_match, token_f1


class ExactMatch(PerExample):
    name = "exact_match"

    def __init__(self, *, case_sensitive: bool = True):
        self.case_sensitive = case_sensitive

    def __call__(self, prediction: str, reference: str | None, question: str = "") -> float:
        return exact_match(prediction, reference, case_sensitive=self.case_sensitive)


class EditSimilarity(PerExample):
    """``1 - levenshtein(output, answer) / max(len)`` after the exact match's normalisation: a graded utility, so a
    search sees progress before an answer is exactly right (report test with ``exact_match``: ``report_utility``)."""

    name = "edit_similarity"

    def __init__(self, *, case_sensitive: bool = True):
        self.case_sensitive = case_sensitive

    def __call__(self, prediction: str, reference: str | None, question: str = "") -> float:
        return edit_similarity(prediction, reference, case_sensitive=self.case_sensitive)


class TokenF1(PerExample):
    """SQuAD-style token F1 after lowercasing and dropping punctuation and articles."""

    name = "token_f1"

    def __call__(self, prediction: str, reference: str | None, question: str = "") -> float:
        return token_f1(prediction, reference)


class EmbeddingSimilarity(PerExample):
    """Cosine similarity of sentence embeddings of prediction and reference, clipped to [0, 1]; ``encoder`` has
    ``encode(texts) -> unit vectors`` (e.g. ``gateway.routing.encoders.SentenceEncoder``)."""

    name = "embedding_similarity"

    def __init__(self, encoder: Any):
        self.encoder = encoder

    def __call__(self, prediction: str, reference: str | None, question: str = "") -> float:
        if reference is None or not prediction.strip():
            return 0.0
        a, b = self.encoder.encode([prediction, reference])
        return float(np.clip(np.dot(a, b), 0.0, 1.0))


_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ANSWER_IS = re.compile(r"answer\s*(?:is|:)?\s*\(?([A-Z])\)?(?![A-Za-z])", re.IGNORECASE)
_LONE = re.compile(r"(?<![A-Za-z])\(?([A-Z])\)?(?![A-Za-z])")


class MultipleChoice(Utility):
    """Answers are letters (``"B"``) or the text of one of ``choices``; outputs commit to a letter."""

    name = "multiple_choice"

    @staticmethod
    def gold_letter(ex: Example) -> str:
        a = (ex.answer or "").strip()
        valid = _LETTERS[: len(ex.choices) or len(_LETTERS)]
        m = re.fullmatch(r"\(?([A-Za-z])\)?[.:]?", a)
        if m and m.group(1).upper() in valid:
            return m.group(1).upper()
        for i, c in enumerate(ex.choices):
            if c.strip() == a:
                return _LETTERS[i]
        raise ValueError(f"example {ex.id!r}: answer {a!r} is neither a letter nor one of its choices")

    @staticmethod
    def predicted_letter(output: str, n_choices: int) -> str | None:
        valid = _LETTERS[: n_choices or len(_LETTERS)]
        m = _ANSWER_IS.search(output)
        if m and m.group(1).upper() in valid:
            return m.group(1).upper()
        for m in _LONE.finditer(output):
            if m.group(1) in valid:
                return m.group(1)
        return None

    async def score_examples(self, examples: Sequence[Example], outputs: Sequence[str]) -> list[float]:
        out = []
        for e, o in zip(examples, outputs, strict=True):
            out.append(1.0 if self.predicted_letter(o, len(e.choices)) == self.gold_letter(e) else 0.0)
        return out
