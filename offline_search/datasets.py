"""Search datasets: JSONL with ``dev`` and ``test`` splits.

A dataset source is either a directory holding ``dev.jsonl`` and ``test.jsonl`` (the toy world's ``data/<task>/``
layout) or one JSONL file whose rows carry ``"split": "dev" | "test"``. Rows are objects with ``question`` and
``answer`` (read by ``scoring.examples.read_jsonl``); optional ``task`` (defaults to the directory or file name; the
multitask utility groups by it), ``choices`` (multiple choice) and ``id``. Searches score on ``dev``; reports compare
on ``test`` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from scoring.examples import Example, read_jsonl

SPLITS = ("dev", "test")


class DatasetError(ValueError):
    """A dataset that can't be used; ``key`` names the config key that points at it."""

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}")


@dataclass(frozen=True)
class Splits:
    dev: list[Example]
    test: list[Example]

    def tasks(self) -> list[str]:
        return sorted({e.task for e in self.dev} | {e.task for e in self.test})


def load_source(path: Path, key: str) -> Splits:
    """One source (a directory with dev/test JSONL, or a JSONL with a ``split`` column)."""
    if path.is_dir():
        missing = [s for s in SPLITS if not (path / f"{s}.jsonl").is_file()]
        if missing:
            raise DatasetError(key, f"{path} has no {', '.join(m + '.jsonl' for m in missing)}")
        try:
            dev = read_jsonl(path / "dev.jsonl", path.name, require_answer=True)
            test = read_jsonl(path / "test.jsonl", path.name, require_answer=True)
        except ValueError as exc:
            raise DatasetError(key, str(exc)) from None
    elif path.is_file():
        try:
            rows = read_jsonl(path, path.stem, require_answer=True)
        except ValueError as exc:
            raise DatasetError(key, str(exc)) from None
        bad = sorted({str(e.meta.get("split")) for e in rows if e.meta.get("split") not in SPLITS})
        if bad:
            raise DatasetError(key, f"{path}: rows need 'split' set to dev or test (found {bad})")
        dev = [e for e in rows if e.meta.get("split") == "dev"]
        test = [e for e in rows if e.meta.get("split") == "test"]
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
