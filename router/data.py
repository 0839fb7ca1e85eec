"""Questions with reference answers, read from JSONL datasets (``{"question", "answer", "task"}`` per line)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Example:
    """One question the router learns or is evaluated on."""

    question: str
    reference: str | None
    """Gold answer; None when the scorer needs none (e.g. a reward model on logged questions)."""
    task: str = ""


def _data_root(root: Path) -> Path:
    """Accept both the toy world's ``data_dir`` and its ``data/`` folder."""
    return root / "data" if (root / "data").is_dir() else root


def task_names(root: str | Path) -> list[str]:
    base = _data_root(Path(root))
    return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def read_jsonl(path: Path, task: str = "", limit: int | None = None) -> list[Example]:
    out: list[Example] = []
    with path.open() as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                out.append(Example(str(row["question"]), row.get("answer"), str(row.get("task", task))))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(
                    f"{path}:{lineno}: expected a JSON object with 'question' (and 'answer'): {exc}"
                ) from None
            if limit is not None and len(out) >= limit:
                break
    return out


def load_examples(
    root: str | Path, split: str, tasks: Sequence[str] = (), limit_per_task: int | None = None
) -> list[Example]:
    """Examples of ``split`` for each task folder (``{root}/{task}/{split}.jsonl``), in task order."""
    base = _data_root(Path(root))
    names = list(tasks) or task_names(base)
    if not names:
        raise FileNotFoundError(f"no task folders under {base}")
    out: list[Example] = []
    for task in names:
        path = base / task / f"{split}.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"dataset file not found: {path}")
        out.extend(read_jsonl(path, task, limit_per_task))
    return out


def reference_index(root: str | Path, splits: Iterable[str] = ("train",)) -> dict[str, Example]:
    """The examples of ``splits`` under ``root`` by question (to score logged questions in the toy world).

    Training only by default: a logged dev or test question must never become training data."""
    base = _data_root(Path(root))
    index: dict[str, Example] = {}
    for task in task_names(base):
        for split in splits:
            path = base / task / f"{split}.jsonl"
            if path.is_file():
                for ex in read_jsonl(path, task):
                    index.setdefault(ex.question, ex)
    return index
