"""Plain ASGI middleware: request id + access log + last-resort errors, body limit, credentials.

Outermost first: ``RequestLog`` -> ``BodyLimit`` -> ``Authenticate`` -> ``RouteLimits`` -> routes.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from collections.abc import Sequence
from typing import Any

from starlette.routing import BaseRoute, Match, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatgate.api.errors import send_error
from chatgate.errors import ChatgateError, PayloadTooLarge, Unauthorized
from chatgate.identity.keys import ANONYMOUS, Authenticator, Principal
from chatgate.observe.logging import AccessLog
from chatgate.observe.metrics import Metrics

error_log = logging.getLogger("chatgate.api")

_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")


class RequestInfo:
    """Per-request facts the routes fill in and the access log writes out."""

    __slots__ = (
        "error_code",
        "model",
        "principal",
        "retries",
        "session_id",
        "started",
        "status",
        "upstream",
        "usage",
        "user_id",
    )

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.error_code: str | None = None
        self.principal: Principal | None = None
        self.model: str | None = None
        self.upstream: str | None = None
        self.retries = 0
        self.status = 0
        self.usage: dict[str, Any] | None = None
        self.user_id: str | None = None
        self.session_id: str | None = None


def info(scope: Scope) -> RequestInfo:
    return scope["chatgate"]  # type: ignore[no-any-return]


def route_of(scope: Scope) -> BaseRoute | None:
    """The route whose template matches the path (any method), for a request answered before routing ran
    (a 401, a 413): Starlette sets ``scope["route"]`` only once it routes."""
    app = scope.get("app")
    for route in getattr(app, "routes", ()):
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            return route  # type: ignore[no-any-return]
    return None


class RequestLog:
    """Request id in and out, one access-log line per request, and a 500 for anything unhandled."""

    def __init__(self, app: ASGIApp, access_log: AccessLog, metrics: Metrics) -> None:
        self.app = app
        self.access_log = access_log
        self.metrics = metrics
        # Request ids: random per process, then a counter (unique without a system call per request).
        self._id_prefix = os.urandom(8).hex()
        self._ids = itertools.count()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = b""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                rid = value
                break
        request_id = rid.decode() if rid and _REQUEST_ID.match(rid) else f"{self._id_prefix}{next(self._ids):08x}"
        req = RequestInfo()
        start = req.started
        scope["chatgate"] = req
        rid_header = (b"x-request-id", request_id.encode())
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                req.status = message["status"]
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        metrics = self.metrics
        metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:  # the last resort: no route should let anything reach here
            error_log.error(
                "unhandled error", extra={"request_id": request_id, "error": type(exc).__name__, "path": scope["path"]}
            )
            if not started:
                req.status = 500
                await send_error(
                    send, ChatgateError("Internal error; the request id identifies it in our logs."), [rid_header]
                )
        finally:
            metrics.in_flight.inc(-1)
            route = scope.get("route") or route_of(scope)
            seconds = time.perf_counter() - start
            # Metrics are labelled by route template only: an unmatched path would be a label per URL.
            metrics.observe_http(getattr(route, "path", "unmatched"), scope["method"], req.status, seconds)
            self.access_log.write(
                {
                    "request_id": request_id,
                    "method": scope["method"],
                    "route": getattr(route, "path", scope["path"]),
                    "status": req.status,
                    "latency_ms": round(seconds * 1000, 3),
                    "model": req.model,
                    "upstream": req.upstream,
                    "retries": req.retries,
                    "key_id": req.principal.key_id if req.principal else None,
                    "user_id": req.user_id,
                    "session_id": req.session_id,
                    "usage": req.usage,
                }
            )


class BodyLimit:
    """413 for bodies over the limit: by ``Content-Length`` up front, or by counting as they stream in.

    ``routes``: (method, path template, limit) for routes with a limit of their own (the upload route's is
    larger than ``server.max_body_bytes``), applied here the same way; such a route may check finer
    limits itself as its body streams in."""

    def __init__(self, app: ASGIApp, max_bytes: int, routes: Sequence[tuple[str, str, int]] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.routes = [(method, compile_path(path)[0], limit) for method, path, limit in routes]

    def _limit(self, scope: Scope) -> int:
        for method, pattern, limit in self.routes:
            if scope["method"] == method and pattern.match(scope["path"]):
                return limit
        return self.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope) if self.routes else self.max_bytes
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > limit:
                    await send_error(send, _too_large(limit))
                    return
                await self.app(scope, receive, send)  # the server enforces Content-Length itself
                return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _too_large(limit)
            return message

        await self.app(scope, counting_receive, send)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than {limit} bytes.", details={"max_bytes": limit})


class Authenticate:
    """Every path except the public ones needs a credential: ``Authorization: Bearer`` (an API key or,
    when configured, a JWT) or ``x-api-key``. Without one, ``anonymous_paths`` admit anonymous callers."""

    def __init__(
        self,
        app: ASGIApp,
        authenticator: Authenticator,
        public_paths: list[str],
        anonymous_paths: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.public = frozenset(p for p in public_paths if not p.endswith("*"))
        self.public_prefixes = tuple(p[:-1] for p in public_paths if p.endswith("*"))
        self.anonymous_paths = anonymous_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or path in self.public
            or (self.public_prefixes and path.startswith(self.public_prefixes))
        ):
            await self.app(scope, receive, send)
            return
        key = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and token.strip():
                    key = token.strip()
                    break
            elif name == b"x-api-key" and value:
                key = value.decode("latin-1").strip()
                break
        principal: Principal | None
        if key is None:
            if path not in self.anonymous_paths:
                await send_error(
                    send,
                    Unauthorized("Missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'."),
                    [(b"www-authenticate", b"Bearer")],
                )
                return
            principal = ANONYMOUS
        else:
            try:
                principal = await self.authenticator.authenticate(key)
            except Unauthorized as exc:  # a JWT that failed verification: say why
                await send_error(send, exc, [(b"www-authenticate", b"Bearer")])
                return
            except ChatgateError as exc:  # a verified JWT whose claims cannot be used (a bad user id)
                await send_error(send, exc)
                return
            if principal is None:
                await send_error(send, Unauthorized("Invalid API key."), [(b"www-authenticate", b"Bearer")])
                return
        scope["chatgate"].principal = principal
        await self.app(scope, receive, send)


class RouteLimits:
    """``limits.routes`` for routes outside the pipeline (the pipeline checks its own routes' lines
    together with the user's, in the same atomic step)."""

    def __init__(self, app: ASGIApp, routes: frozenset[str]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (path := scope.get("path", "")) in self.routes:
            admission = scope["app"].state.services.admission
            client = scope.get("client")
            limits = admission.route_limits(info(scope).principal, client[0] if client else None, path)
            try:
                await admission.admit(limits, 0, 0)
            except ChatgateError as exc:
                await send_error(send, exc)
                return
        await self.app(scope, receive, send)
