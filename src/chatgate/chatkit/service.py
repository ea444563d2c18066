"""One ``/chatkit`` request, up to the point its status is settled: identify the caller (from the credential,
never the body), let ChatKit parse and dispatch it, check that a streaming request's thread and item are the
caller's, and run a stream until its answer began (so that a refusal -- a limit, an unknown model, a store that
is down -- is an HTTP error with the unified body, not a 200 with an error inside)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import orjson
from chatkit.server import NonStreamingResult
from chatkit.store import NotFoundError
from chatkit.types import UserMessageItem
from pydantic import ValidationError
from starlette.types import Scope

from chatgate.chatkit.server import Gateway, Request
from chatgate.chatkit.store import Owner, SqlStore
from chatgate.errors import BadRequest, Conflict, InvalidJSON, NotFound
from chatgate.identity.keys import Principal
from chatgate.identity.model import Identity
from chatgate.sessions.manager import conversation_id
from chatgate.settings import Settings
from chatgate.turn import Services


class Prepared:
    """A stream whose first events are in: those, then the rest as they come."""

    def __init__(self, head: list[bytes], rest: AsyncGenerator[bytes, None]) -> None:
        self.head, self.rest = head, rest

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.head:
            yield chunk
        async for chunk in self.rest:
            yield chunk

    async def aclose(self) -> None:
        await self.rest.aclose()


class ChatKitService:
    """Made on the first ``/chatkit`` request and kept on the app (``api/chatkit.py``)."""

    def __init__(self, services: Services, settings: Settings, default_model: Callable[[], str | None]) -> None:
        self.services = services
        self.store = SqlStore(services.sessions.store.engine)
        self.store.deleted = self._thread_deleted
        self.server = Gateway(self.store, services, settings.chatkit, default_model)
        self.attachments: Any = None

    def identify(self, scope: Scope, principal: Principal) -> Identity:
        """Who is calling: the credential (and signed or trusted headers), never the body's metadata."""
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        client = scope.get("client")
        resolved = self.services.resolver.resolve(
            principal, headers, {}, client[0] if client else None, headers.get("x-forwarded-for")
        )
        return resolved.identity

    async def _thread_deleted(self, thread_id: str, attachments: list[str], owner: Owner) -> None:
        if self.attachments is not None:
            await self.attachments.forget(attachments, owner)
            collection = await self.attachments.collection(thread_id, owner)
            if collection is not None and self.services.rag is not None:
                await self.services.rag.delete_collection(collection)
        cid = conversation_id(owner.user_id, "chatkit:" + thread_id)
        await self.services.sessions.store.conversations.delete_for_user(owner.user_id, cid)
        self.services.sessions.forget(cid)

    async def handle(self, scope: Scope, raw: bytes, context: Request) -> bytes | Prepared:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise InvalidJSON("The body is not valid JSON.", details={"field": "body"}) from None
        if not isinstance(data, dict):
            raise BadRequest("The body must be a JSON object.", details={"field": "body"})
        kind = data.get("type")
        context.kind = kind if isinstance(kind, str) else ""
        metadata = data.get("metadata")
        context.metadata = metadata if isinstance(metadata, dict) else {}
        try:
            result = await self.server.dispatch(raw, context)
            if isinstance(result, NonStreamingResult):
                return result.json
        except ValidationError as exc:
            raise _invalid(exc) from None
        except NotFoundError as exc:
            raise NotFound(_not_found(exc), details=_ids(data)) from None
        stream = result.json_events
        try:
            await self._check(data, context)
            head: list[bytes] = []
            while not (context.started or context.error is not None):
                try:
                    head.append(await stream.__anext__())
                except StopAsyncIteration:
                    break
        except NotFoundError as exc:
            await stream.aclose()
            raise NotFound(_not_found(exc), details=_ids(data)) from None
        except ValueError as exc:  # ChatKit's own checks of the thread's state
            await stream.aclose()
            raise Conflict(str(exc), details=_ids(data)) from None
        except BaseException:
            await stream.aclose()
            raise
        if context.error is not None and not context.started:
            await stream.aclose()
            raise context.error
        return Prepared(head, stream)

    async def _check(self, data: dict[str, Any], context: Request) -> None:
        """A streaming request on a thread (or item) that is not the caller's is a 404 before any stream."""
        # (Elsewhere ChatKit's own first steps load the thread and the item, before any event: not found there
        # is a 404 here too, and its checks of the thread's state -- no pending client tool call -- a 409.)
        if context.kind != "threads.retry_after_item":
            return
        params = data["params"]
        thread_id = params["thread_id"]
        await self.store.load_thread(thread_id, context)
        item = await self.store.load_item(thread_id, params["item_id"], context)
        if not isinstance(item, UserMessageItem):
            raise BadRequest("'params.item_id' must name a user message.", details={"field": "params.item_id"})


def _invalid(exc: ValidationError) -> BadRequest:
    first = exc.errors()[0]
    loc = [str(p) for p in first.get("loc", ())]
    # A tagged union reports the tag's value as a path part: keep the fields only.
    fields = [p for p in loc if not p.startswith(("threads.", "items.", "attachments.", "input."))]
    name = ".".join(fields) or "type"
    if first.get("type") in ("union_tag_invalid", "union_tag_not_found"):
        name = "type"
    message = first.get("msg", "invalid")
    return BadRequest(f"Invalid ChatKit request: '{name}': {message}.", details={"field": name})


def _not_found(exc: NotFoundError) -> str:
    text = str(exc)
    kind = text.split(" ", 1)[0] if text else "Thread"
    return f"No such {kind.lower()}." if kind in ("Thread", "Item", "Attachment") else "Not found."


def _ids(data: dict[str, Any]) -> dict[str, Any]:
    params = data.get("params")
    if not isinstance(params, dict):
        return {}
    return {k: params[k] for k in ("thread_id", "item_id", "attachment_id") if isinstance(params.get(k), str)}


__all__ = ["ChatKitService", "Prepared", "Request"]
