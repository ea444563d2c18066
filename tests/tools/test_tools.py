"""The server tools' parts without a server: results cut to a budget, sources numbered on, the registry's
choices and its errors, custom tools, the loop's usage sums."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from chatgate.errors import BadRequest
from chatgate.rag.assistants import Assistant
from chatgate.settings import CustomToolSettings, ToolSettings
from chatgate.tools.base import ToolContext, ToolResult, trim_to
from chatgate.tools.clock import CurrentTime
from chatgate.tools.custom import CustomTool
from chatgate.tools.loop import add_usage
from chatgate.tools.registry import Tools


def words(text: str) -> int:
    return len(text.split())


def test_trim_to_keeps_what_fits_and_cuts_the_rest_at_a_word() -> None:
    assert trim_to("one two three", 3, words) == "one two three"
    cut = trim_to("alpha beta gamma delta epsilon zeta", 5, words)  # the marker's three words included
    assert cut == "alpha beta\n[cut to fit]"
    assert trim_to("alpha beta", 0, words) == ""


def test_numbered_shifts_sources_and_their_numbers_in_the_text() -> None:
    sources = [{"index": 1, "document": "a.md"}, {"index": 2, "document": "b.md"}]
    result = ToolResult(
        "[1] A\nalpha\n\n[2] B\nbeta", sources, renumber=lambda first: f"[{first}] A\n\n[{first + 1}] B"
    )
    assert result.numbered(1) == (result.content, sources)
    text, shifted = result.numbered(4)
    assert text == "[4] A\n\n[5] B" and [s["index"] for s in shifted] == [4, 5]
    assert [s["index"] for s in sources] == [1, 2]  # the result itself is unchanged


def assistant(**kw: object) -> Assistant:
    return Assistant("helper", "m", **kw)  # type: ignore[arg-type]


def test_the_registry_offers_search_only_with_retrieval_tool_and_collections() -> None:
    tools = Tools(ToolSettings(), rag=object(), count=words)  # type: ignore[arg-type]
    assert list(tools.offered(assistant(collections=("hr",), retrieval="tool"))) == ["search_documents"]
    assert list(tools.offered(assistant(collections=("hr",), retrieval="every_turn"))) == []
    assert list(tools.offered(assistant(retrieval="tool", tools=("current_time",)))) == ["current_time"]
    with pytest.raises(BadRequest) as caught:
        tools.offered(assistant(tools=("nope",)))
    assert caught.value.details == {"assistant": "helper", "tool": "nope"}
    assert tools.max_steps(assistant()) == 4 and tools.max_steps(assistant(max_steps=2)) == 2


def test_a_custom_tool_may_not_take_a_builtin_name() -> None:
    custom = CustomToolSettings(name="current_time", description="x", callable="tests.integration.server_tools:broken")
    with pytest.raises(ValueError, match="taken"):
        Tools(ToolSettings(custom=[custom]), rag=None, count=words)


def test_a_custom_tool_gets_its_arguments_and_the_caller() -> None:
    who = CustomTool(
        CustomToolSettings(name="whoami", description="x", callable="tests.integration.server_tools:whoami")
    )
    ctx = ToolContext("ada", assistant(), 100)
    result = asyncio.run(who.run({}, ctx))
    assert result.content == '{"user_id":"ada","assistant":"helper"}' and result.error is None
    assert not who.deterministic


def test_current_time_in_a_zone_and_a_zone_it_does_not_know() -> None:
    clock = CurrentTime(now=lambda: datetime(2026, 12, 4, 23, 0, tzinfo=UTC))
    ctx = ToolContext("ada", assistant(), 100)
    paris = asyncio.run(clock.run({"timezone": "Europe/Paris"}, ctx))
    assert paris.content.startswith("Saturday 05 December 2026, 00:00:00 (Europe/Paris")
    unknown = asyncio.run(clock.run({"timezone": "Mars/Olympus"}, ctx))
    assert unknown.error == "zone" and "Mars/Olympus" in unknown.content


def test_usage_of_the_steps_adds_up() -> None:
    one = {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}
    two = {"prompt_tokens": 30, "completion_tokens": 5, "total_tokens": 35}
    assert add_usage(add_usage(None, one), two) == {"prompt_tokens": 40, "completion_tokens": 7, "total_tokens": 47}
    assert add_usage(one, None) == one
