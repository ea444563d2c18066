"""The identify step: principal, signed Open WebUI identity, trusted headers, metadata, `user`, anonymous."""

from __future__ import annotations

import logging
import time
from typing import Any

import jwt
import pytest
from pydantic import SecretStr

from chatgate.errors import BadRequest, Unauthorized
from chatgate.identity.keys import Principal
from chatgate.identity.model import Resolved
from chatgate.identity.resolve import IdentityResolver
from chatgate.settings import ForwardedHeaders, IdentitySettings

OWUI_SECRET = "open-webui-forward-secret-32-bytes-or-more"
TRUSTED = frozenset({"user", "trusted_forwarder"})


def KeyOnly(key_id: str, scopes: frozenset[str] = frozenset()) -> Principal:
    """A key whose owner is not named: the resolver falls back to ``key:<key_id>``."""
    return Principal(key_id=key_id, scopes=scopes)


Owned = Principal


PLAIN = KeyOnly("k1", frozenset({"user"}))
FORWARDER = KeyOnly("owui-key", TRUSTED)
ANON = KeyOnly("anonymous", frozenset({"anonymous"}))

OWUI_HEADERS = {
    "x-openwebui-user-id": "u-42",
    "x-openwebui-user-name": "Jos%C3%A9%20Garc%C3%ADa",
    "x-openwebui-user-email": "jose@example.com",
    "x-openwebui-user-role": "admin",
    "x-openwebui-chat-id": "chat-7",
    "x-openwebui-message-id": "msg-9",
}


def resolver(**kw: Any) -> IdentityResolver:
    return IdentityResolver(IdentitySettings(**kw))


def resolve(
    r: IdentityResolver,
    principal: Any,
    headers: dict[str, str] | None = None,
    body: dict[str, Any] | None = None,
    client_ip: str | None = "203.0.113.5",
    forwarded_for: str | None = None,
) -> Resolved:
    return r.resolve(principal, headers or {}, body if body is not None else {}, client_ip, forwarded_for)


def owui_token(secret: str = OWUI_SECRET, **extra: Any) -> str:
    now = int(time.time())
    claims = {"sub": "u-7", "name": "Bob", "email": "bob@example.com", "role": "user", "iss": "open-webui"}
    return jwt.encode({**claims, "iat": now, "exp": now + 300, **extra}, secret, algorithm="HS256")


# ---- the principal -------------------------------------------------------------------------------


def test_plain_key_before_principal_has_an_owner() -> None:
    got = resolve(resolver(), PLAIN, body={"model": "m"})
    ident = got.identity
    assert ident.user_id == "key:k1"
    assert ident.source == "api_key" and ident.key_id == "k1"
    assert ident.roles == frozenset({"user"})
    assert ident.display_name is None and ident.email is None and ident.variables == {}
    assert got.channel == "openai" and got.conversation_key is None and got.message_id is None
    assert got.features == {} and got.model_info is None


def test_principal_with_an_owner() -> None:
    p = Owned("k2", frozenset({"user"}), user_id="usr_1", name="Ann", email="ann@example.com", roles=frozenset({"x"}))
    ident = resolve(resolver(), p).identity
    assert (ident.user_id, ident.display_name, ident.email, ident.roles) == ("usr_1", "Ann", "ann@example.com", {"x"})
    assert ident.variables == {"USER_NAME": "Ann"}
    # an owner not filled in yet (user_id "") still gets a namespaced id; no roles: the scopes
    assert resolve(resolver(), Owned("k3", frozenset({"user"}))).identity.user_id == "key:k3"
    assert resolve(resolver(), Owned("k3", frozenset({"user"}))).identity.roles == {"user"}


def test_jwt_principal() -> None:
    p = Owned("jwt", frozenset({"user", "jwt"}), user_id="jwt:alice", name="Alice")
    ident = resolve(resolver(), p, body={"user": "someone"}).identity
    assert ident.user_id == "jwt:alice"  # a signed-in user is already specific: no sub-identity
    assert ident.source == "jwt"


def test_real_principal_type() -> None:
    assert resolve(resolver(), Principal(key_id="k9", scopes=frozenset({"user"}))).identity.user_id == "key:k9"


