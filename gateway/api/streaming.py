"""Streaming: a job's events as OpenAI's chunks, sent as Server-Sent Events.

- ``RunEvents`` runs a job's executor runs concurrently and merges their events, in arrival order, through a bounded
  queue: a client that stops reading makes the runs wait, it doesn't grow the gateway's memory.
- ``chunk_frame`` / ``chunk_choice`` build the ``data: {...}`` frames exactly as OpenAI sends them (chat's ``delta``
  or the completions' ``text``); an intermediate step is reported as an SSE comment (``step_comment``).
- ``EventStreamResponse`` sends the frames and always ends cleanly: one ``on_end`` call whatever happens (the last
  frame sent, the client gone, or a client that read nothing for ``stream_idle_timeout_s``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.api.responses import Job, logprobs_payload
from gateway.engines.base import TokenLogprob
from gateway.executors.base import ExecRequest, StepInfo

log = logging.getLogger(__name__)

DONE = object()
"""The event a run's queue entry carries when that run has ended."""


class RunEvents:
    """A job's runs, started now; ``next()`` gives ``(run index, event)``: a ``Chunk`` or ``StepInfo``, the run's
    exception, or ``DONE`` when the run ended."""

    def __init__(self, job: Job, buffer: int, deadline: float):
        self.deadline = deadline  # perf_counter time past which no wait may last
        self._queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue(maxsize=buffer)
        self._tasks = [asyncio.create_task(self._pump(job, i, r)) for i, r in enumerate(job.runs)]

    async def _pump(self, job: Job, index: int, run: ExecRequest) -> None:
        try:
            async for event in job.executor.stream(run):
                await self._queue.put((index, event))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._queue.put((index, exc))
        else:
            await self._queue.put((index, DONE))

    async def next(self) -> tuple[int, Any]:
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that lands as an item
        # arrives, and a stream whose client left would then keep running
        async with asyncio.timeout(max(self.deadline - time.perf_counter(), 0.001)):
            return await self._queue.get()

    def cancel(self) -> None:
        """Cancel every run (which aborts its engine requests)."""
        for t in self._tasks:
            t.cancel()


def chunk_frame(
    job: Job, choice: dict[str, Any] | None, *, usage: dict[str, int] | None = None, extra: dict | None = None
) -> str:
    """One ``data:`` frame: a chunk with one choice (or none: the usage chunk)."""
    obj = "chat.completion.chunk" if job.endpoint == "chat" else "text_completion"
    out: dict[str, Any] = {
        "id": job.request_id,
        "object": obj,
        "created": job.created,
        "model": job.model,
        "choices": [choice] if choice is not None else [],
    }
    if job.include_usage:
        out["usage"] = usage
    if extra:
        out.update(extra)
    return f"data: {orjson.dumps(out).decode()}\n\n"


def chunk_choice(
    job: Job,
    index: int,
    *,
    role: bool = False,
    text: str = "",
    logprobs: list[TokenLogprob] | None = None,
    finish: str | None = None,
) -> dict[str, Any]:
    """A chunk's choice: the assistant role (chat's first chunk), a piece of text, or the finish reason."""
    lp = logprobs_payload(job.endpoint, logprobs) if (job.want_logprobs and logprobs) else None
    if job.endpoint == "chat":
        delta: dict[str, Any] = {}
        if role:
            delta = {"role": "assistant", "content": ""}
        elif finish is None:
            delta = {"content": text}
        return {"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}
    return {"index": index, "text": text, "logprobs": lp, "finish_reason": finish}


def tool_calls_choice(index: int, tool_calls: list[dict[str, Any]]) -> dict[str, Any]:
    """A chat chunk's choice carrying tool-call deltas."""
    return {"index": index, "delta": {"tool_calls": tool_calls}, "logprobs": None, "finish_reason": None}


def step_comment(index: int, step: StepInfo) -> str:
    """An intermediate step (an upstream DAG node, a chain step) as an SSE comment: clients skip it."""
    return f": swarmgate-step {json.dumps({'index': index, **step.public()})}\n\n"


class EventStreamResponse(Response):
    """Server-Sent Events that always end cleanly: one ``on_end`` call, whatever happens.

    ``on_end(None)`` after the last frame was sent; ``on_end(reason)`` when the client disconnected, the server's
    ``send`` failed (ASGI 2.4 servers raise ``OSError``), or the client read nothing for ``idle_timeout_s`` (its
    socket buffer stayed full). The frames' generator is closed in every case.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        frames: AsyncIterator[str],
        *,
        on_end: Callable[[str | None], None],
        idle_timeout_s: float,
        deadline: float,
    ):
        self.frames = frames
        self.on_end = on_end
        self.idle_timeout_s = idle_timeout_s
        self.deadline = deadline  # perf_counter time past which no send may wait
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        reason: str | None = "the stream was cancelled"
        sender = asyncio.ensure_future(self._send_all(send))
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            done, _ = await asyncio.wait({sender, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if sender in done:
                sender.result()
                reason = None
            else:
                reason = "client disconnected"
        except _SendStalled:
            reason = f"client read nothing for {self.idle_timeout_s:g} s"
        except OSError:
            reason = "client disconnected (send failed)"
        except Exception as exc:
            reason = f"stream failed: {type(exc).__name__}"
            log.exception("event stream failed")
        finally:
            watcher.cancel()
            sender.cancel()
            try:
                self.on_end(reason)  # slot, gauge, runs: released now, whatever the sender does next
            finally:
                for _ in range(100):  # a cancellation can be swallowed by library code: insist, boundedly
                    if sender.done():
                        break
                    sender.cancel()
                    await asyncio.wait({sender}, timeout=0.05)
                await asyncio.gather(watcher, return_exceptions=True)
                aclose = getattr(self.frames, "aclose", None)
                if sender.done() and aclose is not None:
                    try:
                        await aclose()
                    except Exception:  # pragma: no cover - closing must not hide the outcome
                        log.exception("closing the event stream")

    async def _send_all(self, send: Send) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(None) as budget:  # armed only while a send waits for the client

                async def timed(message: Any) -> None:
                    room = min(self.idle_timeout_s, self.deadline - time.perf_counter())
                    budget.reschedule(loop.time() + max(room, 0.001))
                    await send(message)
                    budget.reschedule(None)

                await timed({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                async for frame in self.frames:
                    await timed({"type": "http.response.body", "body": frame.encode("utf-8"), "more_body": True})
                await timed({"type": "http.response.body", "body": b"", "more_body": False})
        except TimeoutError:
            raise _SendStalled from None


class _SendStalled(Exception):
    """The client stopped reading (a send waited past the idle timeout)."""


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
