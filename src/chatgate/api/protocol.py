"""Wire formats: the OpenAI request checks we make, and pydantic models for the OpenAPI docs.

Requests are not parsed into these models (the whole OpenAI schema, unknown fields included,
passes through untouched); ``parse_object`` checks the fields we rely on and the types of the
well-known ones, naming the field that is wrong.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from chatgate.errors import BadRequest, InvalidJSON

_TYPE_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}

# field -> accepted JSON types (None always allowed for optional fields, as OpenAI does)
CHAT_FIELDS: dict[str, tuple[type, ...]] = {
    "stream": (bool,),
    "stream_options": (dict,),
    "n": (int,),
    "max_tokens": (int,),
    "max_completion_tokens": (int,),
    "temperature": (int, float),
    "top_p": (int, float),
    "presence_penalty": (int, float),
    "frequency_penalty": (int, float),
    "seed": (int,),
    "stop": (str, list),
    "tools": (list,),
    "tool_choice": (str, dict),
    "response_format": (dict,),
    "logprobs": (bool,),
    "top_logprobs": (int,),
    "logit_bias": (dict,),
    "user": (str,),
    "metadata": (dict,),
}
EMBEDDING_FIELDS: dict[str, tuple[type, ...]] = {"encoding_format": (str,), "dimensions": (int,), "user": (str,)}


def _fail(field: str, expected: str, got: Any = None) -> BadRequest:
    got_name = type(got).__name__ if got is not None else "nothing"
    return BadRequest(f"'{field}' must be {expected}.", details={"field": field, "expected": expected, "got": got_name})


def _check_type(field: str, value: Any, types: tuple[type, ...]) -> None:
    # bool is an int in Python; JSON keeps them apart. An integer may be written 2.0 (JSON Schema's integer).
    if isinstance(value, bool) and bool not in types:
        raise _fail(field, " or ".join(_TYPE_NAMES[t] for t in types), value)
    if not isinstance(value, types) and not (int in types and isinstance(value, float) and value.is_integer()):
        raise _fail(field, " or ".join(_TYPE_NAMES[t] for t in types), value)


def parse_object(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise InvalidJSON("The request body is empty; expected a JSON object.")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(
            f"The request body is not valid JSON: {exc.msg} at position {exc.pos}.", details={"position": exc.pos}
        ) from None
    if not isinstance(data, dict):
        raise InvalidJSON("The request body must be a JSON object.")
    return data


def _check_model(data: dict[str, Any]) -> None:
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise _fail("model", "a non-empty string", model)


def check_fields(data: dict[str, Any], fields: dict[str, tuple[type, ...]]) -> None:
    for name, types in fields.items():
        value = data.get(name)
        if value is not None:
            _check_type(name, value, types)


def check_chat(data: dict[str, Any]) -> None:
    _check_model(data)
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _fail("messages", "a non-empty array", messages)
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise _fail(f"messages[{i}]", "an object", msg)
        if not isinstance(msg.get("role"), str):
            raise _fail(f"messages[{i}].role", "a string", msg.get("role"))
        content = msg.get("content")
        if content is not None and not isinstance(content, str | list):
            raise _fail(f"messages[{i}].content", "a string, an array of content parts or null", content)
    check_fields(data, CHAT_FIELDS)
    check_sampling(data)
    n = data.get("n")
    if n is not None and n < 1:
        raise BadRequest("'n' must be at least 1.", details={"field": "n"})


# field -> the range OpenAI gives it (inclusive)
RANGES: dict[str, tuple[float, float]] = {
    "max_tokens": (0, float("inf")),
    "max_completion_tokens": (0, float("inf")),
    "temperature": (0, 2),
    "top_p": (0, 1),
    "presence_penalty": (-2, 2),
    "frequency_penalty": (-2, 2),
    "top_logprobs": (0, 20),
}


def check_sampling(data: dict[str, Any]) -> None:
    """OpenAI's generation settings, in range and of the right shape (types: ``check_fields``)."""
    for name, (low, high) in RANGES.items():
        value = data.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and not low <= value <= high:
            bounds = f"at least {low:g}" if high == float("inf") else f"between {low:g} and {high:g}"
            raise BadRequest(f"'{name}' must be {bounds}.", details={"field": name, "minimum": low, "maximum": high})
    stop = data.get("stop")
    if isinstance(stop, list) and not all(isinstance(s, str) for s in stop):
        raise _fail("stop", "a string or an array of strings", stop)
    bias = data.get("logit_bias")
    if isinstance(bias, dict) and not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in bias.values()
    ):
        raise _fail("logit_bias", "an object of numbers", bias)


