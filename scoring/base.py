"""What a scorer is, at the two scales it is used on.

- ``Scorer``: one answer at a time, ``scorer(prediction, reference, question) -> float``; the routing MDP's quality
  and router evaluation call it. ``needs_reference`` says whether it needs the reference (a reward model judges the
  (question, answer) pair alone).
- ``Utility``: a batch of outputs against their examples at once, async (a reward model batches, a judge runs
  requests concurrently); what a search maximises. ``score`` aggregates (the mean, unless a subclass says otherwise)
  and reports each task's mean.
- ``PerExample``: a utility that scores each answer on its own, and so is a ``Scorer`` too; the reference scorers
  (``scoring.reference``) are these, so the router and the searches run the same code.

An output the engine cut at ``max_tokens`` (``finish_reason: length``) is not an answer: ``Utility.score`` gives it
the floor (0, or the batch's lowest score for reward models that go below 0), whatever its text.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from scoring.examples import Example


class Scorer(Protocol):
    """Quality of one answer in [0, 1] (the routing MDP's scale)."""

    needs_reference: bool

    def __call__(self, prediction: str, reference: str | None, question: str = "") -> float: ...


def is_truncated(text: str) -> bool:
    """Whether an output was cut at ``max_tokens``: a string that carries ``finish_reason == "length"`` (the
    searches' ``Generated``, the router cache's ``Truncated``)."""
    return getattr(text, "finish_reason", None) == "length"


@dataclass
class UtilityResult:
    value: float
    """The utility of this batch of outputs (what the search maximises)."""
    per_example: list[float]
    per_task: dict[str, float] = field(default_factory=dict)
    """Mean per-example score of each task."""


def per_task(examples: Sequence[Example], scores: Sequence[float]) -> dict[str, float]:
    """Each task's mean score, by task name."""
    groups: dict[str, list[float]] = {}
    for ex, s in zip(examples, scores, strict=True):
        groups.setdefault(ex.task, []).append(s)
    return {t: sum(v) / len(v) for t, v in sorted(groups.items())}


class Utility(abc.ABC):
    """Scores a batch of outputs against their examples."""

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
        return UtilityResult(self.aggregate(examples, per), per, per_task(examples, per))

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Release models / connections."""


class PerExample(Utility):
    """A utility that scores each answer from (prediction, reference, question) alone: also a ``Scorer``."""

    needs_reference: bool = True

    @abc.abstractmethod
    def __call__(self, prediction: str, reference: str | None, question: str = "") -> float:
        """The score of one answer."""

    async def score_examples(self, examples: Sequence[Example], outputs: Sequence[str]) -> list[float]:
        return [self(o, e.answer, e.question) for e, o in zip(examples, outputs, strict=True)]
