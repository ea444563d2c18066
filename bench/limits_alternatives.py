"""Prototypes of the mechanisms weighed against ``SharedLimiter`` for the workers' one limiter (timed by
``bench/limits_check.py --alternatives``). Each does a check's work for the same counters, not the whole
contract: enough to price the mechanism, not to use.

- ``MmapTable``: a fixed table of counters in a shared file (``mmap``), one ``flock`` per check, each
  counter a record of its ``SLOTS + 1`` slots found by its hash (no probing past a collision, no eviction,
  no prefix reset: a lower bound on what a real one would cost).
- ``SocketLimiter``: a ``MemoryLimiter`` in another process (as the supervisor would hold it), one
  request and answer per check over a Unix socket (orjson lines).
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import mmap
import multiprocessing
import os
import struct
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

from chatgate.limits import SLOTS, Limit, MemoryLimiter
from chatgate.limits.base import Decision, Reservation, slot_width

RECORD = struct.Struct("<16sd" + "q" * (2 * (SLOTS + 1)))


def _decision(allowed: bool) -> Decision:
    return Decision(allowed, Reservation({}, ()) if allowed else None, None, {}, {}, 0.0)


class MmapTable:
    def __init__(self, path: Path, records: int = 1 << 16) -> None:
        self.records = records
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(self.fd, records * RECORD.size)
        self.mm = mmap.mmap(self.fd, records * RECORD.size)

    async def acquire(self, limits: Sequence[Limit], costs: Mapping[str, int]) -> Decision:
        now = time.time()
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            seen = []
            allowed = True
            for limit in limits:
                digest = hashlib.blake2b(limit.counter.encode(), digest_size=16).digest()
                at = int.from_bytes(digest[:8], "little") % self.records * RECORD.size
                values = list(RECORD.unpack_from(self.mm, at)[2:])
                width = slot_width(limit.window)
                cur = int(now // width)
                total = sum(values[2 * j + 1] for j in range(SLOTS + 1) if values[2 * j] >= cur - SLOTS)
                allowed = allowed and total + costs.get(limit.unit, 0) <= limit.limit
                seen.append((at, digest, width, cur, values, limit))
            if allowed:
                for at, digest, width, cur, values, limit in seen:
                    j = cur % (SLOTS + 1)
                    if values[2 * j] != cur:
                        values[2 * j], values[2 * j + 1] = cur, 0
                    values[2 * j + 1] += costs.get(limit.unit, 0)
                    RECORD.pack_into(self.mm, at, digest, width, *values)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        return _decision(allowed)


def _serve(path: str) -> None:
    async def main() -> None:
        memory = MemoryLimiter()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while line := await reader.readline():
                asked = orjson.loads(line)
                d = await memory.acquire([Limit(*x) for x in asked["limits"]], asked["costs"])
                charges = (
                    [(c.counter, c.unit, c.window, c.slot, c.amount) for c in d.reservation.charges]
                    if d.reservation
                    else None
                )
                writer.write(orjson.dumps({"allowed": d.allowed, "remaining": d.remaining, "charges": charges}) + b"\n")

        server = await asyncio.start_unix_server(handle, path)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


class SocketLimiter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.process = multiprocessing.get_context("fork").Process(target=_serve, args=(str(path),), daemon=True)
        self.lock = asyncio.Lock()

    async def __aenter__(self) -> SocketLimiter:
        self.process.start()
        for _ in range(500):  # the server process binds the socket
            if self.path.exists():
                break
            await asyncio.sleep(0.01)
        self.reader, self.writer = await asyncio.open_unix_connection(str(self.path))
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.writer.close()
        self.process.kill()
        self.process.join()

    async def acquire(self, limits: Sequence[Limit], costs: Mapping[str, int]) -> Any:
        asked = {"limits": [(x.scope, x.key, x.limit, x.window, x.unit) for x in limits], "costs": costs}
        async with self.lock:
            self.writer.write(orjson.dumps(asked) + b"\n")
            answer = orjson.loads(await self.reader.readline())
        return _decision(answer["allowed"])
