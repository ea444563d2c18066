"""A thread's items as the model's messages: user and assistant messages, the page's client tool calls and
their results, hidden context; the last ``history_turns`` turns of them (a turn starts at a user message)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson
from chatkit.types import (
    AssistantMessageItem,
    ClientToolCallItem,
    HiddenContextItem,
    SDKHiddenContextItem,
    ThreadItem,
    UserMessageItem,
)

CUT_OFF = "\n\n[This answer was cut off: the user stopped it here.]"
ImageParts = Callable[[UserMessageItem], list[dict[str, Any]]]


def user_text(item: UserMessageItem) -> str:
    parts = []
    if item.quoted_text:
        parts.append("> " + item.quoted_text.replace("\n", "\n> ") + "\n")
    for content in item.content:
        parts.append(content.text)
    files = [a.name for a in item.attachments if a.type == "file"]
    if files:
        parts.append("(attached: " + ", ".join(files) + ")")
    return "\n".join(p for p in parts if p)


def user_content(item: UserMessageItem, images: list[dict[str, Any]]) -> Any:
    """The message's text, with its images as image parts when it has any."""
    text = user_text(item)
    if not images:
        return text
    return [{"type": "text", "text": text}, *images]


def messages(items: Sequence[ThreadItem], cut_off: set[str], turns: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    starts: list[int] = []  # where each turn begins in ``out``
    for item in items:
        if isinstance(item, UserMessageItem):
            starts.append(len(out))
            out.append({"role": "user", "content": user_text(item)})
        elif isinstance(item, AssistantMessageItem):
            text = "".join(c.text for c in item.content)
            if item.id in cut_off:
                text += CUT_OFF
            if text:
                out.append({"role": "assistant", "content": text})
        elif isinstance(item, ClientToolCallItem):
            if item.status != "completed":
                continue  # a call the page never answered: the model must not see a call without its result
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": orjson.dumps(item.arguments).decode()},
            }
            out.append({"role": "assistant", "content": None, "tool_calls": [call]})
            result = item.output if isinstance(item.output, str) else orjson.dumps(item.output).decode()
            out.append({"role": "tool", "tool_call_id": item.call_id, "content": result})
        elif isinstance(item, HiddenContextItem | SDKHiddenContextItem):
            content = item.content if isinstance(item.content, str) else orjson.dumps(item.content).decode()
            out.append({"role": "user", "content": f"[context] {content}"})
    if turns <= 0:
        return []
    if starts:  # from the first kept turn's user message: never a tool result without its call
        out = out[starts[max(0, len(starts) - turns)] :]
    return out


def items_window(turns: int) -> int:
    """How many recent items to read for ``turns`` turns (a turn is a few items: message, steps, answer)."""
    return min(max(turns, 1) * 6 + 4, 500)
