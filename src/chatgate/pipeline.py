"""The request path: every chat request, whatever door it came in by, goes through these steps.

1. identify -- who is calling: the API key or JWT (checked by ``api/middleware.Authenticate``),
               then signed identity, trusted headers, ``metadata``, the ``user`` field.
2. admit    -- rate limits and budgets: one request and the estimated tokens (prompt as counted
               + the completion budget) charged to every limit in one atomic step, or a 429.
3. session  -- the conversation's session (get or create; ephemeral without a key), and the
               request counted in flight for its user.
4. fit      -- the personalised system prompt, when configured; then prompt + completion budget
               within the model's window: rejected, truncated or summarised into the
               conversation's running brief (``context/``).
5. ground   -- a request for an assistant (a model id with a base model, a system prompt and
               collections; its prompt was put in before admission) gets its documents: per its
               policy (every turn, once per conversation, off) the collections the caller may read
               are searched with the last user message (``rag/``), and the best chunks go into the
               system message as numbered sources, as many as the window leaves room for.
6. cache    -- a request answered before (same normalised request, not sampling, not bypassed) is
               answered from the response cache: no upstream call, no tokens charged. Complete
               answers are stored, streamed ones too (rebuilt as the non-streaming body).
7. call     -- the upstream chosen by model routing, with retries, fallbacks and breakers;
               streams are relayed as they arrive.
8. account  -- usage and request kind on the session, the new messages and the reply queued
               for the store (write-behind), the in-flight count released, and the token
               reservation reconciled with the real usage (refunded when the call failed or the
               client left).

A grounded answer carries its sources (``Turn.sources``): the doors add them to their answers, and
the cache stores them with the answer. Nothing here knows about HTTP beyond the route a request came
in by (route limits are per path).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from chatgate.cache import Entry, ResponseCache, Scope, bypass, cache_key, replay_sse
from chatgate.context import ContextFitter, Fitted, requested_max_tokens
from chatgate.context.fit import SUMMARY_FAILED
from chatgate.errors import ContextLengthExceeded, NotFound
from chatgate.identity.keys import Principal
from chatgate.identity.model import Resolved
from chatgate.identity.resolve import IdentityResolver
from chatgate.limits.admit import Admission, Admitted, completion_budget, used_tokens
from chatgate.observe import metrics
from chatgate.observe.tracing import Tracing, step
from chatgate.rag.assistants import Assistant
from chatgate.rag.ground import build_context, query_text, source_json, sources_event, with_sources, with_system
from chatgate.sessions.connections import Connection, Connections
from chatgate.sessions.manager import Session, SessionManager
from chatgate.sessions.messages import compact, dedupe_key, new_messages, request_kind
from chatgate.sessions.personalise import Personaliser
from chatgate.settings import CacheSettings, GroundingSettings, StoreSettings
from chatgate.tokens.counter import TokenCounter
from chatgate.upstream.answer import parse_answer, reply_content, usage_of
from chatgate.upstream.catalog import ModelCatalog
from chatgate.upstream.client import CallTrace, Opened, UpstreamClient
from chatgate.upstream.sse import DONE_EVENT, encode_data
from chatgate.upstream.stream import Relay, ReplyBuffer, ask_for_usage

if TYPE_CHECKING:
    from chatgate.rag.service import Rag

log = logging.getLogger("chatgate.rag")


@dataclass(slots=True)
class Services:
    """What the pipeline calls; built once in ``app.py`` and kept on the app."""

    upstream: UpstreamClient
    catalog: ModelCatalog
    resolver: IdentityResolver
    sessions: SessionManager
    connections: Connections
    store_settings: StoreSettings
    counter: TokenCounter
    admission: Admission
    fitter: ContextFitter
    cache: ResponseCache | None = None
    cache_settings: CacheSettings | None = None
    record_requests: bool = False  # one analytics row per request
    research_models: frozenset[str] = frozenset()
    personaliser: Personaliser | None = None
    rag: Rag | None = None  # collections, search, assistants (rag/service.py)
    grounding: GroundingSettings = field(default_factory=GroundingSettings)
    tracing: Tracing | None = None  # None: tracing off, no spans


@dataclass(slots=True)
class Turn:
    """One request on its way through the pipeline."""

    payload: dict[str, Any]
    raw: bytes | None  # the exact request bytes, sent on as they are while the payload is unchanged
    principal: Principal
    headers: Mapping[str, str] = field(default_factory=dict)
    client_ip: str | None = None
    source: str | None = None  # the door: None lets identity decide (openai / openwebui)
    route: str = ""  # the path it came in by, for route limits
    trace: CallTrace = field(default_factory=CallTrace)
    usage: dict[str, Any] | None = None
    resolved: Resolved | None = None
    session: Session | None = None
    admitted: Admitted | None = None
    fitted: Fitted | None = None
    counted: tuple[list[dict[str, Any]], int] | None = None  # messages admission counted, and their tokens
    cache_status: str | None = None  # "HIT" | "MISS" once the cache was consulted
    stream_failed: bool = False  # the upstream broke off a stream after it had begun
    assistant: Assistant | None = None  # the model asked for was this assistant
    scope: Scope | None = None  # what a grounded answer may be built from (part of the cache key)
    sources: list[dict[str, Any]] | None = None  # the citations of a grounded request
    kind: str | None = None  # the request's kind when the pipeline decided it (rag, research)

    @property
    def stream(self) -> bool:
        return self.payload.get("stream") is True

    def record_usage(self, usage: dict[str, Any]) -> None:
        self.usage = usage


def identify(services: Services, turn: Turn) -> Resolved:
    with step(services.tracing, "identify"):
        had_metadata = "metadata" in turn.payload
        resolved = services.resolver.resolve(
            turn.principal, turn.headers, turn.payload, turn.client_ip, turn.headers.get("x-forwarded-for")
        )
        if had_metadata:
            turn.raw = None  # metadata was taken out: the upstream gets the payload re-serialised
        turn.resolved = resolved
        return resolved


async def admit(services: Services, turn: Turn, model: str, count_prompt: Callable[[], int], completion: int) -> None:
    """Charge the request to its limits (429 when one refuses); the charge is settled by ``settle``."""
    with step(services.tracing, "admit"):
        assert turn.resolved is not None
        admission = services.admission
        limits = admission.limits(turn.principal, turn.resolved, turn.client_ip, turn.route, model)
        if limits:
            turn.admitted = await admission.admit(limits, count_prompt(), completion)


async def settle(services: Services, turn: Turn, completed: bool, reply: Any = None) -> None:
    """Reconcile the reservation with the usage (or a count of the reply without one); refund a failed call."""
    admitted = turn.admitted
    if admitted is None or admitted.settled:
        return
    with step(services.tracing, "settle"):
        tokens = 0 if turn.cache_status == "HIT" else used_tokens(turn.usage)  # a hit spent no tokens
        if tokens is None and completed:  # the upstream sent no usage: count the reply, or keep the estimate
            prompt = turn.fitted.prompt_tokens if turn.fitted is not None else admitted.prompt_tokens
            counted = services.counter.count_reply(reply, turn.payload.get("model"))
            tokens = prompt + counted if counted is not None else admitted.reservation.costs.get("tokens")
        summarised = (turn.fitted.summary_usage or {}).get("total_tokens", 0) if turn.fitted is not None else 0
        if summarised:  # the summariser's tokens were spent for this user, whatever became of the call
            tokens = (tokens or 0) + summarised
        await services.admission.settle(admitted, tokens)


def _tools(payload: Mapping[str, Any]) -> Any:
    return payload.get("tools") or payload.get("functions")


def _chat_admission(services: Services, turn: Turn, messages: list[dict[str, Any]]) -> tuple[Callable[[], int], int]:
    """(prompt counter, completion budget) for ``admit``; the count is kept for the fit step."""
    payload = turn.payload

    def count() -> int:
        n = services.fitter.prompt_tokens(messages, payload["model"], _tools(payload))
        turn.counted = (messages, n)
        return n

    return count, completion_budget(payload, services.admission.settings.default_max_tokens_reservation)


async def open_session(services: Services, turn: Turn, key: str | None) -> tuple[Session, Connection]:
    with step(services.tracing, "session"):
        assert turn.resolved is not None
        identity = turn.resolved.identity
        session = await services.sessions.get_or_create(identity, key, turn.source or turn.resolved.channel)
        turn.session = session
        conn = services.connections.enter(
            identity.user_id, None if session.ephemeral else session.id, turn.resolved.message_id
        )
        return session, conn


def personalise(services: Services, turn: Turn, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if services.personaliser is None or turn.resolved is None:
        return messages
    identity = turn.resolved.identity
    return services.personaliser.apply(messages, services.personaliser.prompt(identity.variables, identity.email))


async def fit(services: Services, turn: Turn, messages: list[dict[str, Any]], session: Session | None) -> None:
    """The payload's messages (already personalised) fitted to the model's window."""
    with step(services.tracing, "fit"):
        assert turn.resolved is not None
        payload, counted = turn.payload, turn.counted
        try:
            fitted = await services.fitter.fit(
                messages,
                model=payload["model"],
                max_tokens=requested_max_tokens(payload),
                session=session,
                model_info=turn.resolved.model_info,
                tools=_tools(payload),
                prompt_tokens=counted[1] if counted is not None and counted[0] is messages else None,
            )
        except ContextLengthExceeded:
            metrics.CONTEXT_ACTIONS.inc(("rejected",))
            raise
    if fitted.action is not None:
        metrics.CONTEXT_ACTIONS.inc((fitted.action,))
    if fitted.summary_usage is not None:
        outcome = "failed" if fitted.action == SUMMARY_FAILED else "ok"
        metrics.SUMMARIZATIONS.inc((outcome,), fitted.summary_usage.get("calls", 1))
    turn.fitted = fitted
    if fitted.messages is not payload["messages"]:
        turn.payload = {**payload, "messages": fitted.messages}
        turn.raw = None


async def assistant(services: Services, turn: Turn) -> None:
    """A request for an assistant goes to its base model, with its system prompt first."""
    if services.rag is None:
        return
    found = await services.rag.assistants.get(turn.payload["model"])
    if found is None:
        return
    turn.assistant = found
    turn.kind = "research" if found.research else None
    turn.payload = {
        **turn.payload,
        "model": found.model,
        "messages": with_system(turn.payload["messages"], found.system_prompt),
    }
    turn.raw = None


async def ground(services: Services, turn: Turn, session: Session | None) -> None:
    """The assistant's documents into the request, per its retrieval policy, within the window."""
    found, rag, resolved = turn.assistant, services.rag, turn.resolved
    if found is None or rag is None or resolved is None:
        return
    user_id = resolved.identity.user_id
    collections = await rag.for_assistant(found, user_id) if found.collections else []
    private = any(c.visibility == "private" for c in collections)
    turn.scope = Scope(found.name, tuple(c.id for c in collections), user_id if private else None)
    if not collections or found.retrieval == "off":
        return
    if found.retrieval == "once_per_conversation" and session is not None and session.rag_applied:
        return
    payload = turn.payload
    query = query_text(payload["messages"], services.grounding.condense_turns)
    if not query:
        return
    with step(services.tracing, "ground"):
        try:
            hits, _ = await rag.search(collections, query, found.top_k, found.mode)
        except Exception as exc:  # the answer goes on without documents rather than failing
            log.warning("grounding search failed", extra={"assistant": found.name, "error": str(exc)})
            return
    budget = services.grounding.max_context_tokens
    fitted = turn.fitted
    if fitted is not None and fitted.window is not None:
        budget = min(budget, fitted.window - fitted.max_tokens - fitted.prompt_tokens)
    served = services.fitter.windows.served(payload["model"])
    context, used = build_context(
        hits, services.grounding.template, lambda text: services.counter.count(text, served), budget
    )
    if context is None:
        return
    turn.payload = {**payload, "messages": with_system(payload["messages"], context, before=False)}
    turn.raw = None
    turn.sources = [source_json(i + 1, hit) for i, hit in enumerate(used)]
    if turn.kind is None:
        turn.kind = "rag"


