"""Search datasets: JSONL with ``dev`` and ``test`` splits.

A dataset source is either a directory holding ``dev.jsonl`` and ``test.jsonl`` (the toy world's ``data/<task>/``
layout) or one JSONL file whose rows carry ``"split": "dev" | "test"``. Rows are objects with ``question`` and
``answer``; optional ``task`` (defaults to the directory or file name; the multitask utility groups by it),
``choices`` (multiple choice) and ``id``. Searches score on ``dev``; reports compare on ``test`` only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPLITS = ("dev", "test")


class DatasetError(ValueError):
    """A dataset that can't be used; ``key`` names the config key that points at it."""

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}")


@dataclass(frozen=True)
class Example:
    question: str
    answer: str
    task: str = "default"
    choices: tuple[str, ...] = ()
    id: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Splits:
    dev: list[Example]
    test: list[Example]

    def tasks(self) -> list[str]:
        return sorted({e.task for e in self.dev} | {e.task for e in self.test})


def _row(obj: Any, where: str, default_task: str, index: int) -> Example:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: line {index + 1} is not a JSON object")
    for k in ("question", "answer"):
        if k not in obj:
            raise ValueError(f"{where}: line {index + 1} has no {k!r}")
    choices = obj.get("choices") or ()
    if not isinstance(choices, list | tuple):
        raise ValueError(f"{where}: line {index + 1}: 'choices' must be a list")
    known = {"question", "answer", "task", "choices", "id", "split"}
    return Example(
        question=str(obj["question"]),
        answer=str(obj["answer"]),
        task=str(obj.get("task") or default_task),
        choices=tuple(str(c) for c in choices),
        id=str(obj.get("id", f"{default_task}-{index}")),
        meta={k: v for k, v in obj.items() if k not in known},
    )


def read_jsonl(path: Path, default_task: str) -> list[tuple[str | None, Example]]:
    rows: list[tuple[str | None, Example]] = []
    for i, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {i + 1} is not valid JSON ({exc.msg})") from None
        rows.append((obj.get("split") if isinstance(obj, dict) else None, _row(obj, str(path), default_task, i)))
    return rows


def load_source(path: Path, key: str) -> Splits:
    """One source (a directory with dev/test JSONL, or a JSONL with a ``split`` column)."""
    if path.is_dir():
        missing = [s for s in SPLITS if not (path / f"{s}.jsonl").is_file()]
        if missing:
            raise DatasetError(key, f"{path} has no {', '.join(m + '.jsonl' for m in missing)}")
        try:
            dev = [e for _, e in read_jsonl(path / "dev.jsonl", path.name)]
            test = [e for _, e in read_jsonl(path / "test.jsonl", path.name)]
        except ValueError as exc:
            raise DatasetError(key, str(exc)) from None
    elif path.is_file():
        try:
            rows = read_jsonl(path, path.stem)
        except ValueError as exc:
            raise DatasetError(key, str(exc)) from None
        bad = sorted({str(s) for s, _ in rows if s not in SPLITS})
        if bad:
            raise DatasetError(key, f"{path}: rows need 'split' set to dev or test (found {bad})")
        dev = [e for s, e in rows if s == "dev"]
        test = [e for s, e in rows if s == "test"]
    else:
        raise DatasetError(key, f"dataset not found: {path}")
    if not dev:
        raise DatasetError(key, f"{path}: the dev split is empty (the search scores on dev)")
    if not test:
        raise DatasetError(key, f"{path}: the test split is empty (reports compare on test)")
    return Splits(dev, test)


def load_splits(
    paths: Sequence[Path], *, key: str = "data.paths", dev_limit: int | None = None, test_limit: int | None = None
) -> Splits:
    """Concatenate sources; ``*_limit`` keeps the first N examples of each source (balanced multitask sets)."""
    if not paths:
        raise DatasetError(key, "no dataset given")
    dev: list[Example] = []
    test: list[Example] = []
    for i, p in enumerate(paths):
        s = load_source(Path(p), f"{key}[{i}]")
        dev.extend(s.dev[:dev_limit] if dev_limit else s.dev)
        test.extend(s.test[:test_limit] if test_limit else s.test)
    return Splits(dev, test)
