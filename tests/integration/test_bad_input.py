"""Bad input: each a 4xx in OpenAI's error shape, and the server stays healthy and keeps serving."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import running_gateway

CHAT = {"model": "toy-base", "messages": [{"role": "user", "content": "rev abc"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def base(toy_world) -> str:
    with running_gateway(toy_world.spec_path) as url:
        yield url.removesuffix("/v1")


def assert_openai_error(r: httpx.Response, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    if param is not None:
        assert err["param"] == param, err
    return err


@pytest.mark.parametrize(
    ("path", "payload", "status", "param"),
    [
        ("/v1/chat/completions", b"{not json", 400, None),
        ("/v1/chat/completions", b"[1, 2]", 400, None),
        ("/v1/chat/completions", {**CHAT, "max_tokens": -5}, 400, "max_tokens"),
        ("/v1/chat/completions", {**CHAT, "max_tokens": "ten"}, 400, "max_tokens"),
        ("/v1/chat/completions", {**CHAT, "temperature": 9}, 400, "temperature"),
        ("/v1/chat/completions", {**CHAT, "n": 0}, 400, "n"),
        ("/v1/chat/completions", {**CHAT, "messages": []}, 400, "messages"),
        ("/v1/chat/completions", {**CHAT, "messages": "hello"}, 400, "messages"),
        ("/v1/chat/completions", {**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role"),
        ("/v1/chat/completions", {k: v for k, v in CHAT.items() if k != "model"}, 400, "model"),
        ("/v1/chat/completions", {**CHAT, "model": 7}, 400, "model"),
        ("/v1/chat/completions", {**CHAT, "model": "unknown-model"}, 404, "model"),
        ("/v1/chat/completions", {**CHAT, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ("/v1/chat/completions", {**CHAT, "top_logprobs": 3}, 400, "top_logprobs"),
        ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "x" * 4000}]}, 400, "messages"),
        ("/v1/chat/completions", {**CHAT, "max_tokens": 100000}, 400, "messages"),
        ("/v1/chat/completions", {**CHAT, "stream_options": {"include_usage": True}}, 400, "stream_options"),
        ("/v1/completions", {"model": "toy-base", "prompt": []}, 400, "prompt"),
        ("/v1/completions", {"model": "toy-base", "prompt": "x" * 4000}, 400, "prompt"),
        ("/v1/completions", {"model": "toy-base", "prompt": [1, -2, 3]}, 400, None),  # token ids must be >= 0
        ("/v1/completions", {"model": "toy-base", "prompt": "hi", "logprobs": 99}, 400, "logprobs"),
        ("/v1/completions", {"model": "toy-base", "prompt": "hi", "echo": True}, 400, "echo"),
        ("/v1/models/not-there", None, 404, "model"),
        ("/v1/nothing-here", {}, 404, None),
    ],
)
def test_bad_request_is_4xx_in_openai_shape(base: str, path: str, payload, status: int, param: str | None) -> None:
    if payload is None:
        r = httpx.get(base + path)
    elif isinstance(payload, bytes):
        r = httpx.post(base + path, content=payload, headers={"content-type": "application/json"})
    else:
        r = httpx.post(base + path, json=payload)
    assert_openai_error(r, status, param)
    assert httpx.get(base + "/health").json() == {"status": "ok"}


def test_server_keeps_serving_after_bad_input(base: str) -> None:
    for _ in range(3):
        httpx.post(base + "/v1/chat/completions", content=b"\x00\xff garbage")
    r = httpx.post(base + "/v1/chat/completions", json=CHAT)
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in {"stop", "length"}
    assert httpx.get(base + "/ready").status_code == 200


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample on /metrics, keyed by (name, sorted labels), parsed with prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(httpx.get(base + "/metrics").text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_count_statuses_tokens_and_latency(base: str) -> None:
    """Counters move by exactly what one 404 and one served chat did (values, not just names)."""
    from gateway.api.metrics import UNKNOWN_MODEL

    before = scrape(base)
    missing = httpx.post(base + "/v1/chat/completions", json={**CHAT, "model": "unknown-model"})
    assert missing.status_code == 404
    ok = httpx.post(base + "/v1/chat/completions", json=CHAT)
    assert ok.status_code == 200
    usage = ok.json()["usage"]
    after = scrape(base)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("swarmgate_requests_total", endpoint="chat", model=UNKNOWN_MODEL, status="404") == 1
    assert delta("swarmgate_requests_total", endpoint="chat", model="toy-base", status="200") == 1
    assert delta("swarmgate_request_latency_seconds_count", endpoint="chat", model="toy-base") == 1
    assert delta("swarmgate_request_latency_seconds_sum", endpoint="chat", model="toy-base") > 0
    assert delta("swarmgate_prompt_tokens_total", model="toy-base") == usage["prompt_tokens"] > 0
    assert delta("swarmgate_completion_tokens_total", model="toy-base") == usage["completion_tokens"] > 0
    assert delta("swarmgate_expert_calls_total", expert="toy-base") == 1
    assert after[("swarmgate_requests_in_flight", (("model", "toy-base"),))] == 0
