"""API keys: the check every request goes through, behind one small interface.

Only SHA-256 digests of keys are kept, in memory and on disk, and compared in constant time.
Database-backed keys slot in as another ``Authenticator``.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

ADMIN_KEY_FILE = "admin_key.sha256"
KEY_PREFIX = "cg-"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who the key belongs to."""

    key_id: str
    scopes: frozenset[str] = field(default_factory=frozenset)


class Authenticator(Protocol):
    async def authenticate(self, key: str) -> Principal | None: ...


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class StaticKeys:
    """A fixed set of key digests (the bootstrap admin key)."""

    def __init__(self, digests: dict[str, Principal]) -> None:
        self._digests = digests

    async def authenticate(self, key: str) -> Principal | None:
        presented = digest(key)
        found = None
        for known, principal in self._digests.items():
            if secrets.compare_digest(presented, known):
                found = principal
        return found


ADMIN = Principal(key_id="bootstrap-admin", scopes=frozenset({"admin", "user"}))


def generate_key(kind: str = "admin") -> str:
    return f"{KEY_PREFIX}{kind}-{secrets.token_urlsafe(32)}"


def bootstrap_admin_digest(data_dir: Path, configured: str | None) -> tuple[str, str | None]:
    """The admin key's digest, and the new key itself if one was generated just now.

    ``CHATGATE_ADMIN_KEY`` wins. Otherwise the digest lives in ``<data_dir>/admin_key.sha256``
    (mode 0600); the first start creates it and returns the plain key so it can be printed once.
    """
    if configured:
        return digest(configured), None
    path = data_dir / ADMIN_KEY_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    key = generate_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        stored = path.read_text().strip()
        if len(stored) != 64:
            raise ValueError(f"{path} is not a SHA-256 digest; delete it to generate a new admin key") from None
        return stored, None
    with os.fdopen(fd, "w") as fh:
        fh.write(digest(key) + "\n")
    return digest(key), key
