"""Test helpers: a real gateway on a real port (uvicorn in a thread, or the real CLI in a subprocess)."""

from __future__ import annotations

import contextlib
import os
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
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_gateway(spec_path: str | os.PathLike[str], *, timeout_s: float = 300, **settings: Any) -> Iterator[str]:
    """Serve ``spec_path`` with ``create_app(Settings(spec=..., **settings))`` on a free port; yield ``.../v1``.

    Experts with ``engine: auto`` run on the transformers engine unless ``engine=`` says otherwise.
    """
    from gateway.api.app import create_app
    from gateway.settings import Settings

    settings.setdefault("engine", "transformers")
    app = create_app(Settings(spec=Path(spec_path), host="127.0.0.1", **settings))
    with serving(app, timeout_s=timeout_s) as url:
        yield url


@contextlib.contextmanager
def serving(app: Any, *, timeout_s: float = 300) -> Iterator[str]:
    """Run an ASGI app with uvicorn in a background thread (its own event loop) on a free port; yield ``.../v1``.

    The app's lifespan runs as in production (engines loaded on start, closed on exit).
    """
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
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
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=60)


@contextlib.contextmanager
def gateway_process(
    spec_path: str | os.PathLike[str], *, env: dict[str, str] | None = None, timeout_s: float = 300, args: tuple = ()
) -> Iterator[str]:
    """Run the real ``swarmgate serve`` CLI in a subprocess; yield its ``.../v1`` URL once /ready answers."""
    port = free_port()
    cmd = [sys.executable, "-m", "swarmgate.cli", "serve", "--spec", str(spec_path), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--log-level", "warning", *args]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **(env or {})})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"swarmgate serve exited with {proc.returncode}")
            try:
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("swarmgate serve did not become ready in time")
            time.sleep(0.5)
        yield f"{base}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
