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

The rooms around this path: ``admission`` (limits and the concurrency limiter), ``responses`` (the job, its choices
and the OpenAI bodies), ``streaming`` (chunks and the SSE response), ``requestlog`` (what is kept of each request).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from gateway.api.admission import ConcurrencyLimiter, check_limits, prompt_texts
from gateway.api.errors import sse_error_frame, to_gateway_error
from gateway.api.metrics import UNKNOWN_MODEL, Metrics
from gateway.api.protocol import ChatCompletionRequest, CompletionRequest, new_id, now
from gateway.api.requestlog import RequestLog
from gateway.api.responses import Choice, Endpoint, Job, apply, final_body, route_field, route_headers, usage
from gateway.api.streaming import (
    DONE,
    EventStreamResponse,
    RunEvents,
    chunk_choice,
    chunk_frame,
    step_comment,
    tool_calls_choice,
)
from gateway.engines.base import Prompt, PromptTooLong, SamplingParams
from gateway.errors import InvalidRequestError, ModelNotFoundError, NotReadyError
from gateway.executors.base import ExecRequest, Executor, StepInfo
from gateway.runtime import Runtime, RuntimeHolder
from gateway.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 512  # when neither the client nor the model's context gives a limit
CLIENT_CLOSED = 499  # nginx's "client closed request": its own outcome, never a 5xx
INLINE_TOKENIZE_CHARS = 4096  # prompts up to this size are counted on the event loop; longer ones in a thread


