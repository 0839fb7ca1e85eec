"""Test helpers: a real gateway on a real port (uvicorn in a thread, or the real CLI in a subprocess)."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A port that was free a moment ago (reserve-then-release: racy; prefer ``serving``/``gateway_process``, which
    bind port 0 and read the port they got, or ``refused_port`` for a port nothing answers on)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port held bound but not listening for the block's duration: every connection to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def wait_until(predicate: Any, *, timeout_s: float = 30, interval_s: float = 0.05, what: str = "condition") -> Any:
    """Poll ``predicate()`` until it returns something truthy (returned) or the deadline passes (AssertionError)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


@contextlib.contextmanager
def running_gateway(
    spec_path: str | os.PathLike[str],
    *,
    timeout_s: float = 300,
    graceful_shutdown_s: float | None = None,
    **settings: Any,
) -> Iterator[str]:
    """Serve ``spec_path`` with ``create_app(Settings(spec=..., **settings))`` on a free port; yield ``.../v1``.

    Experts with ``engine: auto`` run on the transformers engine unless ``engine=`` says otherwise.
    """
    from gateway.api.app import create_app
    from gateway.settings import Settings

    settings.setdefault("engine", "transformers")
    app = create_app(Settings(spec=Path(spec_path), host="127.0.0.1", **settings))
    with serving(app, timeout_s=timeout_s, graceful_shutdown_s=graceful_shutdown_s) as url:
        yield url


@contextlib.contextmanager
def serving(app: Any, *, timeout_s: float = 300, graceful_shutdown_s: float | None = None) -> Iterator[str]:
    """Run an ASGI app with uvicorn in a background thread (its own event loop) on a free port; yield ``.../v1``.

    The app's lifespan runs as in production (engines loaded on start, closed on exit). ``graceful_shutdown_s``
    bounds how long the exit waits for requests still running (uvicorn's ``timeout_graceful_shutdown``).
    """
    import uvicorn

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=graceful_shutdown_s,  # type: ignore[arg-type]
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("gateway failed to start (see the log above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError("gateway did not start in time")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]  # bound to port 0: the kernel picked a free one
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=60)


@contextlib.contextmanager
def gateway_process(
    spec_path: str | os.PathLike[str] | None,
    *,
    env: dict[str, str] | None = None,
    timeout_s: float = 300,
    args: tuple = (),
) -> Iterator[str]:
    """Run the real ``swarmgate serve`` CLI in a subprocess; yield its ``.../v1`` URL once /ready answers.

    The server binds port 0 and the URL comes from uvicorn's own "running on" line (no reserve-then-release race).
    ``spec_path=None`` passes no ``--spec`` (the CLI's default, or ``SWARMGATE_SPEC`` in ``env``).
    """
    cmd = [sys.executable, "-m", "swarmgate.cli", "serve", "--host", "127.0.0.1", "--port", "0"]
    if spec_path is not None:
        cmd += ["--spec", str(spec_path)]
    cmd += ["--log-level", "info", *args]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env={**os.environ, **(env or {})}, stderr=subprocess.PIPE, text=True, bufsize=1
    )
    found: list[int] = []

    def pump() -> None:  # forward the server's log and pick the bound port out of it
        assert proc.stderr is not None
        for line in proc.stderr:
            if not found:
                m = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line)
                if m:
                    found.append(int(m.group(1)))
            sys.stderr.write(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"swarmgate serve exited with {proc.returncode}")
            if found:
                try:
                    if httpx.get(f"http://127.0.0.1:{found[0]}/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
            if time.monotonic() > deadline:
                raise TimeoutError("swarmgate serve did not become ready in time")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{found[0]}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=5)
