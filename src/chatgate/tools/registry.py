"""The server tools there are (built once in ``app.py``), and those an assistant offers."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from chatgate.errors import BadRequest
from chatgate.rag.assistants import Assistant
from chatgate.settings import ToolSettings
from chatgate.tools.base import ServerTool
from chatgate.tools.clock import CurrentTime
from chatgate.tools.custom import CustomTool
from chatgate.tools.search import SearchDocuments

if TYPE_CHECKING:
    from chatgate.rag.service import Rag


def tool_names(settings: ToolSettings) -> list[str]:
    """The names an assistant's ``tools`` may take: the built-in tools and the deployer's ``tools.custom``."""
    return sorted([CurrentTime.name, *(custom.name for custom in settings.custom)])


class Tools:
    def __init__(self, settings: ToolSettings, rag: Rag | None, count: Callable[[str], int]) -> None:
        self.settings = settings
        self.search = SearchDocuments(rag, count, settings.search_top_k) if rag is not None else None
        self.named: dict[str, ServerTool] = {"current_time": CurrentTime()}
        for custom in settings.custom:
            if custom.name in self.named or custom.name == SearchDocuments.name:
                raise ValueError(f"tools.custom: the name {custom.name!r} is taken")
            self.named[custom.name] = CustomTool(custom)

    def check(self, assistant: Assistant) -> None:
        """A 400 naming the first tool ``assistant`` offers that is not defined (an admin defining it)."""
        for name in assistant.tools:
            if name not in self.named:
                raise BadRequest(
                    f"'tools': no server tool is named '{name}' (there are: {', '.join(sorted(self.named))}).",
                    details={"field": "tools", "tool": name},
                )

    def offered(self, assistant: Assistant) -> dict[str, ServerTool]:
        """The tools ``assistant`` offers the model: ``search_documents`` with ``retrieval: tool``, and its
        ``tools``. An unknown name is a configuration mistake: a 400 that says so."""
        out: dict[str, ServerTool] = {}
        if assistant.retrieval == "tool" and assistant.collections and self.search is not None:
            out[self.search.name] = self.search
        for name in assistant.tools:
            tool = self.named.get(name)
            if tool is None:
                raise BadRequest(
                    f"The assistant '{assistant.name}' offers the tool '{name}', which is not defined.",
                    details={"assistant": assistant.name, "tool": name},
                )
            out[name] = tool
        return out

    def max_steps(self, assistant: Assistant) -> int:
        return assistant.max_steps or self.settings.max_steps
