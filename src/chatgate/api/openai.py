"""The OpenAI-compatible routes. Thin: read the body, run the pipeline, send the result.

Chat completions and embeddings are the hot path, so they are plain ASGI endpoints: no
framework request object, no dependency resolution; errors are answered right here.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from chatgate import pipeline
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
from chatgate.api.protocol import check_chat, check_embeddings, parse_object
from chatgate.errors import ChatgateError, ModelNotFound
from chatgate.observe import metrics
from chatgate.store.batch import RecordRequest
from chatgate.upstream.stream import Relay

Check = Callable[[dict[str, Any]], None]
Run = Callable[[pipeline.Services, pipeline.Turn], Awaitable[bytes | Relay | pipeline.Replay]]


def services_of(scope: Scope) -> pipeline.Services:
    return scope["app"].state.services  # type: ignore[no-any-return]


def new_turn(scope: Scope, payload: dict[str, Any], raw: bytes | None, source: str | None = None) -> pipeline.Turn:
    req = info(scope)
    assert req.principal is not None
    client = scope.get("client")
    return pipeline.Turn(
        payload=payload,
        raw=raw,
        principal=req.principal,
        headers={k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
        client_ip=client[0] if client else None,
        source=source,
        route=scope["path"],
    )


def answer_headers(base: Headers, turn: pipeline.Turn) -> Headers:
    """The content headers plus the rate-limit headers of an admitted request."""
    out = [*base, *turn.admitted.headers] if turn.admitted is not None else list(base)
    if turn.cache_status is not None:
        out.append((b"x-cache", turn.cache_status.encode()))
    return out


class PipelineEndpoint:
    """POST a JSON body through one pipeline entry point; answer JSON, or SSE for a stream."""

    def __init__(self, check: Check, run: Run) -> None:
        self.check = check
        self.run = run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        req = info(scope)
        turn: pipeline.Turn | None = None
        try:
            raw = await read_body(receive)
            payload = parse_object(raw)
            self.check(payload)
            req.model = payload["model"]
            turn = new_turn(scope, payload, raw)
            await until_disconnect(receive, self._answer(services_of(scope), send, turn))
        except ChatgateError as exc:
            req.error_code = exc.code
            await send_error(send, exc)
        except ClientLeft:
            req.status = 499  # nobody reads an answer now; the access log records the hang-up
        finally:
            services = services_of(scope)
            if turn is not None:
                traced(req, turn, services)
            elif services.record_requests and req.principal is not None:
                record_refused(req, services)  # bad JSON, a wrong field, too big: recorded all the same

    async def _answer(self, services: pipeline.Services, send: Send, turn: pipeline.Turn) -> None:
        result = await self.run(services, turn)
        if isinstance(result, bytes):
            await send_bytes(send, 200, result, answer_headers(JSON_HEADERS, turn))
        else:
            await send_stream(send, result, answer_headers(SSE_HEADERS, turn))


def record(req: RequestInfo, turn: pipeline.Turn, services: pipeline.Services) -> None:
    """One analytics row for the request, through the write-behind queue (never waits on the database)."""
    resolved, usage = turn.resolved, turn.usage or {}
    if resolved is not None:
        user_id = resolved.identity.user_id
        kind = pipeline.kind_of(services, turn)  # rag when documents were retrieved
    else:  # refused before the caller was resolved (e.g. bad metadata)
        user_id = turn.principal.user_id or f"key:{turn.principal.key_id}"
        kind = "standard"
    session = turn.session
    _, ttft = turn.trace.seconds()
    model = turn.trace.model or turn.payload.get("model")
    services.sessions.writer.put(
        RecordRequest(
            at=datetime.now(UTC),
            user_id=user_id,
            conversation_id=session.id if session is not None and not session.ephemeral else None,
            message_id=resolved.message_id if resolved is not None else None,
            model=model if isinstance(model, str) else "",
            upstream=turn.trace.upstream,
            kind=kind,
            status=req.status,
            error_code=req.error_code or ("STREAM_INTERRUPTED" if turn.stream_failed else None),
            tokens_in=_int(usage.get("prompt_tokens")),
            tokens_out=_int(usage.get("completion_tokens")),
            cached=turn.cache_status == "HIT",
            stream=turn.stream,
            latency_ms=round((time.perf_counter() - req.started) * 1000),
            ttft_ms=round(ttft * 1000) if ttft is not None and turn.stream else None,
        )
    )


def record_refused(req: RequestInfo, services: pipeline.Services) -> None:
    """The analytics row of a request refused before it became a turn (its body could not be used)."""
    assert req.principal is not None
    record(
        req,
        pipeline.Turn(payload={"model": req.model} if req.model else {}, raw=None, principal=req.principal),
        services,
    )


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0


def traced(req: RequestInfo, turn: pipeline.Turn, services: pipeline.Services) -> None:
    """What the pipeline did, onto the request's access-log line, into the metrics (and its span)."""
    trace = turn.trace
    if trace.span is not None:  # tracing on: a stream's upstream span ends with the stream
        trace.end_span(turn.stream_failed)
    req.upstream, req.retries, req.usage = trace.upstream, trace.retries, turn.usage
    if trace.upstream is not None:
        latency, ttft = trace.seconds()
        metrics.observe_call(trace.upstream, trace.model, trace.retries, latency, ttft, turn.usage)
    if services.record_requests:
        record(req, turn, services)
    if turn.resolved is not None:
        req.user_id = turn.resolved.identity.user_id
    if turn.session is not None and not turn.session.ephemeral:
        req.session_id = turn.session.id


chat_completions = PipelineEndpoint(check_chat, pipeline.chat)
embeddings = PipelineEndpoint(check_embeddings, pipeline.embeddings)


def _json(data: Any) -> Response:
    return Response(orjson.dumps(data), media_type="application/json")


async def _assistants(services: pipeline.Services) -> list[dict[str, Any]]:
    return [a.model_object() for a in await services.rag.assistants.listing()] if services.rag is not None else []


async def list_models(request: Request) -> Response:
    """Served models, aliases, then assistants."""
    services: pipeline.Services = request.app.state.services
    listed = await services.catalog.listing()
    ids = {m["id"] for m in listed}
    extra = [a for a in await _assistants(services) if a["id"] not in ids]
    return _json({"object": "list", "data": [*listed, *extra]})


async def get_model(request: Request) -> Response:
    services: pipeline.Services = request.app.state.services
    model_id = request.path_params["model_id"]
    found = await services.catalog.find(model_id)
    if found is None and services.rag is not None and (a := await services.rag.assistants.get(model_id)) is not None:
        found = a.model_object()
    if found is None:
        raise ModelNotFound(
            f"The model '{model_id}' does not exist or is not served here.", details={"model": model_id}
        )
    return _json(found)
