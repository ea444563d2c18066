"""The response cache's key: which requests may be cached, and the hash of a normalised request.

A key is the SHA-256 of a canonical JSON form of the request as it is sent upstream (after
personalisation, fitting and grounding), folded with the retrieval ``Scope``:

- **every body field except the ones that cannot change the answer** (``IGNORED``: ``stream``,
  ``stream_options``, ``user``, ``metadata``, ``use_cache``, ...). Listing what is ignored rather
  than what is kept means a parameter we do not know (vLLM's ``top_k``, ``min_p``,
  ``chat_template_kwargs``, a new OpenAI field) changes the key: fewer hits, never a wrong one;
- defaults written out or left out hash alike (``n: 1``, ``top_p: 1``, penalties ``0``,
  ``logprobs: false``, ``null`` anywhere at the top level), ``max_completion_tokens`` is
  ``max_tokens``, a ``stop`` string is a one-item list, numbers compare as floats (``0 == 0.0``);
- messages keep every field (role, name, tool calls with their ids and arguments, tool call ids,
  image and audio parts); text (a string ``content`` or ``text`` parts) is whitespace-normalised:
  line endings unified, runs of spaces and tabs inside a line collapsed to one space, trailing
  spaces and leading/trailing blank lines dropped, runs of blank lines made one. **Indentation at
  the start of a line is kept**: collapsing it would give ``if x:\\n  a\\nb`` and
  ``if x:\\n  a\\n  b`` (two different programs) one key. A list of one text part is that text;
- ``Scope``: the assistant, its collections (order-free) and, when the answer was grounded on a
  user's private documents, that user: two users never share an answer built from one user's
  private documents.

Cacheability: a request that samples is not cached unless the deployer allows it
(``allow_sampling``). **An unset ``temperature`` counts as sampling**: OpenAI's default is 1,
and most servers default to the model's sampling configuration, so an unset temperature is
not a promise of a repeatable answer. Only ``temperature: 0`` (greedy) is cached by default.
Requests asking for audio output are never cached (the replay cannot carry audio).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

KEY_VERSION = b"chatgate-cache-v1\n"

IGNORED = frozenset(
    {
        "stream",
        "stream_options",
        "user",
        "metadata",
        "use_cache",
        "store",
        "service_tier",
        "safety_identifier",
        "prompt_cache_key",
        "messages",  # normalised on its own
        "max_completion_tokens",  # folded into max_tokens
    }
)
"""Body fields that cannot change the answer (or are normalised separately)."""

DEFAULTS: dict[str, Any] = {
    "n": 1,
    "top_p": 1,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logprobs": False,
    "logit_bias": {},
    "stop": [],
}
"""Parameters whose OpenAI default hashes the same whether written out or left out."""


@dataclass(frozen=True, slots=True)
class Scope:
    """What a grounded answer was built from. ``private_user``: set when it used that user's private documents."""

    assistant: str | None = None
    collections: tuple[str, ...] = ()
    private_user: str | None = None
    versions: tuple[str, ...] = ()  # the collections' versions, when the model searches them (the tool loop)


@dataclass(frozen=True, slots=True)
class Cacheability:
    """``key`` when the request may be cached, else ``None`` and the ``reason``."""

    key: str | None
    reason: str | None = None

    def __bool__(self) -> bool:
        return self.key is not None


def cacheability(
    payload: Mapping[str, Any], *, scope: Scope | None = None, allow_sampling: bool = False
) -> Cacheability:
    """Whether ``payload`` (a chat completions body) may be cached, and under which key."""
    if not isinstance(payload.get("model"), str) or not isinstance(payload.get("messages"), list):
        return Cacheability(None, "not a chat completions request")
    temperature = payload.get("temperature")
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, int | float)):
        return Cacheability(None, "temperature is not a number")
    if not allow_sampling:
        if temperature is None:
            return Cacheability(None, "temperature unset (sampling at the default of 1)")
        if temperature > 0:
            return Cacheability(None, "temperature > 0 (sampling)")
    modalities = payload.get("modalities")
    if (isinstance(modalities, list) and "audio" in modalities) or payload.get("audio") is not None:
        return Cacheability(None, "audio output")
    return Cacheability(_digest(payload, scope or Scope()))


def cache_key(payload: Mapping[str, Any], *, scope: Scope | None = None, allow_sampling: bool = False) -> str | None:
    """The cache key of ``payload``, or ``None`` when it is not cacheable (see ``cacheability`` for why)."""
    return cacheability(payload, scope=scope, allow_sampling=allow_sampling).key


def normalise_text(text: str) -> str:
    """Whitespace-normalised text: see the module docstring (indentation is kept)."""
    out: list[str] = []
    blank = False
    for line in text.strip().splitlines():
        rest = line.lstrip()
        if not rest:
            blank = True
            continue
        if blank and out:
            out.append("")
        blank = False
        indent = line[: len(line) - len(rest)]
        out.append(indent + " ".join(rest.split()))
    return "\n".join(out)


def _content(content: Any) -> Any:
    if isinstance(content, str):
        return normalise_text(content)
    if not isinstance(content, list):
        return content
    parts = []
    for part in content:
        if isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str):
            part = {**part, "text": normalise_text(part["text"])}
        parts.append(part)
    if len(parts) == 1 and isinstance(parts[0], Mapping) and set(parts[0]) == {"type", "text"}:
        if parts[0]["type"] == "text":
            return parts[0]["text"]
    return parts


def _message(message: Any) -> Any:
    if not isinstance(message, Mapping):
        return message
    out = {k: v for k, v in message.items() if v is not None}
    if "content" in out:
        out["content"] = _content(out["content"])
    return out


def _number(value: Any) -> Any:
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _digest(payload: Mapping[str, Any], scope: Scope) -> str:
    params: dict[str, Any] = {}
    for name, value in payload.items():
        if name in IGNORED or value is None:
            continue
        params[name] = _number(value)
    if "max_tokens" not in params and payload.get("max_completion_tokens") is not None:
        params["max_tokens"] = _number(payload["max_completion_tokens"])
    if isinstance(params.get("stop"), str):
        params["stop"] = [params["stop"]]
    for name, default in DEFAULTS.items():
        if name in params and params[name] == _number(default):
            del params[name]
    canonical = {
        "params": params,
        "messages": [_message(m) for m in payload["messages"]],
        "scope": [scope.assistant, sorted(set(scope.collections)), scope.private_user]
        + ([sorted(scope.versions)] if scope.versions else []),
    }
    data = orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.sha256(KEY_VERSION + data).hexdigest()
