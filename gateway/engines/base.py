"""The one protocol every engine implements.

An *engine* owns one base model (a directory or a remote server) and serves any number of LoRA adapters on it.
An *expert* in the spec is an (engine, adapter) pair, so every expert on one base shares one engine.

Engines speak in two prompt shapes:
- ``str``: a raw text prompt (``/v1/completions``, the prompts executors build);
- ``list[dict]``: chat messages; local engines render them with the tokenizer's chat template, remote engines pass
  them to the server's ``/chat/completions``.

Everything is async. ``stream`` is the primitive; ``complete`` and ``complete_batch`` collect it.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

Prompt = str | list[dict[str, Any]]
FinishReason = Literal["stop", "length", "abort"]


class EngineError(Exception):
    """An engine failed to serve a request (maps to HTTP 502)."""


class EngineTimeout(EngineError):
    """An engine did not answer in time (maps to HTTP 504)."""


class InvalidEngineRequest(ValueError):
    """The engine refuses the request itself (sampling settings it can't honour, no chat template): HTTP 400."""


class PromptTooLong(InvalidEngineRequest):
    """The prompt plus the requested tokens do not fit the model's context (maps to HTTP 400)."""

    def __init__(self, prompt_tokens: int, max_tokens: int, max_model_len: int):
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.max_model_len = max_model_len
        super().__init__(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the completion). "
            "Please reduce the length of the messages or completion."
        )


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings for one sequence (``n`` is fanned out above the engine)."""

    max_tokens: int = 64
    """Most tokens to generate."""
    temperature: float = 1.0
    """0 means greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    stop: tuple[str, ...] = ()
    """Strings that end generation; they are not included in the output."""
    seed: int | None = None
    """Per-request seed: the same seed and prompt give the same sample."""
    logprobs: int | None = None
    """If set, return the chosen token's logprob and this many top alternatives per step."""

    def greedy(self) -> SamplingParams:
        return replace(self, temperature=0.0, top_p=1.0, seed=None)


@dataclass(frozen=True)
class TokenLogprob:
    """Logprob of one generated token and its top alternatives."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass
class Chunk:
    """One streamed increment of a generation."""

    text: str
    """New text since the previous chunk (may be empty, e.g. on the final chunk)."""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    """Set on the last chunk only."""
    prompt_tokens: int = 0
    """Set on the last chunk: tokens in the prompt."""
    completion_tokens: int = 0
    """Set on the last chunk: tokens generated."""


@dataclass
class Completion:
    """A finished generation."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter served on an engine's base model. ``name`` is unique per adapter content."""

    name: str
    path: str


