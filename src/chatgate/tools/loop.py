"""The tool loop: the call step of a request to an assistant that offers server tools (``search_documents``
with ``retrieval: tool``, ``current_time``, the deployer's own; ``tools/registry.py``).

The model is called with the client's tools and the server's. When it answers with calls to server tools,
they run (in parallel, each within ``tools.timeout``, as the calling user), the assistant message with the
calls and one ``tool`` message per result are appended, and the model is called again: until it answers
without server calls, or after ``max_steps`` answers with them, when it is asked once more with
``tool_choice: none``. A tool that fails or times out gives the model an error result it can read.

Client tools stay the client's: an answer that calls only them goes back as the upstream sent it; one that
calls server tools too runs those first, then gives the client its own calls. Each result is cut to the
room the window leaves (and to ``tools.result_tokens``), so every step fits. A search's sources are
numbered on across steps and parallel calls, as the model saw them; they are the answer's ``sources``.

A stream passes content on as it arrives (a first answer without tool calls streams straight through) and
holds back tool-call chunks; while tools run the door shows the steps (``Door.tool_event``) and comments
keep the stream alive. Every step's usage is added to the turn's as it ends, so the account step charges
what was spent even when a later step fails.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from chatgate.errors import BadRequest, ChatgateError
from chatgate.observe.tracing import step
from chatgate.settings import ToolSettings
from chatgate.tools.base import ServerTool, ToolContext, ToolResult, spec, trim_to
from chatgate.tools.registry import Tools
from chatgate.turn import Framing, ToolStep
from chatgate.upstream.answer import parse_answer, reply_content, usage_of
from chatgate.upstream.client import Opened
from chatgate.upstream.sse import DONE_EVENT, encode_comment, encode_data, error_event
from chatgate.upstream.stream import Relay, ReplyBuffer, ask_for_usage

if TYPE_CHECKING:
    from chatgate.context import ContextFitter
    from chatgate.observe.metrics import Metrics
    from chatgate.observe.tracing import Tracing
    from chatgate.tokens.counter import TokenCounter
    from chatgate.turn import Door, Turn
    from chatgate.upstream.client import UpstreamClient

log = logging.getLogger("chatgate.tools")
KEEPALIVE_SECONDS = 5.0  # a comment this often while tools run: proxies time out idle streams
MESSAGE_OVERHEAD = 16  # tokens a tool message costs besides its content (role, call id, template)
MIN_RESULT_TOKENS = 32  # below this a result is not worth sending: the model is asked for its answer
PATH = "/chat/completions"


class ToolLoop:
    """Built once in ``app.py``; ``offer`` (the session step) and ``begin`` (the call step) per request."""

    def __init__(
        self,
        tools: Tools,
        settings: ToolSettings,
        fitter: ContextFitter,
        counter: TokenCounter,
        metrics: Metrics,
        tracing: Tracing | None,
    ) -> None:
        self.tools = tools
        self.settings = settings
        self.fitter = fitter
        self.counter = counter
        self.metrics = metrics
        self.tracing = tracing

    def offer(self, turn: Turn) -> list[dict[str, Any]] | None:
        """The request's tools with the assistant's server tools after the client's (None: it offers none).
        A client tool named like a server tool is a 400: a call to it could not be told apart."""
        assistant = turn.assistant
        if assistant is None:
            return None
        offered = self.tools.offered(assistant)
        if not offered:
            return None
        payload = turn.payload
        if payload.get("functions"):
            raise BadRequest(
                f"The assistant '{assistant.name}' uses server tools: send client tools as 'tools', not 'functions'.",
                details={"assistant": assistant.name},
            )
        client = payload.get("tools") or []
        taken = {t.get("function", {}).get("name") for t in client if isinstance(t, dict)} & offered.keys()
        if taken:
            name = sorted(taken)[0]
            raise BadRequest(
                f"The tool '{name}' is one of the assistant's own server tools; give the client tool another name.",
                details={"assistant": assistant.name, "tool": name},
            )
        turn.server_tools = offered
        return [*client, *(spec(tool, assistant) for tool in offered.values())]

    def begin(self, turn: Turn, door: Door) -> ToolRun:
        assert turn.assistant is not None
        return ToolRun(self, turn, door, self.tools.max_steps(turn.assistant))


class ToolRun:
    """One request's loop: the messages so far, the model's answers, the sources found."""

    def __init__(self, loop: ToolLoop, turn: Turn, door: Door, max_steps: int) -> None:
        self.loop = loop
        self.turn = turn
        self.door = door
        self.max_steps = max_steps
        self.messages: list[dict[str, Any]] = turn.payload["messages"]
        self.answers = 0  # the model's answers so far (the loop's steps)
        self.out_of_room = False  # a result did not fit: the next call asks for the answer
        self.cacheable = True  # no tool that is not deterministic ran
        turn.sources = turn.sources or []

    # ---- one step ---------------------------------------------------------------------------------------

    @property
    def final(self) -> bool:
        """The next call asks for the answer (``tool_choice: none``)."""
        return self.answers > self.max_steps - 1 or self.out_of_room

    def payload(self) -> dict[str, Any]:
        """The next call's request: the first is the client's (its bytes may go as they came); then the
        messages with the results, the model free to call tools again, or, last, told not to."""
        turn = self.turn
        if self.answers == 0 and not self.final:
            return turn.payload
        payload = {k: v for k, v in turn.payload.items() if k != "tool_choice"}
        payload["messages"] = self.messages
        if self.final:
            payload["tool_choice"] = "none"
        return payload

    def answered(self, usage: dict[str, Any] | None, reply: Any) -> None:
        """A step's answer arrived: its usage (counted here when the upstream reported none) into the turn's."""
        turn = self.turn
        self.answers += 1
        model = turn.payload["model"]
        if usage is None:
            prompt = self.loop.fitter.prompt_tokens(self.messages, model, turn.payload.get("tools"))
            usage = self.loop.counter.count_usage(prompt, reply, model)
            turn.usage_counted = turn.usage_estimated = True
        turn.usage = add_usage(turn.usage, usage)

    def split(self, calls: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(server calls, client calls), each in the order the model made them."""
        server: list[dict[str, Any]] = []
        client: list[dict[str, Any]] = []
        for call in calls:
            name = (call.get("function") or {}).get("name")
            (server if name in self.turn.server_tools else client).append(call)
        return server, client

    def steps(self, calls: list[dict[str, Any]]) -> list[ToolStep]:
        out = []
        for i, call in enumerate(calls):
            function = call.get("function") or {}
            try:
                arguments = orjson.loads(function.get("arguments") or "{}")
            except orjson.JSONDecodeError:
                arguments = None
            call_id = call.get("id") or f"call_{self.answers}_{i}"
            call["id"] = call_id
            out.append(ToolStep(self.answers, call_id, function.get("name", ""), arguments))
        return out

    async def run(self, steps: list[ToolStep], calls: list[dict[str, Any]], content: Any) -> None:
        """Run the server calls (in parallel), then append the assistant's message and one result each."""
        turn, loop = self.turn, self.loop
        asked = {"role": "assistant", "content": content or None, "tool_calls": calls}
        self.messages = [*self.messages, asked]
        budget = self.budget(len(steps))
        results = await asyncio.gather(*(self.run_one(s, budget) for s in steps))
        first = len(turn.sources or []) + 1
        served = loop.fitter.windows.served(turn.payload["model"])
        answers = []
        for s, result in zip(steps, results, strict=True):
            text, sources = result.numbered(first)
            first += len(sources)
            text = trim_to(text, budget, lambda t: loop.counter.count(t, served)) if budget else ""
            if not text:
                text = "No room is left in the context window for this result: answer with what you have."
            s.done, s.error, s.sources = True, result.error, sources
            assert turn.sources is not None
            turn.sources.extend(sources)
            answers.append({"role": "tool", "tool_call_id": s.call_id, "content": text})
        self.messages = [*self.messages, *answers]
        turn.tool_calls += len(steps)
        if turn.kind in (None, "rag"):
            turn.kind = "tool"

    def budget(self, n: int) -> int:
        """Tokens each of ``n`` results may take: ``tools.result_tokens``, less when the window leaves less."""
        limit = self.loop.settings.result_tokens
        fitted = self.turn.fitted
        if fitted is None or fitted.window is None:
            return limit
        payload = self.turn.payload
        used = self.loop.fitter.prompt_tokens(self.messages, payload["model"], payload.get("tools"))
        each = (fitted.window - fitted.max_tokens - used) // n - MESSAGE_OVERHEAD
        if each < MIN_RESULT_TOKENS:
            self.out_of_room = True
            return 0
        return min(limit, each)

    async def run_one(self, s: ToolStep, budget: int) -> ToolResult:
        loop, turn = self.loop, self.turn
        tool: ServerTool = turn.server_tools[s.name]
        if not tool.deterministic:
            self.cacheable = False
        if not isinstance(s.arguments, dict):
            return ToolResult("The arguments must be a JSON object matching the tool's parameters.", error="arguments")
        if budget == 0:
            return ToolResult("", error="no_room")
        assert turn.resolved is not None and turn.assistant is not None
        ctx = ToolContext(turn.resolved.identity.user_id, turn.assistant, budget)
        started = time.perf_counter()
        timeout = loop.settings.timeout
        with step(loop.tracing, "tool", {"chatgate.tool.name": s.name, "chatgate.tool.step": s.step}) as span:
            try:
                async with asyncio.timeout(timeout):
                    result = await tool.run(s.arguments, ctx)
                outcome = "error" if result.error else "ok"
            except TimeoutError:
                result = ToolResult(f"The tool did not finish within {timeout:g} seconds.", error="timeout")
                outcome = "timeout"
            except Exception as exc:  # the model is told it failed, and the loop goes on
                log.warning("server tool failed", extra={"tool": s.name, "error": f"{type(exc).__name__}: {exc}"})
                result = ToolResult("The tool failed; try other arguments, or answer without it.", error="failed")
                outcome = "error"
            if span is not None:
                span.set_attribute("chatgate.tool.outcome", outcome)
        loop.metrics.tool_calls.inc((s.name, outcome))
        loop.metrics.tool_latency.observe(time.perf_counter() - started, (s.name,))
        return result

    def finished(self) -> None:
        self.turn.tool_steps = self.answers
        self.loop.metrics.tool_steps.observe(self.answers, ())

    # ---- a whole answer -------------------------------------------------------------------------------------

    async def complete(self, upstream: UpstreamClient) -> bytes:
        """The loop for a non-streaming request: the final answer's body, with the steps' usage summed."""
        turn = self.turn
        try:
            while True:
                final, payload = self.final, self.payload()
                with step(self.loop.tracing, "call", {"chatgate.tool.step": self.answers + 1}):
                    body = await upstream.call(PATH, payload, turn.raw if payload is turn.payload else None, turn.trace)
                data = parse_answer(body)
                self.answered(usage_of(data), reply_content(data))
                choices = data.get("choices")
                message = choices[0].get("message") if choices and isinstance(choices[0], dict) else None
                calls = (message or {}).get("tool_calls") or []
                server, client = self.split(calls)
                if not server:
                    return body if self.answers == 1 else _rebuilt(data, message, calls, turn.usage)
                if final:  # told not to, it called tools all the same: their calls are dropped
                    return _rebuilt(data, message, client, turn.usage)
                await self.run(self.steps(server), server, (message or {}).get("content"))
                if client:
                    return _rebuilt(data, message, client, turn.usage)
        finally:
            self.finished()

    # ---- a stream -----------------------------------------------------------------------------------------

    def stream(
        self,
        upstream: UpstreamClient,
        opened: Opened,
        framing: Framing,
        reply: ReplyBuffer,
        tail: Callable[[], Awaitable[bytes]],
        on_end: Callable[[bool], Awaitable[None]],
    ) -> ToolStream:
        return ToolStream(self, upstream, opened, framing, reply, tail, on_end)


