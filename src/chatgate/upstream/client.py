"""The upstream call: pick an upstream, send, retry with backoff, fall back, keep breakers honest.

``UpstreamClient.call`` returns an upstream's whole answer; ``UpstreamClient.open`` returns once an
upstream has answered 200 and sent its first event, for streaming. Nothing has gone to our client
by then, so every failure before that point (a stream cut before its first event, or an error as
its first event) may be retried. Reading the rest of the stream is the caller's, and is never
retried: bytes may have gone to the client. Every retry is logged (``upstream retry``: the upstream
that failed, the attempt, the reason and the wait).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from chatgate.errors import ChatgateError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from chatgate.observe.tracing import outgoing
from chatgate.settings import RetrySettings, TimeoutSettings
from chatgate.upstream.attempts import FIRST_BYTE_TIMEOUT, Failed, Health, first_event, judge, status_failure
from chatgate.upstream.backoff import Backoff
from chatgate.upstream.routing import InProcess, Router, Upstream

log = logging.getLogger("chatgate.upstream")

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
    """A streaming upstream response with status 200 whose first event has arrived. Close it when done."""

    __slots__ = ("_closed", "deadline", "first_at", "head", "model", "response", "upstream")

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        upstream: Upstream,
        model: str,
        deadline: float,
        head: bytes = b"",
        first_at: float | None = None,
    ) -> None:
        self.response = response
        self.upstream = upstream
        self.model = model
        self.deadline = deadline
        self.head = head  # the bytes read up to the first event (kept for the relay, which passes them on)
        self.first_at = first_at  # loop time the first event arrived
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
        """An upstream stream that answered 200 and sent its first event (nothing reached our client yet,
        so a stream cut, or an error event, before it is retried like any failed call)."""
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

        Tries the requested model, then its fallbacks; each with retries and backoff. After a
        first-byte timeout, ``retry.first_byte_timeout`` decides: by default one more attempt, never
        on the upstream that timed out (it may still be generating).
        """
        loop = asyncio.get_running_loop()
        propagate = outgoing(span) if span is not None else None
        deadline = loop.time() + self.timeouts.total
        requested = payload.get("model")
        policy = self.retry.first_byte_timeout
        last: Failed | None = None
        failed_on: Upstream | None = None  # the upstream of the last failed attempt
        waited = 0.0
        made = 0
        seen: set[tuple[str, str, str, Any]] = set()  # failures already counted against a breaker
        timed_out: set[Upstream] = set()  # never tried again for this request
        left: int | None = None  # attempts left after a first-byte timeout (None: no timeout yet)
        for served in self.router.plan(str(requested)):
            tries = 0
            tried: set[Upstream] = set()
            while left != 0 and (up := self._pick(served, tried | timed_out, timed_out)) is not None:
                if last is not None and failed_on is not None:
                    _log_retry(failed_on, made, last, waited, up, served)
                trace.upstream, trace.model, trace.retries = up.name, served, made
                made += 1
                if left is not None:
                    left -= 1
                body = _body_for(up, path, served, payload, raw)
                try:
                    trace.sent_at = loop.time()
                    answer = await self._attempt(up, path, body, served, deadline, read, propagate)
                    trace.answered_at = loop.time()
                    return answer
                except Failed as failed:
                    judge(up, failed, seen)
                    if not failed.retryable:
                        raise failed.error from None
                    last, failed_on, waited = failed, up, 0.0
                tries += 1
                tried.add(up)
                if last.reason == FIRST_BYTE_TIMEOUT and policy != "same":
                    if policy == "never":
                        raise last.error
                    timed_out.add(up)  # it may still be generating: not again, and only one more attempt
                    left = 1 if left is None else left
                    wait = 0.0  # no backoff: the next attempt goes elsewhere
                else:
                    wait = self.backoff.delay(tries - 1, last.retry_after)
                if span is not None:
                    span.add_event("attempt failed", _attempt_facts(up, made, last, wait))
                limit = up.max_retries if up.max_retries is not None else self.retry.max_retries
                if left == 0 or tries > limit or loop.time() + wait >= deadline:
                    break
                if up not in timed_out:
                    await self._sleep(wait)
                waited = wait
            if last is None:
                unavailable = UpstreamUnavailable(
                    "No server for this model is accepting requests right now.", details={"model": served}
                )
                wait = self.router.retry_in(served)
                unavailable.retry_after = wait
                last = Failed(unavailable, "circuit_open", retry_after=wait)
            if loop.time() >= deadline or left == 0:
                break
        assert last is not None
        raise last.error

    def _pick(self, served: str, avoid: set[Upstream], excluded: set[Upstream]) -> Upstream | None:
        """The upstream for the next attempt; never one in ``excluded`` (``Router.pick`` falls back to
        the upstreams it was asked to avoid when nothing else is left)."""
        up = self.router.pick(served, avoid=avoid)
        if up is not None and up in excluded:
            up.breaker.release()  # the slot it claimed
            return None
        return up

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
        """One attempt: the answer (a stream once its first event is in), or ``Failed``. The breaker
        is told of a success here; of a failure by the caller, which counts a repeated failure once."""
        if up.target is not None:
            return await _in_process(up, up.target, path, body)
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
                if resp.status == 200:
                    timer.reschedule(attempt_deadline)  # from here on, only the total timeout applies
                try:
                    if resp.status == 200 and not read:
                        head = await first_event(up, resp)
                        up.breaker.record_success()
                        opened = True
                        return Opened(resp, up, served, attempt_deadline, head, loop.time())
                    answer = await resp.read()
                except BaseException:
                    resp.close()  # half-read: the connection cannot be reused
                    raise
                resp.release()
                if resp.status == 200:
                    up.breaker.record_success()
                    return answer
        except aiohttp.ConnectionTimeoutError:  # a TimeoutError too, but a connection failure
            raise Failed(UpstreamError("Could not reach the model's server."), "connect_timeout") from None
        except TimeoutError:
            if headers_in:
                raise Failed(UpstreamTimeout("The model took too long to finish answering."), "timeout") from None
            raise Failed(UpstreamTimeout("The model took too long to start answering."), FIRST_BYTE_TIMEOUT) from None
        except _CONNECT_ERRORS:
            if headers_in:
                raise Failed(UpstreamError("The model's server broke off its answer."), "cut_off") from None
            raise Failed(UpstreamError("Could not reach the model's server."), "connect_failed") from None
        except Failed:
            raise
        except BaseException:
            up.breaker.release()
            raise
        finally:
            if not opened:
                up.in_flight -= 1
        raise status_failure(up, resp.status, resp.headers.get("Retry-After"), answer)


