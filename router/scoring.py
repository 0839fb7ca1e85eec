"""Answer quality in [0, 1]: the pluggable scorer of the routing MDP.

A scorer is any ``Callable[[prediction, reference, question], float]``. ``reference`` may be None for scorers that
need none (a reward model judges the (question, answer) pair alone); ``needs_reference`` tells which is which.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any, Protocol

import numpy as np


class Scorer(Protocol):
    needs_reference: bool

    def __call__(self, prediction: str, reference: str | None, question: str = "") -> float: ...


def _normalise(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


class ExactMatch:
    """1 when the prediction equals the reference after stripping surrounding whitespace (the toy world's rule)."""

    needs_reference = True

    def __call__(self, prediction: str, reference: str | None, question: str = "") -> float:
        if reference is None:
            return 0.0
        return 1.0 if prediction.strip() == reference.strip() else 0.0


class TokenF1:
    """SQuAD-style token F1 after lowercasing and dropping punctuation and articles."""

    needs_reference = True

    def __call__(self, prediction: str, reference: str | None, question: str = "") -> float:
        if reference is None:
            return 0.0
        pred, ref = _normalise(prediction).split(), _normalise(reference).split()
        if not pred or not ref:
            return float(pred == ref)
        common = sum((Counter(pred) & Counter(ref)).values())
        if common == 0:
            return 0.0
        precision, recall = common / len(pred), common / len(ref)
        return 2 * precision * recall / (precision + recall)


class EmbeddingSimilarity:
    """Cosine similarity of sentence embeddings of prediction and reference, clipped to [0, 1]."""

    needs_reference = True

    def __init__(self, encoder: Any):
        self.encoder = encoder

    def __call__(self, prediction: str, reference: str | None, question: str = "") -> float:
        if reference is None or not prediction.strip():
            return 0.0
        a, b = self.encoder.encode([prediction, reference])
        return float(np.clip(np.dot(a, b), 0.0, 1.0))


class RewardModelScorer:
    """A local sequence-classification reward model scoring (question, answer); sigmoid of its first logit."""

    needs_reference = False

    def __init__(self, model_path: str, max_length: int = 512):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self._torch = torch
        self._tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        self._model = AutoModelForSequenceClassification.from_pretrained(model_path, local_files_only=True).eval()
        self.max_length = max_length

    def __call__(self, prediction: str, reference: str | None, question: str = "") -> float:
        batch = self._tokenizer(question, prediction, truncation=True, max_length=self.max_length, return_tensors="pt")
        with self._torch.inference_mode():
            logit = self._model(**batch).logits[0, 0]
        return float(self._torch.sigmoid(logit))


def build_scorer(cfg: Any) -> Scorer:
    """A scorer from ``ScorerConfig``."""
    if cfg.name == "exact":
        return ExactMatch()
    if cfg.name == "f1":
        return TokenF1()
    if cfg.name == "similarity":
        from gateway.routing.encoders import SentenceEncoder

        return EmbeddingSimilarity(SentenceEncoder(cfg.model_path))
    if cfg.name == "reward_model":
        if not cfg.model_path:
            raise ValueError("scorer 'reward_model' needs scorer.model_path (a local sequence-classification model)")
        return RewardModelScorer(cfg.model_path)
    raise ValueError(f"unknown scorer {cfg.name!r} (expected exact, f1, similarity or reward_model)")
