"""The page's context (a ChatKit request's ``metadata``) as system-prompt text: only the whitelisted fields,
each cut to ``context_field_chars``, the whole to ``context_max_chars``. Never identity: who is calling comes
from the key, JWT or trusted headers, as on every door."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from chatgate.settings import CHATKIT_CONTEXT_FIELDS, ChatKitSettings

PLACEHOLDER = re.compile(r"\{(\w+)\}")
ALIASES = {"page_url": "url", "page_title": "title", "selection": "selected_text", "name": "display_name"}


def fields(metadata: Mapping[str, Any], cap: int) -> dict[str, str]:
    """The whitelisted values the page sent (top level, or under ``context`` / ``page``), as clean text."""
    merged: dict[str, Any] = {}
    for nested in ("page", "context"):
        inner = metadata.get(nested)
        if isinstance(inner, Mapping):
            merged.update(inner)
    merged.update({k: v for k, v in metadata.items() if k not in ("page", "context")})
    out: dict[str, str] = {}
    for key, value in merged.items():
        name = ALIASES.get(key, key)
        if name not in CHATKIT_CONTEXT_FIELDS or not isinstance(value, str | int | float) or isinstance(value, bool):
            continue
        text = " ".join(str(value).split())  # one line: a value cannot add lines of its own to the prompt
        if text:
            out[name] = text[:cap]
    return out


def render(settings: ChatKitSettings, metadata: Mapping[str, Any] | None) -> str | None:
    """The template with the page's values; a line whose placeholders are all missing is left out."""
    template = settings.context_template
    if not template or not metadata:
        return None
    values = fields(metadata, settings.context_field_chars)
    if not values:
        return None
    lines = []
    for line in template.splitlines():
        names = PLACEHOLDER.findall(line)
        if names and not any(n in values for n in names):
            continue
        lines.append(PLACEHOLDER.sub(lambda m: values.get(m.group(1), ""), line).rstrip())
    text = "\n".join(lines).strip()
    return text[: settings.context_max_chars] or None
