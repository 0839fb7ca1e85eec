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
import json
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

Prompt = str | list[dict[str, Any]]
FinishReason = Literal["stop", "length", "abort", "tool_calls"]


class EngineError(Exception):
    """An engine failed to serve a request (maps to HTTP 502)."""


class EngineTimeout(EngineError):
    """An engine did not answer in time (maps to HTTP 504)."""


class InvalidEngineRequest(ValueError):
    """The engine refuses the request itself (sampling settings it can't honour, no chat template): HTTP 400."""

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.param = param
        """The request field at fault, when one is."""


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
class StructuredOutput:
    """A constraint on the generated text (OpenAI's ``response_format``): JSON, optionally matching a schema."""

    kind: Literal["json_object", "json_schema"]
    """``json_object``: any JSON object; ``json_schema``: JSON valid against ``schema``."""
    schema: str | None = None
    """The JSON schema as JSON text (``json_schema`` only; text keeps the params hashable)."""
    name: str = "response"
    """The schema's name, as the client gave it (passed on to remote servers)."""
    strict: bool | None = None
    """The client's ``strict`` flag (passed on to remote servers; local engines always decode strictly)."""

    def to_openai(self) -> dict[str, Any]:
        """OpenAI's ``response_format`` body for this constraint."""
        if self.kind == "json_object":
            return {"type": "json_object"}
        spec: dict[str, Any] = {"name": self.name, "schema": json.loads(self.schema or "{}")}
        if self.strict is not None:
            spec["strict"] = self.strict
        return {"type": "json_schema", "json_schema": spec}


@dataclass(frozen=True)
class ToolRequest:
    """Tools the model may call (OpenAI's ``tools`` / ``tool_choice`` / ``parallel_tool_calls``), as JSON text."""

    tools: str
    """JSON list of ``{"type": "function", "function": {...}}``."""
    tool_choice: str = '"auto"'
    """JSON: ``"auto"``, ``"none"``, ``"required"`` or ``{"type": "function", "function": {"name": ...}}``."""
    parallel_tool_calls: bool | None = None

    def tool_list(self) -> list[dict[str, Any]]:
        return list(json.loads(self.tools))

    def choice(self) -> Any:
        return json.loads(self.tool_choice)


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings for one sequence (``n`` is fanned out above the engine).

    Defaults mean "off", so an engine can tell which fields a request actually uses (``used_fields``) and refuse the
    ones it can't honour (``Engine.supported_fields``) instead of silently ignoring them.
    """

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
    presence_penalty: float = 0.0
    """Subtracted once from the logit of every token already generated (OpenAI semantics, [-2, 2])."""
    frequency_penalty: float = 0.0
    """Subtracted from a token's logit once per time it was generated (OpenAI semantics, [-2, 2])."""
    repetition_penalty: float = 1.0
    """Divides positive / multiplies negative logits of tokens in the prompt or output (CTRL / HF / vLLM; 1 = off)."""
    top_k: int = 0
    """Sample from the k most likely tokens only (0 = off)."""
    min_p: float = 0.0
    """Drop tokens whose probability is below ``min_p`` times the top token's (0 = off)."""
    min_tokens: int = 0
    """Generate at least this many tokens before EOS or a stop string may end the sequence."""
    logit_bias: tuple[tuple[int, float], ...] = ()
    """(token id, bias) pairs added to the logits before sampling (OpenAI's ``logit_bias``, bias in [-100, 100])."""
    ignore_eos: bool = False
    """Keep generating past EOS until ``max_tokens`` (benchmarks)."""
    prompt_logprobs: int | None = None
    """If set, also return each prompt token's logprob and this many top alternatives (vLLM's extension)."""
    structured: StructuredOutput | None = None
    """Constrain the output (``response_format``)."""
    tools: ToolRequest | None = None
    """Tools the model may call; the engine returns ``tool_calls`` instead of text when it calls one."""
    fit_context: bool = False
    """The client set no ``max_tokens``: an engine shortens ``max_tokens`` to the room its context leaves after the
    prompt instead of refusing it (what OpenAI and vLLM do). Ensemble nodes need it: their prompts grow with their
    predecessors' answers."""
    final_only: bool = False
    """The caller wants the finished result only (a non-streaming request): an engine may deliver one chunk at the
    end instead of every increment (vLLM's ``RequestOutputKind.FINAL_ONLY``), which saves per-token work."""

    def greedy(self) -> SamplingParams:
        return replace(self, temperature=0.0, top_p=1.0, seed=None)

    def fitted(self, prompt_tokens: int, max_model_len: int) -> SamplingParams:
        """These settings for a prompt of ``prompt_tokens`` on a context of ``max_model_len``: with ``fit_context``,
        ``max_tokens`` shortened to the room left; otherwise (or with no room at all) ``PromptTooLong``."""
        if prompt_tokens + self.max_tokens <= max_model_len:
            return self
        if self.fit_context and prompt_tokens < max_model_len:
            return replace(self, max_tokens=max_model_len - prompt_tokens)
        raise PromptTooLong(prompt_tokens, self.max_tokens, max_model_len)

    def used_fields(self) -> list[str]:
        """The request fields (OpenAI / vLLM names) this request sets to something other than "off"."""
        return [name for name, on in _USED.items() if on(self)]


