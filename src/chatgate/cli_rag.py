"""``chatgate ingest PATH... --collection NAME`` and ``chatgate reindex --collection NAME``.

Both write the dense index, so they take the Chroma directory's writer lock (with a Chroma server there
is no lock). When another process holds it (a running ``chatgate serve``), ``ingest`` hands its files to
that process as upload jobs (``rag/handoff.py``), says so and prints their ids, and with ``--wait`` follows
them to their end; ``reindex`` stops with a clear message. A collection is named by owner and name; the CLI
acts as the bootstrap admin (``admin``) unless ``--owner`` says otherwise, and creates a missing collection
(admin-managed unless ``--visibility``).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from chatgate.identity.keys import ADMIN
from chatgate.settings import Settings
from chatgate.store.models import RAG_VISIBILITIES

if TYPE_CHECKING:  # the RAG stack is imported by the commands that use it, not by every command
    from chatgate.rag.types import Embedder

ADMIN_USER = ADMIN.user_id  # the bootstrap admin key's user: assistants find its collections by name


async def _ready(embedder: Embedder) -> None:
    """Start the embedder and wait until it can embed (the local model loads in the background)."""
    start = getattr(embedder, "start", None)
    if start is not None:
        start()
    wait = getattr(embedder, "wait_ready", None)
    if wait is not None:
        await wait()


def _run(
    settings: Settings,
    embedder: Embedder | None,
    work: Callable[[Any, Any, Embedder], Awaitable[int]],
    create: bool = False,
    busy: Callable[[Any, Any, Embedder], Awaitable[int]] | None = None,
) -> int:
    """Open the store (only an existing one unless ``create``), the dense index (as its writer) and the
    embedder; run ``work``; close them. When another process writes the index: ``busy(store, the
    IndexBusy, embedder)`` instead, or a message."""
    from chatgate.cli_store import open_store
    from chatgate.rag.dense import DenseIndex, IndexBusy
    from chatgate.rag.embedders import build_embedder
    from chatgate.rag.ingest import Ingestor, Parser
    from chatgate.rag.repo import RagRepo

    async def main() -> int:
        store = await open_store(settings, create)
        try:
            dense = DenseIndex.open(settings.rag.retrieval, settings.data_dir, write="require")
        except IndexBusy as exc:
            if busy is None:
                await store.close()
                raise SystemExit(f"chatgate: {exc}") from None
            emb = embedder or build_embedder(settings.rag.embeddings)
            try:
                return await busy(store, exc, emb)
            finally:
                await emb.close()
                await store.close()
        emb = embedder or build_embedder(settings.rag.embeddings)
        try:
            await _ready(emb)
            repo = RagRepo(store.engine)
            ingestor = Ingestor(repo, dense, emb, Parser.from_settings(settings), settings.rag.retrieval)
            return await work(repo, ingestor, emb)
        finally:
            await emb.close()
            dense.close()
            await store.close()

    return asyncio.run(main())


def cmd_ingest(args: argparse.Namespace, settings: Settings, embedder: Embedder | None = None) -> int:
    """Index files; ``embedder`` replaces the configured one (tests)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from chatgate.rag.ingest import OUTCOMES, FileResult, IngestSummary, local_files
    from chatgate.rag.repo import AlreadyExists, EmbeddingMismatch

    try:
        files = local_files(args.paths, tuple(args.tag or ()))
    except FileNotFoundError as exc:
        raise SystemExit(f"chatgate: {exc}") from None
    console = Console()
    if not files:
        console.print("no supported files found (txt, md, html, pdf, docx)")
        return 1

    async def work(repo: Any, ingestor: Any, emb: Embedder) -> int:
        console.print("no other process writes the document index: indexing here", highlight=False)
        collection = await repo.find_collection(args.owner, args.collection)
        if collection is None:
            try:
                collection = await repo.create_collection(
                    args.collection, args.owner, args.visibility, emb.name, emb.dimension
                )
            except AlreadyExists:  # created by someone else meanwhile
                collection = await repo.find_collection(args.owner, args.collection)
            console.print(f"created collection [bold]{args.collection}[/] ({emb.name}, {emb.dimension}-d)")
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task(f"ingesting into {args.collection}", total=len(files))

            def advance(_: FileResult) -> None:
                bar.advance(task)

            try:
                summary: IngestSummary = await ingestor.ingest(collection, files, advance)
            except EmbeddingMismatch as exc:
                raise SystemExit(f"chatgate: {exc}") from None
        table = Table(title=f"collection {args.collection}")
        table.add_column("outcome")
        table.add_column("files", justify="right")
        table.add_column("chunks", justify="right")
        for outcome in OUTCOMES:
            found = summary.of(outcome)
            table.add_row(outcome, str(len(found)), str(sum(r.chunks for r in found)))
        console.print(table)
        for r in summary.of("failed"):
            console.print(f"[red]failed[/] {r.source}: {r.reason}", highlight=False, soft_wrap=True)
        return 0

    async def busy(store: Any, exc: Any, emb: Embedder) -> int:
        return await _hand_over(args, settings, store, exc.holder, emb, files, console)

    return _run(settings, embedder, work, create=True, busy=busy)


