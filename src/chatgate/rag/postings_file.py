"""The lexical postings saved between runs: one uncompressed ``.npz`` file, written to a temporary name and
renamed over the last one, so a reader finds the old file or the new one, never half of one.

Strings (terms, collection and document ids) are stored as one NUL-separated UTF-8 byte array each: a NumPy
string array would pad every string to the longest.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
FORMAT = 1
_STRINGS = ("tokenize", "terms", "collections", "docs")
_ARRAYS = ("offsets", "idx", "tf", "ids", "dl", "coll", "alive")


@dataclass(frozen=True)
class Snapshot:
    """The main postings (``offsets``/``idx``/``tf``, by term id = position in ``terms``) and, by chunk index,
    the chunk's id, length, collection (position in ``collections``), document and whether it is alive."""

    tokenize: str
    terms: list[str]
    collections: list[str]
    docs: list[str]
    offsets: np.ndarray
    idx: np.ndarray
    tf: np.ndarray
    ids: np.ndarray
    dl: np.ndarray
    coll: np.ndarray
    alive: np.ndarray

    def save(self, path: Path) -> None:
        """Write the file (a warning in the log when it cannot be)."""
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        arrays: dict[str, np.ndarray] = {"format": np.array([FORMAT]), "tokenize": _pack([self.tokenize])}
        arrays |= {k: _pack(getattr(self, k)) for k in _STRINGS[1:]} | {k: getattr(self, k) for k in _ARRAYS}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(tmp, **arrays)  # type: ignore[arg-type]
            os.replace(tmp, path)
        except OSError:
            log.warning("lexical postings snapshot not saved", exc_info=True)
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path, tokenize: str) -> Snapshot | None:
        """The file's content when there is one, made with this ``tokenize`` option and consistent."""
        if not path.exists():
            return None
        try:
            with np.load(path) as z:
                if int(z["format"][0]) != FORMAT:
                    return None
                found = {k: _unpack(z[k]) for k in _STRINGS} | {k: z[k] for k in _ARRAYS}
        except (OSError, ValueError, KeyError, EOFError):
            log.warning("lexical postings snapshot unreadable; rebuilding", exc_info=True)
            return None
        if found.pop("tokenize") != [tokenize]:
            return None
        snapshot = cls(tokenize=tokenize, **found)
        n = len(snapshot.docs)
        if not (len(snapshot.ids) == len(snapshot.dl) == len(snapshot.coll) == len(snapshot.alive) == n):
            return None
        return snapshot


def _pack(strings: Iterable[str]) -> np.ndarray:
    return np.frombuffer("\0".join(strings).encode(), dtype=np.uint8)


def _unpack(packed: np.ndarray) -> list[str]:
    text = packed.tobytes().decode()
    return text.split("\0") if text else []
