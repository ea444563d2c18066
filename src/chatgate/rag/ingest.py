"""Ingestion: files into a collection, incremental by content hash, each document swapped in atomically.

Per file: hash its bytes; the same hash as the source's ready version -> ``unchanged`` (nothing parsed,
nothing embedded, whichever process ingested it before); otherwise parse and chunk it and write a new
``processing`` version with its chunks (``RagRepo.begin_document``), embed the chunks and add their
vectors, then ``publish``: in one transaction the new version becomes ``ready`` and the previous one
(if any) ``deleting``, after which the old vectors and rows go. Searches see only ``ready`` versions,
so a document is searchable only when fully indexed, and a changed one flips from old to new at once.

A crash leaves ``processing`` versions (and perhaps some of their vectors) or ``deleting`` ones behind;
``recover`` (run at the start of every ingestion) removes those whose process is gone, vectors first,
then rows. Re-running the ingestion then indexes what was left, and skips what was done.

Throughput: three tasks joined by bounded queues overlap the work. One reads, hashes, parses and
chunks files (parsing in a worker process with memory and time limits, ``rag/isolated.py``, or in a
thread; chunking in a thread) and writes their rows; one embeds chunks in batches of
``ingest_batch_size`` across document boundaries; one adds vectors and publishes documents as their
last chunk lands.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import logging
import os
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from chatgate.rag.dense import DenseIndex, ReadOnlyIndex
from chatgate.rag.isolated import IsolatedParser
from chatgate.rag.repo import CollectionRow, RagRepo, new_claim
from chatgate.rag.types import Chunk, Embedder, ParsedDocument, ParseError
from chatgate.settings import RetrievalSettings, Settings

log = logging.getLogger("chatgate.rag")

Outcome = Literal["added", "unchanged", "updated", "failed"]
OUTCOMES: tuple[Outcome, ...] = ("added", "unchanged", "updated", "failed")
DOC_QUEUE = 64  # parsed documents waiting to be embedded
BATCH_QUEUE = 2  # embedded batches waiting to be written
TOUCH_EVERY = 10.0  # seconds between signs of life on the documents being indexed


class Parser:
    """What the ingestor needs of ``loaders`` and ``chunking``: a file's bytes to chunks.

    ``isolated``: parse in a worker process (``run``), else ``parse`` in a thread; chunking in a thread."""

    def __init__(
        self,
        parse: Callable[[bytes, str], ParsedDocument],
        chunk: Callable[[ParsedDocument], list[Chunk]],
        isolated: IsolatedParser | None = None,
    ):
        self._parse = parse
        self._chunk = chunk
        self.isolated = isolated

    def __call__(self, data: bytes, filename: str) -> tuple[ParsedDocument, list[Chunk]]:
        """In this process, in this thread (benchmarks)."""
        doc = self._parse(data, filename)
        return doc, self._chunk(doc)

    async def run(self, data: bytes, filename: str) -> tuple[ParsedDocument, list[Chunk]]:
        if self.isolated is not None:
            doc = await self.isolated.parse(data, filename)
        else:
            doc = await asyncio.to_thread(self._parse, data, filename)
        return doc, await asyncio.to_thread(self._chunk, doc)

    async def release(self) -> None:
        """An ingestion is over: stop the parse worker, if any (the next ingestion starts another)."""
        if self.isolated is not None:
            await self.isolated.release()

    @classmethod
    def from_settings(cls, settings: Settings) -> Parser:
        """The project's loaders within ``rag.parsing``'s limits (in a worker process unless
        ``rag.parsing.isolate`` is off) and a chunker counting with the project tokenizer (``rag.chunking``)."""
        from chatgate.rag.chunking import Chunker
        from chatgate.rag.loaders import parse
        from chatgate.rag.parse_limits import ParseLimits
        from chatgate.tokens.counter import TokenCounter

        os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(settings.data_dir / "tiktoken"))
        chunking, parsing = settings.rag.chunking, settings.rag.parsing
        limits = ParseLimits.from_settings(parsing)
        isolated = IsolatedParser(limits, parsing.memory_mb, parsing.timeout) if parsing.isolate else None
        chunker = Chunker(TokenCounter(settings.tokens), chunking.size, chunking.overlap)
        return cls(functools.partial(parse, limits=limits), chunker.chunk, isolated)


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A file to ingest: ``source`` names the document in its collection (a path relative to the ingest
    root, an upload's name); ``path`` holds its bytes, or ``load`` reads them (an upload kept in the
    database); ``filename`` (default: the path's name) tells its format. ``legacy_source``: the name an
    earlier version may have been stored under (the absolute path that ``chatgate ingest`` used before):
    such a document is renamed to ``source``, not indexed twice."""

    source: str
    path: Path
    filename: str | None = None
    tags: tuple[str, ...] = ()
    load: Callable[[], Awaitable[bytes]] | None = None
    legacy_source: str | None = None

    async def read(self) -> bytes:
        return await self.load() if self.load is not None else await asyncio.to_thread(self.path.read_bytes)


