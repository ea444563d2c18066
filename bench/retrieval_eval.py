#!/usr/bin/env python3
"""Retrieval quality on BEIR SciFact: nDCG@10 and recall@100 for lexical, dense and hybrid search.

    .venv/bin/python bench/retrieval_eval.py [--data ../shared/datasets/scifact] [--split test|train]
                                             [--keep DIR] [--modes lexical,dense,hybrid] [--quick]
                                             [--store sqlite|postgres] [--pg-url URL] [--vectors-from DIR]
                                             [--sweep] [--floors] [--docs N]

The system under test is chatgate's own RAG stack, as ``chatgate ingest`` and the search API run it:

- **Ingestion**: every corpus document is written as a markdown file (``<doc id>.md``, its title in
  the front matter, its abstract as the body) and ingested through ``Ingestor`` with the configured
  loaders, chunker (project tokenizer), local all-MiniLM-L6-v2 embedder, SQLite FTS5 and on-disk
  Chroma, into a data directory (temporary, or ``--keep DIR`` to reuse it: the index is rebuilt only
  when the chunking settings, the chunker or ``embed_text`` changed, else re-ingesting finds every
  document unchanged).
- **Store**: ``--store sqlite`` (default: the data directory's file) or ``--store postgres``: a database on
  the local server (``--pg-url``), kept with ``--keep`` (``chatgate_bench_scifact_<hash of DIR>``), else a
  scratch one dropped afterwards; the lexical index is what the gateway builds for that store
  (``app.build_lexical``). ``--vectors-from EVAL_DIR`` ingests with the chunk vectors an earlier (SQLite)
  ``--keep EVAL_DIR`` build computed, looked up by text, instead of embedding them again (queries are
  embedded by the real model).
- **Search**: each query's text (only ``_id`` and ``text`` are read from queries.jsonl, never the gold
  evidence in ``metadata``) goes through ``Retriever.search`` in each mode. Chunk hits are mapped to
  their corpus document (its source name), each document scored by its best chunk. nDCG@10 is taken
  from a search with ``top_k=50`` (candidates per index as configured), recall@100 from one with
  ``top_k=400`` (so at least 100 distinct documents come back; 400 candidates per index; near-duplicate
  removal off, as its pairwise comparison of 400 hits would cost seconds per query).

Settings come from the environment as for the server (``CHATGATE_RAG__RETRIEVAL__RRF_K=30``,
``CHATGATE_RAG__CHUNKING__SIZE=256``, ...), which is how tuning runs try values. Tune with
``--split train`` only; ``--split test`` is the figure to report. ``--sweep`` adds hybrid nDCG@10 over a
grid of fusion settings (RRF k, lexical weight, candidates), from each query's real dense and lexical
rankings fused by ``retrieve.rrf``. ``--floors`` adds hybrid nDCG@10, the queries left without a source and
the sources off-topic chat questions get, over a grid of relevance floors (``rag.retrieval.relevance_floor``
and ``relevance_floor_lexical``), with and without the default floor in the same run. Prints figures,
never a verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import inspect
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from bench.ir_metrics import mean_over, rank_documents  # noqa: E402
from bench.rag_common import (  # noqa: E402
    DEFAULT_PG,
    STORES,
    TableEmbedder,
    indexed_vectors,
    kept_name,
    reset_database,
    store_url,
)

DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "scifact"
COLLECTION = "scifact"
NDCG_TOP_K = 50
RECALL_TOP_K = 400
MODES = ("lexical", "dense", "hybrid")
REFERENCE = {"lexical": "BM25 0.679", "dense": "MiniLM ~0.645", "hybrid": "-"}
TARGET = {"lexical": 0.66, "hybrid": 0.70}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """BEIR qrels (header, tab-separated, CRLF line endings) -> query id -> {doc id: relevance}."""
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as f:
        next(f)
        for line in f:
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) == 3:
                qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    return qrels


def markdown(doc: dict[str, Any]) -> str:
    """A corpus document as the markdown file ingested: its title in the front matter, the abstract below."""
    title = " ".join(doc["title"].split())
    return f"---\ntitle: {title}\n---\n\n{doc['text'].strip()}\n"


def fingerprint(settings: Any) -> dict[str, Any]:
    """What the built index depends on: a change means re-chunking and re-embedding."""
    from chatgate.rag import chunking, ingest

    def digest(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    return {
        "chunking": settings.rag.chunking.model_dump(),
        "chunker": digest(inspect.getsource(chunking)),
        "embed_text": digest(inspect.getsource(ingest.embed_text)),
        "embedder": settings.rag.embeddings.model,
    }


async def build(
    settings: Any, corpus: list[dict[str, Any]], folder: Path, vectors_from: Path | None = None
) -> tuple[Any, Any, Any, Any, str]:
    """Ingest ``corpus`` (files under ``folder``) into the ``scifact`` collection; the opened parts. With
    ``vectors_from``, chunk vectors come from that SQLite build (looked up by text)."""
    from chatgate.rag.dense import DenseIndex
    from chatgate.rag.embedders import build_embedder
    from chatgate.rag.ingest import Ingestor, Parser, SourceFile
    from chatgate.rag.repo import RagRepo
    from chatgate.store.db import Store, database_url

    files = []
    for doc in corpus:
        path = folder / f"{doc['_id']}.md"
        text = markdown(doc)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        files.append(SourceFile(source=doc["_id"], path=path))
    dense = DenseIndex.open(settings.rag.retrieval, settings.data_dir, write="require")
    store = await Store.open(database_url(settings))
    embedder: Any = build_embedder(settings.rag.embeddings)
    embedder.start()
    await embedder.wait_ready()
    if vectors_from is not None:
        embedder = TableEmbedder(
            indexed_vectors(vectors_from / "data"), None, embedder.name, embedder.dimension, fallback=embedder
        )
    repo = RagRepo(store.engine)
    collection = await repo.find_collection("admin", COLLECTION)
    if collection is None:
        collection = await repo.create_collection(COLLECTION, "admin", "admin", embedder.name, embedder.dimension)
    ingestor = Ingestor(repo, dense, embedder, Parser.from_settings(settings), settings.rag.retrieval)
    done = 0
    started = time.perf_counter()

    def progress(_: Any) -> None:
        nonlocal done
        done += 1
        if done % 1000 == 0:
            print(f"  {done:,}/{len(files):,} documents, {time.perf_counter() - started:.0f} s", file=sys.stderr)

    summary = await ingestor.ingest(collection, files, progress)
    seconds = time.perf_counter() - started
    counts = summary.counts()
    chunks = sum(r.chunks for r in summary.results if r.outcome in ("added", "updated"))
    note = ", ".join(f"{n} {o}" for o, n in counts.items() if n)
    if isinstance(embedder, TableEmbedder):
        note += f" (vectors from {vectors_from}; {embedder.embedded} texts embedded for real)"
    if chunks:
        note += f"; {chunks:,} chunks embedded and indexed in {seconds:.0f} s ({chunks / seconds:.0f} chunks/s)"
    else:
        note += f" ({seconds:.1f} s)"
    return store, dense, embedder, collection, note


async def evaluate(args: argparse.Namespace) -> None:
    root = args.keep or Path(tempfile.mkdtemp(prefix="chatgate-scifact-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        async with store_url(args.store, args.pg_url, kept_name("scifact", root) if args.keep else None) as url:
            await evaluate_in(args, root, url)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


async def evaluate_in(args: argparse.Namespace, root: Path, url: str | None) -> None:
    from chatgate.app import build_lexical
    from chatgate.rag.repo import RagRepo
    from chatgate.rag.retrieve import Retriever
    from chatgate.settings import Settings

    data: Path = args.data
    qrels = read_qrels(data / "qrels" / f"{args.split}.tsv")
    # The system under test sees a query's id and text only (metadata holds the gold evidence).
    queries = {q["_id"]: q["text"] for q in read_jsonl(data / "queries.jsonl") if q["_id"] in qrels}
    corpus = read_jsonl(data / "corpus.jsonl")
    if args.docs is not None:  # the first N documents and every document either split judges relevant
        judged = {
            d
            for split in ("train", "test")
            for rel in read_qrels(data / "qrels" / f"{split}.tsv").values()
            for d in rel
        }
        corpus = [d for i, d in enumerate(corpus) if i < args.docs or d["_id"] in judged]
    if args.quick:  # the split's relevant documents and the first 1,000 others
        wanted = {d for rel in qrels.values() for d in rel}
        corpus = [d for i, d in enumerate(corpus) if i < 1000 or d["_id"] in wanted]
        queries = dict(list(queries.items())[:100])
        qrels = {q: qrels[q] for q in queries}

    (root / "corpus").mkdir(exist_ok=True)
    data = root / ("data" if url is None else "data-pg")
    settings = Settings(data_dir=data) if url is None else Settings(data_dir=data, database_url=url)
    stamp = root / ("index.json" if url is None else "index-pg.json")
    want = {**fingerprint(settings), "docs": len(corpus)}
    if url is not None and not stamp.exists():
        shutil.rmtree(data, ignore_errors=True)  # a Chroma directory without its store
    if stamp.exists() and json.loads(stamp.read_text()) != want:
        print(f"{root}: built with other chunking or embedding settings: rebuilding", file=sys.stderr)
        shutil.rmtree(data, ignore_errors=True)
        if url is not None:
            await reset_database(url)
    print("$", shlex.join([".venv/bin/python", "bench/retrieval_eval.py", *sys.argv[1:]]))
    overrides = {k: v for k, v in os.environ.items() if k.startswith("CHATGATE_RAG")}
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, load average {os.getloadavg()}")
    print(f"store {args.store}; settings from the environment: {overrides}")
    r = settings.rag
    print(
        f"chunking size {r.chunking.size} overlap {r.chunking.overlap}; candidates {r.retrieval.candidates}, "
        f"lexical_max_df {r.retrieval.lexical_max_df}, rrf_k {r.retrieval.rrf_k}, "
        f"weights dense {r.retrieval.dense_weight} lexical {r.retrieval.lexical_weight}"
    )
    store, dense, embedder, collection, note = await build(settings, corpus, root / "corpus", args.vectors_from)
    stamp.write_text(json.dumps(want))
    lexical = build_lexical(settings, store.engine)
    try:
        print(f"corpus: {len(corpus):,} documents; {note}")
        print(f"split {args.split}: {len(queries)} queries, {sum(len(v) for v in qrels.values())} relevant pairs")
        started = time.perf_counter()
        await lexical.ready()
        print(f"lexical index {lexical.stats()} ready in {time.perf_counter() - started:.1f} s")
        retriever = Retriever(RagRepo(store.engine), lexical, dense, embedder, r.retrieval)
        # The deep search for recall@100 without de-duplication: over 400 hits its pairwise word-set
        # comparison costs seconds per query, and it only drops near-identical chunks.
        deep_retriever = Retriever(
            retriever.repo, lexical, dense, embedder, r.retrieval.model_copy(update={"dedupe": False})
        )
        print(f"\n{'mode':8} {'nDCG@10':>8} {'recall@100':>11} {'ms/query':>9}  published nDCG@10")
        for mode in args.modes:
            top: dict[str, list[str]] = {}
            deep: dict[str, list[str]] = {}
            started = time.perf_counter()
            for qid, text in queries.items():
                hits = await retriever.search([collection], text, top_k=NDCG_TOP_K, mode=mode)
                top[qid] = rank_documents((h.source, h.score) for h in hits)
            per_query = (time.perf_counter() - started) / max(1, len(queries)) * 1000
            for qid, text in queries.items():
                hits = await deep_retriever.search([collection], text, top_k=RECALL_TOP_K, mode=mode)
                deep[qid] = rank_documents((h.source, h.score) for h in hits)
            ndcg = mean_over(qrels, top, "ndcg", 10)
            recall = mean_over(qrels, deep, "recall", 100)
            print(f"{mode:8} {ndcg:8.4f} {recall:11.4f} {per_query:9.1f}  {REFERENCE[mode]}")
        targets = ", ".join(f"{m} nDCG@10 >= {t}" for m, t in TARGET.items())
        print(f"(issue 6 targets on the test split: {targets}; ms/query includes embedding the query)")
        if args.sweep:
            await sweep(retriever, collection, queries, qrels)
        if args.floors:
            await floors(retriever, collection, queries, qrels)
    finally:
        await lexical.close()
        await embedder.close()
        dense.close()
        await store.close()


SWEEP_K = (1, 5, 10, 20, 30, 60, 100)
SWEEP_LEXICAL_WEIGHT = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
SWEEP_CANDIDATES = (20, 50, 100, 200)


async def sweep(retriever: Any, collection: Any, queries: dict[str, str], qrels: dict[str, dict[str, int]]) -> None:
    """Hybrid nDCG@10 for a grid of fusion settings, from each query's real dense and lexical rankings
    (``Retriever.search`` in those modes, de-duplication off) fused by ``retrieve.rrf``; for tuning on train."""
    from chatgate.rag.retrieve import Retriever, rrf

    plain = Retriever(
        retriever.repo,
        retriever.lexical,
        retriever.dense,
        retriever.embedder,
        retriever.settings.model_copy(update={"dedupe": False}),
    )
    deepest = max(SWEEP_CANDIDATES)
    lists: dict[str, tuple[list[int], list[int]]] = {}
    source: dict[int, str] = {}
    for qid, text in queries.items():
        ranked = []
        for mode in ("dense", "lexical"):
            hits = await plain.search([collection], text, top_k=deepest, mode=mode)
            source.update((h.chunk_id, h.source) for h in hits)
            ranked.append([h.chunk_id for h in hits])
        lists[qid] = (ranked[0], ranked[1])
    print("\nsweep: hybrid nDCG@10 (dense weight 1; rows rrf_k, columns lexical weight), per candidates count")
    for n in SWEEP_CANDIDATES:
        print(f"candidates {n}: " + " ".join(f"{w:>6}" for w in SWEEP_LEXICAL_WEIGHT))
        for k in SWEEP_K:
            row = []
            for w in SWEEP_LEXICAL_WEIGHT:
                runs = {}
                for qid, (dense, lexical) in lists.items():
                    fused = rrf([(dense[:n], 1.0), (lexical[:n], w)], k)
                    runs[qid] = rank_documents((source[i], v) for i, v in fused.items())
                row.append(mean_over(qrels, runs, "ndcg", 10))
            print(f"  rrf_k {k:4}:   " + " ".join(f"{v:6.4f}" for v in row))


# Questions a chat user asks that no SciFact abstract answers ("2+2" got five sources from an HR handbook).
OFF_TOPIC = (
    "What is 2+2?",
    "Hello!",
    "Hi, how are you today?",
    "Tell me a joke.",
    "What's the weather like tomorrow?",
    "Write a short poem about the sea.",
    "Who won the football match last night?",
    "How do I bake sourdough bread?",
    "Translate 'good morning' into French.",
    "What time is it?",
    "Thanks, that's all for now.",
    "Can you recommend a good movie?",
    "What is the capital of France?",
    "How do I reset my password?",
    "What's your name?",
    "Give me a recipe for pancakes.",
    "What is 17 times 3?",
    "Play some relaxing music.",
    "Where can I park my car at the office?",
    "Good night!",
)
FLOOR_DENSE = (None, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45)
FLOOR_LEXICAL = (None, 5.0, 10.0, 15.0, 20.0, 30.0)
SOURCES = 5  # grounding's default top_k: the sources an answer gets


def relevant(hits: list[Any], dense: float | None, lexical: float | None) -> list[Any]:
    """The hits a relevance floor keeps (``Retriever.search``'s rule): a side that ranked the hit clears its own
    floor. ``dense`` None: no floor."""
    if dense is None:
        return hits
    return [
        h
        for h in hits
        if (h.dense_score is not None and h.dense_score >= dense)
        or (lexical is not None and h.lexical_score is not None and h.lexical_score >= lexical)
    ]


async def floors(retriever: Any, collection: Any, queries: dict[str, str], qrels: dict[str, dict[str, int]]) -> None:
    """Hybrid nDCG@10 of the split's queries, the share of them left with no source, and the sources the
    OFF_TOPIC questions get, for a grid of relevance floors (cosine similarity x BM25); from each query's
    unfloored hybrid hits (``floor=False``, top 50), filtered as ``Retriever.search`` filters. Tune on train."""
    from chatgate.settings import MINILM_RELEVANCE_FLOOR, MINILM_RELEVANCE_FLOOR_LEXICAL

    hits = {
        qid: await retriever.search([collection], text, top_k=NDCG_TOP_K, mode="hybrid", floor=False)
        for qid, text in queries.items()
    }
    off = [await retriever.search([collection], q, top_k=NDCG_TOP_K, mode="hybrid", floor=False) for q in OFF_TOPIC]
    best_off = sorted(max((h.dense_score or 0.0 for h in found), default=0.0) for found in off)
    best_on = sorted(max((h.dense_score or 0.0 for h in found), default=0.0) for found in hits.values())
    print(
        f"\nfloors: best cosine similarity per question, off-topic median {best_off[len(best_off) // 2]:.3f} "
        f"max {best_off[-1]:.3f}; {len(best_on)} split queries: 5th percentile {best_on[len(best_on) // 20]:.3f}, "
        f"median {best_on[len(best_on) // 2]:.3f}"
    )
    print(
        f"rows: cosine floor; columns: BM25 floor; each cell: hybrid nDCG@10 / split queries with no source / "
        f"sources per off-topic question (top {SOURCES}, {len(OFF_TOPIC)} questions)"
    )
    print("          " + " ".join(f"{'-' if lf is None else lf:>20}" for lf in FLOOR_LEXICAL))
    for df in FLOOR_DENSE:
        cells = []
        for lf in FLOOR_LEXICAL:
            runs = {
                q: rank_documents((h.source, h.score) for h in relevant(found, df, lf)) for q, found in hits.items()
            }
            ndcg = mean_over(qrels, runs, "ndcg", 10)
            empty = sum(1 for found in hits.values() if not relevant(found, df, lf)) / max(1, len(hits))
            sources = sum(len(relevant(found, df, lf)[:SOURCES]) for found in off) / len(off)
            cells.append(f"{ndcg:.4f}/{empty:5.1%}/{sources:3.1f}")
        print(f"  {'-' if df is None else df:>6}: " + " ".join(f"{c:>20}" for c in cells))
    default = (MINILM_RELEVANCE_FLOOR, MINILM_RELEVANCE_FLOOR_LEXICAL)
    for name, (df, lf) in (("no floor", (None, None)), (f"default floor {default}", default)):
        runs = {q: rank_documents((h.source, h.score) for h in relevant(found, df, lf)) for q, found in hits.items()}
        per_question = [len(relevant(found, df, lf)[:SOURCES]) for found in off]
        print(
            f"{name}: hybrid nDCG@10 {mean_over(qrels, runs, 'ndcg', 10):.4f}; off-topic questions' sources "
            f"{per_question} ({sum(1 for n in per_question if n == 0)}/{len(off)} with none)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BEIR SciFact folder")
    parser.add_argument("--split", choices=("test", "train"), default="test")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="build (or reuse) the index in DIR")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: lexical, dense, hybrid")
    parser.add_argument("--quick", action="store_true", help="1,000 documents + the relevant ones, 100 queries")
    parser.add_argument("--sweep", action="store_true", help="also a grid of fusion settings (tune on train)")
    parser.add_argument(
        "--docs",
        type=int,
        metavar="N",
        help="a smaller corpus, the same for both splits: the first N documents and every judged one",
    )
    parser.add_argument("--floors", action="store_true", help="also a grid of relevance floors (tune on train)")
    parser.add_argument("--store", choices=STORES, default="sqlite", help="the store the index is built on")
    parser.add_argument("--pg-url", default=DEFAULT_PG, help=f"PostgreSQL server for --store postgres ({DEFAULT_PG})")
    parser.add_argument(
        "--vectors-from", type=Path, metavar="DIR", help="chunk vectors from an earlier build (--keep DIR, SQLite)"
    )
    args = parser.parse_args()
    args.modes = [m for m in args.modes.split(",") if m]
    if unknown := set(args.modes) - set(MODES):
        parser.error(f"unknown modes: {', '.join(sorted(unknown))}")
    asyncio.run(evaluate(args))


if __name__ == "__main__":
    main()
