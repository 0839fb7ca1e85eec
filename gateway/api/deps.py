"""Request dependencies: the app's services (from ``app.state``, never module globals) and API-key auth."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from gateway.api.metrics import Metrics
from gateway.api.serving import OpenAIServing
from gateway.errors import AuthenticationError
from gateway.runtime import RuntimeHolder
from gateway.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_serving(request: Request) -> OpenAIServing:
    return request.app.state.serving


def get_holder(request: Request) -> RuntimeHolder:
    return request.app.state.holder


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
ServingDep = Annotated[OpenAIServing, Depends(get_serving)]
HolderDep = Annotated[RuntimeHolder, Depends(get_holder)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


def require_api_key(request: Request, settings: SettingsDep) -> None:
    """Bearer-key check when keys are configured; constant-time compare against every key; never logs the key."""
    if not settings.api_keys:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("Missing API key: send 'Authorization: Bearer <key>'.")
    given = token.strip().encode()
    ok = False
    for key in settings.api_keys:
        ok |= hmac.compare_digest(given, key.encode())
    if not ok:
        raise AuthenticationError("Incorrect API key provided.")


AuthDep = Depends(require_api_key)