async def _hand_over(
    args: argparse.Namespace, settings: Settings, store: Any, holder: str, emb: Embedder, files: Any, console: Any
) -> int:
    """The index is written by another process (a running server): the files become upload jobs its runner
    claims; with ``--wait``, followed until they end."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from chatgate.rag.handoff import follow, hand_over, processed
    from chatgate.rag.jobs import JobRepo, UploadTooLarge
    from chatgate.rag.repo import AlreadyExists, EmbeddingMismatch, RagRepo

    if args.tag:
        raise SystemExit(
            f"chatgate: the document index is being written by another process (pid {holder}, e.g. `chatgate "
            "serve`), and its ingestion jobs carry no tags: ingest without --tag, or stop it and run this again"
        )
    try:
        name, dimension = emb.name, emb.dimension
    except RuntimeError:  # an OpenAI-compatible embedder learns its dimension from a first request
        await _ready(emb)
        name, dimension = emb.name, emb.dimension
    repo = RagRepo(store.engine)
    collection = await repo.find_collection(args.owner, args.collection)
    if collection is None:
        try:
            collection = await repo.create_collection(args.collection, args.owner, args.visibility, name, dimension)
            console.print(f"created collection [bold]{args.collection}[/] ({name}, {dimension}-d)")
        except AlreadyExists:
            collection = await repo.find_collection(args.owner, args.collection)
    assert collection is not None
    try:
        collection.check_embedder(name, dimension)
    except EmbeddingMismatch as exc:
        raise SystemExit(f"chatgate: {exc}") from None
    retrieval = settings.rag.retrieval
    jobs = JobRepo(store.engine)
    try:
        queued = await hand_over(
            jobs, collection, files, retrieval.upload_max_bytes, retrieval.upload_max_request_bytes
        )
    except UploadTooLarge as exc:
        raise SystemExit(f"chatgate: not handed over, files {exc}") from None
    console.print(
        f"the document index is being written by another process (pid {holder}: a running `chatgate serve`): "
        f"handed {len(files)} files to it as {len(queued)} ingestion job{'s' if len(queued) > 1 else ''}:",
        highlight=False,
    )
    for job in queued:
        console.print(f"  job {job.id} ({job.total} files)", highlight=False)
    if not args.wait:
        console.print(
            "the server indexes them in the background: `chatgate ingest --wait` follows the jobs to their end, and "
            "GET /api/v1/jobs/<id> (or the admin dashboard) shows each one",
            highlight=False,
        )
        return 0
    total = sum(job.total for job in queued)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(f"waiting for the server to index into {args.collection}", total=total)

        def seen(rows: list[Any]) -> None:
            states = sorted({r.status for r in rows})
            bar.update(task, completed=sum(processed(r) for r in rows), description=f"jobs {', '.join(states)}")

        ended = await follow(jobs, [job.id for job in queued], retrieval.job_poll_interval / 2, seen)
    counts = {o: sum(getattr(r, o) for r in ended) for o in ("added", "unchanged", "updated", "failed")}
    console.print(_outcomes(args.collection, counts))
    for job in ended:
        for source, reason in job.failures.items():
            console.print(f"[red]failed[/] {source}: {reason}", highlight=False, soft_wrap=True)
        if job.status == "failed":
            console.print(f"[red]job {job.id} failed[/]: {job.error}", highlight=False, soft_wrap=True)
    return 0 if all(job.status == "done" for job in ended) else 1


def _outcomes(collection: str, counts: dict[str, int]) -> Any:
    from rich.table import Table

    from chatgate.rag.ingest import OUTCOMES

    table = Table(title=f"collection {collection}")
    table.add_column("outcome")
    table.add_column("files", justify="right")
    for outcome in OUTCOMES:
        table.add_row(outcome, str(counts.get(outcome, 0)))
    return table


def cmd_reindex(args: argparse.Namespace, settings: Settings, embedder: Embedder | None = None) -> int:
    """Re-embed a collection whose recorded embedding model or dimension differs from the configured one."""
    from rich.console import Console

    console = Console()

    async def work(repo: Any, ingestor: Any, emb: Embedder) -> int:
        collection = await repo.find_collection(args.owner, args.collection)
        if collection is None:
            raise SystemExit(f"chatgate: no collection {args.collection!r} owned by {args.owner!r}")
        current = (collection.embedding_model, collection.embedding_dim)
        if current == (emb.name, emb.dimension) and not args.force:
            console.print(f"collection {args.collection} is up to date ({emb.name}, {emb.dimension}-d)")
            return 0
        await ingestor.recover(collection)
        with console.status(f"re-embedding {args.collection} with {emb.name}") as status:
            updated = await ingestor.reindex(
                collection, force=True, progress=lambda n: status.update(f"re-embedded {n} chunks")
            )
        console.print(
            f"collection {args.collection}: {current[0]} ({current[1]}-d) -> "
            f"{updated.embedding_model} ({updated.embedding_dim}-d)"
        )
        return 0

    return _run(settings, embedder, work)


def add_parsers(sub: Any, settings_cmd: Callable[[argparse.Namespace], Settings]) -> None:
    ingest = sub.add_parser("ingest", help="index documents into a collection (txt, md, html, pdf, docx)")
    ingest.add_argument("paths", nargs="+", metavar="PATH", help="files, directories (recursive) or globs")
    ingest.add_argument("--collection", required=True, help="the collection's name (created if missing)")
    ingest.add_argument("--visibility", choices=RAG_VISIBILITIES, default="admin", help="for a new collection")
    ingest.add_argument("--tag", action="append", help="tag the documents (repeat for several)")
    ingest.add_argument(
        "--wait",
        action="store_true",
        help="when a running server writes the index (the files are handed to it as jobs): wait for the jobs to end",
    )
    reindex = sub.add_parser("reindex", help="re-embed a collection made with another embedding model")
    reindex.add_argument("--collection", required=True, help="the collection's name")
    reindex.add_argument("--force", action="store_true", help="re-embed even when the model matches")
    for p, cmd in ((ingest, cmd_ingest), (reindex, cmd_reindex)):
        p.add_argument("--owner", default=ADMIN_USER, help=f"the collection's owner (default: {ADMIN_USER})")
        p.add_argument("--config", help="YAML config file (or CHATGATE_CONFIG)")
        p.set_defaults(func=lambda a, cmd=cmd: cmd(a, settings_cmd(a)))
