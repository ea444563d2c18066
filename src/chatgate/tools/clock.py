"""``current_time``: the date and time now, in a time zone the model names (UTC otherwise)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from chatgate.rag.assistants import Assistant
from chatgate.tools.base import ToolContext, ToolResult


class CurrentTime:
    name = "current_time"
    deterministic = False
    description = (
        "The current date and time. Use it for any question about today, now, dates or weekdays. Optionally in an "
        "IANA time zone such as Europe/Paris (default UTC)."
    )

    def __init__(self, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.now = now

    def parameters(self, assistant: Assistant) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {"timezone": {"type": "string", "description": "An IANA time zone, e.g. America/New_York"}},
            "additionalProperties": False,
        }

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        zone_name = arguments.get("timezone") or "UTC"
        try:
            zone = ZoneInfo(str(zone_name))
        except (ZoneInfoNotFoundError, ValueError):
            return ToolResult(f"Unknown time zone {zone_name!r}; use an IANA name such as Europe/Paris.", error="zone")
        now = self.now().astimezone(zone)
        return ToolResult(f"{now.strftime('%A %d %B %Y, %H:%M:%S')} ({zone_name}; ISO 8601 {now.isoformat()})")