# ---- Open WebUI signed identity ------------------------------------------------------------------


def test_openwebui_jwt_sets_the_user_without_any_scope() -> None:
    r = resolver(openwebui_jwt_secret=SecretStr(OWUI_SECRET))
    got = resolve(r, PLAIN, headers={"x-openwebui-user-jwt": owui_token()})
    ident = got.identity
    assert ident.user_id == "owui:u-7"
    assert (ident.display_name, ident.email, ident.roles) == ("Bob", "bob@example.com", {"user"})
    assert ident.source == "openwebui_jwt" and ident.key_id == "k1"
    assert ident.variables == {"USER_NAME": "Bob"}
    assert got.channel == "openwebui"


def test_openwebui_jwt_bad_token_is_a_401() -> None:
    r = resolver(openwebui_jwt_secret=SecretStr(OWUI_SECRET))
    with pytest.raises(Unauthorized) as caught:
        resolve(r, PLAIN, headers={"x-openwebui-user-jwt": owui_token(secret="x" * 40)})
    assert caught.value.details["reason"] == "bad_signature"
    with pytest.raises(Unauthorized) as caught:
        resolve(r, PLAIN, headers={"x-openwebui-user-jwt": owui_token(iss="elsewhere")})
    assert caught.value.details["reason"] == "issuer"


def test_openwebui_jwt_ignored_when_no_secret_is_configured() -> None:
    got = resolve(resolver(), PLAIN, headers={"x-openwebui-user-jwt": owui_token()})
    assert got.identity.user_id == "key:k1"


def test_openwebui_jwt_header_can_be_renamed() -> None:
    r = resolver(openwebui_jwt_secret=SecretStr(OWUI_SECRET), openwebui_jwt_header="X-Signed-User")
    assert resolve(r, PLAIN, headers={"x-signed-user": owui_token()}).identity.user_id == "owui:u-7"


def test_signed_jwt_wins_over_plain_headers() -> None:
    r = resolver(openwebui_jwt_secret=SecretStr(OWUI_SECRET))
    got = resolve(r, FORWARDER, headers={**OWUI_HEADERS, "x-openwebui-user-jwt": owui_token()})
    assert got.identity.user_id == "owui:u-7"
    assert got.identity.display_name == "Bob" and got.identity.roles == {"user"}
    assert got.conversation_key == "chat-7" and got.message_id == "msg-9"


# ---- forwarded headers ---------------------------------------------------------------------------


def test_forwarded_headers_with_the_scope() -> None:
    got = resolve(resolver(), FORWARDER, headers=OWUI_HEADERS)
    ident = got.identity
    assert ident.user_id == "owui:u-42"
    assert ident.display_name == "José García"  # URL-decoded
    assert ident.email == "jose@example.com" and ident.roles == {"admin"}
    assert ident.source == "forwarded_headers" and ident.key_id == "owui-key"
    assert ident.variables == {"USER_NAME": "José García"}
    assert (got.conversation_key, got.message_id, got.channel) == ("chat-7", "msg-9", "openwebui")


def test_forwarded_user_does_not_inherit_the_key_owner() -> None:
    owner = Owned("owui-key", TRUSTED, user_id="usr_admin", name="Admin", roles=frozenset({"admin"}))
    ident = resolve(resolver(), owner, headers={"x-openwebui-user-id": "u-1"}).identity
    assert ident.user_id == "owui:u-1"
    assert ident.display_name is None and ident.email is None and ident.roles == frozenset()


def test_forwarded_headers_ignored_without_the_scope_and_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    r = resolver()
    with caplog.at_level(logging.WARNING, logger="chatgate.identity"):
        for _ in range(3):
            got = resolve(r, PLAIN, headers=OWUI_HEADERS, body={"metadata": {"user_id": "m-1"}})
            assert got.identity.user_id == "key:k1"
            assert got.identity.source == "api_key"
            assert got.conversation_key is None and got.message_id is None and got.channel == "openai"
        resolve(r, KeyOnly("k-other"), headers={"x-openwebui-chat-id": "c"})
    warnings = [rec for rec in caplog.records if rec.name == "chatgate.identity"]
    assert len(warnings) == 2  # one per key id
    text = warnings[0].getMessage()
    assert "k1" in text and "trusted_forwarder" in text
    assert "x-openwebui-user-id" in text and "x-openwebui-chat-id" in text and "body metadata" in text
    for value in OWUI_HEADERS.values():
        assert value not in text  # names, never values
    assert "m-1" not in text
    assert "k-other" in warnings[1].getMessage()


