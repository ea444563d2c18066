"""The admin API (keys with the ``admin`` scope; to anyone else these routes do not exist): a snapshot of every
subsystem, users, requests in flight, per-user limits, the response cache, analytics."""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from chatgate.api import state
from chatgate.api.chat_api import session_json
from chatgate.api.middleware import info
from chatgate.api.query import int_param
from chatgate.api.rag import collection_json, job_json
from chatgate.api.responses import json_response, no_route
from chatgate.errors import BadRequest, NotFound
from chatgate.identity.keys import ADMIN
from chatgate.identity.model import check_id
from chatgate.limits.policy import lines_for_user, subject_of
from chatgate.rag.service import Rag
from chatgate.store.analytics import EXPORT_COLUMNS
from chatgate.store.repos import UserRow
from chatgate.turn import Services


def _admin(request: Request) -> Services:
    """The services, for a caller with the ``admin`` scope; anyone else gets the unknown-route 404."""
    principal = info(request.scope).principal
    if principal is None or "admin" not in principal.scopes:
        raise no_route(request)  # not revealed
    return request.app.state.services  # type: ignore[no-any-return]


async def _key_ids(services: Services, user_id: str) -> list[str | None]:
    """The keys whose calls can be charged to ``user_id``: its own (a JWT sign-in's for a ``jwt:`` user), else
    the trusted forwarders' (the bootstrap admin key's, and stored keys with that scope), which limit the end
    users they forward one by one."""
    if user_id.startswith("ip:"):
        return [None]
    keys = await services.sessions.store.keys.list()
    own: list[str | None] = [k.id for k in keys if k.user_id == user_id]
    if user_id.startswith("jwt:"):
        own.append("jwt")
    if own:
        return own
    return [ADMIN.key_id, *(k.id for k in keys if "trusted_forwarder" in k.scopes)]


async def _limit_status(services: Services, user_id: str, key_id: str | None = None) -> list[dict[str, Any]]:
    """Each limit line enforced on ``user_id``'s calls (with ``key_id`` only: on the calls made with that key),
    the keys it applies to, and its current usage. Lines are those the admit step builds (``limits_for``)."""
    key_ids = [key_id] if key_id is not None else await _key_ids(services, user_id)
    out = []
    for line, keys in lines_for_user(services.admission.settings, user_id, key_ids):
        used = (await services.admission.limiter.usage([line]))[line.scope]
        out.append(
            {
                "scope": line.scope,
                "unit": line.unit,
                "window_seconds": line.window,
                "limit": line.limit,
                "key_ids": keys,
                "used": int(used["used"]),
                "remaining": max(0, line.limit - int(used["used"])),
                "reset_in_seconds": round(used["reset_in"], 3),
            }
        )
    return out


async def get_user_limits(request: Request) -> Response:
    """``GET /admin/users/{user_id}/limits`` (``?key_id=``: the calls made with that key): each limit line enforced
    with its current usage."""
    services = _admin(request)
    user_id = request.path_params["user_id"]
    key_id = request.query_params.get("key_id") or None
    if key_id is not None:
        check_id("key_id", key_id)
    return json_response(
        {
            "user_id": user_id,
            "enabled": services.admission.settings.enabled,
            "backend": services.admission.backend,
            "limits": await _limit_status(services, user_id, key_id),
        }
    )


async def reset_user_limits(request: Request) -> Response:
    """``POST /admin/users/{user_id}/limits/reset``: forget the user's usage in every window."""
    services = _admin(request)
    user_id = request.path_params["user_id"]
    cleared = await services.admission.limiter.reset(subject_of(user_id))
    return json_response({"user_id": user_id, "reset": True, "counters_cleared": cleared})


async def cache_stats(request: Request) -> Response:
    """``GET /admin/cache/stats``: total, valid, expired, hits, misses, hit rate, bytes, TTL."""
    services = _admin(request)
    if services.answers is None:
        return json_response({"enabled": False})
    return json_response({"enabled": True, **(await services.answers.cache.stats()).as_dict()})


async def cache_clear(request: Request) -> Response:
    """``DELETE /admin/cache``: drop every cached answer."""
    services = _admin(request)
    cleared = await services.answers.cache.clear() if services.answers is not None else 0
    return json_response({"cleared": cleared})


