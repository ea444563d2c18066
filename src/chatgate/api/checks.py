"""Shape and range checks for the OpenAI request fields, naming the field that is wrong.

A request an upstream cannot read must never reach it: a malformed ``tools`` array made upstreams
answer 500, and one caller's 500s counted against everyone's circuit breaker. These run on every
request, so each is a few ``isinstance`` checks; a field that is absent costs nothing (the caller
looks up only the fields the body has). Shapes and ranges follow OpenAI's API reference; values
OpenAI leaves open (roles, extra members of an object) are passed on untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chatgate.errors import BadRequest

# The bound integers with none of their own get (the OpenAPI document says so): JSON's safe integers, which
# every parser, ours included, reads exactly (orjson reads a larger one as a float, rounded).
MAX_INT = 2**53 - 1
_TYPE_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}

Check = Callable[[str, Any], None]


def fail(field: str, expected: str, got: Any = None) -> BadRequest:
    got_name = "nothing" if got is None else _json_type(got)
    return BadRequest(f"'{field}' must be {expected}.", details={"field": field, "expected": expected, "got": got_name})


def _json_type(value: Any) -> str:
    return "boolean" if isinstance(value, bool) else _TYPE_NAMES.get(type(value), type(value).__name__)


def typed(*types: type) -> Check:
    """A check that the value has one of the JSON ``types`` (a boolean is not a number in JSON)."""
    expected = " or ".join(("an " if t in (int, list, dict) else "a ") + _TYPE_NAMES[t] for t in types)
    numeric = bool not in types

    integral = int in types and float not in types

    def check(field: str, value: Any) -> None:
        if isinstance(value, types) and not (numeric and isinstance(value, bool)):
            return
        if not (integral and isinstance(value, float) and value.is_integer()):  # JSON Schema's integer: 2.0
            raise fail(field, expected, value)

    return check


def ranged(low: float | None, high: float | None, *, integer: bool = False) -> Check:
    """A number (an integer when ``integer``) within ``[low, high]`` (either bound may be open)."""
    kind = "an integer" if integer else "a number"
    if high is not None and high >= MAX_INT:  # no bound of its own: JSON's safe integers, not worth saying
        expected = f"{kind} of at least {low:g}" if low is not None and low > -MAX_INT else kind
    elif low is not None and high is not None:
        expected = f"{kind} from {low:g} to {high:g}"
    elif low is not None:
        expected = f"{kind} of at least {low:g}"
    else:
        expected = f"{kind} of at most {high:g}"
    types: tuple[type[int] | type[float], ...] = (int,) if integer else (int, float)

    def check(field: str, value: Any) -> None:
        if isinstance(value, bool) or not (
            isinstance(value, types) or (integer and isinstance(value, float) and value.is_integer())
        ):
            raise fail(field, expected, value)
        number: float = value
        if (low is not None and number < low) or (high is not None and number > high):
            raise fail(field, expected, value)

    return check


_BOOLEAN = typed(bool)


def one_of(*allowed: str) -> Check:
    expected = "one of " + ", ".join(f"'{a}'" for a in allowed)
    members = frozenset(allowed)

    def check(field: str, value: Any) -> None:
        if not isinstance(value, str) or value not in members:
            raise fail(field, expected, value)

    return check


def _string(field: str, value: Any, *, required: bool = True, non_empty: bool = False) -> None:
    if value is None and not required:
        return
    if not isinstance(value, str) or (non_empty and not value):
        raise fail(field, "a non-empty string" if non_empty else "a string", value)


def _object(field: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise fail(field, "an object", value)
    return value


def _array(field: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise fail(field, "an array", value)
    return value


# ---- messages ---------------------------------------------------------------------------------

CONTENT_REQUIRED = frozenset({"system", "developer", "user", "tool"})


def _url_member(field: str, value: Any) -> None:
    """``{"url": "..."}`` (OpenAI), or the URL as a plain string (accepted by most servers)."""
    if isinstance(value, str):
        return
    _string(field + ".url", _object(field, value).get("url"))


def _audio_member(field: str, value: Any) -> None:
    audio = _object(field, value)
    _string(field + ".data", audio.get("data"))
    _string(field + ".format", audio.get("format"))


def _file_member(field: str, value: Any) -> None:
    file = _object(field, value)
    for name in ("file_data", "file_id", "filename"):
        _string(f"{field}.{name}", file.get(name), required=False)
    if file.get("file_data") is None and file.get("file_id") is None:
        raise fail(field, "an object with 'file_data' or 'file_id'", value)


def _text_member(field: str, value: Any) -> None:
    _string(field, value)


# part type -> (the member it must carry, its check)
PART_TYPES: dict[str, tuple[str, Check]] = {
    "text": ("text", _text_member),
    "image_url": ("image_url", _url_member),
    "input_audio": ("input_audio", _audio_member),
    "file": ("file", _file_member),
    "refusal": ("refusal", _text_member),
    "audio_url": ("audio_url", _url_member),  # vLLM's multimodal extensions
    "video_url": ("video_url", _url_member),
}
_PART_EXPECTED = "one of " + ", ".join(f"'{t}'" for t in PART_TYPES)


# Fast paths: a predicate that accepts the common well-formed shapes, with no field names built. Each
# accepts no more than the check after it (which, when the predicate says no, finds and names the fault).


def _text_part(part: Any) -> bool:
    return type(part) is dict and part.get("type") == "text" and type(part.get("text")) is str


def _function_tool(tool: Any) -> bool:
    if type(tool) is not dict or tool.get("type", "function") != "function":
        return False
    function = tool.get("function")
    if type(function) is not dict:
        return False
    name, about, params = function.get("name"), function.get("description"), function.get("parameters")
    return (
        type(name) is str
        and bool(name)
        and (about is None or type(about) is str)
        and (params is None or type(params) is dict)
        and ((strict := function.get("strict")) is None or strict is True or strict is False)
    )


def _function_call(call: Any) -> bool:
    if type(call) is not dict or type(call.get("id")) is not str or call.get("type", "function") != "function":
        return False
    function = call.get("function")
    return (
        type(function) is dict
        and type(function.get("name")) is str
        and bool(function["name"])
        and type(function.get("arguments")) is str
    )


def check_content(field: str, content: Any) -> None:
    """A message's content: a string, or an array of content parts of known types."""
    if isinstance(content, str):
        return
    if type(content) is list and all(_text_part(part) for part in content):
        return
    if not isinstance(content, list):
        raise fail(field, "a string or an array of content parts", content)
    for j, part in enumerate(content):
        where = f"{field}[{j}]"
        if not isinstance(part, dict):
            raise fail(where, "a content part object", part)
        kind = part.get("type")
        known = PART_TYPES.get(kind) if isinstance(kind, str) else None
        if known is None:
            raise fail(where + ".type", _PART_EXPECTED, kind)
        member, check = known
        check(f"{where}.{member}", part.get(member))


