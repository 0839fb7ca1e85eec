"""Utilities: what a search maximises. Each scores a batch of outputs against their examples, in [0, 1] or any scale.

- ``ExactMatch``: 1 when the output equals the answer (whitespace-stripped, optionally case-folded);
- ``EditSimilarity``: 1 minus the output's Levenshtein distance to the answer over the longer length (partial credit
  for a nearly right answer; 1 exactly when ``ExactMatch`` gives 1);
- ``MultipleChoice``: the first choice letter the output commits to equals the answer's letter;
- ``Multitask``: the harmonic mean over tasks (an example's ``task``) of another utility's per-task means, so a
  particle only scores well when it is good at *every* task;
- ``RewardModel``: the mean score of any Hugging Face sequence-classification model on (question, output);
- ``LLMJudge``: a judge model behind any OpenAI-compatible ``/chat/completions`` endpoint rates each output.

An output the engine cut at ``max_tokens`` (``finish_reason: length``) scores the floor (0, or the batch's lowest
score for reward models that go below 0) in every utility: a cut answer is not an answer.

Per-example scores are deterministic functions of (example, output) for the first four; the judge is called with
temperature 0 and its scores are cached per (question, answer, output).
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from offline_search.datasets import Example
from offline_search.generation import is_truncated


@dataclass
class UtilityResult:
    value: float
    """The utility of this batch of outputs (what the search maximises)."""
    per_example: list[float]
    per_task: dict[str, float] = field(default_factory=dict)
    """Mean per-example score of each task."""


def _per_task(examples: Sequence[Example], scores: Sequence[float]) -> dict[str, float]:
    groups: dict[str, list[float]] = {}
    for ex, s in zip(examples, scores, strict=True):
        groups.setdefault(ex.task, []).append(s)
    return {t: sum(v) / len(v) for t, v in sorted(groups.items())}


class Utility(abc.ABC):
    name: str = "utility"

    @abc.abstractmethod
    async def score_examples(self, examples: Sequence[Example], outputs: Sequence[str]) -> list[float]:
        """One score per (example, output)."""

    def aggregate(self, examples: Sequence[Example], scores: Sequence[float]) -> float:
        return sum(scores) / len(scores) if scores else 0.0

    async def score(self, examples: Sequence[Example], outputs: Sequence[str]) -> UtilityResult:
        if len(examples) != len(outputs):
            raise ValueError(f"{len(examples)} examples but {len(outputs)} outputs")
        per = await self.score_examples(examples, outputs)
        # an output cut at max_tokens is wrong, whatever its text (every utility, one place)
        floor = min(0.0, *per) if per else 0.0
        per = [floor if is_truncated(o) else s for o, s in zip(outputs, per, strict=True)]
        return UtilityResult(self.aggregate(examples, per), per, _per_task(examples, per))

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Release models / connections."""


class ExactMatch(Utility):
    name = "exact_match"

    def __init__(self, *, case_sensitive: bool = True):
        self.case_sensitive = case_sensitive

    def _norm(self, s: str) -> str:
        s = " ".join(s.strip().split())
        return s if self.case_sensitive else s.casefold()

    async def score_examples(self, examples: Sequence[Example], outputs: Sequence[str]) -> list[float]:
        return [1.0 if self._norm(o) == self._norm(e.answer) else 0.0 for e, o in zip(examples, outputs, strict=True)]


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions) between two strings."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


class EditSimilarity(ExactMatch):
    """``1 - levenshtein(output, answer) / max(len)`` after ``ExactMatch``'s normalisation: a graded utility, so a
    search sees progress before an answer is exactly right (report test with ``exact_match``: ``report_utility``)."""

    name = "edit_similarity"

    async def score_examples(self, examples: Sequence[Example], outputs: Sequence[str]) -> list[float]:
        out = []
        for e, o in zip(examples, outputs, strict=True):
            a, b = self._norm(o), self._norm(e.answer)
            out.append(1.0 - levenshtein(a, b) / max(len(a), len(b)) if a or b else 1.0)
        return out


_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ANSWER_IS = re.compile(r"answer\s*(?:is|:)?\s*\(?([A-Z])\)?(?![A-Za-z])", re.IGNORECASE)
_LONE = re.compile(r"(?<![A-Za-z])\(?([A-Z])\)?(?![A-Za-z])")


