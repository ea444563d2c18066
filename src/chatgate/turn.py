"""The pipeline's vocabulary: the services it calls, one request on its way (``Turn``), and the ``Door`` it
came in by. Plain data: nothing here does I/O or knows about HTTP."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from chatgate.cache import Entry, Scope
from chatgate.cache.answers import CachedAnswers
from chatgate.context import ContextFitter, Fitted
from chatgate.identity.keys import Principal
from chatgate.identity.model import Resolved
from chatgate.identity.resolve import IdentityResolver
from chatgate.limits.admit import Admission, Admitted
from chatgate.observe.metrics import Metrics
from chatgate.observe.requests import RequestRecorder
from chatgate.observe.tracing import Tracing
from chatgate.rag.assistants import Assistant
from chatgate.rag.ground import Grounder
from chatgate.sessions.connections import Connection, Connections
from chatgate.sessions.manager import Session, SessionManager
from chatgate.sessions.messages import Kept
from chatgate.sessions.personalise import Personaliser
from chatgate.sessions.tasks import TaskRecogniser
from chatgate.tokens.counter import TokenCounter
from chatgate.upstream.catalog import ModelCatalog
from chatgate.upstream.client import CallTrace, UpstreamClient

if TYPE_CHECKING:
    from chatgate.rag.service import Rag
    from chatgate.tools.loop import ToolLoop


@dataclass(slots=True)
class Services:
    """What the pipeline calls; built once in ``app.py`` and kept on the app."""

    upstream: UpstreamClient
    catalog: ModelCatalog
    resolver: IdentityResolver
    sessions: SessionManager
    connections: Connections
    counter: TokenCounter
    admission: Admission
    fitter: ContextFitter
    metrics: Metrics
    recorder: RequestRecorder  # analytics (when on), upstream metrics, spans
    answers: CachedAnswers | None = None  # None: the response cache is off
    research_models: frozenset[str] = frozenset()
    personaliser: Personaliser | None = None
    tasks: TaskRecogniser | None = None  # front ends' background tasks (sessions/tasks.py)
    rag: Rag | None = None  # collections, search, assistants (rag/service.py)
    grounder: Grounder | None = None  # the ground step (rag/ground.py), with ``rag``
    tracing: Tracing | None = None  # None: tracing off, no spans
    tool_loop: ToolLoop | None = None  # assistants' server tools (``tools/loop.py``)


class Chunks(Protocol):
    """A stream's bytes for the client, closed whatever happens (``api/asgi.send_stream`` reads it)."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...
    async def aclose(self) -> None: ...


Answer = bytes | Chunks  # a whole body, or a stream


@dataclass(slots=True)
class Framing:
    """How a door frames a stream: whether the client gets the usage chunk, how a chunk is re-encoded
    (``transform(data, text) -> bytes``; None: passed on as it came) and what it gets last."""

    include_usage: bool
    transform: Any = None  # Callable[[bytes, str], bytes] | None
    parse: bool = False  # the door needs every chunk's text as it arrives (``transform`` reads it)


@dataclass(slots=True)
class ToolStep:
    """A server tool the model called during the tool loop (``tools/loop.py``): what a door shows of it while the
    answer streams (``Door.tool_event``), before it runs (``done`` False) and once it has (``done`` True)."""

    step: int  # the loop's step (1: the model's first answer)
    call_id: str
    name: str
    arguments: dict[str, Any]
    done: bool = False
    error: str | None = None  # what the tool said went wrong, when it did
    sources: list[dict[str, Any]] = field(default_factory=list)  # what a search found, numbered as the model saw


