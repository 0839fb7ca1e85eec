"""The gateway's error taxonomy: deep code raises these, one place (``gateway.api.errors``) maps them to responses.

Each carries the OpenAI error body's fields: ``message``, ``type``, ``param``, ``code`` and an HTTP status.
"""

from __future__ import annotations


class GatewayError(Exception):
    status: int = 500
    type: str = "internal_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def body(self) -> dict[str, dict[str, str | int | None]]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequestError(GatewayError):
    """The client's request is wrong (400). Name the offending field in ``param``."""

    status = 400
    type = "invalid_request_error"


class AuthenticationError(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class ModelNotFoundError(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class RateLimitError(GatewayError):
    """Concurrency limit and its queue are full (429)."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamError(GatewayError):
    """An engine failed (502)."""

    status = 502
    type = "api_error"
    code = "engine_error"


class UpstreamTimeout(GatewayError):
    """An engine timed out (504)."""

    status = 504
    type = "timeout_error"
    code = "engine_timeout"


class NotReadyError(GatewayError):
    status = 503
    type = "service_unavailable"
    code = "not_ready"
