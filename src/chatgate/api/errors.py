"""The one place exceptions become HTTP error responses (the unified error body)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Send

from chatgate.api.responses import no_route, rate_headers, retry_after
from chatgate.errors import ChatgateError, MethodNotAllowed, RateLimited

JSON = "application/json"


def error_bytes(exc: ChatgateError) -> bytes:
    return orjson.dumps(exc.body())


def error_headers(exc: ChatgateError) -> list[tuple[bytes, bytes]]:
    """What the error says beyond its body: ``Retry-After``; for a 429 the limit that refused and the
    caller's ``x-ratelimit-*`` standing; any header the HTTP layer gave it."""
    out = [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    if exc.retry_after is not None:
        out.append((b"retry-after", retry_after(exc.retry_after).encode()))
    if isinstance(exc, RateLimited):
        if exc.retry_after is not None:
            out.append((b"retry-after-ms", b"%d" % math.ceil(exc.retry_after * 1000)))
        if exc.blocked is not None:
            out += [
                (b"x-ratelimit-limit", b"%d" % exc.blocked.limit),
                (b"x-ratelimit-remaining", b"%d" % exc.blocked.remaining),
                (b"x-ratelimit-reset", b"%d" % math.ceil(exc.blocked.reset_seconds)),
            ]
        out += rate_headers(exc.rates)
    return out


def error_response(exc: ChatgateError) -> Response:
    response = Response(error_bytes(exc), status_code=exc.status, media_type=JSON)
    response.raw_headers.extend(error_headers(exc))
    return response


async def send_error(send: Send, exc: ChatgateError, extra_headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """Answer from plain ASGI code (middleware, the pipeline's endpoints)."""
    body = error_bytes(exc)
    headers = [
        (b"content-type", JSON.encode()),
        (b"content-length", str(len(body)).encode()),
        *error_headers(exc),
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
        return error_response(no_route(request))
    if exc.status_code == 405:
        headers = dict(exc.headers or {})
        if allowed := _allowed(request):
            headers["Allow"] = ", ".join(allowed)
        return error_response(
            MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}.", headers=headers)
        )
    error = ChatgateError(str(exc.detail), status=exc.status_code)
    error.code, error.type = "HTTP_ERROR", "invalid_request_error" if exc.status_code < 500 else "server_error"
    return error_response(error)


def _allowed(request: Request) -> list[str]:
    """Every method of the route template the path matches first (its methods may be spread over several
    routes of the same template)."""
    routes = [r for r in getattr(request.app, "routes", ()) if isinstance(r, Route) and r.methods]
    first = next((r for r in routes if r.matches(request.scope)[0] is not Match.NONE), None)
    if first is None:
        return []
    return sorted({m for r in routes if r.path == first.path for m in r.methods or ()})


EXCEPTION_HANDLERS = {ChatgateError: _chatgate, HTTPException: _http}