def _check_tool_calls(field: str, calls: Any) -> None:
    if type(calls) is list and all(_function_call(call) for call in calls):
        return
    for k, call in enumerate(_array(field, calls)):
        where = f"{field}[{k}]"
        _object(where, call)
        _string(where + ".id", call.get("id"))
        _string(where + ".type", call.get("type"), required=False)
        if call.get("type", "function") == "function":
            function = _object(where + ".function", call.get("function"))
            _string(where + ".function.name", function.get("name"), non_empty=True)
            _string(where + ".function.arguments", function.get("arguments"))


def check_message(i: int, msg: Any) -> None:
    where = f"messages[{i}]"
    if not isinstance(msg, dict):
        raise fail(where, "an object", msg)
    role = msg.get("role")
    if not isinstance(role, str):
        raise fail(where + ".role", "a string", role)
    content = msg.get("content")
    if content is not None:
        check_content(where + ".content", content)
    elif role in CONTENT_REQUIRED:
        raise fail(where + ".content", "a string or an array of content parts", None)
    if role == "assistant":
        calls = msg.get("tool_calls")
        if calls is not None:
            _check_tool_calls(where + ".tool_calls", calls)
        if content is None and not calls and msg.get("function_call") is None and msg.get("audio") is None:
            raise fail(where + ".content", "a string or content parts (or the message must carry 'tool_calls')")
    elif role == "tool":
        _string(where + ".tool_call_id", msg.get("tool_call_id"))
    name = msg.get("name")
    if name is not None:
        _string(where + ".name", name)


# ---- tools, tool_choice, response_format -----------------------------------------------------


def check_tools(field: str, tools: Any) -> None:
    if type(tools) is list and all(_function_tool(tool) for tool in tools):
        return
    for i, tool in enumerate(_array(field, tools)):
        where = f"{field}[{i}]"
        _object(where, tool)
        kind = tool.get("type", "function")
        if kind == "function":
            function = _object(where + ".function", tool.get("function"))
            _string(where + ".function.name", function.get("name"), non_empty=True)
            _string(where + ".function.description", function.get("description"), required=False)
            if function.get("parameters") is not None:
                _object(where + ".function.parameters", function["parameters"])
            if function.get("strict") is not None:
                _BOOLEAN(where + ".function.strict", function["strict"])
        elif kind == "custom":
            custom = _object(where + ".custom", tool.get("custom"))
            _string(where + ".custom.name", custom.get("name"), non_empty=True)
        else:
            raise fail(where + ".type", "'function' or 'custom'", kind)


_TOOL_CHOICE_MODES = one_of("none", "auto", "required")


