"""What a finished request leaves behind: its analytics row (``request_log`` and its share of the hourly
rollup, put on the write-behind queue, so recording never waits on the database), its upstream metrics,
and the end of its upstream span. The pipeline's account step calls ``finished`` for every request it
ran; the endpoints call ``refused`` for those refused before they became one."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from chatgate.errors import ChatgateError
from chatgate.identity.keys import Principal
from chatgate.observe.metrics import Metrics
from chatgate.store.batch import RecordRequest
from chatgate.store.writebehind import WriteBehind

if TYPE_CHECKING:
    from chatgate.turn import Turn


class RequestRecorder:
    """``writer``: None when analytics are off (the metrics and spans are kept all the same)."""

    def __init__(self, writer: WriteBehind | None, metrics: Metrics) -> None:
        self.writer = writer
        self.metrics = metrics

    def finished(self, turn: Turn, kind: str) -> None:
        """A request the pipeline ran, whatever became of it."""
        trace = turn.trace
        if trace.span is not None:  # tracing on: a stream's upstream span ends with the stream
            trace.end_span(turn.stream_failed)
        latency, ttft = trace.seconds()
        if trace.upstream is not None:
            self.metrics.observe_call(trace.upstream, trace.model, trace.retries, latency, ttft, turn.usage)
        if self.writer is None:
            return
        error, resolved, session = turn.error, turn.resolved, turn.session
        if error is None:
            # a stream the client left before it completed: 499, like a request it left
            status = 499 if turn.streaming and not turn.completed and not turn.stream_failed else 200
            code = "STREAM_INTERRUPTED" if turn.stream_failed else None
        elif isinstance(error, ChatgateError):  # a stream had sent its 200 already: it keeps it
            status, code = 200 if turn.streaming else error.status, error.code
        else:
            status, code = 499, None  # cancelled: the client left
        model = trace.model or turn.payload.get("model")
        self.record(
            user_id=resolved.identity.user_id if resolved is not None else caller_id(turn.principal),
            conversation_id=session.id if session is not None and not session.ephemeral else None,
            message_id=resolved.message_id if resolved is not None else None,
            model=model if isinstance(model, str) else "",
            upstream=trace.upstream,
            kind=kind if resolved is not None else "standard",
            status=status,
            error_code=code,
            usage=turn.usage,
            cached=turn.cache_status == "HIT",
            stream=turn.stream,
            started=turn.started,
            ttft=ttft if turn.stream else None,
            tool_steps=turn.tool_steps,
            tool_calls=turn.tool_calls,
            usage_counted=turn.usage_estimated,
        )

    def record(
        self,
        *,
        user_id: str,
        conversation_id: str | None,
        message_id: str | None,
        model: str,
        upstream: str | None,
        kind: str,
        status: int,
        error_code: str | None,
        usage: Mapping[str, Any] | None,
        cached: bool,
        stream: bool,
        started: float,
        ttft: float | None,
        tool_steps: int = 0,
        tool_calls: int = 0,
        usage_counted: bool = False,
    ) -> None:
        """``started``: ``time.perf_counter()`` when the request came in; ``ttft``: seconds to its first token;
        ``usage_counted``: the tokens were counted by the gateway (the upstream reported none)."""
        if self.writer is None:
            return
        usage = usage or {}
        self.writer.put(
            RecordRequest(
                at=datetime.now(UTC),
                user_id=user_id,
                conversation_id=conversation_id,
                message_id=message_id,
                model=model,
                upstream=upstream,
                kind=kind,
                status=status,
                error_code=error_code,
                tokens_in=_count(usage.get("prompt_tokens")),
                tokens_out=_count(usage.get("completion_tokens")),
                cached=cached,
                stream=stream,
                latency_ms=round((time.perf_counter() - started) * 1000),
                ttft_ms=round(ttft * 1000) if ttft is not None else None,
                tool_steps=tool_steps,
                tool_calls=tool_calls,
                usage_counted=usage_counted,
            )
        )

    def refused(
        self, principal: Principal, model: str | None, status: int, error_code: str | None, started: float
    ) -> None:
        """A request refused before it became one the pipeline ran (bad JSON, a wrong field, too big)."""
        self.record(
            user_id=caller_id(principal),
            conversation_id=None,
            message_id=None,
            model=model or "",
            upstream=None,
            kind="standard",
            status=status,
            error_code=error_code,
            usage=None,
            cached=False,
            stream=False,
            started=started,
            ttft=None,
        )


def caller_id(principal: Principal) -> str:
    """The user a request is recorded under when it never got as far as identifying its end user."""
    return principal.user_id or f"key:{principal.key_id}"


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0
