"""The request path. Every chat request, whatever door it came in by, runs these steps once, in this order;
each step's body lives in its own package, and ``run``'s one ``finally`` accounts for whatever happened.

1. identify -- who is calling (the key or JWT, checked by ``api/middleware.Authenticate``; then signed
               identity, trusted headers, ``metadata``, the ``user`` field), the conversation key, and what
               is asked for: a served model, or an assistant (its base model, prompt and collections).
2. session  -- the conversation, found or made by the door (ephemeral without a key); the messages the
               model is asked (the request's, or the stored history and the new message), with the
               assistant's prompt and the personalised one first; the request counted in flight.
3. admit    -- rate limits and budgets: one request and the estimated tokens (the prompt as counted + the
               completion budget) charged to every limit in one atomic step, or a 429.
4. fit      -- prompt + completion budget within the model's window: as it is, rejected, truncated or
               summarised into the conversation's running brief (``context/``).
5. ground   -- an assistant's documents, per its retrieval policy: the collections the caller may read
               searched with the last user message, the best chunks into the system message as
               numbered sources, as many as the window leaves room for (``rag/ground.py``).
6. cache    -- the same normalised request answered before (not sampling, not opted out) is answered
               from the response cache, replayed as the door frames answers (``cache/answers.py``).
7. call     -- the upstream chosen by model routing, with retries, fallbacks and breakers; a stream is
               relayed as it arrives and accounted when it ends (``upstream/``).
8. account  -- the turn kept in its conversation (committed before the answer completes where the
               conversation is the history), the in-flight count released, the token reservation
               settled with the real usage (refunded when the call failed or the client left), and
               the request recorded (analytics, metrics, its span).

Nothing here knows about HTTP: a ``Door`` (``api/doors.py``) says how its requests differ.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chatgate.cache import Entry
from chatgate.context import requested_max_tokens
from chatgate.errors import ChatgateError
from chatgate.limits.admit import completion_budget, spent
from chatgate.observe.tracing import step
from chatgate.rag.ground import with_sources, with_system
from chatgate.sessions.messages import calls_tool, request_kind
from chatgate.tools.loop import ToolRun, ToolStream
from chatgate.turn import Answer, Chunks, Door, Services, Turn
from chatgate.upstream.answer import parse_answer, reply_content, usage_of
from chatgate.upstream.sse import error_event
from chatgate.upstream.stream import Relay, ReplyBuffer, ask_for_usage


async def run(services: Services, door: Door, turn: Turn) -> Answer:
    """One chat request, start to finish (a stream finishes when it ends)."""
    try:
        await identify(services, turn)
        await session(services, door, turn)
        await admit(services, turn)
        await fit(services, turn)
        await ground(services, turn)
        if (entry := await cached(services, turn)) is not None:
            return door.replay(turn, entry)  # a stream is replayed, and accounted at once
        return await call(services, door, turn)
    except BaseException as exc:
        turn.error = exc
        raise
    finally:
        if not turn.streaming:
            await account(services, door, turn)


async def embed(services: Services, turn: Turn) -> bytes:
    """An embeddings request: identify, admit, call, account."""
    try:
        await identify(services, turn, chat=False)
        model: str = turn.payload["model"]
        await admit(services, turn, services.counter.count_input(turn.payload.get("input"), model), 0)
        with step(services.tracing, "call"):
            body = await services.upstream.call("/embeddings", turn.payload, turn.raw, turn.trace)
        turn.usage, turn.completed = usage_of(parse_answer(body)), True
        return body
    except BaseException as exc:
        turn.error = exc
        raise
    finally:
        await account(services, None, turn)


# ---- the steps --------------------------------------------------------------------------------------------


async def identify(services: Services, turn: Turn, chat: bool = True) -> None:
    """Who is calling and for which conversation; for a chat request, what it is: an assistant's, a task."""
    with step(services.tracing, "identify"):
        metadata = turn.payload.get("metadata")
        turn.resolved = services.resolver.resolve(
            turn.principal, turn.headers, turn.payload, turn.client_ip, turn.forwarded_for
        )
        if metadata is not None:
            turn.rewrite(turn.payload)  # metadata was taken out: the upstream gets the payload re-serialised
        turn.client_messages = turn.payload.get("messages") or []
        if chat and services.tasks is not None:
            asked = turn.client_messages or [{"role": "user", "content": turn.message}]
            trusted = isinstance(metadata, dict) and "trusted_forwarder" in turn.principal.scopes
            turn.task = services.tasks.recognise(asked, turn.headers, metadata if trusted else None)
        found = await services.rag.assistants.get(turn.payload["model"]) if chat and services.rag else None
        if found is not None:  # an assistant's name: its base model
            turn.assistant, turn.kind = found, "research" if found.research else None
            turn.rewrite({**turn.payload, "model": found.model})
        if turn.task is not None:
            turn.kind = "task"
            if services.tasks is not None and services.tasks.model:  # tasks may go to a cheaper model
                turn.rewrite({**turn.payload, "model": services.tasks.model})
        await services.catalog.ensure_known(turn.payload["model"])


