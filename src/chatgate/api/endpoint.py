"""The one endpoint the pipeline's POST routes share: read the body, let the route's parser make a turn of
it, run the pipeline, answer JSON or SSE, errors in the unified body; and the access log's facts.

Chat completions, embeddings and the chat API are the hot path: plain ASGI (no framework request object,
no dependency resolution), errors answered right here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import Receive, Scope, Send

from chatgate.api.asgi import (
    JSON_HEADERS,
    SSE_HEADERS,
    ClientLeft,
    Headers,
    read_body,
    send_bytes,
    send_stream,
    until_disconnect,
)
from chatgate.api.errors import send_error
from chatgate.api.middleware import RequestInfo, info
from chatgate.api.responses import rate_headers
from chatgate.errors import ChatgateError
from chatgate.turn import Answer, Services, Turn

Parse = Callable[[Scope, bytes], Turn]
Run = Callable[[Services, Turn], Awaitable[Answer]]

_NO_CACHE = ("no-cache", "no-store")


def services_of(scope: Scope) -> Services:
    return scope["app"].state.services  # type: ignore[no-any-return]


def new_turn(scope: Scope, payload: dict[str, Any], raw: bytes | None, **fields: Any) -> Turn:
    """A turn for this request: who sent it (``Authenticate`` checked the credential) and from where."""
    req = info(scope)
    assert req.principal is not None
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    client = scope.get("client")
    return Turn(
        payload=payload,
        raw=raw,
        principal=req.principal,
        headers=headers,
        client_ip=client[0] if client else None,
        forwarded_for=headers.get("x-forwarded-for"),
        route=scope["path"],
        no_cache=fields.pop("no_cache", False) or opted_out(headers),
        **fields,
    )


def opted_out(headers: dict[str, str]) -> bool:
    """``Cache-Control: no-cache`` / ``no-store`` or ``Pragma: no-cache``: the caller wants a fresh answer."""
    control = headers.get("cache-control")
    if control is not None:
        for directive in control.split(","):
            if directive.strip().partition("=")[0].strip().lower() in _NO_CACHE:
                return True
    pragma = headers.get("pragma")
    return pragma is not None and pragma.strip().lower() == "no-cache"


class PipelineEndpoint:
    """POST a JSON body through the pipeline; answer JSON, or SSE for a stream."""

    def __init__(self, parse: Parse, run: Run) -> None:
        self.parse = parse
        self.run = run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        req = info(scope)
        services = services_of(scope)
        turn: Turn | None = None
        try:
            raw = await read_body(receive)
            turn = self.parse(scope, raw)
            model = turn.payload.get("model")
            req.model = model if isinstance(model, str) else None
            await until_disconnect(receive, self._answer(services, send, turn))
        except ChatgateError as exc:
            req.error_code = exc.code
            await send_error(send, exc)
        except ClientLeft:
            req.status = 499  # nobody reads an answer now; the access log records the hang-up
        finally:
            if turn is not None:
                describe(req, turn)
            elif req.principal is not None:  # bad JSON, a wrong field, too big: recorded all the same
                services.recorder.refused(req.principal, req.model, req.status, req.error_code, req.started)

    async def _answer(self, services: Services, send: Send, turn: Turn) -> None:
        result = await self.run(services, turn)
        if isinstance(result, bytes):
            await send_bytes(send, 200, result, answer_headers(JSON_HEADERS, turn))
        else:
            await send_stream(send, result, answer_headers(SSE_HEADERS, turn))


def answer_headers(base: Headers, turn: Turn) -> Headers:
    """The content headers, the caller's rate-limit standing, and whether the cache answered."""
    out = [*base, *rate_headers(turn.admitted.rates)] if turn.admitted is not None else list(base)
    if turn.cache_status is not None:
        out.append((b"x-cache", turn.cache_status.encode()))
    return out


def describe(req: RequestInfo, turn: Turn) -> None:
    """What the pipeline did, onto the request's access-log line."""
    trace = turn.trace
    req.upstream, req.retries, req.usage = trace.upstream, trace.retries, turn.usage
    if turn.resolved is not None:
        req.user_id = turn.resolved.identity.user_id
    if turn.session is not None and not turn.session.ephemeral:
        req.session_id = turn.session.id
