"""``POST /chatkit``: the ChatKit door (``chatkit/``), one endpoint for every request type, answering JSON or SSE
as the type requires, behind the usual authentication, body limit and route limits.

``openai-chatkit`` (and the ``openai-agents`` it imports) load on the first request: a gateway that never
serves ChatKit imports none of it. The store unreachable is a 503 here while the rest keeps serving.
"""

from __future__ import annotations

import asyncio
import importlib
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from chatgate.api.asgi import (
    JSON_HEADERS,
    SSE_HEADERS,
    ClientLeft,
    read_body,
    send_bytes,
    send_stream,
    until_disconnect,
)
from chatgate.api.chat_api import default_model
from chatgate.api.endpoint import answer_headers, describe, services_of
from chatgate.api.errors import send_error
from chatgate.api.middleware import info
from chatgate.api.responses import json_response
from chatgate.errors import BadRequest, ChatgateError, NotFound
from chatgate.settings import Settings

if TYPE_CHECKING:
    from chatgate.chatkit.service import ChatKitService

PATH = "/chatkit"


async def service(scope: Scope) -> ChatKitService:
    """The app's ChatKit service, made (and ChatKit imported) on first use."""
    state = scope["app"].state
    made: ChatKitService | None = getattr(state, "chatkit", None)
    if made is not None:
        return made
    async with state.chatkit_lock:
        made = getattr(state, "chatkit", None)
        if made is None:
            # Seconds of imports (openai-agents): in a thread, so the worker keeps serving other requests meanwhile.
            await asyncio.to_thread(importlib.import_module, "chatgate.chatkit.attachments")
            from chatgate.chatkit.attachments import Attachments
            from chatgate.chatkit.service import ChatKitService

            services, settings = services_of(scope), state.settings
            made = ChatKitService(services, settings, lambda: default_model(services, settings))
            made.attachments = Attachments(made, settings)
            state.chatkit = made
    return made


async def chatkit(scope: Scope, receive: Receive, send: Send) -> None:
    req = info(scope)
    context: Any = None
    try:
        raw = await read_body(receive)
        ck = await service(scope)
        from chatgate.chatkit.server import Request

        assert req.principal is not None
        identity = ck.identify(scope, req.principal)
        context = Request(user_id=identity.user_id, identity=identity, scope=scope)
        req.user_id = identity.user_id
        await until_disconnect(receive, _answer(ck, scope, raw, context, send))
    except ChatgateError as exc:
        req.error_code = exc.code
        await send_error(send, exc)
    except ClientLeft:
        req.status = 499
    finally:
        if context is not None and context.turns:
            turn = context.turns[-1]
            model = turn.payload.get("model")
            req.model = model if isinstance(model, str) else None
            describe(req, turn)


async def _answer(ck: ChatKitService, scope: Scope, raw: bytes, context: Any, send: Send) -> None:
    answer = await ck.handle(scope, raw, context)
    turn = context.turns[-1] if context.turns else None
    if isinstance(answer, bytes):
        await send_bytes(send, 200, answer, JSON_HEADERS)
    else:
        await send_stream(send, answer, answer_headers(SSE_HEADERS, turn) if turn is not None else SSE_HEADERS)


# ---- the upload URL of attachments.create -----------------------------------------------------------------------

ATTACHMENT_PATH = PATH + "/attachments/{attachment_id}"
ATTACHMENT_PREFIX = PATH + "/attachments/*"  # public: the URL's token is the credential


def attachment_body_limits(settings: Settings) -> list[tuple[str, str, int]]:
    """The upload's own body limit, for ``BodyLimit`` (a multipart body is a little larger than its file)."""
    limit = settings.chatkit.attachments.max_bytes + 64 * 1024
    return [("PUT", ATTACHMENT_PATH, limit), ("POST", ATTACHMENT_PATH, limit)]


async def attachment(request: Request) -> Response:
    """``PUT`` (or ``POST``, raw or multipart ``file``) the bytes of an attachment; ``GET`` them back (its preview).
    The token of the URL ``attachments.create`` gave is the credential; anything else is a 404."""
    ck = await service(request.scope)
    attachment_id = request.path_params["attachment_id"]
    token = request.query_params.get("token") or ""
    if ck.attachments is None:
        raise NotFound("No such attachment.", details={"attachment_id": attachment_id})
    if request.method == "GET":
        data, mime = await ck.attachments.read(attachment_id, token)
        image = mime.startswith("image/")
        headers = {
            "x-content-type-options": "nosniff",
            "content-security-policy": "sandbox; default-src 'none'",
            "cache-control": "private, max-age=3600",
            "content-disposition": "inline" if image else "attachment",
        }
        return Response(data, media_type=mime, headers=headers)
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        file = form.get("file")
        if file is None or isinstance(file, str):
            raise BadRequest("Send the file as the multipart part 'file'.", details={"field": "file"})
        data = await file.read()
        await form.close()
    else:
        data = await request.body()
    return json_response(await ck.attachments.receive(attachment_id, token, data))