class ToolStream:
    """The loop's answer as a stream, read like a ``Relay`` (``aclose`` always frees the upstream and runs
    ``on_end`` once). ``reply`` collects what the client was sent: every step's content, and its own calls."""

    def __init__(
        self,
        run: ToolRun,
        upstream: UpstreamClient,
        opened: Opened,
        framing: Framing,
        reply: ReplyBuffer,
        tail: Callable[[], Awaitable[bytes]],
        on_end: Callable[[bool], Awaitable[None]],
    ) -> None:
        self.run = run
        self.upstream = upstream
        self.framing = framing
        self.reply = reply
        self.tail = tail
        self.on_end = on_end
        self.first_at: float | None = None  # loop time the client got its first content
        self.failed = False
        self.completed = False
        self._relay: Relay | None = None
        self._ended = False
        self._chunks = self._steps(opened)
        run.turn.usage_counted = True  # the steps' usage chunks are not passed on: the door sends their sum

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks

    async def aclose(self) -> None:
        try:
            await self._chunks.aclose()
        finally:
            if self._relay is not None:
                await self._relay.aclose()
            if not self._ended:
                self._ended = True
                await self.on_end(self.completed)

    def _pass(self, data: bytes, text: str) -> bytes:
        """A chunk for the client, as its door frames it."""
        self.reply.feed(data)
        if self.first_at is None and (text or b'"content"' in data):
            self.first_at = asyncio.get_running_loop().time()
        transform = self.framing.transform
        return transform(data, text) if transform is not None else encode_data(data)

    async def _steps(self, opened: Opened) -> AsyncGenerator[bytes, None]:
        run, turn, door = self.run, self.run.turn, self.run.door
        try:
            while True:
                final = run.final
                held: list[tuple[bytes, str]] = []
                step_usage: list[dict[str, Any]] = []
                step_reply = ReplyBuffer(lazy=not self.framing.parse)

                def hold(data: bytes, text: str, held: list[tuple[bytes, str]] = held) -> bytes:
                    # content goes straight on; from a step's first tool call on, its chunks wait for the step's end
                    if held or b'"tool_calls"' in data:
                        held.append((data, text))
                        return b""
                    return self._pass(data, text)

                relay = self._relay = Relay(
                    opened, include_usage=False, on_usage=step_usage.append, reply=step_reply, transform=hold
                )
                async for out in relay:
                    if out is not DONE_EVENT:  # one [DONE], at the very end
                        yield out
                await relay.aclose()
                self._relay = None
                turn.trace.end_span(relay.failed)
                if not relay.completed:  # broke off: the relay sent the error event
                    self.failed = relay.failed
                    yield DONE_EVENT
                    return
                run.answered(step_usage[-1] if step_usage else None, step_reply.content())
                calls = [step_reply.tool_calls[i] for i in sorted(step_reply.tool_calls)]
                server, client = run.split(calls)
                if not server:  # the answer: what was held goes on as it came
                    rest = b"".join(self._pass(data, text) for data, text in held)
                    if rest:
                        yield rest
                    break
                if final:  # told not to, it called tools all the same: their calls are dropped
                    if out := self._pass(_calls_chunk(step_reply.head, client), ""):
                        yield out
                    break
                steps = run.steps(server)
                if events := b"".join(door.tool_event(turn, s) for s in steps):
                    yield events
                async for keepalive in self._running(run.run(steps, server, step_reply.text)):
                    yield keepalive
                if events := b"".join(door.tool_event(turn, s) for s in steps):
                    yield events
                if client:  # the client's own calls, once the server's have run
                    if out := self._pass(_calls_chunk(step_reply.head, client), ""):
                        yield out
                    break
                payload, _ = ask_for_usage(run.payload())
                try:
                    opened = await self.upstream.open(PATH, payload, None, turn.trace)
                except ChatgateError as exc:  # the unified error body, as a stream ends with one
                    turn.error, self.failed = exc, True
                    yield error_event(exc.body())
                    yield DONE_EVENT
                    return
            self.completed = True
            last = await self.tail()
            if last:
                yield last
            yield DONE_EVENT
        finally:
            run.finished()

    async def _running(self, work: Awaitable[None]) -> AsyncGenerator[bytes, None]:
        """Await ``work``, a comment every few seconds meanwhile; cancelled with the stream."""
        task = asyncio.ensure_future(work)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=KEEPALIVE_SECONDS)
                if done:
                    task.result()
                    return
                yield encode_comment(b"tool running")
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