def kind_of(services: Services, turn: Turn) -> str:
    """The request's kind for analytics: as the pipeline decided it (rag, research), else by its payload."""
    if turn.kind is None:  # decided once the request is final (the session's count and analytics both ask)
        features = turn.resolved.features if turn.resolved is not None else {}
        turn.kind = request_kind(turn.payload, features, services.research_models)
    return turn.kind


class Replay:
    """A cached answer replayed as SSE events (``send_stream`` reads it like a ``Relay``)."""

    def __init__(self, events: list[bytes]) -> None:
        self.events = events

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for event in self.events:
            yield event

    async def aclose(self) -> None:
        return None


def cache_key_for(services: Services, turn: Turn, use_cache: bool = True) -> str | None:
    """The cache key of the request as it will be sent, or None when the cache is off, bypassed
    (``use_cache: false``, ``Cache-Control: no-cache``) or the request samples. ``use_cache`` is ours:
    it never goes upstream."""
    payload = turn.payload
    if "use_cache" in payload:
        turn.payload = {k: v for k, v in payload.items() if k != "use_cache"}
        turn.raw = None
    if services.cache is None or services.cache_settings is None:
        return None
    turn.cache_status = "MISS"  # with the cache on, every answer says HIT or MISS
    if not use_cache or bypass(payload, turn.headers):
        return None
    return cache_key(turn.payload, scope=turn.scope, allow_sampling=services.cache_settings.allow_sampling)


