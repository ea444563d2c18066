"""Embedders: the real local model, an OpenAI-compatible server (a real aiohttp one), the cache."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from chatgate.rag.embedders import (
    CachedEmbedder,
    EmbeddingError,
    LocalEmbedder,
    OpenAIEmbedder,
    build_embedder,
    bundled_model_path,
)
from chatgate.settings import EmbeddingSettings
from chatgate.upstream.backoff import Backoff
from tests.conftest import free_port


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


# -- the local model -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local() -> Iterator[LocalEmbedder]:
    emb = LocalEmbedder(batch_size=16, threads=2)
    emb.start()
    yield emb
    asyncio.run(emb.close())


def test_bundled_model_is_found_in_site_packages() -> None:
    path = bundled_model_path()
    assert (path / "modules.json").is_file()
    assert "site-packages" in str(path)


async def test_similar_sentences_are_closer(local: LocalEmbedder) -> None:
    a, b, c = await local.embed(
        [
            "A cat is sitting on the mat.",
            "A kitten rests on a rug.",
            "The central bank raised interest rates by half a point.",
        ]
    )
    assert local.name == "all-MiniLM-L6-v2"
    assert local.dimension == 384
    assert len(a) == len(b) == len(c) == 384
    for v in (a, b, c):
        assert math.isclose(math.hypot(*v), 1.0, rel_tol=1e-4)
    assert cosine(a, b) > 0.5
    assert cosine(a, b) > cosine(a, c) + 0.3


async def test_batches_keep_order_and_match_single_calls(local: LocalEmbedder) -> None:
    texts = [f"Document {i} is about {'sports' if i % 2 else 'cooking'} " + "and more " * (i % 7) for i in range(40)]
    calls: list[int] = []
    encode = local._encode

    def spy(batch: list[str]) -> list[list[float]]:
        calls.append(len(batch))
        return encode(batch)

    local._encode = spy  # type: ignore[method-assign]
    try:
        vectors = await local.embed(texts)
    finally:
        del local._encode
    assert calls == [16, 16, 8]
    singles = [(await local.embed([texts[i]]))[0] for i in (0, 13, 39)]
    for i, single in zip((0, 13, 39), singles, strict=True):
        assert cosine(vectors[i], single) > 0.9999
    assert await local.embed([]) == []


async def test_background_load_does_not_block_the_loop(local: LocalEmbedder) -> None:
    """Order, not durations: start() returns before the model is ready, and the event loop keeps running
    while it loads (a blocking load would let no tick run until it was ready)."""
    await local.wait_ready()  # torch and the library imported once; this measures a model load
    fresh = LocalEmbedder(batch_size=8, threads=1)
    ticks_while_loading = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks_while_loading
        while not done.is_set():
            await asyncio.sleep(0.005)
            if not fresh.ready:
                ticks_while_loading += 1

    fresh.start()
    assert not fresh.ready  # start() returned before the load finished
    task = asyncio.create_task(ticker())
    vectors = await fresh.embed(["embed waits for the load"])  # no explicit wait needed
    done.set()
    await task
    assert fresh.ready and len(vectors[0]) == 384
    assert fresh.load_seconds is not None
    assert ticks_while_loading >= 3, "the loop did not run while the model loaded"
    await fresh.close()


async def test_a_missing_model_is_an_embedding_error(tmp_path: Path) -> None:
    broken = LocalEmbedder(tmp_path / "nowhere", name="x", dimension=8)
    with pytest.raises(EmbeddingError, match="failed to load"):
        await broken.embed(["x"])
    with pytest.raises(EmbeddingError):  # the same error for every later caller
        await broken.wait_ready()
    await broken.close()


# -- an OpenAI-compatible server -------------------------------------------------------------------


@dataclass
class Script:
    """What the test server answers: queued failures first (status, headers), then embeddings."""

    failures: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    dimension: int = 3
    seen: list[dict[str, object]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    auth: list[str | None] = field(default_factory=list)


def fake_vector(text: str, dimension: int) -> list[float]:
    return [float(len(text) + k) for k in range(dimension)]


@pytest.fixture
async def server() -> AsyncIterator[tuple[TestServer, Script]]:
    script = Script()

    async def embeddings(request: web.Request) -> web.Response:
        body = await request.json()
        script.seen.append(body)
        script.times.append(time.perf_counter())
        script.auth.append(request.headers.get("Authorization"))
        if script.failures:
            status, headers = script.failures.pop(0)
            return web.json_response({"error": {"message": "not now"}}, status=status, headers=headers)
        data = [
            {"object": "embedding", "index": i, "embedding": fake_vector(t, script.dimension)}
            for i, t in enumerate(body["input"])
        ]
        data.reverse()  # servers may answer out of order: the index says where each goes
        return web.json_response({"object": "list", "data": data, "model": body["model"]})

    app = web.Application()
    app.router.add_post("/v1/embeddings", embeddings)
    async with TestServer(app) as srv:
        yield srv, script


def client(srv: TestServer, **kw: object) -> OpenAIEmbedder:
    kw.setdefault("backoff", Backoff(base=0.01, cap=5.0))
    return OpenAIEmbedder(str(srv.make_url("/v1")), "bge-small", api_key="sk-test", **kw)  # type: ignore[arg-type]


async def test_openai_batches_orders_normalises_and_learns_the_dimension(
    server: tuple[TestServer, Script],
) -> None:
    srv, script = server
    emb = client(srv, batch_size=2)
    assert not emb.ready
    texts = ["a", "bb", "ccc", "dddd", "eeeee"]
    vectors = await emb.embed(texts)
    assert emb.dimension == 3 and emb.name == "bge-small"
    assert [body["input"] for body in script.seen] == [["a", "bb"], ["ccc", "dddd"], ["eeeee"]]
    assert all(body["model"] == "bge-small" for body in script.seen)
    assert set(script.auth) == {"Bearer sk-test"}
    for text, vector in zip(texts, vectors, strict=True):
        raw = fake_vector(text, 3)
        norm = math.hypot(*raw)
        assert vector == pytest.approx([x / norm for x in raw])
    await emb.close()


async def test_openai_retries_503_and_429_honouring_retry_after(server: tuple[TestServer, Script]) -> None:
    srv, script = server
    script.failures = [(503, {}), (429, {"Retry-After": "1"})]
    emb = client(srv)
    vectors = await emb.embed(["hello"])
    assert len(vectors) == 1 and emb.requests == 3
    assert script.times[2] - script.times[1] >= 0.95  # waited as long as Retry-After asked
    await emb.close()


async def test_openai_gives_up_after_max_retries(server: tuple[TestServer, Script]) -> None:
    srv, script = server
    script.failures = [(500, {})] * 5
    emb = client(srv, max_retries=2)
    with pytest.raises(EmbeddingError, match="after 3 attempts: HTTP 500"):
        await emb.embed(["x"])
    assert emb.requests == 3
    await emb.close()


async def test_openai_client_errors_are_not_retried(server: tuple[TestServer, Script]) -> None:
    srv, script = server
    script.failures = [(400, {})]
    emb = client(srv)
    with pytest.raises(EmbeddingError, match=r"refused.*HTTP 400"):
        await emb.embed(["x"])
    assert emb.requests == 1
    await emb.close()


async def test_openai_dimension_mismatch_is_an_error(server: tuple[TestServer, Script]) -> None:
    srv, _ = server
    emb = client(srv, dimension=384)
    with pytest.raises(EmbeddingError, match="3 dimensions, 384 expected"):
        await emb.embed(["x"])
    await emb.close()


async def test_openai_wait_ready_probes_the_dimension(server: tuple[TestServer, Script]) -> None:
    srv, script = server
    script.dimension = 5
    emb = client(srv)
    with pytest.raises(RuntimeError, match="first answer"):
        _ = emb.dimension
    await emb.wait_ready()
    assert emb.dimension == 5 and len(script.seen) == 1
    await emb.close()


async def test_openai_connection_refused_is_retried_then_fails() -> None:
    emb = OpenAIEmbedder(f"http://127.0.0.1:{free_port()}/v1", "m", max_retries=2, backoff=Backoff(base=0.01, cap=0.05))
    with pytest.raises(EmbeddingError, match="after 3 attempts"):
        await emb.embed(["x"])
    assert emb.requests == 3
    await emb.close()


# -- the cache --------------------------------------------------------------------------------------


class CountingEmbedder:
    """A test double: vectors from the text, and a record of every call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    @property
    def name(self) -> str:
        return "counting"

    @property
    def dimension(self) -> int:
        return 2

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls.append(list(texts))
        return [[float(len(t)), 1.0] for t in texts]

    async def close(self) -> None:
        pass


