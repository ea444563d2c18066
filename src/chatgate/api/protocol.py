"""Wire formats: the OpenAI request checks we make, and pydantic models for the OpenAPI docs.

Requests are not parsed into these models (the whole OpenAI schema, unknown fields included,
passes through untouched); ``check_chat`` and ``check_embeddings`` check the fields we rely on
and the shape and range of the well-known ones (``api/checks.py``), naming the field that is wrong.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from chatgate.api.checks import CHAT_FIELDS, EMBEDDING_FIELDS, Check, check_input, check_message, fail
from chatgate.api.openai_models import ChatCompletionRequest, ContentPart, EmbeddingRequest, Sampling

__all__ = [
    "SESSION_ID_PATTERN",
    "ChatCompletionRequest",
    "EmbeddingRequest",
    "check_chat",
    "check_embeddings",
    "parse_object",
]
from chatgate.errors import InvalidJSON


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
        raise fail("model", "a non-empty string", model)


def check_fields(data: dict[str, Any], fields: dict[str, Check]) -> None:
    # Over the body's own fields (usually a handful), not over every field we know.
    for name, value in data.items():
        check = fields.get(name)
        if check is not None and value is not None:
            check(name, value)


def check_chat(data: dict[str, Any]) -> None:
    _check_model(data)
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise fail("messages", "a non-empty array", messages)
    for i, msg in enumerate(messages):
        # The common message, {role, content} with both strings, is well formed as it is (but for a tool
        # result, which needs its tool_call_id): no call for it.
        if (
            type(msg) is dict
            and len(msg) == 2
            and type(msg.get("content")) is str
            and type(role := msg.get("role")) is str
            and role != "tool"
        ):
            continue
        check_message(i, msg)
    check_fields(data, CHAT_FIELDS)


def check_embeddings(data: dict[str, Any]) -> None:
    _check_model(data)
    check_input("input", data.get("input"))
    check_fields(data, EMBEDDING_FIELDS)


# ---- models for the OpenAPI docs -------------------------------------------------------------

# "Not blank" as the routes judge it (``str.strip()``): a character that is not Python whitespace. Spelled out
# (not ``\\S``): JSON Schema's regular expressions (ECMA 262) count other characters as whitespace.
PYTHON_WHITESPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NOT_BLANK = f"[^{PYTHON_WHITESPACE}]"


# A session id as the chat API takes it (its own are 32 hex characters): printable ASCII, at most 64.
SESSION_ID_PATTERN = r"^[ -~]{1,64}$"


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ChatCompletion(_Open):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: dict[str, Any] | None = None


class ChatAPIRequest(Sampling):
    """`POST /api/v1/chat`: one new message; the session holds the history; OpenAI's generation settings go
    on to the model. Any other field is a 400."""

    model_config = ConfigDict(extra="forbid")

    message: Annotated[str, Field(pattern=NOT_BLANK)] | Annotated[list[ContentPart], Field(min_length=1)] = Field(
        description="Text (not blank), or OpenAI content parts (images, audio)."
    )
    session_id: str | None = Field(
        None, pattern=SESSION_ID_PATTERN, description="Continue this session; omitted: a new one is created."
    )
    model: str | None = Field(None, description="Default: `sessions.default_model`, else `local`, else the first.")
    use_cache: bool | None = Field(None, description="Whether a cached answer may be used.")
    stream: bool | None = Field(
        False,
        description='SSE: `{"type": "delta", "content"}` events, then `{"type": "done", ...}` '
        "(the non-streaming body), then `[DONE]`.",
    )


class ChatAPIResponse(BaseModel):
    response: str
    session_id: str
    cached: bool
    sources: list[dict[str, Any]]
    usage: dict[str, Any] | None
    warnings: list[dict[str, Any]] | None = Field(
        None,
        description="Only when the answer must say what it could not do: `COLLECTION_UNRESOLVED`, an assistant's "
        "collection that matches nothing the caller may read (`collection`, `message`).",
    )


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
