"""The machine-wide limiter's own behaviour (the contract it shares is in ``test_contract.py``)."""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path

from chatgate.limits import Limit, SharedLimiter
from chatgate.limits.base import SLOTS


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_slots_that_left_their_window_are_swept(tmp_path: Path) -> None:
    clock = Clock()
    lim = SharedLimiter(tmp_path / "limits.sqlite", clock=clock, sweep_interval=3600)
    line = Limit("user:requests_per_minute", "u:a", 5, 60.0, "requests")
    assert (await lim.acquire([line], {"requests": 2})).allowed
    assert await lim.sweep() == 0  # still counted
    clock.now += 60 + 60 / SLOTS + 1
    assert (await lim.usage([line]))["user:requests_per_minute"]["used"] == 0
    assert await lim.sweep() == 1
    await lim.close()


async def test_counts_survive_a_restart_and_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "limits.sqlite"
    line = Limit("user:tokens_per_hour", "u:a", 1000, 3600.0, "tokens")
    first = SharedLimiter(path)
    assert (await first.acquire([line], {"tokens": 700})).allowed
    await first.close()
    again = SharedLimiter(path)
    assert not (await again.acquire([line], {"tokens": 400})).allowed
    assert (await again.usage([line]))["user:tokens_per_hour"]["used"] == 700
    await again.close()
    for name in ("limits.sqlite", "limits.sqlite.lock"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600


async def test_a_held_flock_does_not_block_the_event_loop(tmp_path: Path) -> None:
    """Another worker holds the lock: the check waits for it, and the loop's other work goes on meanwhile."""
    lim = SharedLimiter(tmp_path / "limits.sqlite")
    other = os.open(tmp_path / "limits.sqlite.lock", os.O_RDWR)
    fcntl.flock(other, fcntl.LOCK_EX)  # a separate open file description: as another process's
    line = Limit("user:requests_per_minute", "u:a", 5, 60.0, "requests")
    events: list[str] = []

    async def check() -> None:
        events.append("check asked")
        assert (await lim.acquire([line], {"requests": 1})).allowed
        events.append("check done")

    async def meanwhile() -> None:
        await asyncio.sleep(0)
        events.append("other work ran")
        fcntl.flock(other, fcntl.LOCK_UN)  # the other worker is done

    await asyncio.gather(check(), meanwhile())
    assert events == ["check asked", "other work ran", "check done"]
    os.close(other)
    await lim.close()