def _is_int(value: Any) -> bool:
    """An integer in JSON Schema's sense: ``5`` or ``5.0``, never ``true``."""
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, int) and not isinstance(value, bool)


def check_embeddings(data: dict[str, Any]) -> None:
    _check_model(data)
    value = data.get("input")
    if not isinstance(value, str | list) or (isinstance(value, list) and not value):
        raise _fail("input", "a string or a non-empty array", value)
    if isinstance(value, list) and not (
        all(isinstance(v, str) for v in value)
        or all(_is_int(v) for v in value)
        or all(isinstance(v, list) and all(_is_int(t) for t in v) for v in value)
    ):
        raise _fail("input", "an array of strings, of token ids, or of arrays of token ids", value)
    check_fields(data, EMBEDDING_FIELDS)


# ---- models for the OpenAPI docs -------------------------------------------------------------

# "Not blank" as the routes judge it (``str.strip()``): a character that is not Python whitespace. Spelled out
# (not ``\\S``): JSON Schema's regular expressions (ECMA 262) count other characters as whitespace.
PYTHON_WHITESPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NOT_BLANK = f"[^{PYTHON_WHITESPACE}]"


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ChatMessage(_Open):
    role: str = Field(description="`system`, `developer`, `user`, `assistant`, `tool` (the upstream judges).")
    content: str | list[Any] | None = Field(None, description="Text, or content parts (the upstream checks them).")


class ChatCompletionRequest(_Open):
    """The OpenAI chat request. Every field, known or not, is passed to the upstream; chatgate checks the
    types below, the upstream the rest."""

    model: str = Field(min_length=1, description="A served model, an alias, or `local` for the bundled model.")
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    n: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    metadata: dict[str, Any] | None = Field(
        None, description="A trusted forwarder's end user and conversation; removed before the upstream."
    )


class ChatCompletion(_Open):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: dict[str, Any] | None = None


class EmbeddingRequest(_Open):
    model: str = Field(min_length=1)
    input: (
        str
        | Annotated[list[str], Field(min_length=1)]
        | Annotated[list[int], Field(min_length=1)]
        | Annotated[list[list[int]], Field(min_length=1)]
    )
    encoding_format: str | None = None
    dimensions: int | None = None
    user: str | None = None


class ContentPart(_Open):
    type: str = Field(description="`text`, `image_url`, `input_audio`, `file`, ...")


class ChatAPIRequest(BaseModel):
    """`POST /api/v1/chat`: one new message; the session holds the history. Any other field is a 400."""

    model_config = ConfigDict(extra="forbid")

    message: Annotated[str, Field(pattern=NOT_BLANK)] | Annotated[list[ContentPart], Field(min_length=1)] = Field(
        description="Text (not blank), or OpenAI content parts (images, audio)."
    )
    session_id: str | None = Field(None, description="Continue this session; omitted: a new one is created.")
    model: str | None = Field(None, description="Default: `sessions.default_model`, else `local`, else the first.")
    use_cache: bool | None = Field(None, description="Whether a cached answer may be used.")
    stream: bool | None = Field(
        False,
        description='SSE: `{"type": "delta", "content"}` events, then `{"type": "done", ...}` '
        "(the non-streaming body), then `[DONE]`.",
    )
    # OpenAI's generation settings, passed on to the model as they are
    max_tokens: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None


class ChatAPIResponse(BaseModel):
    response: str
    session_id: str
    cached: bool
    sources: list[dict[str, Any]]
    usage: dict[str, Any] | None


class ModelObject(_Open):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class ErrorDetail(BaseModel):
    code: str = Field(description="Our error code, e.g. MODEL_NOT_FOUND, RATE_LIMIT, UPSTREAM_TIMEOUT.")
    message: str
    type: str = Field(description="OpenAI's error type, e.g. invalid_request_error.")
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorBody(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    uptime_s: float


class Ready(BaseModel):
    status: Literal["ready", "not_ready"]
    upstreams: dict[str, dict[str, Any]]
    store: dict[str, Any]
    limits: dict[str, Any] = Field(description="Admission counters of this process: admitted, limited (by scope), ...")
    context: dict[str, Any] = Field(description="Fit counters: overflows, truncated, summarized, ...")
    tokens: dict[str, Any] = Field(description="Token counter cache statistics.")


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting a JSON body that the route reads itself."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    }