class MultipleChoice(Utility):
    """Answers are letters (``"B"``) or the text of one of ``choices``; outputs commit to a letter."""

    name = "multiple_choice"

    @staticmethod
    def gold_letter(ex: Example) -> str:
        a = ex.answer.strip()
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


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean of non-negative values (0 when any is 0)."""
    if not values:
        return 0.0
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


class Multitask(Utility):
    """Harmonic mean over tasks of ``base``'s per-task mean (only meaningful for utilities >= 0)."""

    def __init__(self, base: Utility, tasks: Sequence[str] | None = None):
        self.base = base
        self.tasks = list(tasks) if tasks else None
        self.name = f"multitask_hm({base.name})"

    async def score_examples(self, examples: Sequence[Example], outputs: Sequence[str]) -> list[float]:
        return await self.base.score_examples(examples, outputs)

    def aggregate(self, examples: Sequence[Example], scores: Sequence[float]) -> float:
        per = _per_task(examples, scores)
        tasks = self.tasks or list(per)
        return harmonic_mean([per.get(t, 0.0) for t in tasks])

    async def close(self) -> None:
        await self.base.close()


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


JUDGE_SYSTEM = (
    "You are a strict grader. Rate how well the response answers the question"
    "{reference_clause}. Reply with a single integer from {min_score} to {max_score} and nothing else."
)
JUDGE_USER = "Question:\n{question}\n\n{reference}Response:\n{output}\n\nScore ({min_score}-{max_score}):"
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class LLMJudge(Utility):
    """Scores from a judge model behind any OpenAI-compatible endpoint, normalised to [0, 1].

    An unparseable or failed judgement scores 0 (and is counted in ``failures``).
    """

    name = "llm_judge"

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key_env: str | None = None,
        min_score: int = 1,
        max_score: int = 10,
        use_reference: bool = True,
        system: str = JUDGE_SYSTEM,
        user: str = JUDGE_USER,
        concurrency: int = 8,
        timeout_s: float = 60.0,
        max_tokens: int = 8,
    ):
        if max_score <= min_score:
            raise ValueError("max_score must be > min_score")
        self.url = url.rstrip("/")
        self.model = model
        self.api_key = os.environ.get(api_key_env) if api_key_env else None
        self.min_score, self.max_score = min_score, max_score
        self.use_reference = use_reference
        self.system, self.user = system, user
        self.timeout_s = timeout_s
        self.max_tokens = max_tokens
        self._sem = asyncio.Semaphore(concurrency)
        self._cache: dict[str, float] = {}
        self._client: Any = None
        self.failures = 0
        self.calls = 0

    def _messages(self, ex: Example, output: str) -> list[dict[str, str]]:
        fill = {
            "min_score": str(self.min_score),
            "max_score": str(self.max_score),
            "reference_clause": " (a reference answer is given)" if self.use_reference else "",
            "reference": f"Reference answer:\n{ex.answer}\n\n" if self.use_reference else "",
            "question": ex.question,
            "output": output,
        }
        return [
            {"role": "system", "content": _fill(self.system, fill)},
            {"role": "user", "content": _fill(self.user, fill)},
        ]

    def parse(self, text: str) -> float | None:
        m = _NUMBER.search(text or "")
        if not m:
            return None
        v = min(max(float(m.group()), self.min_score), self.max_score)
        return (v - self.min_score) / (self.max_score - self.min_score)

    async def _judge(self, ex: Example, output: str) -> float:
        import httpx

        key = hashlib.sha256("\x00".join((ex.question, ex.answer, output)).encode()).hexdigest()
        if key in self._cache:
            return self._cache[key]
        if self._client is None:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._client = httpx.AsyncClient(timeout=self.timeout_s, headers=headers)
        body = {
            "model": self.model,
            "messages": self._messages(ex, output),
            "temperature": 0.0,
            "max_tokens": self.max_tokens,
        }
        async with self._sem:
            self.calls += 1
            try:
                r = await self._client.post(f"{self.url}/chat/completions", json=body)
                r.raise_for_status()
                text = r.json()["choices"][0]["message"]["content"]
                value = self.parse(text)
            except (httpx.HTTPError, KeyError, IndexError, ValueError):
                value = None
        if value is None:
            self.failures += 1
            return 0.0  # not cached: a transient failure may succeed next time
        self._cache[key] = value
        return value

    async def score_examples(self, examples: Sequence[Example], outputs: Sequence[str]) -> list[float]:
        return list(await asyncio.gather(*(self._judge(e, o) for e, o in zip(examples, outputs, strict=True))))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _fill(template: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), template)
