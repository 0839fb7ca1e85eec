"""Chat and text completions: turn a validated request into executor runs, and their events into OpenAI responses.

Both endpoints share one path:
1. pin the serving runtime (a reload meanwhile doesn't touch this request's executors), resolve the model (404),
   check the request against the configured limits and the prompt against the model's context (400);
2. take a concurrency slot (429 when the queue is full, 503 past ``queue_timeout_s``; queue time counts toward the
   request timeout; a queued client that leaves is dropped);
3. run one ``ExecRequest`` per (prompt, choice) concurrently (``n`` fans out here, seeds ``seed + i``);
4. non-streaming: collect, answer with ``usage`` and our ``swarmgate`` route field; streaming: wait for the first
   event (so early failures are still proper HTTP errors), then Server-Sent Events exactly as OpenAI sends them.

Every request ends in exactly one outcome, counted once: its status, or 499 when the client went away (disconnect,
or a streaming client that read nothing for ``stream_idle_timeout_s``). Whatever the ending, the slot, the in-flight
gauge and the runtime pin are released once, and the executor runs are cancelled (which aborts engine requests).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
from fastapi import Request
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.api.errors import sse_error_frame, to_gateway_error
from gateway.api.metrics import UNKNOWN_MODEL, Metrics
from gateway.api.protocol import ChatCompletionRequest, CompletionRequest, new_id, now
from gateway.engines.base import Chunk, Prompt, PromptTooLong, SamplingParams, TokenLogprob, merge_tool_calls
from gateway.errors import GatewayError, InvalidRequestError, ModelNotFoundError, NotReadyError, RateLimitError
from gateway.executors.base import ExecRequest, Executor, StepInfo, question_of
from gateway.runtime import Runtime, RuntimeHolder
from gateway.settings import Settings

log = logging.getLogger(__name__)

Endpoint = Literal["chat", "completions"]
DEFAULT_MAX_TOKENS = 512  # when neither the client nor the model's context gives a limit
CLIENT_CLOSED = 499  # nginx's "client closed request": its own outcome, never a 5xx
INLINE_TOKENIZE_CHARS = 4096  # prompts up to this size are counted on the event loop; longer ones in a thread


class ClientDisconnected(Exception):
    """The client went away before its answer was sent (counted as 499)."""


class QueueTimeout(GatewayError):
    """No concurrency slot freed up within ``queue_timeout_s`` (503: retry, ideally elsewhere)."""

    status = 503
    type = "service_unavailable"
    code = "queue_timeout"


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


class RequestLog:
    """Opt-in JSONL log of requests, routes and answers (the router's retraining data).

    It holds prompts and answers, so the file is created owner-only (0600) and rotated by size (``path.1`` ...
    ``path.N``); lines are UTF-8 with any lone surrogate replaced, so a strange string never fails a served request.
    """

    def __init__(self, path: Path, *, max_bytes: int = 0, backups: int = 5):
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = asyncio.Lock()

    async def write(self, records: list[dict[str, Any]]) -> None:
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


@dataclass
class Choice:
    """What one executor run produced."""

    index: int
    text: str = ""
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] | None = None
    steps: list[StepInfo] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] | None = None
    prompt_logprobs: list[dict[str, Any] | None] | None = None

    @property
    def cost(self) -> float:
        return sum(s.cost for s in self.steps)


@dataclass
class Job:
    """One validated request, ready to run."""

    endpoint: Endpoint
    model: str
    executor: Executor
    runs: list[ExecRequest]
    stream: bool
    include_usage: bool
    want_logprobs: bool
    request_id: str
    created: int
    prompts: list[Prompt]
    n: int


class OpenAIServing:
    def __init__(self, settings: Settings, holder: RuntimeHolder, metrics: Metrics):
        self.settings = settings
        self.holder = holder
        self.metrics = metrics
        self.limiter = ConcurrencyLimiter(settings.max_concurrency, settings.max_queue, metrics)
        self.request_log = (
            RequestLog(
                settings.request_log,
                max_bytes=settings.request_log_max_bytes,
                backups=settings.request_log_backups,
            )
            if settings.request_log
            else None
        )
        self.active = 0
        """Requests admitted and not yet finished (queued, running or streaming): what a drain waits for."""
        self._idle = asyncio.Event()
        self._idle.set()

    # ------------------------------------------------------------------ entry points
    async def chat(self, body: ChatCompletionRequest, http: Request) -> Any:
        prompt: Prompt = [m.as_dict() for m in body.messages]
        return await self._serve("chat", body, [prompt], http, body.logprob_count())

    async def completions(self, body: CompletionRequest, http: Request) -> Any:
        return await self._serve("completions", body, list(body.prompts()), http, body.logprob_count())

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in progress (a drain); False when ``timeout`` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=max(timeout, 0.001))
        except TimeoutError:
            return False
        return True

    # ------------------------------------------------------------------ shared path
    def executor(self, model: str, rt: Runtime | None = None) -> Executor:
        rt = rt or self.holder.runtime
        if rt is None:
            raise NotReadyError("The gateway is still loading its models.")
        ex = rt.executors.get(model)
        if ex is None:
            raise ModelNotFoundError(f"The model `{model}` does not exist.", param="model")
        return ex

    def model_label(self, model: str, rt: Runtime | None = None) -> str:
        """The metrics label for a requested model: its name when the spec serves it, else a fixed placeholder."""
        rt = rt or self.holder.runtime
        return model if rt is not None and model in rt.executors else UNKNOWN_MODEL

    def _check_limits(
        self, endpoint: Endpoint, body: ChatCompletionRequest | CompletionRequest, prompts: list[Prompt]
    ) -> None:
        """The configured request limits, and text Python can't encode (a lone surrogate is the client's mistake)."""
        s = self.settings
        param = "messages" if endpoint == "chat" else "prompt"
        if endpoint == "chat" and len(prompts[0]) > s.max_messages:
            raise InvalidRequestError(f"at most {s.max_messages} messages per request", param="messages")
        if len(prompts) * body.n > s.max_prompts_times_n:
            raise InvalidRequestError(
                f"prompts x n = {len(prompts)} x {body.n} exceeds this server's limit of {s.max_prompts_times_n} "
                "sequences per request; split the request",
                param="n" if len(prompts) == 1 else "prompt",
            )
        texts = [t for p in prompts for t in _prompt_texts(p)]
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

    async def _prepare(
        self,
        rt: Runtime,
        endpoint: Endpoint,
        body: ChatCompletionRequest | CompletionRequest,
        prompts: list[Prompt],
        logprobs: int | None,
    ) -> Job:
        executor = self.executor(body.model, rt)
        self._check_limits(endpoint, body, prompts)
        prompt_param = "messages" if endpoint == "chat" else "prompt"
        limit = body.completion_limit()
        max_len = executor.max_model_len()
        max_tokens = limit
        for p in prompts:
            is_user = (isinstance(m, dict) and m.get("role") == "user" for m in p)
            if isinstance(p, list) and not any(is_user) and executor.kind != "expert":
                raise InvalidRequestError("ensembles need at least one user message", param="messages")
        size = sum(len(t) for p in prompts for t in _prompt_texts(p))
        if size > INLINE_TOKENIZE_CHARS:  # a long prompt's tokenization would stall every other request
            counts = await asyncio.to_thread(lambda: [executor.count_prompt_tokens(p) for p in prompts])
        else:
            counts = [executor.count_prompt_tokens(p) for p in prompts]
        for counted in counts:
            if counted is None or max_len is None:
                continue
            if counted >= max_len or (limit is not None and counted + limit > max_len):
                err = PromptTooLong(counted, limit or 1, max_len)
                raise InvalidRequestError(str(err), param=prompt_param, code="context_length_exceeded")
            if limit is None:
                room = max_len - counted
                max_tokens = room if max_tokens is None else min(max_tokens, room)
        if max_tokens is None:
            max_tokens = DEFAULT_MAX_TOKENS
        params = SamplingParams(
            max_tokens=max_tokens,
            fit_context=limit is None,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            stop=body.stops(),
            seed=body.seed,
            logprobs=logprobs,
            **body.engine_fields(),  # sampling extensions, response_format, tools, final-only for non-streaming
        )
        request_id = new_id("chatcmpl" if endpoint == "chat" else "cmpl")
        runs: list[ExecRequest] = []
        for p in prompts:
            for i in range(body.n):
                seed = None if body.seed is None else (body.seed + i) % (2**63)
                runs.append(
                    ExecRequest(
                        prompt=p,
                        params=SamplingParams(**{**params.__dict__, "seed": seed}),
                        request_id=f"{request_id}-{len(runs)}",
                        extra=body.extras(),
                    )
                )
        return Job(
            endpoint=endpoint,
            model=body.model,
            executor=executor,
            runs=runs,
            stream=body.stream,
            include_usage=bool(body.stream_options and body.stream_options.include_usage),
            want_logprobs=logprobs is not None,
            request_id=request_id,
            created=now(),
            prompts=prompts,
            n=body.n,
        )

    async def _serve(
        self,
        endpoint: Endpoint,
        body: ChatCompletionRequest | CompletionRequest,
        prompts: list[Prompt],
        http: Request,
        logprobs: int | None,
    ) -> Any:
        t0 = time.perf_counter()
        deadline = t0 + self.settings.request_timeout_s
        prompt_param = "messages" if endpoint == "chat" else "prompt"
        rt = self.holder.acquire()  # this request's runtime: a reload meanwhile doesn't touch its executors
        if rt is None:
            not_ready = NotReadyError("The gateway is still loading its models.")
            self._count(UNKNOWN_MODEL, endpoint, not_ready.status, t0)
            raise not_ready
        label = self.model_label(body.model, rt)
        self._enter()
        try:
            job = await self._prepare(rt, endpoint, body, prompts, logprobs)
            queue_wait = min(self.settings.queue_timeout_s, deadline - time.perf_counter())
            await _until_disconnect(http, self.limiter.acquire(queue_wait))
        except BaseException as exc:
            rt.exit()
            self._leave()
            if isinstance(exc, ClientDisconnected | asyncio.CancelledError):
                self._count(label, endpoint, CLIENT_CLOSED, t0)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return Response(status_code=CLIENT_CLOSED)
            err = to_gateway_error(exc, prompt_param=prompt_param)
            self._count(label, endpoint, err.status, t0)
            raise err from None
        self.metrics.in_flight.labels(label).inc()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.limiter.release()
                self.metrics.in_flight.labels(label).dec()
                rt.exit()
                self._leave()

        try:
            if job.stream:
                return await self._start_stream(job, label, t0, deadline, release, prompt_param, http)
            remaining = deadline - time.perf_counter()
            choices = await _until_disconnect(http, asyncio.wait_for(self._collect(job), timeout=max(remaining, 0.001)))
        except BaseException as exc:
            release()
            if isinstance(exc, ClientDisconnected | asyncio.CancelledError):
                log.info("%s: client went away; its engine work was cancelled", job.request_id)
                self._count(label, endpoint, CLIENT_CLOSED, t0)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return Response(status_code=CLIENT_CLOSED)
            err = to_gateway_error(exc, prompt_param=prompt_param)
            self._count(label, endpoint, err.status, t0)
            raise err from None
        release()
        self._count(label, endpoint, 200, t0)
        for c in choices:
            self.metrics.observe_steps(label, c.steps)
        await self._log(job, choices, 200)
        payload = self._final_body(job, choices)
        return Response(orjson.dumps(payload), media_type="application/json", headers=_route_headers(choices, t0))

    def _enter(self) -> None:
        self.active += 1
        self._idle.clear()

    def _leave(self) -> None:
        self.active -= 1
        if self.active <= 0:
            self._idle.set()

    def _count(self, label: str, endpoint: Endpoint, status: int, t0: float) -> None:
        self.metrics.requests.labels(label, endpoint, str(status)).inc()
        self.metrics.latency.labels(label, endpoint).observe(time.perf_counter() - t0)

    async def _collect(self, job: Job) -> list[Choice]:
        async def one(index: int, run: ExecRequest) -> Choice:
            choice = Choice(index=index, logprobs=[] if job.want_logprobs else None)
            async for event in job.executor.stream(run):
                _apply(choice, event)
            return choice

        return list(await asyncio.gather(*(one(i, r) for i, r in enumerate(job.runs))))

    # ------------------------------------------------------------------ streaming
    async def _start_stream(
        self,
        job: Job,
        label: str,
        t0: float,
        deadline: float,
        release: Callable[[], None],
        prompt_param: str,
        http: Request,
    ) -> Any:
        # bounded: a client that stops reading makes the runs wait here, it doesn't grow the gateway's memory
        queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue(maxsize=self.settings.stream_buffer_events)
        DONE = object()

        async def pump(index: int, run: ExecRequest) -> None:
            try:
                async for event in job.executor.stream(run):
                    await queue.put((index, event))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await queue.put((index, exc))
            else:
                await queue.put((index, DONE))

        tasks = [asyncio.create_task(pump(i, r)) for i, r in enumerate(job.runs)]

        def cancel_runs() -> None:
            for t in tasks:
                t.cancel()

        async def next_item() -> tuple[int, Any]:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that lands as an item
            # arrives, and a stream whose client left would then keep running
            async with asyncio.timeout(max(deadline - time.perf_counter(), 0.001)):
                return await queue.get()

        try:
            first = await _until_disconnect(http, next_item())
        except BaseException:
            cancel_runs()
            raise
        if isinstance(first[1], BaseException):
            cancel_runs()
            raise first[1]
        outcome = {"status": 200}

        async def body() -> AsyncIterator[str]:
            choices = [Choice(index=i, logprobs=[] if job.want_logprobs else None) for i in range(len(job.runs))]
            started = [False] * len(job.runs)
            last_emit: list[float | None] = [None] * len(job.runs)
            open_runs = len(job.runs)
            item: tuple[int, Any] | None = first
            try:
                while open_runs:
                    if item is None:
                        item = await next_item()
                    index, event = item
                    item = None
                    if event is DONE:
                        open_runs -= 1
                        continue
                    if isinstance(event, BaseException):
                        raise event
                    choice = choices[index]
                    if isinstance(event, StepInfo):
                        choice.steps.append(event)
                        if event.output is not None:  # an intermediate step: report progress as an SSE comment
                            yield f": swarmgate-step {json.dumps({'index': index, **event.public()})}\n\n"
                        continue
                    _apply(choice, event)
                    if not started[index]:
                        started[index] = True
                        yield self._sse(job, self._chunk_choice(job, index, role=True))
                    now_t = time.perf_counter()
                    if event.text or event.logprobs:
                        previous = last_emit[index]
                        if previous is None:
                            self.metrics.ttft.labels(label).observe(now_t - t0)
                        else:
                            self.metrics.itl.labels(label).observe(now_t - previous)
                        last_emit[index] = now_t
                        yield self._sse(job, self._chunk_choice(job, index, text=event.text, logprobs=event.logprobs))
                    if event.tool_calls and job.endpoint == "chat":
                        delta = {"tool_calls": event.tool_calls}
                        yield self._sse(job, {"index": index, "delta": delta, "logprobs": None, "finish_reason": None})
                    if event.finish_reason is not None:
                        extra = None if job.include_usage else {"swarmgate": self._route_field(job, [choice])}
                        yield self._sse(job, self._chunk_choice(job, index, finish=event.finish_reason), extra=extra)
                if job.include_usage:
                    usage = _usage(choices)
                    yield self._sse(job, None, usage=usage, extra={"swarmgate": self._route_field(job, choices)})
                for c in choices:
                    self.metrics.observe_steps(label, c.steps)
                await self._log(job, choices, 200)
            except Exception as exc:  # not GeneratorExit / CancelledError: closing the stream is not an error
                err = to_gateway_error(exc, prompt_param=prompt_param)
                outcome["status"] = err.status
                yield sse_error_frame(err)
            yield "data: [DONE]\n\n"

        def finish(reason: str | None) -> None:
            cancel_runs()
            release()
            status = CLIENT_CLOSED if reason is not None else outcome["status"]
            if reason is not None:
                log.info("%s: %s; its engine work was cancelled", job.request_id, reason)
            self._count(label, job.endpoint, status, t0)

        return EventStreamResponse(
            body(),
            on_end=finish,
            idle_timeout_s=self.settings.stream_idle_timeout_s,
            deadline=deadline,
        )

    def _sse(
        self, job: Job, choice: dict[str, Any] | None, *, usage: dict[str, int] | None = None, extra: dict | None = None
    ) -> str:
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

    def _chunk_choice(
        self,
        job: Job,
        index: int,
        *,
        role: bool = False,
        text: str = "",
        logprobs: list[TokenLogprob] | None = None,
        finish: str | None = None,
    ) -> dict[str, Any]:
        lp = _logprobs_payload(job.endpoint, logprobs) if (job.want_logprobs and logprobs) else None
        if job.endpoint == "chat":
            delta: dict[str, Any] = {}
            if role:
                delta = {"role": "assistant", "content": ""}
            elif finish is None:
                delta = {"content": text}
            return {"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}
        return {"index": index, "text": text, "logprobs": lp, "finish_reason": finish}

    # ------------------------------------------------------------------ final bodies
    def _final_body(self, job: Job, choices: list[Choice]) -> dict[str, Any]:
        out_choices: list[dict[str, Any]] = []
        for c in choices:
            lp = _logprobs_payload(job.endpoint, c.logprobs) if job.want_logprobs else None
            if job.endpoint == "chat":
                message: dict[str, Any] = {"role": "assistant", "content": c.text}
                if c.tool_calls:
                    message["content"] = c.text or None
                    message["tool_calls"] = [{k: v for k, v in t.items() if k != "index"} for t in c.tool_calls]
                out_choices.append(
                    {"index": c.index, "message": message, "logprobs": lp, "finish_reason": c.finish_reason}
                )
            else:
                out_choices.append({"index": c.index, "text": c.text, "logprobs": lp, "finish_reason": c.finish_reason})
                if c.prompt_logprobs is not None:
                    out_choices[-1]["prompt_logprobs"] = c.prompt_logprobs
        extra: dict[str, Any] = {}
        if job.endpoint == "chat" and choices and choices[0].prompt_logprobs is not None:
            extra["prompt_logprobs"] = choices[0].prompt_logprobs  # vLLM's chat response has it at the top level
        return {
            **extra,
            "id": job.request_id,
            "object": "chat.completion" if job.endpoint == "chat" else "text_completion",
            "created": job.created,
            "model": job.model,
            "choices": out_choices,
            "usage": _usage(choices),
            "swarmgate": self._route_field(job, choices),
        }

    def _route_field(self, job: Job, choices: list[Choice]) -> dict[str, Any]:
        return {
            "kind": job.executor.kind,
            "cost": round(sum(c.cost for c in choices), 6),
            "choices": [
                {"index": c.index, "cost": round(c.cost, 6), "route": [s.public() for s in c.steps]} for c in choices
            ],
        }

    async def _log(self, job: Job, choices: list[Choice], status: int) -> None:
        """One record per prompt, with that prompt's choices and routes (``index``: position in the record)."""
        if self.request_log is None:
            return
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
                    "usage": _usage(mine),
                    "status": status,
                }
            )
        try:
            await self.request_log.write(records)
        except Exception:  # the answer was served; a log problem must not turn it into an error
            log.exception("request log write failed (the request was served)")


