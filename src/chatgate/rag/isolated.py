"""Parsing in a worker process (``rag/parse_worker.py``), so that a hostile file costs only that process.

Only parsing is isolated: it is what runs third-party code (pypdf, python-docx, lxml) over untrusted
bytes, and what a decompression bomb or a pathological pdf turns into gigabytes and minutes. Chunking
and embedding stay in the server: they work on the text the worker returned, which
``rag.parsing.max_text_chars`` bounds.

One worker serves one ingestion: started for its first file that needs parsing (a Python start and the
loaders' imports, ~0.1 s, paid once per job rather than per file, and not counted in a file's time), fed
one file at a time, and
stopped by ``release()`` when the ingestion ends, so that no idle parser holds memory between jobs. A
file that overruns ``rag.parsing.timeout`` gets the worker killed; one that exhausts the worker's memory
(``rag.parsing.memory_mb``, its ``RLIMIT_AS``) ends it. Either way that file fails with the reason and
the next file gets a fresh worker. The server's memory and event loop never see the file's unpacking.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import struct
import sys
from pathlib import Path

import orjson

from chatgate.rag.parse_limits import ParseLimits
from chatgate.rag.types import ParsedDocument, ParseError, Section

log = logging.getLogger("chatgate.rag")

_Process = asyncio.subprocess.Process
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the directory holding the chatgate package
START_TIMEOUT = 30.0  # seconds for a worker to start (Python, the loaders' imports) before its first file


class IsolatedParser:
    """``parse(data, filename)`` in a worker process with a memory and a time limit (see the module)."""

    def __init__(self, limits: ParseLimits, memory_mb: int, timeout: float) -> None:
        self.limits = limits
        self.memory_mb = memory_mb
        self.timeout = timeout
        self._proc: _Process | None = None
        self._lock = asyncio.Lock()
        self.started = 0  # workers started (tests and /admin/metrics read it)
        # An answer can be no larger than the text allowed, JSON-escaped (6 bytes a character at worst).
        self._max_answer = 6 * limits.max_text_chars + (1 << 20)

    @property
    def pid(self) -> int | None:
        """The running worker's pid, if one runs."""
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    async def parse(self, data: bytes, filename: str) -> ParsedDocument:
        """The parsed document, or ParseError with the reason (including a limit the file broke)."""
        async with self._lock:
            proc = await self._worker()
            try:
                async with asyncio.timeout(self.timeout):
                    answer = await self._ask(proc, data, filename)
            except TimeoutError:
                await self._stop(kill=True)
                raise ParseError(
                    f"parsing took longer than {self.timeout:g} s, the most allowed (rag.parsing.timeout)"
                ) from None
            except (ConnectionError, asyncio.IncompleteReadError, BrokenPipeError, _BadAnswer) as exc:
                code = await self._stop(kill=True)
                raise ParseError(self._crash_reason(code, exc)) from None
            if answer.get("memory"):
                await self._stop(kill=True)
                raise ParseError(self._memory_reason())
            if "error" in answer:
                raise ParseError(str(answer["error"]))
            return _document(answer.get("document"))

    async def release(self) -> None:
        """Stop the worker (the ingestion is over); the next file starts another."""
        async with self._lock:
            await self._stop(kill=False)

    # -- the worker ---------------------------------------------------------------------------------------

    async def _worker(self) -> _Process:
        if self._proc is not None and self._proc.returncode is None:
            return self._proc
        config = orjson.dumps({"memory_bytes": self.memory_mb * 1024 * 1024, "limits": self.limits.as_dict()})
        # The worker runs this very chatgate (the directory this package was imported from comes first).
        path = os.pathsep.join(p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")) if p)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "chatgate.rag.parse_worker",
            config.decode(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": path},
        )
        self.started += 1
        try:
            async with asyncio.timeout(START_TIMEOUT):
                ready = await self._answer(proc)
            if not ready.get("ready"):
                raise _BadAnswer("no ready message")
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, _BadAnswer) as exc:
            code = await _end(proc, kill=True)
            log.warning("the parse worker did not start (exit code %s): %s", code, exc)
            raise ParseError("the parser could not be started") from None
        except BaseException:
            await asyncio.shield(_end(proc, kill=True))
            raise
        self._proc = proc
        return proc

    async def _ask(self, proc: _Process, data: bytes, filename: str) -> dict[str, object]:
        assert proc.stdin is not None and proc.stdout is not None
        header = orjson.dumps({"filename": filename, "size": len(data)})
        proc.stdin.write(struct.pack(">I", len(header)) + header)
        proc.stdin.write(data)
        await proc.stdin.drain()
        return await self._answer(proc)

    async def _answer(self, proc: _Process) -> dict[str, object]:
        assert proc.stdout is not None
        (size,) = struct.unpack(">I", await proc.stdout.readexactly(4))
        if size > self._max_answer:
            raise _BadAnswer(f"an answer of {size} bytes")
        try:
            answer = orjson.loads(await proc.stdout.readexactly(size))
        except orjson.JSONDecodeError as exc:
            raise _BadAnswer("an answer that is not JSON") from exc
        if not isinstance(answer, dict):
            raise _BadAnswer("an answer that is not an object")
        return answer

    async def _stop(self, kill: bool) -> int | None:
        """End the worker, if one runs; its exit code."""
        proc, self._proc = self._proc, None
        return None if proc is None else await _end(proc, kill)

    def _memory_reason(self) -> str:
        return f"parsing needs more memory than the {self.memory_mb} MiB allowed (rag.parsing.memory_mb)"

    def _crash_reason(self, code: int | None, exc: BaseException) -> str:
        if code is not None and code < 0 and -code != signal.SIGKILL:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = str(-code)
            log.warning("the parse worker died of %s", name)
            return f"the parser crashed ({name}): a malformed file, or more memory than rag.parsing.memory_mb"
        log.warning("the parse worker stopped answering: %s", exc)
        return f"the parser stopped (exit code {code}): a malformed file, or more memory than rag.parsing.memory_mb"


class _BadAnswer(Exception):
    """The worker sent something that is not an answer."""


async def _end(proc: _Process, kill: bool) -> int | None:
    """End a worker (closing its stdin ends it cleanly; ``kill`` does not wait for that); its exit code."""
    if proc.returncode is None:
        if kill:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        elif proc.stdin is not None:
            proc.stdin.close()
        try:
            async with asyncio.timeout(5):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    return proc.returncode


def _document(raw: object) -> ParsedDocument:
    """A ParsedDocument from the worker's JSON, checked (it came from a process that read hostile bytes)."""
    if not isinstance(raw, dict):
        raise ParseError("the parser returned no document")
    sections = []
    for item in raw.get("sections") or ():
        if not (isinstance(item, list) and len(item) == 3):
            raise ParseError("the parser returned a malformed document")
        text, headings, page = item
        if not isinstance(text, str) or not isinstance(headings, list) or not (page is None or isinstance(page, int)):
            raise ParseError("the parser returned a malformed document")
        sections.append(Section(text, tuple(str(h) for h in headings), page))
    return ParsedDocument(title=str(raw.get("title") or ""), sections=tuple(sections), format=str(raw.get("format")))
