"""The doors: what differs between the front ends the pipeline serves, as small objects (``turn.Door``).

- ``OpenAIDoor`` (``/v1/chat/completions``): the client sends the history; the conversation (when a chat id
  names one) stores what the request adds; answers are OpenAI's bodies and chunks, passed on as they came.
- ``ChatAPIDoor`` (``/api/v1/chat``): one message in, the history from the stored conversation; the answer
  is ``{response, session_id, cached, sources, usage}``, a stream is ``delta`` events then a ``done`` one.
- ``ChatKitDoor`` (``/chatkit``): one per request. The history is the thread's (``chatkit/history.py`` made it
  from the stored items); what streams is not bytes for the client but ``ChatKitEvent`` values the protocol
  adapter (``chatkit/server.py``) turns into ChatKit's thread events; the relay's bytes only say "look".
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, replace
from typing import Any

import orjson

from chatgate.cache import Entry, replay_sse
from chatgate.errors import NotFound
from chatgate.rag.assistants import Assistant
from chatgate.rag.ground import sources_event
from chatgate.sessions.manager import Session, conversation_id
from chatgate.sessions.messages import Kept, new_messages
from chatgate.turn import Answer, Framing, Services, ToolStep, Turn
from chatgate.upstream.answer import parse_answer
from chatgate.upstream.sse import DONE_EVENT, choiceless_chunk, encode_comment, encode_data


class Replay:
    """Prepared SSE events (a cached answer), read like a relayed stream."""

    def __init__(self, events: list[bytes]) -> None:
        self.events = events

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for event in self.events:
            yield event

    async def aclose(self) -> None:
        return None


def _wants_usage(turn: Turn) -> bool:
    options = turn.payload.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


class OpenAIDoor:
    name = "openai"
    stored_history = False

    def __init__(self, replay_chunk_chars: int = 128) -> None:
        self.replay_chunk_chars = replay_chunk_chars

    async def open(self, services: Services, turn: Turn) -> Session:
        assert turn.resolved is not None
        resolved = turn.resolved
        return await services.sessions.get_or_create(resolved.identity, resolved.conversation_key, resolved.channel)

    def messages(self, services: Services, turn: Turn) -> list[dict[str, Any]]:
        return turn.client_messages

    def kept(self, turn: Turn) -> tuple[list[Kept], int]:
        """What the client's history adds (all of it on a conversation's first sight), then the reply."""
        assert turn.session is not None and turn.resolved is not None
        messages, mid = turn.client_messages, turn.resolved.message_id
        last = len(messages) - 1
        kept = [
            Kept(position, str(m.get("role")), m.get("content"), mid if position == last else None)
            for position, m in new_messages(messages, first=turn.session.is_first_message)
        ]
        return kept, len(messages)

    def answer(self, turn: Turn, body: bytes) -> bytes:
        return body

    def framing(self, turn: Turn) -> Framing:
        return Framing(include_usage=_wants_usage(turn))

    def tail(self, turn: Turn) -> bytes:
        """A grounded stream's sources (and warnings); the usage counted here when the upstream sent none and the
        client asked."""
        out = sources_event(turn.reply_head, turn.sources, turn.warnings)
        if turn.usage_counted and _wants_usage(turn):
            out += choiceless_chunk(turn.reply_head, usage=turn.usage)
        return out

    def tool_event(self, turn: Turn, step: ToolStep) -> bytes:
        """An SSE comment while a server tool runs: it keeps proxies from timing the stream out, and OpenAI
        clients skip it."""
        return encode_comment(f"tool {step.name}".encode()) if not step.done else b""

    def replay(self, turn: Turn, entry: Entry) -> Answer:
        if not turn.stream:
            return entry.body  # a grounded answer was stored with its sources
        events = replay_sse(entry, include_usage=_wants_usage(turn), chunk_chars=self.replay_chunk_chars)
        data = parse_answer(entry.body)
        if event := sources_event(data, _listed(data, "sources"), _listed(data, "warnings")):
            events.insert(-1, event)  # before [DONE]
        return Replay(events)


class ChatAPIDoor:
    name = "chat-api"
    stored_history = True

    async def open(self, services: Services, turn: Turn) -> Session:
        assert turn.resolved is not None
        identity = turn.resolved.identity
        if turn.session_id is None:
            return services.sessions.new(identity, "api-" + uuid.uuid4().hex, self.name)
        session = await services.sessions.find_for_user(identity.user_id, turn.session_id)
        if session is None:
            raise NotFound("No such session.", details={"session_id": turn.session_id})
        services.sessions.saw(identity)
        return session

    def messages(self, services: Services, turn: Turn) -> list[dict[str, Any]]:
        assert turn.session is not None
        return [*services.sessions.history(turn.session), {"role": "user", "content": turn.message}]

    def kept(self, turn: Turn) -> tuple[list[Kept], int]:
        assert turn.session is not None and turn.resolved is not None
        position = turn.session.message_count
        return [Kept(position, "user", turn.message, turn.resolved.message_id)], position + 1

    def body(self, turn: Turn, sources: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The answer; ``warnings`` only when there are any (an assistant's collection that matched nothing)."""
        assert turn.session is not None
        reply = turn.reply
        body = {
            "response": reply if isinstance(reply, str) else "",
            "session_id": turn.session.id,
            "cached": turn.cache_status == "HIT",
            "sources": sources if sources is not None else turn.sources or [],
            "usage": turn.usage,
        }
        if turn.warnings:
            body["warnings"] = turn.warnings
        return body

    def answer(self, turn: Turn, body: bytes) -> bytes:
        return orjson.dumps(self.body(turn))

    def framing(self, turn: Turn) -> Framing:
        return Framing(include_usage=False, transform=_delta, parse=True)

    def tail(self, turn: Turn) -> bytes:
        """The ``done`` event; with ``finish_reason: "length"`` when the answer was stopped at a token limit."""
        done = {"type": "done", **self.body(turn)}
        if turn.stopped:
            done["finish_reason"] = "length"
        return encode_data(orjson.dumps(done))

    def tool_event(self, turn: Turn, step: ToolStep) -> bytes:
        """``{"type": "tool", "step", "name", "arguments"}`` when a server tool starts; ``{"type": "tool_result",
        "step", "name", "sources" (how many), "outcome": "ok" | "error", "reason"}`` when it is done (``reason``:
        the tool's short error code; never an ``error`` field, which marks a stream's failure)."""
        if not step.done:
            event: dict[str, Any] = {"type": "tool", "step": step.step, "name": step.name, "arguments": step.arguments}
        else:
            event = {"type": "tool_result", "step": step.step, "name": step.name, "sources": len(step.sources)}
            event["outcome"] = "ok" if step.error is None else "error"
            if step.error is not None:
                event["reason"] = step.error
        return encode_data(orjson.dumps(event))

    def replay(self, turn: Turn, entry: Entry) -> Answer:
        stored = parse_answer(entry.body).get("sources")  # a grounded answer was stored with its sources
        answer = self.body(turn, stored if isinstance(stored, list) else None)
        if not turn.stream:
            return orjson.dumps(answer)
        events = [{"type": "delta", "content": answer["response"]}, {"type": "done", **answer}]
        return Replay([*(encode_data(orjson.dumps(e)) for e in events), DONE_EVENT])