async def test_cache_calls_inner_zero_times_on_repeat() -> None:
    inner = CountingEmbedder()
    cache = CachedEmbedder(inner, max_entries=100)
    first = await cache.embed(["alpha", "beta", "alpha"])
    assert inner.calls == [["alpha", "beta"]]  # a text repeated in one call is embedded once
    assert first == [[5.0, 1.0], [4.0, 1.0], [5.0, 1.0]]
    again = await cache.embed(["beta", "alpha"])
    assert inner.calls == [["alpha", "beta"]]  # 0 more calls
    assert again == [[4.0, 1.0], [5.0, 1.0]]
    assert (cache.hits, cache.misses) == (3, 2)
    again[0][0] = 99.0  # callers get copies
    assert (await cache.embed(["beta"]))[0] == [4.0, 1.0]
    mixed = await cache.embed(["alpha", "gamma"])
    assert inner.calls[-1] == ["gamma"] and mixed == [[5.0, 1.0], [5.0, 1.0]]
    assert cache.name == "counting" and cache.dimension == 2
    assert cache.stats == {"hits": 5, "misses": 3, "size": 3, "capacity": 100}


async def test_cache_is_an_lru() -> None:
    inner = CountingEmbedder()
    cache = CachedEmbedder(inner, max_entries=2)
    await cache.embed(["a", "b"])
    await cache.embed(["a"])  # a is now the most recent
    await cache.embed(["c"])  # evicts b
    assert len(cache) == 2
    await cache.embed(["a", "c"])
    assert inner.calls[-1] == ["c"]
    await cache.embed(["b"])
    assert inner.calls[-1] == ["b"]


