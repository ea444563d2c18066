"""Signed identity: the deployer's JWTs (HS256 or RS256) and Open WebUI's ``X-OpenWebUI-User-Jwt`` (HS256).

Keys are loaded once, at construction; a missing or unusable key file is a ``ValueError`` then, not a 401
at the first request. Only the configured algorithms are accepted, each with its own key, so ``none`` and
an HS256 token "signed" with the RSA public key are refused. Verified tokens are remembered (bounded) until
they expire: a repeated token costs a dict lookup instead of a signature check.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import time
import warnings
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from chatgate.errors import Unauthorized
from chatgate.settings import JWTSettings

log = logging.getLogger("chatgate.identity")

OPENWEBUI_ISSUER = "open-webui"
MIN_HMAC_BYTES = 32  # RFC 7518 section 3.2: an HS256 key is at least 256 bits
MIN_RSA_BITS = 2048
CACHE_SIZE = 4096

_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")

Key = bytes | RSAPublicKey | jwt.PyJWK


def looks_like_jwt(token: str) -> bool:
    """Three non-empty base64url segments: a JWT, not an API key (``cg-...`` keys have no dots)."""
    return _JWT_SHAPE.fullmatch(token) is not None


class _Verified:
    """Tokens whose signature already checked out, until they expire. Bounded, oldest out first."""

    __slots__ = ("_leeway", "_tokens")

    def __init__(self, leeway: float) -> None:
        self._leeway = leeway
        self._tokens: dict[str, tuple[dict[str, Any], float]] = {}

    def get(self, token: str, label: str) -> dict[str, Any] | None:
        hit = self._tokens.get(token)
        if hit is None:
            return None
        if hit[1] <= time.time() - self._leeway:
            del self._tokens[token]
            raise _unauthorized(label, "has expired.", "expired")
        return dict(hit[0])

    def put(self, token: str, claims: dict[str, Any]) -> None:
        if len(self._tokens) >= CACHE_SIZE:
            del self._tokens[next(iter(self._tokens))]
        self._tokens[token] = (dict(claims), float(claims["exp"]))


def _unauthorized(label: str, what: str, reason: str, **details: Any) -> Unauthorized:
    return Unauthorized(f"{label} {what}", details={"reason": reason, **details})


def _decode(
    token: str,
    key: Key,
    algorithm: str,
    *,
    label: str,
    require: list[str],
    issuer: str | None,
    audience: str | None,
    leeway: float,
    weak_key: bool,
) -> dict[str, Any]:
    """``jwt.decode`` with exactly one algorithm, its errors mapped to ``Unauthorized``."""
    try:
        if weak_key:  # the weakness was logged once at construction; PyJWT would warn on every call
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
                return _call_decode(token, key, algorithm, require, issuer, audience, leeway)
        return _call_decode(token, key, algorithm, require, issuer, audience, leeway)
    except jwt.ExpiredSignatureError:
        raise _unauthorized(label, "has expired.", "expired") from None
    except jwt.InvalidSignatureError:
        raise _unauthorized(label, "signature is invalid.", "bad_signature") from None
    except jwt.InvalidIssuerError:
        raise _unauthorized(label, "issuer is not accepted.", "issuer") from None
    except jwt.InvalidAudienceError:
        raise _unauthorized(label, "audience is not accepted.", "audience") from None
    except jwt.InvalidAlgorithmError:
        raise _unauthorized(label, f"algorithm is not accepted (expected {algorithm}).", "algorithm") from None
    except jwt.ImmatureSignatureError:
        raise _unauthorized(label, "is not valid yet.", "not_yet_valid") from None
    except jwt.MissingRequiredClaimError as exc:
        if exc.claim == "iss":
            raise _unauthorized(label, "issuer is not accepted.", "issuer", claim="iss") from None
        if exc.claim == "aud":
            raise _unauthorized(label, "audience is not accepted.", "audience", claim="aud") from None
        raise _unauthorized(label, f"lacks the required claim '{exc.claim}'.", "malformed", claim=exc.claim) from None
    except jwt.PyJWTError:
        raise _unauthorized(label, "is malformed.", "malformed") from None


def _call_decode(
    token: str,
    key: Key,
    algorithm: str,
    require: list[str],
    issuer: str | None,
    audience: str | None,
    leeway: float,
) -> dict[str, Any]:
    return jwt.decode(
        token,
        key,
        algorithms=[algorithm],
        issuer=issuer,
        audience=audience,
        leeway=leeway,
        options={"require": require},
    )


def _header(token: str, label: str) -> dict[str, Any]:
    """The unverified JOSE header: only used to pick a key, never trusted for anything else."""
    segment = token.split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError):
        raise _unauthorized(label, "is malformed.", "malformed") from None
    if not isinstance(header, dict):
        raise _unauthorized(label, "is malformed.", "malformed")
    return header


def _hmac_key(secret: str, what: str) -> tuple[bytes, bool]:
    key = secret.encode()
    if not key:
        raise ValueError(f"{what} is empty")
    weak = len(key) < MIN_HMAC_BYTES
    if weak:
        log.warning("%s is %d bytes; HS256 wants at least %d (RFC 7518 3.2)", what, len(key), MIN_HMAC_BYTES)
    return key, weak


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _rsa_key(path: Path) -> RSAPublicKey:
    try:
        key = load_pem_public_key(_read(path, "identity.jwt.public_key_file"))
    except ValueError as exc:
        raise ValueError(f"identity.jwt.public_key_file {path} is not a PEM public key: {exc}") from None
    if not isinstance(key, RSAPublicKey):
        raise ValueError(f"identity.jwt.public_key_file {path} is not an RSA public key")
    return key


def _jwks(path: Path) -> dict[str | None, jwt.PyJWK]:
    try:
        data = json.loads(_read(path, "identity.jwt.jwks_file"))
        keyset = jwt.PyJWKSet.from_dict(data)
    except (ValueError, AttributeError, jwt.PyJWTError) as exc:
        raise ValueError(f"identity.jwt.jwks_file {path} is not a usable JWKS: {exc}") from None
    keys = {k.key_id: k for k in keyset if k.algorithm_name == "RS256"}
    if not keys:
        raise ValueError(f"identity.jwt.jwks_file {path} has no RS256 (RSA) key")
    return keys


def _rsa_bits(key: Key) -> int:
    inner = key.key if isinstance(key, jwt.PyJWK) else key
    return inner.key_size if isinstance(inner, RSAPublicKey) else MIN_RSA_BITS


class JWTVerifier:
    """The deployer's sign-in JWTs (``Authorization: Bearer <jwt>``): HS256 with ``secret``, RS256 with a key file."""

    LABEL = "JWT"

    def __init__(self, settings: JWTSettings) -> None:
        self._issuer = settings.issuer
        self._audience = settings.audience
        self._leeway = settings.leeway
        self._require = ["exp", settings.claims.user_id]
        self._hs: bytes | None = None
        self._rs: RSAPublicKey | None = None
        self._jwks: dict[str | None, jwt.PyJWK] | None = None
        self._weak_hs = False
        if settings.public_key_file and settings.jwks_file:
            raise ValueError("identity.jwt: set public_key_file or jwks_file, not both")
        if settings.secret is not None:
            self._hs, self._weak_hs = _hmac_key(settings.secret.get_secret_value(), "identity.jwt.secret")
        if settings.public_key_file:
            self._rs = _rsa_key(settings.public_key_file)
        if settings.jwks_file:
            self._jwks = _jwks(settings.jwks_file)
        rsa_keys: list[Key] = [self._rs] if self._rs is not None else list((self._jwks or {}).values())
        self._weak_rs = any(_rsa_bits(k) < MIN_RSA_BITS for k in rsa_keys)
        if self._weak_rs:
            log.warning("identity.jwt: an RSA key is shorter than %d bits", MIN_RSA_BITS)
        self._verified = _Verified(self._leeway)

    @property
    def enabled(self) -> bool:
        return self._hs is not None or self._rs is not None or self._jwks is not None

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The algorithms tokens may use, each bound to its own key."""
        hs = ("HS256",) if self._hs is not None else ()
        return hs + (("RS256",) if self._rs is not None or self._jwks is not None else ())

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims, or ``Unauthorized`` saying precisely what is wrong with it."""
        cached = self._verified.get(token, self.LABEL)
        if cached is not None:
            return cached
        if not self.enabled:
            raise _unauthorized(self.LABEL, "sign-in is not configured.", "disabled")
        key, algorithm, weak = self._key_for(token)
        claims = _decode(
            token,
            key,
            algorithm,
            label=self.LABEL,
            require=self._require,
            issuer=self._issuer,
            audience=self._audience,
            leeway=self._leeway,
            weak_key=weak,
        )
        self._verified.put(token, claims)
        return claims

    def _key_for(self, token: str) -> tuple[Key, str, bool]:
        """The one key (and algorithm) a token may be checked with; HS256 never gets the RSA key."""
        if self._rs is None and self._jwks is None and self._hs is not None:
            return self._hs, "HS256", self._weak_hs
        header = _header(token, self.LABEL)
        alg = header.get("alg")
        if alg == "HS256" and self._hs is not None:
            return self._hs, "HS256", self._weak_hs
        if self._rs is not None:
            return self._rs, "RS256", self._weak_rs
        if self._jwks is not None:
            kid = header.get("kid")
            found = self._jwks.get(kid) if isinstance(kid, str) else None
            if found is None and kid is None and len(self._jwks) == 1:
                found = next(iter(self._jwks.values()))
            if found is None:
                raise _unauthorized(self.LABEL, "key id (kid) is not known.", "unknown_key")
            return found, "RS256", self._weak_rs
        raise _unauthorized(self.LABEL, "algorithm is not accepted.", "algorithm")  # pragma: no cover


class OpenWebUIVerifier:
    """Open WebUI's per-request ``X-OpenWebUI-User-Jwt``: HS256, ``iss`` = ``open-webui``, ``exp`` and ``sub``."""

    LABEL = "Open WebUI user JWT"

    def __init__(self, secret: str, *, leeway: float = 30.0) -> None:
        self._key, self._weak = _hmac_key(secret, "identity.openwebui_jwt_secret")
        self._leeway = leeway
        self._verified = _Verified(leeway)

    def verify(self, token: str) -> dict[str, Any]:
        cached = self._verified.get(token, self.LABEL)
        if cached is not None:
            return cached
        claims = _decode(
            token,
            self._key,
            "HS256",
            label=self.LABEL,
            require=["exp", "sub", "iss"],
            issuer=OPENWEBUI_ISSUER,
            audience=None,
            leeway=self._leeway,
            weak_key=self._weak,
        )
        if not claims["sub"]:
            raise _unauthorized(self.LABEL, "lacks the required claim 'sub'.", "malformed", claim="sub")
        self._verified.put(token, claims)
        return claims
