"""Server-sent events: an incremental decoder and the encoder for what we send on.

Follows the WHATWG event-stream rules: lines end in LF, CRLF or CR; a blank line ends an
event; ``data`` lines are joined with LF; lines starting with ``:`` are comments (keep-alives);
a space after the colon is dropped; unknown fields are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

DONE = b"[DONE]"


@dataclass(slots=True)
class Event:
    data: bytes | None = None
    event: str | None = None
    id: str | None = None
    retry: int | None = None
    comments: list[bytes] = field(default_factory=list)

    @property
    def is_done(self) -> bool:
        return self.data is not None and self.data.strip() == DONE


class SSEDecoder:
    """Feed bytes as they arrive; get complete events back."""

    __slots__ = ("_buf", "_comments", "_data", "_event", "_has_field", "_id", "_retry", "_skip_lf")

    def __init__(self) -> None:
        self._buf = b""
        self._skip_lf = False
        self._reset()

    def _reset(self) -> None:
        self._data: list[bytes] = []
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None
        self._comments: list[bytes] = []
        self._has_field = False

    def feed(self, chunk: bytes) -> list[Event]:
        if self._skip_lf and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._skip_lf = False
        buf = self._buf + chunk
        events: list[Event] = []
        start = 0
        n = len(buf)
        while start < n:
            lf = buf.find(b"\n", start)
            cr = buf.find(b"\r", start, lf if lf >= 0 else n)
            if cr >= 0:
                end, nxt = cr, cr + 1
                if nxt < n and buf[nxt] == 0x0A:
                    nxt += 1
                elif nxt == n:
                    self._skip_lf = True  # a CRLF may be split across chunks
            elif lf >= 0:
                end, nxt = lf, lf + 1
            else:
                break
            ev = self._line(buf[start:end])
            if ev is not None:
                events.append(ev)
            start = nxt
        self._buf = buf[start:]
        return events

    def flush(self) -> list[Event]:
        """End of stream: a pending, unterminated event is dispatched (lenient: some servers omit the blank line)."""
        events: list[Event] = []
        if self._buf:
            ev = self._line(self._buf)
            self._buf = b""
            if ev is not None:
                events.append(ev)
        ev = self._line(b"")
        if ev is not None:
            events.append(ev)
        return events

    def _line(self, line: bytes) -> Event | None:
        if not line:
            if not self._has_field:
                return None
            ev = Event(
                data=b"\n".join(self._data) if self._data else None,
                event=self._event,
                id=self._id,
                retry=self._retry,
                comments=self._comments,
            )
            self._reset()
            return ev
        self._has_field = True
        if line[0] == 0x3A:  # ':'
            self._comments.append(line[1:].lstrip(b" "))
            return None
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id":
            self._id = value.decode("utf-8", "replace")
        elif name == b"retry" and value.isdigit():
            self._retry = int(value)
        return None


def encode_data(data: bytes) -> bytes:
    """One ``data`` event; multi-line data keeps its lines."""
    if b"\n" in data:
        data = data.replace(b"\n", b"\ndata: ")
    return b"data: " + data + b"\n\n"


def encode_comment(text: bytes) -> bytes:
    return b": " + text + b"\n\n"


DONE_EVENT = encode_data(DONE)


def error_event(body: dict[str, object]) -> bytes:
    """The shape the openai SDK raises on mid-stream: ``data: {"error": {...}}``."""
    return encode_data(orjson.dumps(body))


def choiceless_chunk(head: Mapping[str, Any], **fields: Any) -> bytes:
    """A ``chat.completion.chunk`` event with no choices (a stream's usage, or its sources), named after the
    stream's own chunks (``head``: their id, model and created)."""
    chunk = {
        "id": head.get("id", ""),
        "object": "chat.completion.chunk",
        "created": head.get("created", 0),
        "model": head.get("model", ""),
        "choices": [],
        **fields,
    }
    return encode_data(orjson.dumps(chunk))
