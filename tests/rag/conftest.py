"""RAG fixtures: the store on SQLite and PostgreSQL (as in tests/store), a real on-disk Chroma, and the
parts wired together with the deterministic test embedder."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from chatgate.app import build_lexical
from chatgate.rag.chunking import Chunker
from chatgate.rag.dense import DenseIndex
from chatgate.rag.ingest import Ingestor, Parser, SourceFile
from chatgate.rag.jobs import JobRepo
from chatgate.rag.lexical import LexicalIndex
from chatgate.rag.loaders import parse
from chatgate.rag.repo import CollectionRow, RagRepo
from chatgate.rag.retrieve import Retriever
from chatgate.settings import RetrievalSettings, Settings
from chatgate.store import Store
from tests.integration.cluster import ChromaServer, chroma_server  # noqa: F401  (chroma_server: a fixture)
from tests.rag.doubles import CountingEmbedder, HashEmbedder
from tests.store.conftest import PG_URL, _reset_pg, pg_url  # noqa: F401  (pg_url: a fixture)


def words(text: str) -> int:
    return len(text.split())


def test_parser(size: int = 40, overlap: int = 5) -> Parser:
    return Parser(parse, Chunker(words, size, overlap).chunk)


test_parser.__test__ = False  # type: ignore[attr-defined]


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path, pg_url: str | None) -> str:  # noqa: F811
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/chatgate.db"
    if pg_url is None:
        pytest.fail(f"PostgreSQL not reachable at {PG_URL}: the RAG store tests need it (see README)")
    await _reset_pg(pg_url)
    return pg_url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/chatgate.db"


@dataclass
class Rag:
    store: Store
    repo: RagRepo
    jobs: JobRepo
    dense: DenseIndex
    embedder: CountingEmbedder
    settings: RetrievalSettings
    ingestor: Ingestor
    retriever: Retriever
    root: Path

    async def collection(self, name: str = "docs", owner: str = "admin", visibility: str = "admin") -> CollectionRow:
        return await self.repo.create_collection(name, owner, visibility, self.embedder.name, self.embedder.dimension)

    def files(self, folder: Path) -> list[SourceFile]:
        return [SourceFile(source=p.name, path=p) for p in sorted(folder.iterdir()) if p.is_file()]

    async def close(self) -> None:
        await self.retriever.lexical.close()
        self.dense.close()
        await self.store.close()


async def lexical_index(engine: AsyncEngine, root: Path, **retrieval: object) -> LexicalIndex:
    """The lexical index the gateway would build with these settings, ready."""
    lexical = build_lexical(Settings(data_dir=root, rag={"retrieval": retrieval}), engine)
    await lexical.ready()
    return lexical


async def make_rag(url: str, root: Path, dense: DenseIndex | None = None, **settings: object) -> Rag:
    cfg = RetrievalSettings(chroma_path=root / "chroma", **settings)  # type: ignore[arg-type]
    store = await Store.open(url)
    repo = RagRepo(store.engine)
    dense = dense or DenseIndex.open(cfg, root, write="require")
    embedder = CountingEmbedder(HashEmbedder())
    lexical = await lexical_index(store.engine, root)
    return Rag(
        store=store,
        repo=repo,
        jobs=JobRepo(store.engine),
        dense=dense,
        embedder=embedder,
        settings=cfg,
        ingestor=Ingestor(repo, dense, embedder, test_parser(), cfg),
        retriever=Retriever(repo, lexical, dense, embedder, cfg),
        root=root,
    )


@pytest.fixture
async def rag(db_url: str, tmp_path: Path) -> AsyncIterator[Rag]:
    r = await make_rag(db_url, tmp_path)
    yield r
    await r.close()


@pytest.fixture
async def rag_sqlite(sqlite_url: str, tmp_path: Path) -> AsyncIterator[Rag]:
    r = await make_rag(sqlite_url, tmp_path)
    yield r
    await r.close()
