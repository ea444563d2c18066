"""Parsing in a worker process (``rag/isolated.py``): the same documents as in process; a file that needs
more memory than allowed, takes too long or crashes the worker fails alone, with the reason, and the next
file gets a fresh worker; the worker goes when the ingestion releases it."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator

import pytest

from chatgate.rag.isolated import IsolatedParser
from chatgate.rag.loaders import parse
from chatgate.rag.parse_limits import ParseLimits
from chatgate.rag.types import ParseError
from tests.rag.bombs import SAMPLES, docx_bomb

MIB = 1024 * 1024
NO_ZIP_LIMITS = ParseLimits(zip_max_uncompressed_bytes=1 << 40, zip_max_ratio=1e9)  # only memory stops a bomb
SLOW_HTML = ("<html><body>" + "<div><p>slow <b>parse</b></p></div>" * 300_000 + "</body></html>").encode()


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def worker_pid(parser: IsolatedParser) -> int:
    """The pid of the worker a parse just started."""
    for _ in range(5000):
        if parser.pid is not None:
            return parser.pid
        await asyncio.sleep(0.001)
    raise AssertionError("no worker started")


@pytest.fixture
async def parser() -> AsyncIterator[IsolatedParser]:
    p = IsolatedParser(NO_ZIP_LIMITS, memory_mb=384, timeout=60)
    yield p
    await p.release()


@pytest.mark.parametrize("name", ["handbook.docx", "handbook.pdf", "handbook.html", "handbook.md", "handbook.txt"])
async def test_the_worker_parses_as_the_server_would(parser: IsolatedParser, name: str) -> None:
    data = (SAMPLES / name).read_bytes()
    assert await parser.parse(data, name) == parse(data, name, NO_ZIP_LIMITS)


async def test_bad_files_fail_with_their_reason_and_the_worker_lives_on(parser: IsolatedParser) -> None:
    with pytest.raises(ParseError, match="corrupt or unreadable pdf"):
        await parser.parse((SAMPLES / "corrupt.pdf").read_bytes(), "corrupt.pdf")
    pid = parser.pid
    assert pid is not None
    assert (await parser.parse(b"# Title\n\nText.", "a.md")).title == "Title"
    assert parser.pid == pid and parser.started == 1  # one worker for the whole ingestion


async def test_a_bomb_exhausts_the_worker_not_the_server(parser: IsolatedParser) -> None:
    bomb = docx_bomb(768 * MIB)  # ~2 MB packed; unpacking it needs more than the worker's 384 MiB
    first = None
    with pytest.raises(ParseError, match=r"more memory than the 384 MiB allowed \(rag.parsing.memory_mb\)"):
        task = asyncio.ensure_future(parser.parse(bomb, "bomb.docx"))
        first = await worker_pid(parser)
        await task
    assert first is not None and gone(first)
    doc = await parser.parse((SAMPLES / "handbook.docx").read_bytes(), "handbook.docx")
    assert doc.title == "Employee Handbook" and parser.started == 2  # the next file: a fresh worker


async def test_a_file_over_the_time_limit_gets_the_worker_killed() -> None:
    slow = IsolatedParser(ParseLimits(), memory_mb=1024, timeout=0.2)
    try:
        task = asyncio.ensure_future(slow.parse(SLOW_HTML, "slow.html"))
        pid = await worker_pid(slow)
        with pytest.raises(ParseError, match=r"took longer than 0.2 s.*rag.parsing.timeout"):
            await task
        assert gone(pid) and slow.pid is None
        assert (await slow.parse(b"quick", "a.txt")).sections[0].text == "quick"
    finally:
        await slow.release()


async def test_a_worker_that_crashes_fails_its_file(parser: IsolatedParser) -> None:
    task = asyncio.ensure_future(parser.parse(SLOW_HTML, "slow.html"))
    pid = await worker_pid(parser)
    await asyncio.sleep(0.05)  # it is reading or parsing the file
    os.kill(pid, signal.SIGSEGV)
    # SIGSEGV by name when asyncio's child watcher saw the exit status (it may not, when another watcher in the
    # test process reaped the child first: then it is "stopped")
    with pytest.raises(ParseError, match=r"the parser (crashed \(SIGSEGV\)|stopped)"):
        await task
    assert (await parser.parse(b"after", "a.txt")).sections[0].text == "after"


async def test_release_stops_the_worker(parser: IsolatedParser) -> None:
    await parser.parse(b"text", "a.txt")
    pid = parser.pid
    assert pid is not None
    await parser.release()
    assert parser.pid is None and gone(pid)
    await parser.release()  # twice: nothing to stop
