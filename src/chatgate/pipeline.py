"""The request path: every chat request, whatever door it came in by, goes through these steps.

1. identify -- who is calling (the API key, checked by ``api/middleware.ApiKeyAuth``).
2. route    -- the model must be known; stale discovered model lists are re-read first.
3. call     -- the upstream chosen by model routing, with retries, fallbacks and breakers;
               streams are relayed as they arrive.
4. account  -- usage recorded on the turn for logs (and, later, analytics and limits).

Sessions, admission, context fitting, grounding and caching slot in between identify and call
as their issues land. Nothing here knows about HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from chatgate.identity.keys import Principal
from chatgate.upstream.catalog import ModelCatalog
from chatgate.upstream.client import CallTrace, UpstreamClient
from chatgate.upstream.stream import Relay, ask_for_usage


@dataclass(slots=True)
class Services:
    """What the pipeline calls; built once in ``app.py`` and kept on the app."""

    upstream: UpstreamClient
    catalog: ModelCatalog


@dataclass(slots=True)
class Turn:
    """One request on its way through the pipeline."""

    payload: dict[str, Any]
    raw: bytes | None  # the exact request bytes, sent on as they are while the payload is unchanged
    principal: Principal | None = None
    trace: CallTrace = field(default_factory=CallTrace)
    usage: dict[str, Any] | None = None

    @property
    def stream(self) -> bool:
        return self.payload.get("stream") is True

    def record_usage(self, usage: dict[str, Any]) -> None:
        self.usage = usage


async def chat(services: Services, turn: Turn) -> bytes | Relay:
    """A chat completion: the upstream's JSON body, or an iterator of SSE bytes when streaming."""
    await services.catalog.ensure_known(turn.payload["model"])
    if turn.stream:
        payload, include_usage = ask_for_usage(turn.payload)
        raw = turn.raw if payload is turn.payload else None
        opened = await services.upstream.open("/chat/completions", payload, raw, turn.trace)
        return Relay(opened, include_usage=include_usage, on_usage=turn.record_usage)
    body = await services.upstream.call("/chat/completions", turn.payload, turn.raw, turn.trace)
    turn.usage = usage_of(body)
    return body


async def embeddings(services: Services, turn: Turn) -> bytes:
    await services.catalog.ensure_known(turn.payload["model"])
    body = await services.upstream.call("/embeddings", turn.payload, turn.raw, turn.trace)
    turn.usage = usage_of(body)
    return body


def usage_of(body: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    usage = data.get("usage") if isinstance(data, dict) else None
    return usage if isinstance(usage, dict) else None