async def session(services: Services, door: Door, turn: Turn) -> None:
    with step(services.tracing, "session"):
        assert turn.resolved is not None
        conversation = turn.session = await door.open(services, turn)
        messages = door.messages(services, turn)
        if turn.assistant is not None and turn.task is None:
            messages = with_system(messages, turn.assistant.system_prompt)
        if services.personaliser is not None and turn.task is None:
            identity = turn.resolved.identity
            messages = services.personaliser.apply(
                messages, services.personaliser.prompt(identity.variables, identity.email)
            )
        if messages is not turn.payload.get("messages"):
            turn.rewrite({**turn.payload, "messages": messages})
        if services.tool_loop is not None and turn.task is None and (tools := services.tool_loop.offer(turn)):
            turn.rewrite({**turn.payload, "tools": tools})  # the assistant's server tools, after the client's
        turn.connection = services.connections.enter(
            turn.resolved.identity.user_id,
            None if conversation.ephemeral else conversation.id,
            turn.resolved.message_id,
        )


async def admit(services: Services, turn: Turn, prompt: int | None = None, completion: int | None = None) -> None:
    """Charge the request to its limits (429 when one refuses); ``account`` settles the charge."""
    with step(services.tracing, "admit"):
        assert turn.resolved is not None
        payload = turn.payload
        admission = services.admission
        limits = admission.limits(turn.principal, turn.resolved, turn.client_ip, turn.route, payload["model"])
        if not limits:
            return
        if prompt is None:  # counted only when a limit needs it; the fit step reuses the count
            messages = payload["messages"]
            prompt = services.fitter.prompt_tokens(messages, payload["model"], _tools(payload))
            turn.counted = (messages, prompt)
        if completion is None:
            completion = completion_budget(payload, admission.settings.default_max_tokens_reservation)
        turn.admitted = await admission.admit(limits, prompt, completion)


async def fit(services: Services, turn: Turn) -> None:
    with step(services.tracing, "fit"):
        assert turn.resolved is not None
        payload, counted = turn.payload, turn.counted
        messages = payload["messages"]
        fitted = turn.fitted = await services.fitter.fit(
            messages,
            model=payload["model"],
            max_tokens=requested_max_tokens(payload),
            session=turn.session,
            model_info=turn.resolved.model_info,
            tools=_tools(payload),
            prompt_tokens=counted[1] if counted is not None and counted[0] is messages else None,
        )
        if fitted.messages is not messages:
            turn.rewrite({**payload, "messages": fitted.messages})


async def ground(services: Services, turn: Turn) -> None:
    grounder, resolved = services.grounder, turn.resolved
    if turn.assistant is None or grounder is None or resolved is None or turn.task is not None:
        return
    with step(services.tracing, "ground"):
        session = turn.session
        grounded = await grounder.ground(
            turn.assistant,
            resolved.identity.user_id,
            turn.payload["messages"],
            turn.fitted,
            applied=session is not None and session.rag_applied,
            versioned=services.answers is not None,
        )
    turn.scope, turn.warnings = grounded.scope, grounded.warnings
    if grounded.messages is not None:
        turn.rewrite({**turn.payload, "messages": grounded.messages})
        turn.sources = grounded.sources
        turn.kind = turn.kind or "rag"


async def cached(services: Services, turn: Turn) -> Entry | None:
    answers = services.answers
    if answers is None:
        return None
    turn.cache_status = "MISS"  # with the cache on, every answer says HIT or MISS
    turn.cache_key = answers.key(turn.payload, turn.scope, turn.no_cache)
    if turn.cache_key is None:
        return None
    with step(services.tracing, "cache"):
        entry = await answers.get(turn.cache_key)
    if entry is not None:
        turn.cache_status, turn.completed = "HIT", True
        turn.reply = reply_content(parse_answer(entry.body))
    return entry


async def call(services: Services, door: Door, turn: Turn) -> Answer:
    """The upstream's answer; for an assistant with server tools, the tool loop's (``tools/loop.py``)."""
    loop = services.tool_loop.begin(turn, door) if services.tool_loop is not None and turn.server_tools else None
    if turn.stream:
        return await _stream(services, door, turn, loop)
    if loop is not None:
        body = await loop.complete(services.upstream)
    else:
        with step(services.tracing, "call"):
            body = await services.upstream.call("/chat/completions", turn.payload, turn.raw, turn.trace)
    data = parse_answer(body)
    turn.usage, turn.reply, turn.completed = usage_of(data) or turn.usage, reply_content(data), True
    turn.called_tool = calls_tool(turn.reply)
    body = with_sources(body, turn.sources, turn.warnings) or body
    await _cache(services, turn, loop, body)
    return door.answer(turn, body)


