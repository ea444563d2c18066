"""Liveness and readiness."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse

from chatgate import __version__
from chatgate.api import state
from chatgate.turn import Services


async def health(request: Request) -> JSONResponse:
    uptime = round(time.monotonic() - request.app.state.started, 3)
    return JSONResponse({"status": "ok", "version": __version__, "uptime_s": uptime})


async def ready(request: Request) -> JSONResponse:
    services: Services = request.app.state.services
    reachable = await services.catalog.reachable()
    store = {"reachable": await services.sessions.store.ping(), "queue": state.queue(services)}
    remote = [reachable[u.name] for u in services.upstream.router.upstreams if u.remote]
    ok = any(remote) and bool(store["reachable"])  # the local embedding model alone serves no chat
    body = {
        "status": "ready" if ok else "not_ready",
        "upstreams": state.upstreams(services, reachable),
        "store": store,
        "limits": services.admission.overview(),
        "context": services.fitter.stats,
        "tokens": services.counter.stats,
    }
    return JSONResponse(body, status_code=200 if ok else 503)
