"""The upstream call: pick an upstream, send, retry with backoff, fall back, keep breakers honest.

``UpstreamClient.call`` returns an upstream's whole answer; ``UpstreamClient.open`` returns once an
upstream has answered 200 with its headers, for streaming. Nothing has gone to our client by
then, so every failure before that point may be retried. Reading the stream is the caller's,
and is never retried: bytes may have gone to the client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from chatgate.errors import (
    ChatgateError,
    RateLimited,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from chatgate.observe.tracing import outgoing
from chatgate.settings import RetrySettings, TimeoutSettings
from chatgate.upstream.backoff import RETRYABLE_STATUSES, Backoff, parse_retry_after
from chatgate.upstream.routing import Router, Upstream

_CONNECT_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError)


@dataclass(slots=True)
class CallTrace:
    """What the call did, for logs, metrics and the account step."""

    upstream: str | None = None
    model: str | None = None
    retries: int = 0
    sent_at: float | None = None  # loop time the last attempt was sent
    answered_at: float | None = None  # loop time it answered: the whole body, or a stream's headers
    first_token_at: float | None = None  # loop time a stream's first event arrived
    span: Span | None = None  # a stream's upstream span (tracing on), open until ``end_span``

    def seconds(self) -> tuple[float | None, float | None]:
        """(upstream latency, time to first token), when the call got an answer."""
        if self.sent_at is None or self.answered_at is None:
            return None, None
        latency = self.answered_at - self.sent_at
        first = self.first_token_at if self.first_token_at is not None else self.answered_at
        return latency, first - self.sent_at

    def end_span(self, failed: bool) -> None:
        """End a stream's upstream span once the stream has ended, with its time to first token."""
        span, self.span = self.span, None
        if span is None:
            return
        if self.first_token_at is not None and self.sent_at is not None:
            span.set_attribute("chatgate.upstream.ttft_ms", round((self.first_token_at - self.sent_at) * 1000, 3))
            ago = asyncio.get_running_loop().time() - self.first_token_at
            span.add_event("first_token", timestamp=time.time_ns() - int(ago * 1e9))
        if failed:
            span.set_status(Status(StatusCode.ERROR, "the stream broke off"))
        span.end()


class Opened:
    """A streaming upstream response with status 200, headers read. Close it when done."""

    __slots__ = ("_closed", "deadline", "model", "response", "upstream")

    def __init__(self, response: aiohttp.ClientResponse, upstream: Upstream, model: str, deadline: float) -> None:
        self.response = response
        self.upstream = upstream
        self.model = model
        self.deadline = deadline
        self._closed = False

    def close(self, *, failed: bool = False, abort: bool = False) -> None:
        """Give the connection back (or drop it, when the body was not read in full)."""
        if self._closed:
            return
        self._closed = True
        self.upstream.in_flight -= 1
        if failed:
            self.upstream.breaker.record_failure()
        if failed or abort:
            self.response.close()
        else:
            self.response.release()


class _Attempt(Exception):
    """One failed attempt that may be retried."""

    def __init__(self, error: ChatgateError, retry_after: float | None = None) -> None:
        self.error = error
        self.retry_after = retry_after


