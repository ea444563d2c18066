"""The request checks in process: shapes and ranges of the OpenAI fields, the field named in the 400."""

from __future__ import annotations

from typing import Any

import pytest

from chatgate.api.protocol import check_chat, check_embeddings
from chatgate.errors import BadRequest

USER = {"role": "user", "content": "hi"}


def refused(body: dict[str, Any], check: Any = check_chat) -> dict[str, Any]:
    with pytest.raises(BadRequest) as caught:
        check(body)
    return caught.value.details


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [USER], **fields}


def test_the_400_names_the_field_what_it_must_be_and_what_came() -> None:
    assert refused(chat(temperature=True)) == {
        "field": "temperature",
        "expected": "a number from 0 to 2",
        "got": "boolean",
    }
    assert refused(chat(n=1.5)) == {"field": "n", "expected": "an integer from 1 to 128", "got": "number"}
    assert refused(chat(max_tokens=-1))["expected"] == "an integer of at least 1"
    assert refused(chat(tools=[1])) == {"field": "tools[0]", "expected": "an object", "got": "integer"}
    assert refused(chat(stream="yes")) == {"field": "stream", "expected": "a boolean", "got": "string"}


@pytest.mark.parametrize(
    ("field", "good", "bad"),
    [
        ("temperature", [0, 2, 0.7], [-0.01, 2.01]),
        ("top_p", [0, 1, 0.5], [-1, 1.01]),
        ("presence_penalty", [-2, 2], [-2.1, 2.1]),
        ("frequency_penalty", [-2, 0], [3]),
        ("n", [1, 128], [0, 129, -1]),
        ("max_tokens", [1, 10**6], [0, -5]),
        ("max_completion_tokens", [1], [0]),
        ("top_logprobs", [0, 20], [-1, 21]),
        ("seed", [-5, 0, 2**40], [1.5, "1"]),
    ],
)
def test_ranges(field: str, good: list[Any], bad: list[Any]) -> None:
    for value in good:
        check_chat(chat(**{field: value}))
    for value in bad:
        assert refused(chat(**{field: value}))["field"] == field


def test_null_optional_fields_and_unknown_fields_pass() -> None:
    check_chat(chat(temperature=None, tools=None, response_format=None, vendor_knob={"anything": [1, "x"]}))


@pytest.mark.parametrize(
    "message",
    [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "u"}}]},
        {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAA", "format": "wav"}}]},
        {"role": "user", "content": [{"type": "file", "file": {"file_id": "f1"}}]},
        {"role": "user", "content": [{"type": "video_url", "video_url": {"url": "u"}}]},
        {"role": "user", "content": []},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
        {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}},
        {"role": "assistant", "content": "", "tool_calls": []},
        {"role": "tool", "tool_call_id": "c", "content": [{"type": "text", "text": "42"}]},
        {"role": "ipython", "content": None},  # roles OpenAI does not define are passed on
        {"role": "user", "content": "hi", "name": "bob"},
    ],
)
def test_well_formed_messages_pass(message: dict[str, Any]) -> None:
    check_chat(chat(messages=[message]))


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"role": "user", "content": 5}, "messages[0].content"),
        ({"role": "system"}, "messages[0].content"),
        (
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "A"}}]},
            "messages[0].content[0].input_audio.format",
        ),
        ({"role": "user", "content": [{"type": "file", "file": {"filename": "a.pdf"}}]}, "messages[0].content[0].file"),
        ({"role": "user", "content": [{"text": "no type"}]}, "messages[0].content[0].type"),
        ({"role": "assistant"}, "messages[0].content"),
        ({"role": "assistant", "content": None, "tool_calls": {}}, "messages[0].tool_calls"),
        ({"role": "assistant", "content": None, "tool_calls": [{"id": 1}]}, "messages[0].tool_calls[0].id"),
        (
            {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {}}}]},
            "messages[0].tool_calls[0].function.arguments",
        ),
        ({"role": "tool", "content": "x", "tool_call_id": 3}, "messages[0].tool_call_id"),
        ({"role": "tool", "content": "x"}, "messages[0].tool_call_id"),
        ({"role": "user", "content": "hi", "name": 7}, "messages[0].name"),
    ],
)
def test_malformed_messages_name_the_field(message: dict[str, Any], field: str) -> None:
    assert refused(chat(messages=[USER, message]))["field"] == field.replace("messages[0]", "messages[1]")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f", "strict": "yes"}}]}, "tools[0].function.strict"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "description": 1}}]},
            "tools[0].function.description",
        ),
        ({"tools": [{"type": "custom", "custom": {}}]}, "tools[0].custom.name"),
        ({"tool_choice": {"type": "allowed_tools"}}, "tool_choice.allowed_tools"),
        ({"tool_choice": {"type": "nope"}}, "tool_choice.type"),
        ({"tool_choice": 1}, "tool_choice"),
        ({"response_format": "json"}, "response_format"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": 1}}},
            "response_format.json_schema.schema",
        ),
        ({"logit_bias": {"token": 1}}, "logit_bias.token"),
        ({"stop": 5}, "stop"),
        ({"modalities": ["text", 1]}, "modalities[1]"),
        ({"metadata": []}, "metadata"),
    ],
)
def test_malformed_tools_formats_and_others(fields: dict[str, Any], field: str) -> None:
    assert refused(chat(**fields))["field"] == field


def test_well_formed_tools_and_formats_pass() -> None:
    check_chat(
        chat(
            tools=[
                {"type": "function", "function": {"name": "f", "description": "d", "parameters": {}, "strict": True}},
                {"type": "custom", "custom": {"name": "g"}},
                {"function": {"name": "h"}},  # type defaults to function
            ],
            tool_choice="required",
            parallel_tool_calls=False,
            response_format={"type": "json_object"},
            stop="END",
            logit_bias={"1": -100, "2": 100},
            stream_options={"include_usage": True, "continuous_usage_stats": True},
        )
    )
    check_chat(chat(tool_choice={"type": "function", "function": {"name": "f"}}, response_format={"type": "text"}))


@pytest.mark.parametrize(
    ("given", "field"),
    [
        (None, "input"),
        ([], "input"),
        ({}, "input"),
        ([1.5], "input[0]"),
        (["a", None], "input[1]"),
        ([1, "a"], "input[1]"),
        ([[1], [2, "x"]], "input[1]"),
        ([[1], []], "input[1]"),
    ],
)
def test_embeddings_input(given: Any, field: str) -> None:
    assert refused({"model": "m", "input": given}, check_embeddings)["field"] == field


def test_embeddings_good_inputs_and_fields() -> None:
    for given in ("a", ["a", "b"], [1, 2, 3], [[1, 2], [3]]):
        check_embeddings({"model": "m", "input": given, "encoding_format": "base64", "dimensions": 8})
    assert (
        refused({"model": "m", "input": "a", "encoding_format": "hex"}, check_embeddings)["field"] == "encoding_format"
    )
    assert refused({"model": "m", "input": "a", "dimensions": 0}, check_embeddings)["field"] == "dimensions"
