"""The write-behind queue: the only path for durable writes from the request path.

The request path calls ``put(op)``: synchronous, never blocking, never raising, bounded (beyond
``max_size`` it drops and counts). A background task gathers ops for ``flush_interval`` seconds
and writes them in batches of up to ``batch_size``, one transaction per batch (see ``batch.py``).
A failing batch is rolled back and retried with backoff; a batch a constraint rejects is retried
one op per transaction so one bad op cannot sink its neighbours. ``close()`` drains the queue,
so a clean shutdown loses nothing.

``commit(ops)`` is the durable path (group commit): the ops join the queue, the flusher starts at
once instead of after ``flush_interval`` (also when it was already gathering a batch), and the call
returns when the batch holding them has committed, so a reply that waits for it survives a crash.
Whatever is queued meanwhile goes in the same transaction, so concurrent turns share one commit.

Each batch carries an id, inserted in its own transaction (``batch.apply``): a batch retried after a
commit whose outcome was lost (the connection dropped mid-commit) finds its id and is skipped, so
counters are never added twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections import deque
from typing import TYPE_CHECKING

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError

from chatgate.errors import ChatgateError
from chatgate.store.batch import (
    AddMessage,
    CountRequest,
    RecordRequest,
    SetBrief,
    TouchKey,
    UpsertConversation,
    UpsertUser,
    WriteOp,
    apply,
)

if TYPE_CHECKING:
    from chatgate.store.db import Store

__all__ = [
    "AddMessage",
    "CountRequest",
    "RecordRequest",
    "SetBrief",
    "TouchKey",
    "UpsertConversation",
    "UpsertUser",
    "WriteBehind",
    "WriteOp",
]

log = logging.getLogger("chatgate.store")
MAX_BACKOFF = 5.0


class StoreUnavailable(ChatgateError):
    """A write that had to be durable could not be committed."""

    status = 503
    code = "STORE_UNAVAILABLE"
    type = "server_error"


class _Waiter:
    """A ``commit`` caller: its ops are sequence numbers ``first..last``."""

    __slots__ = ("failed", "first", "future", "last")

    def __init__(self, first: int, last: int, future: asyncio.Future[None]) -> None:
        self.first, self.last, self.future, self.failed = first, last, future, False


def _rejected_by_data(exc: BaseException) -> bool:
    """An error the op itself causes (constraint, bad value), which retrying the same batch cannot fix."""
    if isinstance(exc, IntegrityError | DataError):
        return True
    return isinstance(exc, StatementError) and not isinstance(exc, DBAPIError)


def _error_name(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return f"{type(exc).__name__}/{type(orig).__name__}" if orig is not None else type(exc).__name__


class WriteBehind:
    """A bounded queue of write ops flushed to the store in batches by one background task.

    Metrics: ``depth`` (ops queued), ``drops`` (refused by ``put``: full or closed), ``written``
    (ops committed), ``failures`` (failed transaction attempts), ``rejected`` (single ops a
    constraint refused, dropped), ``lost`` (ops given up after every retry).
    """

    def __init__(
        self,
        store: Store,
        *,
        max_size: int = 100_000,
        batch_size: int = 1000,
        flush_interval: float = 0.05,
        max_retries: int = 3,
        retry_base: float = 0.1,
    ) -> None:
        self._store = store
        self._max_size = max_size
        self._batch_size = max(1, batch_size)
        self._flush_interval = flush_interval
        self._max_retries = max_retries
        self._retry_base = retry_base
        self._queue: deque[WriteOp] = deque()
        self._queued = 0  # ops ever queued (a sequence number per op)
        self._settled = 0  # ops ever taken off the queue and written (or given up), in order
        self._waiters: deque[_Waiter] = deque()
        self._urgent = False
        self._wake = asyncio.Event()
        self._hurry = asyncio.Event()  # a commit waits: stop gathering
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self.drops = 0
        self.written = 0
        self.failures = 0
        self.rejected = 0
        self.lost = 0
        self._id_prefix = os.urandom(8).hex()  # batch ids: random per process, then a counter
        self._batch_ids = itertools.count()

    @property
    def depth(self) -> int:
        return len(self._queue)

    def put(self, op: WriteOp) -> bool:
        """Queue ``op``; False (counted in ``drops``) when the queue is full or closed."""
        if self._closed or len(self._queue) >= self._max_size:
            self.drops += 1
            return False
        self._queue.append(op)
        self._queued += 1
        if not self._wake.is_set():
            self._wake.set()
        return True

    async def commit(self, ops: list[WriteOp]) -> None:
        """Queue ``ops`` and return once they are committed; ``StoreUnavailable`` if they could not be."""
        if not ops:
            return
        if self._closed or len(self._queue) + len(ops) > self._max_size:
            self.drops += len(ops)
            raise StoreUnavailable("The conversation could not be saved; try again.", retry_after=1.0)
        first = self._queued + 1
        for op in ops:
            self._queue.append(op)
        self._queued += len(ops)
        waiter = _Waiter(first, self._queued, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        self._urgent = True
        self._wake.set()
        self._hurry.set()
        await asyncio.shield(waiter.future)

    def _settle(self, n: int, ok: bool) -> None:
        """``n`` more ops (in queue order) were written (``ok``) or given up: answer the waiters they end."""
        start, self._settled = self._settled + 1, self._settled + n
        for waiter in self._waiters:
            if waiter.first > self._settled:
                break
            if not ok and waiter.last >= start:
                waiter.failed = True
        while self._waiters and self._waiters[0].last <= self._settled:
            waiter = self._waiters.popleft()
            if waiter.future.done():
                continue
            if waiter.failed:
                waiter.future.set_exception(
                    StoreUnavailable("The conversation could not be saved; try again.", retry_after=1.0)
                )
            else:
                waiter.future.set_result(None)

    async def start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._run(), name="chatgate-write-behind")

    async def close(self) -> None:
        """Write everything queued, then stop; ``put`` refuses ops afterwards."""
        self._closing = True
        self._wake.set()
        self._hurry.set()
        if self._task is not None:
            task, self._task = self._task, None
            await task
        while self._queue:
            await self.flush()
        self._closed = True

    async def flush(self) -> None:
        """Write every op queued at the time of the call (waiting for a batch already in flight)."""
        async with self._lock:
            remaining = len(self._queue)
            while remaining > 0 and self._queue:
                n = min(self._batch_size, remaining, len(self._queue))
                remaining -= n
                batch = [self._queue.popleft() for _ in range(n)]
                rejected = self.rejected
                ok = await self._write(batch)
                self._settle(n, ok and self.rejected == rejected)
                if not ok and self._closing and self._queue:
                    self.lost += len(self._queue)
                    log.error("store unavailable at shutdown: dropping %d queued writes", len(self._queue))
                    self._settle(len(self._queue), False)
                    self._queue.clear()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if not self._closing and not self._urgent:  # gather a batch, unless a commit or close comes first
                self._hurry.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), self._flush_interval)
            self._wake.clear()
            self._urgent = False
            try:
                await self.flush()
            except Exception:
                log.exception("store write-behind flusher error")
                await asyncio.sleep(self._flush_interval)
            if self._closing and not self._queue:
                return

    async def _write(self, ops: list[WriteOp]) -> bool:
        """Commit ``ops`` (retrying); False when they had to be given up."""
        delay = self._retry_base
        attempts = self._max_retries + 1
        batch_id = f"{self._id_prefix}{next(self._batch_ids):x}"
        for attempt in range(1, attempts + 1):
            try:
                async with self._store.engine.begin() as conn:
                    await apply(conn, ops, batch_id)
            except Exception as exc:
                self.failures += 1
                if _rejected_by_data(exc):
                    return await self._reject(ops, exc)
                log.warning(
                    "store write failed (%s), attempt %d of %d, %d ops", _error_name(exc), attempt, attempts, len(ops)
                )
                if attempt < attempts:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MAX_BACKOFF)
                continue
            self.written += len(ops)
            return True
        self.lost += len(ops)
        log.error("store write given up after %d attempts: %d ops dropped", attempts, len(ops))
        return False

    async def _reject(self, ops: list[WriteOp], exc: Exception) -> bool:
        if len(ops) == 1:
            self.rejected += 1
            log.error("store write rejected (%s): dropped one %s", _error_name(exc), type(ops[0]).__name__)
            return True
        log.warning("store batch rejected (%s): retrying its %d ops one by one", _error_name(exc), len(ops))
        for i, op in enumerate(ops):
            if not await self._write([op]):
                self.lost += len(ops) - i - 1
                return False
        return True
