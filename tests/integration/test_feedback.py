"""POST /v1/feedback on a real gateway (toy world, transformers engine) with the real openai SDK and httpx."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest

from router.retrain import digest_log, read_feedback
from tests.helpers import running_gateway


@pytest.fixture(scope="module")
def gateway(toy_world, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    log = tmp_path_factory.mktemp("feedback") / "requests.jsonl"
    with running_gateway(toy_world.spec_path, request_log=log) as url:
        yield url, log


def test_feedback_is_stored_with_the_request_and_read_by_retrain(gateway: tuple[str, Path]) -> None:
    url, log = gateway
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
    r = client.chat.completions.create(
        model="toy-adder", messages=[{"role": "user", "content": "add 12 34"}], temperature=0, max_tokens=16
    )
    fb = httpx.post(f"{url}/feedback", json={"id": r.id, "score": 0.0, "answer": "46"}, timeout=30)
    assert fb.status_code == 200, fb.text
    body = fb.json()
    assert body["object"] == "feedback" and body["id"] == r.id and body["model"] == "toy-adder"
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x.get("type") for x in lines if x.get("request_id") == r.id] == [None, "feedback"]
    got = read_feedback([log])[r.id]
    assert got.score == 0.0 and got.answer == "46"
    assert digest_log([log], ["toy-adder"]).finals[r.id] == ("add 12 34", r.choices[0].message.content.strip())


@pytest.mark.parametrize(
    ("payload", "status", "param"),
    [
        ({"id": "chatcmpl-nope", "score": 1.0}, 404, "id"),
        ({"id": "x", "score": 1.5}, 400, "score"),
        ({"id": "x"}, 400, "score"),
        ({"score": 1.0}, 400, "id"),
        ({"id": "x", "score": 1.0, "rating": 5}, 400, "rating"),
        ({"id": "x", "score": "good"}, 400, "score"),
    ],
)
def test_bad_feedback_gets_an_openai_shaped_error(
    gateway: tuple[str, Path], payload: dict, status: int, param: str
) -> None:
    url, _ = gateway
    r = httpx.post(f"{url}/feedback", json=payload, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert err["param"] == param, err


def test_feedback_without_a_request_log_is_refused(toy_world) -> None:
    with running_gateway(toy_world.spec_path) as url:
        r = httpx.post(f"{url}/feedback", json={"id": "chatcmpl-x", "score": 1.0}, timeout=30)
    assert r.status_code == 409 and r.json()["error"]["code"] == "feedback_disabled"
