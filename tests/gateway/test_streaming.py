"""Streaming edge cases: an error after streaming began, a client that disconnects, hot reload of the spec."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.api.app import create_app
from gateway.engines.base import Chunk, EngineError
from gateway.executors.base import ExecEvent, ExecRequest, Executor
from gateway.settings import Settings
from gateway.spec import SpecError
from tests.helpers import serving, wait_until


class FailsMidStream(Executor):
    """A real Executor that streams two increments, then its engine fails."""

    kind = "expert"

    async def stream(self, request: ExecRequest) -> AsyncIterator[ExecEvent]:
        yield Chunk(text="he")
        yield Chunk(text="llo")
        raise EngineError("engine process died")


class FailsAtOnce(Executor):
    """A real Executor whose engine fails before the first event (nothing was streamed yet)."""

    kind = "expert"

    async def stream(self, request: ExecRequest) -> AsyncIterator[ExecEvent]:
        raise EngineError("engine refused the request")
        yield Chunk(text="never")  # pragma: no cover (makes this an async generator)


class SpecBroken(Executor):
    """A real Executor whose model can't be served any more (its spec entry is bad): a SpecError at call time."""

    kind = "expert"

    async def stream(self, request: ExecRequest) -> AsyncIterator[ExecEvent]:
        raise SpecError("spec.yaml", "ensembles.gone.policy", "policy not found")
        yield Chunk(text="never")  # pragma: no cover


class SlowForever(Executor):
    """Streams one token every 10 ms until cancelled; records that it was cancelled."""

    kind = "expert"

    def __init__(self, name: str):
        super().__init__(name)
        self.cancelled = asyncio.Event()
        self.tokens = 0

    async def stream(self, request: ExecRequest) -> AsyncIterator[ExecEvent]:
        try:
            while True:
                self.tokens += 1
                yield Chunk(text="x")
                await asyncio.sleep(0.01)
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled.set()
            raise


@pytest.fixture(scope="module")
def app_and_url(toy_world):
    app = create_app(Settings(spec=toy_world.spec_path, engine="transformers"))
    with serving(app) as url:
        rt = app.state.holder.runtime
        rt.executors["fails"] = FailsMidStream("fails")
        rt.executors["slow"] = SlowForever("slow")
        rt.executors["fails-at-once"] = FailsAtOnce("fails-at-once")
        rt.executors["spec-broken"] = SpecBroken("spec-broken")
        yield app, url


