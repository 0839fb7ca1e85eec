"""What every executor shares: the request it takes, the events it yields, and the handle of one expert.

An executor turns one request into engine calls. It yields two kinds of events, in order:
- ``Chunk`` (from ``gateway.engines.base``): increments of the *final* answer, streamed to the client live;
- ``StepInfo``: one per engine call when that call ends (every node of a DAG, every step of a chain, the single
  call of an expert). The serving layer sums their tokens into ``usage``, reports them as the route, and counts
  them in the per-expert metrics. The final answer's finish reason comes from the last ``Chunk``.
"""

from __future__ import annotations

import abc
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from gateway.engines.base import Adapter, Chunk, Completion, Engine, Prompt, SamplingParams


@dataclass
class ExecRequest:
    """One generation the gateway asks an executor for (``n`` is already fanned out: one sequence)."""

    prompt: Prompt
    """Chat messages or raw text, as the client sent it."""
    params: SamplingParams
    request_id: str
    extra: dict[str, Any] = field(default_factory=dict)
    """Our extension fields from the request body (e.g. ``cost_weight``, ``max_steps``)."""


@dataclass
class StepInfo:
    """One engine call inside a request's route."""

    node: str
    """Step or node id (``"0"`` for a single expert, the DAG node id, the chain step index)."""
    expert: str
    prompt_tokens: int
    completion_tokens: int
    cost: float
    """The expert's cost per call, as the spec gives it."""
    latency_ms: float
    finish_reason: str | None = None
    output: str | None = None
    """The step's answer (intermediate steps only; the final answer is the response itself)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Executor-specific facts (e.g. the router's decision latency)."""

    def public(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "node": self.node,
            "expert": self.expert,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost": self.cost,
            "latency_ms": round(self.latency_ms, 3),
        }
        if self.output is not None:
            out["output"] = self.output
        out.update(self.extra)
        return out


ExecEvent = Chunk | StepInfo


@dataclass
class ExpertHandle:
    """A named expert: an engine, an optional adapter on it, and what one call costs."""

    name: str
    engine: Engine
    adapter: Adapter | None = None
    cost: float = 1.0
    description: str = ""

    async def complete(self, prompt: Prompt, params: SamplingParams, *, request_id: str | None = None) -> Completion:
        return await self.engine.complete(prompt, params, adapter=self.adapter, request_id=request_id)

    def stream(self, prompt: Prompt, params: SamplingParams, *, request_id: str | None = None) -> AsyncIterator[Chunk]:
        return self.engine.stream(prompt, params, adapter=self.adapter, request_id=request_id)

    async def run_step(
        self,
        node: str,
        prompt: Prompt,
        params: SamplingParams,
        *,
        request_id: str | None = None,
        keep_output: bool = True,
    ) -> tuple[Completion, StepInfo]:
        """A whole (non-streamed) call, timed and reported as a route step."""
        t0 = time.perf_counter()
        done = await self.complete(prompt, params, request_id=request_id)
        info = StepInfo(
            node=node,
            expert=self.name,
            prompt_tokens=done.prompt_tokens,
            completion_tokens=done.completion_tokens,
            cost=self.cost,
            latency_ms=(time.perf_counter() - t0) * 1e3,
            finish_reason=done.finish_reason,
            output=done.text if keep_output else None,
        )
        return done, info

    async def stream_step(
        self, node: str, prompt: Prompt, params: SamplingParams, *, request_id: str | None = None
    ) -> AsyncIterator[ExecEvent]:
        """A streamed call: its chunks, then its StepInfo. Use for the final step of any executor."""
        t0 = time.perf_counter()
        last: Chunk | None = None
        async for chunk in self.stream(prompt, params, request_id=request_id):
            last = chunk
            yield chunk
        yield StepInfo(
            node=node,
            expert=self.name,
            prompt_tokens=last.prompt_tokens if last else 0,
            completion_tokens=last.completion_tokens if last else 0,
            cost=self.cost,
            latency_ms=(time.perf_counter() - t0) * 1e3,
            finish_reason=last.finish_reason if last else None,
        )


class Executor(abc.ABC):
    """Serves one model name of the spec (an expert or an ensemble)."""

    kind: str = "abstract"

    def __init__(self, name: str):
        self.name = name

    @abc.abstractmethod
    def stream(self, request: ExecRequest) -> AsyncIterator[ExecEvent]:
        """Run the request: final-answer chunks and one StepInfo per engine call."""

    def experts(self) -> list[ExpertHandle]:
        """The experts this executor may call (for /v1/models and validation)."""
        return []

    def max_model_len(self) -> int | None:
        """Context of the model that sees the client's prompt first, if there is one."""
        return None

    def count_prompt_tokens(self, prompt: Prompt) -> int | None:
        """Tokens the client's prompt takes on the first model, for the context check; None if unknown."""
        return None

    async def close(self) -> None:
        """Release executor-owned resources (engines are owned by the runtime)."""
        return None


def question_of(prompt: Prompt) -> str:
    """The question an ensemble works on: the last user message's text, or the raw prompt."""
    if isinstance(prompt, str):
        return prompt
    for message in reversed(prompt):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):  # OpenAI content parts
                return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""
