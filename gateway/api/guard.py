"""The gateway's front door, in front of FastAPI (pure ASGI, so it runs before any body is read or parsed).

Per HTTP request, in order:
1. while draining (SIGTERM), new ``/v1/*`` requests get 503 ``draining`` (probes, metrics and admin still answer);
2. keys are checked before the body is read: ``/v1/*`` needs an inference key, ``/admin/*`` an admin key (see
   ``admin_allowed``), ``/metrics`` and the API docs either key (all open when no key is configured);
3. a body larger than ``max_body_bytes`` gets 413, from its ``Content-Length`` or while it arrives, never buffered
   past the limit.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api.errors import error_response
from gateway.errors import AuthenticationError, DrainingError, ForbiddenError, GatewayError, PayloadTooLargeError
from gateway.settings import Settings

LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
DOC_PATHS = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


@dataclass
class Lifecycle:
    """Process state the front door and the probes share."""

    draining: bool = False
    """SIGTERM arrived: refuse new work, let in-flight requests finish (``drain_timeout_s``)."""


def bearer(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The bearer token of an ``Authorization`` header, or None."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer":
                return None
            return token.strip() or None
    return None


def key_matches(token: str | None, keys: list[str]) -> bool:
    """Constant-time compare against every key (never short-circuits, never logs the key)."""
    if not token:
        return False
    given = token.encode()
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given, key.encode())
    return ok


def check_inference_key(settings: Settings, token: str | None) -> None:
    """401 unless no keys are configured or ``token`` is an inference key."""
    if not settings.api_keys:
        return
    if token is None:
        raise AuthenticationError("Missing API key: send 'Authorization: Bearer <key>'.")
    if not key_matches(token, settings.api_keys):
        raise AuthenticationError("Incorrect API key provided.")


def admin_allowed(settings: Settings, token: str | None, client_host: str | None) -> None:
    """``/admin/*``: an admin key when ``admin_api_keys`` is set; otherwise closed (403) when inference keys are set,
    and open to loopback clients only when no key is configured at all (a laptop; never a pod's network)."""
    if settings.admin_api_keys:
        if token is None:
            raise AuthenticationError("Missing admin key: send 'Authorization: Bearer <admin key>'.")
        if not key_matches(token, settings.admin_api_keys):
            raise AuthenticationError("Incorrect admin key provided.")
        return
    if settings.api_keys:
        raise ForbiddenError("Admin endpoints are disabled: set SWARMGATE_ADMIN_API_KEYS to use them.")
    if client_host not in LOOPBACK:
        raise ForbiddenError("Admin endpoints answer loopback clients only unless SWARMGATE_ADMIN_API_KEYS is set.")


def any_key_ok(settings: Settings, token: str | None) -> bool:
    """True when no key is configured, or ``token`` is an inference or admin key (``/metrics``, docs, details)."""
    keys = [*settings.api_keys, *settings.admin_api_keys]
    return not keys or key_matches(token, keys)


class FrontDoor:
    """ASGI middleware: draining, keys, body size (see the module docstring)."""

    def __init__(self, app: ASGIApp, settings: Settings, lifecycle: Lifecycle):
        self.app = app
        self.settings = settings
        self.lifecycle = lifecycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        try:
            receive = await self._admit(scope, path, receive)
        except GatewayError as err:
            response = error_response(err, headers={"WWW-Authenticate": "Bearer"} if err.status == 401 else None)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _admit(self, scope: Scope, path: str, receive: Receive) -> Receive:
        s = self.settings
        token = bearer(scope.get("headers", []))
        if path.startswith("/v1/"):
            if self.lifecycle.draining:
                raise DrainingError("The gateway is shutting down; retry on another replica.")
            check_inference_key(s, token)
        elif path.startswith("/admin/"):
            client = scope.get("client")
            admin_allowed(s, token, client[0] if client else None)
        elif (path == "/metrics" or path in DOC_PATHS) and not any_key_ok(s, token):
            raise AuthenticationError("This endpoint needs an API key: send 'Authorization: Bearer <key>'.")
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return receive
        return await self._bounded_body(scope, receive)

    async def _bounded_body(self, scope: Scope, receive: Receive) -> Receive:
        limit = self.settings.max_body_bytes
        too_big = PayloadTooLargeError(f"The request body exceeds this server's limit of {limit} bytes.")
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    raise too_big
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left mid-body: let the app see the disconnect
                return _replay([message], receive)
            body: bytes = message.get("body", b"")
            size += len(body)
            if size > limit:
                raise too_big
            chunks.append(body)
            if not message.get("more_body", False):
                break
        return _replay([{"type": "http.request", "body": b"".join(chunks), "more_body": False}], receive)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that hands out ``messages`` first, then the real one (disconnect detection keeps working)."""
    pending = list(messages)

    async def replay() -> Any:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