def check_tool_choice(field: str, choice: Any) -> None:
    if isinstance(choice, str):
        _TOOL_CHOICE_MODES(field, choice)
        return
    _object(field, choice)
    kind = choice.get("type")
    if kind in ("function", "custom"):
        named = _object(f"{field}.{kind}", choice.get(kind))
        _string(f"{field}.{kind}.name", named.get("name"), non_empty=True)
    elif kind == "allowed_tools":
        _object(field + ".allowed_tools", choice.get("allowed_tools"))
    else:
        raise fail(field + ".type", "'function', 'custom' or 'allowed_tools'", kind)


_FORMATS = one_of("text", "json_object", "json_schema", "structural_tag")


def check_response_format(field: str, value: Any) -> None:
    fmt = _object(field, value)
    _FORMATS(field + ".type", fmt.get("type"))
    if fmt["type"] == "json_schema":
        schema = _object(field + ".json_schema", fmt.get("json_schema"))
        _string(field + ".json_schema.name", schema.get("name"), non_empty=True)
        if schema.get("schema") is not None:
            _object(field + ".json_schema.schema", schema["schema"])
        if schema.get("strict") is not None:
            _BOOLEAN(field + ".json_schema.strict", schema["strict"])


def check_stop(field: str, value: Any) -> None:
    if isinstance(value, str):
        return
    for i, item in enumerate(_array(field, value)):
        if not isinstance(item, str):
            raise fail(f"{field}[{i}]", "a string", item)


_BIAS = ranged(-100, 100)


def check_logit_bias(field: str, value: Any) -> None:
    for token, bias in _object(field, value).items():
        if not token.isdigit():
            raise fail(f"{field}.{token}"[:200], "keyed by token ids (digits)", token)
        _BIAS(f"{field}.{token}", bias)


def check_stream_options(field: str, value: Any) -> None:
    include = _object(field, value).get("include_usage")
    if include is not None:
        _BOOLEAN(field + ".include_usage", include)


def check_strings(field: str, value: Any) -> None:
    for i, item in enumerate(_array(field, value)):
        if not isinstance(item, str):
            raise fail(f"{field}[{i}]", "a string", item)


# field -> its check; None values are accepted for every optional field, as OpenAI does
CHAT_FIELDS: dict[str, Check] = {
    "stream": typed(bool),
    "stream_options": check_stream_options,
    "n": ranged(1, 128, integer=True),
    "max_tokens": ranged(1, MAX_INT, integer=True),
    "max_completion_tokens": ranged(1, MAX_INT, integer=True),
    "temperature": ranged(0, 2),
    "top_p": ranged(0, 1),
    "presence_penalty": ranged(-2, 2),
    "frequency_penalty": ranged(-2, 2),
    "seed": ranged(-MAX_INT, MAX_INT, integer=True),
    "stop": check_stop,
    "tools": check_tools,
    "tool_choice": check_tool_choice,
    "parallel_tool_calls": typed(bool),
    "response_format": check_response_format,
    "logprobs": typed(bool),
    "top_logprobs": ranged(0, 20, integer=True),
    "logit_bias": check_logit_bias,
    "user": typed(str),
    "metadata": typed(dict),
    "modalities": check_strings,
    "reasoning_effort": typed(str),
    "store": typed(bool),
    "service_tier": typed(str),
    "prediction": typed(dict),
    "audio": typed(dict),
}


def _token_id(value: Any) -> bool:
    """A token id: an integer (JSON Schema's: ``5.0`` too) from 0 to ``MAX_INT``."""
    if isinstance(value, float):
        return value.is_integer() and 0 <= value <= MAX_INT
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INT


def check_input(field: str, value: Any) -> None:
    """Embeddings input: a string, or a non-empty array of strings, of token ids, or of token-id arrays."""
    if isinstance(value, str):
        return
    if not isinstance(value, list) or not value:
        raise fail(field, "a string or a non-empty array", value)
    first = value[0]
    if isinstance(first, str):
        bad = next((i for i, x in enumerate(value) if not isinstance(x, str)), None)
        expected = "a string"
    elif isinstance(first, int | float) and not isinstance(first, bool):
        bad = next((i for i, x in enumerate(value) if not _token_id(x)), None)
        expected = "a token id (an integer of at least 0)"
    elif isinstance(first, list):
        bad = None
        for i, tokens in enumerate(value):
            if not isinstance(tokens, list) or not tokens or not all(_token_id(t) for t in tokens):
                bad = i
                break
        expected = "a non-empty array of token ids"
    else:
        raise fail(field + "[0]", "a string, a token id or an array of token ids", first)
    if bad is not None:
        raise fail(f"{field}[{bad}]", expected, value[bad])


EMBEDDING_FIELDS: dict[str, Check] = {
    "encoding_format": one_of("float", "base64"),
    "dimensions": ranged(1, MAX_INT, integer=True),
    "user": typed(str),
}
