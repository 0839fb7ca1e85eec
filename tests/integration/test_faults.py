"""Faults (issue 9): engines that hang, fail or die in the middle of a chain, a DAG and a single expert; client
disconnects; a spec hot reload under load; SIGTERM drains (the real ``swarmgate serve`` in a subprocess).

Local experts run on the real transformers engine (vLLM: the marked test kills its engine core); hangs and errors
come from ``engine: openai`` experts on a small real local HTTP server (``stall``: one token then silence,
``http-500``, ``endless``). After every test the gateway is healthy and idle: no slot, no queue, in-flight gauge 0.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.api.app import create_app
from gateway.settings import Settings
from tests.gateway._fixtures_openai_server import FakeOpenAIServer
from tests.helpers import REPO, free_port, serving
from tests.integration.test_hardening import REMOTE, get, idle_state, post, wait_idle, write_world_spec

ASK = [{"role": "user", "content": "add 12 34"}]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture(scope="module")
def world(toy_world, fake, tmp_path_factory) -> Iterator[tuple[Any, str, Path]]:
    tmp = tmp_path_factory.mktemp("faults")
    spec = write_world_spec(tmp, toy_world, fake.url)
    app = create_app(Settings(spec=spec, engine="transformers", request_timeout_s=3, max_concurrency=8, max_queue=64))
    with serving(app) as url:
        yield app, url.removesuffix("/v1"), tmp


@pytest.fixture
def gw(world) -> Iterator[tuple[Any, str, Path]]:
    wait_idle(world[0])
    yield world
    app, base, _ = world
    wait_idle(app)
    assert get(base + "/ready").status_code == 200


def sse_error(text: str) -> dict | None:
    for line in text.splitlines():
        if line.startswith("data: {") and '"error"' in line:
            return json.loads(line[6:])["error"]
    return None


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(
    ("model", "status", "code"),
    [
        ("remote-hang", 504, "engine_timeout"),
        ("dag-hang", 504, "engine_timeout"),
        ("chain-hang", 504, "engine_timeout"),
        ("remote-error", 502, "engine_error"),
        ("dag-error", 502, "engine_error"),
        ("chain-error", 502, "engine_error"),
    ],
)
def test_engine_fault_in_expert_dag_and_chain(gw, model: str, status: int, code: str, stream: bool) -> None:
    """A hang is a 504 within the request timeout, an error a 502; after a stream began, one error frame then
    [DONE]. Either way the slot is freed and the gateway stays ready (checked by the fixture)."""
    _, base, _ = gw
    t0 = time.monotonic()
    r = post(base + "/v1/chat/completions", json={"model": model, "messages": ASK, "max_tokens": 4, "stream": stream})
    assert time.monotonic() - t0 < 20
    if r.status_code == 200:  # the stream began (a DAG reports its first node): the error is a frame
        assert stream
        err = sse_error(r.text)
        assert err is not None and err["code"] == code, r.text
        assert r.text.rstrip().endswith("data: [DONE]")
    else:
        assert r.status_code == status, r.text
        assert r.json()["error"]["code"] == code


def test_streaming_dag_disconnect_during_first_node_cancels_it(gw, fake) -> None:
    """Finding 10: a streaming DAG whose client leaves while the first node runs cancels that node's upstream call."""
    app, base, _ = gw
    closed = fake.closed_streams.count("endless")
    with pytest.raises(httpx.TimeoutException):
        body = {"model": "dag-first-endless", "messages": ASK, "max_tokens": 4, "stream": True}
        with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=1.0) as r:
            r.read()
    deadline = time.monotonic() + 15
    while fake.closed_streams.count("endless") <= closed:
        assert time.monotonic() < deadline, f"first node still running: {idle_state(app)}"
        time.sleep(0.05)
    text = get(base + "/metrics").text
    assert 'model="dag-first-endless",status="499"' in text
    assert 'status="500"' not in text


