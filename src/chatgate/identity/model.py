"""What the identify step produces: who is calling, and which conversation the request belongs to."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from chatgate.errors import BadRequest

MAX_ID_LEN = 256  # user, chat, session and message ids, from any source

# Personalisation variables a front end may send (Open WebUI's ``{{USER_NAME}}`` and friends), without braces.
KNOWN_VARIABLES = frozenset({"USER_NAME", "USER_LOCATION", "CURRENT_DATETIME", "CURRENT_TIMEZONE", "USER_LANGUAGE"})


@dataclass(frozen=True, slots=True)
class Identity:
    """The end user a request is made for.

    ``user_id`` is namespaced by where it came from: ``key:<key_id>``, ``owui:<id>``, ``jwt:<sub>``,
    ``meta:<id>``, ``ip:<addr>``. A sub-identity named by the OpenAI ``user`` field is
    ``<parent user_id>/<user>``.
    """

    user_id: str
    roles: frozenset[str]
    display_name: str | None
    email: str | None
    variables: dict[str, str]
    source: str  # "api_key" | "openwebui_jwt" | "jwt" | "forwarded_headers" | "metadata" | "anonymous"
    key_id: str | None = None


@dataclass(frozen=True, slots=True)
class Resolved:
    """An identity plus what the request says about its conversation."""

    identity: Identity
    conversation_key: str | None  # chat id, else session id, else a thread id, else None
    message_id: str | None
    channel: str  # "openwebui" when Open WebUI's headers or JWT identified the caller, else "openai"
    features: dict[str, Any]  # metadata.features, {} if none
    model_info: dict[str, Any] | None  # metadata.model, if given


# Control characters (C0, DEL, C1): never in an id. The OpenAPI document gives ids this pattern.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
ID_PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"


def check_id(field: str, value: str, max_len: int = MAX_ID_LEN) -> str:
    """An id as given (a header, ``metadata``, a JWT claim, the ``user`` field): text without control
    characters (no NUL: ids are joined with NUL into the keys derived from them, which stay one-to-one
    only so) of at most ``max_len`` characters. Else a 400 naming ``field``."""
    if len(value) > max_len or CONTROL.search(value):
        raise BadRequest(
            f"'{field}' must be text without control characters, of at most {max_len} characters.",
            details={"field": field},
        )
    return value
