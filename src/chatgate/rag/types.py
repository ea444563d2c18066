"""The values RAG passes between its parts: a parsed document, its chunks, and the embedder interface.

Loaders turn a file into a ``ParsedDocument``; the chunker turns that into ``Chunk``s; an ``Embedder``
turns chunk texts into vectors; the indexes store chunks and answer searches with ``Hit``s.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

_NUMPY = threading.Lock()


def import_numpy() -> None:
    """Import NumPy, one thread at a time. Its first import is not safe from two threads at once (a
    half-initialised ``numpy._typing``), and the dense index (chromadb), the local model (torch) and the
    lexical postings each import it first on a thread of their own; each calls this before."""
    with _NUMPY:
        import numpy  # noqa: F401


class ParseError(Exception):
    """A file that could not be parsed (unsupported format, corrupt, empty); the message says why."""


@dataclass(frozen=True, slots=True)
class Section:
    """A run of text under one heading path (and on one page, for paged formats)."""

    text: str
    headings: tuple[str, ...] = ()
    """The heading path, outermost first (``("Leave", "Parental leave")``)."""
    page: int | None = None
    """1-based page number for paged formats (pdf); None otherwise."""


@dataclass(frozen=True, slots=True)
class ParsedDocument:
    title: str
    sections: tuple[Section, ...]
    format: str
    """``txt``, ``md``, ``html``, ``pdf`` or ``docx``."""


@dataclass(frozen=True, slots=True)
class Chunk:
    text: str
    ordinal: int
    """Position of the chunk in its document, from 0."""
    tokens: int
    """Tokens of ``text`` by the project tokenizer."""
    title: str = ""
    headings: tuple[str, ...] = ()
    page: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)


class Embedder(Protocol):
    """Texts to vectors. ``name`` and ``dimension`` are recorded per collection."""

    @property
    def name(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order (documents and queries alike)."""
        ...

    async def close(self) -> None: ...