async def cached(services: Services, turn: Turn, key: str | None) -> Entry | None:
    """The cached answer for ``key`` (and the request marked HIT or MISS)."""
    if key is None or services.cache is None:
        return None
    with step(services.tracing, "cache"):
        entry = await services.cache.get(key)
        turn.cache_status = "MISS" if entry is None else "HIT"
        metrics.CACHE_LOOKUPS.inc(("miss" if entry is None else "hit",))
        return entry


async def remember(services: Services, key: str | None, body: bytes | None) -> None:
    if (
        key is not None
        and body is not None
        and services.cache is not None
        and (entry := Entry.from_response(body)) is not None
    ):
        await services.cache.set(key, entry)


async def chat(services: Services, turn: Turn) -> bytes | Relay | Replay:
    """An OpenAI chat completion (client-side history): JSON body, or a relay of SSE bytes."""
    resolved = identify(services, turn)
    client_messages: list[dict[str, Any]] = turn.payload["messages"]
    await assistant(services, turn)  # an assistant's name: its base model, its system prompt first
    model: str = turn.payload["model"]
    await services.catalog.ensure_known(model)
    messages: list[dict[str, Any]] = turn.payload["messages"]
    await admit(services, turn, model, *_chat_admission(services, turn, messages))
    handed = False  # once a stream is returned, its end settles the charge and releases the connection
    conn: Connection | None = None
    try:
        session, conn = await open_session(services, turn, resolved.conversation_key)
        personalised = personalise(services, turn, messages)
        if personalised is not messages:
            turn.payload = {**turn.payload, "messages": personalised}
            turn.raw = None
        await fit(services, turn, personalised, session)
        await ground(services, turn, session)
        key = cache_key_for(services, turn)
        entry = await cached(services, turn, key)
        if entry is not None:
            data = parse_answer(entry.body)
            account(services, turn, client_messages, reply_content(data))
            await settle(services, turn, True)
            if not turn.stream:
                return entry.body  # a grounded answer was stored with its sources
            assert services.cache_settings is not None
            options = turn.payload.get("stream_options")
            events = replay_sse(
                entry,
                include_usage=isinstance(options, dict) and options.get("include_usage") is True,
                chunk_chars=services.cache_settings.stream_chunk_chars,
            )
            if isinstance(data.get("sources"), list) and data["sources"]:
                events.insert(-1, sources_event(data, data["sources"]))  # before [DONE]
            return Replay(events)
        if turn.stream:
            payload, include_usage = ask_for_usage(turn.payload)
            raw = turn.raw if payload is turn.payload else None
            opened = await open_stream(services, turn, payload, raw)
            reply = ReplyBuffer()
            left = conn

            async def end(completed: bool) -> None:
                turn.trace.first_token_at, turn.stream_failed = relay.first_at, relay.failed
                try:
                    if completed:
                        account(services, turn, client_messages, reply.content())
                        if key is not None:
                            await remember(services, key, with_sources(reply.completion(turn.usage), sources))
                finally:
                    services.connections.leave(left)
                    await settle(services, turn, completed, None if keep is None else keep.content())

            sources = turn.sources
            # chunks are parsed only for a reply that is stored (in the conversation or the cache) or cited
            keep = None if session.ephemeral and key is None and not sources else reply
            relay = Relay(
                opened,
                include_usage=include_usage,
                on_usage=turn.record_usage,
                reply=keep,
                tail=(lambda: sources_event(reply.head, sources)) if sources else None,
                on_end=end,
            )
            handed = True
            return relay
        body = await call(services, turn, "/chat/completions", turn.payload, turn.raw)
        answer = parse_answer(body)
        turn.usage = usage_of(answer)
        content = reply_content(answer)
        account(services, turn, client_messages, content)
        await settle(services, turn, True, content)
        body = with_sources(body, turn.sources) or body
        await remember(services, key, body)
        return body
    finally:
        if not handed:
            if conn is not None:
                services.connections.leave(conn)
            await settle(services, turn, False)  # a no-op once settled: here it refunds a failed call


