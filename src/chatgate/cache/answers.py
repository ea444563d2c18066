"""The cache step: the key of a request as it will be sent (or none: the cache is bypassed or the request
samples), the lookup (counted hit or miss), and storing a complete answer. Plain values in and out."""

from __future__ import annotations

from chatgate.cache.base import Entry, ResponseCache
from chatgate.cache.key import Scope, cache_key
from chatgate.observe.metrics import Metrics
from chatgate.settings import CacheSettings


class CachedAnswers:
    def __init__(self, cache: ResponseCache, settings: CacheSettings, metrics: Metrics) -> None:
        self.cache = cache
        self.settings = settings
        self.metrics = metrics

    def key(self, payload: dict[str, object], scope: Scope | None, opted_out: bool) -> str | None:
        """The cache key, or None when the caller opted out or the request samples."""
        if opted_out:
            return None
        return cache_key(payload, scope=scope, allow_sampling=self.settings.allow_sampling)

    async def get(self, key: str) -> Entry | None:
        entry = await self.cache.get(key)
        self.metrics.cache_lookups.inc(("miss" if entry is None else "hit",))
        return entry

    async def put(self, key: str | None, body: bytes | None) -> None:
        """Keep a complete answer (anything else, an error body or a cut-off stream, is not kept)."""
        if key is not None and body is not None and (entry := Entry.from_response(body)) is not None:
            await self.cache.set(key, entry)
