#!/usr/bin/env python3
"""What parsing in a worker process costs (``rag/isolated.py``) against parsing in a thread of the server.

    .venv/bin/python bench/parse_isolation.py [--files 50] [--repeat 3]

The same files are parsed three ways, best of ``--repeat`` passes each, in one run:

- ``thread``: ``loaders.parse`` in a thread (``rag.parsing.isolate: false``), what the server did before;
- ``worker``: one ``IsolatedParser`` worker for the whole batch (what an ingestion does: the worker is
  started for its first file and released at the end), start included;
- ``worker per file``: a new worker for every file (the alternative the design turned down), for scale.

The files: the test samples (md, txt, html, pdf, docx) repeated to ``--files``, plus one larger pdf
made of their text. Prints seconds per pass, milliseconds per file and the ratio to ``thread``, and the
worker's start time alone. Figures only, never a verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from chatgate.rag.isolated import IsolatedParser  # noqa: E402
from chatgate.rag.loaders import parse  # noqa: E402
from chatgate.rag.parse_limits import ParseLimits  # noqa: E402

SAMPLES = ROOT / "tests" / "rag" / "samples"
NAMES = ("handbook.md", "handbook.txt", "handbook.html", "handbook.pdf", "handbook.docx")


def files(n: int) -> list[tuple[str, bytes]]:
    samples = [(name, (SAMPLES / name).read_bytes()) for name in NAMES]
    return [samples[i % len(samples)] for i in range(n)]


async def in_thread(batch: list[tuple[str, bytes]]) -> float:
    started = time.perf_counter()
    for name, data in batch:
        await asyncio.to_thread(parse, data, name)
    return time.perf_counter() - started


async def in_worker(batch: list[tuple[str, bytes]], per_file: bool = False) -> float:
    """One worker for the batch, or (``per_file``) a new one for each file; starts included."""
    parser = IsolatedParser(ParseLimits(), 1024, 120)
    started = time.perf_counter()
    for name, data in batch:
        await parser.parse(data, name)
        if per_file:
            await parser.release()
    await parser.release()
    return time.perf_counter() - started


async def worker_per_file(batch: list[tuple[str, bytes]]) -> float:
    return await in_worker(batch, per_file=True)


async def start_only(repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        parser = IsolatedParser(ParseLimits(), 1024, 120)
        started = time.perf_counter()
        await parser.parse(b"x", "a.txt")
        best = min(best, time.perf_counter() - started)
        await parser.release()
    return best


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=50)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    batch = files(args.files)
    print(f"# {shlex.join(sys.argv)}  (Python {platform.python_version()}, {platform.machine()})")
    await in_thread(batch[:5])  # the loaders' imports, once
    results = {}
    for label, run in (("thread", in_thread), ("worker", in_worker), ("worker per file", worker_per_file)):
        results[label] = min([await run(batch) for _ in range(args.repeat)])
    base = results["thread"]
    print(f"{'way':<16} {'s/pass':>8} {'ms/file':>8} {'vs thread':>10}")
    for label, seconds in results.items():
        print(f"{label:<16} {seconds:8.3f} {1000 * seconds / len(batch):8.2f} {seconds / base:10.2f}")
    print(f"worker start (Python, imports, a first tiny file): {1000 * await start_only(args.repeat):.0f} ms")


if __name__ == "__main__":
    asyncio.run(main())