_GLOB = re.compile(r"[*?\[]")


def local_files(paths: Sequence[str | Path], tags: tuple[str, ...] = ()) -> list[SourceFile]:
    """The files ``chatgate ingest PATH...`` indexes, each named by its path relative to the folder that holds
    the path given: ``./handbook`` -> ``handbook/leave.md``, ``./handbook/leave.md`` -> ``leave.md``,
    ``docs/**/*.md`` -> ``docs/a/b.md`` (a glob from its fixed part). Never a server's absolute path; a name
    two roots share falls back to the path relative to the current folder."""
    from chatgate.rag.loaders import discover

    out: list[SourceFile] = []
    seen: set[Path] = set()
    names: set[str] = set()
    cwd = Path.cwd()
    for raw in paths:
        given = Path(raw).expanduser()
        if given.exists():
            base = given.resolve().parent
        else:  # a glob: from its fixed part
            fixed = list(itertools.takewhile(lambda part: not _GLOB.search(part), given.parts))
            base = Path(*fixed).resolve().parent if fixed else cwd.resolve()
        for path in discover([raw]):
            if path in seen:
                continue
            seen.add(path)
            name = _relative(path, base)
            if name in names:
                name = _relative(path, cwd.resolve())
            names.add(name)
            out.append(SourceFile(source=name, path=path, tags=tags, legacy_source=str(path)))
    return out


