"""Snapshots of the running gateway's parts, for ``/ready`` and the admin API (this process's view)."""

from __future__ import annotations

from typing import Any

from chatgate.turn import Services


def upstreams(services: Services, reachable: dict[str, bool] | None = None) -> dict[str, Any]:
    """Each upstream's circuit state and requests in flight (and whether it answered, when probed)."""
    out: dict[str, Any] = {}
    for up in services.upstream.router.upstreams:
        state: dict[str, Any] = {"circuit": up.breaker.state.value, "in_flight": up.in_flight}
        if reachable is not None:
            state = {"reachable": reachable[up.name], **state}
        out[up.name] = state
    return out


def queue(services: Services) -> dict[str, int]:
    """The write-behind queue: depth, drops, rows written, failed flushes."""
    writer = services.sessions.writer
    return {"depth": writer.depth, "drops": writer.drops, "written": writer.written, "failures": writer.failures}
