"""Relaying an upstream SSE stream to our client, chunk by chunk as it arrives.

The upstream is always asked for usage; the usage-only chunk goes on to the client only if the
client asked for it. A failure mid-stream becomes an error event and ``[DONE]``: once bytes have
gone out there is no retry and no status code left to change.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import aiohttp
import orjson

from chatgate.errors import UpstreamError, UpstreamTimeout
from chatgate.upstream.client import Opened
from chatgate.upstream.sse import DONE_EVENT, Event, SSEDecoder, encode_comment, encode_data, error_event

UsageSink = Callable[[dict[str, Any]], None]


class Cap(Protocol):
    """What may stop a stream early (``limits/cap.StreamCap``): ``feed`` each data chunk, a cheap check that says
    when to ask; ``await spent()`` True: stop here."""

    def feed(self, data: bytes) -> bool: ...
    async def spent(self) -> bool: ...


def ask_for_usage(payload: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The payload with ``stream_options.include_usage`` on, and whether the client asked for it."""
    options = payload.get("stream_options")
    wanted = isinstance(options, dict) and options.get("include_usage") is True
    if wanted:
        return payload, True
    merged = {**options, "include_usage": True} if isinstance(options, dict) else {"include_usage": True}
    return {**payload, "stream_options": merged}, False


def _is_usage_only(data: bytes) -> tuple[bool, dict[str, Any] | None]:
    """(drop-able usage-only chunk?, the usage) for one data payload. Cheap when there is no usage."""
    if b'"usage"' not in data:
        return False, None
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False, None
    if not isinstance(chunk, dict) or not isinstance(chunk.get("usage"), dict):
        return False, None
    return not chunk.get("choices"), chunk["usage"]


class ReplyBuffer:
    """The assistant reply a stream carries (first choice): its text, and tool calls merged from their deltas.

    ``lazy``: chunks are kept as they came and parsed only when the reply is asked for (most streams are
    relayed without anyone reading their text on the way).
    """

    def __init__(self, lazy: bool = False) -> None:
        self.lazy = lazy
        self._pending: list[bytes] | None = [] if lazy else None
        self.called_tool = False  # a chunk carried tool calls (known without parsing)
        self.parts: list[str] = []
        self.reasoning: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.head: dict[str, Any] = {}  # id, model, created, system_fingerprint of the first chunk
        self.finish_reason: str | None = None
        self.whole = True  # False once a chunk carried what ``completion`` cannot rebuild (n > 1, logprobs)

    def feed(self, data: bytes) -> str:
        """Take in one chunk; returns its content delta ('' when there is none, or when lazy)."""
        if b'"tool_calls"' in data:
            self.called_tool = True
        if self._pending is not None:
            self._pending.append(data)
            return ""
        return self._parse(data)

    def _settle(self) -> None:
        """Parse the chunks kept unparsed (lazy: the next ones are kept too, until the reply is asked for again)."""
        pending = self._pending
        self._pending = [] if self.lazy else None
        for data in pending or ():
            self._parse(data)

    def _parse(self, data: bytes) -> str:
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return ""
        choices = chunk.get("choices") if isinstance(chunk, dict) else None
        if not choices or not isinstance(choices[0], dict):
            return ""
        if not self.head:
            self.head = {k: chunk[k] for k in ("id", "model", "created", "system_fingerprint") if k in chunk}
        choice = choices[0]
        if len(choices) > 1 or choice.get("index", 0) != 0 or choice.get("logprobs"):
            self.whole = False
        if isinstance(choice.get("finish_reason"), str):
            self.finish_reason = choice["finish_reason"]
        delta = choice.get("delta") or {}
        for call in delta.get("tool_calls") or ():
            if isinstance(call, dict):
                self._merge_call(call)
        thought = delta.get("reasoning_content")
        if isinstance(thought, str) and thought:
            self.reasoning.append(thought)
        content = delta.get("content")
        if isinstance(content, str) and content:
            self.parts.append(content)
            return content
        return ""

    def _merge_call(self, call: dict[str, Any]) -> None:
        index = call.get("index", len(self.tool_calls))
        merged = self.tool_calls.setdefault(
            index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
        )
        for field in ("id", "type"):
            if call.get(field):
                merged[field] = call[field]
        function = call.get("function") or {}
        merged["function"]["name"] += function.get("name") or ""
        merged["function"]["arguments"] += function.get("arguments") or ""

    @property
    def text(self) -> str:
        self._settle()
        return "".join(self.parts)

    def completion(self, usage: dict[str, Any] | None) -> bytes | None:
        """The reply as the ``chat.completion`` body a non-streaming call would have returned (for the
        response cache), or None when the stream carried what it cannot rebuild (several choices, logprobs)
        or never finished."""
        self._settle()
        if not self.whole or not self.head or self.finish_reason is None:
            return None
        message: dict[str, Any] = {
            "role": "assistant",
            "content": self.text if self.parts or not self.tool_calls else None,
        }
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        body: dict[str, Any] = {
            "id": self.head.get("id", ""),
            "object": "chat.completion",
            "created": self.head.get("created", 0),
            "model": self.head.get("model", ""),
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish_reason}],
        }
        if self.head.get("system_fingerprint") is not None:
            body["system_fingerprint"] = self.head["system_fingerprint"]
        if usage is not None:
            body["usage"] = usage
        return orjson.dumps(body)

    def content(self) -> Any:
        """As stored: the text, or content parts when the reply called tools (the non-streaming shape)."""
        self._settle()
        if not self.tool_calls:
            return self.text
        calls = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        return [
            {"type": "tool_calls", "tool_calls": calls},
            *([{"type": "text", "text": self.text}] if self.parts else []),
        ]