async def test_cache_over_the_local_model(local: LocalEmbedder) -> None:
    cache = CachedEmbedder(local, max_entries=10)
    first = await cache.embed(["cached sentence"])
    calls = 0
    encode = local._encode

    def spy(batch: list[str]) -> list[list[float]]:
        nonlocal calls
        calls += 1
        return encode(batch)

    local._encode = spy  # type: ignore[method-assign]
    try:
        assert await cache.embed(["cached sentence"]) == first
    finally:
        del local._encode
    assert calls == 0


# -- settings --------------------------------------------------------------------------------------


def test_build_embedder_from_settings() -> None:
    emb = build_embedder(EmbeddingSettings())
    assert isinstance(emb, CachedEmbedder) and isinstance(emb.inner, LocalEmbedder)
    assert emb.name == "all-MiniLM-L6-v2" and emb.dimension == 384
    assert emb.inner.batch_size == EmbeddingSettings().batch_size
    raw = build_embedder(EmbeddingSettings(cache_entries=0, backend="openai", base_url="http://x/v1", dimension=8))
    assert isinstance(raw, OpenAIEmbedder) and raw.url == "http://x/v1/embeddings" and raw.dimension == 8
    with pytest.raises(ValueError, match="base_url"):
        build_embedder(EmbeddingSettings(backend="openai"))
