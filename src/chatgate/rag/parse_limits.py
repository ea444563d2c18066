"""Limits a file must stay within to be parsed: checked before (or while) a loader unpacks it.

A hostile upload can be small and unpack to gigabytes (a zip bomb as a ``.docx``) or hold thousands of
pages. The loaders check these limits first, from what the file declares, and fail with a
:class:`~chatgate.rag.types.ParseError` saying which limit it broke; the parse worker
(``rag/isolated.py``) bounds what the checks cannot see (memory, time).

- **zip-based formats** (docx): the archive's central directory gives each member's packed and
  unpacked size before anything is unpacked. ``zipfile`` never unpacks a member past its declared
  size (the rest is a CRC error), so checking the declared sizes bounds what can be unpacked.
- **pdf**: the page count, before any text is extracted; pypdf itself caps each stream's
  decompressed size (75 MB).
- **any format**: the characters of text a document yields (counted as sections are made).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import asdict, dataclass
from typing import Any

from chatgate.rag.types import ParseError

RATIO_FLOOR = 1024 * 1024  # members smaller than this unpacked are not held to the ratio (tiny parts compress well)


@dataclass(frozen=True, slots=True)
class ParseLimits:
    """``rag.parsing``'s limits as plain values (the defaults are the settings' defaults)."""

    max_text_chars: int = 20_000_000
    max_pages: int = 2000
    zip_max_uncompressed_bytes: int = 256 * 1024 * 1024
    zip_max_members: int = 10_000
    zip_max_ratio: float = 100.0

    @classmethod
    def from_settings(cls, parsing: Any) -> ParseLimits:
        return cls(**{f: getattr(parsing, f) for f in cls.__dataclass_fields__})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_zip(data: bytes, limits: ParseLimits, fmt: str = "docx") -> None:
    """A zip archive within the member count, unpacked size and compression ratio limits; else ParseError."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError) as exc:
        raise ParseError(f"corrupt or unreadable {fmt}: {exc or type(exc).__name__}") from exc
    if len(members) > limits.zip_max_members:
        raise ParseError(
            f"{fmt} has {len(members)} parts, more than the {limits.zip_max_members} allowed "
            "(rag.parsing.zip_max_members)"
        )
    total = sum(m.file_size for m in members)
    if total > limits.zip_max_uncompressed_bytes:
        raise ParseError(
            f"{fmt} unpacks to {total} bytes, more than the {limits.zip_max_uncompressed_bytes} allowed "
            "(rag.parsing.zip_max_uncompressed_bytes)"
        )
    packed = max(1, sum(m.compress_size for m in members))
    worst = max(
        (m for m in members if m.file_size >= RATIO_FLOOR),
        key=lambda m: m.file_size / max(1, m.compress_size),
        default=None,
    )
    ratio = max(total / packed if total >= RATIO_FLOOR else 0.0, _ratio(worst))
    if ratio > limits.zip_max_ratio:
        raise ParseError(
            f"{fmt} is compressed {ratio:.0f} to 1, more than the {limits.zip_max_ratio:g} allowed "
            "(rag.parsing.zip_max_ratio): a decompression bomb?"
        )


def _ratio(member: zipfile.ZipInfo | None) -> float:
    return 0.0 if member is None else member.file_size / max(1, member.compress_size)


class TextBudget:
    """Counts the characters a document yields; ParseError past ``max_text_chars``."""

    def __init__(self, limits: ParseLimits) -> None:
        self.limit = limits.max_text_chars
        self.used = 0

    def spend(self, chars: int) -> None:
        self.used += chars
        if self.used > self.limit:
            raise ParseError(
                f"more than {self.limit} characters of text, the most allowed (rag.parsing.max_text_chars)"
            )


def check_pages(pages: int, limits: ParseLimits) -> None:
    if pages > limits.max_pages:
        raise ParseError(f"pdf has {pages} pages, more than the {limits.max_pages} allowed (rag.parsing.max_pages)")