def test_no_warning_when_nothing_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="chatgate.identity"):
        resolve(resolver(), PLAIN, headers={"content-type": "application/json"}, body={"model": "m"})
    assert not caplog.records


def test_renamed_forwarded_headers() -> None:
    names = ForwardedHeaders(
        user_id="X-User",
        user_name="X-Name",
        user_email="X-Mail",
        user_role="X-Role",
        chat_id="X-Conv",
        message_id="X-Msg",
    )
    r = resolver(forwarded_headers=names)
    headers = {"x-user": "7", "x-name": "A%20B", "x-mail": "a@b", "x-role": "user", "x-conv": "c1", "x-msg": "m1"}
    got = resolve(r, FORWARDER, headers=headers)
    assert got.identity.user_id == "owui:7" and got.identity.display_name == "A B" and got.identity.email == "a@b"
    assert (got.conversation_key, got.message_id) == ("c1", "m1")
    # the default names mean nothing now
    assert resolve(r, FORWARDER, headers=OWUI_HEADERS).identity.user_id == "key:owui-key"


def test_chat_id_header_alone() -> None:
    got = resolve(resolver(), FORWARDER, headers={"x-openwebui-chat-id": "c9"})
    assert got.identity.user_id == "key:owui-key" and got.conversation_key == "c9" and got.channel == "openwebui"


def test_overlong_header_id_is_a_bad_request() -> None:
    with pytest.raises(BadRequest) as caught:
        resolve(resolver(), FORWARDER, headers={"x-openwebui-user-id": "u" * 1000})
    assert caught.value.details == {"field": "x-openwebui-user-id"}


# ---- metadata ------------------------------------------------------------------------------------


def test_metadata_is_removed_from_the_body_in_every_case() -> None:
    r = resolver()
    for principal in (PLAIN, FORWARDER, ANON):
        body = {"model": "m", "metadata": {"chat_id": "c"}, "user": "u"}
        resolve(r, principal, body=body)
        assert body == {"model": "m", "user": "u"}


def test_metadata_with_the_scope() -> None:
    meta = {
        "user_id": "m-1",
        "chat_id": "chat-1",
        "session_id": "sess-1",
        "message_id": "msg-1",
        "variables": {"{{USER_NAME}}": "Eve", "USER_LOCATION": "Lyon", "{{ CURRENT_TIMEZONE }}": "Europe/Paris"},
        "model": {"id": "qwen", "max_model_len": 32768},
        "features": {"web_search": True},
    }
    got = resolve(resolver(), FORWARDER, body={"metadata": meta})
    ident = got.identity
    assert ident.user_id == "meta:m-1" and ident.source == "metadata"
    assert ident.variables == {"USER_NAME": "Eve", "USER_LOCATION": "Lyon", "CURRENT_TIMEZONE": "Europe/Paris"}
    assert got.conversation_key == "chat-1"  # chat id wins over session id
    assert got.message_id == "msg-1"
    assert got.model_info == {"id": "qwen", "max_model_len": 32768}
    assert got.features == {"web_search": True}
    assert got.channel == "openai"


def test_metadata_session_id_when_no_chat_id() -> None:
    assert resolve(resolver(), FORWARDER, body={"metadata": {"session_id": "s"}}).conversation_key == "s"


def test_variables_keep_only_known_string_values() -> None:
    given = {"USER_NAME": 3, "{{USER_LANGUAGE}}": "fr-FR", "OTHER": "x", "{{CURRENT_DATETIME}}": "2025-01-01 10:00"}
    got = resolve(resolver(), FORWARDER, body={"metadata": {"variables": given}})
    assert got.identity.variables == {"USER_LANGUAGE": "fr-FR", "CURRENT_DATETIME": "2025-01-01 10:00"}


