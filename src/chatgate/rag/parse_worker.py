"""The parse worker: a child process that parses files for the server within a memory limit.

Started by ``rag/isolated.py`` as ``python -m chatgate.rag.parse_worker CONFIG`` (CONFIG: JSON with
``memory_bytes`` and the ``limits``). Before reading any file it limits its address space
(``RLIMIT_AS``) and lowers its CPU priority, so that a hostile file can exhaust only this process, and
the server keeps the CPU for requests. Then it answers requests on stdin/stdout, one at a time, until
stdin closes (the server stopped it, or died):

- once started: ``{"ready": true}`` (framed as an answer);
- request: a 4-byte big-endian length, a JSON header ``{"filename", "size"}``, then ``size`` bytes;
- answer: a 4-byte length, then JSON ``{"document": {"title", "format", "sections": [[text, headings,
  page], ...]}}`` or ``{"error": reason}``.

JSON, not pickle: the server never unpickles what a process that read hostile bytes sends. After a
``MemoryError`` the worker answers ``{"error": ..., "memory": true}`` and exits (its heap may be in
pieces); the server starts another for the next file.
"""

from __future__ import annotations

import os
import resource
import struct
import sys
from typing import IO

import orjson

from chatgate.rag.loaders import parse
from chatgate.rag.parse_limits import ParseLimits
from chatgate.rag.types import ParsedDocument, ParseError

NICE = 5


def _read(stream: IO[bytes], n: int) -> bytes | None:
    """Exactly ``n`` bytes (a buffered reader blocks until it has them), or None at the end of the stream."""
    data = stream.read(n)
    return data if len(data) == n else None


def _send(out: IO[bytes], payload: bytes) -> None:
    out.write(struct.pack(">I", len(payload)) + payload)
    out.flush()


def document_json(doc: ParsedDocument) -> bytes:
    return orjson.dumps(
        {
            "title": doc.title,
            "format": doc.format,
            "sections": [[s.text, list(s.headings), s.page] for s in doc.sections],
        }
    )


def serve(inp: IO[bytes], out: IO[bytes], limits: ParseLimits) -> int:
    out_of_memory = b'{"error":"out of memory","memory":true}'  # made before any file is read
    _send(out, b'{"ready":true}')  # started: the server times each file from here
    while True:
        head = _read(inp, 4)
        if head is None:
            return 0
        raw = _read(inp, struct.unpack(">I", head)[0])
        if raw is None:
            return 0
        header = orjson.loads(raw)
        data = _read(inp, int(header["size"]))
        if data is None:
            return 0
        try:
            reply = b'{"document":' + document_json(parse(data, str(header["filename"]), limits)) + b"}"
        except MemoryError:
            del data
            _send(out, out_of_memory)
            return 3
        except ParseError as exc:
            reply = orjson.dumps({"error": str(exc)})
        except Exception as exc:  # a loader bug: the file fails, the worker goes on
            reply = orjson.dumps({"error": f"{type(exc).__name__}: {exc}"})
        del data
        _send(out, reply)


def main(argv: list[str]) -> int:
    config = orjson.loads(argv[1])
    limit = int(config["memory_bytes"])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    os.nice(NICE)
    # The protocol keeps its own descriptor for answers; anything a library prints goes to stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    return serve(sys.stdin.buffer, out, ParseLimits(**config["limits"]))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
