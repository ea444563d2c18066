"""The server span of each HTTP request: plain ASGI middleware, installed only when tracing is on.

Outermost (before ``RequestLog``), so the access-log line and every log line of the request are
written inside the span and carry its trace id. A caller's W3C ``traceparent`` is continued.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatgate.api.middleware import RequestInfo
from chatgate.observe.tracing import Tracing, incoming

_ANSWER_HEADERS = {b"x-request-id": "chatgate.request_id", b"x-cache": "chatgate.cache"}


class TraceRequests:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracing: Tracing | None = getattr(scope["app"].state, "tracing", None) if scope["type"] == "http" else None
        if tracing is None:
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        answered: dict[str, Any] = {}

        async def send_traced(message: Message) -> None:
            if message["type"] == "http.response.start":
                answered["http.response.status_code"] = message["status"]
                for name, value in message.get("headers", ()):
                    if name in _ANSWER_HEADERS:
                        answered[_ANSWER_HEADERS[name]] = value.decode("latin-1")
            await send(message)

        with tracing.tracer.start_as_current_span(
            method,
            context=incoming(scope["headers"]),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope["path"]},
            record_exception=False,
        ) as span:
            try:
                await self.app(scope, receive, send_traced)
            finally:
                if span.is_recording():
                    describe(span, scope, answered)


def describe(span: Span, scope: Scope, answered: dict[str, Any]) -> None:
    """The request's facts, once it has been answered: route, status, and what the routes found out."""
    route = getattr(scope.get("route"), "path", None)
    if route is not None:
        span.update_name(f"{scope['method']} {route}")
        span.set_attribute("http.route", route)
    req: RequestInfo | None = scope.get("chatgate")
    if req is not None:
        answered.setdefault("http.response.status_code", req.status)  # e.g. 499: the client left
        facts = {
            "user.id": req.user_id,
            "gen_ai.request.model": req.model,
            "chatgate.upstream": req.upstream,
            "chatgate.retries": req.retries or None,
            "chatgate.session_id": req.session_id,
            "error.type": req.error_code,
        }
        answered.update((k, v) for k, v in facts.items() if v is not None)
    span.set_attributes(answered)
    status = answered.get("http.response.status_code", 0)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))