def _listed(data: dict[str, Any], key: str) -> list[dict[str, Any]] | None:
    value = data.get(key)
    return value if isinstance(value, list) and value else None


def _delta(_data: bytes, text: str) -> bytes:
    return encode_data(orjson.dumps({"type": "delta", "content": text})) if text else b""


# ---- ChatKit --------------------------------------------------------------------------------------------------

TICK = b"\x00"  # what a ChatKit stream relays: its events wait in the door's list


@dataclass(slots=True)
class ChatKitEvent:
    """What happened on a ChatKit stream: ``delta`` (text), ``tool`` (a server tool's step), ``done`` (the whole
    reply, as stored, and its sources)."""

    kind: str
    text: str = ""
    step: ToolStep | None = None
    reply: Any = None
    sources: list[dict[str, Any]] | None = None


class ChatKitDoor:
    """One ChatKit turn: the thread's history and the new message (or none: a client tool's output, an
    action), the conversation ``chatkit:<thread id>`` kept like the chat API's (read through the store, each
    turn committed before the answer completes)."""

    name = "chatkit"
    stored_history = True

    def __init__(
        self,
        thread_id: str,
        history: list[dict[str, Any]],
        message: Any,
        *,
        keep_message: Any = None,
        system: str | None = None,
        collections: tuple[str, ...] = (),
        session: Awaitable[Session | None] | None = None,
    ) -> None:
        self.thread_id = thread_id
        self.history = history
        self.message = message  # the model's user message content (None: the turn has none)
        self.keep_message = keep_message  # what the conversation keeps of it (None: nothing new)
        self.system = system  # the page's context, for the system prompt
        self.collections = collections  # the thread's own documents (attachments), searched like the assistant's
        self.session = session  # the conversation's lookup, when it was started already (with the thread's items)
        self.events: list[ChatKitEvent] = []

    @staticmethod
    def key(thread_id: str) -> str:
        return "chatkit:" + thread_id

    async def open(self, services: Services, turn: Turn) -> Session:
        assert turn.resolved is not None
        identity = turn.resolved.identity
        key = self.key(self.thread_id)
        if self.collections:  # the thread's documents: grounded (or searched, for a tool assistant) with its own
            model = turn.payload["model"]
            found = turn.assistant or Assistant(name=model, model=model)
            turn.assistant = replace(found, collections=(*found.collections, *self.collections))
        lookup = self.session or services.sessions.find_for_user(
            identity.user_id, conversation_id(identity.user_id, key)
        )
        session = await lookup
        if session is None:
            return services.sessions.new(identity, key, self.name)
        services.sessions.saw(identity)
        return session

    def messages(self, services: Services, turn: Turn) -> list[dict[str, Any]]:
        out = [{"role": "system", "content": self.system}] if self.system else []
        out += self.history
        if self.message is not None:
            out.append({"role": "user", "content": self.message})
        return out

    def kept(self, turn: Turn) -> tuple[list[Kept], int]:
        assert turn.session is not None
        position = turn.session.message_count
        if self.keep_message is None:
            return [], position
        return [Kept(position, "user", self.keep_message, None)], position + 1

    def answer(self, turn: Turn, body: bytes) -> bytes:
        self.events.append(ChatKitEvent("delta", text=turn.reply if isinstance(turn.reply, str) else ""))
        self.events.append(ChatKitEvent("done", reply=turn.reply, sources=turn.sources))
        return body

    def framing(self, turn: Turn) -> Framing:
        return Framing(include_usage=False, transform=self._delta, parse=True)

    def _delta(self, _data: bytes, text: str) -> bytes:
        if not text:
            return b""
        self.events.append(ChatKitEvent("delta", text=text))
        return TICK

    def tail(self, turn: Turn) -> bytes:
        self.events.append(ChatKitEvent("done", reply=turn.reply, sources=turn.sources))
        return TICK

    def tool_event(self, turn: Turn, step: ToolStep) -> bytes:
        self.events.append(ChatKitEvent("tool", step=step))
        return TICK

    def replay(self, turn: Turn, entry: Entry) -> Answer:
        stored = parse_answer(entry.body).get("sources")
        reply = turn.reply if isinstance(turn.reply, str) else ""
        self.events.append(ChatKitEvent("delta", text=reply))
        self.events.append(ChatKitEvent("done", reply=turn.reply, sources=stored if isinstance(stored, list) else None))
        return Replay([TICK])
