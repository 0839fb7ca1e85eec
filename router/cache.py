"""The trajectory cache: expert answers keyed by (expert, question, previous answer), in SQLite.

An answer depends only on who answers what, given which previous answer, so the MDP's transitions are a lookup:
PPO never waits on a model. Each expert's *fingerprint* (model, adapter, KTP template, sampling) is recorded; a
cache built by a different expert is refused instead of silently mixing answers.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS answers (
    expert TEXT NOT NULL,
    question TEXT NOT NULL,
    previous TEXT NOT NULL,
    answer TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    finish_reason TEXT,
    source TEXT NOT NULL DEFAULT 'collect',
    created REAL NOT NULL,
    PRIMARY KEY (expert, question, previous)
);
"""


class Truncated(str):
    """An answer the engine cut at ``max_tokens`` (``finish_reason: length``): it scores 0 wherever it is scored,
    even when its text happens to equal the reference (a cut answer is not an answer). Its ``finish_reason`` is what
    ``scoring.base.is_truncated`` reads, as it does for the searches' generated outputs."""

    finish_reason = "length"


class CacheMismatch(RuntimeError):
    """The cache was filled by a differently configured expert."""


@dataclass(frozen=True)
class Answer:
    """One cached expert answer."""

    expert: str
    question: str
    previous: str
    answer: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    source: str = "collect"
    """``collect`` (engine layer) or ``log`` (the gateway's request log)."""


Key = tuple[str, str, str]


class TrajectoryCache:
    """SQLite-backed answer table. Not thread-safe; one writer at a time (SQLite locks the file)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60)
        self._db.executescript(SCHEMA)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.commit()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> TrajectoryCache:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- fingerprints -------------------------------------------------------------------------------------------
    def check_fingerprint(self, expert: str, fingerprint: dict[str, Any], *, rebuild: bool = False) -> None:
        """Record ``expert``'s fingerprint, or refuse when a different one filled the cache (``rebuild`` drops it)."""
        key = f"expert:{expert}"
        value = json.dumps(fingerprint, sort_keys=True)
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is not None and row[0] != value:
            if not rebuild:
                raise CacheMismatch(
                    f"{self.path}: expert {expert!r} changed since its answers were cached "
                    f"(cached {row[0]}, now {value}); rerun with --rebuild to drop its answers"
                )
            self._db.execute("DELETE FROM answers WHERE expert = ?", (expert,))
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
        self._db.commit()

    # --- answers ------------------------------------------------------------------------------------------------
    def put_many(self, answers: Iterable[Answer], *, replace: bool = False) -> int:
        """Store answers; existing keys are kept unless ``replace``. Returns rows written."""
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        now = time.time()
        cur = self._db.executemany(
            f"{verb} INTO answers (expert, question, previous, answer, prompt_tokens, completion_tokens, "
            "finish_reason, source, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    a.expert,
                    a.question,
                    a.previous,
                    a.answer,
                    a.prompt_tokens,
                    a.completion_tokens,
                    a.finish_reason,
                    a.source,
                    now,
                )
                for a in answers
            ],
        )
        self._db.commit()
        return cur.rowcount

    def get(self, expert: str, question: str, previous: str) -> Answer | None:
        row = self._db.execute(
            "SELECT expert, question, previous, answer, prompt_tokens, completion_tokens, finish_reason, source "
            "FROM answers WHERE expert = ? AND question = ? AND previous = ?",
            (expert, question, previous),
        ).fetchone()
        return Answer(*row) if row else None

    def keys(self) -> set[Key]:
        return set(self._db.execute("SELECT expert, question, previous FROM answers"))

    def iter_answers(self, questions: Iterable[str] | None = None) -> Iterator[Answer]:
        sql = (
            "SELECT expert, question, previous, answer, prompt_tokens, completion_tokens, finish_reason, source "
            "FROM answers"
        )
        if questions is None:
            for row in self._db.execute(sql):
                yield Answer(*row)
            return
        wanted = set(questions)
        for row in self._db.execute(sql):
            if row[1] in wanted:
                yield Answer(*row)

    def table(self, questions: Iterable[str] | None = None, *, sources: Iterable[str] | None = None) -> dict[Key, str]:
        """Every answer (for ``questions``; from ``sources`` only, e.g. ``("collect",)`` to leave out the gateway's
        logged answers) as an in-memory lookup table; answers cut at ``max_tokens`` come back as ``Truncated``."""
        wanted = set(sources) if sources is not None else None
        return {
            (a.expert, a.question, a.previous): Truncated(a.answer) if a.finish_reason == "length" else a.answer
            for a in self.iter_answers(questions)
            if wanted is None or a.source in wanted
        }

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def stats(self) -> dict[str, int]:
        rows = self._db.execute("SELECT source, COUNT(*) FROM answers GROUP BY source").fetchall()
        return {str(k): int(v) for k, v in rows}


class MissingAnswer(KeyError):
    """A transition the cache does not hold: collect it first (``swarmgate router collect``)."""


class TableAnswers:
    """``answer_fn`` for the env over an in-memory table (from ``TrajectoryCache.table`` or a test's dict)."""

    def __init__(self, table: dict[Key, str]):
        self.table = table

    def __call__(self, expert: str, question: str, previous: str) -> str:
        try:
            return self.table[(expert, question, previous)]
        except KeyError:
            raise MissingAnswer(
                f"no cached answer of {expert!r} to {question!r} after {previous!r}; run `swarmgate router collect`"
            ) from None
