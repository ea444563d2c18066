"""One upstream attempt's failure: why it failed, whether another attempt may follow, and what it says
about the upstream's health (its circuit breaker's business).

``Failed`` is raised by ``UpstreamClient._attempt`` for every answer that is not a success: a non-200
status, a timeout, a broken connection, a stream that ended or failed before its first event.
``judge`` tells the breaker, counting a request that fails the same way on every attempt once.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import aiohttp
import orjson

from chatgate.errors import ChatgateError, RateLimited, UpstreamError, UpstreamRejected
from chatgate.upstream.backoff import RETRYABLE_STATUSES, parse_retry_after
from chatgate.upstream.routing import Upstream
from chatgate.upstream.sse import SSEDecoder

FIRST_BYTE_TIMEOUT = "first_byte_timeout"


class Health(Enum):
    """What a failed attempt says about the upstream, for its circuit breaker."""

    FAILED = "failed"  # counts against it
    NEUTRAL = "neutral"  # says nothing (a 429)
    HEALTHY = "healthy"  # it answered; the request was at fault


class Failed(Exception):
    """One failed attempt: its error, why it failed (for logs), whether another attempt may follow."""

    def __init__(
        self,
        error: ChatgateError,
        reason: str,
        *,
        retry_after: float | None = None,
        retryable: bool = True,
        health: Health = Health.FAILED,
    ) -> None:
        self.error = error
        self.reason = reason
        self.retry_after = retry_after
        self.retryable = retryable
        self.health = health

    def signature(self, up: Upstream) -> tuple[str, str, str, Any]:
        """Failures with the same signature are the same failure again (counted once per request)."""
        return up.name, self.reason, self.error.code, self.error.details.get("upstream_status")


def judge(up: Upstream, failed: Failed, seen: set[tuple[str, str, str, Any]]) -> None:
    """Tell ``up``'s breaker what a failed attempt says about it. A request that fails the same way on
    every attempt is one failure, not one per attempt: one caller cannot open a circuit by retrying."""
    if failed.health is Health.HEALTHY:
        up.breaker.record_success()
        return
    signature = failed.signature(up)
    if failed.health is Health.NEUTRAL or signature in seen:
        up.breaker.release()
        return
    seen.add(signature)
    up.breaker.record_failure()


async def first_event(up: Upstream, resp: aiohttp.ClientResponse) -> bytes:
    """Read a stream until its first event (the bytes so far); a stream that ends before one, or
    whose first event is an error, is a failed attempt."""
    decoder = SSEDecoder()
    parts: list[bytes] = []
    async for chunk in resp.content.iter_any():
        parts.append(chunk)
        for ev in decoder.feed(chunk):
            if ev.data is not None:
                check_first(up, ev.data)
                return b"".join(parts)
    for ev in decoder.flush():
        if ev.data is not None:
            check_first(up, ev.data)
            return b"".join(parts)
    raise Failed(UpstreamError("The model's server ended the stream before answering."), "stream_cut")


def check_first(up: Upstream, data: bytes) -> None:
    """A first event that is an error (an upstream failing after its 200): a failed attempt."""
    if b'"error"' not in data:
        return
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        return
    if not isinstance(event, dict) or "error" not in event or event.get("choices"):
        return
    error = event["error"]
    code = error.get("code") if isinstance(error, dict) else None
    status = code if isinstance(code, int) and not isinstance(code, bool) and 400 <= code < 600 else None
    details: dict[str, Any] = {"upstream": up.name, "upstream_status": status}
    if status is not None and status < 500 and status != 429:
        message, kind = upstream_message(data)
        rejected = UpstreamRejected(
            message or f"The model's server refused the request (HTTP {status}).", details=details, status=status
        )
        if kind:
            rejected.type = kind
        raise Failed(rejected, "error_event", retryable=False, health=Health.HEALTHY)
    if status == 429:
        limited = RateLimited("The model's server is rate limiting requests.", details=details)
        raise Failed(limited, "error_event", health=Health.NEUTRAL)
    raise Failed(UpstreamError("The model's server failed as it began answering.", details=details), "error_event")


def status_failure(up: Upstream, status: int, retry_after: str | None, body: bytes) -> Failed:
    """A non-200 answer as a failed attempt: retryable, or the caller's own mistake (not retried)."""
    details: dict[str, Any] = {"upstream": up.name, "upstream_status": status}
    reason = f"status_{status}"
    if status == 429:
        wait = parse_retry_after(retry_after)
        limited = RateLimited("The model's server is rate limiting requests.", details=details, retry_after=wait)
        return Failed(limited, reason, retry_after=wait, health=Health.NEUTRAL)
    if status in RETRYABLE_STATUSES or status >= 500:
        error = UpstreamError(f"The model's server failed (HTTP {status}).", details=details)
        return Failed(error, reason, retry_after=parse_retry_after(retry_after), retryable=status in RETRYABLE_STATUSES)
    message, kind = upstream_message(body)
    rejected = UpstreamRejected(
        message or f"The model's server refused the request (HTTP {status}).", details=details, status=status
    )
    if kind:
        rejected.type = kind
    return Failed(rejected, reason, retryable=False, health=Health.HEALTHY)  # healthy; it refused this request


def upstream_message(body: bytes) -> tuple[str | None, str | None]:
    """The message and type out of an upstream's error body, whatever its shape."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return (text[:500] or None), None
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail")
            kind = err.get("type")
            return (str(msg)[:2000] if msg else None), (kind if isinstance(kind, str) else None)
        if isinstance(err, str):
            return err[:2000], None
    return None, None