async def get_user(request: Request) -> Response:
    """``GET /admin/users/{user_id}``: the user, their sessions (newest first, ``?limit=``), rate-limit status,
    requests in flight and an analytics summary (``?from=&to=``, default the last 24 hours)."""
    services = _admin(request)
    user_id = request.path_params["user_id"]
    store = services.sessions.store
    limit = int_param(request, "limit", 20, 1, 500)
    from_, to = _window(request)
    await services.sessions.writer.flush()  # the user, sessions and requests recorded so far are in
    user = await store.users.get(user_id)
    conversations = await store.conversations.list_for_user(user_id, limit=limit)
    analytics = await store.analytics.summary(from_, to, user_id=user_id)
    if user is None and not conversations and not analytics["requests"] and not services.connections.in_flight(user_id):
        raise NotFound("No such user.", details={"user_id": user_id})
    return json_response(
        {
            "user_id": user_id,
            "user": None
            if user is None
            else {
                "name": user.name,
                "email": user.email,
                "role": user.role,
                "source": user.source,
                "disabled": user.disabled,
                "created_at": user.created_at.isoformat(),
                "last_seen_at": user.last_seen_at.isoformat(),
            },
            "sessions": {
                **await store.conversations.stats(user_id),
                "recent": [session_json(row) for row in conversations],
            },
            "in_flight": services.connections.in_flight(user_id),
            "limits": await _limit_status(services, user_id),
            "analytics": analytics,
        }
    )


def _user_json(user: UserRow) -> dict[str, Any]:
    return {
        "user_id": user.id,
        "name": user.name,
        "email": user.email,
        "role": user.role,
        "source": user.source,
        "disabled": user.disabled,
        "created_at": user.created_at.isoformat(),
        "last_seen_at": user.last_seen_at.isoformat(),
    }


async def list_users(request: Request) -> Response:
    """``GET /admin/users?query=&limit=&offset=``: users whose id, name or e-mail contains ``query``, last seen
    first, and how many match."""
    services = _admin(request)
    query = request.query_params.get("query", "").strip()
    if len(query) > 200:
        raise BadRequest("'query' must be at most 200 characters.", details={"field": "query"})
    limit = int_param(request, "limit", 50, 1, 500)
    offset = int_param(request, "offset", 0, 0, 10**9)
    await services.sessions.writer.flush()  # users seen so far are in
    rows, total = await services.sessions.store.users.search(query, limit=limit, offset=offset)
    return json_response(
        {"object": "list", "data": [_user_json(u) for u in rows], "total": total, "limit": limit, "offset": offset}
    )


def _rag(request: Request) -> Rag:
    services = _admin(request)
    if services.rag is None:
        raise no_route(request)
    return services.rag


async def list_collections(request: Request) -> Response:
    """``GET /admin/collections``: every collection, whoever owns it, with its documents counted by status."""
    rag = _rag(request)
    rows = await rag.repo.list_collections()
    descriptions = await rag.descriptions([r.id for r in rows])
    counts = await rag.repo.document_counts()
    data = [{**collection_json(r, descriptions.get(r.id)), "documents": counts.get(r.id, {})} for r in rows]
    return json_response({"object": "list", "data": data})


async def list_jobs(request: Request) -> Response:
    """``GET /admin/jobs?limit=``: every collection's ingestion jobs, newest first."""
    rag = _rag(request)
    jobs = await rag.jobs.recent_jobs(int_param(request, "limit", 50, 1, 500))
    return json_response({"object": "list", "data": [job_json(j) for j in jobs]})


async def connections(request: Request) -> Response:
    """``GET /admin/connections``: requests in flight (this process) by user and conversation, oldest first."""
    services = _admin(request)
    return json_response(
        {"pid": os.getpid(), **services.connections.listing(int_param(request, "limit", 1000, 1, 100_000))}
    )