# ---- small parts ------------------------------------------------------------------------------------------


def add_usage(total: dict[str, Any] | None, usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Two steps' usage as one: the token counts added."""
    if usage is None:
        return total
    if total is None:
        return dict(usage)
    out = dict(total)
    for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
        a, b = total.get(name), usage.get(name)
        if isinstance(b, int):
            out[name] = (a if isinstance(a, int) else 0) + b
    return out


def _rebuilt(
    data: dict[str, Any], message: dict[str, Any] | None, calls: list[dict[str, Any]], usage: dict[str, Any] | None
) -> bytes:
    """The last answer's body with only ``calls`` (the client's) left, and the loop's usage."""
    choice = dict(data["choices"][0])
    kept = {k: v for k, v in (message or {}).items() if k != "tool_calls"}
    if calls:
        kept["tool_calls"] = calls
        choice["finish_reason"] = "tool_calls"
    elif choice.get("finish_reason") == "tool_calls":
        choice["finish_reason"] = "stop"
    choice["message"] = kept
    out = {**data, "choices": [choice, *data["choices"][1:]]}
    if usage is not None:
        out["usage"] = usage
    return orjson.dumps(out)


def _calls_chunk(head: dict[str, Any], calls: list[dict[str, Any]]) -> bytes:
    """One chunk with the client's calls whole (numbered from 0) and the finish reason."""
    delta: dict[str, Any] = {}
    if calls:
        delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(calls)]
    chunk = {
        "id": head.get("id", ""),
        "object": "chat.completion.chunk",
        "created": head.get("created", 0),
        "model": head.get("model", ""),
        "choices": [{"index": 0, "delta": delta, "finish_reason": "tool_calls" if calls else "stop"}],
    }
    return orjson.dumps(chunk)
