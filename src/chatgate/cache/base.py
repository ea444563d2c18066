"""The response cache interface, its entry and statistics, and the replay of an entry as a stream.

An ``Entry`` keeps the upstream's complete non-streaming response body, byte for byte, so a
non-streaming hit is served without re-encoding; a streaming hit is ``replay_sse(entry)``:
OpenAI-shaped ``chat.completion.chunk`` events built from that body.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import orjson

from chatgate.upstream.sse import DONE_EVENT, encode_data


@dataclass(frozen=True, slots=True)
class Entry:
    """One cached answer."""

    body: bytes
    """The upstream's ``chat.completion`` response body as it sent it."""
    model: str
    usage: Mapping[str, Any] | None
    """The upstream's ``usage`` of the original call (a hit itself costs no tokens)."""
    created: float
    """Unix time the entry was stored."""

    @classmethod
    def from_response(cls, body: bytes, *, created: float | None = None) -> Entry | None:
        """An entry for a complete ``chat.completion`` body, or ``None`` for anything else (an error body,
        a truncated or non-JSON body, no choices): only whole answers are cached."""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(data, dict) or data.get("object") != "chat.completion" or "error" in data:
            return None
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not all(isinstance(c, dict) for c in choices):
            return None
        usage = data.get("usage")
        model = data.get("model")
        return cls(
            body=bytes(body),
            model=model if isinstance(model, str) else "",
            usage=usage if isinstance(usage, dict) else None,
            created=time.time() if created is None else created,
        )

    @property
    def size(self) -> int:
        """Bytes the entry is accounted for (its body; the metadata is small and bounded)."""
        return len(self.body)

    def encode(self) -> bytes:
        """The stored form: one JSON line of metadata, then the body as it is."""
        head = orjson.dumps({"m": self.model, "u": self.usage, "t": self.created})
        return head + b"\n" + self.body

    @classmethod
    def decode(cls, data: bytes) -> Entry:
        """The inverse of ``encode``; ``ValueError`` on anything else."""
        head, sep, body = data.partition(b"\n")
        if not sep:
            raise ValueError("not a cache entry")
        meta = orjson.loads(head)
        if (
            not isinstance(meta, dict)
            or not isinstance(meta.get("m"), str)
            or not isinstance(meta.get("t"), int | float)
        ):
            raise ValueError("not a cache entry")
        usage = meta.get("u")
        return cls(
            body=body, model=meta["m"], usage=usage if isinstance(usage, dict) else None, created=float(meta["t"])
        )


@dataclass(frozen=True, slots=True)
class CacheStats:
    """``GET /admin/cache/stats``. ``total = valid + expired`` entries stored now; ``hits``/``misses`` since start
    (in this process); ``bytes``: stored entries' size; ``ttl``: the default time to live in seconds."""

    backend: str
    total: int
    valid: int
    expired: int
    hits: int
    misses: int
    hit_rate: float
    bytes: int
    ttl: float
    evictions: int = 0
    """Entries dropped to stay within the bounds (memory backend)."""
    errors: int = 0
    """Lookups and stores that could not reach the backend (Redis), each served as a miss."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def hit_rate(hits: int, misses: int) -> float:
    return hits / (hits + misses) if hits + misses else 0.0


class ResponseCache(Protocol):
    """One interface, a memory and a Redis backend. A backend that cannot answer behaves as a miss:
    ``get`` returns ``None`` and ``set`` drops the entry; neither raises for an unreachable backend."""

    ttl: float

    async def get(self, key: str) -> Entry | None: ...

    async def set(self, key: str, entry: Entry, ttl: float | None = None) -> bool:
        """Store ``entry`` for ``ttl`` seconds (default: the cache's); ``False`` if it was not stored."""
        ...

    async def clear(self) -> int:
        """Drop every entry; returns how many."""
        ...

    async def stats(self) -> CacheStats: ...

    async def close(self) -> None: ...


def _chunk(base: Mapping[str, Any], index: int, delta: dict[str, Any], finish: Any = None) -> bytes:
    choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
    return encode_data(orjson.dumps({**base, "choices": [choice]}))


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def replay_sse(entry: Entry, *, include_usage: bool = False, chunk_chars: int = 128) -> list[bytes]:
    """The entry as the SSE events of a stream (``data: [DONE]`` last), for a streaming request that hit.

    Per choice, in order: the role (with ``content: ""``), reasoning text if any (``reasoning_content``
    or ``reasoning``), the content in pieces of ``chunk_chars`` characters, a refusal, each tool call
    (id, type and name first, then its arguments in pieces), and ``finish_reason`` on an empty delta.
    A choice's ``logprobs`` go whole on its first content chunk (clients that join ``logprobs.content``
    across chunks get the complete list). ``include_usage``: a last chunk with ``choices: []`` and the
    entry's usage, as OpenAI sends for ``stream_options.include_usage``.
    """
    data = orjson.loads(entry.body)
    base: dict[str, Any] = {
        "id": data.get("id", ""),
        "object": "chat.completion.chunk",
        "created": data.get("created", int(entry.created)),
        "model": data.get("model", entry.model),
    }
    if data.get("system_fingerprint") is not None:
        base["system_fingerprint"] = data["system_fingerprint"]
    size = max(1, chunk_chars)
    events: list[bytes] = []
    for position, choice in enumerate(data["choices"]):
        index = choice.get("index", position)
        message = choice.get("message") or {}
        events.append(_chunk(base, index, {"role": message.get("role", "assistant"), "content": ""}))
        for field in ("reasoning_content", "reasoning"):
            if isinstance(message.get(field), str) and message[field]:
                events.extend(_chunk(base, index, {field: piece}) for piece in _pieces(message[field], size))
        content = message.get("content")
        logprobs = choice.get("logprobs")
        if isinstance(content, str) and content:
            for n, piece in enumerate(_pieces(content, size)):
                event = {"index": index, "delta": {"content": piece}, "logprobs": None, "finish_reason": None}
                if n == 0 and logprobs is not None:
                    event["logprobs"] = logprobs
                events.append(encode_data(orjson.dumps({**base, "choices": [event]})))
        if isinstance(message.get("refusal"), str) and message["refusal"]:
            events.append(_chunk(base, index, {"refusal": message["refusal"]}))
        for position_call, call in enumerate(message.get("tool_calls") or []):
            function = call.get("function") or {}
            head = {
                "index": position_call,
                "id": call.get("id"),
                "type": call.get("type", "function"),
                "function": {"name": function.get("name"), "arguments": ""},
            }
            events.append(_chunk(base, index, {"tool_calls": [head]}))
            arguments = function.get("arguments") or ""
            if arguments:
                events.extend(
                    _chunk(base, index, {"tool_calls": [{"index": position_call, "function": {"arguments": piece}}]})
                    for piece in _pieces(arguments, size)
                )
        events.append(_chunk(base, index, {}, choice.get("finish_reason") or "stop"))
    if include_usage:
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else entry.usage
        events.append(encode_data(orjson.dumps({**base, "choices": [], "usage": usage})))
    events.append(DONE_EVENT)
    return events
