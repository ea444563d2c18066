#!/usr/bin/env python3
"""RAG speed: ingestion throughput against the raw encoder, search latency at 10k and 100k chunks, and
the time a server with 100k persisted chunks takes to answer.

    .venv/bin/python bench/retrieval_speed.py [--data ../shared/datasets/scifact] [--keep DIR] [--quick]
                                              [--parts ingest,search,serve] [--ingest-docs 500]
                                              [--vectors-from EVAL_DIR]

**Ingestion** (``ingest``): the first ``--ingest-docs`` SciFact documents, as markdown files (title in the
front matter), through ``Ingestor`` with the configured chunker and local embedder (all-MiniLM-L6-v2,
SQLite FTS5, on-disk Chroma) into a fresh data directory: chunks per second, wall clock. Against it, in
the same run and on the same loaded model: ``SentenceTransformer.encode`` over exactly the texts the
pipeline embeds (``embed_text`` of each chunk), in one call with the same ``batch_size``, normalised,
timed before and after the pipeline (their mean is the reference).

**Search** (``search``): two data directories built through ``Ingestor`` (so rows, FTS5 and Chroma are
written by the real code), whose embedder is a lookup table of precomputed vectors:

- *10k*: SciFact documents in file order until 10,000 chunks; vectors: all-MiniLM-L6-v2, for real.
- *100k*: the same, plus synthetic documents until 100,000 chunks. Their text is real SciFact sentences
  drawn at random (fixed seed) into abstract-sized paragraphs, 4 to a document, under a real title;
  embedding ~90,000 more chunks on this 2-core machine would take over an hour, so each synthetic
  chunk's vector is the normalised sum of two real chunk vectors (picked by a hash of its text) plus
  Gaussian noise: vectors spread over the same region of the space as real ones.

Then SciFact query texts are embedded first (not timed), and ``Retriever.search`` is timed with the
precomputed vector (``query_vector``), default ``top_k`` and candidates, for each mode: p50 and p99
over ``--queries`` queries after a warm-up. The whole search is timed: FTS5, Chroma, the chunk rows,
fusion and de-duplication; only the query's embedding is left out.

**Server start** (``serve``): ``chatgate serve`` (1 worker) on the 100k data directory; time from the
process start until ``/health`` answers 200, and until ``POST /api/v1/collections/{id}/search`` answers
200, first in lexical mode (no model needed), then in hybrid mode: answered at once by the lexical
index alone while the embedding model loads (``rag.retrieval.lexical_while_loading``; the answer says
``"mode": "lexical"``), and the time until one is served as hybrid. Nothing may be re-embedded: the
Chroma writer stamp and the documents table are compared before and after.

``--keep DIR`` keeps the built directories and the embedded vectors between runs; ``--vectors-from``
takes the SciFact chunk vectors from an index ``bench/retrieval_eval.py --keep EVAL_DIR`` built (same
chunking, same model: the pipeline's own vectors) instead of embedding them again. ``--quick``: 300
documents for ingestion, 2,000 and 20,000 chunks for search, 100 queries. Prints figures, never a verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import random
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from bench.rag_common import (  # noqa: E402
    DEFAULT_PG,
    STORES,
    TableEmbedder,
    indexed_vectors,
    kept_name,
    reset_database,
    store_url,
)
from bench.retrieval_eval import DEFAULT_DATA, markdown, read_jsonl  # noqa: E402

BIN = Path(sys.executable).parent
KEY = "cg-bench-admin-key"
COLLECTION = "speed"
SYNTHETIC_PARAGRAPHS = 4
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def open_parts(settings: Any, embedder: Any) -> tuple[Any, Any, Any, Any]:
    from chatgate.rag.dense import DenseIndex
    from chatgate.rag.ingest import Ingestor, Parser
    from chatgate.rag.repo import RagRepo
    from chatgate.store.db import Store, database_url

    dense = DenseIndex.open(settings.rag.retrieval, settings.data_dir, write="require")
    store = await Store.open(database_url(settings))
    repo = RagRepo(store.engine)
    collection = await repo.find_collection("admin", COLLECTION)
    if collection is None:
        collection = await repo.create_collection(COLLECTION, "admin", "shared", embedder.name, embedder.dimension)
    ingestor = Ingestor(repo, dense, embedder, Parser.from_settings(settings), settings.rag.retrieval)
    return store, dense, collection, ingestor


def write_files(folder: Path, docs: Sequence[dict[str, Any]]) -> list[Any]:
    from chatgate.rag.ingest import SourceFile

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for doc in docs:
        path = folder / f"{doc['_id']}.md"
        if not path.exists():
            path.write_text(markdown(doc), encoding="utf-8")
        files.append(SourceFile(source=doc["_id"], path=path))
    return files


def chunk_texts(settings: Any, files: Sequence[Any]) -> list[list[str]]:
    """What the pipeline embeds for each file: ``embed_text`` of each of its chunks."""
    from chatgate.rag.ingest import Parser, embed_text

    parser = Parser.from_settings(settings)
    out = []
    for f in files:
        parsed, chunks = parser(f.path.read_bytes(), f.path.name)
        out.append([embed_text(c, c.title or parsed.title) for c in chunks])
    return out


# -- ingestion ---------------------------------------------------------------------------------------


async def bench_ingest(settings_for: Any, corpus: list[dict[str, Any]], root: Path, n_docs: int) -> dict[str, Any]:
    from chatgate.rag.embedders import build_embedder

    folder = root / "ingest"
    shutil.rmtree(folder, ignore_errors=True)
    settings = settings_for(folder / "data")
    files = write_files(folder / "files", corpus[:n_docs])
    texts = [t for doc in chunk_texts(settings, files) for t in doc]
    embedder: Any = build_embedder(settings.rag.embeddings)
    embedder.start()
    await embedder.wait_ready()
    local = getattr(embedder, "inner", embedder)
    model, batch = local._model, local.batch_size

    def raw() -> float:
        started = time.perf_counter()
        model.encode(texts, batch_size=batch, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        return len(texts) / (time.perf_counter() - started)

    model.encode(texts[:batch], batch_size=batch, show_progress_bar=False)  # warm-up
    raw_before = raw()
    store, dense, collection, ingestor = await open_parts(settings, embedder)
    try:
        started = time.perf_counter()
        summary = await ingestor.ingest(collection, files)
        seconds = time.perf_counter() - started
    finally:
        dense.close()
        await store.close()
    raw_after = raw()
    await embedder.close()
    chunks = sum(r.chunks for r in summary.results)
    return {
        "docs": len(files),
        "chunks": chunks,
        "texts": len(texts),
        "seconds": seconds,
        "pipeline": chunks / seconds,
        "raw_before": raw_before,
        "raw_after": raw_after,
        "batch": batch,
        "ingest_batch": settings.rag.retrieval.ingest_batch_size,
        "threads": local.threads,
        "counts": summary.counts(),
    }


# -- search ------------------------------------------------------------------------------------------


def real_vectors(settings: Any, texts: list[str], cache: Path, known: dict[str, Any] | None = None) -> Any:
    """all-MiniLM-L6-v2 vectors of ``texts``: from ``known`` (vectors the pipeline computed), else embedded
    here (cached in ``cache`` by text digest)."""
    import numpy as np

    from chatgate.rag.embedders import bundled_model_path

    if known is not None and all(t in known for t in texts):
        return np.stack([known[t] for t in texts])
    digest = hashlib.sha256("\0".join(texts).encode()).hexdigest()[:16]
    path = cache / f"vectors-{digest}.npy"
    if path.exists():
        return np.load(path)
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(os.cpu_count() or 1)
    model = SentenceTransformer(str(bundled_model_path()), device="cpu", local_files_only=True)
    print(f"  embedding {len(texts):,} texts for real (all-MiniLM-L6-v2)...", file=sys.stderr)
    started = time.perf_counter()
    vectors = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    print(f"  ... {time.perf_counter() - started:.0f} s", file=sys.stderr)
    np.save(path, vectors)
    return vectors


def synthetic_docs(corpus: list[dict[str, Any]], count: int, seed: int = 11) -> list[dict[str, Any]]:
    """Documents of real SciFact sentences drawn at random, abstract-sized paragraphs, real titles."""
    rng = random.Random(seed)
    sentences = [s for d in corpus for s in _SENTENCE.split(d["text"]) if len(s) > 20]
    lengths = [len(_SENTENCE.split(d["text"])) for d in corpus]
    docs = []
    for i in range(count):
        paragraphs = [
            " ".join(rng.choice(sentences) for _ in range(max(3, rng.choice(lengths))))
            for _ in range(SYNTHETIC_PARAGRAPHS)
        ]
        docs.append({"_id": f"syn{i:06d}", "title": rng.choice(corpus)["title"], "text": "\n\n".join(paragraphs)})
    return docs


async def build_index(settings: Any, files: Sequence[Any], embedder: TableEmbedder, label: str) -> tuple[int, float]:
    store, dense, collection, ingestor = await open_parts(settings, embedder)
    try:
        started = time.perf_counter()
        done = 0

        def progress(_: Any) -> None:
            nonlocal done
            done += 1
            if done % 5000 == 0:
                print(f"  {label}: {done:,}/{len(files):,} documents", file=sys.stderr)

        summary = await ingestor.ingest(collection, files, progress)
        seconds = time.perf_counter() - started
        chunks = await dense.count(collection.dense_name)
    finally:
        dense.close()
        await store.close()
    failed = summary.of("failed")
    if failed:
        raise SystemExit(f"{label}: {len(failed)} documents failed, e.g. {failed[0].reason}")
    return chunks, seconds


async def time_search(settings: Any, queries: list[tuple[str, list[float]]], warmup: int) -> dict[str, list[float]]:
    from chatgate.app import build_lexical
    from chatgate.rag.dense import DenseIndex
    from chatgate.rag.repo import RagRepo
    from chatgate.rag.retrieve import MODES, Retriever
    from chatgate.store.db import Store, database_url

    dense = DenseIndex.open(settings.rag.retrieval, settings.data_dir, write="never")
    store = await Store.open(database_url(settings))
    repo = RagRepo(store.engine)
    collection = await repo.find_collection("admin", COLLECTION)
    assert collection is not None
    lexical = build_lexical(settings, store.engine)
    started = time.perf_counter()
    await lexical.ready()
    print(f"  lexical index ready in {time.perf_counter() - started:.2f} s: {lexical.stats()}")
    retriever = Retriever(repo, lexical, dense, None, settings.rag.retrieval)
    out: dict[str, list[float]] = {}
    try:
        for mode in MODES:
            for text, vector in queries[:warmup]:
                await retriever.search([collection], text, mode=mode, query_vector=vector)
            times = []
            for text, vector in queries:
                started = time.perf_counter()
                hits = await retriever.search([collection], text, mode=mode, query_vector=vector)
                times.append((time.perf_counter() - started) * 1000)
                assert hits or mode == "lexical"
            out[mode] = times
    finally:
        await lexical.close()
        dense.close()
        await store.close()
    return out


async def bench_search(
    settings_for: Any,
    corpus: list[dict[str, Any]],
    root: Path,
    sizes: list[int],
    n_queries: int,
    queries: list[str],
    vectors_from: Path | None,
    store: str = "sqlite",
    pg_url: str = DEFAULT_PG,
    keep: bool = False,
) -> tuple[dict[int, dict[str, Any]], Path]:
    import numpy as np

    from chatgate.rag.embedders import LOCAL_MODEL_DIMENSION, LOCAL_MODEL_NAME

    base = settings_for(root / "unused", None)
    small, large = sizes
    real_files = write_files(root / "files", corpus)
    per_doc = chunk_texts(base, real_files)
    keep, total = 0, 0
    while keep < len(per_doc) and total < small:
        total += len(per_doc[keep])
        keep += 1
    real_files, per_doc = real_files[:keep], per_doc[:keep]
    texts = [t for doc in per_doc for t in doc]
    known = indexed_vectors(vectors_from / "data") if vectors_from else None
    vectors = real_vectors(base, texts, root, known)
    if known is not None:
        found = sum(t in known for t in texts)
        print(f"  {found:,} of {len(texts):,} chunk vectors from {vectors_from}", file=sys.stderr)
    table = dict(zip(texts, vectors, strict=True))
    query_vectors = real_vectors(base, queries, root)
    timed = [(q, [float(x) for x in v]) for q, v in zip(queries, query_vectors, strict=True)][:n_queries]
    sample = synthetic_docs(corpus, 200)
    per_syn = float(np.mean([len(d) for d in chunk_texts(base, write_files(root / "sample", sample))]))
    syn_docs = synthetic_docs(corpus, int((large - total) / per_syn) + 1)
    results: dict[int, dict[str, Any]] = {}
    large_dir = root / f"{large}"
    for size, extra in ((small, []), (large, syn_docs)):
        folder = root / (f"{size}" if store == "sqlite" else f"{size}-pg")
        async with store_url(store, pg_url, kept_name(f"speed{size}", root) if keep else None) as url:
            settings = settings_for(folder / "data", url)
            stamp = folder / "built.json"
            want = {"real": len(real_files), "synthetic": len(extra)}
            built = None
            if stamp.exists() and json.loads(stamp.read_text())["want"] == want:
                built = json.loads(stamp.read_text())
            if built is None:
                shutil.rmtree(folder, ignore_errors=True)
                if url is not None:
                    await reset_database(url)
                files = real_files + write_files(root / "synthetic", extra)
                embedder = TableEmbedder(table, vectors, LOCAL_MODEL_NAME, LOCAL_MODEL_DIMENSION)
                chunks, seconds = await build_index(settings, files, embedder, f"{size:,}")
                built = {"want": want, "chunks": chunks, "seconds": seconds, "docs": len(files)}
                folder.mkdir(parents=True, exist_ok=True)
                stamp.write_text(json.dumps(built))
            print(f"  {size:,}: {store}, load average {os.getloadavg()}", file=sys.stderr)
            times = await time_search(settings, timed, warmup=min(20, len(timed)))
            results[size] = {**built, "times": times}
    return results, large_dir


# -- server start ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def snapshot(data_dir: Path) -> tuple[Any, ...]:
    import sqlite3

    con = sqlite3.connect(data_dir / "chatgate.db")
    try:
        docs = con.execute("SELECT count(*), max(updated_at) FROM rag_documents").fetchone()
        chunks = con.execute("SELECT count(*), max(id) FROM rag_chunks").fetchone()
        cid = con.execute("SELECT id FROM rag_collections WHERE name = ?", (COLLECTION,)).fetchone()[0]
    finally:
        con.close()
    stamp = data_dir / "chroma" / "chatgate-writes"
    return docs, chunks, cid, stamp.stat().st_mtime_ns if stamp.exists() else None


def bench_serve(data_dir: Path, query: str) -> dict[str, Any]:
    import httpx

    before = snapshot(data_dir)
    collection_id = before[2]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATGATE_") or k.startswith("CHATGATE_RAG_")}
    env.update(
        CHATGATE_ADMIN_KEY=KEY,
        CHATGATE_DATA_DIR=str(data_dir),
        CHATGATE_LOG__LEVEL="warning",
        CHATGATE_UPSTREAM_BASE_URL="http://127.0.0.1:9/v1",  # never called; keeps the local model off
    )
    log = open(data_dir.parent / "serve.log", "wb")
    started = time.perf_counter()
    proc = subprocess.Popen(
        [str(BIN / "chatgate"), "serve", "--port", str(port)], env=env, cwd=data_dir.parent, stdout=log, stderr=log
    )
    out: dict[str, Any] = {}
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=30) as client:
            while "health" not in out:
                if proc.poll() is not None or time.perf_counter() - started > 120:
                    raise SystemExit(f"chatgate serve did not answer /health (see {log.name})")
                try:
                    if client.get(f"{base}/health").status_code == 200:
                        out["health"] = time.perf_counter() - started
                except httpx.HTTPError:
                    time.sleep(0.02)
            url = f"{base}/api/v1/collections/{collection_id}/search"
            headers = {"Authorization": f"Bearer {KEY}"}
            # lexical needs no model; a hybrid search is answered by the lexical index alone ("mode":
            # "lexical") until the embedding model has loaded, then by both.
            for mode in ("lexical", "hybrid"):
                body = {"query": query, "top_k": 5, "mode": mode}
                while mode not in out and time.perf_counter() - started < 180:
                    try:
                        r = client.post(url, json=body, headers=headers)
                    except httpx.HTTPError:
                        time.sleep(0.02)
                        continue
                    if r.status_code == 200 and r.json().get("data"):
                        out.setdefault(f"{mode}_first", (time.perf_counter() - started, r.json()["mode"]))
                        if r.json()["mode"] == mode:
                            out[mode] = time.perf_counter() - started
                        else:
                            time.sleep(0.05)
                    else:
                        out[f"{mode}_status"] = f"{r.status_code}: {r.text[:200]}"
                        time.sleep(0.05)
            t = time.perf_counter()
            client.post(url, json={"query": query, "top_k": 5, "mode": "hybrid"}, headers=headers)
            out["again_ms"] = (time.perf_counter() - t) * 1000
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    after = snapshot(data_dir)
    out["unchanged"] = before == after
    out["chunks"] = before[1][0]
    return out


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")


# -- main --------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> None:
    from chatgate.settings import Settings

    def settings_for(data_dir: Path, url: str | None = None) -> Settings:
        return Settings(data_dir=data_dir) if url is None else Settings(data_dir=data_dir, database_url=url)

    print("$", shlex.join([".venv/bin/python", "bench/retrieval_speed.py", *sys.argv[1:]]))
    model = cpu_model()
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs ({model}), load average {os.getloadavg()}")
    print(f"store {args.store}")
    corpus = read_jsonl(args.data / "corpus.jsonl")
    queries = [q["text"] for q in read_jsonl(args.data / "queries.jsonl")]  # texts only
    root = args.keep or Path(tempfile.mkdtemp(prefix="chatgate-rag-speed-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        if "ingest" in args.parts:
            r = await bench_ingest(settings_for, corpus, root, args.ingest_docs)
            raw = (r["raw_before"] + r["raw_after"]) / 2
            print(
                f"\ningestion: {r['docs']:,} SciFact documents, {r['chunks']:,} chunks in {r['seconds']:.1f} s "
                f"({r['counts']}); embedder batch {r['batch']}, ingest batch {r['ingest_batch']}, "
                f"{r['threads']} torch threads"
            )
            print(f"  {'pipeline (Ingestor)':34} {r['pipeline']:8.1f} chunks/s  {r['pipeline'] / raw:5.2f} of raw")
            print(
                f"  {'raw SentenceTransformer.encode':34} {raw:8.1f} texts/s   (before {r['raw_before']:.1f}, "
                f"after {r['raw_after']:.1f}; same {r['texts']:,} texts)"
            )
        large_dir = None
        if "search" in args.parts or "serve" in args.parts:
            sizes = [2_000, 20_000] if args.quick else [10_000, 100_000]
            results, large_dir = await bench_search(
                settings_for,
                corpus,
                root,
                sizes,
                args.queries,
                queries,
                args.vectors_from,
                args.store,
                args.pg_url,
                args.keep is not None,
            )
            if "search" in args.parts:
                print(f"\nsearch, query embedding excluded ({args.queries} queries; top_k, candidates as configured)")
                print(f"  {'chunks':>8} {'mode':8} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
                for res in results.values():
                    for mode, times in res["times"].items():
                        print(
                            f"  {res['chunks']:8,} {mode:8} {pct(times, 50):8.2f} {pct(times, 99):8.2f} "
                            f"{statistics.fmean(times):8.2f}"
                        )
                for res in results.values():
                    print(f"  ({res['chunks']:,} chunks, {res['docs']:,} documents: indexed in {res['seconds']:.0f} s)")
        if "serve" in args.parts and args.store != "sqlite":
            print("\nserver start: measured on SQLite only (--store sqlite)")
        elif "serve" in args.parts and large_dir is not None:
            s = bench_serve(large_dir / "data", queries[0])
            print(f"\nserver start, {s['chunks']:,} persisted chunks (chatgate serve, 1 worker):")
            print(f"  /health 200 after {s['health']:.2f} s")
            for mode in ("lexical", "hybrid"):
                if f"{mode}_first" in s:
                    at, served = s[f"{mode}_first"]
                    print(f"  first {mode} search answered after {at:.2f} s (served as {served})")
                if mode in s:
                    print(f"  first {mode} search served as {mode} after {s[mode]:.2f} s")
                else:
                    print(f"  {mode} search: {s.get(mode + '_status', 'no answer')}")
            print(f"  a hybrid search after that: {s['again_ms']:.0f} ms (at the client, query embedding included)")
            print(f"  documents, chunks and Chroma writer stamp unchanged (nothing re-embedded): {s['unchanged']}")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BEIR SciFact folder")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep the built indexes and vectors in DIR")
    parser.add_argument("--parts", default="ingest,search,serve")
    parser.add_argument("--ingest-docs", type=int, default=500)
    parser.add_argument(
        "--vectors-from",
        type=Path,
        metavar="DIR",
        help="take the SciFact chunk vectors from an index built by bench/retrieval_eval.py --keep DIR",
    )
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--store", choices=STORES, default="sqlite", help="the store the indexes are built on")
    parser.add_argument("--pg-url", default=DEFAULT_PG, help=f"PostgreSQL server for --store postgres ({DEFAULT_PG})")
    parser.add_argument("--quick", action="store_true", help="300 documents; 2k and 20k chunks; 100 queries")
    args = parser.parse_args()
    args.parts = set(args.parts.split(","))
    if args.quick:
        args.ingest_docs = min(args.ingest_docs, 300)
        args.queries = min(args.queries, 100)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
