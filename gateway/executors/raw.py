"""What a raw completion prompt means for an ensemble (``/v1/completions``), and the field checks every executor shares.

**Raw prompts.** An evaluation harness sends every model the same raw text, in the model's own format (for the toy
models ``"Q: addrev 12 34\\nA: "``). An ensemble treats it as an expert would:

1. every node without predecessors (the first step of a chain) gets the raw prompt exactly as sent: no chat
   template, the same tokens an expert would see;
2. every later node gets its message-passing text (the DAG node's template with the predecessors' responses, the
   chain's knowledge-transfer prompt) *in the same raw format*: the prompt's last user turn is located with the
   receiving model's chat-template frame (the text its template puts before and after one user message: for the toy
   models ``"Q: "`` and ``"\\nA: "``) and its content is replaced by the message-passing text; everything before it
   (few-shot examples, instructions) stays byte for byte. So ``"Q: addrev 12 34\\nA: "`` becomes
   ``"Q: addrev 12 34\\nP: 46\\nA: "`` for the reverser, exactly what the chat path renders;
3. the *question* (what DAG templates and the router's policy see) is that last user turn's content
   (``"addrev 12 34"``), as in chat, where it is the last user message.
When the frame is not found (a model without a chat template, a prompt in another format), the whole prompt is the
question and later nodes get the message-passing text as their whole raw prompt.

**Fields.** A request field an engine can't honour is refused (400 naming the field) before anything runs, never
ignored; so is a field no single node of a composition owns.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from gateway.engines.base import Prompt, SamplingParams
from gateway.errors import InvalidRequestError
from gateway.executors.base import ExpertHandle


@dataclass(frozen=True)
class RawPrompt:
    """A raw prompt split around its last user turn: ``head + question + tail`` is the prompt."""

    head: str
    """Everything before the last user turn's content (earlier turns and the frame's prefix)."""
    question: str
    """The last user turn's content."""
    tail: str
    """The frame's suffix as the prompt has it (the generation prompt, e.g. ``"\\nA: "``), or ''."""

    def with_content(self, content: str) -> str:
        """The same raw prompt with the last user turn's content replaced."""
        return self.head + content + self.tail


def split_raw(prompt: str, expert: ExpertHandle) -> RawPrompt:
    """Locate the last user turn of ``prompt`` with ``expert``'s chat-template frame (see the module docstring)."""
    frame = expert.engine.chat_frame()
    if frame is None:
        return RawPrompt("", prompt, "")
    prefix, suffix = frame
    tail = ""
    for candidate in (suffix, suffix.rstrip()):  # harnesses often strip the trailing space ("A:" for "A: ")
        if candidate and prompt.endswith(candidate):
            tail = candidate
            break
    body = prompt[: len(prompt) - len(tail)]
    # the content starts after the frame's prefix (its last line when the prefix carries a BOS or a system turn)
    for p in (prefix, prefix.split("\n")[-1]):
        if p and p in body:
            start = body.rindex(p) + len(p)
            return RawPrompt(body[:start], body[start:], tail)
    return RawPrompt("", body, tail)


def is_token_prompt(prompt: Prompt) -> bool:
    """Token-id prompts arrive as a tuple (``gateway.api.protocol.TokenIds``); chat messages are lists."""
    return isinstance(prompt, tuple)


def refuse_token_prompt(model: str, prompt: Prompt) -> None:
    if is_token_prompt(prompt):
        raise InvalidRequestError(
            f"model {model!r} is an ensemble: its later nodes need the prompt's text, so token-id prompts are served "
            "by single experts only; send the prompt as text",
            param="prompt",
        )


def refuse_unsupported(model: str, expert: ExpertHandle, params: SamplingParams) -> None:
    """400 naming the first field of ``params`` that ``expert``'s engine can't honour."""
    bad = expert.engine.unsupported(params)
    if bad:
        where = f"expert {expert.name!r}" if expert.name == model else f"expert {expert.name!r} of model {model!r}"
        hint = ""
        if bad[0] == "tools" and expert.engine.kind == "vllm":
            hint = " (its spec entry needs engine_args.tool_call_parser, as `vllm serve --tool-call-parser`)"
        raise InvalidRequestError(
            f"'{bad[0]}' is not supported by {where}: the {expert.engine.kind} engine can't honour it{hint}",
            param=bad[0],
        )


FINAL_ONLY_FIELDS = ("response_format", "tools")
"""Fields that shape the final answer: a composition passes them to the node that writes it, and no other."""


def inner_params(params: SamplingParams) -> SamplingParams:
    """What a non-final node samples with: the request's settings without what only the final answer may have."""
    return replace(params, logprobs=None, prompt_logprobs=None, structured=None, tools=None, final_only=True)


def refuse_for_ensemble(model: str, kind: str, params: SamplingParams, *, final_known: bool) -> None:
    """Fields no node of this composition can own: 400 naming the field and saying why."""
    if params.prompt_logprobs is not None:
        raise InvalidRequestError(
            f"'prompt_logprobs' is not supported by {kind} model {model!r}: its nodes see different prompts; ask a "
            "single expert",
            param="prompt_logprobs",
        )
    if final_known:
        return
    for field, on in (("response_format", params.structured is not None), ("tools", params.tools is not None)):
        if on:
            raise InvalidRequestError(
                f"'{field}' is not supported by {kind} model {model!r}: its router decides at run time which call "
                "is the last, so no single final node owns the answer; use a single expert or a dag",
                param=field,
            )
