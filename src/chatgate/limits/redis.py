"""The shared limiter: the slotted sliding window of ``base`` in Redis, one Lua script, one round trip.

Why our own Lua rather than the ``limits`` library: ``limits`` charges one limit per call
(``hit(item, *ids, cost=n)``) and has no way to check several limits and charge them all or none
in one atomic step, nor to give back part of a charge later (reconcile and refund). Both are what
this component is for, so the whole step is one script: every counter of a request is read,
pruned, checked and, only if all fit, charged, inside one ``EVALSHA`` (``EVAL`` when the server
answers ``NOSCRIPT``, e.g. after a restart). The script reads the clock with ``TIME``, so every
gateway process shares Redis's clock. ``limits``' own storages are then not used at all: the
memory backend is ``memory.MemoryLimiter``, for the same reasons. (Multi-key scripts need every
key on one node: a single Redis or a replicated primary, not Redis Cluster.)

Each counter is one hash ``<prefix><key>|<unit>|<window ms>``: field = slot number, value = units;
it expires ``SLOTS + 2`` slots after its last charge.

When Redis cannot be reached (connection refused, timeout): ``redis_errors`` is incremented, the
outage is logged once (and its end once), and the call either goes to a local ``MemoryLimiter``
(``fail_open``: each instance then limits on its own; its workers together, when the fallback is the
machine-wide ``SharedLimiter``) or raises ``LimiterUnavailable``.
Reconciling or refunding a Redis reservation during an outage is dropped (logged, counted).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from chatgate.limits.base import (
    SLOTS,
    Charge,
    Decision,
    Limit,
    Limiter,
    LimiterUnavailable,
    Reservation,
    refund_costs,
    slot_width,
)
from chatgate.limits.memory import MemoryLimiter
from chatgate.redis_client import UNREACHABLE, fail_fast_client, glob_escape

log = logging.getLogger("chatgate.limits")


# ARGV: mode ("acquire" | "usage" | "adjust"), SLOTS, then three per key:
#   acquire/usage: limit, slot width (ms), cost      adjust: slot, slot width (ms), delta
# acquire/usage return: allowed, blocked key index (0: none), retry ms, then per key: used, reset ms, slot.
SCRIPT = """
local mode = ARGV[1]
local nslots = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000

