"""Liveness and readiness."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from chatgate import __version__
from chatgate.api.protocol import Health, Ready

router = APIRouter(tags=["health"])


@router.get("/health", summary="Liveness: the process is up (no API key needed)", response_model=Health)
async def health(request: Request) -> dict[str, Any]:
    return {"status": "ok", "version": __version__, "uptime_s": round(time.monotonic() - request.app.state.started, 3)}


@router.get(
    "/ready",
    summary="Readiness: at least one upstream answers",
    response_model=Ready,
    responses={503: {"model": Ready, "description": "No upstream is reachable"}},
)
async def ready(request: Request) -> JSONResponse:
    services = request.app.state.services
    reachable = await services.catalog.reachable()
    upstreams = {
        up.name: {"reachable": reachable[up.name], "circuit": up.breaker.state.value, "in_flight": up.in_flight}
        for up in services.upstream.router.upstreams
    }
    ok = any(reachable.values())
    return JSONResponse(
        {"status": "ready" if ok else "not_ready", "upstreams": upstreams}, status_code=200 if ok else 503
    )
