"""Examples: one question with its reference answer, and the JSONL files they are read from.

A row is a JSON object with ``question`` and (usually) ``answer``; optional ``task`` (defaults to the caller's, e.g.
the dataset folder's name), ``choices`` (multiple choice) and ``id``; every other key (``split``, ...) is kept in
``meta``. Router evaluation, the searches, the toy world and the benchmarks all read and score these.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Example:
    """One question with its reference answer."""

    question: str
    """The question as a user asks it, e.g. ``add 47 38`` (no prompt scaffolding)."""
    answer: str | None = None
    """The reference answer, e.g. ``85``; None where the scorer needs none (a judge on logged questions)."""
    task: str = ""
    """Task name (a dataset folder's name unless the row gives one): per-task reports group by it."""
    choices: tuple[str, ...] = ()
    """Multiple-choice options; the answer is then a letter or one of these."""
    id: str = ""
    """A name for the example (``<task>-<line index>`` when read from a row that gives none)."""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    """Every other key of its row (e.g. ``split``)."""


_FIELDS = {"question", "answer", "task", "choices", "id"}


def read_jsonl(
    path: str | Path, task: str = "", limit: int | None = None, *, require_answer: bool = False
) -> list[Example]:
    """The examples of a JSONL file, blank lines skipped; ``task`` for rows that name none; at most ``limit``.

    With ``require_answer`` every row must carry an answer (a search scores against it). A bad row raises
    ``ValueError`` naming ``path:line``."""
    path = Path(path)
    out: list[Example] = []
    with path.open() as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc.msg})") from None
            out.append(_example(row, where, task, f"{task}-{lineno - 1}", require_answer))
            if limit is not None and len(out) >= limit:
                break
    return out


def _example(row: Any, where: str, task: str, default_id: str, require_answer: bool) -> Example:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: not a JSON object")
    if "question" not in row:
        raise ValueError(f"{where}: no 'question'")
    if require_answer and row.get("answer") is None:
        raise ValueError(f"{where}: no 'answer'")
    choices = row.get("choices") or ()
    if not isinstance(choices, list | tuple):
        raise ValueError(f"{where}: 'choices' must be a list")
    answer = row.get("answer")
    return Example(
        question=str(row["question"]),
        answer=None if answer is None else str(answer),
        task=str(row.get("task") or task),
        choices=tuple(str(c) for c in choices),
        id=str(row.get("id", default_id)),
        meta={k: v for k, v in row.items() if k not in _FIELDS},
    )
