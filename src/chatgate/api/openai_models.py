"""The OpenAI request bodies as ``api/checks.py`` checks them, for the OpenAPI document (and nothing else).

Requests are never parsed into these models: the checks run on the body as it came, and it goes upstream
untouched. The models say exactly what the checks accept, so that a client (or a fuzzer) that follows the
document is never refused, and one that does not is: a content part of a known type with its member, the
roles that need content, a tool result's ``tool_call_id``, an assistant turn with content or tool calls,
tools, tool choices and response formats of the known kinds, the ranges OpenAI gives. Unknown fields pass.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from chatgate.api.checks import MAX_INT
from chatgate.identity.model import ID_PATTERN, MAX_ID_LEN

NonEmpty = Annotated[str, Field(min_length=1)]
EndUser = Annotated[str, Field(max_length=MAX_ID_LEN, pattern=ID_PATTERN)]  # the ``user`` field: an id
# Integers with no bound of their own are JSON-safe (api/checks.py MAX_INT).
Count = Annotated[int, Field(ge=1, le=MAX_INT)]
TokenIds = Annotated[list[Annotated[int, Field(ge=0, le=MAX_INT)]], Field(min_length=1)]
# Token id -> bias from -100 to 100, and nothing else.
LogitBias = Annotated[
    dict[str, float],
    WithJsonSchema(
        {
            "type": "object",
            "patternProperties": {"^[0-9]+$": {"type": "number", "minimum": -100, "maximum": 100}},
            "additionalProperties": False,
        }
    ),
]
# A role chatgate does not know (``ipython``, ``function``...): passed on, content optional.
OtherRole = Annotated[
    str, WithJsonSchema({"type": "string", "not": {"enum": ["system", "developer", "user", "assistant", "tool"]}})
]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


# ---- content parts ----------------------------------------------------------------------------------------


class URL(_Open):
    url: str


class TextPart(_Open):
    type: Literal["text"]
    text: str


class RefusalPart(_Open):
    type: Literal["refusal"]
    refusal: str


class ImagePart(_Open):
    type: Literal["image_url"]
    image_url: str | URL


class AudioURLPart(_Open):
    type: Literal["audio_url"]
    audio_url: str | URL


class VideoURLPart(_Open):
    type: Literal["video_url"]
    video_url: str | URL


class InputAudio(_Open):
    data: str
    format: str


class AudioPart(_Open):
    type: Literal["input_audio"]
    input_audio: InputAudio


class FileByData(_Open):
    file_data: str
    file_id: str | None = None
    filename: str | None = None


class FileById(_Open):
    file_id: str
    file_data: str | None = None
    filename: str | None = None


class FilePart(_Open):
    type: Literal["file"]
    file: FileByData | FileById


ContentPart = Annotated[
    TextPart | RefusalPart | ImagePart | AudioURLPart | VideoURLPart | AudioPart | FilePart,
    Field(discriminator="type"),
]
Content = str | list[ContentPart]


# ---- messages ---------------------------------------------------------------------------------------------


class CallFunction(_Open):
    name: NonEmpty
    arguments: str


class FunctionToolCall(_Open):
    id: str
    type: Literal["function"] | None = None
    function: CallFunction


class OtherToolCall(_Open):
    id: str
    type: Annotated[str, WithJsonSchema({"type": "string", "not": {"const": "function"}})]


ToolCall = FunctionToolCall | OtherToolCall


class InstructedMessage(_Open):
    """A system, developer or user message: its content is required."""

    role: Literal["system", "developer", "user"]
    content: Content
    name: str | None = None


class ToolMessage(_Open):
    role: Literal["tool"]
    content: Content
    tool_call_id: str
    name: str | None = None


class AssistantMessage(_Open):
    role: Literal["assistant"]
    content: Content
    tool_calls: list[ToolCall] | None = None
    name: str | None = None


class AssistantToolCalls(_Open):
    """An assistant turn that only called tools."""

    role: Literal["assistant"]
    content: None = None
    tool_calls: Annotated[list[ToolCall], Field(min_length=1)]
    name: str | None = None


class OtherMessage(_Open):
    role: OtherRole
    content: Content | None = None
    name: str | None = None


ChatMessage = InstructedMessage | ToolMessage | AssistantMessage | AssistantToolCalls | OtherMessage


# ---- tools, tool choice, response format --------------------------------------------------------------------


class FunctionSpec(_Open):
    name: NonEmpty
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionTool(_Open):
    type: Literal["function"] = "function"
    function: FunctionSpec


class CustomSpec(_Open):
    name: NonEmpty


class CustomTool(_Open):
    type: Literal["custom"]
    custom: CustomSpec


class Named(_Open):
    name: NonEmpty


class ChooseFunction(_Open):
    type: Literal["function"]
    function: Named


class ChooseCustom(_Open):
    type: Literal["custom"]
    custom: Named


class ChooseAllowed(_Open):
    type: Literal["allowed_tools"]
    allowed_tools: dict[str, Any]


ToolChoice = (
    Literal["none", "auto", "required"]
    | Annotated[ChooseFunction | ChooseCustom | ChooseAllowed, Field(discriminator="type")]
)


class PlainFormat(_Open):
    type: Literal["text", "json_object", "structural_tag"]


class JSONSchemaSpec(_Open):
    name: NonEmpty
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class JSONSchemaFormat(_Open):
    type: Literal["json_schema"]
    json_schema: JSONSchemaSpec


ResponseFormat = PlainFormat | JSONSchemaFormat


class StreamOptions(_Open):
    include_usage: bool | None = None


class Sampling(_Open):
    """OpenAI's generation settings, in the ranges it gives them (the chat API takes these too)."""

    max_tokens: Count | None = None
    max_completion_tokens: Count | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-MAX_INT, le=MAX_INT)
    logit_bias: LogitBias | None = None
    response_format: ResponseFormat | None = None
    user: EndUser | None = None


class ChatCompletionRequest(Sampling):
    """The OpenAI chat request. Every field, known or not, is passed to the upstream."""

    model: NonEmpty = Field(description="A served model, an alias, an assistant, or `local` for the bundled model.")
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    n: int | None = Field(None, ge=1, le=128)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    tools: list[FunctionTool | CustomTool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    modalities: list[str] | None = None
    reasoning_effort: str | None = None
    store: bool | None = None
    service_tier: str | None = None
    prediction: dict[str, Any] | None = None
    audio: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = Field(
        None, description="A trusted forwarder's end user and conversation; removed before the upstream."
    )


class EmbeddingRequest(_Open):
    model: NonEmpty
    input: str | Annotated[list[str], Field(min_length=1)] | TokenIds | Annotated[list[TokenIds], Field(min_length=1)]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Count | None = None
    user: EndUser | None = None
