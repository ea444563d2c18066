"""The memory backend on a hand-driven clock: exact window edges, and staying bounded."""

from __future__ import annotations

from chatgate.limits import SLOTS, Limit, MemoryLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def req(limit: int, key: str = "u:t", window: float = 60.0) -> Limit:
    return Limit("user:requests_per_minute", key, limit, window, "requests")


async def test_a_charge_leaves_between_w_and_w_plus_one_slot() -> None:
    clock = Clock()
    mem = MemoryLimiter(clock=clock)
    limits = [req(1)]
    width = 60.0 / SLOTS
    clock.now = 1000.0 * width + 0.5  # just after a slot starts
    assert (await mem.acquire(limits, {"requests": 1})).allowed
    clock.now += 60.0  # a true moving window would admit now; ours still counts the charge
    refused = await mem.acquire(limits, {"requests": 1})
    assert not refused.allowed and refused.retry_after == (1000 + SLOTS + 1) * width - clock.now
    clock.now += refused.retry_after
    assert (await mem.acquire(limits, {"requests": 1})).allowed
    # Any 60 s interval never held more than the limit: the two charges are > 60 s apart.
    assert clock.now - (1000.0 * width + 0.5) <= 60.0 + width


async def test_reconcile_after_the_slot_left_charges_the_extra_now() -> None:
    clock = Clock()
    mem = MemoryLimiter(clock=clock)
    limits = [Limit("t", "u:t", 1000, 60.0, "tokens")]
    d = await mem.acquire(limits, {"tokens": 100})
    assert d.reservation is not None
    clock.now += 70.0
    await mem.reconcile(d.reservation, {"tokens": 50})  # a refund of a charge already gone: nothing
    assert (await mem.usage(limits))["t"]["used"] == 0
    await mem.reconcile(d.reservation, {"tokens": 400})  # 300 more spent than reserved: counted now
    assert (await mem.usage(limits))["t"]["used"] == 300


async def test_stays_bounded_by_max_keys() -> None:
    clock = Clock()
    mem = MemoryLimiter(max_keys=100, clock=clock)
    for i in range(1000):
        assert (await mem.acquire([req(5, key=f"u:{i}")], {"requests": 1})).allowed
        assert len(mem) <= 100
    assert mem.evicted == 900  # every counter was live: least recently used went first
    assert (await mem.usage([req(5, key="u:999")]))["user:requests_per_minute"]["used"] == 1
    assert (await mem.usage([req(5, key="u:0")]))["user:requests_per_minute"]["used"] == 0


async def test_stale_counters_are_swept_before_evicting_live_ones() -> None:
    clock = Clock()
    mem = MemoryLimiter(max_keys=100, sweep_interval=3600, clock=clock)
    for i in range(100):
        await mem.acquire([req(5, key=f"old:{i}", window=1.0)], {"requests": 1})
    clock.now += 2.0  # every "old" counter is now empty
    await mem.acquire([req(5, key="u:new")], {"requests": 1})
    assert len(mem) == 1 and mem.evicted == 0


async def test_periodic_sweep() -> None:
    clock = Clock()
    mem = MemoryLimiter(sweep_interval=10.0, clock=clock)
    for i in range(50):
        await mem.acquire([req(5, key=f"u:{i}", window=1.0)], {"requests": 1})
    assert len(mem) == 50
    clock.now += 11.0
    await mem.acquire([req(5, key="u:x", window=1.0)], {"requests": 1})
    assert len(mem) == 1