def test_hot_reload_under_load_loses_no_request(gw, fake, toy_world) -> None:
    """Finding 7: reloads that replace an engine while requests run and queue: every request answers 200 (each
    finishes on the executor it started with); the replaced engine closes once its last request ended."""
    app, base, tmp = gw
    holder = app.state.holder
    replaced: list[Any] = []  # toy-adder's own engine after the first reload, replaced by the second
    results: list[tuple[str, int, str]] = []
    stop = threading.Event()
    bodies = [
        ("toy-adder", False),
        ("toy-adder", True),
        ("dag-ok", True),
        ("remote-ok", False),
    ]

    def load(i: int) -> None:
        model, stream = bodies[i % len(bodies)]
        while not stop.is_set():
            r = post(
                base + "/v1/chat/completions",
                json={"model": model, "messages": ASK, "max_tokens": 4, "stream": stream, "temperature": 0},
            )
            err = sse_error(r.text) if stream else None
            results.append((model, r.status_code, json.dumps(err) if err else ""))

    threads = [threading.Thread(target=load, args=(i,)) for i in range(8)]
    settings = app.state.settings
    timeout, settings.request_timeout_s = settings.request_timeout_s, 120  # slow CPUs while a base model loads
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        for args in ({"max_batch_size": 8}, {"max_batch_size": 16}):
            write_world_spec(tmp, toy_world, fake.url, adder_args=args)  # a new engine for toy-adder
            r = post(base + "/admin/reload", timeout=300)
            assert r.status_code == 200, r.text
            replaced.append(holder.runtime.experts["toy-adder"].engine)
            time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
        settings.request_timeout_s = timeout
    bad = [x for x in results if x[1] != 200 or x[2]]
    assert len(results) >= 8 and not bad, bad[:5]
    assert replaced[0] is not replaced[1] and holder.runtime.experts["toy-adder"].engine is replaced[1]
    deadline = time.monotonic() + 30
    while getattr(replaced[0], "_thread", None) is not None:  # closed once nothing uses it
        assert time.monotonic() < deadline, "the replaced engine was never closed"
        time.sleep(0.1)
    write_world_spec(tmp, toy_world, fake.url)
    assert post(base + "/admin/reload", timeout=300).status_code == 200


def test_dead_local_engine_turns_ready_and_health_503(toy_world, tmp_path) -> None:
    """Finding 6: a local engine that died is reported (/ready and /health 503) instead of failing forever."""
    root = Path(toy_world.root)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"experts": {"toy-base": {"engine": "transformers", "model": str(root / "base")}}}))
    app = create_app(Settings(spec=spec, request_timeout_s=3))
    with serving(app) as url:
        base = url.removesuffix("/v1")
        assert get(base + "/ready").status_code == 200
        engine = app.state.holder.runtime.experts["toy-base"].engine
        engine._jobs.put(None)  # the worker thread exits, as if it had crashed
        engine._thread.join(timeout=30)
        r = get(base + "/ready")
        assert r.status_code == 503 and r.json()["status"] == "engine_dead"
        assert get(base + "/health").status_code == 503
        r = post(base + "/v1/completions", json={"model": "toy-base", "prompt": "Q: rev ab\nA: ", "max_tokens": 2})
        assert r.status_code in (502, 504)
        assert app.state.serving.limiter.in_use == 0


@pytest.mark.vllm
@pytest.mark.slow
def test_killed_vllm_engine_core_is_reported_and_requests_fail_fast(toy_world, tmp_path) -> None:
    """Finding 6 on vLLM: kill the engine-core process; requests get 502 (not a hang), /ready and /health 503."""
    import psutil

    root = Path(toy_world.root)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"experts": {"toy-base": {"engine": "vllm", "model": str(root / "base")}}}))
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    app = create_app(Settings(spec=spec, request_timeout_s=30))
    with serving(app, timeout_s=600) as url:
        base = url.removesuffix("/v1")
        body = {"model": "toy-base", "prompt": "Q: rev ab\nA: ", "max_tokens": 2, "temperature": 0}
        assert post(base + "/v1/completions", json=body).status_code == 200
        cores = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
        assert cores, "no vLLM engine-core process found"
        for p in cores:
            p.kill()
        deadline = time.monotonic() + 60
        while get(base + "/ready").status_code != 503:
            post(base + "/v1/completions", json=body)  # the engine notices its core died on the next request
            assert time.monotonic() < deadline, "a dead vLLM engine core was never reported"
            time.sleep(0.5)
        assert get(base + "/ready").json()["status"] == "engine_dead"
        assert get(base + "/health").status_code == 503
        t0 = time.monotonic()
        assert post(base + "/v1/completions", json=body).status_code == 502
        assert time.monotonic() - t0 < 10
        assert app.state.serving.limiter.in_use == 0


