"""What models exist: discovered from upstreams' ``GET /models`` (cached with a TTL), plus aliases.

Also each model's context window as its upstreams report it (vLLM's ``max_model_len``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson

from chatgate.upstream.client import UpstreamClient
from chatgate.upstream.routing import Upstream

log = logging.getLogger("chatgate.upstream")

PROBE_TIMEOUT = 3.0
RETRY_FAILED_AFTER = 5.0  # seconds before asking an upstream that failed discovery again
WINDOW_FIELDS = ("max_model_len", "context_length", "context_window", "n_ctx")  # vLLM, OpenRouter, others, llama.cpp


def window_in(obj: dict[str, Any]) -> int | None:
    """The context window a ``/models`` object states, if any."""
    for name in WINDOW_FIELDS:
        value = obj.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


class ModelCatalog:
    def __init__(self, client: UpstreamClient, ttl: float) -> None:
        self.client = client
        self.router = client.router
        self.ttl = ttl
        self._objects: dict[str, dict[str, Any]] = {}
        self._next_fetch: dict[str, float] = {}
        self._refresh_lock = asyncio.Lock()
        # Upstreams with configured models are not discovered; their /models is read for windows only.
        self._probed_windows: dict[str, int] = {}
        self._probes: dict[str, asyncio.Task[None]] = {}
        self._next_probe: dict[str, float] = {}

    async def fetch(self, up: Upstream, timeout: float = PROBE_TIMEOUT) -> list[dict[str, Any]]:  # noqa: ASYNC109
        """The upstream's model objects. Raises on any failure."""
        async with asyncio.timeout(timeout):
            async with self.client.session.get(up.base_url + "/models", headers=self.client.headers_for(up)) as resp:
                resp.raise_for_status()
                data = orjson.loads(await resp.read())
        items = data.get("data", []) if isinstance(data, dict) else []
        return [m for m in items if isinstance(m, dict) and isinstance(m.get("id"), str)]

    async def refresh(self, force: bool = False) -> None:
        """Re-read model lists whose cache entry is older than the TTL (all of them when forced)."""
        async with self._refresh_lock:
            now = time.monotonic()
            stale = [
                u for u in self.router.upstreams if u.discovers and (force or now >= self._next_fetch.get(u.name, now))
            ]
            if not stale:
                return
            results = await asyncio.gather(*(self.fetch(u) for u in stale), return_exceptions=True)
            changed = False
            for up, result in zip(stale, results, strict=True):
                if isinstance(result, BaseException):
                    log.warning("model discovery failed", extra={"upstream": up.name, "error": type(result).__name__})
                    self._next_fetch[up.name] = now + min(self.ttl, RETRY_FAILED_AFTER)
                    continue  # keep what we knew
                self._next_fetch[up.name] = now + self.ttl
                for obj in result:
                    self._objects[f"{up.name}\0{obj['id']}"] = obj
                names = frozenset(m["id"] for m in result)
                changed = changed or names != up.discovered_models
                up.discovered_models = names
            if changed:
                self.router.rebuild()

    async def ensure_known(self, model: str) -> None:
        """Before refusing a model as unknown, re-read stale model lists: an upstream may have come up."""
        if not self.router.knows(model):
            await self.refresh()

    async def window_of(self, model: str) -> int | None:
        """The context window of ``model`` (aliases followed) from its upstreams' ``/models`` objects.

        The smallest when several upstreams serve it; None when none states one. Upstreams with
        configured models are not discovered: their ``/models`` is read here, at most once per TTL,
        concurrent callers sharing one read.
        """
        served = self.router.resolve(model)
        ups = self.router.served_models().get(served, [])
        now = time.monotonic()
        due = [u for u in ups if not u.discovers and u.remote and now >= self._next_probe.get(u.name, now)]
        if due:
            await asyncio.gather(*(asyncio.shield(self._probe(u)) for u in due), return_exceptions=True)
        windows = []
        for up in ups:
            key = f"{up.name}\0{served}"
            obj = self._objects.get(key)
            window = window_in(obj) if obj is not None else self._probed_windows.get(key)
            if window is not None:
                windows.append(window)
        return min(windows, default=None)

    def _probe(self, up: Upstream) -> asyncio.Task[None]:
        task = self._probes.get(up.name)
        if task is None:
            self._next_probe[up.name] = time.monotonic() + self.ttl  # answered or not: not again before the TTL
            task = self._probes[up.name] = asyncio.create_task(self._read_objects(up))
            task.add_done_callback(lambda _t: self._probes.pop(up.name, None))
        return task

    async def _read_objects(self, up: Upstream) -> None:
        try:
            result = await self.fetch(up)
        except Exception as exc:  # not every server has /models; the window may come from elsewhere
            log.info("model window lookup failed", extra={"upstream": up.name, "error": type(exc).__name__})
            return
        for obj in result:
            window = window_in(obj)
            if window is not None:
                self._probed_windows[f"{up.name}\0{obj['id']}"] = window

    async def listing(self) -> list[dict[str, Any]]:
        """``GET /v1/models``: served models, then aliases, each once."""
        await self.refresh()
        out: dict[str, dict[str, Any]] = {}
        for model, ups in self.router.served_models().items():
            for up in ups:
                obj = self._objects.get(f"{up.name}\0{model}")
                if obj is not None:
                    out.setdefault(model, {**obj, "object": "model"})
            out.setdefault(model, {"id": model, "object": "model", "created": 0, "owned_by": ups[0].name})
        for alias in self.router.aliases:
            served = self.router.resolve(alias)
            if alias not in out and served in out:
                out[alias] = {
                    "id": alias,
                    "object": "model",
                    "created": out[served].get("created", 0),
                    "owned_by": "chatgate",
                    "root": served,
                }
        return list(out.values())

    async def find(self, model_id: str) -> dict[str, Any] | None:
        for obj in await self.listing():
            if obj["id"] == model_id:
                return obj
        return None

    async def reachable(self) -> dict[str, bool]:
        """Upstream name -> whether it answered ``GET /models`` just now (for ``/ready``); one that runs in
        this process is there."""
        ups = [u for u in self.router.upstreams if u.remote]
        results = await asyncio.gather(*(self.fetch(u, timeout=2.0) for u in ups), return_exceptions=True)
        found = {u.name: not isinstance(r, BaseException) for u, r in zip(ups, results, strict=True)}
        return {u.name: found.get(u.name, True) for u in self.router.upstreams}