async def snapshot(request: Request) -> Response:
    """``GET /admin/metrics``: every subsystem at a glance, as JSON. Counters are this process's (with several
    workers, each answers for itself; ``/metrics`` merges them); analytics cover every instance (last hour)."""
    services = _admin(request)
    now = datetime.now(UTC)
    await services.sessions.writer.flush()
    analytics = await services.sessions.store.analytics.summary(now - timedelta(hours=1), now)
    return json_response(
        {
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - request.app.state.started, 3),
            "sessions": {**services.sessions.overview(), **await services.sessions.store.conversations.stats(None)},
            "connections": services.connections.overview(),
            "limits": services.admission.overview(),
            "cache": {"enabled": False}
            if services.answers is None
            else {"enabled": True, **(await services.answers.cache.stats()).as_dict()},
            "analytics": {"window": "last hour", **{k: analytics[k] for k in _HEADLINE if k in analytics}},
            "upstreams": state.upstreams(services),
            "queue": state.queue(services),
            "context": services.fitter.stats,
            "tokens": services.counter.stats,
            "rag": services.rag.overview() if services.rag is not None else None,
        }
    )


_HEADLINE = (
    "requests",
    "errors",
    "error_rate",
    "cached",
    "cache_hit_rate",
    "streams",
    "tokens_in",
    "tokens_out",
    "latency_ms",
)


# ---- analytics ------------------------------------------------------------------------------------


EARLIEST, LATEST = datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)


def _window(request: Request) -> tuple[datetime, datetime]:
    """``?from=&to=`` (ISO 8601; without a zone: UTC); default: the last 24 hours. ``from`` not before ``to``
    is an empty window (not an error: every pair of times is a window)."""

    def parse(name: str) -> datetime | None:
        raw = request.query_params.get(name)
        if raw is None:
            return None
        try:
            value = datetime.fromisoformat(raw)
        except ValueError:
            raise BadRequest(f"'{name}' must be an ISO 8601 time.", details={"field": name}) from None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        try:
            return value.astimezone(UTC)
        except OverflowError:  # within a day of year 1 or 9999: the earliest or latest time there is
            return EARLIEST if value.year == 1 else LATEST

    to = parse("to") or datetime.now(UTC)
    from_ = parse("from") or (to - timedelta(hours=24) if to - EARLIEST > timedelta(hours=24) else EARLIEST)
    return from_, to  # from_ not before to: an empty window


async def _analytics(request: Request) -> tuple[Services, datetime, datetime]:
    services = _admin(request)
    from_, to = _window(request)
    await services.sessions.writer.flush()  # every request recorded so far is in
    return services, from_, to


async def analytics_global(request: Request) -> Response:
    """``GET /admin/analytics/global?from=&to=``: everyone's totals, by kind, model and hour."""
    services, from_, to = await _analytics(request)
    return json_response(await services.sessions.store.analytics.summary(from_, to))


async def analytics_user(request: Request) -> Response:
    """``GET /admin/analytics/users/{user_id}?from=&to=``."""
    services, from_, to = await _analytics(request)
    user_id = request.path_params["user_id"]
    return json_response(
        {"user_id": user_id, **await services.sessions.store.analytics.summary(from_, to, user_id=user_id)}
    )


async def analytics_chat(request: Request) -> Response:
    """``GET /admin/analytics/chats/{chat_id}?from=&to=``: one conversation, from its raw rows."""
    services, from_, to = await _analytics(request)
    chat_id = request.path_params["chat_id"]
    summary = await services.sessions.store.analytics.summary(from_, to, conversation_id=chat_id)
    return json_response({"chat_id": chat_id, **summary})


async def analytics_export(request: Request) -> Response:
    """``GET /admin/analytics/export?from=&to=&user_id=&chat_id=&format=json|csv``: the raw rows."""
    services, from_, to = await _analytics(request)
    fmt = request.query_params.get("format", "json")
    if fmt not in ("json", "csv"):
        raise BadRequest("'format' must be json or csv.", details={"field": "format"})
    rows = services.sessions.store.analytics.export_rows(
        from_, to, user_id=request.query_params.get("user_id"), conversation_id=request.query_params.get("chat_id")
    )
    if fmt == "json":
        return json_response([row async for row in rows])

    async def lines() -> AsyncIterator[bytes]:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(EXPORT_COLUMNS)
        async for row in rows:
            writer.writerow(_csv_value(row[c]) for c in EXPORT_COLUMNS)
            if out.tell() > 64 * 1024:
                yield out.getvalue().encode()
                out.seek(0)
                out.truncate()
        yield out.getvalue().encode()

    return StreamingResponse(
        lines(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="chatgate-requests.csv"'},
    )


def _csv_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value
