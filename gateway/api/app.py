"""``create_app(settings)``: the FastAPI app, with everything built in its lifespan (no module-level state)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from gateway.api import chat, completions, health, models
from gateway.api.errors import install_error_handlers
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
    install_error_handlers(app)
    for module in (chat, completions, models, health):
        app.include_router(module.router)
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