class Relay:
    """The SSE bytes for our client, as an async iterable whose ``aclose`` always frees the upstream.

    (A plain async generator that is closed before its first step never runs its ``finally``:
    a client that leaves just as the stream opens would leak the upstream connection.)

    Hooks: ``on_usage`` gets the usage chunk; ``reply`` collects the reply; ``transform`` re-encodes a
    data chunk for the client (``b""`` drops it; default: passed on as it came); ``tail`` gives a last
    event before ``[DONE]`` when the stream completed (awaited); ``on_end(completed)`` runs once, when
    it is closed (awaited if it returns an awaitable); ``cap`` may stop the stream early: the upstream is
    dropped and the client gets a last chunk with ``finish_reason: "length"`` (as from an upstream that stopped
    at its length), then the tail and ``[DONE]``; the stream counts as completed (``stopped`` True).
    """

    def __init__(
        self,
        opened: Opened,
        *,
        include_usage: bool,
        on_usage: UsageSink | None = None,
        reply: ReplyBuffer | None = None,
        transform: Callable[[bytes, str], bytes] | None = None,
        tail: Callable[[], Awaitable[bytes]] | None = None,
        on_end: Callable[[bool], Awaitable[None] | None] | None = None,
        cap: Cap | None = None,
    ) -> None:
        self._opened = opened
        self.cap = cap
        self.stopped = False  # the cap ended the stream
        self._ask = False  # the cap wants asking after this chunk
        self.include_usage = include_usage
        self.on_usage = on_usage
        self.reply = reply
        self.transform = transform
        self.tail = tail
        self.on_end = on_end
        self.completed = False
        self.first_at: float | None = opened.first_at  # loop time the first event arrived
        self.failed = False  # the upstream broke off (or timed out) mid-stream
        self._ended = False
        self._chunks = self._run()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks

    async def aclose(self) -> None:
        await self._chunks.aclose()
        self._opened.close(abort=True)  # a no-op when the relay finished and closed it already
        if not self._ended:
            self._ended = True
            if self.on_end is not None:
                ended = self.on_end(self.completed)
                if ended is not None:
                    await ended

    def _data(self, data: bytes) -> bytes:
        usage_only, usage = _is_usage_only(data)
        if usage is not None and self.on_usage is not None:
            self.on_usage(usage)
        if usage_only and not self.include_usage:
            return b""
        text = self.reply.feed(data) if self.reply is not None else ""
        if self.cap is not None and self.cap.feed(data):
            self._ask = True
        return self.transform(data, text) if self.transform is not None else encode_data(data)

    def _feed(self, events: list[Event]) -> tuple[bytes, bool, list[Event]]:
        """(bytes for our client, whether ``[DONE]`` came, the events left) for the upstream's events: up to
        ``[DONE]``, or to the chunk after which the cap wants asking."""
        out: list[bytes] = []
        for i, ev in enumerate(events):
            if ev.data is None:
                out.extend(encode_comment(c) for c in ev.comments)
                continue
            if ev.is_done:
                return b"".join(out), True, []
            out.append(self._data(ev.data))
            if self._ask:
                return b"".join(out), False, events[i + 1 :]
        return b"".join(out), False, []

    async def _stop(self) -> bool:
        """Whether the cap stops the stream here (it asked to be asked)."""
        self._ask = False
        assert self.cap is not None
        self.stopped = await self.cap.spent()
        return self.stopped

    def _length_chunk(self) -> bytes:
        """The chunk an upstream ends with when it stops at its length, named after the stream's own."""
        head: dict[str, Any] = {}
        if self.reply is not None:
            self.reply.text  # noqa: B018 -- parses what it kept unparsed: the head is its first chunk's
            head = self.reply.head
        choice = {"index": 0, "delta": {}, "finish_reason": "length"}
        return orjson.dumps(
            {
                "id": head.get("id", ""),
                "object": "chat.completion.chunk",
                "created": head.get("created", 0),
                "model": head.get("model", ""),
                "choices": [choice],
            }
        )

    async def _run(self) -> AsyncGenerator[bytes, None]:
        """Yield SSE bytes for our client. Always ends with ``data: [DONE]``."""
        opened = self._opened
        decoder = SSEDecoder()
        failed = False
        done = False
        try:
            async with asyncio.timeout_at(opened.deadline):
                # The events read up to the first one before the stream was handed over, then each read's.
                events = decoder.feed(opened.head) if opened.head else []
                reads = opened.response.content.iter_any().__aiter__()
                while True:
                    while events and not done:
                        out, done, events = self._feed(events)
                        if out:
                            yield out
                        if not done and self._ask and await self._stop():
                            done = True
                            yield self._data(self._length_chunk())
                    if done:
                        break
                    try:
                        chunk = await anext(reads)
                    except StopAsyncIteration:
                        break
                    if self.first_at is None:
                        self.first_at = asyncio.get_running_loop().time()
                    events = decoder.feed(chunk)
                if not done:  # ended without [DONE]: pass on what is pending, then end it ourselves
                    pending = [self._data(ev.data) for ev in decoder.flush() if ev.data is not None and not ev.is_done]
                    if any(pending):
                        yield b"".join(pending)
                    done = True
        except TimeoutError:
            failed = True
            yield error_event(UpstreamTimeout("The model took too long to finish its answer.").body())
        except (aiohttp.ClientError, ConnectionError):
            failed = True
            yield error_event(UpstreamError("The model's server broke off the answer.").body())
        finally:
            # Not done here means failed, or our client left: drop the upstream connection at once.
            opened.close(failed=failed, abort=not done or self.stopped)
        self.failed = failed
        self.completed = done and not failed
        if self.completed and self.tail is not None:
            last = await self.tail()
            if last:
                yield last
        yield DONE_EVENT
