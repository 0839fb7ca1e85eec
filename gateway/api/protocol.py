"""OpenAI wire format: request and response models (fields in OpenAI's order; our extensions grouped last)."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from gateway.engines.base import StructuredOutput, ToolRequest

log = logging.getLogger(__name__)


class _Request(BaseModel):
    # Unknown top-level fields are accepted, as OpenAI does, but never silently: ``ignored_fields`` lists them and the
    # endpoint returns them in the ``x-swarmgate-ignored-fields`` header (and logs them at debug level). Fields we
    # know but can't honour are declared below and refused with a 400 naming them.
    model_config = ConfigDict(extra="allow")

    def ignored_fields(self) -> list[str]:
        """Top-level fields of the request that nothing reads (unknown to the gateway)."""
        return sorted(self.model_extra or {})


class StreamOptions(BaseModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False

    @field_validator("continuous_usage_stats")
    @classmethod
    def _no_continuous(cls, value: bool) -> bool:
        if value:
            raise ValueError("'continuous_usage_stats' is not supported; use 'include_usage'")
        return value


class SwarmgateExtras(BaseModel):
    """Our extension fields (OpenAI SDK: ``extra_body={...}``)."""

    cost_weight: float | None = Field(
        default=None, ge=0.0, description="Routed chains: weight of cost against quality for this request."
    )
    max_steps: int | None = Field(
        default=None, ge=1, le=32, description="Routed chains: most expert calls for this request."
    )

    def extras(self) -> dict[str, Any]:
        return {k: v for k, v in (("cost_weight", self.cost_weight), ("max_steps", self.max_steps)) if v is not None}


class JsonSchema(BaseModel):
    """``response_format.json_schema``: the schema the answer must match."""

    model_config = ConfigDict(populate_by_name=True)
    name: str = Field(default="response", min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None

    @field_validator("schema_")
    @classmethod
    def _check_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        import jsonschema

        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"not a valid JSON schema: {exc.message}") from None
        return schema


class ResponseFormat(BaseModel):
    """OpenAI's ``response_format``: plain text, any JSON object, or JSON matching a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None

    @model_validator(mode="after")
    def _check(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("'json_schema' is required when type is 'json_schema'")
        return self

    def structured(self) -> StructuredOutput | None:
        if self.type == "text":
            return None
        if self.type == "json_object":
            return StructuredOutput(kind="json_object")
        assert self.json_schema is not None
        js = self.json_schema
        return StructuredOutput(
            kind="json_schema", schema=json.dumps(js.schema_, sort_keys=True), name=js.name, strict=js.strict
        )


def _check_logit_bias(bias: dict[str, float] | None) -> dict[str, float] | None:
    for key, value in (bias or {}).items():
        if not key.lstrip("-").isdigit() or int(key) < 0:
            raise ValueError(f"keys must be token ids (non-negative integers as strings), got {key!r}")
        if not -100.0 <= value <= 100.0:
            raise ValueError(f"bias of token {key} must be in [-100, 100], got {value}")
    return bias


class _Sampling(_Request, SwarmgateExtras):
    model: str = Field(min_length=1)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1, le=16)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    response_format: ResponseFormat | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    user: str | None = None
    # vLLM's sampling extensions (same names as vLLM's server)
    top_k: int | None = Field(default=None, ge=-1, description="vLLM: sample from the k most likely tokens (0/-1 off).")
    min_p: float | None = Field(default=None, ge=0.0, le=1.0, description="vLLM: minimum probability relative to top.")
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0, description="vLLM: CTRL-style penalty.")
    min_tokens: int | None = Field(default=None, ge=0, description="vLLM: tokens to generate before EOS/stop may end.")
    ignore_eos: bool = Field(default=False, description="vLLM: keep generating past EOS until max_tokens.")
    prompt_logprobs: int | None = Field(default=None, ge=0, le=20, description="vLLM: logprobs of the prompt tokens.")

    @field_validator("logit_bias")
    @classmethod
    def _check_bias(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        return _check_logit_bias(bias)

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else (stop or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must be non-empty")
        return stop

    @model_validator(mode="after")
    def _check_stream_options(self) -> _Sampling:
        # model-level errors name their field first, in quotes: the error handler makes it the 'param'
        if self.stream_options is not None and not self.stream:
            raise ValueError("'stream_options' is only allowed when 'stream' is true")
        if self.prompt_logprobs is not None and self.stream:
            raise ValueError("'prompt_logprobs' is returned on non-streaming requests only")
        if self.min_tokens and self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError("'min_tokens' must not exceed max_tokens")
        return self

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def engine_fields(self) -> dict[str, Any]:
        """The ``SamplingParams`` fields this request sets beyond the basic ones (serving adds the rest)."""
        out: dict[str, Any] = {"final_only": not self.stream}
        if self.presence_penalty:
            out["presence_penalty"] = self.presence_penalty
        if self.frequency_penalty:
            out["frequency_penalty"] = self.frequency_penalty
        if self.repetition_penalty is not None and self.repetition_penalty != 1.0:
            out["repetition_penalty"] = self.repetition_penalty
        if self.top_k not in (None, 0, -1):
            out["top_k"] = self.top_k
        if self.min_p:
            out["min_p"] = self.min_p
        if self.min_tokens:
            out["min_tokens"] = self.min_tokens
        if self.logit_bias:
            out["logit_bias"] = tuple(sorted((int(k), float(v)) for k, v in self.logit_bias.items()))
        if self.ignore_eos:
            out["ignore_eos"] = True
        if self.prompt_logprobs is not None:
            out["prompt_logprobs"] = self.prompt_logprobs
        if self.response_format is not None and (structured := self.response_format.structured()) is not None:
            out["structured"] = structured
        return out


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: str


class FunctionCall(BaseModel):
    name: str
    arguments: str


class ToolCall(BaseModel):
    """A tool call the assistant made earlier in the conversation."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _check_tool_message(self) -> ChatMessage:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("'tool_call_id' is required on a tool message")
        return self

    def as_dict(self) -> dict[str, Any]:
        content = self.content
        if isinstance(content, list):
            content = "".join(p.text for p in content)
        role = "system" if self.role == "developer" else self.role
        out: dict[str, Any] = {"role": role, "content": content or ""}
        if self.name is not None:
            out["name"] = self.name
        if self.tool_calls:
            out["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


class FunctionDefinition(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


_UNSUPPORTED_CHAT: dict[str, str] = {
    "audio": "audio output is not supported",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
    "reasoning_effort": "reasoning models are not served here",
    "functions": "the deprecated 'functions' API is not supported; use 'tools'",
    "function_call": "the deprecated 'function_call' API is not supported; use 'tool_choice'",
    "verbosity": "output verbosity control is not supported",
}
"""Chat fields the gateway knows but can't honour: sending one (non-null) is a 400 naming it."""


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    max_completion_tokens: int | None = Field(default=None, ge=1)
    modalities: list[str] | None = None
    parallel_tool_calls: bool | None = None
    store: bool | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    tools: list[Tool] | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, why in _UNSUPPORTED_CHAT.items():
                if data.get(name) is not None:
                    raise ValueError(f"'{name}' is not supported: {why}")
        return data

    @model_validator(mode="after")
    def _check_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("'top_logprobs' needs 'logprobs' set to true")
        if self.modalities is not None and self.modalities != ["text"]:
            raise ValueError("'modalities' other than ['text'] are not supported")
        if self.store:
            raise ValueError("'store' is not supported: the gateway does not store completions")
        if self.tool_choice is not None and not self.tools and self.tool_choice != "none":
            raise ValueError("'tool_choice' needs 'tools'")
        if isinstance(self.tool_choice, NamedToolChoice):
            names = {t.function.name for t in self.tools or []}
            if self.tool_choice.function.name not in names:
                raise ValueError(f"'tool_choice' names {self.tool_choice.function.name!r}, which is not in 'tools'")
        return self

    def completion_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def logprob_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def engine_fields(self) -> dict[str, Any]:
        out = super().engine_fields()
        if self.tools and self.tool_choice != "none":
            choice = self.tool_choice.model_dump() if isinstance(self.tool_choice, BaseModel) else self.tool_choice
            out["tools"] = ToolRequest(
                tools=json.dumps([t.model_dump(exclude_none=True) for t in self.tools], sort_keys=True),
                tool_choice=json.dumps(choice or "auto"),
                parallel_tool_calls=self.parallel_tool_calls,
            )
        return out


class TokenIds(tuple[int, ...]):
    """A prompt given as token ids (``/v1/completions``), kept apart from chat messages (which are lists)."""


class CompletionRequest(_Sampling):
    best_of: int | None = Field(default=None, ge=1)
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)
    prompt: Annotated[
        str | list[str] | list[Annotated[int, Field(ge=0)]] | list[list[Annotated[int, Field(ge=0)]]], Field()
    ]
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, prompt: Any) -> Any:
        if isinstance(prompt, list) and (not prompt or any(isinstance(p, list) and not p for p in prompt)):
            raise ValueError("must not be empty")
        return prompt

    @field_validator("echo", "suffix")
    @classmethod
    def _unsupported(cls, value: object, info: ValidationInfo) -> object:
        if value:
            raise ValueError(f"'{info.field_name}' is not supported")
        return value

    @field_validator("best_of")
    @classmethod
    def _no_best_of(cls, value: int | None) -> int | None:
        if value is not None and value != 1:
            raise ValueError("'best_of' is not supported (vLLM's V1 engine dropped it too); use 'n'")
        return value

    def prompts(self) -> list[str | TokenIds]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(x, int) for x in p):
            return [TokenIds(p)]  # type: ignore[arg-type]
        return [x if isinstance(x, str) else TokenIds(x) for x in p]  # type: ignore[union-attr]

    def completion_limit(self) -> int | None:
        return self.max_tokens

    def logprob_count(self) -> int | None:
        return self.logprobs


IGNORED_FIELDS_HEADER = "x-swarmgate-ignored-fields"
"""Response header listing the request's top-level fields that nothing read (comma-separated), when there are any."""


def mark_ignored(response: Any, body: _Request) -> Any:
    """Put the request's ignored fields on the response (header) and in the debug log; never silent."""
    ignored = body.ignored_fields()
    if ignored and hasattr(response, "headers"):
        response.headers[IGNORED_FIELDS_HEADER] = ",".join(ignored)
        log.debug("request for %r: ignored unknown fields %s", getattr(body, "model", "?"), ignored)
    return response


# --------------------------------------------------------------------------- responses
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=now)
    owned_by: str = "swarmgate"
    max_model_len: int | None = None
    # extensions
    kind: str = "expert"
    description: str = ""
    experts: list[str] = Field(default_factory=list)
    cost: float | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