def test_error_after_stream_began_is_one_frame_then_done(app_and_url) -> None:
    _, url = app_and_url
    body = {"model": "fails", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream("POST", f"{url}/chat/completions", json=body) as r:
        assert r.status_code == 200
        frames = [x for x in r.iter_lines() if x.startswith("data: ")]
    assert frames[-1] == "data: [DONE]"
    err = json.loads(frames[-2].removeprefix("data: "))
    assert err["error"]["type"] == "api_error" and "engine process died" in err["error"]["message"]
    contents = [json.loads(f[6:])["choices"][0]["delta"].get("content") for f in frames[:-2]]
    assert "".join(c or "" for c in contents) == "hello"


def test_client_disconnect_cancels_the_run(app_and_url) -> None:
    app, url = app_and_url
    slow: SlowForever = app.state.holder.runtime.executors["slow"]
    body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream("POST", f"{url}/chat/completions", json=body) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i > 5:
                break
    deadline = time.monotonic() + 10
    while not slow.cancelled.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert slow.cancelled.is_set(), "the executor run was not cancelled after the client left"
    produced = slow.tokens
    time.sleep(0.3)
    assert slow.tokens == produced, "the run kept producing after cancellation"
    metrics = httpx.get(url.removesuffix("/v1") + "/metrics").text
    assert 'swarmgate_requests_in_flight{model="slow"} 0.0' in metrics


@pytest.mark.parametrize("stream", [True, False])
def test_failure_before_the_first_event_is_a_plain_502(app_and_url, stream: bool) -> None:
    """Nothing was streamed yet: the client gets an HTTP 502 in OpenAI's error shape, not a 200 event stream."""
    _, url = app_and_url
    body = {"model": "fails-at-once", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    r = httpx.post(f"{url}/chat/completions", json=body)
    assert r.status_code == 502 and r.headers["content-type"].startswith("application/json"), r.text
    err = r.json()["error"]
    assert err["type"] == "api_error" and err["code"] == "engine_error"
    assert set(err) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("stream", [True, False])
def test_spec_error_at_call_time_is_502(app_and_url, stream: bool) -> None:
    """A model whose spec entry can't be served any more answers 502 (the server's fault), never 500 or 4xx."""
    _, url = app_and_url
    body = {"model": "spec-broken", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    r = httpx.post(f"{url}/chat/completions", json=body)
    assert r.status_code == 502, r.text
    assert r.json()["error"]["type"] == "api_error" and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_client_disconnect_aborts_engine_request(app_and_url) -> None:
    """A real engine: the abandoned generation leaves no work behind (the engine's in-flight count returns to 0)
    and the engine serves the next request."""
    app, url = app_and_url
    engine = app.state.holder.runtime.executors["toy-big"].experts()[0].engine
    assert engine.in_flight == 0
    body = {
        "model": "toy-big",
        "prompt": "Q: rev abc\nA: ",
        "stream": True,
        "max_tokens": 200,
        "stop": ["never"],
        "temperature": 1.0,
        "seed": 3,
    }
    with httpx.stream("POST", f"{url}/completions", json=body) as r:
        lines = r.iter_lines()
        next(lines)
    wait_until(lambda: engine.in_flight == 0, timeout_s=10, what="the abandoned generation to be dropped")
    r = httpx.post(f"{url}/completions", json={"model": "toy-big", "prompt": "Q: rev ab\nA: ", "max_tokens": 4})
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in {"stop", "length"}


def test_ready_is_503_while_loading(toy_world) -> None:
    """/ready answers 503 "loading" until the runtime is loaded, then 200 (the endpoint, driven over ASGI).

    Through uvicorn the lifespan loads the engines before the port opens, so a client sees connection refused
    rather than this 503 while a gateway starts; the branch matters for reloads and for servers that bind first.
    """
    from gateway.api.metrics import Metrics
    from gateway.api.serving import OpenAIServing
    from gateway.runtime import RuntimeHolder

    settings = Settings(spec=toy_world.spec_path, engine="transformers")
    app = create_app(settings)
    holder = RuntimeHolder(toy_world.spec_path, force_engine="transformers")
    metrics = Metrics()
    app.state.settings, app.state.holder, app.state.metrics = settings, holder, metrics
    app.state.serving = OpenAIServing(settings, holder, metrics)

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
            r = await c.get("/ready")
            assert r.status_code == 503 and r.json()["status"] == "loading"
            chat = {"model": "toy-base", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
            r = await c.post("/v1/chat/completions", json=chat)
            assert r.status_code == 503 and set(r.json()["error"]) == {"message", "type", "param", "code"}
            await holder.load()
            try:
                r = await c.get("/ready")
                assert r.status_code == 200 and r.json()["status"] == "ready"
            finally:
                await holder.close()

    asyncio.run(go())


def test_spec_polling_reloads_a_changed_spec_and_refuses_a_bad_one(toy_world, tmp_path: Path) -> None:
    """SWARMGATE_SPEC_RELOAD_INTERVAL_S: an edited spec is picked up with no call; a bad edit is refused."""
    spec = tmp_path / "spec.yaml"
    good = f"experts:\n  toy-base: {{model: {toy_world.base_dir}}}\n"
    spec.write_text(good)
    app = create_app(Settings(spec=spec, engine="transformers", spec_reload_interval_s=0.2))
    with serving(app) as url:

        def models() -> set[str]:
            return {m["id"] for m in httpx.get(url + "/models").json()["data"]}

        assert models() == {"toy-base"}
        spec.write_text(good.replace("toy-base:", "toy-base-v2:"))
        wait_until(lambda: models() == {"toy-base-v2"}, timeout_s=60, what="the polled spec to be served")
        spec.write_text(good + "  broken: {model: /does/not/exist}\n")
        wait_until(lambda: app.state.holder.last_error, timeout_s=60, what="the bad spec to be refused")
        assert "experts.broken.model" in app.state.holder.last_error
        assert models() == {"toy-base-v2"}  # the previous spec keeps serving
        chat = {"model": "toy-base-v2", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
        assert httpx.post(url + "/chat/completions", json=chat).status_code == 200
        reloads = httpx.get(url.removesuffix("/v1") + "/metrics").text
        assert 'swarmgate_spec_reloads_total{outcome="ok"} 1.0' in reloads
        assert 'swarmgate_spec_reloads_total{outcome="refused"} 1.0' in reloads


def test_hot_reload_refuses_bad_spec_and_keeps_serving(toy_world, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "experts:\n"
        f"  toy-base: {{model: {toy_world.base_dir}}}\n"
        f"  toy-adder: {{model: {toy_world.base_dir}, adapter: {toy_world.expert_dirs['adder']}}}\n"
    )
    app = create_app(Settings(spec=spec, engine="transformers"))
    with serving(app) as url:
        base = url.removesuffix("/v1")
        good = spec.read_text()
        spec.write_text(good + "  broken: {model: /does/not/exist}\n")
        r = httpx.post(base + "/admin/reload")
        assert r.status_code == 400 and "experts.broken.model" in r.json()["error"]["message"]
        ids = {m["id"] for m in httpx.get(url + "/models").json()["data"]}
        assert "toy-adder" in ids and "broken" not in ids
        chat = {"model": "toy-adder", "messages": [{"role": "user", "content": "add 1 2"}], "max_tokens": 4}
        assert httpx.post(url + "/chat/completions", json=chat).status_code == 200
        spec.write_text(good.replace("toy-adder:", "toy-adder-v2:"))
        r = httpx.post(base + "/admin/reload")
        assert r.status_code == 200 and "toy-adder-v2" in r.json()["models"]
        assert httpx.post(url + "/chat/completions", json={**chat, "model": "toy-adder-v2"}).status_code == 200
        assert httpx.post(url + "/chat/completions", json=chat).status_code == 404
