"""The multitask utility: the harmonic mean over tasks of another utility's per-task means (Model Swarms' multitask
objective), so a particle only scores well when it is good at *every* task.

The utilities it wraps (exact match, edit similarity, multiple choice, reward model, LLM judge) live in ``scoring``;
``offline_search.evaluate.build_utility`` builds a search's from its config.
"""

from __future__ import annotations

from collections.abc import Sequence

from scoring.base import Utility, per_task
from scoring.examples import Example


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean of non-negative values (0 when any is 0)."""
    if not values:
        return 0.0
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


class Multitask(Utility):
    """Harmonic mean over tasks of ``base``'s per-task mean (only meaningful for utilities >= 0); ``tasks`` names
    the tasks that count (a task the batch lacks counts as 0), by default those in the batch."""

    def __init__(self, base: Utility, tasks: Sequence[str] | None = None):
        self.base = base
        self.tasks = list(tasks) if tasks else None
        self.name = f"multitask_hm({base.name})"

    async def score_examples(self, examples: Sequence[Example], outputs: Sequence[str]) -> list[float]:
        return await self.base.score_examples(examples, outputs)

    def aggregate(self, examples: Sequence[Example], scores: Sequence[float]) -> float:
        per = per_task(examples, scores)
        tasks = self.tasks or list(per)
        return harmonic_mean([per.get(t, 0.0) for t in tasks])

    async def close(self) -> None:
        await self.base.close()
