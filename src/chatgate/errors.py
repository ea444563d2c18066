"""The one exception tree. ``api/errors.py`` maps it to the unified error body.

Body: ``{"error": {"code": ..., "message": ..., "type": ..., "details": {...}}}``. ``type`` uses
OpenAI's vocabulary so OpenAI clients classify the error; ``code`` and ``details`` are ours.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Rate(NamedTuple):
    """Where a caller stands against one limit: OpenAI's ``x-ratelimit-*`` trio, as plain values."""

    unit: str  # "requests" | "tokens"
    limit: int
    remaining: int
    reset_seconds: float


class ChatgateError(Exception):
    """``retry_after``: seconds after which trying again may succeed (``api/`` says it as ``Retry-After``);
    ``headers``: extra HTTP headers, for errors the HTTP layer itself raises."""

    status = 500
    code = "INTERNAL"
    type = "server_error"

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        self.headers = headers or {}
        self.retry_after = retry_after
        if status is not None:
            self.status = status

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "type": self.type, "details": self.details}}


class BadRequest(ChatgateError):
    status = 400
    code = "BAD_REQUEST"
    type = "invalid_request_error"


class Unsupported(BadRequest):
    """A request the protocol defines that this gateway does not serve (ChatKit's ``input.transcribe``)."""

    code = "UNSUPPORTED"


class InvalidJSON(BadRequest):
    code = "INVALID_JSON"


class InvalidHTTP(BadRequest):
    """The request is not valid HTTP/1.1 (its framing: ``Content-Length``, line endings, ...)."""

    code = "INVALID_HTTP"


class RequestTimeout(ChatgateError):
    """The request's head did not arrive in time (``server.header_timeout``)."""

    status = 408
    code = "REQUEST_TIMEOUT"
    type = "invalid_request_error"


class HeadersTooLarge(ChatgateError):
    """The request's head is over ``server.max_header_bytes`` or has more than ``server.max_headers`` fields."""

    status = 431
    code = "HEADERS_TOO_LARGE"
    type = "invalid_request_error"


class PayloadTooLarge(ChatgateError):
    status = 413
    code = "PAYLOAD_TOO_LARGE"
    type = "invalid_request_error"


class Unauthorized(ChatgateError):
    status = 401
    code = "UNAUTHORIZED"
    type = "authentication_error"


class Forbidden(ChatgateError):
    status = 403
    code = "FORBIDDEN"
    type = "permission_error"


class Conflict(ChatgateError):
    """The request clashes with what exists (a name taken, a read-only definition)."""

    status = 409
    code = "CONFLICT"
    type = "invalid_request_error"


class NotFound(ChatgateError):
    status = 404
    code = "NOT_FOUND"
    type = "invalid_request_error"


class ModelNotFound(NotFound):
    code = "MODEL_NOT_FOUND"


class MethodNotAllowed(ChatgateError):
    status = 405
    code = "METHOD_NOT_ALLOWED"
    type = "invalid_request_error"


class RateLimited(ChatgateError):
    """``blocked``: the limit that refused (``X-RateLimit-Limit/Remaining/Reset``); ``rates``: the caller's
    standing per unit (``x-ratelimit-*``)."""

    status = 429
    code = "RATE_LIMIT"
    type = "rate_limit_error"

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        retry_after: float | None = None,
        blocked: Rate | None = None,
        rates: tuple[Rate, ...] = (),
    ) -> None:
        super().__init__(message, details=details, retry_after=retry_after)
        self.blocked = blocked
        self.rates = rates


class UpstreamError(ChatgateError):
    """The upstream failed (after retries) or answered something unusable."""

    status = 502
    code = "UPSTREAM_ERROR"
    type = "api_error"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "UPSTREAM_TIMEOUT"


class UpstreamUnavailable(UpstreamError):
    """Every upstream for the model has its circuit open."""

    status = 503
    code = "UPSTREAM_UNAVAILABLE"


class UpstreamRejected(ChatgateError):
    """The upstream refused the request itself (a 4xx other than 429): passed on with its status."""

    code = "UPSTREAM_REJECTED"
    type = "invalid_request_error"


class ContextLengthExceeded(BadRequest):
    """The prompt plus the completion budget do not fit the model's window, even with history dropped.

    Details: ``window``, ``prompt_tokens``, ``max_tokens``, ``model``.
    """

    code = "CONTEXT_LENGTH"