def _relative(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return Path(os.path.relpath(path, base)).as_posix()


@dataclass(frozen=True, slots=True)
class FileResult:
    source: str
    outcome: Outcome
    document_id: str | None = None
    chunks: int = 0
    reason: str | None = None


@dataclass(slots=True)
class IngestSummary:
    results: list[FileResult] = field(default_factory=list)

    def of(self, outcome: Outcome) -> list[FileResult]:
        return [r for r in self.results if r.outcome == outcome]

    def counts(self) -> dict[str, int]:
        return {o: len(self.of(o)) for o in OUTCOMES}


@dataclass(slots=True)
class _Doc:
    id: str
    source: str
    replaces: bool
    chunk_ids: list[int]
    ordinals: list[int]
    texts: list[str]
    remaining: int
    failed: bool = False
    published: bool = False


@dataclass(slots=True)
class _Batch:
    items: list[tuple[_Doc, int]]
    vectors: list[list[float]] | None
    error: str | None = None


def embed_text(chunk: Chunk, title: str) -> str:
    """What is embedded for a chunk: its title and heading path, then its text."""
    head = [title] if title else []
    head += [h for h in chunk.headings if h and h not in head]
    return (" > ".join(head) + "\n\n" + chunk.text) if head else chunk.text


def sha256(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


class Ingestor:
    """Indexes files into collections (one ingestion at a time per ingestor)."""

    def __init__(
        self,
        repo: RagRepo,
        dense: DenseIndex,
        embedder: Embedder,
        parser: Parser,
        settings: RetrievalSettings,
    ) -> None:
        self.repo = repo
        self.dense = dense
        self.embedder = embedder
        self.parser = parser
        self.settings = settings
        self.claim = new_claim()

    async def ingest(
        self,
        collection: CollectionRow,
        files: Sequence[SourceFile],
        progress: Callable[[FileResult], None] | None = None,
    ) -> IngestSummary:
        """Index ``files`` into ``collection``; every file gets one result (``progress`` hears each as it
        comes). Raises ``EmbeddingMismatch`` (the collection needs a reindex) or ``ReadOnlyIndex``."""
        await _embedder_ready(self.embedder)  # an OpenAI-compatible embedder learns its dimension from a first call
        collection.check_embedder(self.embedder.name, self.embedder.dimension)
        if not self.dense.writable:
            raise ReadOnlyIndex(f"the dense index at {self.dense.where} is open read-only (another process writes it)")
        await self.recover(collection)
        summary = IngestSummary()

        def report(result: FileResult) -> None:
            summary.results.append(result)
            if progress is not None:
                progress(result)

        docs: asyncio.Queue[_Doc | None] = asyncio.Queue(DOC_QUEUE)
        batches: asyncio.Queue[_Batch | None] = asyncio.Queue(BATCH_QUEUE)
        inflight: dict[str, _Doc] = {}
        tasks = [
            asyncio.create_task(self._prepare(collection, files, docs, inflight, report)),
            asyncio.create_task(self._embed(docs, batches)),
            asyncio.create_task(self._write(collection, batches, inflight, report)),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            leftovers = [d for d in inflight.values() if not d.published and not d.failed]
            if leftovers:  # interrupted: take our unfinished versions back out (shielded from cancellation)
                await asyncio.shield(self._discard(collection, leftovers))
            await asyncio.shield(self.parser.release())
        return summary

    async def _prepare(
        self,
        collection: CollectionRow,
        files: Sequence[SourceFile],
        out: asyncio.Queue[_Doc | None],
        inflight: dict[str, _Doc],
        report: Callable[[FileResult], None],
    ) -> None:
        try:
            for f in files:
                doc = await self._prepare_one(collection, f, report)
                if doc is not None:
                    inflight[doc.id] = doc
                    await out.put(doc)
        finally:
            await out.put(None)

    async def _prepare_one(
        self, collection: CollectionRow, f: SourceFile, report: Callable[[FileResult], None]
    ) -> _Doc | None:
        try:
            data = await f.read()
        except (OSError, LookupError) as exc:  # LookupError: an upload no longer stored
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            report(FileResult(f.source, "failed", reason=f"cannot read: {why}"))
            return None
        digest = sha256(data)
        current = await self.repo.ready_document(collection.id, f.source)
        if current is None and f.legacy_source is not None and f.legacy_source != f.source:
            legacy = await self.repo.ready_document(collection.id, f.legacy_source)
            if legacy is not None:  # stored under its old name: renamed, then compared as usual
                await self.repo.rename(legacy.id, f.source)
                current = await self.repo.ready_document(collection.id, f.source)
        if current is not None and current.sha256 == digest:
            report(FileResult(f.source, "unchanged", current.id, current.chunk_count))
            return None
        reason: str | None = None
        try:
            parsed, chunks = await self.parser.run(data, f.filename or f.path.name)
        except ParseError as exc:
            reason = str(exc)
        except Exception as exc:  # a loader bug must not sink the batch
            log.warning("parsing %s failed", f.source, exc_info=True)
            reason = f"{type(exc).__name__}: {exc}"
        else:
            if not chunks:
                reason = "no text to index"
        if reason is not None:
            await self.repo.record_failure(collection.id, f.source, digest, len(data), reason)
            report(FileResult(f.source, "failed", reason=reason))
            return None
        title = parsed.title or Path(f.source).stem
        doc_id, ids = await self.repo.begin_document(
            collection.id,
            f.source,
            title,
            digest,
            len(data),
            f.tags,
            self.claim,
            [(c, sha256(c.text)) for c in chunks],
        )
        return _Doc(
            id=doc_id,
            source=f.source,
            replaces=current is not None,
            chunk_ids=ids,
            ordinals=[c.ordinal for c in chunks],
            texts=[embed_text(c, c.title or title) for c in chunks],
            remaining=len(ids),
        )

    async def _embed(self, docs: asyncio.Queue[_Doc | None], out: asyncio.Queue[_Batch | None]) -> None:
        size = self.settings.ingest_batch_size
        pending: list[tuple[_Doc, int]] = []
        done = False
        try:
            while not done:
                doc = await docs.get()
                if doc is None:
                    done = True
                else:
                    pending.extend((doc, i) for i in range(len(doc.chunk_ids)))
                while len(pending) >= size or (done and pending):
                    items, pending = pending[:size], pending[size:]
                    try:
                        vectors = await self.embedder.embed([d.texts[i] for d, i in items])
                    except Exception as exc:
                        log.warning("embedding %d chunks failed: %s", len(items), exc)
                        await out.put(_Batch(items, None, f"embedding failed: {exc}"))
                        continue
                    await out.put(_Batch(items, vectors))
        finally:
            await out.put(None)

    async def _write(
        self,
        collection: CollectionRow,
        batches: asyncio.Queue[_Batch | None],
        inflight: dict[str, _Doc],
        report: Callable[[FileResult], None],
    ) -> None:
        loop = asyncio.get_running_loop()
        touched = loop.time()
        while (batch := await batches.get()) is not None:
            live = [(d, i) for d, i in batch.items if not d.failed]
            if batch.vectors is None or len(batch.vectors) != len(batch.items):
                reason = batch.error or "the embedder returned the wrong number of vectors"
                for d in {d.id: d for d, _ in live}.values():
                    await self._fail(collection, d, reason, report)
                continue
            vectors = [v for (d, _), v in zip(batch.items, batch.vectors, strict=True) if not d.failed]
            bad = {d.id: d for (d, _), v in zip(live, vectors, strict=True) if len(v) != collection.embedding_dim}
            for d in bad.values():
                await self._fail(collection, d, "the embedder returned vectors of another size", report)
            keep = [(item, v) for item, v in zip(live, vectors, strict=True) if item[0].id not in bad]
            await self.dense.add(
                collection.dense_name,
                [d.chunk_ids[i] for (d, i), _ in keep],
                [v for _, v in keep],
                [d.id for (d, _), _ in keep],
                [d.ordinals[i] for (d, i), _ in keep],
            )
            for (d, _), _ in keep:
                d.remaining -= 1
            for d in {d.id: d for (d, _), _ in keep}.values():
                if d.remaining == 0:
                    await self._publish(collection, d, report)
            if loop.time() - touched > TOUCH_EVERY:
                touched = loop.time()
                await self.repo.touch(d.id for d in inflight.values() if not d.published and not d.failed)

    async def _publish(self, collection: CollectionRow, doc: _Doc, report: Callable[[FileResult], None]) -> None:
        try:
            old = await self.repo.publish(doc.id)
        except LookupError:  # cleaned up as abandoned meanwhile (a claim judged dead): index it again later
            doc.failed = True
            report(FileResult(doc.source, "failed", reason="indexing was interrupted; ingest again"))
            return
        doc.published = True
        report(FileResult(doc.source, "updated" if doc.replaces else "added", doc.id, len(doc.chunk_ids)))
        if old is not None:
            await self.dense.delete_document(collection.dense_name, old)
            await self.repo.purge(old)

    async def _fail(
        self, collection: CollectionRow, doc: _Doc, reason: str, report: Callable[[FileResult], None]
    ) -> None:
        doc.failed = True
        await self.dense.delete_document(collection.dense_name, doc.id)
        await self.repo.fail(doc.id, reason)
        report(FileResult(doc.source, "failed", doc.id, reason=reason))

    async def _discard(self, collection: CollectionRow, docs: Sequence[_Doc]) -> None:
        for d in docs:
            with contextlib.suppress(Exception):  # what is left, recover() removes on the next run
                if await self.repo.retire(d.id):
                    await self.dense.delete_document(collection.dense_name, d.id)
                    await self.repo.purge(d.id)

    async def recover(self, collection: CollectionRow) -> int:
        """Remove what interrupted ingestions left in ``collection``: versions still ``processing`` whose
        process is gone, and ``deleting`` ones; vectors first, then rows. The number removed."""
        n = 0
        for doc in await self.repo.leftovers(collection.id, self.settings.stale_after):
            if doc.status == "processing" and not await self.repo.abandon(doc):
                continue
            await self.dense.delete_document(collection.dense_name, doc.id)
            await self.repo.purge(doc.id)
            n += 1
        if n:
            log.info("removed %d interrupted or retired documents from collection %s", n, collection.name)
        return n

    async def delete_document(self, collection: CollectionRow, document_id: str) -> bool:
        """Take a document out of search, then remove its vectors and rows; False if it is not there."""
        doc = await self.repo.get_document(document_id)
        if doc is None or doc.collection_id != collection.id:
            return False
        if await self.repo.retire(document_id):
            await self.dense.delete_document(collection.dense_name, document_id)
            await self.repo.purge(document_id)
        return True

    async def delete_collection(self, collection: CollectionRow) -> None:
        """Drop the collection's vectors, then its rows."""
        await self.dense.drop(collection.dense_name)
        await self.repo.delete_collection(collection.id)

    async def reindex(
        self, collection: CollectionRow, force: bool = False, progress: Callable[[int], None] | None = None
    ) -> CollectionRow:
        """Re-embed every ready chunk with the configured embedder into a new dense collection, then switch
        the collection to it in one update (searches use the old one until then) and drop the old one.
        A no-op (unless ``force``) when the recorded model and dimension already match. ``progress`` hears
        the number of chunks done after each batch."""
        await _embedder_ready(self.embedder)
        name, dim = self.embedder.name, self.embedder.dimension
        if not force and (collection.embedding_model, collection.embedding_dim) == (name, dim):
            return collection
        if not self.dense.writable:
            raise ReadOnlyIndex(f"the dense index at {self.dense.where} is open read-only (another process writes it)")
        generation = collection.generation + 1
        target = f"cg_{collection.id}_{generation}"
        await self.dense.drop(target)  # an earlier, interrupted reindex
        after, done = 0, 0
        while page := await self.repo.chunk_page(collection.id, after, self.settings.ingest_batch_size):
            vectors = await self.embedder.embed([embed_text(_as_chunk(c.text, c.headings), c.title) for c in page])
            if any(len(v) != dim for v in vectors):
                raise ValueError(f"the embedder returned vectors of another size than {dim}")
            await self.dense.add(
                target, [c.id for c in page], vectors, [c.document_id for c in page], [c.ordinal for c in page]
            )
            after = page[-1].id
            done += len(page)
            if progress is not None:
                progress(done)
        await self.repo.set_embedding(collection.id, name, dim, target, generation)
        await self.dense.drop(collection.dense_name)
        updated = await self.repo.get_collection(collection.id)
        assert updated is not None
        return updated


async def _embedder_ready(embedder: Embedder) -> None:
    wait = getattr(embedder, "wait_ready", None)  # the project's embedders have it; a bare Embedder may not
    if wait is not None:
        await wait()


def _as_chunk(text: str, headings: tuple[str, ...]) -> Chunk:
    return Chunk(text=text, ordinal=0, tokens=0, headings=headings)
