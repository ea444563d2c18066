"""A chat history as the fitter sees it: the head (system prompts), then turns.

A *turn* is a user message and everything after it up to the next user message: the assistant's
reply, its tool calls and their results. History is only ever cut between turns, so a tool call
never loses its result. Messages before the first user message (a greeting) form a turn too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from chatgate.tokens.counter import TokenCounter

HEAD_ROLES = frozenset({"system", "developer"})
_MEDIA = {"image_url": "[image]", "input_image": "[image]", "image": "[image]", "input_audio": "[audio]"}


def head_length(messages: Sequence[Mapping[str, Any]]) -> int:
    """How many leading messages are system (or developer) prompts."""
    n = 0
    for message in messages:
        if message.get("role") not in HEAD_ROLES:
            break
        n += 1
    return n


def turn_starts(body: Sequence[Mapping[str, Any]]) -> list[int]:
    """Where each turn of ``body`` (the history after the head) begins; always starts with 0."""
    starts = [0]
    for i, message in enumerate(body):
        if i and message.get("role") == "user":
            starts.append(i)
    return starts


def digest(messages: Sequence[Mapping[str, Any]]) -> str:
    """A hash of messages as sent, so a brief knows when the history it covers was edited."""
    data = orjson.dumps(list(messages), option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.sha256(data).hexdigest()


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    out: list[str] = []
    for part in content:
        if isinstance(part, str):
            out.append(part)
        elif isinstance(part, Mapping):
            kind = part.get("type")
            text = part.get("text", part.get("refusal"))
            if isinstance(text, str):
                out.append(text)
            elif isinstance(kind, str):
                out.append(_MEDIA.get(kind, f"[{kind}]"))
    return " ".join(out)


def render(message: Mapping[str, Any]) -> str:
    """One message as a transcript line for the summariser (media as placeholders, tool calls as calls)."""
    role = str(message.get("role") or "unknown")
    text = _content_text(message.get("content"))
    if role == "tool":
        return f"tool result: {text}"
    calls = message.get("tool_calls")
    if isinstance(calls, list) and calls:
        named = []
        for call in calls:
            fn = call.get("function") if isinstance(call, Mapping) else None
            if isinstance(fn, Mapping):
                named.append(f"{fn.get('name')}({fn.get('arguments') or ''})")
        text = (text + " " if text else "") + "[called " + ", ".join(named) + "]"
    return f"{role}: {text}"


def cut_to_tokens(counter: TokenCounter, text: str, limit: int, model: str | None) -> str:
    """``text`` cut at a word boundary to at most ``limit`` tokens (unchanged when it fits)."""
    n = counter.count(text, model)
    for _ in range(8):
        if n <= limit:
            return text
        keep = max(0, int(len(text) * limit / n * 0.95))
        cut = text[:keep]
        space = cut.rfind(" ", keep // 2)
        text = (cut[:space] if space > 0 else cut).rstrip()
        n = counter.count(text, model)
    return text if n <= limit else ""