class UpstreamClient:
    def __init__(
        self,
        router: Router,
        retry: RetrySettings,
        timeouts: TimeoutSettings,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        tracer: Tracer | None = None,
    ) -> None:
        self.router = router
        self.retry = retry
        self.timeouts = timeouts
        self.backoff = Backoff(base=retry.base, cap=retry.cap)
        self._sleep = sleep
        self.tracer = tracer  # None: tracing off
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
            timeout = aiohttp.ClientTimeout(
                total=None, connect=self.timeouts.connect, sock_connect=self.timeouts.connect
            )
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=timeout, json_serialize=lambda o: orjson.dumps(o).decode()
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @staticmethod
    def headers_for(up: Upstream) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if up.api_key:
            headers["Authorization"] = f"Bearer {up.api_key}"
        return headers

    async def call(self, path: str, payload: dict[str, Any], raw: bytes | None, trace: CallTrace) -> bytes:
        """The upstream's whole answer (non-streaming). Failures while reading it are retried too."""
        result = await self._send(path, payload, raw, trace, read=True)
        assert isinstance(result, bytes)
        return result

    async def open(self, path: str, payload: dict[str, Any], raw: bytes | None, trace: CallTrace) -> Opened:
        """An upstream response with status 200 whose body (a stream) the caller reads."""
        result = await self._send(path, payload, raw, trace, read=False)
        assert isinstance(result, Opened)
        return result

    async def _send(
        self, path: str, payload: dict[str, Any], raw: bytes | None, trace: CallTrace, *, read: bool
    ) -> Opened | bytes:
        """``_try`` inside the upstream span when tracing is on. A stream's span stays open: it is
        ended (``CallTrace.end_span``) when the stream has ended."""
        if self.tracer is None:
            return await self._try(path, payload, raw, trace, read, None)
        span = self.tracer.start_span(
            "upstream " + path, kind=SpanKind.CLIENT, attributes={"gen_ai.request.model": str(payload.get("model"))}
        )
        try:
            answer = await self._try(path, payload, raw, trace, read, span)
        except BaseException as exc:
            _describe(span, trace, exc)
            span.end()
            raise
        _describe(span, trace, None)
        if isinstance(answer, Opened):
            trace.span = span
        else:
            span.end()
        return answer

    async def _try(
        self,
        path: str,
        payload: dict[str, Any],
        raw: bytes | None,
        trace: CallTrace,
        read: bool,
        span: Span | None,
    ) -> Opened | bytes:
        """Send ``payload`` (``raw`` is its exact bytes, reused when no field changes) to ``path``.

        Tries the requested model, then its fallbacks; each with retries and backoff.
        """
        loop = asyncio.get_running_loop()
        propagate = outgoing(span) if span is not None else None
        deadline = loop.time() + self.timeouts.total
        requested = payload.get("model")
        last: _Attempt | None = None
        made = 0
        for served in self.router.plan(str(requested)):
            tries = 0
            tried: set[Upstream] = set()
            while (up := self.router.pick(served, avoid=tried)) is not None:
                trace.upstream, trace.model, trace.retries = up.name, served, made
                made += 1
                body = _body_for(up, path, served, payload, raw)
                try:
                    trace.sent_at = loop.time()
                    answer = await self._attempt(up, path, body, served, deadline, read, propagate)
                    trace.answered_at = loop.time()
                    return answer
                except _Attempt as failed:
                    last = failed
                tries += 1
                tried.add(up)
                limit = up.max_retries if up.max_retries is not None else self.retry.max_retries
                wait = self.backoff.delay(tries - 1, last.retry_after)
                if span is not None:
                    span.add_event("attempt failed", _attempt_facts(up, made, last, wait))
                if tries > limit or loop.time() + wait >= deadline:
                    break
                await self._sleep(wait)
            if last is None:
                unavailable = UpstreamUnavailable(
                    "No server for this model is accepting requests right now.", details={"model": served}
                )
                wait = self.router.retry_in(served)
                unavailable.retry_after = wait
                last = _Attempt(unavailable, wait)
            if loop.time() >= deadline:
                break
        assert last is not None
        raise last.error

    async def _attempt(
        self,
        up: Upstream,
        path: str,
        body: bytes,
        served: str,
        deadline: float,
        read: bool,
        propagate: Mapping[str, str] | None = None,
    ) -> Opened | bytes:
        loop = asyncio.get_running_loop()
        attempt_deadline = deadline if up.timeout is None else min(deadline, loop.time() + up.timeout)
        first_byte = min(
            attempt_deadline, loop.time() + (self.timeouts.first_byte if up.first_byte is None else up.first_byte)
        )
        up.in_flight += 1
        opened = False
        headers_in = False
        try:
            async with asyncio.timeout_at(first_byte) as timer:
                headers = self.headers_for(up)
                if propagate:
                    headers.update(propagate)
                resp = await self.session.post(up.base_url + path, data=body, headers=headers)
                headers_in = True
                if resp.status == 200 and not read:
                    up.breaker.record_success()
                    opened = True
                    return Opened(resp, up, served, attempt_deadline)
                if resp.status == 200:
                    timer.reschedule(attempt_deadline)  # from here on, only the total timeout applies
                try:
                    answer = await resp.read()
                except BaseException:
                    resp.close()  # half-read: the connection cannot be reused
                    raise
                resp.release()
                if resp.status == 200:
                    up.breaker.record_success()
                    return answer
        except TimeoutError:
            up.breaker.record_failure()
            late = "finish" if headers_in else "start"
            raise _Attempt(UpstreamTimeout(f"The model took too long to {late} answering.")) from None
        except _CONNECT_ERRORS:
            up.breaker.record_failure()
            if headers_in:
                raise _Attempt(UpstreamError("The model's server broke off its answer.")) from None
            raise _Attempt(UpstreamError("Could not reach the model's server.")) from None
        except BaseException:
            up.breaker.release()
            raise
        finally:
            if not opened:
                up.in_flight -= 1
        raise _status_failure(up, resp.status, resp.headers.get("Retry-After"), answer)


