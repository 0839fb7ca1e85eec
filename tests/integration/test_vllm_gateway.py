"""The product's headline, end to end: the gateway serving the toy world on vLLM, called with the real `openai` SDK.

One gateway runs every ``engine: auto`` expert on in-process vLLM (``auto`` resolved as in production: no engine
forced), another runs the same spec on the transformers engine. Through the first: chat, raw completions, streaming
with usage, a LoRA expert, a routed chain and a DAG; then the same answers from both under greedy decoding.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import openai
import pytest
import yaml

from gateway.api.app import create_app
from gateway.settings import Settings
from router.deploy import chain_spec
from tests.helpers import running_gateway, serving
from tests.router.conftest import scripted_policy
from toyworld.format import render

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

EXPERTS = ["toy-base", "toy-adder", "toy-reverser", "toy-sorter", "toy-counter", "toy-big"]
COSTS = [1.0, 1.0, 1.0, 1.0, 1.0, 4.0]
GREEDY = {"temperature": 0, "max_tokens": 10}

# (model, question, answer): questions of the forms the toy experts were trained on.
CASES = [
    ("toy-adder", "add 23 45", "68"),
    ("toy-adder", "add 51 17", "68"),
    ("toy-reverser", "rev abcdef", "fedcba"),
    ("toy-sorter", "sort dbca", "abcd"),
    ("toy-counter", "count a in abaab", "3"),
    ("toy-dag", "addrev 12 34", "64"),
    ("toy-router", "addrev 12 34", "64"),
    ("toy-dag", "addrev 31 25", "65"),
    ("toy-router", "addrev 31 25", "65"),
]


def _write_spec(toy_world, tmp: Path) -> Path:
    """The toy world's spec plus a routed chain (a scripted policy: adder, then reverser) and a hand-wired DAG."""
    policy = scripted_policy(tmp / "policy", "toy-adder", "toy-reverser", experts=EXPERTS, costs=COSTS)
    spec = chain_spec(toy_world.spec_path, policy, name="toy-router", experts=EXPERTS, max_steps=3)
    topology = {
        "format": "swarmgate.topology/1",
        "nodes": [
            {"id": "adder", "expert": "toy-adder", "prompt": "{question}"},
            {"id": "reverser", "expert": "toy-reverser", "prompt": "{question}{responses}"},
        ],
        "edges": [["adder", "reverser"]],
        "final": "reverser",
        "response_template": "\nP: {response}",
    }
    (tmp / "topology.json").write_text(json.dumps(topology))
    spec["ensembles"]["toy-dag"] = {"kind": "dag", "topology": str(tmp / "topology.json")}
    out = tmp / "spec.yaml"
    out.write_text(yaml.safe_dump(spec, sort_keys=False))
    return out


@pytest.fixture(scope="module")
def spec_path(toy_world, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_spec(toy_world, tmp_path_factory.mktemp("vllm-gateway"))


@pytest.fixture(scope="module")
def vllm_gateway(spec_path: Path):
    """The gateway with no engine forced: ``engine: auto`` must resolve to vLLM here."""
    app = create_app(Settings(spec=spec_path, host="127.0.0.1"))
    with serving(app, timeout_s=600) as url:
        yield url, app


@pytest.fixture(scope="module")
def client(vllm_gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=vllm_gateway[0], api_key="unused", max_retries=0, timeout=300)


def chat(client: openai.OpenAI, model: str, question: str, **kw: object):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], **{**GREEDY, **kw}
    )


def test_auto_experts_run_on_vllm(vllm_gateway) -> None:
    _, app = vllm_gateway
    from gateway.engines.vllm import VLLMEngine

    engines = app.state.holder.runtime.engines
    # toy-base and its four LoRA experts share one engine (multi-LoRA); toy-big has its own.
    assert len(engines) == 2
    assert all(isinstance(e, VLLMEngine) for e in engines.values()), {k: type(e) for k, e in engines.items()}


def test_auto_falls_back_to_transformers_with_a_warning(monkeypatch, caplog) -> None:
    import gateway.engines as engines

    monkeypatch.setattr(engines.importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else object())
    with caplog.at_level(logging.WARNING, logger="gateway.engines"):
        assert engines.resolve_engine_kind("auto") == "transformers"
    assert "falling back to the transformers engine" in caplog.text
    assert engines.resolve_engine_kind("auto", force="vllm") == "vllm"


def test_chat_on_a_lora_expert(client: openai.OpenAI) -> None:
    r = chat(client, "toy-adder", "add 23 45")
    assert r.choices[0].message.content == "68"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    assert r.model_extra["swarmgate"]["choices"][0]["route"][0]["expert"] == "toy-adder"


def test_raw_completion_on_the_trained_prompt_format(client: openai.OpenAI) -> None:
    r = client.completions.create(model="toy-reverser", prompt=render("rev abcdef"), **GREEDY)
    assert r.choices[0].text == "fedcba"
    assert r.choices[0].finish_reason == "stop"


def test_streaming_with_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="toy-sorter",
            messages=[{"role": "user", "content": "sort dbca"}],
            stream=True,
            stream_options={"include_usage": True},
            **GREEDY,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "abcd"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens >= 4 and usage.total_tokens > usage.completion_tokens


def test_routed_chain_on_vllm(client: openai.OpenAI) -> None:
    r = chat(client, "toy-router", "addrev 12 34")
    assert r.choices[0].message.content == "64"
    route = r.model_extra["swarmgate"]["choices"][0]["route"]
    assert [s["expert"] for s in route] == ["toy-adder", "toy-reverser"]
    assert route[0]["output"] == "46"


def test_dag_streams_on_vllm(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="toy-dag",
            messages=[{"role": "user", "content": "addrev 12 34"}],
            stream=True,
            stream_options={"include_usage": True},
            **GREEDY,
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "64"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 4


def test_same_greedy_answers_as_the_transformers_engine(client: openai.OpenAI, spec_path: Path) -> None:
    on_vllm = {(m, q): chat(client, m, q).choices[0].message.content for m, q, _ in CASES}
    with running_gateway(spec_path, engine="transformers") as url:
        hf = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=300)
        on_hf = {(m, q): chat(hf, m, q).choices[0].message.content for m, q, _ in CASES}
    assert on_vllm == on_hf
    # ... and both are right, so agreement is not agreement on garbage.
    assert {(m, q): a for m, q, a in CASES} == on_vllm