class Engine(abc.ABC):
    """One base model, any number of LoRA adapters, async generation."""

    kind: str = "abstract"

    @property
    @abc.abstractmethod
    def max_model_len(self) -> int:
        """Context length in tokens (prompt + completion)."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Load weights / open connections. Idempotent."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release everything. Idempotent."""

    @abc.abstractmethod
    def stream(
        self,
        prompt: Prompt,
        params: SamplingParams,
        *,
        adapter: Adapter | None = None,
        request_id: str | None = None,
    ) -> AsyncGenerator[Chunk, None]:
        """Generate, yielding increments; the last chunk carries finish_reason and usage.

        Raises PromptTooLong before generating if the prompt does not fit. Cancelling the consumer (or
        ``aclose()`` on the iterator) aborts the request inside the engine.
        """

    def count_prompt_tokens(self, prompt: Prompt) -> int | None:
        """Tokens the prompt will take, or None when the engine can't tell (remote engines)."""
        return None

    def render_prompt(self, prompt: Prompt) -> str:
        """The text a local engine feeds its model (chat template applied to messages)."""
        if isinstance(prompt, str):
            return prompt
        raise NotImplementedError(f"{self.kind} engine can't render chat messages locally")

    async def complete(
        self,
        prompt: Prompt,
        params: SamplingParams,
        *,
        adapter: Adapter | None = None,
        request_id: str | None = None,
    ) -> Completion:
        """Generate to the end and return the whole completion."""
        parts: list[str] = []
        ids: list[int] = []
        lps: list[TokenLogprob] | None = [] if params.logprobs is not None else None
        last: Chunk | None = None
        async for chunk in self.stream(prompt, params, adapter=adapter, request_id=request_id):
            parts.append(chunk.text)
            ids.extend(chunk.token_ids)
            if lps is not None and chunk.logprobs:
                lps.extend(chunk.logprobs)
            last = chunk
        if last is None or last.finish_reason is None:
            raise EngineError(f"{self.kind} engine ended a stream without a finish reason")
        return Completion(
            text="".join(parts),
            finish_reason=last.finish_reason,
            prompt_tokens=last.prompt_tokens,
            completion_tokens=last.completion_tokens,
            token_ids=ids,
            logprobs=lps,
        )

    async def complete_batch(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams,
        *,
        adapters: Sequence[Adapter | None] | None = None,
    ) -> list[Completion]:
        """Many generations at once; engines batch them internally (one adapter per prompt, or None)."""
        adapters = list(adapters) if adapters is not None else [None] * len(prompts)
        if len(adapters) != len(prompts):
            raise ValueError("complete_batch needs one adapter (or None) per prompt")
        return list(
            await asyncio.gather(*(self.complete(p, params, adapter=a) for p, a in zip(prompts, adapters, strict=True)))
        )

    async def next_token_logprobs(self, prompt: str | list[int], *, adapter: Adapter | None = None) -> Any:
        """Full next-token log-distribution (a 1-D float tensor over the vocabulary), for token-level blending."""
        raise NotImplementedError(f"{self.kind} engine does not expose full next-token distributions")


# ---------------------------------------------------------------------------------------------------------------------
# Token-level blending: incremental scoring sessions (the blend executor's view of an engine).
# ---------------------------------------------------------------------------------------------------------------------
class ScoringSession(abc.ABC):
    """Rows (one per adapter, ``None`` = the base model) that advance together over one token sequence and keep their
    state between calls: the transformers engine keeps each row's KV cache; vLLM re-submits the sequence and relies on
    prefix caching. Returned log-distributions hold ``nan`` where the engine did not report a token (vLLM's top-k)."""

    length: int = 0
    """Tokens fed so far (prompt included)."""

    @abc.abstractmethod
    async def feed(self, token_ids: Sequence[int], *, last: int = 1) -> Any:
        """Append ``token_ids`` to every row; return the log-distributions of the next token after each of the last
        ``last`` fed tokens: a float tensor ``[rows, last, vocab]``."""

    @abc.abstractmethod
    async def rollback(self, length: int) -> None:
        """Forget every token after the first ``length`` (rejected drafts, a re-encoded suffix)."""

    async def close(self) -> None:
        """Release the session's state (idempotent)."""
        return None


def can_score(engine: Engine) -> bool:
    """Whether ``engine`` serves token-level blending. Such an engine has ``open_scoring(adapters, *, top_k=None) ->
    ScoringSession``, ``blend_tokenizer()`` (the HF tokenizer its ids come from), ``blend_eos_ids()`` and
    ``encode_for_blend(prompt) -> list[int]`` (the ids a generation of ``prompt`` starts from, as ``stream`` does)."""
    return callable(getattr(engine, "open_scoring", None))


def merge_tool_calls(calls: list[dict[str, Any]], deltas: list[dict[str, Any]]) -> None:
    """Fold streamed tool-call deltas (OpenAI's shape, keyed by ``index``) into whole calls, in place."""
    for d in deltas:
        index = int(d.get("index", len(calls)))
        while len(calls) <= index:
            calls.append({"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        call = calls[index]
        if d.get("id"):
            call["id"] = d["id"]
        fn = d.get("function") or {}
        if fn.get("name"):
            call["function"]["name"] += fn["name"]
        if fn.get("arguments"):
            call["function"]["arguments"] += fn["arguments"]
