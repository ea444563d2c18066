"""JWT verification with real tokens: HS256 secrets, an RSA key pair as PEM and as a JWKS file."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from chatgate.errors import Unauthorized
from chatgate.identity.jwt import JWTVerifier, OpenWebUIVerifier, looks_like_jwt
from chatgate.settings import JWTSettings

SECRET = "a-test-secret-that-is-at-least-32-bytes-long"
OWUI_SECRET = "open-webui-forward-secret-32-bytes-or-more"


@dataclass(frozen=True)
class RSAFiles:
    private: rsa.RSAPrivateKey
    other: rsa.RSAPrivateKey  # a second key pair, for the JWKS and for forged signatures
    pem: Path
    jwks: Path


def _public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def rsa_files(tmp_path_factory: pytest.TempPathFactory) -> RSAFiles:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    folder = tmp_path_factory.mktemp("keys")
    pem = folder / "public.pem"
    pem.write_bytes(_public_pem(private))
    keys = []
    for kid, key in (("kid-1", private), ("kid-2", other)):
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
    jwks = folder / "jwks.json"
    jwks.write_text(json.dumps({"keys": keys}))
    return RSAFiles(private, other, pem, jwks)


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "exp": int(time.time()) + 300, **extra}


def hs(payload: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(payload, secret, algorithm="HS256")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged_hs256(payload: dict[str, Any], key: bytes) -> str:
    """An HS256 token using ``key`` (e.g. the RSA public key PEM) as the HMAC secret, as an attacker would."""
    signing_input = f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())}"


def rejected(verifier: JWTVerifier | OpenWebUIVerifier, token: str) -> Unauthorized:
    with pytest.raises(Unauthorized) as caught:
        verifier.verify(token)
    return caught.value


def hs_verifier(**kw: Any) -> JWTVerifier:
    return JWTVerifier(JWTSettings(secret=SecretStr(SECRET), **kw))


# ---- shape ---------------------------------------------------------------------------------------


def test_looks_like_jwt() -> None:
    assert looks_like_jwt(hs(claims()))
    assert not looks_like_jwt("cg-admin-Zm9vYmFyYmF6")
    assert not looks_like_jwt("a.b")
    assert not looks_like_jwt("a..c")
    assert not looks_like_jwt("a.b.c.d")
    assert not looks_like_jwt("a.b.c!")
    assert not looks_like_jwt("")


# ---- HS256 ---------------------------------------------------------------------------------------


def test_disabled_by_default() -> None:
    verifier = JWTVerifier(JWTSettings())
    assert not verifier.enabled
    assert verifier.algorithms == ()
    assert rejected(verifier, hs(claims())).details["reason"] == "disabled"


def test_hs256_valid() -> None:
    verifier = hs_verifier()
    assert verifier.enabled and verifier.algorithms == ("HS256",)
    assert verifier.verify(hs(claims(name="Alice")))["name"] == "Alice"


def test_bad_signature() -> None:
    err = rejected(hs_verifier(), hs(claims(), secret="another-secret-that-is-32-bytes-long!!"))
    assert err.message == "JWT signature is invalid."
    assert err.details == {"reason": "bad_signature"}
    assert err.status == 401


def test_tampered_payload() -> None:
    head, _, sig = hs(claims()).split(".")
    token = f"{head}.{b64(json.dumps(claims(sub='mallory')).encode())}.{sig}"
    assert rejected(hs_verifier(), token).details["reason"] == "bad_signature"


def test_expired() -> None:
    err = rejected(hs_verifier(leeway=0), hs(claims(exp=int(time.time()) - 5)))
    assert err.message == "JWT has expired."
    assert err.details == {"reason": "expired"}


def test_expired_within_leeway_is_accepted() -> None:
    assert hs_verifier(leeway=30).verify(hs(claims(exp=int(time.time()) - 5)))["sub"] == "alice"


def test_not_valid_yet() -> None:
    err = rejected(hs_verifier(leeway=0), hs(claims(nbf=int(time.time()) + 600)))
    assert err.details["reason"] == "not_yet_valid"


def test_wrong_issuer() -> None:
    verifier = hs_verifier(issuer="https://id.example")
    assert verifier.verify(hs(claims(iss="https://id.example")))["iss"] == "https://id.example"
    err = rejected(verifier, hs(claims(iss="https://evil.example")))
    assert err.message == "JWT issuer is not accepted."
    assert err.details == {"reason": "issuer"}
    assert rejected(verifier, hs(claims())).details == {"reason": "issuer", "claim": "iss"}


def test_wrong_audience() -> None:
    verifier = hs_verifier(audience="chatgate")
    assert verifier.verify(hs(claims(aud="chatgate")))["aud"] == "chatgate"
    assert verifier.verify(hs(claims(aud=["other", "chatgate"])))["sub"] == "alice"
    err = rejected(verifier, hs(claims(aud="someone-else")))
    assert err.message == "JWT audience is not accepted."
    assert err.details == {"reason": "audience"}
    assert rejected(verifier, hs(claims())).details == {"reason": "audience", "claim": "aud"}


def test_exp_is_required() -> None:
    err = rejected(hs_verifier(), hs({"sub": "alice"}))
    assert err.details == {"reason": "malformed", "claim": "exp"}
    assert "exp" in err.message


def test_user_id_claim_is_required() -> None:
    err = rejected(hs_verifier(), hs({"exp": int(time.time()) + 60}))
    assert err.details == {"reason": "malformed", "claim": "sub"}


@pytest.mark.parametrize("token", ["not-a-jwt", "a.b", "a.b.c", "!!!.e30.e30"])
def test_malformed(token: str) -> None:
    err = rejected(hs_verifier(), token)
    assert err.message == "JWT is malformed."
    assert err.details == {"reason": "malformed"}


def test_none_algorithm_is_rejected() -> None:
    token = jwt.encode(claims(), None, algorithm="none")
    err = rejected(hs_verifier(), token)
    assert err.details["reason"] == "algorithm"
    assert err.message.startswith("JWT algorithm is not accepted")
    assert rejected(hs_verifier(), "e30.e30.e30").details["reason"] == "algorithm"  # no alg at all


def test_rs256_token_rejected_by_hs256_only(rsa_files: RSAFiles) -> None:
    token = jwt.encode(claims(), rsa_files.private, algorithm="RS256")
    assert rejected(hs_verifier(), token).details["reason"] == "algorithm"


def test_short_secret_warns_once_at_construction(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="chatgate.identity"):
        verifier = JWTVerifier(JWTSettings(secret=SecretStr("short")))
    assert "identity.jwt.secret is 5 bytes" in caplog.text
    with warnings.catch_warnings():  # PyJWT warns when signing with a short key too
        warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
        token = hs(claims(), secret="short")
    # verifying does not warn on every call (pytest would turn PyJWT's warning into an error)
    assert verifier.verify(token)["sub"] == "alice"


def test_verified_tokens_are_cached_until_they_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = hs_verifier(leeway=0)
    now = time.time()
    token = hs(claims(exp=int(now) + 2))
    first = verifier.verify(token)
    first["sub"] = "changed by the caller"
    assert verifier.verify(token)["sub"] == "alice"  # a copy each time
    monkeypatch.setattr("chatgate.identity.jwt.time.time", lambda: now + 10)
    err = rejected(verifier, token)
    assert err.details == {"reason": "expired"}


# ---- RS256 ---------------------------------------------------------------------------------------


def test_rs256_public_key_file(rsa_files: RSAFiles) -> None:
    verifier = JWTVerifier(JWTSettings(public_key_file=rsa_files.pem))
    assert verifier.enabled and verifier.algorithms == ("RS256",)
    assert verifier.verify(jwt.encode(claims(), rsa_files.private, algorithm="RS256"))["sub"] == "alice"
    forged = jwt.encode(claims(), rsa_files.other, algorithm="RS256")
    assert rejected(verifier, forged).details == {"reason": "bad_signature"}


def test_hs256_signed_with_the_rsa_public_key_is_rejected(rsa_files: RSAFiles) -> None:
    pem = rsa_files.pem.read_bytes()
    token = forged_hs256(claims(), pem)
    only_rsa = JWTVerifier(JWTSettings(public_key_file=rsa_files.pem))
    assert rejected(only_rsa, token).details["reason"] == "algorithm"
    both = JWTVerifier(JWTSettings(secret=SecretStr(SECRET), public_key_file=rsa_files.pem))
    assert both.algorithms == ("HS256", "RS256")
    assert rejected(both, token).details["reason"] == "bad_signature"  # checked with the secret, never the PEM
    assert both.verify(hs(claims()))["sub"] == "alice"
    assert both.verify(jwt.encode(claims(), rsa_files.private, algorithm="RS256"))["sub"] == "alice"


def test_jwks_picks_the_key_by_kid(rsa_files: RSAFiles) -> None:
    verifier = JWTVerifier(JWTSettings(jwks_file=rsa_files.jwks))
    one = jwt.encode(claims(sub="one"), rsa_files.private, algorithm="RS256", headers={"kid": "kid-1"})
    two = jwt.encode(claims(sub="two"), rsa_files.other, algorithm="RS256", headers={"kid": "kid-2"})
    assert verifier.verify(one)["sub"] == "one"
    assert verifier.verify(two)["sub"] == "two"
    wrong = jwt.encode(claims(), rsa_files.other, algorithm="RS256", headers={"kid": "kid-1"})
    assert rejected(verifier, wrong).details == {"reason": "bad_signature"}


def test_jwks_rejects_an_unknown_kid(rsa_files: RSAFiles) -> None:
    verifier = JWTVerifier(JWTSettings(jwks_file=rsa_files.jwks))
    token = jwt.encode(claims(), rsa_files.private, algorithm="RS256", headers={"kid": "kid-9"})
    err = rejected(verifier, token)
    assert err.details == {"reason": "unknown_key"}
    assert "kid" in err.message
    no_kid = jwt.encode(claims(), rsa_files.private, algorithm="RS256")
    assert rejected(verifier, no_kid).details == {"reason": "unknown_key"}  # two keys: a kid is needed


def test_jwks_rejects_hs256(rsa_files: RSAFiles) -> None:
    verifier = JWTVerifier(JWTSettings(jwks_file=rsa_files.jwks))
    token = forged_hs256(claims(), rsa_files.pem.read_bytes())
    assert rejected(verifier, token).details["reason"] in {"algorithm", "unknown_key"}


def test_key_files_are_checked_at_construction(tmp_path: Path, rsa_files: RSAFiles) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        JWTVerifier(JWTSettings(public_key_file=tmp_path / "missing.pem"))
    with pytest.raises(ValueError, match="cannot read"):
        JWTVerifier(JWTSettings(jwks_file=tmp_path / "missing.json"))
    garbage = tmp_path / "garbage"
    garbage.write_text("not a key")
    with pytest.raises(ValueError, match="not a PEM public key"):
        JWTVerifier(JWTSettings(public_key_file=garbage))
    with pytest.raises(ValueError, match="not a usable JWKS"):
        JWTVerifier(JWTSettings(jwks_file=garbage))
    empty = tmp_path / "empty.json"
    empty.write_text('{"keys": []}')
    with pytest.raises(ValueError, match="not a usable JWKS"):
        JWTVerifier(JWTSettings(jwks_file=empty))
    with pytest.raises(ValueError, match="not both"):
        JWTVerifier(JWTSettings(public_key_file=rsa_files.pem, jwks_file=rsa_files.jwks))


# ---- Open WebUI ----------------------------------------------------------------------------------


def owui_claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"sub": "u-1", "email": "bob@example.com", "name": "Bob", "role": "user", "iss": "open-webui"}
    return {**base, "iat": now, "exp": now + 300, **extra}


def test_openwebui_accepted() -> None:
    got = OpenWebUIVerifier(OWUI_SECRET).verify(hs(owui_claims(), OWUI_SECRET))
    assert got["sub"] == "u-1" and got["email"] == "bob@example.com"


def test_openwebui_wrong_issuer() -> None:
    verifier = OpenWebUIVerifier(OWUI_SECRET)
    err = rejected(verifier, hs(owui_claims(iss="someone"), OWUI_SECRET))
    assert err.message == "Open WebUI user JWT issuer is not accepted."
    assert err.details == {"reason": "issuer"}
    no_iss = owui_claims()
    del no_iss["iss"]
    assert rejected(verifier, hs(no_iss, OWUI_SECRET)).details["reason"] == "issuer"


def test_openwebui_other_failures() -> None:
    verifier = OpenWebUIVerifier(OWUI_SECRET, leeway=0)
    assert rejected(verifier, hs(owui_claims(), SECRET)).details == {"reason": "bad_signature"}
    expired = rejected(verifier, hs(owui_claims(exp=int(time.time()) - 1), OWUI_SECRET))
    assert expired.message == "Open WebUI user JWT has expired."
    no_sub = owui_claims()
    del no_sub["sub"]
    assert rejected(verifier, hs(no_sub, OWUI_SECRET)).details == {"reason": "malformed", "claim": "sub"}
    no_exp = owui_claims()
    del no_exp["exp"]
    assert rejected(verifier, hs(no_exp, OWUI_SECRET)).details == {"reason": "malformed", "claim": "exp"}
    assert rejected(verifier, jwt.encode(owui_claims(), None, algorithm="none")).details["reason"] == "algorithm"
    assert rejected(verifier, "garbage").details == {"reason": "malformed"}


def test_openwebui_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        OpenWebUIVerifier("")
