"""Liveness and readiness."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse

from chatgate import __version__
from chatgate.pipeline import Services


async def health(request: Request) -> JSONResponse:
    uptime = round(time.monotonic() - request.app.state.started, 3)
    return JSONResponse({"status": "ok", "version": __version__, "uptime_s": uptime})


async def ready(request: Request) -> JSONResponse:
    services: Services = request.app.state.services
    reachable = await services.catalog.reachable()
    upstreams = {
        up.name: {"reachable": reachable[up.name], "circuit": up.breaker.state.value, "in_flight": up.in_flight}
        for up in services.upstream.router.upstreams
    }
    writer = services.sessions.writer
    queue = {"depth": writer.depth, "drops": writer.drops, "written": writer.written, "failures": writer.failures}
    store = {"reachable": await services.sessions.store.ping(), "queue": queue}
    ok = any(reachable.values()) and bool(store["reachable"])
    body = {
        "status": "ready" if ok else "not_ready",
        "upstreams": upstreams,
        "store": store,
        "limits": services.admission.overview(),
        "context": services.fitter.stats,
        "tokens": services.counter.stats,
    }
    return JSONResponse(body, status_code=200 if ok else 503)