async def call(services: Services, turn: Turn, path: str, payload: dict[str, Any], raw: bytes | None) -> bytes:
    """The upstream's whole answer."""
    with step(services.tracing, "call"):
        return await services.upstream.call(path, payload, raw, turn.trace)


async def open_stream(services: Services, turn: Turn, payload: dict[str, Any], raw: bytes | None) -> Opened:
    """An upstream stream, once it has answered (the upstream's span lasts until the stream has ended)."""
    with step(services.tracing, "call"):
        return await services.upstream.open("/chat/completions", payload, raw, turn.trace)


def account(services: Services, turn: Turn, client_messages: list[dict[str, Any]], reply: Any) -> None:
    """Counts on the session; new client messages and the reply queued for the store."""
    with step(services.tracing, "account"):
        session, resolved = turn.session, turn.resolved
        assert session is not None and resolved is not None
        _count(services, turn)
        if session.ephemeral:
            return
        for position, msg in new_messages(client_messages, first=session.is_first_message):
            mid = resolved.message_id if position == len(client_messages) - 1 else None
            role = str(msg.get("role"))
            services.sessions.add_message(
                session,
                role,
                _stored(services, msg.get("content")),
                dedupe_key(position, role, msg.get("content"), mid),
                client_message_id=mid,
            )
        if reply is not None:
            _store_reply(services, turn, reply, len(client_messages))


