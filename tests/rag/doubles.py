"""Test doubles for RAG: a deterministic embedder and a counting wrapper (the Embedder protocol)."""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from collections.abc import Sequence

from chatgate.rag.types import Embedder

_WORD = re.compile(r"\w+")


class HashEmbedder:
    """Hashed bag of words -> a fixed-size, L2-normalised vector: texts sharing words are close.

    ``delay``: seconds slept per call (a slow embedder, for interrupting an ingestion).
    """

    def __init__(self, dimension: int = 64, name: str = "test-hash", delay: float = 0.0) -> None:
        self._dimension = dimension
        self._name = name
        self.delay = delay

    @property
    def name(self) -> str:
        return self._name

    @property
    def dimension(self) -> int:
        return self._dimension

    def vector(self, text: str) -> list[float]:
        v = [0.0] * self._dimension
        for word in _WORD.findall(text.lower()):
            h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
            v[h % self._dimension] += 1.0 if (h >> 32) & 1 else -1.0
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v] if norm else [1.0 / math.sqrt(self._dimension)] * self._dimension

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if self.delay:
            await asyncio.sleep(self.delay)
        return [self.vector(t) for t in texts]

    async def close(self) -> None:
        return None


class CountingEmbedder:
    """Wraps an embedder and counts its calls and texts."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.calls = 0
        self.texts = 0

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls += 1
        self.texts += len(texts)
        return await self.inner.embed(texts)

    async def close(self) -> None:
        await self.inner.close()


class FailingEmbedder(HashEmbedder):
    """Fails every call whose texts contain ``poison``."""

    def __init__(self, poison: str, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.poison = poison

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if any(self.poison in t for t in texts):
            raise RuntimeError("embedding server down")
        return await super().embed(texts)