def test_metadata_user_does_not_override_headers_or_jwt() -> None:
    got = resolve(resolver(), FORWARDER, headers=OWUI_HEADERS, body={"metadata": {"user_id": "m", "chat_id": "c"}})
    assert got.identity.user_id == "owui:u-42"
    assert got.conversation_key == "chat-7"  # the header's chat id
    r = resolver(openwebui_jwt_secret=SecretStr(OWUI_SECRET))
    got = resolve(r, FORWARDER, headers={"x-openwebui-user-jwt": owui_token()}, body={"metadata": {"user_id": "m"}})
    assert got.identity.user_id == "owui:u-7"


def test_metadata_variables_override_the_default_user_name() -> None:
    got = resolve(resolver(), FORWARDER, headers=OWUI_HEADERS, body={"metadata": {"variables": {"USER_NAME": "J"}}})
    assert got.identity.variables == {"USER_NAME": "J"} and got.identity.display_name == "José García"


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ("not a dict", "metadata"),
        (["a"], "metadata"),
        ({"user_id": 5}, "metadata.user_id"),
        ({"chat_id": {"a": 1}}, "metadata.chat_id"),
        ({"session_id": 1.5}, "metadata.session_id"),
        ({"message_id": ["x"]}, "metadata.message_id"),
        ({"variables": "USER_NAME=x"}, "metadata.variables"),
        ({"model": "qwen"}, "metadata.model"),
        ({"features": ["web_search"]}, "metadata.features"),
        ({"chat_id": "c" * 1000}, "metadata.chat_id"),
    ],
)
def test_metadata_wrong_types_are_bad_requests(metadata: Any, field: str) -> None:
    body = {"metadata": metadata}
    with pytest.raises(BadRequest) as caught:
        resolve(resolver(), FORWARDER, body=body)
    assert caught.value.details == {"field": field}
    assert field in caught.value.message
    assert "metadata" not in body


def test_metadata_wrong_types_ignored_without_the_scope() -> None:
    body = {"metadata": "not a dict"}
    assert resolve(resolver(), PLAIN, body=body).identity.user_id == "key:k1"
    assert body == {}


# ---- the OpenAI `user` field ---------------------------------------------------------------------


def test_user_field_is_a_sub_identity_and_stays_in_the_body() -> None:
    owner = Owned("k2", frozenset({"user"}), user_id="usr_1", name="Owner")
    body = {"model": "m", "user": "end-user-9"}
    ident = resolve(resolver(), owner, body=body).identity
    assert ident.user_id == "usr_1/end-user-9"
    assert ident.display_name is None and ident.variables == {}  # the owner's details are not the end user's
    assert ident.source == "api_key"
    assert body["user"] == "end-user-9"
    assert resolve(resolver(), PLAIN, body={"user": "x"}).identity.user_id == "key:k1/x"
    assert resolve(resolver(), PLAIN, body={"user": ""}).identity.user_id == "key:k1"


def test_user_field_does_not_override_more_specific_identity() -> None:
    assert resolve(resolver(), FORWARDER, headers=OWUI_HEADERS, body={"user": "x"}).identity.user_id == "owui:u-42"
    meta = {"metadata": {"user_id": "m"}, "user": "x"}
    assert resolve(resolver(), FORWARDER, body=meta).identity.user_id == "meta:m"
    r = resolver(openwebui_jwt_secret=SecretStr(OWUI_SECRET))
    headers = {"x-openwebui-user-jwt": owui_token()}
    assert resolve(r, PLAIN, headers=headers, body={"user": "x"}).identity.user_id == "owui:u-7"
    # a trusted forwarder that names no user: the sub-identity applies, with the variables it was sent
    body = {"metadata": {"variables": {"USER_NAME": "Zoe"}}, "user": "x"}
    got = resolve(resolver(), FORWARDER, body=body).identity
    assert got.user_id == "key:owui-key/x" and got.variables == {"USER_NAME": "Zoe"}
    assert resolve(resolver(), FORWARDER, body={"user": "x"}).identity.user_id == "key:owui-key/x"


@pytest.mark.parametrize("user", [5, ["a"], {"id": "a"}, True, "u" * 257])
def test_user_field_must_be_a_short_string(user: Any) -> None:
    with pytest.raises(BadRequest) as caught:
        resolve(resolver(), PLAIN, body={"user": user})
    assert caught.value.details == {"field": "user"}