async def _in_process(up: Upstream, target: InProcess, path: str, body: bytes) -> bytes:
    """One attempt at an upstream that runs in this process: its answer, or ``Failed`` (never retried: it
    would fail the same way again)."""
    up.in_flight += 1
    try:
        answer = await target.post(path, body)
    except ChatgateError as exc:
        if exc.status < 500:  # the request's fault: the upstream is healthy
            raise Failed(exc, "rejected", retryable=False, health=Health.HEALTHY) from None
        raise Failed(exc, "failed", retryable=False) from None
    except Exception as exc:
        log.exception("in-process upstream failed", extra={"upstream": up.name})
        raise Failed(UpstreamError("The model failed to answer."), "failed", retryable=False) from exc
    except BaseException:
        up.breaker.release()
        raise
    finally:
        up.in_flight -= 1
    up.breaker.record_success()
    return answer


def _log_retry(failed: Upstream, attempt: int, why: Failed, wait: float, up: Upstream, model: str) -> None:
    log.info(
        "upstream retry",
        extra={
            "upstream": failed.name,
            "attempt": attempt,
            "reason": why.reason,
            "error_code": why.error.code,
            "upstream_status": why.error.details.get("upstream_status"),
            "wait_s": round(wait, 3),
            "retry_upstream": up.name,
            "retry_model": model,
        },
    )


def _attempt_facts(up: Upstream, attempt: int, failed: Failed, wait: float) -> dict[str, Any]:
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