class Door(Protocol):
    """Where a request came in: everything about it that differs between front ends, and nothing else.

    ``name`` is the conversation's source (``openai``: the identity may say ``openwebui``);
    ``stored_history``: the history is the stored conversation (not the request), so an answer completes
    only once its turn is committed.
    """

    name: str
    stored_history: bool

    async def open(self, services: Services, turn: Turn) -> Session: ...
    def messages(self, services: Services, turn: Turn) -> list[dict[str, Any]]: ...
    def kept(self, turn: Turn) -> tuple[list[Kept], int]: ...
    def answer(self, turn: Turn, body: bytes) -> bytes: ...
    def framing(self, turn: Turn) -> Framing: ...
    def tail(self, turn: Turn) -> bytes: ...
    def tool_event(self, turn: Turn, step: ToolStep) -> bytes: ...
    def replay(self, turn: Turn, entry: Entry) -> Answer: ...


@dataclass(slots=True)
class Turn:
    """One request on its way through the pipeline: what came in, and what each step made of it."""

    payload: dict[str, Any]  # the OpenAI request as it will be sent on (the steps rewrite it)
    raw: bytes | None  # the client's exact bytes, sent on as they are while the payload is unchanged
    principal: Principal
    headers: Mapping[str, str] = field(default_factory=dict)  # what identity reads (forwarded identity)
    client_ip: str | None = None
    forwarded_for: str | None = None
    route: str = ""  # the path it came in by, for route limits
    no_cache: bool = False  # the client opted out of the response cache
    message: Any = None  # a door's new user message (the chat API's), when the history is stored
    session_id: str | None = None  # the stored conversation a request continues, when it names one
    started: float = field(default_factory=time.perf_counter)
    # identify
    resolved: Resolved | None = None
    assistant: Assistant | None = None  # the model asked for was this assistant
    kind: str | None = None  # the request's kind once decided (rag, research, ...)
    task: str | None = None  # a front end's background task (a title, tags...): never a conversation turn
    client_messages: list[dict[str, Any]] = field(default_factory=list)  # the request's own messages
    # session
    session: Session | None = None
    connection: Connection | None = None
    # admit, fit, ground, cache
    admitted: Admitted | None = None
    counted: tuple[list[dict[str, Any]], int] | None = None  # messages admission counted, and their tokens
    fitted: Fitted | None = None
    scope: Scope | None = None  # what a grounded answer may be built from (part of the cache key)
    sources: list[dict[str, Any]] | None = None  # the citations of a grounded request
    warnings: list[dict[str, Any]] | None = None  # what the answer must say it could not do (rag/ground.py)
    cache_key: str | None = None
    cache_status: str | None = None  # "HIT" | "MISS" once the cache was consulted
    # call, account
    trace: CallTrace = field(default_factory=CallTrace)
    usage: dict[str, Any] | None = None
    usage_counted: bool = False  # the usage is the gateway's (counted here, or a tool loop's sum): the door sends it
    usage_estimated: bool = False  # (part of) the usage was counted here with the tokenizer: the upstream sent none
    server_tools: dict[str, Any] = field(default_factory=dict)  # the assistant's server tools (``tools/``), by name
    tool_calls: int = 0  # server tool calls the tool loop ran
    tool_steps: int = 0  # the tool loop's model answers
    called_tool: bool = False  # the answer called a tool
    reply: Any = None  # the assistant's reply, as stored
    reply_head: dict[str, Any] = field(default_factory=dict)  # a streamed reply's id, model and created
    streaming: bool = False  # the answer is a stream: it is accounted when it ends
    stream_failed: bool = False  # the upstream broke off a stream after it had begun
    stopped: bool = False  # the gateway ended the stream: past its reservation with a token limit spent
    completed: bool = False  # the client got (or is getting) a whole answer
    kept_turn: bool = False  # the turn's messages are in the conversation
    accounted: bool = False
    error: BaseException | None = None

    @property
    def stream(self) -> bool:
        return self.payload.get("stream") is True

    def rewrite(self, payload: dict[str, Any]) -> None:
        """The payload changed: the client's bytes can no longer be sent on as they are."""
        self.payload, self.raw = payload, None

    def record_usage(self, usage: dict[str, Any]) -> None:
        self.usage = usage