def _count(services: Services, turn: Turn) -> None:
    """The request's kind and tokens on its session."""
    assert turn.session is not None and turn.resolved is not None
    usage = turn.usage or {}
    services.sessions.record(
        turn.session,
        kind_of(services, turn),
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
        rag_applied=bool(turn.sources),
    )


def _stored(services: Services, content: Any) -> Any:
    return compact(content, services.store_settings.keep_inline_bytes, services.store_settings.inline_bytes_limit)


def _store_reply(services: Services, turn: Turn, reply: Any, position: int) -> None:
    assert turn.session is not None
    services.sessions.add_message(
        turn.session,
        "assistant",
        reply,
        dedupe_key(position, "assistant", reply),
        tokens=(turn.usage or {}).get("completion_tokens"),
        model=turn.trace.model,
    )


async def embeddings(services: Services, turn: Turn) -> bytes:
    identify(services, turn)
    model: str = turn.payload["model"]
    await services.catalog.ensure_known(model)
    await admit(services, turn, model, lambda: services.counter.count_input(turn.payload.get("input"), model), 0)
    try:
        body = await call(services, turn, "/embeddings", turn.payload, turn.raw)
        turn.usage = usage_of(parse_answer(body))
        await settle(services, turn, True)
        return body
    finally:
        await settle(services, turn, False)


# ---- the chat API: server-side history ------------------------------------------------------------


@dataclass(slots=True)
class ChatAPIRequest:
    message: Any  # a string, or a list of content parts
    session_id: str | None
    model: str
    stream: bool
    use_cache: bool = True


