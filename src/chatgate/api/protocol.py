"""Wire formats: the OpenAI request checks we make, and pydantic models for the OpenAPI docs.

Requests are not parsed into these models (the whole OpenAI schema, unknown fields included,
passes through untouched); ``check_chat`` and ``check_embeddings`` check the fields we rely on
and the shape and range of the well-known ones (``api/checks.py``), naming the field that is wrong.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from chatgate.api.checks import CHAT_FIELDS, EMBEDDING_FIELDS, Check, check_input, check_message, fail
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


def _check_fields(data: dict[str, Any], fields: dict[str, Check]) -> None:
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
    _check_fields(data, CHAT_FIELDS)


def check_embeddings(data: dict[str, Any]) -> None:
    _check_model(data)
    check_input("input", data.get("input"))
    _check_fields(data, EMBEDDING_FIELDS)


# ---- models for the OpenAPI docs -------------------------------------------------------------


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(_Open):
    """The OpenAI chat request. Every field, known or not, is passed to the upstream."""

    model: str = Field(description="A served model, an alias, or `local` for the bundled model.")
    messages: list[ChatMessage]
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    n: int | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    logprobs: bool | None = None


class ChatCompletion(_Open):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: dict[str, Any] | None = None


class EmbeddingRequest(_Open):
    model: str
    input: str | list[str] | list[int] | list[list[int]]


class ChatAPIRequest(BaseModel):
    """`POST /api/v1/chat`: one new message; the session holds the history."""

    message: str | list[dict[str, Any]] = Field(description="Text, or OpenAI content parts (images, audio).")
    session_id: str | None = Field(None, description="Continue this session; omitted: a new one is created.")
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


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "Malformed JSON, a field of the wrong shape or out of range (`details.field` names it), an id with "
        "control characters, or the prompt cannot fit the model's window (`CONTEXT_LENGTH`).",
        401: "Missing or invalid API key.",
        404: "Unknown model or route.",
        413: "Body over `server.max_body_bytes`.",
        429: "Rate limited: `code: RATE_LIMIT` with `details.scope`, `limit`, `remaining`, `reset_in_seconds` "
        "(ours), or the upstream's 429 after retries; `Retry-After` says when to come back.",
        502: "The upstream failed after retries.",
        503: "Every upstream for the model has its circuit open, or the shared rate limiter is down "
        "and configured to fail closed (`LIMITER_UNAVAILABLE`).",
        504: "The upstream timed out.",
    }.items()
}


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting a JSON body that the route reads itself."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    }
