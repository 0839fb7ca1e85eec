"""``create_app(settings)``: the FastAPI app, with everything built in its lifespan (no module-level state).

``run_server`` serves it with uvicorn and drains on SIGTERM: ``/ready`` turns 503 and new requests get 503 at once,
in-flight requests finish for up to ``drain_timeout_s``, then the rest are cancelled and the engines close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from gateway.api import chat, completions, feedback, health, models
from gateway.api.errors import install_error_handlers
from gateway.api.guard import FrontDoor, Lifecycle
from gateway.api.metrics import Metrics
from gateway.api.serving import OpenAIServing
from gateway.runtime import RuntimeHolder
from gateway.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    spec_path = settings.spec
    if spec_path is None:
        raise ValueError("Settings.spec is required (the CLI fills in the toy world's spec by default)")
    lifecycle = Lifecycle()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        holder = RuntimeHolder(spec_path, force_engine=settings.engine)
        metrics = Metrics()
        app.state.settings = settings
        app.state.holder = holder
        app.state.metrics = metrics
        app.state.serving = OpenAIServing(settings, holder, metrics)
        await holder.load()  # a bad spec at start-up fails the start (the error names file, key, problem)
        poller = (
            asyncio.create_task(_poll(holder, metrics, settings.spec_reload_interval_s))
            if (settings.spec_reload_interval_s > 0)
            else None
        )
        try:
            yield
        finally:
            if poller is not None:
                poller.cancel()
            await holder.close()

    app = FastAPI(title="swarmgate", version="0.1.0", lifespan=lifespan)
    app.state.lifecycle = lifecycle
    install_error_handlers(app)
    for module in (chat, completions, models, health, feedback):
        app.include_router(module.router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_middleware(FrontDoor, settings=settings, lifecycle=lifecycle)
    return app


async def _poll(holder: RuntimeHolder, metrics: Metrics, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            outcome = await holder.reload_if_changed()
            if outcome != "unchanged":
                metrics.spec_reloads.labels(outcome).inc()
        except Exception:  # keep polling whatever happens
            log.exception("spec poll failed")


# --------------------------------------------------------------------------- OpenAPI: the statuses we really send
_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "integer", "null"]},
            },
        }
    },
}
_DESCRIPTIONS = {
    400: "Invalid request (the field is named in `param`)",
    401: "Missing or wrong API key",
    403: "Admin endpoints closed for this caller",
    404: "Unknown model or path",
    405: "Method not allowed (see the `Allow` header)",
    409: "Conflict with the server's configuration (e.g. feedback without a request log)",
    413: "Request body too large",
    429: "Concurrency limit and queue full",
    500: "Internal error",
    502: "Engine failure",
    503: "Loading, draining, queued too long, or a dead engine",
    504: "Engine timeout",
}
_STATUSES: dict[str, tuple[int, ...]] = {
    "/v1/chat/completions": (400, 401, 404, 413, 429, 502, 503, 504),
    "/v1/completions": (400, 401, 404, 413, 429, 502, 503, 504),
    "/v1/models": (401, 503),
    "/v1/models/{model_id}": (401, 404, 503),
    "/v1/feedback": (400, 401, 404, 409, 413, 503),
    "/admin/reload": (400, 401, 403, 413, 500),
    "/metrics": (401,),
    "/ready": (503,),
    "/health": (503,),
}


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, corrected: no 422 (validation errors are 400), every error status the gateway sends, and
    ``/metrics`` as Prometheus text."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["ErrorResponse"] = _ERROR_SCHEMA
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, operations in schema.get("paths", {}).items():
        for method, op in operations.items():
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            statuses = set(_STATUSES.get(path, ()))
            if method in ("post", "put", "patch"):  # any body can be malformed or too large
                statuses |= {400, 413}
            if path.startswith("/v1/"):  # keys, draining
                statuses |= {401, 503}
            for code in sorted(statuses):
                if path in ("/ready", "/health"):
                    responses[str(code)] = {"description": _DESCRIPTIONS[code]}
                else:
                    responses[str(code)] = {
                        "description": _DESCRIPTIONS[code],
                        "content": {"application/json": {"schema": ref}},
                    }
            if path in ("/v1/chat/completions", "/v1/completions") and "200" in responses:
                content = responses["200"].setdefault("content", {})
                content["text/event-stream"] = {"schema": {"type": "string"}}
            if path == "/metrics" and "200" in responses:
                responses["200"]["content"] = {"text/plain": {"schema": {"type": "string"}}}
    app.openapi_schema = schema
    return schema


# --------------------------------------------------------------------------- serving with a bounded drain
def run_server(app: FastAPI, settings: Settings, *, log_level: str = "info") -> None:
    """Serve ``app`` with uvicorn; the first SIGTERM/SIGINT drains (bounded by ``drain_timeout_s``), a second one
    stops at once."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level.lower(),
        timeout_graceful_shutdown=1,  # after the drain: cancel what is left, don't wait again
    )
    DrainingServer(config, app, settings).run()


class DrainingServer(uvicorn.Server):
    """uvicorn's Server with a drain on the first exit signal (see ``run_server``)."""

    def __init__(self, config: Any, app: FastAPI, settings: Settings):
        super().__init__(config)
        self.gateway_app = app
        self.drain_timeout_s = settings.drain_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._draining = False

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        serving = getattr(self.gateway_app.state, "serving", None)
        if self._draining or self._loop is None or serving is None or self.should_exit:
            super().handle_exit(sig, frame)  # second signal, or not started yet: stop now
            return
        log.warning("%s: draining (up to %g s)", signal.Signals(sig).name, self.drain_timeout_s)
        self.gateway_app.state.lifecycle.draining = True  # /ready 503 and new requests 503 from now on
        self._draining = True
        self._loop.call_soon_threadsafe(self._start_drain, serving, sig, frame)  # we are in a signal handler

    def _start_drain(self, serving: OpenAIServing, sig: int, frame: FrameType | None) -> None:
        self._drain_task = asyncio.get_running_loop().create_task(self._drain(serving, sig, frame))

    async def _drain(self, serving: OpenAIServing, sig: int, frame: FrameType | None) -> None:
        if not await serving.wait_idle(self.drain_timeout_s):
            log.warning("drain timeout: cancelling %d requests still in progress", serving.active)
        else:
            log.info("drained: no request in progress")
        super().handle_exit(sig, frame)
