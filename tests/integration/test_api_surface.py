"""Every request field is honoured or refused, never silently dropped: a real gateway over the toy world
(transformers engine, plus a DAG and a routed chain), called over HTTP and with the real ``openai`` SDK.

- each field an engine or a composition can't honour: 400 in OpenAI's error shape, ``param`` naming the field;
- unknown top-level fields: served (as OpenAI does) and listed in the ``x-swarmgate-ignored-fields`` header;
- ``response_format``: the answer parses and validates against the schema (an expert, and a DAG's final node);
- sampling fields change the output the way they say (``logit_bias``, ``min_tokens``, ``ignore_eos``, ``top_k``),
  ``prompt_logprobs`` come back, token-id prompts equal their text.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.helpers import running_gateway
from tests.integration.test_raw_prompts import ensemble_spec

CHAT = {"model": "toy-adder", "messages": [{"role": "user", "content": "add 12 34"}], "max_tokens": 4}
TEXT = {"model": "toy-adder", "prompt": "Q: add 12 34\nA: ", "max_tokens": 4}
TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "string", "maxLength": 4},
        "ok": {"type": "boolean"},
        "kind": {"enum": ["add", "rev"]},
    },
    "required": ["answer", "ok", "kind"],
    "additionalProperties": False,
}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}}


@pytest.fixture(scope="module")
def base_url(toy_world: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    with running_gateway(ensemble_spec(toy_world, tmp_path_factory.mktemp("surface"))) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)


REFUSED = [
    # fields OpenAI defines that the gateway does not serve
    ("chat", {"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ("chat", {"prediction": {"type": "content", "content": "x"}}, "prediction"),
    ("chat", {"functions": [{"name": "f"}]}, "functions"),
    ("chat", {"function_call": "auto"}, "function_call"),
    ("chat", {"web_search_options": {}}, "web_search_options"),
    ("chat", {"reasoning_effort": "low"}, "reasoning_effort"),
    ("chat", {"verbosity": "low"}, "verbosity"),
    ("chat", {"store": True}, "store"),
    ("chat", {"modalities": ["text", "audio"]}, "modalities"),
    (
        "chat",
        {"stream": True, "stream_options": {"continuous_usage_stats": True}},
        "stream_options.continuous_usage_stats",
    ),
    ("text", {"best_of": 2}, "best_of"),
    ("text", {"echo": True}, "echo"),
    ("text", {"suffix": "x"}, "suffix"),
    # engines that can't honour a field
    ("chat", {"tools": TOOLS}, "tools"),  # transformers: no tool parser
    ("chat", {"tools": TOOLS, "tool_choice": "required"}, "tools"),
    ("text", {"model": "toy-big", "prompt": [[5, 6], [10**6]]}, "prompt"),  # token ids outside the vocabulary
    # compositions where no single node owns the field
    ("chat", {"model": "toy-router-addrev", "response_format": {"type": "json_object"}}, "response_format"),
    ("chat", {"model": "toy-router-addrev", "tools": TOOLS}, "tools"),
    ("text", {"model": "toy-dag-addrev", "prompt_logprobs": 1}, "prompt_logprobs"),
    ("text", {"model": "toy-dag-addrev", "prompt": [5, 6, 7]}, "prompt"),
    # invalid values
    ("chat", {"tool_choice": "required"}, "tool_choice"),
    ("chat", {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ("chat", {"logit_bias": {"x": 1}}, "logit_bias"),
    ("chat", {"logit_bias": {"5": 500}}, "logit_bias"),
    ("chat", {"top_k": -2}, "top_k"),
    ("chat", {"min_p": 1.5}, "min_p"),
    ("chat", {"repetition_penalty": 0}, "repetition_penalty"),
    ("chat", {"frequency_penalty": 3}, "frequency_penalty"),
    ("chat", {"presence_penalty": -3}, "presence_penalty"),
    ("chat", {"min_tokens": 9}, "min_tokens"),  # more than max_tokens
    ("text", {"prompt_logprobs": 1, "stream": True}, "prompt_logprobs"),
    ("chat", {"response_format": {"type": "json_schema"}}, "response_format"),
    ("chat", {"response_format": {"type": "xml"}}, "response_format.type"),
    ("chat", {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 5}}}}, None),
    ("chat", {"messages": [{"role": "tool", "content": "3"}]}, "messages[0]"),
]


@pytest.mark.parametrize(("endpoint", "fields", "param"), REFUSED, ids=[f"{e}-{p}" for e, _, p in REFUSED])
def test_refused_field_is_a_400_naming_it(base_url: str, endpoint: str, fields: dict, param: str | None) -> None:
    body = {**(CHAT if endpoint == "chat" else TEXT), **fields}
    path = "/chat/completions" if endpoint == "chat" else "/completions"
    r = httpx.post(base_url + path, json=body, timeout=120)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    if param is None:  # a nested schema error: the param points into response_format
        assert err["param"].startswith("response_format"), err
    else:
        assert err["param"] == param, err


def test_unknown_fields_are_listed_in_a_header(base_url: str) -> None:
    r = httpx.post(base_url + "/chat/completions", json={**CHAT, "metadata": {"a": "b"}, "zz_custom": 1}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["x-swarmgate-ignored-fields"] == "metadata,zz_custom"
    clean = httpx.post(base_url + "/chat/completions", json=CHAT, timeout=60)
    assert "x-swarmgate-ignored-fields" not in clean.headers


@pytest.mark.parametrize("model", ["toy-big", "toy-dag-addrev"])
def test_json_schema_response_validates(client: openai.OpenAI, model: str) -> None:
    for seed in range(2):
        r = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "addrev 12 34"}],
            response_format=JSON_SCHEMA,  # type: ignore[arg-type]
            temperature=1.0,
            seed=seed,
            max_tokens=60,
        )
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content or ""), SCHEMA)
    text = client.completions.create(
        model="toy-big",
        prompt="Q: add 1 2\nA: ",
        max_tokens=60,
        temperature=0,
        extra_body={"response_format": JSON_SCHEMA},
    )
    jsonschema.validate(json.loads(text.choices[0].text), SCHEMA)


def test_sampling_fields_change_the_output(client: openai.OpenAI) -> None:
    def ask(**kw: Any) -> Any:
        return client.completions.create(model="toy-adder", prompt="Q: add 12 34\nA: ", temperature=0, **kw)

    plain = ask(max_tokens=8)
    assert plain.choices[0].text == "46"
    seven = 28  # the toy char tokenizer's id of "7" (ids 21..30 are "0".."9")
    assert ask(max_tokens=4, logit_bias={str(seven): 100}).choices[0].text == "7777"
    assert ask(max_tokens=6, extra_body={"ignore_eos": True}).usage.completion_tokens == 6
    assert ask(max_tokens=6, extra_body={"min_tokens": 5}).usage.completion_tokens >= 5
    top1 = client.completions.create(
        model="toy-adder", prompt="Q: add 12 34\nA: ", temperature=1.5, seed=3, max_tokens=8, extra_body={"top_k": 1}
    )
    assert top1.choices[0].text == "46"  # top_k=1 is greedy at any temperature


def test_prompt_logprobs_and_token_prompts(client: openai.OpenAI, base_url: str, toy_world: Any) -> None:
    from transformers import AutoTokenizer

    r = httpx.post(base_url + "/completions", json={**TEXT, "prompt_logprobs": 1}, timeout=60).json()
    lps = r["choices"][0]["prompt_logprobs"]
    assert lps[0] is None and len(lps) == r["usage"]["prompt_tokens"]
    assert all(v["logprob"] <= 0 for entry in lps[1:] for v in entry.values())
    ids = AutoTokenizer.from_pretrained(str(toy_world.root / "big"))(TEXT["prompt"])["input_ids"]
    by_ids = client.completions.create(model="toy-big", prompt=ids, max_tokens=4, temperature=0)
    by_text = client.completions.create(model="toy-big", prompt=TEXT["prompt"], max_tokens=4, temperature=0)
    assert by_ids.usage.prompt_tokens == len(ids) == by_text.usage.prompt_tokens
    assert by_ids.choices[0].text == by_text.choices[0].text != ""  # big's answer (not always right: 46)
