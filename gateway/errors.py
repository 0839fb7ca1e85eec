"""The gateway's error taxonomy: deep code raises these, one place (``gateway.api.errors``) maps them to responses.

Each carries the OpenAI error body's fields: ``message``, ``type``, ``param``, ``code`` and an HTTP status. Every
``GatewayError`` subclass lives here, in status order.
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


class ForbiddenError(GatewayError):
    """The key is valid but may not use this endpoint, or the endpoint is closed by configuration (403)."""

    status = 403
    type = "permission_error"
    code = "forbidden"


class ModelNotFoundError(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class RequestNotFound(GatewayError):
    """Feedback names a request id the request log does not hold (404)."""

    status = 404
    type = "invalid_request_error"
    code = "request_not_found"


class FeedbackDisabled(GatewayError):
    """The gateway keeps no request log, so feedback has nothing to attach to (409)."""

    status = 409
    type = "invalid_request_error"
    code = "feedback_disabled"


class PayloadTooLargeError(GatewayError):
    """The request body is larger than ``max_body_bytes`` (413)."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


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


class NotReadyError(GatewayError):
    """The gateway is still loading its models (503)."""

    status = 503
    type = "service_unavailable"
    code = "not_ready"


class QueueTimeout(GatewayError):
    """No concurrency slot freed up within ``queue_timeout_s`` (503: retry, ideally elsewhere)."""

    status = 503
    type = "service_unavailable"
    code = "queue_timeout"


class DrainingError(GatewayError):
    """The gateway is shutting down and takes no new requests (503; retry on another replica)."""

    status = 503
    type = "service_unavailable"
    code = "draining"


class UpstreamTimeout(GatewayError):
    """An engine timed out (504)."""

    status = 504
    type = "timeout_error"
    code = "engine_timeout"