def _attempt_facts(up: Upstream, attempt: int, failed: _Attempt, wait: float) -> dict[str, Any]:
    facts: dict[str, Any] = {"chatgate.upstream": up.name, "chatgate.attempt": attempt, "error.type": failed.error.code}
    status = failed.error.details.get("upstream_status")
    if status is not None:
        facts["http.response.status_code"] = status
    facts["chatgate.retry_in_ms"] = round(wait * 1000, 3)
    return facts


def _describe(span: Span, trace: CallTrace, error: BaseException | None) -> None:
    """What the call did, on its span: upstream, model served, attempts, and the outcome."""
    if trace.upstream is not None:
        span.set_attributes(
            {
                "chatgate.upstream": trace.upstream,
                "chatgate.upstream.model": trace.model or "",
                "chatgate.upstream.attempts": trace.retries + 1,
            }
        )
    if error is None:
        span.set_attribute("http.response.status_code", 200)
        return
    if isinstance(error, ChatgateError):
        status = error.details.get("upstream_status")
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        span.set_attribute("error.type", error.code)
        span.set_status(Status(StatusCode.ERROR, error.message))
    elif isinstance(error, asyncio.CancelledError):
        span.set_attribute("error.type", "cancelled")  # the client left
    else:
        span.set_attribute("error.type", type(error).__name__)
        span.set_status(Status(StatusCode.ERROR))


def _body_for(up: Upstream, path: str, served: str, payload: dict[str, Any], raw: bytes | None) -> bytes:
    """The bytes to send: the client's own when nothing changes, else the payload re-serialised."""
    missing = {k: v for k, v in up.chat_defaults.items() if k not in payload} if path == "/chat/completions" else {}
    if "max_completion_tokens" in payload:
        missing.pop("max_tokens", None)  # the client set its limit under the newer name
    if raw is not None and served == payload.get("model") and not missing:
        return raw
    return orjson.dumps({**missing, **payload, "model": served})


def _status_failure(up: Upstream, status: int, retry_after: str | None, body: bytes) -> Exception:
    """A non-200 answer: a retryable ``_Attempt`` or, for the caller's own mistakes, the error to return."""
    details: dict[str, Any] = {"upstream": up.name, "upstream_status": status}
    if status == 429:
        up.breaker.release()
        wait = parse_retry_after(retry_after)
        return _Attempt(
            RateLimited("The model's server is rate limiting requests.", details=details, retry_after=wait), wait
        )
    if status in RETRYABLE_STATUSES or status >= 500:
        up.breaker.record_failure()
        error: ChatgateError = UpstreamError(f"The model's server failed (HTTP {status}).", details=details)
        return _Attempt(error, parse_retry_after(retry_after)) if status in RETRYABLE_STATUSES else error
    up.breaker.record_success()  # the server is healthy; it refused this request
    message, kind = _upstream_message(body)
    rejected = UpstreamRejected(
        message or f"The model's server refused the request (HTTP {status}).", details=details, status=status
    )
    if kind:
        rejected.type = kind
    return rejected


def _upstream_message(body: bytes) -> tuple[str | None, str | None]:
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
