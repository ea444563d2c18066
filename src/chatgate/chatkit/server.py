"""The protocol adapter: ``openai-chatkit``'s ``ChatKitServer`` parses and dispatches every request type and
encodes the stream; the answer itself comes from chatgate's pipeline through a ``ChatKitDoor``, so identity,
limits, fitting, grounding, cache, retries, accounting and the tool loop apply as on every door.

``respond`` turns what the door collected (``ChatKitEvent``: text deltas, tool steps, the whole reply) into
ChatKit's thread events: a workflow item for the server tools' steps, the assistant message streamed as it
arrives (its sources as annotations), and a ``client_tool_call`` item when the model called a tool of the
page's. A stream the client stops keeps what was said, marked cut off.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import orjson
from chatkit.actions import Action
from chatkit.errors import CustomStreamError
from chatkit.server import ChatKitServer, NonStreamingResult, StreamingResult
from chatkit.store import NotFoundError, Store
from chatkit.types import (
    Annotation,
    AssistantMessageContent,
    AssistantMessageContentPartAdded,
    AssistantMessageContentPartDone,
    AssistantMessageContentPartTextDelta,
    AssistantMessageItem,
    AudioInput,
    ChatKitReq,
    ClientToolCallItem,
    CustomSummary,
    CustomTask,
    FeedbackKind,
    FileSource,
    FileTask,
    SDKHiddenContextItem,
    StreamOptions,
    SyncCustomActionResponse,
    ThreadItem,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemUpdatedEvent,
    ThreadMetadata,
    ThreadStreamEvent,
    TranscriptionResult,
    UserMessageItem,
    WidgetItem,
    Workflow,
    WorkflowItem,
    WorkflowTaskAdded,
    WorkflowTaskUpdated,
    is_streaming_req,
)
from pydantic import TypeAdapter
from starlette.types import Scope

from chatgate import pipeline
from chatgate.api.doors import ChatKitDoor, ChatKitEvent
from chatgate.api.endpoint import new_turn
from chatgate.chatkit import context as page_context
from chatgate.chatkit import history
from chatgate.chatkit.store import Owner, SqlStore, set_feedback, utc
from chatgate.errors import ChatgateError, NotFound, Unsupported
from chatgate.identity.model import Identity
from chatgate.sessions.manager import conversation_id
from chatgate.settings import ChatKitSettings
from chatgate.turn import Chunks, Services, ToolStep, Turn
from chatgate.upstream.sse import DONE_EVENT

TITLE_CHARS = 60
COLLECTION = "chatgate_collection"  # the thread's own documents: a key of its metadata


REQUEST = TypeAdapter[ChatKitReq](ChatKitReq)


class _NoTraceback(logging.Filter):
    """ChatKit logs a failed stream with its traceback: the message stays, the traceback (paths, values) goes."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True


logging.getLogger("chatkit").addFilter(_NoTraceback())


@dataclass(slots=True)
class Request(Owner):
    """One ``/chatkit`` request: whose it is, where it came from, and how its answer went."""

    identity: Identity | None = None
    scope: Scope | None = None
    kind: str = ""  # the request's type (``threads.add_user_message``, ...)
    metadata: dict[str, Any] = field(default_factory=dict)  # the page's context: never identity
    error: ChatgateError | None = None  # the pipeline refused the turn before its answer began
    started: bool = False  # the answer began: the response's status is settled
    turns: list[Turn] = field(default_factory=list)


