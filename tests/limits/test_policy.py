"""Settings + identity -> the list of limits for one request."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from chatgate.limits import Limit, limits_for, subject_key
from chatgate.limits.policy import DAY, HOUR, MINUTE, MONTH
from chatgate.settings import LimitSettings, Settings


def call(settings: LimitSettings, **kw: object) -> list[Limit]:
    args: dict[str, object] = {
        "user_id": "alice",
        "key_id": None,
        "anonymous": False,
        "client_ip": "10.0.0.1",
        "route": "/v1/chat/completions",
        "model": None,
    }
    args.update(kw)
    return limits_for(settings, **args)  # type: ignore[arg-type]


def test_defaults_for_a_user() -> None:
    assert call(LimitSettings()) == [
        Limit("user:requests_per_minute", "u:alice", 60, MINUTE, "requests"),
        Limit("user:tokens_per_hour", "u:alice", 100_000, HOUR, "tokens"),
    ]


def test_anonymous_callers_are_limited_per_ip() -> None:
    assert call(LimitSettings(), anonymous=True, user_id="anon") == [
        Limit("ip:requests_per_minute", "ip:10.0.0.1", 20, MINUTE, "requests"),
        Limit("ip:tokens_per_hour", "ip:10.0.0.1", 100_000, HOUR, "tokens"),
    ]


def test_key_overrides_and_budgets() -> None:
    s = LimitSettings(
        user_tokens_per_day=1_000_000,
        user_tokens_per_month=10_000_000,
        key_tokens_per_day=500_000,
        keys={"k1": {"requests_per_minute": 600, "tokens_per_hour": 1_000_000, "tokens_per_month": 9}},
    )
    got = {lim.scope: lim for lim in call(s, key_id="k1")}
    assert got["user:requests_per_minute"].limit == 600 and got["user:tokens_per_hour"].limit == 1_000_000
    assert got["user:tokens_per_day"] == Limit("user:tokens_per_day", "u:alice", 1_000_000, DAY, "tokens")
    assert got["user:tokens_per_month"].window == MONTH
    assert got["key:tokens_per_day"] == Limit("key:tokens_per_day", "k:k1", 500_000, DAY, "tokens")
    assert got["key:tokens_per_month"] == Limit("key:tokens_per_month", "k:k1", 9, MONTH, "tokens")
    other = {lim.scope: lim for lim in call(s, key_id="k2")}
    assert other["user:requests_per_minute"].limit == 60 and "key:tokens_per_month" not in other


def test_routes_and_models_are_per_caller_under_the_callers_prefix() -> None:
    s = LimitSettings(routes={"/admin/cache/clear": 5}, models={"gpt-x": {"tokens_per_hour": 50}})
    got = call(s, route="/admin/cache/clear", model="gpt-x", user_id="a:b")
    assert (
        Limit(
            "route:/admin/cache/clear:requests_per_minute", "u:a%3Ab:r:%2Fadmin%2Fcache%2Fclear", 5, MINUTE, "requests"
        )
        in got
    )
    assert Limit("model:gpt-x:tokens_per_hour", "u:a%3Ab:m:gpt-x", 50, HOUR, "tokens") in got
    assert all(lim.key.startswith(subject_key(user_id="a:b")) for lim in got)
    assert len(call(s, route="/health")) == 2


def test_disabled() -> None:
    assert call(LimitSettings(enabled=False)) == []


def test_unknown_override_is_refused() -> None:
    with pytest.raises(ValidationError, match="unknown limit"):
        LimitSettings(keys={"k": {"requests_per_hour": 1}})


def test_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATGATE_LIMITS__USER_REQUESTS_PER_MINUTE", "7")
    monkeypatch.setenv("CHATGATE_LIMITS__FAIL_OPEN", "false")
    s = Settings().limits
    assert s.user_requests_per_minute == 7 and s.fail_open is False and s.default_max_tokens_reservation == 1024