_USED: dict[str, Any] = {
    "presence_penalty": lambda p: p.presence_penalty != 0.0,
    "frequency_penalty": lambda p: p.frequency_penalty != 0.0,
    "repetition_penalty": lambda p: p.repetition_penalty != 1.0,
    "top_k": lambda p: p.top_k not in (0, -1),
    "min_p": lambda p: p.min_p != 0.0,
    "min_tokens": lambda p: p.min_tokens > 0,
    "logit_bias": lambda p: bool(p.logit_bias),
    "ignore_eos": lambda p: p.ignore_eos,
    "prompt_logprobs": lambda p: p.prompt_logprobs is not None,
    "response_format": lambda p: p.structured is not None,
    "tools": lambda p: p.tools is not None,
    "seed": lambda p: p.seed is not None and p.temperature > 0,
    "logprobs": lambda p: p.logprobs is not None,
}
"""Request field -> "does this request use it"; what ``Engine.supported_fields`` is checked against."""

LOCAL_ENGINE_FIELDS = frozenset(
    {
        "seed",
        "logprobs",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "top_k",
        "min_p",
        "min_tokens",
        "logit_bias",
        "ignore_eos",
        "prompt_logprobs",
        "response_format",
    }
)
"""What both in-process engines (transformers, vLLM) honour; vLLM adds ``tools`` where a parser is set."""


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
    tool_calls: list[dict[str, Any]] | None = None
    """Tool calls (OpenAI's shape, each with ``index``, ``id``, ``type``, ``function``): whole calls, or for engines
    that stream them, increments of ``function.arguments`` keyed by ``index``."""
    prompt_logprobs: list[dict[str, Any] | None] | None = None
    """Set on the last chunk when asked for: per prompt token, None for the first, else vLLM's shape
    ``{token_id: {"logprob", "rank", "decoded_token"}}``."""


@dataclass
class Completion:
    """A finished generation."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    prompt_logprobs: list[dict[str, Any] | None] | None = None


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter served on an engine's base model. ``name`` is unique per adapter content."""

    name: str
    path: str


class Engine(abc.ABC):
    """One base model, any number of LoRA adapters, async generation."""

    kind: str = "abstract"
    supported_fields: frozenset[str] = frozenset({"seed", "logprobs"})
    """Optional request fields (``SamplingParams.used_fields`` names) this engine honours; the rest are refused."""

    def unsupported(self, params: SamplingParams) -> list[str]:
        """The fields ``params`` uses that this engine can't honour (each becomes a 400 naming the field)."""
        return [f for f in params.used_fields() if f not in self.supported_fields]

    def check_supported(self, params: SamplingParams) -> None:
        """Raise ``InvalidEngineRequest`` naming the first field of ``params`` this engine can't honour."""
        unsupported = self.unsupported(params)
        if unsupported:
            name = unsupported[0]
            raise InvalidEngineRequest(
                f"the {self.kind} engine can't honour '{name}'{self.unsupported_hint(name)}", param=name
            )

    def unsupported_hint(self, name: str) -> str:
        """What would make the field ``name`` honoured, as a refusal's suffix (``" (...)"``); empty when nothing would."""
        return ""

    def chat_frame(self) -> tuple[str, str] | None:
        """(prefix, suffix) the chat template puts around one user message's content, generation prompt included;
        None when the engine renders no template locally. How ensembles keep a raw completion prompt's format."""
        marker = "\x00swarmgate-content\x00"
        try:
            text = self.render_prompt([{"role": "user", "content": marker}])
        except Exception:  # no chat template, not started, remote engine
            return None
        if not isinstance(text, str) or text.count(marker) != 1:
            return None
        prefix, suffix = text.split(marker)
        return prefix, suffix

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
        calls: list[dict[str, Any]] = []
        last: Chunk | None = None
        if not params.final_only:
            params = replace(params, final_only=True)
        async for chunk in self.stream(prompt, params, adapter=adapter, request_id=request_id):
            parts.append(chunk.text)
            ids.extend(chunk.token_ids)
            if lps is not None and chunk.logprobs:
                lps.extend(chunk.logprobs)
            if chunk.tool_calls:
                merge_tool_calls(calls, chunk.tool_calls)
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
            tool_calls=calls or None,
            prompt_logprobs=last.prompt_logprobs,
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
