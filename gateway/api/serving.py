"""Chat and text completions: turn a validated request into executor runs, and their events into OpenAI responses.

Both endpoints share one path:
1. resolve the model to an executor (404), check the prompt against its context (400), fill in defaults;
2. take a concurrency slot (429 when the slot queue is full);
3. run one ``ExecRequest`` per (prompt, choice) concurrently (``n`` fans out here, seeds ``seed + i``);
4. non-streaming: collect, answer with ``usage`` and our ``swarmgate`` route field; streaming: wait for the first
   event (so early failures are still proper HTTP errors), then Server-Sent Events exactly as OpenAI sends them.
A client that disconnects cancels its executor runs, which abort their engine requests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from gateway.api.errors import sse_error_frame, to_gateway_error
from gateway.api.metrics import Metrics
from gateway.api.protocol import ChatCompletionRequest, CompletionRequest, new_id, now
from gateway.engines.base import Chunk, Prompt, PromptTooLong, SamplingParams, TokenLogprob
from gateway.errors import GatewayError, InvalidRequestError, ModelNotFoundError, NotReadyError, RateLimitError
from gateway.executors.base import ExecRequest, Executor, StepInfo, question_of
from gateway.runtime import RuntimeHolder
from gateway.settings import Settings

log = logging.getLogger(__name__)

Endpoint = Literal["chat", "completions"]
DEFAULT_MAX_TOKENS = 512  # when neither the client nor the model's context gives a limit


class ConcurrencyLimiter:
    """At most ``limit`` requests execute; at most ``queue`` wait; the rest get 429 at once."""

    def __init__(self, limit: int, queue: int, metrics: Metrics):
        self._sem = asyncio.Semaphore(limit)
        self._queue = queue
        self._waiting = 0
        self._metrics = metrics

    async def acquire(self) -> None:
        if self._sem.locked() and self._waiting >= self._queue:
            raise RateLimitError("The server is at its concurrency limit and its queue is full; retry shortly.")
        self._waiting += 1
        self._metrics.queued.set(self._waiting)
        try:
            await self._sem.acquire()
        finally:
            self._waiting -= 1
            self._metrics.queued.set(self._waiting)

    def release(self) -> None:
        self._sem.release()


class RequestLog:
    """Opt-in JSONL log of requests, routes and answers (the router's retraining data)."""

    def __init__(self, path: Path):
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = asyncio.Lock()

    async def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        async with self._lock:
            await asyncio.to_thread(self._append, line)

    def _append(self, line: str) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line)


