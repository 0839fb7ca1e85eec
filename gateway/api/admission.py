"""Admission: whether a request may run, and when.

Before any work, a request is checked against the configured limits (``check_limits``: messages, prompts x n,
prompt characters, stop sequences, text Python can't encode; each a 400 naming the field). Then it takes one of
``max_concurrency`` slots (``ConcurrencyLimiter``): at most ``max_queue`` requests wait for one, each at most
``queue_timeout_s`` (503 ``queue_timeout``); past a full queue a request gets 429 at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.api.metrics import Metrics
from gateway.api.protocol import ChatCompletionRequest, CompletionRequest
from gateway.api.responses import Endpoint
from gateway.engines.base import Prompt
from gateway.errors import InvalidRequestError, QueueTimeout, RateLimitError
from gateway.settings import Settings


class ConcurrencyLimiter:
    """At most ``limit`` requests execute; at most ``queue`` wait (each at most ``timeout``); the rest get 429."""

    def __init__(self, limit: int, queue: int, metrics: Metrics):
        self._sem = asyncio.Semaphore(limit)
        self._queue = queue
        self._waiting = 0
        self._metrics = metrics
        self.in_use = 0
        """Slots held right now (0 when idle: every path releases what it took)."""

    async def acquire(self, timeout: float) -> None:
        if self._sem.locked() and self._waiting >= self._queue:
            raise RateLimitError("The server is at its concurrency limit and its queue is full; retry shortly.")
        self._waiting += 1
        self._metrics.queued.set(self._waiting)
        try:
            await asyncio.wait_for(self._sem.acquire(), timeout=max(timeout, 0.001))
        except TimeoutError:
            raise QueueTimeout("No capacity freed up in time (queued too long); retry shortly.") from None
        finally:
            self._waiting -= 1
            self._metrics.queued.set(self._waiting)
        self.in_use += 1

    def release(self) -> None:
        self.in_use -= 1
        self._sem.release()


def check_limits(
    settings: Settings, endpoint: Endpoint, body: ChatCompletionRequest | CompletionRequest, prompts: list[Prompt]
) -> None:
    """The configured request limits, and text Python can't encode (a lone surrogate is the client's mistake)."""
    s = settings
    param = "messages" if endpoint == "chat" else "prompt"
    if endpoint == "chat" and len(prompts[0]) > s.max_messages:
        raise InvalidRequestError(f"at most {s.max_messages} messages per request", param="messages")
    if len(prompts) * body.n > s.max_prompts_times_n:
        raise InvalidRequestError(
            f"prompts x n = {len(prompts)} x {body.n} exceeds this server's limit of {s.max_prompts_times_n} "
            "sequences per request; split the request",
            param="n" if len(prompts) == 1 else "prompt",
        )
    texts = [t for p in prompts for t in prompt_texts(p)]
    chars = sum(len(t) for t in texts)
    if chars > s.max_prompt_chars:
        raise InvalidRequestError(
            f"the prompt has {chars} characters; this server accepts at most {s.max_prompt_chars}", param=param
        )
    stops = body.stops()
    if len(stops) > s.max_stop_sequences:
        raise InvalidRequestError(f"at most {s.max_stop_sequences} stop sequences", param="stop")
    if any(len(x) > s.max_stop_chars for x in stops):
        raise InvalidRequestError(f"stop sequences must be at most {s.max_stop_chars} characters", param="stop")
    for what, values in ((param, texts), ("stop", list(stops))):
        for t in values:
            try:
                t.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidRequestError(
                    "the text contains a lone surrogate (invalid Unicode); send valid UTF-8", param=what
                ) from None


def prompt_texts(prompt: Any) -> list[str]:
    """The client-supplied text of one prompt: the string, or every message's content (other shapes: none)."""
    if isinstance(prompt, str):
        return [prompt]
    if not isinstance(prompt, list):
        return []
    out = []
    for m in prompt:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            out.append(content)
    return out