local function load(key, width)
  local cur = math.floor(now / width)
  local flat = redis.call('HGETALL', key)
  local slots, stale, total = {}, {}, 0
  for j = 1, #flat, 2 do
    local s, v = tonumber(flat[j]), tonumber(flat[j + 1])
    if s < cur - nslots then
      stale[#stale + 1] = flat[j]
    else
      slots[#slots + 1] = {s, v}
      total = total + v
    end
  end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  table.sort(slots, function(a, b) return a[1] < b[1] end)
  return cur, slots, total
end

local function leaves(slot, width)
  return math.max(0, (slot + nslots + 1) * width - now)
end

if mode == 'adjust' then
  for i = 1, #KEYS do
    local b = 3 + 3 * (i - 1)
    local field, width, delta = ARGV[b], tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
    local cur = math.floor(now / width)
    local held = tonumber(redis.call('HGET', KEYS[i], field) or '-1')
    if held >= 0 and tonumber(field) >= cur - nslots then
      if delta < -held then delta = -held end
      redis.call('HINCRBY', KEYS[i], field, delta)
    elseif delta > 0 then
      redis.call('HINCRBY', KEYS[i], tostring(cur), delta)
      redis.call('PEXPIRE', KEYS[i], math.ceil((nslots + 2) * width))
    end
  end
  return 1
end

local loaded, blocked, retry = {}, 0, 0
for i = 1, #KEYS do
  local b = 3 + 3 * (i - 1)
  local limit, width, cost = tonumber(ARGV[b]), tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  local cur, slots, total = load(KEYS[i], width)
  loaded[i] = {cur, slots, total, width, cost}
  local over = total + cost - limit
  if over > 0 and mode == 'acquire' then
    if blocked == 0 then blocked = i end
    local wait, freed = (nslots + 1) * width, 0
    for j = 1, #slots do
      freed = freed + slots[j][2]
      if freed >= over then wait = leaves(slots[j][1], width) break end
    end
    if wait > retry then retry = wait end
  end
end

local allowed = 0
if mode == 'acquire' and blocked == 0 then allowed = 1 end
local out = {allowed, blocked, math.ceil(retry)}
for i = 1, #KEYS do
  local cur, slots, total, width, cost = unpack(loaded[i])
  local oldest = slots[1] and slots[1][1]
  if allowed == 1 and cost > 0 then
    redis.call('HINCRBY', KEYS[i], tostring(cur), cost)
    redis.call('PEXPIRE', KEYS[i], math.ceil((nslots + 2) * width))
    total = total + cost
    oldest = oldest or cur
  end
  out[#out + 1] = total
  out[#out + 1] = oldest and math.ceil(leaves(oldest, width)) or 0
  out[#out + 1] = cur
end
return out
"""
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()


def _width_ms(window: float) -> str:
    return repr(slot_width(window) * 1000)


class RedisLimiter:
    """``Limiter`` on a shared Redis: exact across every gateway process using the same Redis and prefix."""

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = "chatgate:limits:",
        fail_open: bool = True,
        fallback: Limiter | None = None,
    ) -> None:
        self._redis = client
        self.prefix = prefix
        self.fail_open = fail_open
        self.fallback: Limiter = fallback or MemoryLimiter()
        self.redis_errors = 0  # calls that could not reach Redis
        self._down = False

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 1.0, max_connections: int = 64, **kwargs: Any) -> RedisLimiter:
        """A limiter with its own client: a blocking pool (callers queue for a connection), no retries
        (the caller falls back at once), ``timeout`` seconds to connect, to answer and to get a connection."""
        return cls(fail_fast_client(url, timeout=timeout, max_connections=max_connections), **kwargs)

    async def _run(self, keys: list[str], args: list[Any]) -> Any:
        try:
            try:
                result = await self._redis.evalsha(SCRIPT_SHA, len(keys), *keys, *args)
            except NoScriptError:
                result = await self._redis.eval(SCRIPT, len(keys), *keys, *args)
        except UNREACHABLE as exc:
            self.redis_errors += 1
            if not self._down:
                self._down = True
                action = "failing open to a local limiter" if self.fail_open else "failing closed"
                log.warning("rate limiter: Redis unreachable (%s), %s", exc, action)
            raise
        if self._down:
            self._down = False
            log.info("rate limiter: Redis reachable again")
        return result

    def _unavailable(self) -> LimiterUnavailable:
        return LimiterUnavailable(
            "Rate limiting is unavailable; try again shortly.", details={"backend": "redis"}, retry_after=1.0
        )

    async def _check(self, limits: Sequence[Limit], costs: Mapping[str, int], mode: str) -> list[int]:
        keys = [self.prefix + limit.counter for limit in limits]
        args: list[Any] = [mode, SLOTS]
        for limit in limits:
            args += [limit.limit, _width_ms(limit.window), costs.get(limit.unit, 0)]
        return [int(x) for x in await self._run(keys, args)]

    async def acquire(self, limits: Sequence[Limit], costs: Mapping[str, int]) -> Decision:
        if not limits:
            return Decision(True, Reservation(dict(costs), (), "redis"), None, {}, {}, 0.0)
        try:
            out = await self._check(limits, costs, "acquire")
        except UNREACHABLE:
            if self.fail_open:
                return await self.fallback.acquire(limits, costs)
            raise self._unavailable() from None
        allowed, blocked, retry_ms = out[0], out[1], out[2]
        per = [out[3 + 3 * i : 6 + 3 * i] for i in range(len(limits))]
        remaining = {lim.scope: max(0, lim.limit - used) for lim, (used, _, _) in zip(limits, per, strict=True)}
        reset_in = {lim.scope: ms / 1000 for lim, (_, ms, _) in zip(limits, per, strict=True)}
        if not allowed:
            return Decision(False, None, limits[blocked - 1], remaining, reset_in, retry_ms / 1000)
        charges = tuple(
            Charge(lim.counter, lim.unit, lim.window, slot, costs.get(lim.unit, 0))
            for lim, (_, _, slot) in zip(limits, per, strict=True)
        )
        return Decision(True, Reservation(dict(costs), charges, "redis"), None, remaining, reset_in, 0.0)

    async def reconcile(self, reservation: Reservation, actual: Mapping[str, int]) -> None:
        if reservation.origin != "redis":
            await self.fallback.reconcile(reservation, actual)
            return
        keys: list[str] = []
        args: list[Any] = ["adjust", SLOTS]
        for charge in reservation.charges:
            delta = actual.get(charge.unit, charge.amount) - charge.amount
            if delta:
                keys.append(self.prefix + charge.counter)
                args += [charge.slot, _width_ms(charge.window), delta]
        if not keys:
            return
        try:
            await self._run(keys, args)
        except UNREACHABLE:
            pass  # counted and logged by _run: the adjustment is lost, the charge stays as reserved

    async def refund(self, reservation: Reservation) -> None:
        await self.reconcile(reservation, refund_costs(reservation))

    async def usage(self, limits: Sequence[Limit]) -> dict[str, dict[str, float]]:
        try:
            out = await self._check(limits, {}, "usage")
        except UNREACHABLE:
            if self.fail_open:
                return await self.fallback.usage(limits)
            raise self._unavailable() from None
        result: dict[str, dict[str, float]] = {}
        for i, lim in enumerate(limits):
            used, reset_ms = out[3 + 3 * i], out[4 + 3 * i]
            result[lim.scope] = {
                "used": used,
                "limit": lim.limit,
                "remaining": max(0, lim.limit - used),
                "reset_in": reset_ms / 1000,
            }
        return result

    async def reset(self, key_prefix: str) -> int:
        """Delete one subject's counters (SCAN + UNLINK: a few round trips, admin only)."""
        await self.fallback.reset(key_prefix)
        pattern = glob_escape(self.prefix + key_prefix) + "[|:]*"
        deleted = 0
        try:
            batch: list[bytes] = []
            async for key in self._redis.scan_iter(match=pattern, count=500):
                batch.append(key)
                if len(batch) >= 500:
                    deleted += await self._redis.unlink(*batch)
                    batch = []
            if batch:
                deleted += await self._redis.unlink(*batch)
        except UNREACHABLE:
            self.redis_errors += 1
            raise self._unavailable() from None
        return deleted

    async def close(self) -> None:
        await self._redis.aclose()
        await self.fallback.close()