@dataclass
class Choice:
    """What one executor run produced."""

    index: int
    text: str = ""
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] | None = None
    steps: list[StepInfo] = field(default_factory=list)

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
        self.request_log = RequestLog(settings.request_log) if settings.request_log else None

    # ------------------------------------------------------------------ entry points
    async def chat(self, body: ChatCompletionRequest, http: Request) -> Any:
        prompt: Prompt = [m.as_dict() for m in body.messages]
        return await self._serve("chat", body, [prompt], http, body.logprob_count())

    async def completions(self, body: CompletionRequest, http: Request) -> Any:
        return await self._serve("completions", body, list(body.prompts()), http, body.logprob_count())

    # ------------------------------------------------------------------ shared path
    def executor(self, model: str) -> Executor:
        rt = self.holder.runtime
        if rt is None:
            raise NotReadyError("The gateway is still loading its models.")
        ex = rt.executors.get(model)
        if ex is None:
            raise ModelNotFoundError(f"The model `{model}` does not exist.", param="model")
        return ex

    def _prepare(
        self,
        endpoint: Endpoint,
        body: ChatCompletionRequest | CompletionRequest,
        prompts: list[Prompt],
        logprobs: int | None,
    ) -> Job:
        executor = self.executor(body.model)
        prompt_param = "messages" if endpoint == "chat" else "prompt"
        limit = body.completion_limit()
        max_len = executor.max_model_len()
        max_tokens = limit
        for p in prompts:
            if isinstance(p, list) and not any(m.get("role") == "user" for m in p) and executor.kind != "expert":
                raise InvalidRequestError("ensembles need at least one user message", param="messages")
            counted = executor.count_prompt_tokens(p)
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
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            stop=body.stops(),
            seed=body.seed,
            logprobs=logprobs,
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
        prompt_param = "messages" if endpoint == "chat" else "prompt"
        try:
            job = self._prepare(endpoint, body, prompts, logprobs)
            await self.limiter.acquire()
        except BaseException as exc:
            err = to_gateway_error(exc, prompt_param=prompt_param)
            self._count(body.model, endpoint, err.status, t0)
            raise err from None
        self.metrics.in_flight.labels(job.model).inc()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.limiter.release()
                self.metrics.in_flight.labels(job.model).dec()

        try:
            if job.stream:
                response = await self._start_stream(job, t0, release, prompt_param)
                return response
            choices = await _cancel_on_disconnect(
                http, asyncio.wait_for(self._collect(job), timeout=self.settings.request_timeout_s)
            )
        except BaseException as exc:
            release()
            err = to_gateway_error(exc, prompt_param=prompt_param)
            self._count(job.model, endpoint, err.status, t0)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise err from None
        release()
        self._count(job.model, endpoint, 200, t0)
        for c in choices:
            self.metrics.observe_steps(job.model, c.steps)
        await self._log(job, choices, 200)
        payload = self._final_body(job, choices)
        return JSONResponse(payload, headers=_route_headers(choices))

    def _count(self, model: str, endpoint: Endpoint, status: int, t0: float) -> None:
        self.metrics.requests.labels(model, endpoint, str(status)).inc()
        self.metrics.latency.labels(model, endpoint).observe(time.perf_counter() - t0)

    async def _collect(self, job: Job) -> list[Choice]:
        async def one(index: int, run: ExecRequest) -> Choice:
            choice = Choice(index=index, logprobs=[] if job.want_logprobs else None)
            async for event in job.executor.stream(run):
                _apply(choice, event)
            return choice

        return list(await asyncio.gather(*(one(i, r) for i, r in enumerate(job.runs))))

    # ------------------------------------------------------------------ streaming
    async def _start_stream(self, job: Job, t0: float, release: Callable[[], None], prompt_param: str) -> Any:
        queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        DONE = object()

        async def pump(index: int, run: ExecRequest) -> None:
            try:
                async for event in job.executor.stream(run):
                    await queue.put((index, event))
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                await queue.put((index, exc))
            else:
                await queue.put((index, DONE))

        tasks = [asyncio.create_task(pump(i, r)) for i, r in enumerate(job.runs)]
        deadline = time.perf_counter() + self.settings.request_timeout_s

        async def next_item() -> tuple[int, Any]:
            remaining = deadline - time.perf_counter()
            return await asyncio.wait_for(queue.get(), timeout=max(remaining, 0.001))

        try:
            first = await next_item()
        except BaseException:
            for t in tasks:
                t.cancel()
            raise
        if isinstance(first[1], BaseException):
            for t in tasks:
                t.cancel()
            raise first[1]

        async def body() -> AsyncIterator[str]:
            choices = [Choice(index=i, logprobs=[] if job.want_logprobs else None) for i in range(len(job.runs))]
            started = [False] * len(job.runs)
            last_emit: list[float | None] = [None] * len(job.runs)
            open_runs = len(job.runs)
            status = 200
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
                            self.metrics.ttft.labels(job.model).observe(now_t - t0)
                        else:
                            self.metrics.itl.labels(job.model).observe(now_t - previous)
                        last_emit[index] = now_t
                        yield self._sse(job, self._chunk_choice(job, index, text=event.text, logprobs=event.logprobs))
                    if event.finish_reason is not None:
                        extra = None if job.include_usage else {"swarmgate": self._route_field(job, [choice])}
                        yield self._sse(job, self._chunk_choice(job, index, finish=event.finish_reason), extra=extra)
                if job.include_usage:
                    usage = _usage(choices)
                    yield self._sse(job, None, usage=usage, extra={"swarmgate": self._route_field(job, choices)})
                for c in choices:
                    self.metrics.observe_steps(job.model, c.steps)
                await self._log(job, choices, 200)
            except asyncio.CancelledError:
                status = 499  # client closed the stream
                raise
            except BaseException as exc:
                err = to_gateway_error(exc, prompt_param=prompt_param)
                status = err.status
                yield sse_error_frame(err)
            finally:
                for t in tasks:
                    t.cancel()
                release()
                self._count(job.model, job.endpoint, status, t0)
            yield "data: [DONE]\n\n"

        return StreamingResponse(
            body(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
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
        return f"data: {json.dumps(out, ensure_ascii=False)}\n\n"

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
                out_choices.append(
                    {
                        "index": c.index,
                        "message": {"role": "assistant", "content": c.text},
                        "logprobs": lp,
                        "finish_reason": c.finish_reason,
                    }
                )
            else:
                out_choices.append({"index": c.index, "text": c.text, "logprobs": lp, "finish_reason": c.finish_reason})
        return {
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
        if self.request_log is None:
            return
        first_prompt = job.prompts[0]
        record = {
            "ts": time.time(),
            "request_id": job.request_id,
            "model": job.model,
            "kind": job.executor.kind,
            "endpoint": job.endpoint,
            "question": question_of(first_prompt),
            "prompt": first_prompt,
            "choices": [{"index": c.index, "text": c.text, "finish_reason": c.finish_reason} for c in choices],
            "route": [[s.public() for s in c.steps] for c in choices],
            "usage": _usage(choices),
            "status": status,
        }
        try:
            await self.request_log.write(record)
        except OSError:
            log.exception("request log write failed (the request was served)")


def _apply(choice: Choice, event: Chunk | StepInfo) -> None:
    if isinstance(event, StepInfo):
        choice.steps.append(event)
        return
    choice.text += event.text
    if event.logprobs and choice.logprobs is not None:
        choice.logprobs.extend(event.logprobs)
    if event.finish_reason is not None:
        choice.finish_reason = event.finish_reason


def _usage(choices: list[Choice]) -> dict[str, int]:
    p = sum(s.prompt_tokens for c in choices for s in c.steps)
    c_ = sum(s.completion_tokens for c in choices for s in c.steps)
    return {"prompt_tokens": p, "completion_tokens": c_, "total_tokens": p + c_}


def _route_headers(choices: list[Choice]) -> dict[str, str]:
    if not choices:
        return {}
    c = choices[0]
    return {
        "x-swarmgate-route": ">".join(s.expert for s in c.steps),
        "x-swarmgate-cost": f"{sum(x.cost for x in choices):g}",
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


async def _cancel_on_disconnect(http: Request, work: Awaitable[Any]) -> Any:
    """Run ``work``; cancel it if the client goes away first (non-streaming requests)."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while not task.done():
            if await http.is_disconnected():
                task.cancel()
                return
            await asyncio.sleep(0.2)

    watcher = asyncio.create_task(watch())
    try:
        return await task
    finally:
        watcher.cancel()


__all__ = ["GatewayError", "OpenAIServing"]
