"""The OpenAI surface on a vLLM expert (in-process AsyncLLM on the toy ``big`` checkpoint), with the real SDK:
structured outputs through vLLM's structured-output decoding, sampling fields through vLLM's ``SamplingParams``,
tool calls through vLLM's tool parser (``engine_args.tool_call_parser``), final-only non-streaming output."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest

from tests.helpers import running_gateway
from tests.integration.test_api_surface import JSON_SCHEMA, SCHEMA

pytestmark = [pytest.mark.vllm, pytest.mark.slow]  # slow: an engine start per module; CI runs it
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "add",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "string", "maxLength": 3}, "b": {"type": "string", "maxLength": 3}},
                "required": ["a", "b"],
                "additionalProperties": False,
            },
        },
    }
]


@pytest.fixture(scope="module")
def client(toy_world: Any, tmp_path_factory: pytest.TempPathFactory) -> openai.OpenAI:
    spec = tmp_path_factory.mktemp("vllm-surface") / "spec.yaml"
    # the toy model pads JSON with whitespace when allowed: compact JSON is vLLM's engine-level setting
    compact = {"backend": "xgrammar", "disable_any_whitespace": True}
    args = {
        "enable_lora": False,
        "max_model_len": 256,
        "tool_call_parser": "hermes",
        "structured_outputs_config": compact,
    }
    plain = {"enable_lora": False, "max_model_len": 255}  # another engine config: no tool parser
    spec.write_text(
        "experts:\n"
        f"  big: {{engine: vllm, model: {toy_world.root / 'big'}, engine_args: {json.dumps(args)}}}\n"
        f"  big-no-tools: {{engine: vllm, model: {toy_world.root / 'big'}, engine_args: {json.dumps(plain)}}}\n"
    )
    with running_gateway(spec, engine="vllm", timeout_s=900) as url:
        yield openai.OpenAI(base_url=url, api_key="unused", max_retries=0)


def test_json_schema_on_vllm(client: openai.OpenAI) -> None:
    for seed in range(2):
        r = client.chat.completions.create(
            model="big",
            messages=[{"role": "user", "content": "add 12 34"}],
            response_format=JSON_SCHEMA,  # type: ignore[arg-type]
            temperature=1.0,
            seed=seed,
            max_tokens=80,
        )
        assert r.choices[0].finish_reason == "stop", r
        jsonschema.validate(json.loads(r.choices[0].message.content or ""), SCHEMA)


def test_sampling_fields_on_vllm(client: openai.OpenAI) -> None:
    def ask(**kw: Any) -> Any:
        return client.completions.create(model="big", prompt="Q: add 12 34\nA: ", temperature=0, **kw)

    plain = ask(max_tokens=8).choices[0]  # big's answer (46 on most builds; big gets 15-20% of sums right)
    assert plain.text.isdigit() and plain.finish_reason == "stop"
    assert ask(max_tokens=4, logit_bias={"28": 100}).choices[0].text == "7777"
    assert ask(max_tokens=6, extra_body={"ignore_eos": True}).usage.completion_tokens == 6
    assert ask(max_tokens=6, extra_body={"min_tokens": 5}).usage.completion_tokens >= 5
    r = ask(max_tokens=2, extra_body={"prompt_logprobs": 1})
    lps = r.choices[0].model_extra["prompt_logprobs"]
    assert lps[0] is None and len(lps) == r.usage.prompt_tokens
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="big", prompt="Q: rev abcdef\nA: ", temperature=0, max_tokens=12, stream=True
        )
        if c.choices
    )
    whole = client.completions.create(model="big", prompt="Q: rev abcdef\nA: ", temperature=0, max_tokens=12)
    assert whole.choices[0].text == streamed  # final-only (non-streaming) output equals the streamed deltas


def test_forced_tool_call_on_vllm(client: openai.OpenAI) -> None:
    """A named tool_choice constrains the output to the tool's arguments (vLLM structured outputs), so even the toy
    model returns a well-formed call."""
    r = client.chat.completions.create(
        model="big",
        messages=[{"role": "user", "content": "add 12 34"}],
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "add"}},
        temperature=0,
        max_tokens=60,
    )
    (call,) = r.choices[0].message.tool_calls or []
    assert call.function.name == "add"
    assert r.choices[0].finish_reason == "tool_calls", (r.choices[0].finish_reason, call.function.arguments)
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, TOOLS[0]["function"]["parameters"])


def test_tools_refused_without_a_parser(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="big-no-tools",
            messages=[{"role": "user", "content": "add 12 34"}],
            tools=TOOLS,  # type: ignore[arg-type]
            max_tokens=4,
        )
    assert err.value.body["param"] == "tools" and "tool_call_parser" in err.value.body["message"]
