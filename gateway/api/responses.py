"""What a request's runs produced, and the OpenAI response bodies made of it.

A ``Job`` is one validated request, ready to run: one ``ExecRequest`` per (prompt, choice). Each run's events fold
into a ``Choice`` (``apply``); the choices give the non-streaming body (``final_body``) with its ``usage`` and our
``swarmgate`` route field (``route_field``), the ``x-swarmgate-*`` headers (``route_headers``) and the logprobs in
each endpoint's own shape (``logprobs_payload``). The streamed chunks are built from the same parts
(``gateway.api.streaming``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.engines.base import Chunk, Prompt, TokenLogprob, merge_tool_calls
from gateway.executors.base import ExecRequest, Executor, StepInfo

Endpoint = Literal["chat", "completions"]


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

    def new_choices(self) -> list[Choice]:
        """One empty ``Choice`` per run (collecting logprobs when the client asked for them)."""
        return [Choice(index=i, logprobs=[] if self.want_logprobs else None) for i in range(len(self.runs))]


def apply(choice: Choice, event: Chunk | StepInfo) -> None:
    """Fold one executor event into ``choice``."""
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


def final_body(job: Job, choices: list[Choice]) -> dict[str, Any]:
    """The non-streaming response body (``chat.completion`` or ``text_completion``)."""
    out_choices: list[dict[str, Any]] = []
    for c in choices:
        lp = logprobs_payload(job.endpoint, c.logprobs) if job.want_logprobs else None
        if job.endpoint == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": c.text}
            if c.tool_calls:
                message["content"] = c.text or None
                message["tool_calls"] = [{k: v for k, v in t.items() if k != "index"} for t in c.tool_calls]
            out_choices.append({"index": c.index, "message": message, "logprobs": lp, "finish_reason": c.finish_reason})
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
        "usage": usage(choices),
        "swarmgate": route_field(job, choices),
    }


def route_field(job: Job, choices: list[Choice]) -> dict[str, Any]:
    """The body's ``swarmgate`` field: the ensemble kind, total cost, and each choice's route."""
    return {
        "kind": job.executor.kind,
        "cost": round(sum(c.cost for c in choices), 6),
        "choices": [
            {"index": c.index, "cost": round(c.cost, 6), "route": [s.public() for s in c.steps]} for c in choices
        ],
    }


def usage(choices: list[Choice]) -> dict[str, int]:
    p = sum(s.prompt_tokens for c in choices for s in c.steps)
    c_ = sum(s.completion_tokens for c in choices for s in c.steps)
    return {"prompt_tokens": p, "completion_tokens": c_, "total_tokens": p + c_}


def route_headers(choices: list[Choice], t0: float) -> dict[str, str]:
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


def logprobs_payload(endpoint: Endpoint, lps: list[TokenLogprob] | None) -> dict[str, Any] | None:
    """Token logprobs in the endpoint's shape: chat's ``content`` list, or the completions' parallel lists."""
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
