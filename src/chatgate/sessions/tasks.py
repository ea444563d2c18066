"""Front ends' background tasks: is a request a chat title, tags, follow-ups... rather than a turn of the chat?

Open WebUI (and front ends like it) asks the chat's model for a title after the first turn, tags, follow-up
suggestions after every turn, search queries, autocompletions and emoji, on the chat's own connection and with
the chat's id. Those requests are typed ``task``: not conversation messages, not turns. Plain values in (the
request's messages, its lower-cased headers, its ``metadata``), the task's name or ``None`` out; decided by the
first of:

1. **An explicit marker**: the ``tasks.marker_header`` header or ``metadata.<tasks.marker_field>`` (Open WebUI's
   own ``metadata.task``), naming the task. Open WebUI strips ``metadata`` before calling an OpenAI-style
   backend, but a connection header ``{"X-Chatgate-Task": "{{TASK}}"}`` carries the task's name (and is empty
   on chat requests).
2. **The prompt's shape**: the messages, system messages aside, are one ``user`` message that is a whole task
   template rendered: every literal line of the template, in order, exactly, and anything (the chat history, the
   date, the user's text) where the template has a ``{{...}}`` placeholder, nothing before or after. The templates
   are Open WebUI 0.12.4's defaults (``openwebui_prompts.py``) and ``tasks.templates`` (an admin's own).

Why the whole template and not a phrase such as ``### Task:``: an ordinary message may well contain that phrase
(notes pasted in, a question about Open WebUI's prompts), and one that has it in its prose is not a task; only
Open WebUI's renderer writes out a template's every line around the chat. A chat's turn never arrives alone as a
task prompt either: Open WebUI sends the history (and usually a system prompt) with it. The one case taken for a
task wrongly is a first message that pastes a whole task prompt, placeholders filled, and nothing else.

Matching costs one ``startswith`` for most messages (each template's text before its first placeholder), and for
a real task prompt one ``find`` per literal part: linear in the message, whatever it holds (no regular expression
that could backtrack).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from chatgate.sessions.openwebui_prompts import OPENWEBUI_TEMPLATES
from chatgate.settings import TEMPLATE_PLACEHOLDER, TaskSettings

MAX_NAME = 64
_NOT_A_TASK = frozenset({"", "0", "false", "no", "none", "off"})
_NAME_CHARS = re.compile(r"[^a-z0-9_]")
_SYSTEM_ROLES = frozenset({"system", "developer"})


@dataclass(frozen=True, slots=True)
class Shape:
    """A template as literal parts: the text between its placeholders, in order."""

    name: str
    parts: tuple[str, ...]

    @classmethod
    def of(cls, name: str, template: str) -> Shape:
        parts = TEMPLATE_PLACEHOLDER.split(template)
        parts[0] = parts[0].lstrip()
        parts[-1] = parts[-1].rstrip()
        return cls(name, tuple(parts))

    def matches(self, text: str) -> bool:
        """``text`` (stripped) is the template with some text, possibly none, in place of each placeholder."""
        parts = self.parts
        if len(parts) == 1:
            return text == parts[0]
        head, tail = parts[0], parts[-1]
        if len(text) < len(head) + len(tail) or not text.startswith(head) or not text.endswith(tail):
            return False
        at, end = len(head), len(text) - len(tail)
        for part in parts[1:-1]:  # leftmost first: with only "anything" between the parts, that is never wrong
            found = text.find(part, at, end)
            if found < 0:
                return False
            at = found + len(part)
        return True


class TaskRecogniser:
    """Built once from ``tasks`` settings (on the application object); ``recognise`` runs per request."""

    def __init__(self, settings: TaskSettings) -> None:
        self.enabled = settings.enabled
        self.model = settings.model
        templates = dict(OPENWEBUI_TEMPLATES) if settings.openwebui_templates else {}
        templates.update(settings.templates)
        self.shapes = tuple(Shape.of(name, template) for name, template in templates.items())
        self._shortest = min((sum(map(len, s.parts)) for s in self.shapes), default=0)
        self._header = settings.marker_header.lower() if settings.marker_header else None
        self._field = settings.marker_field

    def recognise(
        self,
        messages: Iterable[Any],
        headers: Mapping[str, str],
        metadata: Mapping[str, Any] | None = None,
    ) -> str | None:
        """The task's name (Open WebUI's own names: ``title_generation``...), or ``None`` for a chat request."""
        if not self.enabled:
            return None
        marked = self.marked(headers, metadata)
        if marked is not None:
            return marked
        if not self.shapes:
            return None
        text = sole_user_text(messages)
        if text is None or len(text) < self._shortest:
            return None
        text = text.strip()
        for shape in self.shapes:
            if shape.matches(text):
                return shape.name
        return None

    def marked(self, headers: Mapping[str, str], metadata: Mapping[str, Any] | None) -> str | None:
        """The task an explicit marker names: the marker header, else the ``metadata`` field."""
        if self._header is not None and (value := headers.get(self._header)) is not None:
            name = task_name(value)
            if name is not None:
                return name
        if self._field is not None and metadata is not None:
            value = metadata.get(self._field)
            if value is True:
                return "task"
            if isinstance(value, str):
                return task_name(value)
        return None


def task_name(value: str) -> str | None:
    """A marker's value as a task name (lower case, letters, digits and ``_``); ``None`` for empty or "false"."""
    name = value.strip().lower()[:MAX_NAME]
    if name in _NOT_A_TASK:
        return None
    return _NAME_CHARS.sub("_", name)


def sole_user_text(messages: Iterable[Any]) -> str | None:
    """The text of the request's only message besides system messages, when that message is the user's."""
    found: Any = None
    for message in messages:
        if not isinstance(message, dict):
            return None
        role = message.get("role")
        if role in _SYSTEM_ROLES:
            continue
        if found is not None or role != "user":
            return None
        found = message
    if found is None:
        return None
    content = found.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if len(texts) != len(content) or not all(isinstance(t, str) for t in texts):
            return None  # an image or a file with it: not a task prompt
        return "\n".join(texts)  # type: ignore[arg-type]
    return None
