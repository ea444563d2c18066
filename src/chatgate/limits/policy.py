"""Settings + who is calling -> the limits one request is checked against.

Counter keys start with the subject, so ``limiter.reset(subject_key(...))`` clears every counter of
one user (or IP), route and model counters included. Ids are percent-encoded (``:`` and ``|``
separate key parts).

- Identified callers: ``user:requests_per_minute`` and ``user:tokens_per_hour`` (a key's overrides
  replace both for calls made with it), optional ``user:tokens_per_day`` / ``user:tokens_per_month``,
  and, with a key, optional ``key:tokens_per_day`` / ``key:tokens_per_month`` budgets.
- Anonymous callers: ``ip:requests_per_minute`` and ``ip:tokens_per_hour`` (the user default), per IP.
- Either: ``route:<path>:requests_per_minute`` when the route is listed, and
  ``model:<name>:<limit>`` lines when the model is listed, per caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import quote

from chatgate.limits.base import Limit
from chatgate.settings import LimitSettings

MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0
MONTH = 30 * DAY

# override name -> (window, unit)
WINDOWS: dict[str, tuple[float, str]] = {
    "requests_per_minute": (MINUTE, "requests"),
    "tokens_per_hour": (HOUR, "tokens"),
    "tokens_per_day": (DAY, "tokens"),
    "tokens_per_month": (MONTH, "tokens"),
}


def subject_key(*, user_id: str | None = None, client_ip: str | None = None) -> str:
    """The key prefix of one caller's counters: ``u:<user>`` or ``ip:<address>``."""
    if user_id is not None:
        return "u:" + quote(user_id, safe="")
    return "ip:" + quote(client_ip or "unknown", safe="")


def limits_for(
    settings: LimitSettings,
    *,
    user_id: str,
    key_id: str | None,
    anonymous: bool,
    client_ip: str | None,
    route: str,
    model: str | None,
) -> list[Limit]:
    if not settings.enabled:
        return []
    out: list[Limit] = []

    def add(scope: str, key: str, name: str, limit: int | None) -> None:
        if limit is not None:
            window, unit = WINDOWS[name]
            out.append(Limit(scope, key, limit, window, unit))

    if anonymous:
        subject = subject_key(client_ip=client_ip)
        add("ip:requests_per_minute", subject, "requests_per_minute", settings.anonymous_ip_requests_per_minute)
        add("ip:tokens_per_hour", subject, "tokens_per_hour", settings.user_tokens_per_hour)
    else:
        subject = subject_key(user_id=user_id)
        over = settings.keys.get(key_id, {}) if key_id is not None else {}
        user = {
            "requests_per_minute": over.get("requests_per_minute", settings.user_requests_per_minute),
            "tokens_per_hour": over.get("tokens_per_hour", settings.user_tokens_per_hour),
            "tokens_per_day": settings.user_tokens_per_day,
            "tokens_per_month": settings.user_tokens_per_month,
        }
        for name, limit in user.items():
            add(f"user:{name}", subject, name, limit)
        if key_id is not None:
            key = "k:" + quote(key_id, safe="")
            add("key:tokens_per_day", key, "tokens_per_day", over.get("tokens_per_day", settings.key_tokens_per_day))
            add(
                "key:tokens_per_month",
                key,
                "tokens_per_month",
                over.get("tokens_per_month", settings.key_tokens_per_month),
            )
    if route in settings.routes:
        add(
            f"route:{route}:requests_per_minute",
            f"{subject}:r:{quote(route, safe='')}",
            "requests_per_minute",
            settings.routes[route],
        )
    if model is not None and model in settings.models:
        for name, limit in settings.models[model].items():
            add(f"model:{model}:{name}", f"{subject}:m:{quote(model, safe='')}", name, limit)
    return out


def lines_for_user(
    settings: LimitSettings, user_id: str, key_ids: Sequence[str | None] = (None,)
) -> list[tuple[Limit, list[str]]]:
    """Every limit line that can apply to ``user_id`` (what ``limits_for`` gives it on any route and model), for
    calls made with each of ``key_ids`` (None: without a key), and the keys whose calls each line applies to:
    a key's overrides (``limits.keys``) replace the user's lines for its calls, and a key has budget lines of its
    own. A user id ``ip:<address>`` is an anonymous caller's (no key)."""
    anonymous = user_id.startswith("ip:")
    seen: dict[tuple[str, str, int], tuple[Limit, list[str]]] = {}
    for key_id in [None] if anonymous else dict.fromkeys(key_ids or [None]):
        for route in ["", *settings.routes]:
            for model in [None, *settings.models]:
                for line in limits_for(
                    settings,
                    user_id=user_id,
                    key_id=key_id,
                    anonymous=anonymous,
                    client_ip=user_id.removeprefix("ip:") if anonymous else None,
                    route=route,
                    model=model,
                ):
                    _, keys = seen.setdefault((line.scope, line.counter, line.limit), (line, []))
                    if key_id is not None and key_id not in keys:
                        keys.append(key_id)
    return list(seen.values())


def subject_of(user_id: str) -> str:
    """The counters' key prefix for a user id as the admin API names it (``ip:<address>``: anonymous)."""
    if user_id.startswith("ip:"):
        return subject_key(client_ip=user_id.removeprefix("ip:"))
    return subject_key(user_id=user_id)
