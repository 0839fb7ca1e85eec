"""``kind: blend`` through the real ``openai`` SDK against a real uvicorn gateway (transformers engine, toy world)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from tests.helpers import running_gateway

pytestmark = pytest.mark.timeout(600)

MEMBERS = ["toy-big", "toy-adder", "toy-reverser"]


@pytest.fixture(scope="module")
def client(toy_world: Any, tmp_path_factory: Any) -> openai.OpenAI:
    spec = yaml.safe_load(Path(toy_world.spec_path).read_text())
    for e in spec["experts"].values():
        for key in ("model", "adapter"):
            if key in e:
                e[key] = str(Path(toy_world.root) / e[key])
    spec["ensembles"] = {
        "toy-blend": {"kind": "blend", "experts": MEMBERS, "weights": [0.5, 0.3, 0.2], "speculate": 4},
        "toy-blend-naive": {"kind": "blend", "experts": MEMBERS, "weights": [0.5, 0.3, 0.2], "speculate": 0},
    }
    path = tmp_path_factory.mktemp("blend") / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    with running_gateway(path) as url:
        yield openai.OpenAI(base_url=url, api_key="unused", max_retries=0)


def ask(**kw: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "rev abcdef"}], "max_tokens": 12, **kw}


def test_listed_and_greedy_speculative_equals_naive(client: openai.OpenAI) -> None:
    assert {"toy-blend", "toy-blend-naive"} <= {m.id for m in client.models.list().data}
    a = client.chat.completions.create(model="toy-blend", **ask(temperature=0))
    b = client.chat.completions.create(model="toy-blend-naive", **ask(temperature=0))
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.choices[0].finish_reason in ("stop", "length")
    route = a.model_extra["swarmgate"]
    steps = route["steps"] if isinstance(route, dict) and "steps" in route else route
    text = str(steps)
    for m in MEMBERS:
        assert m in text
    assert "acceptance_rate" in text and "fraction_blended" in text
    # usage: each member's prompt and completion tokens (every member scored the answer)
    assert a.usage.total_tokens == a.usage.prompt_tokens + a.usage.completion_tokens
    assert a.usage.prompt_tokens == 3 * len("Q: rev abcdef\nA: ")


def test_streaming_with_usage_equals_non_streaming(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model="toy-blend", **ask(temperature=0))
    parts, usage = [], None
    for chunk in client.chat.completions.create(
        model="toy-blend", stream=True, stream_options={"include_usage": True}, **ask(temperature=0)
    ):
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(parts) == full.choices[0].message.content
    assert usage is not None and usage.completion_tokens == full.usage.completion_tokens


def test_n_seed_stop_and_logprobs(client: openai.OpenAI) -> None:
    kw = ask(temperature=1.0, top_p=0.95, seed=11, n=3)
    a = client.chat.completions.create(model="toy-blend", **kw)
    b = client.chat.completions.create(model="toy-blend", **kw)
    assert len(a.choices) == 3
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]  # seeded
    greedy = client.chat.completions.create(model="toy-blend", **ask(temperature=0)).choices[0].message.content
    stop = greedy[2]
    r = client.chat.completions.create(model="toy-blend", **ask(temperature=0, stop=[stop]))
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content == greedy[: greedy.index(stop)]
    r = client.completions.create(model="toy-blend", prompt="Q: rev abcdef\nA: ", max_tokens=4, temperature=0)
    assert r.choices[0].text == greedy[:4] or greedy.startswith(r.choices[0].text)
    lp = client.chat.completions.create(model="toy-blend", **ask(temperature=0, logprobs=True, top_logprobs=2))
    content = lp.choices[0].logprobs.content
    assert content and all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in content)


@pytest.mark.parametrize(
    ("field", "extra"),
    [
        ("frequency_penalty", {"frequency_penalty": 0.5}),
        ("top_k", {"top_k": 3}),
        ("logit_bias", {"logit_bias": {"5": 10}}),
        ("response_format", {"response_format": {"type": "json_object"}}),
    ],
)
def test_fields_a_blend_cannot_honour_are_refused(client: openai.OpenAI, field: str, extra: dict[str, Any]) -> None:
    body = ask(temperature=0)
    sdk = {k: v for k, v in extra.items() if k in ("frequency_penalty", "logit_bias", "response_format")}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="toy-blend", **body, **sdk, extra_body={k: v for k, v in extra.items() if k not in sdk} or None
        )
    assert err.value.status_code == 400
    assert err.value.body["param"] == field and "blend" in err.value.body["message"]
