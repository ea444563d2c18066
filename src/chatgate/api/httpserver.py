"""The HTTP/1.1 server's limits on a request's head, enforced as its bytes arrive.

uvicorn's httptools protocol has no limit on the size of a request's head nor on its number of
header fields, and no time limit for a head to arrive: 64 MiB of headers were read and answered,
and kept the event loop busy meanwhile. ``LimitedHttpTools`` counts a head's bytes before handing
them to the parser (so it never holds more than ``server.max_header_bytes`` of one), counts its
fields, and gives it ``server.header_timeout`` seconds from its first byte. A refused request, and
one whose framing the parser rejects (``Content-Length: abc``, two ``Content-Length`` headers...),
gets the unified error body (431, 408 or 400) instead of uvicorn's plain text, then the connection
is closed (after a short linger, so the client reads the answer instead of a reset).

``GatewayConfig`` carries the limits to the protocol: it is uvicorn's ``Config`` with one more
attribute, pickled to every worker with the rest of it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import httptools
import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from chatgate.errors import ChatgateError, HeadersTooLarge, InvalidHTTP, RequestTimeout

log = logging.getLogger("chatgate.api")

# A refused connection is still read (and what comes discarded) for a moment before it is closed, so that a
# client still sending reads our answer instead of a reset; but not for long, nor for much.
LINGER_SECONDS = 1.0
LINGER_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class HeadLimits:
    max_bytes: int = 32 * 1024
    max_fields: int = 100
    timeout: float = 30.0


class GatewayConfig(uvicorn.Config):
    """uvicorn's configuration, plus the request-head limits ``LimitedHttpTools`` enforces."""

    def __init__(self, app: Any, *, head_limits: HeadLimits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.head_limits = head_limits


class _Refused(Exception):
    """Raised in a parser callback to stop the parser (it surfaces as ``HttpParserCallbackError``)."""


class LimitedHttpTools(HttpToolsProtocol):
    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits: HeadLimits = getattr(config, "head_limits", None) or HeadLimits()
        self._max_bytes = limits.max_bytes
        self._max_fields = limits.max_fields
        self._head_timeout = limits.timeout
        self._in_head = True  # the next bytes belong to a request's head
        self._head_bytes = 0
        self._heads = 0  # heads parsed on this connection
        self._head_started: float | None = None  # loop time the head's first bytes came
        self._head_timer: asyncio.TimerHandle | None = None
        self._refusal: ChatgateError | None = None  # why a parser callback stopped the parser
        self._refused = False
        self._discarded = 0

    # ---- bytes in ---------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._refused:  # lingering before the close: discarded
            self._discarded += len(data)
            if self._discarded > LINGER_BYTES:
                self.transport.close()
            return
        if not self._in_head:
            self._feed(data)
            return
        if self._head_started is None:
            self._head_started = self.loop.time()
        room = self._max_bytes - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            self._feed(data)
        else:  # more than the head may still take: feed what it may, and see whether the head ended in it
            self._head_bytes = self._max_bytes
            heads = self._heads
            self._feed(data[:room])
            if self._refused or self.transport.is_closing():
                return
            if self._heads == heads:  # still the same head, at the limit
                n = self._max_bytes
                error = HeadersTooLarge(f"The request's headers are larger than {n} bytes.", details={"max_bytes": n})
                self._refuse(error)
                return
            self.data_received(data[room:])  # the body (and maybe the next request's head, counted afresh)
            return
        # A head that came whole (the usual case) never needs a timer: only one still arriving does. (The next
        # request's head begun in the same bytes starts its clock with its next bytes.)
        if self._in_head and self._head_started is not None and self._head_timer is None and not self._refused:
            self._head_timer = self.loop.call_at(self._head_started + self._head_timeout, self._head_timed_out)

    def _feed(self, data: bytes) -> None:
        """uvicorn's ``data_received``, answering a parser error with the unified body and its reason."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            reason = self._refusal or InvalidHTTP(
                "The request is not valid HTTP/1.1.", details={"reason": str(exc)[:200]}
            )
            self._refuse(reason)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    # ---- parser callbacks -------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._heads += 1
        self._head_started = None
        self._cancel_head_timer()
        # Counted here, not per header (a Python call each): the byte limit bounds what was parsed meanwhile.
        if len(self.headers) > self._max_fields:
            n = self._max_fields
            self._refusal = HeadersTooLarge(
                f"A request may have at most {n} header fields.", details={"max_headers": n}
            )
            raise _Refused
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True  # what follows is the next request's head
        self._head_bytes = 0

    # ---- refusals ---------------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        self._refuse(InvalidHTTP("The request is not valid HTTP/1.1.", details={"reason": msg}))

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.cycle is not None and not self.cycle.response_complete and not self.transport.is_closing():
            # The head of a request sent while the previous one is still being answered: its clock starts
            # once that answer is out (approximately: from now), not in the middle of a stream.
            self._head_timer = self.loop.call_later(self._head_timeout, self._head_timed_out)
            return
        if self._in_head and not self._refused and not self.transport.is_closing():
            t = self._head_timeout
            self._refuse(
                RequestTimeout(
                    f"The request's headers did not arrive within {t:g} seconds.", details={"timeout_seconds": t}
                )
            )

    def _refuse(self, error: ChatgateError) -> None:
        """Answer ``error`` with the unified body and close the connection."""
        if self._refused:
            return
        self._refused = True
        self._cancel_head_timer()
        log.warning(
            "request refused by the HTTP server",
            extra={"status": error.status, "error": error.code, "client": self.client[0] if self.client else None},
        )
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # an earlier request's answer is still being written: no room for ours
            return
        body = orjson.dumps(error.body())
        head = [STATUS_LINE[error.status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\ncontent-length: ",
            str(len(body)).encode(),
            b"\r\nconnection: close\r\n\r\n",
            body,
        ]
        self.transport.write(b"".join(head))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)