def _prompt_texts(prompt: Any) -> list[str]:
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


def _apply(choice: Choice, event: Chunk | StepInfo) -> None:
    if isinstance(event, StepInfo):
        choice.steps.append(event)
        return
    choice.text += event.text
    if event.logprobs and choice.logprobs is not None:
        choice.logprobs.extend(event.logprobs)
    if event.tool_calls:
        if choice.tool_calls is None:
            choice.tool_calls = []
        merge_tool_calls(choice.tool_calls, event.tool_calls)
    if event.prompt_logprobs is not None:
        choice.prompt_logprobs = event.prompt_logprobs
    if event.finish_reason is not None:
        choice.finish_reason = event.finish_reason


def _usage(choices: list[Choice]) -> dict[str, int]:
    p = sum(s.prompt_tokens for c in choices for s in c.steps)
    c_ = sum(s.completion_tokens for c in choices for s in c.steps)
    return {"prompt_tokens": p, "completion_tokens": c_, "total_tokens": p + c_}


def _route_headers(choices: list[Choice], t0: float) -> dict[str, str]:
    """Route, cost, and ``x-swarmgate-overhead-ms``: the gateway's own time on this request (from the handler's
    start to the body being built) minus the engine time on the longest choice's route (its steps' summed latency;
    a DAG's concurrent nodes are counted in full, so its overhead is understated, never overstated)."""
    if not choices:
        return {}
    c = choices[0]
    wall_ms = (time.perf_counter() - t0) * 1e3
    engine_ms = max(sum(s.latency_ms for s in x.steps) for x in choices)
    return {
        "x-swarmgate-route": ">".join(s.expert for s in c.steps),
        "x-swarmgate-cost": f"{sum(x.cost for x in choices):g}",
        "x-swarmgate-overhead-ms": f"{max(wall_ms - engine_ms, 0.0):.3f}",
    }


