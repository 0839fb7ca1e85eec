"""The request log: an opt-in JSONL file of served requests, their routes and answers, and feedback on them.

It is the router's retraining data (``swarmgate router retrain --log FILE``). Its whole interface is three calls:
``record`` (one line per prompt of a served request), ``record_feedback`` (one ``{"type": "feedback", ...}`` line next
to the request it is about) and ``lookup`` (is a request id in the log, and which model served it).

The file holds prompts and answers, so it is created owner-only (0600) and rotated by size (``path.1`` ... ``path.N``);
lines are UTF-8 with any lone surrogate replaced, so a strange string never fails a served request.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from gateway.api.responses import Choice, Job, usage
from gateway.executors.base import question_of


class RequestLog:
    """The JSONL request log at ``path`` (see the module docstring)."""

    def __init__(self, path: Path, *, max_bytes: int = 0, backups: int = 5):
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = asyncio.Lock()
        self._index = _RequestIndex(path)

    async def record(self, job: Job, choices: list[Choice], status: int) -> None:
        """One record per prompt, with that prompt's choices and routes (``index``: position in the record)."""
        records = []
        for p_index, prompt in enumerate(job.prompts):
            mine = [c for c in choices if c.index // job.n == p_index]
            records.append(
                {
                    "ts": time.time(),
                    "request_id": job.request_id,
                    "model": job.model,
                    "kind": job.executor.kind,
                    "endpoint": job.endpoint,
                    "prompt_index": p_index,
                    "question": question_of(prompt),
                    "prompt": prompt,
                    "choices": [
                        {"index": i, "choice_index": c.index, "text": c.text, "finish_reason": c.finish_reason}
                        for i, c in enumerate(mine)
                    ],
                    "route": [[s.public() for s in c.steps] for c in mine],
                    "usage": usage(mine),
                    "status": status,
                }
            )
        await self._write(records)

    async def record_feedback(
        self, request_id: str, model: str | None, score: float | None, answer: str | None
    ) -> None:
        """A user's score and/or corrected answer for a logged request."""
        record: dict[str, Any] = {
            "type": "feedback",
            "ts": time.time(),
            "request_id": request_id,
            "model": model,
            "score": score,
            "answer": answer,
        }
        await self._write([record])

    async def lookup(self, request_id: str) -> tuple[bool, str | None]:
        """Whether ``request_id`` is a logged request, and the model that served it."""
        return await self._index.lookup(request_id)

    async def _write(self, records: list[dict[str, Any]]) -> None:
        data = b"".join((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8", errors="replace") for r in records)
        async with self._lock:
            await asyncio.to_thread(self._append, data)

    def _append(self, data: bytes) -> None:
        if self.max_bytes and self.path.exists() and self.path.stat().st_size + len(data) > self.max_bytes:
            self._rotate()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.fchmod(fd, 0o600)  # a file created before (or by another umask) is tightened too
            os.write(fd, data)
        finally:
            os.close(fd)

    def _rotate(self) -> None:
        if self.backups <= 0:
            self.path.unlink(missing_ok=True)
            return
        for i in range(self.backups - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                src.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))


class _RequestIndex:
    """Request ids in the log, read incrementally (new bytes only) as feedback arrives."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.models: dict[str, str | None] = {}
        self.lock = asyncio.Lock()

    def _scan(self) -> None:
        if not self.path.is_file():
            return
        if self.path.stat().st_size < self.offset:  # rotated: a new file
            self.offset = 0
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        for line in data[:end].splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("type") != "feedback" and isinstance(rec.get("request_id"), str):
                self.models[rec["request_id"]] = rec.get("model")
        self.offset += end

    async def lookup(self, request_id: str) -> tuple[bool, str | None]:
        async with self.lock:
            if request_id not in self.models:
                await asyncio.to_thread(self._scan)
            return request_id in self.models, self.models.get(request_id)
