"""Credentials: the check every request goes through, behind one small interface.

Only SHA-256 digests of keys are kept, in memory, on disk and in the store. Authenticators:
``StaticKeys`` (the bootstrap admin key), ``StoredKeys`` (keys in the database, cached briefly),
``JWTSignIn`` (the deployer's JWTs), chained by ``Credentials``.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from chatgate.errors import Unauthorized
from chatgate.identity.jwt import JWTVerifier, looks_like_jwt
from chatgate.identity.model import check_id
from chatgate.settings import JWTClaims
from chatgate.store.db import Store
from chatgate.store.writebehind import TouchKey, WriteBehind

ADMIN_KEY_FILE = "admin_key.sha256"
KEY_PREFIX = "cg-"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who presented the credential: the key (or token) and the user it belongs to."""

    key_id: str
    scopes: frozenset[str] = field(default_factory=frozenset)
    user_id: str = ""
    name: str | None = None
    email: str | None = None
    roles: frozenset[str] = field(default_factory=frozenset)


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


ADMIN = Principal(
    key_id="bootstrap-admin",
    scopes=frozenset({"admin", "user", "trusted_forwarder"}),  # the deployer itself may forward identity
    user_id="admin",
    name="admin",
    roles=frozenset({"admin"}),
)
ANONYMOUS = Principal(key_id="anonymous", scopes=frozenset({"anonymous"}), user_id="anonymous")


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
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
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


class StoredKeys:
    """Keys in the store, looked up by digest; answers (found or not) are cached for ``ttl`` seconds."""

    def __init__(self, store: Store, writer: WriteBehind | None = None, ttl: float = 30.0, max_entries: int = 10_000):
        self.store = store
        self.writer = writer
        self.ttl = ttl
        self.max_entries = max_entries
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    async def authenticate(self, key: str) -> Principal | None:
        presented = digest(key)
        now = time.monotonic()
        hit = self._cache.get(presented)
        if hit is not None and hit[0] > now:
            return hit[1]
        row = await self.store.keys.by_digest(presented)
        principal = None
        if row is not None and row.usable(datetime.now(UTC)):
            principal = Principal(key_id=row.id, scopes=frozenset(row.scopes), user_id=row.user_id)
            if self.writer is not None:
                self.writer.put(TouchKey(key_id=row.id, at=datetime.now(UTC)))
        if len(self._cache) >= self.max_entries:
            self._cache.clear()
        expires = now + self.ttl
        if row is not None and row.expires_at is not None:  # never cache a key past its expiry
            expires = min(expires, now + max(0.0, (row.expires_at - datetime.now(UTC)).total_seconds()))
        self._cache[presented] = (expires, principal)
        return principal


class JWTSignIn:
    """A deployer's JWT presented as the bearer credential."""

    def __init__(self, verifier: JWTVerifier, claims: JWTClaims) -> None:
        self.verifier = verifier
        self.claims = claims

    async def authenticate(self, key: str) -> Principal | None:
        if not looks_like_jwt(key):
            return None
        claims = self.verifier.verify(key)  # raises Unauthorized with the reason
        sub = claims.get(self.claims.user_id)
        if not isinstance(sub, str) or not sub:
            raise Unauthorized("JWT has no user id claim.", details={"reason": "claims", "claim": self.claims.user_id})
        check_id(f"jwt.{self.claims.user_id}", sub)
        roles = claims.get(self.claims.roles)
        role_set = frozenset([roles] if isinstance(roles, str) else [r for r in roles or () if isinstance(r, str)])
        name, email = claims.get(self.claims.name), claims.get(self.claims.email)
        return Principal(
            key_id="jwt",
            scopes=frozenset({"user", "jwt"}),
            user_id=f"jwt:{sub}",
            name=name if isinstance(name, str) else None,
            email=email if isinstance(email, str) else None,
            roles=role_set,
        )


class Credentials:
    """The first authenticator that recognises the credential wins."""

    def __init__(self, *authenticators: Authenticator) -> None:
        self.authenticators = authenticators

    async def authenticate(self, key: str) -> Principal | None:
        for auth in self.authenticators:
            principal = await auth.authenticate(key)
            if principal is not None:
                return principal
        return None
