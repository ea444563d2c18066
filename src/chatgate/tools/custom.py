"""A deployer's own server tool (``tools.custom``): a Python callable, imported once at start."""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Callable
from typing import Any

import orjson

from chatgate.rag.assistants import Assistant
from chatgate.settings import CustomToolSettings
from chatgate.tools.base import ToolContext, ToolResult


class CustomTool:
    def __init__(self, settings: CustomToolSettings) -> None:
        self.name = settings.name
        self.description = settings.description
        self._parameters = settings.parameters
        module, _, attr = settings.callable.partition(":")
        target: Any = importlib.import_module(module)
        for part in attr.split("."):
            target = getattr(target, part)
        if not callable(target):
            raise ValueError(f"tools.custom: {settings.callable} is not callable")
        self.function: Callable[..., Any] = target
        self.deterministic = settings.deterministic
        try:
            self.wants_caller = len(inspect.signature(target).parameters) >= 2
        except (TypeError, ValueError):  # a builtin without a signature
            self.wants_caller = False

    def parameters(self, assistant: Assistant) -> dict[str, Any]:
        return self._parameters

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        args: tuple[Any, ...] = (arguments,)
        if self.wants_caller:
            args += ({"user_id": ctx.user_id, "assistant": ctx.assistant.name},)
        if inspect.iscoroutinefunction(self.function):
            value = await self.function(*args)
        else:  # a plain function runs in a thread: it must not hold up the event loop
            value = await asyncio.to_thread(self.function, *args)
        if isinstance(value, ToolResult):
            return value
        return ToolResult(value if isinstance(value, str) else orjson.dumps(value, default=str).decode())
