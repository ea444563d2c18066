"""The chat API (server-side history): ``/api/v1/chat`` and the caller's sessions.

Sessions are looked up for the calling user only: another user's session id is a 404, never
a 403, and never data. Reads first flush the write-behind queue, so they see every write the
caller's earlier requests queued.
"""

from __future__ import annotations

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
    read_body,
    send_bytes,
    send_stream,
    until_disconnect,
)
from chatgate.api.errors import send_error
from chatgate.api.middleware import info
from chatgate.api.openai import answer_headers, new_turn, record_refused, services_of, traced
from chatgate.api.protocol import parse_object
from chatgate.api.query import int_param
from chatgate.errors import BadRequest, ChatgateError, ModelNotFound, NotFound
from chatgate.identity.model import Identity
from chatgate.store.repos import ConversationRow, MessageRow


def _field(data: dict[str, Any], name: str, types: tuple[type, ...], what: str) -> Any:
    value = data.get(name)
    if value is not None and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
        raise BadRequest(f"'{name}' must be {what}.", details={"field": name, "expected": what})
    return value


def parse_chat(data: dict[str, Any], default_model: str | None) -> pipeline.ChatAPIRequest:
    message = data.get("message")
    if not (isinstance(message, str) and message.strip()) and not (isinstance(message, list) and message):
        raise BadRequest(
            "'message' must be a non-empty string or array of content parts.", details={"field": "message"}
        )
    model = _field(data, "model", (str,), "a string") or default_model
    if not model:
        raise ModelNotFound("No model given and no default model is served.", details={"model": None})
    return pipeline.ChatAPIRequest(
        message=message,
        session_id=_field(data, "session_id", (str,), "a string"),
        model=model,
        stream=_field(data, "stream", (bool,), "a boolean") is True,
        use_cache=_field(data, "use_cache", (bool,), "a boolean") is not False,
    )


def default_model(services: pipeline.Services, configured: str | None) -> str | None:
    if configured:
        return configured
    if services.upstream.router.knows("local"):
        return "local"
    served = sorted(services.upstream.router.served_models())
    return served[0] if served else None


async def chat(scope: Scope, receive: Receive, send: Send) -> None:
    """``POST /api/v1/chat``: ``{message, session_id?, model?, use_cache?, stream?}``."""
    req = info(scope)
    services = services_of(scope)
    turn: pipeline.Turn | None = None
    try:
        data = parse_object(await read_body(receive))
        chat_req = parse_chat(data, default_model(services, scope["app"].state.settings.sessions.default_model))
        req.model = chat_req.model
        turn = new_turn(scope, {"model": chat_req.model}, None, source="chat-api")
        await until_disconnect(receive, _answer(services, send, turn, chat_req))
    except ChatgateError as exc:
        req.error_code = exc.code
        await send_error(send, exc)
    except ClientLeft:
        req.status = 499
    finally:
        if turn is not None:
            traced(req, turn, services)
        elif services.record_requests and req.principal is not None:
            record_refused(req, services)


async def _answer(services: pipeline.Services, send: Send, turn: pipeline.Turn, req: pipeline.ChatAPIRequest) -> None:
    result = await pipeline.chat_api(services, turn, req)
    if isinstance(result, dict):
        await send_bytes(send, 200, orjson.dumps(result), answer_headers(JSON_HEADERS, turn))
    else:
        await send_stream(send, result, answer_headers(SSE_HEADERS, turn))


# ---- sessions ----------------------------------------------------------------------------------


async def _caller(request: Request) -> tuple[pipeline.Services, Identity]:
    services: pipeline.Services = request.app.state.services
    turn = new_turn(request.scope, {}, None)
    identity = services.resolver.resolve(
        turn.principal, turn.headers, {}, turn.client_ip, turn.headers.get("x-forwarded-for")
    ).identity
    info(request.scope).user_id = identity.user_id
    await services.sessions.writer.flush()
    return services, identity


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def session_json(row: ConversationRow) -> dict[str, Any]:
    return {
        "session_id": row.id,
        "source": row.source,
        "title": row.title,
        "created_at": row.created_at.isoformat(),
        "last_activity_at": row.last_activity_at.isoformat(),
        "message_count": row.message_count,
        "tokens_in": row.tokens_in,
        "tokens_out": row.tokens_out,
        "rag_applied": row.rag_applied,
        "request_counts": row.request_counts,
        "variables": row.variables,
    }


def message_json(row: MessageRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "role": row.role,
        "content": row.content,
        "tokens": row.tokens,
        "model": row.model,
        "message_id": row.client_message_id,
        "created_at": row.created_at.isoformat(),
    }


async def list_sessions(request: Request) -> Response:
    services, identity = await _caller(request)
    limit = int_param(request, "limit", 50, 1, 500)
    offset = int_param(request, "offset", 0, 0, 10**9)
    rows = await services.sessions.store.conversations.list_for_user(identity.user_id, limit=limit, offset=offset)
    return _json({"object": "list", "data": [session_json(r) for r in rows], "limit": limit, "offset": offset})


async def get_session(request: Request) -> Response:
    services, identity = await _caller(request)
    row = await _owned(services, identity, request.path_params["session_id"])
    limit = int_param(request, "limit", 50, 1, 500)
    offset = int_param(request, "offset", 0, 0, 10**9)
    messages = await services.sessions.store.messages.list(row.id, limit=limit, offset=offset)
    return _json(
        {
            **session_json(row),
            "messages": [message_json(m) for m in messages],
            "limit": limit,
            "offset": offset,
            "total_messages": await services.sessions.store.messages.count(row.id),
        }
    )


async def delete_session(request: Request) -> Response:
    services, identity = await _caller(request)
    session_id = request.path_params["session_id"]
    if not await services.sessions.store.conversations.delete_for_user(identity.user_id, session_id):
        raise _no_session(session_id)
    services.sessions.forget(session_id)
    return _json({"deleted": True, "session_id": session_id})


async def session_stats(request: Request) -> Response:
    services, identity = await _caller(request)
    principal = info(request.scope).principal
    is_admin = principal is not None and "admin" in principal.scopes
    body: dict[str, Any] = {"user": await services.sessions.store.conversations.stats(identity.user_id)}
    if is_admin:
        body["global"] = await services.sessions.store.conversations.stats(None)
        body["hot"] = services.sessions.overview()
        body["connections"] = services.connections.overview()
    else:
        body["connections"] = {"in_flight": services.connections.in_flight(identity.user_id)}
    return _json(body)


async def _owned(services: pipeline.Services, identity: Identity, session_id: str) -> ConversationRow:
    row = await services.sessions.store.conversations.get_for_user(identity.user_id, session_id)
    if row is None:
        raise _no_session(session_id)
    return row


def _no_session(session_id: str) -> NotFound:
    return NotFound("No such session.", details={"session_id": session_id})
