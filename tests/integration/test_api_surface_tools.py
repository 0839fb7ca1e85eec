"""Tools and pass-through fields through an ``engine: openai`` expert: the real gateway, the real ``openai`` SDK as the
client, and the test's own OpenAI-compatible server standing in for the remote one (it answers a request that
carries ``tools`` with a streamed call to the first tool, as vLLM's server does, and records every body).

Round trip: the client gets ``tool_calls`` (whole, and as streamed deltas), sends the conversation back with the
assistant's call and a ``tool`` message, and the remote server sees both unchanged; every sampling field and
``response_format`` reach the remote server as sent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import openai
import pytest

from tests.gateway._fixtures_openai_server import FakeOpenAIServer, _frame
from tests.helpers import running_gateway

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two integers.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
            },
        },
    }
]
ARGS = '{"a": 12, "b": 34}'


@dataclass
class ToolServer(FakeOpenAIServer):
    """Answers a chat request with tools (and no tool result yet) with a call to the first tool, streamed in pieces."""

    async def _events(self, body: dict[str, Any], chat: bool, model: str) -> Any:
        messages = body.get("messages") or []
        if not (chat and body.get("tools") and messages[-1].get("role") != "tool"):
            async for frame in super()._events(body, chat, model):
                yield frame
            return
        name = body["tools"][0]["function"]["name"]
        head = {"index": 0, "id": "call_remote_1", "type": "function", "function": {"name": name, "arguments": ""}}
        deltas = [
            {"role": "assistant", "content": None, "tool_calls": [head]},
            {"tool_calls": [{"index": 0, "function": {"arguments": ARGS[:9]}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": ARGS[9:]}}]},
        ]
        for i, delta in enumerate(deltas):
            finish = "tool_calls" if i == len(deltas) - 1 else None
            yield _frame(
                {"id": "c1", "object": "chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            )
        usage = {"prompt_tokens": 11, "completion_tokens": 9, "total_tokens": 20}
        yield _frame({"id": "c1", "object": "chunk", "choices": [], "usage": usage})
        yield "data: [DONE]\n\n"


@pytest.fixture(scope="module")
def remote():
    with ToolServer() as server:
        yield server


@pytest.fixture(scope="module")
def client(remote: ToolServer, tmp_path_factory: pytest.TempPathFactory) -> openai.OpenAI:
    spec = tmp_path_factory.mktemp("tools") / "spec.yaml"
    spec.write_text(f"experts:\n  remote: {{engine: openai, url: '{remote.url}', model: fake, cost: 2.0}}\n")
    with running_gateway(spec) as url:
        yield openai.OpenAI(base_url=url, api_key="unused", max_retries=0)


QUESTION = [{"role": "user", "content": "What is 12 + 34?"}]


def test_tool_call_round_trip(client: openai.OpenAI, remote: ToolServer) -> None:
    r = client.chat.completions.create(model="remote", messages=QUESTION, tools=TOOLS, tool_choice="auto")  # type: ignore[arg-type]
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "call_remote_1",
        "add",
        json.loads(ARGS),
    )
    assert remote.bodies[-1]["tools"] == TOOLS and remote.bodies[-1]["tool_choice"] == "auto"

    follow_up = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "46"},
    ]
    r2 = client.chat.completions.create(model="remote", messages=follow_up, tools=TOOLS)  # type: ignore[arg-type]
    assert r2.choices[0].finish_reason == "stop" and r2.choices[0].message.content == "Hello there!"
    sent = remote.bodies[-1]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == call.id and sent[1]["tool_calls"][0]["function"]["name"] == "add"
    assert sent[2] == {"role": "tool", "content": "46", "tool_call_id": call.id}


def test_streamed_tool_call_deltas(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="remote", messages=QUESTION, tools=TOOLS, stream=True)  # type: ignore[arg-type]
    args, names, finish = "", "", None
    for chunk in stream:
        for c in chunk.choices:
            for d in c.delta.tool_calls or []:
                assert d.index == 0
                names += (d.function.name or "") if d.function else ""
                args += (d.function.arguments or "") if d.function else ""
            finish = c.finish_reason or finish
    assert (names, args, finish) == ("add", ARGS, "tool_calls")


def test_fields_pass_through_to_the_remote_server(client: openai.OpenAI, remote: ToolServer) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}, "strict": True}}
    client.chat.completions.create(
        model="remote",
        messages=QUESTION,
        temperature=0.5,
        presence_penalty=0.5,
        frequency_penalty=0.25,
        logit_bias={"7": 5},
        response_format=fmt,  # type: ignore[arg-type]
        extra_body={"top_k": 4, "min_p": 0.05, "repetition_penalty": 1.1, "min_tokens": 1, "ignore_eos": True},
    )
    body = remote.bodies[-1]
    expected = {
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "logit_bias": {"7": 5.0},
        "response_format": fmt,
        "top_k": 4,
        "min_p": 0.05,
        "repetition_penalty": 1.1,
        "min_tokens": 1,
        "ignore_eos": True,
    }
    assert {k: body.get(k) for k in expected} == expected
    client.completions.create(model="remote", prompt=[5, 6, 7], max_tokens=3)
    assert remote.bodies[-1]["prompt"] == [5, 6, 7]


def test_prompt_logprobs_refused_on_a_remote_expert(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="remote", prompt="hi", max_tokens=2, extra_body={"prompt_logprobs": 1})
    assert err.value.body["param"] == "prompt_logprobs"
