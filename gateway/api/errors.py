"""The one place exceptions become HTTP responses in OpenAI's error shape (the exceptions: ``gateway.errors``)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.api.metrics import UNKNOWN_MODEL
from gateway.engines.base import EngineError, EngineTimeout, InvalidEngineRequest, PromptTooLong
from gateway.errors import GatewayError, InvalidRequestError, UpstreamError, UpstreamTimeout
from gateway.spec import SpecError

log = logging.getLogger(__name__)

_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^\s'\"<>()]+", re.IGNORECASE)
_PATH = re.compile(r"(?<![\w.:/-])(?:~|\.{1,2})?/(?:[\w.@+=-]+/?)+")


def redact(text: str) -> str:
    """Drop what an engine error may carry that a client must not see: URLs (upstream hosts) and file paths."""
    return _PATH.sub("<path>", _URL.sub("<url>", text))


def _upstream(kind: type[GatewayError], prefix: str, exc: BaseException) -> GatewayError:
    """A 502/504 whose body names the problem without hosts or paths; the full error goes to the server log."""
    ref = uuid.uuid4().hex[:12]
    log.error("%s (ref %s): %s: %s", prefix, ref, type(exc).__name__, exc)
    detail = redact(str(exc))
    return kind(f"{prefix}: {detail} (ref {ref})" if detail else f"{prefix} (ref {ref})")


def to_gateway_error(exc: BaseException, *, prompt_param: str = "messages") -> GatewayError:
    """Map anything raised while serving to a GatewayError (client mistakes 4xx, engine trouble 5xx)."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, PromptTooLong):
        return InvalidRequestError(str(exc), param=prompt_param, code="context_length_exceeded")
    if isinstance(exc, InvalidEngineRequest):
        return InvalidRequestError(redact(str(exc)))
    if isinstance(exc, EngineTimeout | asyncio.TimeoutError | TimeoutError):
        if not str(exc):
            return UpstreamTimeout("the request timed out")
        return _upstream(UpstreamTimeout, "the engine did not answer in time", exc)
    if isinstance(exc, EngineError):
        return _upstream(UpstreamError, "engine error", exc)
    if isinstance(exc, SpecError):
        return _upstream(UpstreamError, "model unavailable", exc)
    log.exception("unexpected error while serving", exc_info=exc)
    return GatewayError("internal server error")


def error_response(err: GatewayError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


def _param_of(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p != "body"]
    if not parts:
        return None
    out = parts[0]
    for p in parts[1:]:
        out += f"[{p}]" if p.isdigit() else f".{p}"
    return out


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    kind = first.get("type")
    if kind == "json_invalid":
        return "We could not parse the JSON body of your request: " + str(first.get("ctx", {}).get("error", "")), None
    if kind in {"model_attributes_type", "dict_type", "model_type"} and tuple(first.get("loc", ())) == ("body",):
        return "The request body must be a JSON object.", None
    param = _param_of(tuple(first.get("loc", ())))
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if param is None:  # a model-level check: its message names the field first, in quotes
        m = re.match(r"'([a-z_]+)'", msg)
        return msg, (m.group(1) if m else None)
    if first.get("type") == "missing":
        return f"Missing required parameter: '{param}'.", param
    return (f"Invalid value for '{param}': {msg}" if param else msg), param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def _gateway(_: Request, exc: GatewayError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        _count_rejected(request, exc.body, 400)
        return error_response(InvalidRequestError(message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found_error", 405: "invalid_request_error"}.get(exc.status_code, "invalid_request_error")
        err = GatewayError(str(exc.detail))
        err.status, err.type = exc.status_code, kind
        return error_response(err, headers=dict(exc.headers or {}) or None)  # 405 keeps its Allow header

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return error_response(to_gateway_error(exc))


def _count_rejected(request: Request, body: Any, status: int) -> None:
    """Requests refused before they reach serving still count in ``swarmgate_requests_total``."""
    metrics = getattr(request.app.state, "metrics", None)
    endpoint = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}.get(request.url.path)
    if metrics is None or endpoint is None:
        return
    model = body.get("model") if isinstance(body, dict) else None
    holder = getattr(request.app.state, "holder", None)
    rt = getattr(holder, "runtime", None)
    known = isinstance(model, str) and rt is not None and model in rt.executors
    metrics.requests.labels(model if known else UNKNOWN_MODEL, endpoint, str(status)).inc()


def sse_error_frame(err: GatewayError) -> str:
    body = err.body()
    body["error"]["code"] = body["error"]["code"] or err.status
    return f"data: {json.dumps(body)}\n\n"