async def _stream(services: Services, door: Door, turn: Turn, loop: ToolRun | None) -> Chunks:
    framing = door.framing(turn)
    payload, _ = ask_for_usage(turn.payload if loop is None else loop.payload())
    with step(services.tracing, "call"):
        opened = await services.upstream.open(
            "/chat/completions", payload, turn.raw if payload is turn.payload else None, turn.trace
        )
    reply = ReplyBuffer(lazy=not framing.parse)

    async def tail() -> bytes:  # the stream completed: keep the turn, then the door's last event
        turn.completed, turn.called_tool = True, reply.called_tool
        turn.stopped = isinstance(relay, Relay) and relay.stopped
        assert turn.session is not None  # the reply is read only when something needs it
        if turn.usage is None or turn.sources or turn.cache_key is not None or not turn.session.ephemeral:
            turn.reply, turn.reply_head = reply.content(), reply.head
        if turn.usage is None and turn.fitted is not None:  # the upstream reported none: counted here
            turn.usage = services.counter.count_usage(turn.fitted.prompt_tokens, turn.reply, payload["model"])
            turn.usage_counted = turn.usage_estimated = turn.usage is not None
        try:
            await keep(services, door, turn)
        except ChatgateError as exc:  # not kept (the store is down): the answer is not acknowledged
            turn.completed, turn.error = False, exc
            return error_event(exc.body())
        return door.tail(turn)

    async def end(completed: bool) -> None:
        turn.trace.first_token_at, turn.stream_failed = relay.first_at, relay.failed
        if completed and turn.completed and not turn.stopped:  # an answer stopped at a limit is not whole

            def whole() -> bytes | None:  # rebuilt only when it is cached
                return with_sources(reply.completion(turn.usage), turn.sources, turn.warnings)

            await _cache(services, turn, loop, whole)
        await account(services, door, turn)

    relay: Relay | ToolStream
    if loop is not None:
        relay = loop.stream(services.upstream, opened, framing, reply, tail, end)
    else:
        model = payload["model"]
        relay = Relay(
            opened,
            include_usage=framing.include_usage,
            on_usage=turn.record_usage,
            reply=reply,
            transform=framing.transform,
            tail=tail,
            on_end=end,
            cap=services.admission.stream_cap(turn.admitted, reply, lambda text: services.counter.count(text, model)),
        )
    turn.streaming = True
    return relay


async def keep(services: Services, door: Door, turn: Turn) -> None:
    """The turn into its conversation, once (``SessionManager.keep_turn``). A task (a title, tags...) is
    counted on a conversation that exists, and adds nothing to it."""
    session = turn.session
    if turn.kept_turn or session is None or (turn.task is not None and not session.stored):
        return
    turn.kept_turn = True
    with step(services.tracing, "account"):
        await services.sessions.keep_turn(turn, door, kind_of(services, turn))


async def account(services: Services, door: Door | None, turn: Turn) -> None:
    """Whatever happened: keep a completed turn, release the in-flight count, settle the charge, record."""
    if turn.accounted:
        return
    turn.accounted = True
    try:
        if turn.completed and door is not None:
            await keep(services, door, turn)
    finally:
        if turn.connection is not None:
            services.connections.leave(turn.connection)
        with step(services.tracing, "settle"):
            await services.admission.settle(turn.admitted, spent(turn, services.counter))
        services.recorder.finished(turn, kind_of(services, turn))


# ---- small parts --------------------------------------------------------------------------------------------


def kind_of(services: Services, turn: Turn) -> str:
    """The request's kind: as a step decided it (rag, research), else by its payload (decided once)."""
    if turn.kind is None:
        features = turn.resolved.features if turn.resolved is not None else {}
        turn.kind = request_kind(turn.payload, features, services.research_models, called_tool=turn.called_tool)
    return turn.kind


async def _cache(
    services: Services, turn: Turn, loop: ToolRun | None, body: bytes | Callable[[], bytes | None]
) -> None:
    """A whole answer into the cache, when it may be (a tool loop's only when every step was deterministic)."""
    if services.answers is not None and turn.cache_key is not None and (loop is None or loop.cacheable):
        await services.answers.put(turn.cache_key, body if isinstance(body, bytes) else body())


def _tools(payload: dict[str, Any]) -> Any:
    return payload.get("tools") or payload.get("functions")