class ClientDisconnected(Exception):
    """The client went away before its answer was sent (counted as 499)."""


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

    async def _prepare(
        self,
        rt: Runtime,
        endpoint: Endpoint,
        body: ChatCompletionRequest | CompletionRequest,
        prompts: list[Prompt],
        logprobs: int | None,
    ) -> Job:
        executor = self.executor(body.model, rt)
        check_limits(self.settings, endpoint, body, prompts)
        prompt_param = "messages" if endpoint == "chat" else "prompt"
        limit = body.completion_limit()
        max_len = executor.max_model_len()
        for p in prompts:
            is_user = (isinstance(m, dict) and m.get("role") == "user" for m in p)
            if isinstance(p, list) and not any(is_user) and executor.kind != "expert":
                raise InvalidRequestError("ensembles need at least one user message", param="messages")
        max_tokens = await _max_tokens(executor, prompts, limit, max_len, prompt_param)
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
        return Job(
            endpoint=endpoint,
            model=body.model,
            executor=executor,
            runs=_runs(body, prompts, params, request_id),
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
            return self._failed(exc, label, endpoint, prompt_param, t0)
        self.metrics.in_flight.labels(label).inc()
        release = self._release_once(rt, label)
        try:
            if job.stream:
                return await self._start_stream(job, label, t0, deadline, release, prompt_param, http)
            remaining = deadline - time.perf_counter()
            choices = await _until_disconnect(http, asyncio.wait_for(self._collect(job), timeout=max(remaining, 0.001)))
        except BaseException as exc:
            release()
            if isinstance(exc, ClientDisconnected | asyncio.CancelledError):
                log.info("%s: client went away; its engine work was cancelled", job.request_id)
            return self._failed(exc, label, endpoint, prompt_param, t0)
        release()
        self._count(label, endpoint, 200, t0)
        for c in choices:
            self.metrics.observe_steps(label, c.steps)
        await self._log(job, choices, 200)
        payload = final_body(job, choices)
        return Response(orjson.dumps(payload), media_type="application/json", headers=route_headers(choices, t0))

    def _failed(self, exc: BaseException, label: str, endpoint: Endpoint, prompt_param: str, t0: float) -> Response:
        """Count a request that ended before its answer: 499 when the client left (a bare 499 response, or the
        cancellation raised on), else the error mapped to a ``GatewayError`` and raised."""
        if isinstance(exc, ClientDisconnected | asyncio.CancelledError):
            self._count(label, endpoint, CLIENT_CLOSED, t0)
            if isinstance(exc, asyncio.CancelledError):
                raise exc
            return Response(status_code=CLIENT_CLOSED)
        err = to_gateway_error(exc, prompt_param=prompt_param)
        self._count(label, endpoint, err.status, t0)
        raise err from None

    def _release_once(self, rt: Runtime, label: str) -> Callable[[], None]:
        """What releases an admitted request's slot, in-flight gauge, runtime pin and drain count: once, whoever
        calls it first."""
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.limiter.release()
                self.metrics.in_flight.labels(label).dec()
                rt.exit()
                self._leave()

        return release

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
        async def one(choice: Choice, run: ExecRequest) -> Choice:
            async for event in job.executor.stream(run):
                apply(choice, event)
            return choice

        return list(await asyncio.gather(*(one(c, r) for c, r in zip(job.new_choices(), job.runs, strict=True))))

    async def _log(self, job: Job, choices: list[Choice], status: int) -> None:
        """Record the request when a request log is kept; a log problem never fails a served answer."""
        if self.request_log is None:
            return
        try:
            await self.request_log.record(job, choices, status)
        except Exception:  # the answer was served; a log problem must not turn it into an error
            log.exception("request log write failed (the request was served)")

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
    ) -> EventStreamResponse:
        """Start the runs and wait for the first event (an early failure is still a proper HTTP error), then answer
        with the event stream; its end, however it comes, cancels the runs, releases and counts the outcome."""
        events = RunEvents(job, self.settings.stream_buffer_events, deadline)
        try:
            first = await _until_disconnect(http, events.next())
        except BaseException:
            events.cancel()
            raise
        if isinstance(first[1], BaseException):
            events.cancel()
            raise first[1]
        outcome = {"status": 200}

        def finish(reason: str | None) -> None:
            events.cancel()
            release()
            status = CLIENT_CLOSED if reason is not None else outcome["status"]
            if reason is not None:
                log.info("%s: %s; its engine work was cancelled", job.request_id, reason)
            self._count(label, job.endpoint, status, t0)

        return EventStreamResponse(
            self._frames(job, events, first, label, t0, prompt_param, outcome),
            on_end=finish,
            idle_timeout_s=self.settings.stream_idle_timeout_s,
            deadline=deadline,
        )

    async def _frames(
        self,
        job: Job,
        events: RunEvents,
        first: tuple[int, Any],
        label: str,
        t0: float,
        prompt_param: str,
        outcome: dict[str, int],
    ) -> AsyncIterator[str]:
        """The stream's frames: per choice its role, text and finish chunks (steps as comments), the usage chunk when
        asked for, then ``[DONE]``; an error mid-stream is one error frame, and its status the request's outcome."""
        choices = job.new_choices()
        started = [False] * len(job.runs)
        last_emit: list[float | None] = [None] * len(job.runs)
        open_runs = len(job.runs)
        item: tuple[int, Any] | None = first
        try:
            while open_runs:
                if item is None:
                    item = await events.next()
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
                        yield step_comment(index, event)
                    continue
                apply(choice, event)
                if not started[index]:
                    started[index] = True
                    yield chunk_frame(job, chunk_choice(job, index, role=True))
                now_t = time.perf_counter()
                if event.text or event.logprobs:
                    previous = last_emit[index]
                    if previous is None:
                        self.metrics.ttft.labels(label).observe(now_t - t0)
                    else:
                        self.metrics.itl.labels(label).observe(now_t - previous)
                    last_emit[index] = now_t
                    yield chunk_frame(job, chunk_choice(job, index, text=event.text, logprobs=event.logprobs))
                if event.tool_calls and job.endpoint == "chat":
                    yield chunk_frame(job, tool_calls_choice(index, event.tool_calls))
                if event.finish_reason is not None:
                    extra = None if job.include_usage else {"swarmgate": route_field(job, [choice])}
                    yield chunk_frame(job, chunk_choice(job, index, finish=event.finish_reason), extra=extra)
            if job.include_usage:
                yield chunk_frame(job, None, usage=usage(choices), extra={"swarmgate": route_field(job, choices)})
            for c in choices:
                self.metrics.observe_steps(label, c.steps)
            await self._log(job, choices, 200)
        except Exception as exc:  # not GeneratorExit / CancelledError: closing the stream is not an error
            err = to_gateway_error(exc, prompt_param=prompt_param)
            outcome["status"] = err.status
            yield sse_error_frame(err)
        yield "data: [DONE]\n\n"


async def _max_tokens(
    executor: Executor, prompts: list[Prompt], limit: int | None, max_len: int | None, prompt_param: str
) -> int:
    """The completion budget: the client's limit, else the room the prompts leave in the model's context, else
    ``DEFAULT_MAX_TOKENS``. A prompt that doesn't fit with the client's limit is a 400 ``context_length_exceeded``."""
    max_tokens = limit
    size = sum(len(t) for p in prompts for t in prompt_texts(p))
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
    return DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens


def _runs(
    body: ChatCompletionRequest | CompletionRequest, prompts: list[Prompt], params: SamplingParams, request_id: str
) -> list[ExecRequest]:
    """One run per (prompt, choice), prompt-major; with a seed, choice ``i`` samples with ``seed + i``."""
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
    return runs


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
