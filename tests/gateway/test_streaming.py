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
from tests.helpers import serving


class FailsMidStream(Executor):
    """A real Executor that streams two increments, then its engine fails."""

    kind = "expert"

    async def stream(self, request: ExecRequest) -> AsyncIterator[ExecEvent]:
        yield Chunk(text="he")
        yield Chunk(text="llo")
        raise EngineError("engine process died")


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


def test_client_disconnect_aborts_engine_request(app_and_url) -> None:
    """A real engine: the abandoned row is dropped and the engine serves the next request."""
    _, url = app_and_url
    body = {"model": "toy-big", "prompt": "Q: rev abc\nA: ", "stream": True, "max_tokens": 200, "stop": ["never"]}
    with httpx.stream("POST", f"{url}/completions", json=body) as r:
        next(r.iter_lines())
    r = httpx.post(f"{url}/completions", json={"model": "toy-big", "prompt": "Q: rev ab\nA: ", "max_tokens": 4})
    assert r.status_code == 200


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
