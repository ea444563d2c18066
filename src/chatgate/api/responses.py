"""What the routes share: a JSON response, the unknown-route error, the caller, the rate-limit headers."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from chatgate.errors import NotFound, Rate
from chatgate.identity.model import Identity

_RATE_NAMES = {
    unit: tuple(f"x-ratelimit-{what}-{unit}".encode() for what in ("limit", "remaining", "reset"))
    for unit in ("requests", "tokens")
}


def json_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def no_route(request: Request) -> NotFound:
    """The unknown-route 404 (also what a route says to a caller it does not exist for)."""
    path = request.url.path
    return NotFound(f"No route {request.method} {path}.", details={"path": path})


def request_headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


def caller(request: Request) -> Identity:
    """Who is calling a route outside the pipeline: the same identity the pipeline would resolve."""
    from chatgate.api.middleware import info

    req = info(request.scope)
    assert req.principal is not None
    headers = request_headers(request.scope)
    client = request.scope.get("client")
    identity = request.app.state.services.resolver.resolve(
        req.principal, headers, {}, client[0] if client else None, headers.get("x-forwarded-for")
    ).identity
    req.user_id = identity.user_id
    return identity  # type: ignore[no-any-return]


def rate_headers(rates: Iterable[Rate]) -> list[tuple[bytes, bytes]]:
    """OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``."""
    out: list[tuple[bytes, bytes]] = []
    for rate in rates:
        names = _RATE_NAMES.get(rate.unit)
        if names is not None:
            out += [
                (names[0], b"%d" % rate.limit),
                (names[1], b"%d" % rate.remaining),
                (names[2], b"%.3fs" % rate.reset_seconds),
            ]
    return out


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
