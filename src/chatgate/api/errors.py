"""The one place exceptions become HTTP error responses (the unified error body)."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Send

from chatgate.errors import ChatgateError, MethodNotAllowed, NotFound

JSON = "application/json"


def error_bytes(exc: ChatgateError) -> bytes:
    return orjson.dumps(exc.body())


def error_response(exc: ChatgateError) -> Response:
    return Response(error_bytes(exc), status_code=exc.status, media_type=JSON, headers=exc.headers)


async def send_error(send: Send, exc: ChatgateError, extra_headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """Answer from plain ASGI middleware, before any route ran."""
    body = error_bytes(exc)
    headers = [
        (b"content-type", JSON.encode()),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in exc.headers.items()),
        *extra_headers,
    ]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _chatgate(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ChatgateError)
    return error_response(exc)


# Routes that exist for admin keys only: to anyone else they are unknown routes, whatever the method.
ADMIN_PREFIX = "/admin/"
ADMIN_PATHS = frozenset({"/admin", "/metrics"})


def unknown_route(request: Request) -> NotFound:
    """The one 404 for a route that does not exist (or does not exist for this caller)."""
    return NotFound(f"No route {request.method} {request.url.path}.", details={"path": request.url.path})


def _hidden(request: Request) -> bool:
    """An admin-only route, asked for by a caller without the admin scope."""
    path = request.url.path
    if not (path.startswith(ADMIN_PREFIX) or path in ADMIN_PATHS):
        return False
    req = request.scope.get("chatgate")
    principal = getattr(req, "principal", None)
    return principal is None or "admin" not in principal.scopes


async def _http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404 or (exc.status_code == 405 and _hidden(request)):
        return error_response(unknown_route(request))
    if exc.status_code == 405:
        return error_response(
            MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}.", headers=dict(exc.headers or {}))
        )
    error = ChatgateError(str(exc.detail), status=exc.status_code)
    error.code, error.type = "HTTP_ERROR", "invalid_request_error" if exc.status_code < 500 else "server_error"
    return error_response(error)


EXCEPTION_HANDLERS = {ChatgateError: _chatgate, HTTPException: _http}