async def chat_api(services: Services, turn: Turn, req: ChatAPIRequest) -> dict[str, Any] | Relay | Replay:
    """``POST /api/v1/chat``: the history comes from the session; the answer is plain JSON or SSE events."""
    resolved = identify(services, turn)
    identity = resolved.identity
    turn.payload = {"model": req.model, "messages": []}
    await assistant(services, turn)  # an assistant's name: its base model and system prompt
    model: str = turn.payload["model"]
    await services.catalog.ensure_known(model)
    session: Session | None = None
    if req.session_id is not None:
        session = await services.sessions.find_for_user(identity.user_id, req.session_id)
        if session is None:
            raise NotFound("No such session.", details={"session_id": req.session_id})
        services.sessions.saw(identity)
    history = services.sessions.history(session) if session is not None else []
    new = {"role": "user", "content": req.message}
    prompt = turn.assistant.system_prompt if turn.assistant is not None else None
    messages = personalise(services, turn, with_system([*history, new], prompt))
    turn.payload = {"model": model, "messages": messages, "stream": req.stream}
    turn.raw = None
    await admit(services, turn, model, *_chat_admission(services, turn, messages))  # before a session is made
    if session is None:
        try:
            session = await services.sessions.get_or_create(identity, "api-" + uuid.uuid4().hex, "chat-api")
        except BaseException:
            await settle(services, turn, False)
            raise
    turn.session = session
    conn: Connection | None = None
    handed = False
    try:
        conn = services.connections.enter(identity.user_id, session.id, resolved.message_id)
        await fit(services, turn, messages, session)
        await ground(services, turn, session)
        position = session.message_count
        user_key = dedupe_key(position, "user", req.message, resolved.message_id)

        def finish(reply: str, sources: list[dict[str, Any]] | None = None) -> dict[str, Any]:
            with step(services.tracing, "account"):
                _count(services, turn)
                services.sessions.add_message(
                    session, "user", _stored(services, req.message), user_key, client_message_id=resolved.message_id
                )
                _store_reply(services, turn, reply, position + 1)
            return {
                "response": reply,
                "session_id": session.id,
                "cached": turn.cache_status == "HIT",
                "sources": sources if sources is not None else turn.sources or [],
                "usage": turn.usage,
            }

        key = cache_key_for(services, turn, req.use_cache)
        entry = await cached(services, turn, key)
        if entry is not None:
            await settle(services, turn, True)
            data = parse_answer(entry.body)
            content = reply_content(data)
            stored = data.get("sources")  # a grounded answer was stored with its sources
            answer = finish(content if isinstance(content, str) else "", stored if isinstance(stored, list) else None)
            if not req.stream:
                return answer
            events = [{"type": "delta", "content": answer["response"]}, {"type": "done", **answer}]
            return Replay([*(encode_data(orjson.dumps(e)) for e in events), DONE_EVENT])

        if not req.stream:
            body = await call(services, turn, "/chat/completions", turn.payload, None)
            answer = parse_answer(body)
            turn.usage = usage_of(answer)
            content = reply_content(answer)
            await settle(services, turn, True, content)
            await remember(services, key, with_sources(body, turn.sources))
            return finish(content if isinstance(content, str) else "")
        payload, _ = ask_for_usage(turn.payload)
        opened = await open_stream(services, turn, payload, None)
        reply = ReplyBuffer()
        left = conn

        async def end(completed: bool) -> None:
            turn.trace.first_token_at, turn.stream_failed = relay.first_at, relay.failed
            services.connections.leave(left)
            await settle(services, turn, completed, reply.text)
            if completed:
                await remember(services, key, with_sources(reply.completion(turn.usage), turn.sources))

        def tail() -> bytes:  # the stream completed: store the turn, and say so in a last event
            return encode_data(orjson.dumps({"type": "done", **finish(reply.text)}))

        relay = Relay(
            opened,
            include_usage=False,
            on_usage=turn.record_usage,
            reply=reply,
            transform=lambda _data, text: (
                encode_data(orjson.dumps({"type": "delta", "content": text})) if text else b""
            ),
            tail=tail,
            on_end=end,
        )
        handed = True
        return relay
    finally:
        if not handed:
            if conn is not None:
                services.connections.leave(conn)
            await settle(services, turn, False)
