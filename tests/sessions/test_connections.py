"""Requests in flight per user, and the per-user cap."""

from __future__ import annotations

import pytest

from chatgate.errors import RateLimited
from chatgate.sessions.connections import Connections


def test_connections_cap_and_counts():
    conns = Connections(max_per_user=2)
    a, b = conns.enter("u", "c1", "m1"), conns.enter("u", "c1", "m2")
    with pytest.raises(RateLimited) as err:
        conns.enter("u")
    assert err.value.status == 429 and err.value.retry_after == 1.0
    other = conns.enter("v")
    assert conns.in_flight("u") == 2 and conns.in_flight() == 3
    assert conns.overview()["conversations"] == 1 and conns.overview()["rejected"] == 1
    for c in (a, b, other, a):
        conns.leave(c)
    assert conns.in_flight() == 0 and conns.enter("u")
