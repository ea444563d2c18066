"""The chat API (server-side history): ``/api/v1/chat`` and the caller's sessions.

Sessions are looked up for the calling user only: another user's session id is a 404, never
a 403, and never data. Reads first flush the write-behind queue, so they see every write the
caller's earlier requests queued.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from chatgate import pipeline
from chatgate.api.checks import CHAT_FIELDS, check_content
from chatgate.api.doors import ChatAPIDoor
from chatgate.api.endpoint import PipelineEndpoint, new_turn, services_of
from chatgate.api.middleware import info
from chatgate.api.protocol import SESSION_ID_PATTERN, check_fields, parse_object
from chatgate.api.query import int_param
from chatgate.api.responses import caller, json_response
from chatgate.errors import BadRequest, ModelNotFound, NotFound
from chatgate.identity.model import Identity
from chatgate.store.repos import ConversationRow, MessageRow
from chatgate.turn import Answer, Services, Turn

DOOR = ChatAPIDoor()
OWN_FIELDS = ("message", "session_id", "model", "stream", "use_cache")
# The OpenAI generation settings a chat-API request may carry; they go upstream as they are.
SAMPLING_FIELDS = (
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "response_format",
    "user",
)


def _field(data: dict[str, Any], name: str, types: tuple[type, ...], what: str) -> Any:
    value = data.get(name)
    if value is not None and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
        raise BadRequest(f"'{name}' must be {what}.", details={"field": name, "expected": what})
    return value


def parse_chat(scope: Scope, raw: bytes) -> Turn:
    """``{message, session_id?, model?, use_cache?, stream?}`` and OpenAI's generation settings."""
    data = parse_object(raw)
    unknown = sorted(set(data) - {*OWN_FIELDS, *SAMPLING_FIELDS})
    if unknown:
        raise BadRequest(
            f"Unknown field '{unknown[0]}' (a chat-API request takes {', '.join(OWN_FIELDS + SAMPLING_FIELDS)}).",
            details={"field": unknown[0]},
        )
    message = data.get("message")
    if not (isinstance(message, str) and message.strip()) and not (isinstance(message, list) and message):
        raise BadRequest(
            "'message' must be a non-empty string or array of content parts.", details={"field": "message"}
        )
    check_content("message", message)
    sampling = {k: data[k] for k in SAMPLING_FIELDS if data.get(k) is not None}
    check_fields(sampling, CHAT_FIELDS)
    services = services_of(scope)
    model = _field(data, "model", (str,), "a string") or default_model(services, scope["app"].state.settings)
    if not model:
        raise ModelNotFound("No model given and no default model is served.", details={"model": None})
    stream = _field(data, "stream", (bool,), "a boolean") is True
    return new_turn(
        scope,
        {"model": model, "messages": [], "stream": stream, **sampling},
        None,
        message=message,
        session_id=_session_id(_field(data, "session_id", (str,), "a string")),
        no_cache=_field(data, "use_cache", (bool,), "a boolean") is False,
    )


def _session_id(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(SESSION_ID_PATTERN, value):
        raise BadRequest(
            "'session_id' must be printable ASCII of at most 64 characters.", details={"field": "session_id"}
        )
    return value


def default_model(services: Services, settings: Any) -> str | None:
    configured: str | None = settings.sessions.default_model
    if configured:
        return configured
    if services.upstream.router.knows("local"):
        return "local"
    served = sorted(services.upstream.router.served_models())
    return served[0] if served else None


async def _run(services: Services, turn: Turn) -> Answer:
    return await pipeline.run(services, DOOR, turn)


chat = PipelineEndpoint(parse_chat, _run)  # POST /api/v1/chat


# ---- sessions ----------------------------------------------------------------------------------


async def _caller(request: Request) -> tuple[Services, Identity]:
    identity = caller(request)
    services: Services = request.app.state.services
    await services.sessions.writer.flush()
    return services, identity


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
    return json_response({"object": "list", "data": [session_json(r) for r in rows], "limit": limit, "offset": offset})


async def get_session(request: Request) -> Response:
    services, identity = await _caller(request)
    row = await _owned(services, identity, _session_id(request.path_params["session_id"]) or "")
    limit = int_param(request, "limit", 50, 1, 500)
    offset = int_param(request, "offset", 0, 0, 10**9)
    messages = await services.sessions.store.messages.list(row.id, limit=limit, offset=offset)
    return json_response(
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
    session_id = _session_id(request.path_params["session_id"]) or ""
    if not await services.sessions.store.conversations.delete_for_user(identity.user_id, session_id):
        raise _no_session(session_id)
    services.sessions.forget(session_id)
    return json_response({"deleted": True, "session_id": session_id})


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
    return json_response(body)


async def _owned(services: Services, identity: Identity, session_id: str) -> ConversationRow:
    row = await services.sessions.store.conversations.get_for_user(identity.user_id, session_id)
    if row is None:
        raise _no_session(session_id)
    return row


def _no_session(session_id: str) -> NotFound:
    return NotFound("No such session.", details={"session_id": session_id})
