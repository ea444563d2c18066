"""The response cache: the key and cacheability of a request, one ``ResponseCache`` interface,
memory and Redis backends, and the replay of a cached answer as a stream."""

from chatgate.cache.base import CacheStats, Entry, ResponseCache, replay_sse
from chatgate.cache.key import Cacheability, Scope, cache_key, cacheability, normalise_text
from chatgate.cache.memory import MemoryCache
from chatgate.cache.redis import RedisCache

__all__ = [
    "CacheStats",
    "Cacheability",
    "Entry",
    "MemoryCache",
    "RedisCache",
    "ResponseCache",
    "Scope",
    "cache_key",
    "cacheability",
    "normalise_text",
    "replay_sse",
]