class Gateway(ChatKitServer[Request]):
    def __init__(self, store: SqlStore, services: Services, settings: ChatKitSettings, default_model: Any) -> None:
        super().__init__(cast("Store[Request]", store))  # a Store of any context with a user id
        self.sql = store
        self.services = services
        self.settings = settings
        self.default_model = default_model  # () -> str | None: the served default, when settings name none
        self.client_tools = {t.name: t for t in settings.client_tools}
        self.images: Any = None  # (item, context) -> image parts (``chatkit/attachments.py``)
        self.documents: Any = None  # (thread, item, context) -> None: the message's documents ingested

    def get_stream_options(self, thread: ThreadMetadata, context: Request) -> StreamOptions:
        return StreamOptions(allow_cancel=True)

    def _to_thread_response(self, thread: Any) -> Any:
        """Every thread the client sees (``thread.created`` too, made from ChatKit's naive local time) in UTC
        with its zone. (A private hook of ChatKitServer: the package is pinned.)"""
        thread.created_at = utc(thread.created_at)
        return super()._to_thread_response(thread)

    # ---- the answer ----------------------------------------------------------------------------------------

    async def dispatch(self, request: bytes, context: Request) -> StreamingResult | NonStreamingResult:
        """``ChatKitServer.process`` with its request type adapter built once (``process`` builds one per request,
        ~40 ms): parse, then ChatKit's own streaming or JSON handler. (Its private handlers: the package is pinned.)"""
        parsed = REQUEST.validate_json(request)
        if is_streaming_req(parsed):
            return StreamingResult(self._process_streaming(parsed, context))
        return NonStreamingResult(await self._process_non_streaming(parsed, context))

    async def respond(
        self, thread: ThreadMetadata, input_user_message: UserMessageItem | None, context: Request
    ) -> AsyncIterator[ThreadStreamEvent]:
        try:
            door, model = await self._prepare(thread, input_user_message, context)
        except ChatgateError as exc:
            raise self._refused(context, exc) from None
        except NotFoundError:
            raise self._refused(
                context, NotFound("No such attachment.", details={"field": "params.input.attachments"})
            ) from None
        async for event in self._answer(thread, door, model, context):
            yield event

    async def _prepare(
        self, thread: ThreadMetadata, item: UserMessageItem | None, context: Request
    ) -> tuple[ChatKitDoor, str | None]:
        """The turn's door: the thread's history, the new message (its images, its documents ingested), the
        page's context; and the model."""
        thread.created_at = utc(thread.created_at)  # before ChatKit compares it with its copy: one save, not two
        if item is not None and self.documents is not None:
            await self.documents(thread, item, context)
        # The thread's items and its conversation (the door's, for the pipeline's session step) read together.
        assert context.identity is not None
        cid = conversation_id(context.user_id, ChatKitDoor.key(thread.id))
        session = asyncio.ensure_future(self.services.sessions.find_for_user(context.user_id, cid))
        session.add_done_callback(lambda f: f.cancelled() or f.exception())  # a turn refused first never awaits it
        try:
            items, cut_off = await self.sql.recent_items(
                thread.id, history.items_window(self.settings.history_turns), context
            )
        except BaseException:
            session.cancel()
            raise
        before = items
        message: Any = None
        if item is not None:
            at = next((n for n, it in enumerate(items) if it.id == item.id), len(items))
            before = items[:at]
            images = await self.images(item, context) if self.images is not None else []
            message = history.user_content(item, images)
        retry = context.kind == "threads.retry_after_item"
        door = ChatKitDoor(
            thread.id,
            history.messages(before, cut_off, self.settings.history_turns),
            message,
            keep_message=history.user_text(item) if item is not None and not retry else None,
            system=page_context.render(self.settings, context.metadata),
            collections=await self._collections(thread, context),
            session=session,
        )
        if item is not None and thread.title is None:
            thread.title = _title(history.user_text(item))  # ChatKit saves it and tells the client
        return door, self._model(item, items)

    async def _answer(
        self, thread: ThreadMetadata, door: ChatKitDoor, model: str | None, context: Request
    ) -> AsyncIterator[ThreadStreamEvent]:
        if not model:
            raise self._refused(
                context, NotFound("No model given and no default model is served.", details={"model": None})
            )
        payload: dict[str, Any] = {"model": model, "messages": [], "stream": True}
        if self.client_tools:
            payload["tools"] = [
                {
                    "type": "function",
                    "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
                }
                for t in self.client_tools.values()
            ]
        assert context.scope is not None
        turn = new_turn(context.scope, payload, None, message=door.message)
        turn.route = ""  # /chatkit's route limits are RouteLimits' (every request type), not counted twice
        context.turns.append(turn)
        try:
            answer = await pipeline.run(self.services, door, turn)
        except ChatgateError as exc:
            raise self._refused(context, exc) from None
        context.started = True
        stream = _Stream(self, thread, door, context)
        chunks: Chunks = answer if not isinstance(answer, bytes) else _Once()
        try:
            async for chunk in chunks:
                for event in stream.take():
                    yield event
                if chunk != b"\x00" and b'data: {"error"' in chunk:
                    raise CustomStreamError(_stream_error(chunk), allow_retry=True)
            for event in stream.take():
                yield event
        finally:
            await chunks.aclose()

    async def _collections(self, thread: ThreadMetadata, context: Request) -> tuple[str, ...]:
        """The thread's private collection, once a document was attached (its id kept in the thread's
        metadata, which ChatKit stores and never shows the client)."""
        found = thread.metadata.get(COLLECTION)
        return (found,) if isinstance(found, str) else ()

    def _refused(self, context: Request, exc: ChatgateError) -> CustomStreamError:
        """Before the answer began: the endpoint answers with the error's own status and body."""
        context.error = exc
        return CustomStreamError(exc.message, allow_retry=exc.status >= 500 or exc.status == 429)

    def _model(self, item: UserMessageItem | None, items: list[ThreadItem]) -> str | None:
        """The message's model (ChatKit's model picker), the thread's last one, or the configured default."""
        for it in [item] if item is not None else reversed(items):
            if isinstance(it, UserMessageItem):
                if it.inference_options.model:
                    return it.inference_options.model
                break
        chosen: str | None = self.settings.default_model or self.default_model()
        return chosen

    # ---- the other request types -------------------------------------------------------------------------

    async def add_feedback(self, thread_id: str, item_ids: list[str], feedback: FeedbackKind, context: Request) -> None:
        await self.sql.load_thread(thread_id, context)  # not the caller's: not found
        if await set_feedback(self.sql, thread_id, item_ids, str(feedback), context) != len(set(item_ids)):
            raise NotFound("No such item in this thread.", details={"thread_id": thread_id, "item_ids": item_ids})

    async def transcribe(self, audio_input: AudioInput, context: Request) -> TranscriptionResult:
        raise Unsupported(
            "input.transcribe is not supported: this gateway has no speech backend.",
            details={"type": "input.transcribe"},
        )

    async def action(
        self, thread: ThreadMetadata, action: Action[str, Any], sender: WidgetItem | None, context: Request
    ) -> AsyncIterator[ThreadStreamEvent]:
        """A custom action: kept in the thread as hidden context, and the model answers it."""
        note = f"The user performed the action '{action.type}' with {orjson.dumps(action.payload).decode()}."
        hidden = SDKHiddenContextItem(
            id=self.sql.generate_item_id("sdk_hidden_context", thread, context),
            thread_id=thread.id,
            created_at=datetime.now(UTC),
            content=note,
        )
        await self.sql.add_thread_item(thread.id, hidden, context)
        items, cut_off = await self.sql.recent_items(
            thread.id, history.items_window(self.settings.history_turns), context
        )
        door = ChatKitDoor(
            thread.id,
            history.messages(items, cut_off, self.settings.history_turns),
            None,
            system=page_context.render(self.settings, context.metadata),
            collections=await self._collections(thread, context),
        )
        async for event in self._answer(thread, door, self._model(None, items), context):
            yield event

    async def sync_action(
        self, thread: ThreadMetadata, action: Action[str, Any], sender: WidgetItem | None, context: Request
    ) -> SyncCustomActionResponse:
        return SyncCustomActionResponse()

    async def handle_stream_cancelled(
        self, thread: ThreadMetadata, pending_items: list[ThreadItem], context: Request
    ) -> None:
        """What was said stays, marked cut off; hidden context tells the model the user stopped it."""
        for item in pending_items:
            if isinstance(item, AssistantMessageItem) and any(c.text.strip() for c in item.content):
                await self.sql.save_item(thread.id, item, context, cut_off=True)
        hidden = SDKHiddenContextItem(
            id=self.sql.generate_item_id("sdk_hidden_context", thread, context),
            thread_id=thread.id,
            created_at=datetime.now(UTC),
            content="The user stopped the previous answer before it was finished.",
        )
        await self.sql.add_thread_item(thread.id, hidden, context)


