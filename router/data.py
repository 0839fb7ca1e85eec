"""The router's datasets: a folder per task of JSONL splits, ``<root>/<task>/<split>.jsonl`` (the toy world's layout),
read into ``scoring.examples.Example`` rows (``{"question", "answer", "task"}`` per line; the answer may be absent)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from scoring.examples import Example, read_jsonl


def _data_root(root: Path) -> Path:
    """Accept both the toy world's ``data_dir`` and its ``data/`` folder."""
    return root / "data" if (root / "data").is_dir() else root


def task_names(root: str | Path) -> list[str]:
    base = _data_root(Path(root))
    return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


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
