"""The optional personalised system prompt, filled from the identity's variables and the clock."""

from __future__ import annotations

import string
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

PLACEHOLDERS = ("name", "email", "datetime", "date", "time", "timezone", "language", "location")


def values(variables: dict[str, str], email: str | None, now: datetime | None = None) -> dict[str, str]:
    tz_name = variables.get("CURRENT_TIMEZONE") or "UTC"
    try:
        tz: Any = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError):
        tz, tz_name = UTC, "UTC"
    local = (now or datetime.now(UTC)).astimezone(tz)
    return {
        "name": variables.get("USER_NAME") or "the user",
        "email": email or "",
        "datetime": variables.get("CURRENT_DATETIME") or local.strftime("%Y-%m-%d %H:%M"),
        "date": local.strftime("%Y-%m-%d"),
        "time": local.strftime("%H:%M"),
        "timezone": tz_name,
        "language": variables.get("USER_LANGUAGE") or "",
        "location": variables.get("USER_LOCATION") or "",
    }


class Personaliser:
    def __init__(self, template: str) -> None:
        unknown = {f for _, f, _, _ in string.Formatter().parse(template) if f} - set(PLACEHOLDERS)
        if unknown:
            raise ValueError(f"unknown placeholders in sessions.system_prompt_template: {sorted(unknown)}")
        self.template = template

    def prompt(self, variables: dict[str, str], email: str | None, now: datetime | None = None) -> str:
        return self.template.format(**values(variables, email, now))

    def apply(self, messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
        """Messages with the prompt first; merged into a leading string system message (one system turn)."""
        first = messages[0] if messages else None
        if first and first.get("role") == "system" and isinstance(first.get("content"), str):
            return [{**first, "content": f"{text}\n\n{first['content']}"}, *messages[1:]]
        return [{"role": "system", "content": text}, *messages]