# ---- anonymous -----------------------------------------------------------------------------------


def test_anonymous_by_client_ip() -> None:
    got = resolve(resolver(), ANON, client_ip="198.51.100.7", forwarded_for="1.1.1.1")
    assert got.identity.user_id == "ip:198.51.100.7"  # no trusted proxies: X-Forwarded-For is ignored
    assert got.identity.source == "anonymous" and got.identity.key_id == "anonymous"
    assert resolve(resolver(), ANON, client_ip=None).identity.user_id == "ip:unknown"


def test_anonymous_behind_trusted_proxies() -> None:
    r = resolver(trusted_proxies=["10.0.0.0/8", "192.0.2.1", "2001:db8::/32"])
    xff = "198.51.100.1, 203.0.113.9, 10.1.2.3"
    assert resolve(r, ANON, client_ip="10.0.0.2", forwarded_for=xff).identity.user_id == "ip:203.0.113.9"
    assert resolve(r, ANON, client_ip="192.0.2.1", forwarded_for="203.0.113.9").identity.user_id == "ip:203.0.113.9"
    v6 = resolve(r, ANON, client_ip="2001:db8::1", forwarded_for="2001:db8::2, 2a00:1450::5")
    assert v6.identity.user_id == "ip:2a00:1450::5"
    mapped = resolve(r, ANON, client_ip="::ffff:10.0.0.2", forwarded_for="203.0.113.9")
    assert mapped.identity.user_id == "ip:203.0.113.9"
    # every hop trusted: the left-most is the client
    assert resolve(r, ANON, client_ip="10.0.0.2", forwarded_for="10.9.9.9, 10.0.0.3").identity.user_id == "ip:10.9.9.9"
    # garbage in the chain: stop at the nearest address we can vouch for
    assert resolve(r, ANON, client_ip="10.0.0.2", forwarded_for="bogus, 10.0.0.3").identity.user_id == "ip:10.0.0.3"
    assert resolve(r, ANON, client_ip="10.0.0.2", forwarded_for=None).identity.user_id == "ip:10.0.0.2"


def test_spoofed_forwarded_for_from_an_untrusted_client_is_ignored() -> None:
    r = resolver(trusted_proxies=["10.0.0.0/8"])
    got = resolve(r, ANON, client_ip="203.0.113.50", forwarded_for="1.2.3.4, 10.0.0.1")
    assert got.identity.user_id == "ip:203.0.113.50"


def test_anonymous_user_field_is_not_a_sub_identity() -> None:
    assert resolve(resolver(), ANON, client_ip="198.51.100.7", body={"user": "x"}).identity.user_id == "ip:198.51.100.7"


def test_bad_trusted_proxy_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="trusted_proxies"):
        resolver(trusted_proxies=["not-an-ip"])


# ---- ids: printable and length-capped, from every source; the keys derived from them one-to-one -----------

CONTROL = ["\u0000", "\u0001", "\n", "\t", "\u007f", "\u0085", "\u009f", "\u200b\u0000"]  # C0, DEL, C1


@pytest.mark.parametrize("bad", CONTROL)
@pytest.mark.parametrize(
    ("where", "field"),
    [
        ("metadata.user_id", "metadata.user_id"),
        ("metadata.chat_id", "metadata.chat_id"),
        ("metadata.session_id", "metadata.session_id"),
        ("metadata.message_id", "metadata.message_id"),
        ("header.x-openwebui-user-id", "x-openwebui-user-id"),
        ("header.x-openwebui-chat-id", "x-openwebui-chat-id"),
        ("header.x-openwebui-message-id", "x-openwebui-message-id"),
        ("user", "user"),
    ],
)
def test_ids_with_control_characters_are_refused_from_every_source(where: str, field: str, bad: str) -> None:
    value = f"alice{bad}c1"
    headers: dict[str, str] = {}
    body: dict[str, Any] = {"model": "m"}
    kind, _, name = where.partition(".")
    if kind == "metadata":
        body["metadata"] = {name: value}
    elif kind == "header":
        headers[name] = value
    else:
        body["user"] = value
    with pytest.raises(BadRequest) as caught:
        resolve(resolver(), FORWARDER, headers=headers, body=body)
    assert caught.value.details == {"field": field}


