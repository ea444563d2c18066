"""Reading an upstream's ``chat.completion`` body: the parsed object, its usage, the reply as stored."""

from __future__ import annotations

from typing import Any

import orjson


def parse_answer(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; ``{}`` for anything else (not JSON, not an object)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def usage_of(data: dict[str, Any]) -> dict[str, Any] | None:
    usage = data.get("usage")
    return usage if isinstance(usage, dict) else None


def reply_content(data: dict[str, Any]) -> Any:
    """The first choice's reply as stored: its text, or content parts when it called tools."""
    choices = data.get("choices")
    if not choices or not isinstance(choices[0], dict):
        return None
    message = choices[0].get("message") or {}
    if message.get("tool_calls"):
        return [
            {"type": "tool_calls", "tool_calls": message["tool_calls"]},
            *([{"type": "text", "text": message["content"]}] if message.get("content") else []),
        ]
    return message.get("content")
