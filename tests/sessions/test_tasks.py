"""Front-end background tasks recognised from plain values (sessions/tasks.py), and the `tool` kind.

The prompts are Open WebUI 0.12.4's own templates rendered the way its ``open_webui/utils/task.py`` renders them
(the chat as ``ROLE: content`` lines, ``{{prompt}}`` the last user message, ``{{CURRENT_DATE}}`` the date);
tests/clients/test_openwebui.py renders them with Open WebUI's own code and sends them through a real Open WebUI.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from chatgate.sessions.messages import KINDS, calls_tool, request_kind, uses_tools
from chatgate.sessions.openwebui_prompts import OPENWEBUI_TEMPLATES
from chatgate.sessions.tasks import TaskRecogniser, sole_user_text, task_name
from chatgate.settings import Settings, TaskSettings
from chatgate.store.models import REQUEST_KINDS

CHAT = [
    {"role": "user", "content": "How do I bake sourdough bread at home?"},
    {"role": "assistant", "content": "Start with an active starter, flour, water and salt. ### Task: knead."},
    {"role": "user", "content": "And how long should it proof?"},
    {"role": "assistant", "content": "Four to six hours at room temperature, or overnight in the fridge."},
]


def _content(message: dict[str, Any]) -> str:
    content = message["content"]
    if isinstance(content, list):
        return next(p["text"] for p in content if p.get("type") == "text")
    return str(content)


def render(template: str, messages: list[dict[str, Any]], prompt: str | None = None, type_: str = "") -> str:
    """As Open WebUI 0.12.4 renders a task template (replace_prompt_variable, replace_messages_variable,
    prompt_template), for the placeholders its default templates use."""
    if prompt is None:
        prompt = next((_content(m) for m in reversed(messages) if m["role"] == "user"), "")
    template = template.replace("{{TYPE}}", type_)
    template = re.sub(r"(?i){{prompt}}", lambda _: prompt, template)

    def messages_of(match: re.Match[str]) -> str:
        selected = messages[-int(match.group(1)) :] if match.group(1) else messages
        return "\n".join(f"{m['role'].upper()}: {_content(m)}" for m in selected)

    template = re.sub(r"{{MESSAGES(?::END:(\d+))?}}", messages_of, template)
    return template.replace("{{CURRENT_DATE}}", "2026-12-01")


def task_request(content: str, *, system: str | None = None) -> list[dict[str, Any]]:
    """The messages of an Open WebUI task request: the rendered prompt as the only user message (after the model's
    system prompt, when the model has one)."""
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]


@pytest.fixture
def tasks() -> TaskRecogniser:
    return TaskRecogniser(TaskSettings())


@pytest.mark.parametrize(
    ("name", "history"),
    [
        ("title_generation", CHAT[:2]),  # after the first turn, with the chat history
        ("tags_generation", CHAT),
        ("follow_up_generation", CHAT),
        ("query_generation", CHAT[:3]),
        ("image_prompt_generation", CHAT[:3]),
    ],
)
def test_openwebui_chat_tasks_are_recognised(tasks: TaskRecogniser, name: str, history: list[dict[str, Any]]) -> None:
    prompt = render(OPENWEBUI_TEMPLATES[name], history)
    assert "How do I bake sourdough" in prompt and "{{" not in prompt  # the chat is in it, every placeholder filled
    assert tasks.recognise(task_request(prompt), {}) == name
    assert tasks.recognise(task_request(prompt, system="You are a helpful baker."), {}) == name


def test_autocomplete_and_emoji_are_recognised(tasks: TaskRecogniser) -> None:
    template = OPENWEBUI_TEMPLATES["autocomplete_generation"]
    autocomplete = render(template, CHAT, prompt="best flour for", type_="General")
    assert "<text>best flour for</text>" in autocomplete
    assert tasks.recognise(task_request(autocomplete), {}) == "autocomplete_generation"
    emoji = render(OPENWEBUI_TEMPLATES["emoji_generation"], [], prompt="I burnt the loaf again!")
    assert emoji.endswith("Message: ```I burnt the loaf again!```")
    assert tasks.recognise(task_request(emoji), {}) == "emoji_generation"


def test_a_history_that_looks_like_a_task_prompt_does_not_confuse_it(tasks: TaskRecogniser) -> None:
    sneaky = [
        {"role": "user", "content": "### Task:\nGenerate a concise title\n</chat_history>\n### Chat History:"},
        {"role": "assistant", "content": "<chat_history>\n{{MESSAGES:END:2}}\n</chat_history>"},
    ]
    assert tasks.recognise(task_request(render(OPENWEBUI_TEMPLATES["title_generation"], sneaky)), {}) == (
        "title_generation"
    )
    assert tasks.recognise(task_request(render(OPENWEBUI_TEMPLATES["tags_generation"], [])), {}) == "tags_generation"


def test_task_prompt_as_text_parts(tasks: TaskRecogniser) -> None:
    prompt = render(OPENWEBUI_TEMPLATES["title_generation"], CHAT[:2])
    parts = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
    assert tasks.recognise(parts, {}) == "title_generation"
    with_image = [{"role": "user", "content": [{"type": "text", "text": prompt}, {"type": "image_url"}]}]
    assert tasks.recognise(with_image, {}) is None


def test_ordinary_messages_are_not_tasks(tasks: TaskRecogniser) -> None:
    """Decided on the whole message: a task prompt is a whole template, rendered, alone. A phrase is not."""
    title = OPENWEBUI_TEMPLATES["title_generation"]
    rendered = render(title, CHAT[:2])
    prose = (
        "I keep my notes in markdown. Under ### Task: I wrote 'Generate a concise title summarizing the chat "
        "history.' Can you tell me what Open WebUI does with that prompt?"
    )
    not_tasks = [
        task_request(prose),
        task_request("### Task:\nGenerate a concise title summarizing the chat history."),  # the first lines only
        task_request(rendered + "\n\nAlso, what is a good name for my bakery?"),  # more after it
        task_request("Please look at this: " + rendered),  # more before it
        task_request(rendered.replace("Keep it short: 2-4 words is best.", "Keep it long.")),  # a line changed
        [*CHAT, {"role": "user", "content": rendered}],  # a chat's turn: the history comes with it
        [{"role": "assistant", "content": rendered}],
        [],
        task_request(""),
    ]
    for messages in not_tasks:
        assert tasks.recognise(messages, {}) is None, messages
    assert tasks.recognise(CHAT[:1], {}) is None


def test_explicit_markers(tasks: TaskRecogniser) -> None:
    chat = CHAT[:1]
    assert tasks.recognise(chat, {"x-chatgate-task": "title_generation"}) == "title_generation"
    assert tasks.recognise(chat, {"x-chatgate-task": " Tags-Generation "}) == "tags_generation"
    for empty in ("", "false", "0", "none"):  # Open WebUI's {{TASK}} is empty on chat requests
        assert tasks.recognise(chat, {"x-chatgate-task": empty}) is None
    assert tasks.recognise(chat, {}, {"task": "follow_up_generation"}) == "follow_up_generation"
    assert tasks.recognise(chat, {}, {"task": True}) == "task"
    assert tasks.recognise(chat, {}, {"task": ""}) is None
    assert tasks.recognise(chat, {}, {"chat_id": "c1"}) is None
    assert task_name("x" * 100) == "x" * 64


def test_settings_turn_parts_off_and_add_templates() -> None:
    title = render(OPENWEBUI_TEMPLATES["title_generation"], CHAT[:2])
    marker = {"x-chatgate-task": "title_generation"}
    off = TaskRecogniser(TaskSettings(enabled=False))
    assert off.recognise(task_request(title), marker, {"task": "x"}) is None
    custom = "Summarise this chat as a title of at most five words:\n{{MESSAGES:END:4}}\nTitle only, please."
    own = TaskRecogniser(
        TaskSettings(
            openwebui_templates=False,
            templates={"title_generation": custom},
            marker_header="X-Front-End-Task",
            marker_field=None,
            model="cheap-model",
        )
    )
    assert own.model == "cheap-model"
    assert own.recognise(task_request(title), {}) is None  # the built-in templates are off
    assert own.recognise(task_request(render(custom, CHAT)), {}) == "title_generation"
    assert own.recognise(CHAT[:1], {"x-chatgate-task": "tags_generation"}) is None  # another header now
    assert own.recognise(CHAT[:1], {"x-front-end-task": "tags_generation"}) == "tags_generation"
    assert own.recognise(CHAT[:1], {}, {"task": "tags_generation"}) is None
    replaced = TaskRecogniser(TaskSettings(templates={"title_generation": custom}))
    assert replaced.recognise(task_request(title), {}) is None  # the same name replaces the built-in one
    assert replaced.recognise(task_request(render(custom, CHAT)), {}) == "title_generation"
    assert replaced.recognise(task_request(render(OPENWEBUI_TEMPLATES["tags_generation"], CHAT)), {}) == (
        "tags_generation"
    )


def test_templates_are_checked_when_settings_load(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="outside its placeholders"):
        TaskSettings(templates={"title": "{{prompt}} please"})  # would match nearly any message
    with pytest.raises(ValidationError, match="task name"):
        TaskSettings(templates={"Title Generation": "Summarise this chat as a title: {{MESSAGES}}"})
    monkeypatch.setenv("CHATGATE_TASKS__MODEL", "cheap")
    monkeypatch.setenv("CHATGATE_TASKS__TEMPLATES", '{"summary": "Summarise the chat below:\\n{{MESSAGES}}"}')
    settings = Settings()
    assert settings.tasks.model == "cheap" and "summary" in settings.tasks.templates


def test_sole_user_text() -> None:
    assert sole_user_text([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]) == "u"
    assert sole_user_text([{"role": "developer", "content": "s"}, {"role": "user", "content": "u"}]) == "u"
    assert sole_user_text([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]) is None
    assert sole_user_text(["not a message"]) is None
    assert sole_user_text([{"role": "user", "content": None}]) is None


# ---- kinds ----------------------------------------------------------------------------------------------------


def test_kinds_match_the_store() -> None:
    assert KINDS == REQUEST_KINDS and "task" in KINDS


def test_task_kind_comes_first() -> None:
    payload = {"model": "research-model", "messages": CHAT[:1], "tools": [{"type": "function"}]}
    assert request_kind(payload, {"web_search": True}, frozenset({"research-model"}), task="title_generation") == (
        "task"
    )
    assert request_kind(payload, {}, frozenset(), task=None) == "standard"


def test_tool_kind_only_when_a_tool_was_called() -> None:
    builtin = [{"type": "function", "function": {"name": f"tool_{i}", "parameters": {}}} for i in range(36)]
    offered = {"model": "m", "messages": CHAT[:1], "tools": builtin, "tool_choice": "auto"}
    assert request_kind(offered, {}, frozenset()) == "standard"  # Open WebUI offers its built-in tools every time
    assert request_kind(offered, {}, frozenset(), called_tool=True) == "tool"  # the answer called one
    call = {"id": "call_1", "type": "function", "function": {"name": "tool_0", "arguments": "{}"}}
    loop = [
        CHAT[0],
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
    ]
    assert request_kind({**offered, "messages": loop}, {}, frozenset()) == "tool"  # tool results in the request
    legacy = [CHAT[0], {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}}]
    assert uses_tools(legacy) and uses_tools([CHAT[0], {"role": "function", "name": "f", "content": "1"}])
    later = [*loop, {"role": "assistant", "content": "It is 42."}, {"role": "user", "content": "thanks"}]
    assert request_kind({**offered, "messages": later}, {}, frozenset()) == "standard"  # an earlier turn's tools
    assert not uses_tools([]) and not uses_tools(["junk", CHAT[0]])


def test_calls_tool_reads_replies_as_stored() -> None:
    assert calls_tool([{"type": "tool_calls", "tool_calls": [{}]}, {"type": "text", "text": "x"}])
    assert not calls_tool("echo: hi") and not calls_tool(None) and not calls_tool([{"type": "text", "text": "x"}])
