"""What a request's messages say about it, and how they are kept: kinds, dedupe keys, compaction."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

KINDS = ("standard", "rag", "research", "multimodal", "tool", "task")  # as store/models.py REQUEST_KINDS


@dataclass(slots=True)
class Kept:
    """A message a turn adds to its conversation."""

    position: int  # in the conversation as the client sees it (part of the dedupe key)
    role: str
    content: Any
    client_message_id: str | None = None


_MEDIA_PARTS = {"image_url", "input_audio", "image", "audio", "file"}


def is_multimodal(messages: Iterable[Any]) -> bool:
    for msg in messages:
        content = msg.get("content") if isinstance(msg, dict) else None
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") in _MEDIA_PARTS:
                    return True
    return False


def request_kind(
    payload: dict[str, Any],
    features: dict[str, Any],
    research_models: frozenset[str],
    *,
    task: str | None = None,
    called_tool: bool = False,
) -> str:
    """One kind per request, the most specific first: task, research, multimodal, tool, standard.

    ``task``: the front-end background task the request is (``sessions/tasks.py``), if any. ``called_tool``: the
    answer called a tool. Tools merely offered (Open WebUI offers its built-in ones on every web-page request)
    do not make a request ``tool``: see ``uses_tools``."""
    if task is not None:
        return "task"
    if payload.get("research") is True or features.get("web_search") or features.get("research"):
        return "research"
    if payload.get("model") in research_models:
        return "research"
    messages = payload.get("messages") or ()
    if is_multimodal(messages):
        return "multimodal"
    if uses_tools(messages, called_tool):
        return "tool"
    return "standard"


def uses_tools(messages: Iterable[Any], called_tool: bool = False) -> bool:
    """A tool was called in this turn: the answer called one (``called_tool``), or, after the last user message,
    the request carries a tool call (an assistant message's ``tool_calls`` / ``function_call``) or a tool's result
    (role ``tool`` or ``function``). Tool calls in earlier turns of a resent history do not count."""
    if called_tool:
        return True
    for msg in reversed(list(messages)):
        if not isinstance(msg, dict):
            continue
        role = msg.get("role")
        if role == "user":
            return False
        if role in ("tool", "function"):
            return True
        if role == "assistant" and (msg.get("tool_calls") or msg.get("function_call")):
            return True
    return False


def calls_tool(reply: Any) -> bool:
    """A reply as stored (``upstream/answer.py``, ``upstream/stream.py``) that called a tool: a ``tool_calls`` part."""
    return isinstance(reply, list) and any(isinstance(p, dict) and p.get("type") == "tool_calls" for p in reply)


def dedupe_key(position: int, role: str, content: Any, client_message_id: str | None = None) -> str:
    """Stable across resends of the same history: the client's message id, else position + role + content."""
    if client_message_id:
        return "mid:" + hashlib.sha256(client_message_id.encode()).hexdigest()[:40]
    digest = hashlib.sha256(orjson.dumps([position, role, content], option=orjson.OPT_SORT_KEYS)).hexdigest()
    return digest[:44]


def compact(content: Any, keep_bytes: bool, limit: int) -> Any:
    """Content as stored: parts keep their shape; large inline data becomes a SHA-256 and a size."""
    if keep_bytes or not isinstance(content, list):
        return content
    return [_compact_part(part, limit) if isinstance(part, dict) else part for part in content]


def _compact_part(part: dict[str, Any], limit: int) -> dict[str, Any]:
    kind = part.get("type")
    if kind == "image_url" and isinstance(part.get("image_url"), dict):
        url = part["image_url"].get("url")
        if isinstance(url, str) and url.startswith("data:") and len(url) > limit:
            media_type = url[5 : url.find(";")] if ";" in url else None
            return {**part, "image_url": {**part["image_url"], "url": None, **_summary(url), "media_type": media_type}}
    if kind == "input_audio" and isinstance(part.get("input_audio"), dict):
        data = part["input_audio"].get("data")
        if isinstance(data, str) and len(data) > limit:
            return {**part, "input_audio": {**part["input_audio"], "data": None, **_summary(data)}}
    return part


def _summary(data: str) -> dict[str, Any]:
    return {"sha256": hashlib.sha256(data.encode()).hexdigest(), "size": len(data)}


def text_of(content: Any) -> str:
    """The text of a message's content (parts joined), for titles and summaries."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def new_messages(messages: list[dict[str, Any]], *, first: bool) -> list[tuple[int, dict[str, Any]]]:
    """(position, message) of what a client's history adds: all of it on a conversation's first sight;
    afterwards what follows the last reply."""
    start = 0
    if not first:
        for i in range(len(messages) - 1, -1, -1):
            if messages[i].get("role") == "assistant":
                start = i + 1
                break
    return [(i, m) for i, m in enumerate(messages) if i >= start and isinstance(m, dict)]
