"""One server tool: a name, a description and a JSON-schema parameter list the model sees, and ``run``.

A tool takes plain values and returns plain values. What it returns goes to the model as the ``tool`` message's
content; a tool that raises, or runs past ``tools.timeout``, gives the model an error result it can read, and the
loop goes on. ``deterministic``: the same arguments give the same result while the documents stay as they are
(a search does, a clock does not); an answer that called a tool that is not is never cached.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from chatgate.rag.assistants import Assistant


@dataclass(frozen=True, slots=True)
class ToolContext:
    """Who a tool runs for: it acts as the calling user (a search reads what they may read, nothing more)."""

    user_id: str
    assistant: Assistant
    budget: int  # tokens the result may take


@dataclass(slots=True)
class ToolResult:
    """``content``: what the model reads. ``sources``: citations, numbered from 1 as ``content`` numbers them;
    the loop numbers them on across its steps and parallel calls with ``renumber(first)``, the content with
    the first source numbered ``first``."""

    content: str
    sources: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None  # the tool failed (a short code): ``content`` says so to the model
    renumber: Callable[[int], str] | None = None

    def numbered(self, first: int) -> tuple[str, list[dict[str, Any]]]:
        """The content and the sources with the first source numbered ``first``."""
        if not self.sources or first == 1 or self.renumber is None:
            return self.content, self.sources
        shift = first - 1
        return self.renumber(first), [{**s, "index": s["index"] + shift} for s in self.sources]


class ServerTool(Protocol):
    name: str
    description: str
    deterministic: bool

    def parameters(self, assistant: Assistant) -> dict[str, Any]:
        """The arguments, as a JSON schema (an object); they may depend on the assistant (its collections)."""
        ...

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult: ...


def spec(tool: ServerTool, assistant: Assistant) -> dict[str, Any]:
    """The OpenAI function-tool definition the model is given."""
    return {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": tool.parameters(assistant)},
    }


def trim_to(text: str, budget: int, count: Callable[[str], int]) -> str:
    """``text`` cut (at a line or word where it can) to at most ``budget`` tokens as ``count`` counts them."""
    if count(text) <= budget:
        return text
    marker = "\n[cut to fit]"
    low, high = 0, len(text)
    while low < high:  # the longest prefix that fits, found in a few counts
        mid = (low + high + 1) // 2
        if count(text[:mid] + marker) <= budget:
            low = mid
        else:
            high = mid - 1
    head = text[:low]
    cut = max(head.rfind("\n"), head.rfind(" "))
    if cut > low * 3 // 4:
        head = head[:cut]
    return head.rstrip() + marker if head else ""
