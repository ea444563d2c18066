"""Who a request is for, and which conversation it belongs to: the pipeline's identify step.

Plain values in (the principal, lower-cased headers, the body as a dict), a ``Resolved`` out. Sources, from
least to most specific, each overriding the one before:

1. the principal (the API key's owner, or the JWT's user); anonymous callers by IP;
2. Open WebUI's signed ``X-OpenWebUI-User-Jwt`` (verified; a bad one is a 401, never ignored);
3. forwarded identity headers, and ``metadata`` in the body: only from keys with the ``trusted_forwarder``
   scope, otherwise ignored (with one warning per key). ``metadata`` is always taken out of the body;
4. the OpenAI ``user`` field: a sub-identity of a key's owner, unless 2 or 3 already named the user.

This runs on every request: everything that can be worked out from settings is worked out once, here in
``__init__``; ``resolve`` is dict lookups.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from chatgate.errors import BadRequest
from chatgate.identity.jwt import OpenWebUIVerifier
from chatgate.identity.model import KNOWN_VARIABLES, MAX_ID_LEN, Identity, Resolved, check_id
from chatgate.settings import IdentitySettings

if TYPE_CHECKING:  # only a type here: keys.py pulls in the store
    from chatgate.identity.keys import Principal

log = logging.getLogger("chatgate.identity")

TRUSTED_FORWARDER = "trusted_forwarder"
ANONYMOUS_KEY_ID = "anonymous"
MAX_USER_LEN = 256  # the OpenAI `user` field
CACHE_SIZE = 4096  # parsed addresses and decoded names remembered, each

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class IdentityResolver:
    def __init__(self, settings: IdentitySettings) -> None:
        fh = settings.forwarded_headers
        self._h_user = fh.user_id.lower()
        self._h_name = fh.user_name.lower()
        self._h_email = fh.user_email.lower()
        self._h_role = fh.user_role.lower()
        self._h_chat = fh.chat_id.lower()
        self._h_message = fh.message_id.lower()
        self._forwarded = (self._h_user, self._h_name, self._h_email, self._h_role, self._h_chat, self._h_message)
        self._h_jwt = settings.openwebui_jwt_header.lower()
        secret = settings.openwebui_jwt_secret
        self._owui = OpenWebUIVerifier(secret.get_secret_value(), leeway=settings.jwt.leeway) if secret else None
        self._proxies = tuple(_network(p) for p in settings.trusted_proxies)
        self._hops: dict[str, tuple[str | None, bool]] = {}  # address text -> (normalised, trusted proxy?)
        self._names: dict[str, str] = {}  # URL-encoded name header -> name
        self._warned: set[str] = set()  # key ids already warned about ignored identity fields

    def resolve(
        self,
        principal: Principal,
        headers: Mapping[str, str],
        body: dict[str, Any],
        client_ip: str | None,
        forwarded_for: str | None,
    ) -> Resolved:
        key_id = principal.key_id
        scopes = principal.scopes
        trusted = TRUSTED_FORWARDER in scopes
        name: str | None
        email: str | None
        roles: frozenset[str]
        if key_id == ANONYMOUS_KEY_ID:
            user_id = f"ip:{self._client_address(client_ip, forwarded_for)}"
            name, email, roles, source = None, None, scopes, "anonymous"
        else:
            user_id = principal.user_id or f"key:{key_id}"
            name, email = principal.name, principal.email
            roles = principal.roles or scopes
            source = "jwt" if "jwt" in scopes else "api_key"
        named = False  # the end user was named by a signed JWT, trusted headers or metadata
        channel = "openai"
        conversation: str | None = None
        message_id: str | None = None

        if self._owui is not None and (token := headers.get(self._h_jwt)) is not None:
            claims = self._owui.verify(token)
            sub = check_id(f"{self._h_jwt}.sub", str(claims["sub"]))
            user_id, source, channel, named = f"owui:{sub}", "openwebui_jwt", "openwebui", True
            name, email = _claim(claims, "name"), _claim(claims, "email")
            role = _claim(claims, "role")
            roles = frozenset((role,)) if role else frozenset()

        if trusted:
            if not named and (hid := _header_id(headers, self._h_user)):
                user_id, source, channel, named = f"owui:{hid}", "forwarded_headers", "openwebui", True
                name = self._display_name(headers.get(self._h_name))
                email = headers.get(self._h_email) or None
                role = headers.get(self._h_role)
                roles = frozenset((role,)) if role else frozenset()
            if chat := _header_id(headers, self._h_chat):
                conversation, channel = chat, "openwebui"
            if mid := _header_id(headers, self._h_message):
                message_id, channel = mid, "openwebui"
        elif key_id not in self._warned:
            self._warn_untrusted(key_id, headers, body)

        given: dict[str, str] | None = None  # metadata.variables
        features: dict[str, Any] = {}
        model_info: dict[str, Any] | None = None
        metadata = body.pop("metadata", None)
        if metadata is not None and trusted:
            if not isinstance(metadata, dict):
                raise _bad("metadata", "must be an object")
            if not named and (mid := _meta_id(metadata, "user_id")):
                user_id, source, named = f"meta:{mid}", "metadata", True
                name, email, roles = None, None, frozenset()
            chat_id, session_id = _meta_id(metadata, "chat_id"), _meta_id(metadata, "session_id")
            if conversation is None:
                conversation = chat_id or session_id
            meta_message = _meta_id(metadata, "message_id")
            if message_id is None:
                message_id = meta_message
            if (raw_vars := metadata.get("variables")) is not None:
                given = _variables(raw_vars)
            features = _meta_dict(metadata, "features") or {}
            model_info = _meta_dict(metadata, "model")

        user = body.get("user")
        if user is not None and user != "":
            if not isinstance(user, str):
                raise _bad("user", "must be a string")
            check_id("user", user, MAX_USER_LEN)
            if not named and source == "api_key":
                user_id = f"{user_id}/{user}"
                name, email, roles = None, None, frozenset()  # the key owner's details are not the end user's

        variables = {"USER_NAME": name} if name else {}
        if given:
            variables.update(given)
        identity = Identity(user_id, roles, name, email, variables, source, key_id)
        return Resolved(identity, conversation, message_id, channel, features, model_info)

    def _client_address(self, client_ip: str | None, forwarded_for: str | None) -> str:
        """The peer, or -- only behind a trusted proxy -- the right-most X-Forwarded-For entry not itself trusted."""
        if client_ip is None:
            return "unknown"
        if not self._proxies or not forwarded_for or not self._hop(client_ip)[1]:
            return client_ip
        found = client_ip
        for part in reversed(forwarded_for.split(",")):
            addr, trusted = self._hop(part.strip())
            if addr is None:  # not an address: stop at the nearest one we can vouch for
                return found
            found = addr
            if not trusted:
                return found
        return found  # every hop is a trusted proxy: the left-most is the client

    def _hop(self, text: str) -> tuple[str | None, bool]:
        """An address as text -> (normalised, is a trusted proxy); parsing costs microseconds, so remembered."""
        known = self._hops.get(text)
        if known is None:
            addr = _address(text)
            known = (None, False) if addr is None else (str(addr), any(addr in net for net in self._proxies))
            if len(self._hops) >= CACHE_SIZE:
                self._hops.clear()
            self._hops[text] = known
        return known

    def _display_name(self, raw: str | None) -> str | None:
        """The name header, URL-decoded (Open WebUI quotes it); decoded names are remembered."""
        if not raw:
            return None
        if "%" not in raw:
            return raw
        name = self._names.get(raw)
        if name is None:
            name = unquote(raw)
            if len(self._names) >= CACHE_SIZE:
                self._names.clear()
            self._names[raw] = name
        return name

    def _warn_untrusted(self, key_id: str, headers: Mapping[str, str], body: dict[str, Any]) -> None:
        ignored = [h for h in self._forwarded if h in headers]
        if body.get("metadata") is not None:
            ignored.append("body metadata")
        if ignored:
            self._warned.add(key_id)
            log.warning(
                "key %s has no '%s' scope: ignored %s (warned once per key)",
                key_id,
                TRUSTED_FORWARDER,
                ", ".join(ignored),
            )


def _network(spec: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(spec.strip(), strict=False)
    except ValueError:
        raise ValueError(f"identity.trusted_proxies: {spec!r} is not an IP address or CIDR") from None


def _address(text: str) -> IPAddress | None:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _bad(field: str, what: str) -> BadRequest:
    return BadRequest(f"'{field}' {what}.", details={"field": field})


def _claim(claims: dict[str, Any], name: str) -> str | None:
    value = claims.get(name)
    return value if isinstance(value, str) and value else None


def _header_id(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if not value:
        return None
    return check_id(name, value)


def _meta_id(metadata: dict[str, Any], name: str) -> str | None:
    value = metadata.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _bad(f"metadata.{name}", "must be a string")
    return check_id(f"metadata.{name}", value, MAX_ID_LEN)


def _meta_dict(metadata: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = metadata.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _bad(f"metadata.{name}", "must be an object")
    return value


def _variables(given: Any) -> dict[str, str]:
    """Known personalisation variables with string values; ``{{USER_NAME}}`` and ``USER_NAME`` alike."""
    if not isinstance(given, dict):
        raise _bad("metadata.variables", "must be an object")
    out: dict[str, str] = {}
    for key, value in given.items():
        if not isinstance(key, str) or not isinstance(value, str):
            continue
        bare = key.strip()
        if bare.startswith("{{") and bare.endswith("}}"):
            bare = bare[2:-2].strip()
        if bare in KNOWN_VARIABLES:
            out[bare] = value
    return out
