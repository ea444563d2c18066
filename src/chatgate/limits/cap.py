"""Stopping a stream whose upstream writes past its reservation once the caller's token limit is spent.

The admit step reserves the prompt and the completion budget (``max_tokens``, else
``limits.default_max_tokens_reservation``). An upstream that honours ``max_tokens`` never writes past
it; one that ignores it could write on for as long as it likes, and reconciling after the stream would
charge all of it. So while a stream passes, its completion is counted (the model's tokenizer, over the
reply's text and reasoning), and once it has run past the completion reserved, the limiter is asked
whether the extra has spent a token limit (``used`` with this reservation in it, plus the extra, at or
over ``limit``). When it has, the relay ends the stream as an upstream stopping at its length would: a
last chunk with ``finish_reason: "length"``, then the door's tail and ``[DONE]``. What was sent is
charged (the reply counted, as for any stream without a usage chunk).

Cheap when nothing is at stake: nothing is parsed or counted while the stream's bytes are fewer than
the completion reserved (a token is at least one byte); after that the reply is counted every
``CHECK_EVERY`` chunks, and the limiter asked only once past the reservation. So a stream stops at most
``CHECK_EVERY`` chunks after the limit was spent. Not covered: tool-call arguments (not counted), the
streams of the tool loop (``tools/loop.py``: each step's answer is charged when the loop ends), and a
non-streamed answer, which cannot be stopped midway (its bound is in ``base.py``). A stopped answer is not
kept in the response cache.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from chatgate.limits.base import Limit, Limiter

if TYPE_CHECKING:
    from chatgate.upstream.stream import ReplyBuffer

log = logging.getLogger("chatgate.limits")

CHECK_EVERY = 16
"""Chunks between counts of the reply, once its bytes could exceed the reservation."""


class StreamCap:
    """One stream's watch on its token limits (``Relay``'s ``cap``): ``feed`` each data chunk (after the reply
    took it); when it says so, ``await spent()``: True means stop."""

    def __init__(
        self,
        limiter: Limiter,
        lines: Sequence[Limit],
        reserved: int,
        reply: ReplyBuffer,
        count: Callable[[str], int],
    ) -> None:
        self.limiter = limiter
        self.lines = list(lines)  # the request's token limits
        self.reserved = reserved  # completion tokens reserved
        self.reply = reply
        self.count = count
        self.bytes = 0
        self.chunks = 0
        self.tokens: int | None = None  # completion tokens so far, once counting
        self._parts = 0  # reply parts (text, reasoning) already counted
        self._thoughts = 0
        self.stopped = False

    def feed(self, data: bytes) -> bool:
        """Take one data chunk; whether the limiter must now be asked (the reply has passed the reservation)."""
        self.chunks += 1
        if self.tokens is None:
            self.bytes += len(data)
            if self.bytes <= self.reserved:
                return False
            self.tokens = 0
        elif self.chunks % CHECK_EVERY:
            return False
        reply = self.reply
        reply.text  # noqa: B018 -- parses the chunks it kept unparsed
        new = reply.parts[self._parts :] + reply.reasoning[self._thoughts :]
        self._parts, self._thoughts = len(reply.parts), len(reply.reasoning)
        if new:
            self.tokens += self.count("".join(new))
        return self.tokens > self.reserved

    async def spent(self) -> bool:
        """Whether the extra past the reservation has spent one of the token limits (never raises: a limiter
        that cannot answer lets the stream go on)."""
        extra = (self.tokens or 0) - self.reserved
        try:
            usage = await self.limiter.usage(self.lines)
        except Exception as exc:
            log.warning("rate limiter: checking a stream's budget failed (%s)", type(exc).__name__)
            return False
        self.stopped = any(usage[line.scope]["used"] + extra >= line.limit for line in self.lines)
        return self.stopped
