"""Request dependencies: the app's services (from ``app.state``, never module globals) and API-key auth.

Every dependency is a coroutine: FastAPI runs a plain-function dependency in a worker thread (``run_in_threadpool``),
one thread hop per dependency per request, which a profile of the toy expert path showed at ~7% of the event loop's
busy time. None of these blocks, so they run on the event loop.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.api.guard import admin_allowed, any_key_ok, bearer, check_inference_key
from gateway.api.metrics import Metrics
from gateway.api.serving import OpenAIServing
from gateway.runtime import RuntimeHolder
from gateway.settings import Settings


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_serving(request: Request) -> OpenAIServing:
    return request.app.state.serving


async def get_holder(request: Request) -> RuntimeHolder:
    return request.app.state.holder


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
ServingDep = Annotated[OpenAIServing, Depends(get_serving)]
HolderDep = Annotated[RuntimeHolder, Depends(get_holder)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


async def require_api_key(request: Request) -> None:
    """The bearer-key check when keys are configured (``FrontDoor`` already enforced it before the body was read;
    kept so a route is safe on its own)."""
    check_inference_key(request.app.state.settings, bearer(request.scope.get("headers", [])))


async def require_admin_key(request: Request, settings: SettingsDep) -> None:
    """``/admin/*``: an admin key, or loopback when no key is configured at all (see ``guard.admin_allowed``)."""
    client = request.client.host if request.client else None
    admin_allowed(settings, bearer(request.scope.get("headers", [])), client)


def has_any_key(request: Request, settings: Settings) -> bool:
    """The caller may see details (``/ready`` body, metrics): no key is configured, or it sent a valid one."""
    return any_key_ok(settings, bearer(request.scope.get("headers", [])))


AuthDep = Depends(require_api_key)
AdminDep = Depends(require_admin_key)
