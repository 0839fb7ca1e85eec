"""The request-field checks every executor shares: a field an engine can't honour is refused (400 naming the field)
before anything runs, never ignored; so is a field no single node of a composition owns.

Fields that shape the final answer (``response_format``, ``tools``; logprobs) go to the node that writes it and no
other: ``inner_params`` is what every other node samples with.
"""

from __future__ import annotations

from dataclasses import replace

from gateway.engines.base import Prompt, SamplingParams
from gateway.errors import InvalidRequestError
from gateway.executors.base import ExpertHandle


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
