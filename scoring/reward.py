"""Reward models: a Hugging Face sequence-classification model scores (question, answer) pairs, no reference.

- ``RewardModel`` (a search's utility): batched; with one label the raw logit is the score, with several the
  probability of ``label``; loads from a path or the hub.
- ``RewardModelScorer`` (the router's quality, one answer at a time): the sigmoid of the first logit, so it lies in
  [0, 1] as the routing MDP's quality must; loads local files only.

They keep their own scales: merging them would move the numbers of whichever changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from scoring.base import PerExample, Utility
from scoring.examples import Example


class RewardModel(Utility):
    """Mean score of a Hugging Face ``AutoModelForSequenceClassification`` on (question, output) pairs.

    With one label the raw logit is the score; with several, the probability of ``label`` (default: the last).
    ``template`` (``{question}``/``{output}``) builds a single text instead of a text pair.
    """

    name = "reward_model"

    def __init__(
        self,
        model: str,
        *,
        batch_size: int = 16,
        label: int | None = None,
        template: str | None = None,
        max_length: int = 512,
        device: str = "cpu",
    ):
        self.model_path = model
        self.batch_size = batch_size
        self.label = label
        self.template = template
        self.max_length = max_length
        self.device = device
        self._model: Any = None
        self._tok: Any = None
        self._lock = asyncio.Lock()

    def _load(self) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(self.model_path)
        self._model = AutoModelForSequenceClassification.from_pretrained(self.model_path).to(self.device).eval()
        if self._tok.pad_token is None:
            self._tok.pad_token = self._tok.eos_token or self._tok.unk_token
        if self._model.config.pad_token_id is None:
            self._model.config.pad_token_id = self._tok.pad_token_id

    def _score_sync(self, examples: Sequence[Example], outputs: Sequence[str]) -> list[float]:
        import torch

        if self._model is None:
            self._load()
        scores: list[float] = []
        for lo in range(0, len(examples), self.batch_size):
            exs, outs = examples[lo : lo + self.batch_size], outputs[lo : lo + self.batch_size]
            if self.template is not None:
                texts = [
                    self.template.replace("{question}", e.question).replace("{output}", o)
                    for e, o in zip(exs, outs, strict=True)
                ]
                enc = self._tok(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            else:
                enc = self._tok(
                    [e.question for e in exs],
                    list(outs),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
            with torch.inference_mode():
                logits = self._model(**{k: v.to(self.device) for k, v in enc.items()}).logits.float()
            if logits.shape[-1] == 1:
                scores.extend(logits[:, 0].tolist())
            else:
                label = self.label if self.label is not None else logits.shape[-1] - 1
                scores.extend(torch.softmax(logits, dim=-1)[:, label].tolist())
        return scores

    async def score_examples(self, examples: Sequence[Example], outputs: Sequence[str]) -> list[float]:
        async with self._lock:
            return await asyncio.to_thread(self._score_sync, list(examples), list(outputs))

    async def close(self) -> None:
        self._model = None


class RewardModelScorer(PerExample):
    """A local sequence-classification reward model scoring (question, answer); sigmoid of its first logit."""

    name = "reward_model_scorer"
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