def _bytes(token: str) -> list[int]:
    return list(token.encode("utf-8"))


def _logprobs_payload(endpoint: Endpoint, lps: list[TokenLogprob] | None) -> dict[str, Any] | None:
    if lps is None:
        return None
    if endpoint == "chat":
        return {
            "content": [
                {
                    "token": t.token,
                    "logprob": t.logprob,
                    "bytes": _bytes(t.token),
                    "top_logprobs": [{"token": a, "logprob": b, "bytes": _bytes(a)} for a, b in t.top],
                }
                for t in lps
            ]
        }
    offsets, pos = [], 0
    for t in lps:
        offsets.append(pos)
        pos += len(t.token)
    return {
        "tokens": [t.token for t in lps],
        "token_logprobs": [t.logprob for t in lps],
        "top_logprobs": [dict(t.top) for t in lps],
        "text_offset": offsets,
    }


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


async def _until_disconnect(http: Request, work: Awaitable[Any]) -> Any:
    """Run ``work``; cancel it and raise ClientDisconnected if the client goes away first."""
    task = asyncio.ensure_future(work)
    gone = False

    async def watch() -> None:
        nonlocal gone
        while not task.done():
            if await http.is_disconnected():
                gone = True
                task.cancel()
                return
            await asyncio.sleep(0.1)

    watcher = asyncio.create_task(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if gone:
            raise ClientDisconnected() from None
        raise
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


__all__ = ["ClientDisconnected", "EventStreamResponse", "GatewayError", "OpenAIServing"]