class _Once:
    """A whole answer (not streamed): its events are in the door already."""

    def __init__(self) -> None:
        self.done = False

    def __aiter__(self) -> _Once:
        return self

    async def __anext__(self) -> bytes:
        if self.done:
            raise StopAsyncIteration
        self.done = True
        return b"\x00"

    async def aclose(self) -> None:
        return None


class _Stream:
    """The door's events as ChatKit's: one workflow item per run of tool steps, then the assistant message."""

    def __init__(self, server: Gateway, thread: ThreadMetadata, door: ChatKitDoor, context: Request) -> None:
        self.server, self.thread, self.door, self.context = server, thread, door, context
        self.message: AssistantMessageItem | None = None
        self.text: list[str] = []
        self.workflow: WorkflowItem | None = None
        self.tasks: dict[str, int] = {}  # a tool call's task in the workflow

    def _id(self, kind: Any) -> str:
        return self.server.sql.generate_item_id(kind, self.thread, self.context)

    def take(self) -> list[ThreadStreamEvent]:
        out: list[ThreadStreamEvent] = []
        events, self.door.events = self.door.events, []
        for event in events:
            if event.kind == "delta":
                out += self._delta(event.text)
            elif event.kind == "tool" and event.step is not None:
                out += self._tool(event.step)
            elif event.kind == "done":
                out += self._done(event)
        return out

    def _close_workflow(self) -> list[ThreadStreamEvent]:
        workflow, self.workflow = self.workflow, None
        if workflow is None:
            return []
        steps = len(workflow.workflow.tasks)
        workflow.workflow.summary = CustomSummary(title=f"{steps} tool step{'s' if steps != 1 else ''}", icon="search")
        return [ThreadItemDoneEvent(item=workflow)]

    def _open(self) -> list[ThreadStreamEvent]:
        if self.message is not None:
            return []
        self.message = AssistantMessageItem(
            id=self._id("message"), thread_id=self.thread.id, created_at=datetime.now(UTC), content=[]
        )
        empty = AssistantMessageContent(text="")
        return [
            ThreadItemAddedEvent(item=self.message),
            ThreadItemUpdatedEvent(
                item_id=self.message.id, update=AssistantMessageContentPartAdded(content_index=0, content=empty)
            ),
        ]

    def _delta(self, text: str) -> list[ThreadStreamEvent]:
        if not text:
            return []
        out = [*self._close_workflow(), *self._open()]
        assert self.message is not None
        self.text.append(text)
        out.append(
            ThreadItemUpdatedEvent(
                item_id=self.message.id, update=AssistantMessageContentPartTextDelta(content_index=0, delta=text)
            )
        )
        return out

    def _tool(self, step: ToolStep) -> list[ThreadStreamEvent]:
        out: list[ThreadStreamEvent] = []
        if self.workflow is None:
            self.workflow = WorkflowItem(
                id=self._id("workflow"),
                thread_id=self.thread.id,
                created_at=datetime.now(UTC),
                workflow=Workflow(type="custom", tasks=[], expanded=False),
            )
            self.tasks = {}
            out.append(ThreadItemAddedEvent(item=self.workflow))
        tasks = self.workflow.workflow.tasks
        task = _task(step)
        if step.call_id not in self.tasks:
            self.tasks[step.call_id] = len(tasks)
            tasks.append(task)
            out.append(
                ThreadItemUpdatedEvent(
                    item_id=self.workflow.id, update=WorkflowTaskAdded(task_index=len(tasks) - 1, task=task)
                )
            )
        else:
            index = self.tasks[step.call_id]
            tasks[index] = task
            out.append(
                ThreadItemUpdatedEvent(
                    item_id=self.workflow.id, update=WorkflowTaskUpdated(task_index=index, task=task)
                )
            )
        return out

    def _done(self, event: ChatKitEvent) -> list[ThreadStreamEvent]:
        out = self._close_workflow()
        reply = event.reply
        calls = _client_calls(reply, self.server.client_tools)
        if self.message is None and not calls:
            out += self._open()  # an empty answer is an (empty) message all the same
        if self.message is not None:
            content = AssistantMessageContent(text="".join(self.text), annotations=_annotations(event.sources))
            self.message.content = [content]
            out.append(
                ThreadItemUpdatedEvent(
                    item_id=self.message.id, update=AssistantMessageContentPartDone(content_index=0, content=content)
                )
            )
            out.append(ThreadItemDoneEvent(item=self.message))
        for call in calls:
            out.append(
                ThreadItemDoneEvent(
                    item=ClientToolCallItem(
                        id=self._id("tool_call"),
                        thread_id=self.thread.id,
                        created_at=datetime.now(UTC),
                        call_id=call["id"],
                        name=call["name"],
                        arguments=call["arguments"],
                    )
                )
            )
        return out