# --------------------------------------------------------------------------------------------- 9, 16: CLI + SIGTERM
def remote_spec(tmp: Path, url: str) -> Path:
    spec = tmp / "remote.yaml"
    experts = {name: {"engine": "openai", "url": url, "model": model} for name, model in REMOTE.items()}
    spec.write_text(yaml.safe_dump({"experts": experts}))
    return spec


def start_cli(spec: Path, port: int, **env: str) -> subprocess.Popen:
    """``swarmgate serve`` with no flags: host, port and log level come from the environment (finding 9)."""
    full = {**os.environ, "SWARMGATE_SPEC": str(spec), "SWARMGATE_HOST": "127.0.0.1", "SWARMGATE_PORT": str(port)}
    full.update(SWARMGATE_LOG_LEVEL="warning", **env)
    proc = subprocess.Popen([sys.executable, "-m", "swarmgate.cli", "serve"], cwd=REPO, env=full)
    deadline = time.monotonic() + 120
    try:
        while True:
            assert proc.poll() is None, f"swarmgate serve exited with {proc.returncode}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    return proc
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "swarmgate serve did not become ready on SWARMGATE_PORT"
            time.sleep(0.3)
    except BaseException:
        proc.kill()  # never leave a server behind (e.g. one that bound another port)
        proc.wait()
        raise


def test_sigterm_drains_in_flight_and_refuses_new_work(fake, tmp_path) -> None:
    """Findings 9 and 16: env host/port are honoured; on SIGTERM /ready is 503 at once, new requests 503, the
    in-flight request still finishes (200), then the process exits."""
    port = free_port()
    proc = start_cli(remote_spec(tmp_path, fake.url), port, SWARMGATE_DRAIN_TIMEOUT_S="30")
    base = f"http://127.0.0.1:{port}"
    try:
        result: list[httpx.Response] = []
        body = {"model": "remote-hang", "messages": ASK, "max_tokens": 1}  # one token, then ~5 s of silence
        worker = threading.Thread(target=lambda: result.append(post(base + "/v1/chat/completions", json=body)))
        worker.start()
        time.sleep(1.0)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        r = httpx.get(base + "/ready", timeout=5)
        assert r.status_code == 503 and r.json()["status"] == "draining"
        r = httpx.post(base + "/v1/chat/completions", json={**body, "model": "remote-ok"}, timeout=5)
        assert r.status_code == 503 and r.json()["error"]["code"] == "draining"
        worker.join(timeout=60)
        assert result and result[0].status_code == 200, result
        proc.wait(timeout=30)
        assert time.monotonic() - t0 < 30
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_drain_is_bounded(fake, tmp_path) -> None:
    """Finding 16: a request longer than drain_timeout_s is cancelled at the bound; the process exits promptly and
    the upstream generation is closed."""
    port = free_port()
    proc = start_cli(remote_spec(tmp_path, fake.url), port, SWARMGATE_DRAIN_TIMEOUT_S="1")
    base = f"http://127.0.0.1:{port}"
    closed = fake.closed_streams.count("endless")
    try:
        body = {"model": "remote-endless", "prompt": "x", "max_tokens": 300, "stream": True}
        with httpx.stream("POST", base + "/v1/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()
            next(lines)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                for _ in lines:
                    pass
            except httpx.HTTPError:
                pass  # the connection closed under us: expected
        proc.wait(timeout=30)
        assert time.monotonic() - t0 < 15
        deadline = time.monotonic() + 10
        while fake.closed_streams.count("endless") <= closed:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
