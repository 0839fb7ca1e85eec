"""A routed chain served by the real gateway over the toy world's real checkpoints, called with the real openai SDK.

The policy is scripted (toy-adder, then toy-reverser, then stop; at cost_weight 1 it stops after one call), so the
route is known; training is tested elsewhere. Covers per-request overrides, the route in the body and the metrics,
streaming, the request log, hot reload, and that a corrupted or mismatched policy is refused while the gateway keeps
serving.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from router.deploy import write_chain_spec
from router.policy import POINTER, WEIGHTS_FILE, publish_policy
from router.retrain import digest_log
from tests.helpers import running_gateway
from tests.router.conftest import scripted_policy

EXPERTS = ["toy-base", "toy-adder", "toy-reverser", "toy-sorter", "toy-counter", "toy-big"]
COSTS = [1.0, 1.0, 1.0, 1.0, 1.0, 4.0]


def toy_policy(root: Path, first: str = "toy-adder", second: str = "toy-reverser", **kw: object) -> Path:
    return scripted_policy(root, first, second, experts=kw.pop("experts", EXPERTS), costs=kw.pop("costs", COSTS), **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def served(toy_world, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("chain")
    root = tmp / "policy"
    toy_policy(root)
    spec = write_chain_spec(
        tmp / "spec.yaml", toy_world.spec_path, root, name="toy-router", experts=EXPERTS, max_steps=3
    )
    log = tmp / "requests.jsonl"
    with running_gateway(spec, request_log=log) as url:
        yield url, root, spec, log


@pytest.fixture(scope="module")
def client(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served[0], api_key="unused", max_retries=0)


def ask(client: openai.OpenAI, question: str, **extra: object):
    return client.chat.completions.create(
        model="toy-router",
        messages=[{"role": "user", "content": question}],
        temperature=0,
        max_tokens=8,
        extra_body=extra or None,
    )


def route_of(response) -> list[dict]:
    return response.model_extra["swarmgate"]["choices"][0]["route"]


def test_chain_routes_with_ktp_and_reports_the_route(client: openai.OpenAI) -> None:
    r = ask(client, "addrev 12 34")
    route = route_of(r)
    assert [s["expert"] for s in route] == ["toy-adder", "toy-reverser"]
    assert [s["action"] for s in route] == ["toy-adder", "toy-reverser"]
    assert all(s["decision_ms"] >= 0 for s in route) and "stop_decision_ms" in route[-1]
    assert "output" in route[0] and "output" not in route[-1]
    assert r.model_extra["swarmgate"]["kind"] == "chain" and r.model_extra["swarmgate"]["cost"] == 2.0
    assert r.usage.completion_tokens == sum(s["completion_tokens"] for s in route)
    assert r.choices[0].finish_reason == "stop"


def test_toy_chain_solves_composed_tasks(client: openai.OpenAI, toy_world) -> None:
    rows = [json.loads(x) for x in (Path(toy_world.data_dir) / "addrev" / "test.jsonl").read_text().splitlines()[:8]]
    right = sum(ask(client, row["question"]).choices[0].message.content.strip() == row["answer"] for row in rows)
    assert right >= len(rows) // 2, f"adder > reverser got {right}/{len(rows)} addrev questions"


def test_cost_weight_and_max_steps_overrides(client: openai.OpenAI) -> None:
    assert [s["expert"] for s in route_of(ask(client, "addrev 12 34", cost_weight=1.0))] == ["toy-adder"]
    assert [s["expert"] for s in route_of(ask(client, "addrev 12 34", max_steps=1))] == ["toy-adder"]
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, "addrev 12 34", cost_weight=5.0)
    assert err.value.body["param"] == "cost_weight" and "[0.0, 1.0]" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, "addrev 12 34", max_steps=9)
    assert err.value.body["param"] == "max_steps"


def test_last_allowed_step_streams(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="toy-router",
        messages=[{"role": "user", "content": "addrev 12 34"}],
        temperature=0,
        max_tokens=8,
        stream=True,
        extra_body={"max_steps": 2},
    )
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 2  # token by token from the engine


def test_metrics_count_router_decisions(served, client: openai.OpenAI) -> None:
    ask(client, "addrev 12 34")
    text = httpx.get(served[0].removesuffix("/v1") + "/metrics").text
    assert 'swarmgate_router_decision_seconds_count{model="toy-router"}' in text


def test_request_log_feeds_retraining(served, client: openai.OpenAI) -> None:
    ask(client, "addrev 21 43")
    log = served[3]
    deadline = time.monotonic() + 10
    while not (log.is_file() and "addrev 21 43" in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    digest = digest_log([log], EXPERTS)
    steps = [(a.expert, a.previous) for a in digest.answers if a.question == "addrev 21 43"]
    assert steps[0] == ("toy-adder", "") and steps[1][0] == "toy-reverser" and steps[1][1] != ""


def test_new_version_hot_reloads_and_a_corrupted_one_is_refused(served, client: openai.OpenAI) -> None:
    _, root, _, _ = served
    before = route_of(ask(client, "sortrev dbca"))[0]["policy_version"]

    def corrupted(d: Path) -> None:
        toy_policy(d, publish=False)
        (d / WEIGHTS_FILE).write_bytes(b"\x00" * 16)

    bad = publish_policy(root, corrupted)
    time.sleep(1.2)  # past the executor's reload interval
    r = ask(client, "sortrev dbca")
    assert route_of(r)[0]["policy_version"] == before  # still serving the old version
    toy_policy(root, "toy-sorter", "toy-reverser")  # a good version
    time.sleep(1.2)
    ask(client, "sortrev dbca")  # the first request after the interval triggers the reload
    r = ask(client, "sortrev dbca")
    assert route_of(r)[0]["policy_version"] not in (before, bad.name)
    assert [s["expert"] for s in route_of(r)] == ["toy-sorter", "toy-reverser"]
    assert (root / POINTER).is_file()


@pytest.mark.parametrize("breakage", ["experts", "corrupted"])
def test_unservable_policy_in_a_new_spec_is_refused_and_the_old_one_keeps_serving(
    served, client: openai.OpenAI, tmp_path: Path, breakage: str
) -> None:
    base, _, spec, _ = served
    other = tmp_path / "policy"
    if breakage == "experts":
        toy_policy(other, experts=list(reversed(EXPERTS)), costs=list(reversed(COSTS)))
        message = "the names and their order must match"
    else:
        toy_policy(other)
        (other / "v0001" / WEIGHTS_FILE).write_bytes(b"not safetensors")
        message = "checksum does not match"
    good = spec.read_text()
    data = yaml.safe_load(good)
    data["ensembles"]["toy-router"]["policy"] = str(other)
    spec.write_text(yaml.safe_dump(data))
    try:
        r = httpx.post(base.removesuffix("/v1") + "/admin/reload", timeout=120)
        assert r.status_code == 400
        err = r.json()["error"]
        assert "ensembles.toy-router.policy" in err["message"] and message in err["message"]
        r = ask(client, "addrev 12 34")  # the old spec (and policy) keeps serving
        assert [s["expert"] for s in route_of(r)] in (["toy-adder", "toy-reverser"], ["toy-sorter", "toy-reverser"])
        ready = httpx.get(base.removesuffix("/v1") + "/ready").json()
        assert ready["status"] == "ready" and message in (ready["last_reload_error"] or "")
    finally:
        spec.write_text(good)
        httpx.post(base.removesuffix("/v1") + "/admin/reload", timeout=120)
