"""What the Redis-backed parts (limits, cache) share: a client that fails fast, and key-pattern escaping."""

from __future__ import annotations

import re

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
"""What a call raises when Redis cannot be reached (or answer in time)."""


def fail_fast_client(url: str, *, timeout: float, max_connections: int) -> Redis:
    """A client with its own blocking pool (callers queue for a connection) and no retries: ``timeout``
    seconds to connect, to answer and to get a connection, then the caller's fallback takes over."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
    return Redis.from_pool(pool)


def glob_escape(text: str) -> str:
    """``text`` as a literal in a ``SCAN MATCH`` pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)