def test_ids_of_any_script_pass() -> None:
    got = resolve(
        resolver(),
        FORWARDER,
        headers={"x-openwebui-user-id": "Jos\u00e9-\u5f20\u4f1f", "x-openwebui-chat-id": "chat 7/\u00e9"},
        body={"user": "b\u00f8b@example.com"},
    )
    assert got.identity.user_id == "owui:Jos\u00e9-\u5f20\u4f1f" and got.conversation_key == "chat 7/\u00e9"


def test_openwebui_jwt_sub_is_checked_like_any_id() -> None:
    r = resolver(openwebui_jwt_secret=SecretStr(OWUI_SECRET))
    with pytest.raises(BadRequest) as caught:
        resolve(r, PLAIN, headers={"x-openwebui-user-jwt": owui_token(sub="u-7\u0000x")})
    assert caught.value.details == {"field": "x-openwebui-user-jwt.sub"}


async def test_a_jwt_sub_is_checked_like_any_id() -> None:
    from chatgate.identity.jwt import JWTVerifier
    from chatgate.identity.keys import JWTSignIn
    from chatgate.settings import JWTClaims, JWTSettings

    secret = "a-test-secret-that-is-at-least-32-bytes-long"
    sign_in = JWTSignIn(JWTVerifier(JWTSettings(secret=SecretStr(secret))), JWTClaims())
    now = int(time.time())
    good = jwt.encode({"sub": "u-1", "exp": now + 60}, secret, algorithm="HS256")
    assert (await sign_in.authenticate(good)) is not None
    bad = jwt.encode({"sub": "u-1\u0000u-2", "exp": now + 60}, secret, algorithm="HS256")
    with pytest.raises(BadRequest) as caught:
        await sign_in.authenticate(bad)
    assert caught.value.details == {"field": "jwt.sub"}


def test_conversation_ids_are_one_to_one_once_nul_is_refused() -> None:
    """``conversation_id`` hashes ``user \\0 key``: with NUL refused in every id, the preimage splits back at
    its one NUL into the pair it came from, so two pairs never share an id. Its derivation is unchanged
    (stored conversations keep their ids)."""
    import hashlib
    import itertools

    from chatgate.identity.model import check_id
    from chatgate.sessions.manager import conversation_id

    assert (
        conversation_id("meta:alice", "c1") == hashlib.sha256(b"chatgate-conversation\0meta:alice\0c1").hexdigest()[:32]
    )
    # what NUL allowed: alice's chat "c1\0c2" and user "alice\0c1"'s chat "c2" were one conversation
    assert conversation_id("meta:alice\0c1", "c2") == conversation_id("meta:alice", "c1\0c2")
    with pytest.raises(BadRequest):
        check_id("metadata.user_id", "alice\0c1")

    alphabet = ["a", ":", "/", " ", "\u00e9", "\\", "0"]
    ids = ["".join(p) for n in range(1, 4) for p in itertools.product(alphabet, repeat=n)]
    assert all(check_id("id", i) == i for i in ids)  # every one of them is a valid id
    pairs = [(f"meta:{u}", k) for u, k in itertools.product(ids[:60], ids)]

    def split(preimage: str) -> tuple[str, str]:
        user, nul, key = preimage.removeprefix("chatgate-conversation\0").partition("\0")
        assert nul and "\0" not in key
        return user, key

    assert all(split(f"chatgate-conversation\0{u}\0{k}") == (u, k) for u, k in pairs)
    assert len({conversation_id(u, k) for u, k in pairs}) == len(pairs)


def test_check_id_caps_the_length() -> None:
    from chatgate.identity.model import MAX_ID_LEN, check_id

    assert check_id("f", "x" * MAX_ID_LEN) == "x" * MAX_ID_LEN
    with pytest.raises(BadRequest) as caught:
        check_id("f", "x" * (MAX_ID_LEN + 1))
    assert caught.value.details == {"field": "f"} and str(MAX_ID_LEN) in caught.value.message