def _task(step: ToolStep) -> Any:
    args = step.arguments if isinstance(step.arguments, dict) else {}
    query = args.get("query")
    title = f"Searching: {query}" if step.name == "search_documents" and isinstance(query, str) else step.name
    if not step.done:
        return CustomTask(title=title, icon="search", status_indicator="loading")
    if step.error is not None:
        return CustomTask(title=title, content=f"failed: {step.error}", status_indicator="complete")
    if step.name == "search_documents":
        return FileTask(title=title, sources=[_file(s) for s in step.sources], status_indicator="complete")
    return CustomTask(title=title, status_indicator="complete")


def _file(source: dict[str, Any]) -> FileSource:
    document = str(source.get("document") or "document")
    title = source.get("title")
    return FileSource(
        title=str(title) if title else document,
        filename=document,
        description=f"[{source.get('index')}]" + (f" page {source['page']}" if source.get("page") else ""),
    )


def _annotations(sources: list[dict[str, Any]] | None) -> list[Annotation]:
    return [Annotation(source=_file(s), index=s.get("index")) for s in sources or [] if isinstance(s, dict)]


def _client_calls(reply: Any, tools: dict[str, Any]) -> list[dict[str, Any]]:
    """The page's tools the reply called: ``{id, name, arguments}``."""
    out: list[dict[str, Any]] = []
    if not isinstance(reply, list):
        return out
    for part in reply:
        if not isinstance(part, dict) or part.get("type") != "tool_calls":
            continue
        for call in part.get("tool_calls") or ():
            function = call.get("function") or {}
            if function.get("name") not in tools:
                continue
            try:
                arguments = orjson.loads(function.get("arguments") or "{}")
            except orjson.JSONDecodeError:
                arguments = {}
            out.append(
                {
                    "id": call.get("id") or "",
                    "name": function["name"],
                    "arguments": arguments if isinstance(arguments, dict) else {},
                }
            )
    return out


def _stream_error(chunk: bytes) -> str:
    for line in chunk.split(b"\n"):
        if line.startswith(b'data: {"error"'):
            try:
                message = orjson.loads(line[6:])["error"]["message"]
                return str(message)
            except (orjson.JSONDecodeError, KeyError, TypeError):
                break
    return "The answer broke off."


def _title(text: str) -> str | None:
    line = " ".join(text.split())
    if not line:
        return None
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "…"


__all__ = ["DONE_EVENT", "Gateway", "Request"]
