"""The admit step's pieces: what is reserved, who is charged, the headers and the settle rules."""

from __future__ import annotations

import pytest

from chatgate.errors import RateLimited
from chatgate.identity.keys import ADMIN, Principal
from chatgate.identity.model import Identity, Resolved
from chatgate.limits import MemoryLimiter
from chatgate.limits.admit import Admission, completion_budget, limit_subject, used_tokens
from chatgate.observe.metrics import Metrics
from chatgate.settings import LimitSettings


def resolved(user_id: str, source: str = "api_key") -> Resolved:
    return Resolved(Identity(user_id, frozenset(), None, None, {}, source, "k1"), None, None, "openai", {}, None)


def test_completion_budget_prefers_the_request_then_the_default() -> None:
    assert completion_budget({"max_tokens": 50}, 1024) == 50
    assert completion_budget({"max_completion_tokens": 70, "max_tokens": 50}, 1024) == 70
    assert completion_budget({}, 1024) == 1024
    assert completion_budget({"max_tokens": True, "max_completion_tokens": "9"}, 8) == 8  # not integers


def test_used_tokens() -> None:
    assert used_tokens({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}) == 7
    assert used_tokens({"prompt_tokens": 3, "completion_tokens": 4}) == 7
    assert used_tokens({}) is None and used_tokens(None) is None


def test_user_field_on_an_ordinary_key_charges_the_owner() -> None:
    ordinary = Principal(key_id="k1", scopes=frozenset({"user"}), user_id="carol")
    assert limit_subject(ordinary, resolved("carol/sub")) == "carol"
    keyless_owner = Principal(key_id="k2", scopes=frozenset({"user"}))
    assert limit_subject(keyless_owner, resolved("key:k2/x")) == "key:k2"
    assert limit_subject(ADMIN, resolved("admin/alice")) == "admin/alice"  # a trusted forwarder's end user
    assert limit_subject(ordinary, resolved("jwt:bob", source="jwt")) == "jwt:bob"


async def test_admit_reserve_reconcile_refund_and_the_refusal() -> None:
    admission = Admission(
        LimitSettings(user_requests_per_minute=2, user_tokens_per_hour=100), MemoryLimiter(), Metrics()
    )
    principal = Principal(key_id="k1", scopes=frozenset({"user"}), user_id="carol")
    limits = admission.limits(principal, resolved("carol"), "10.0.0.1", "/v1/chat/completions", "m")
    first = await admission.admit(limits, 10, 30)
    assert first is not None
    rates = {r.unit: r for r in first.rates}
    assert rates["requests"].remaining == 1 and rates["tokens"].remaining == 60
    await admission.settle(first, 15)
    await admission.settle(first, 99)  # settled once: the second is ignored
    usage = await admission.limiter.usage(limits)
    assert usage["user:tokens_per_hour"]["used"] == 15

    with pytest.raises(RateLimited) as caught:  # 15 used + 90 > 100
        await admission.admit(limits, 60, 30)
    err = caught.value
    assert err.details["scope"] == "user:tokens_per_hour" and err.details["remaining"] == 85
    assert err.blocked is not None and err.blocked.limit == 100 and err.retry_after is not None
    assert err.retry_after > 0
    assert "more than" not in err.message  # it fits once the window moves on

    second = await admission.admit(limits, 5, 5)
    await admission.settle(second, None)  # failed: tokens back, the request still counted
    usage = await admission.limiter.usage(limits)
    assert usage["user:tokens_per_hour"]["used"] == 15 and usage["user:requests_per_minute"]["used"] == 2
    with pytest.raises(RateLimited) as caught:
        await admission.admit(limits, 1, 0)
    assert caught.value.details["scope"] == "user:requests_per_minute"
    stats = admission.stats.as_dict()
    assert stats["admitted"] == 2 and stats["refunded"] == 1 and stats["reconciled"] == 1
    assert stats["limited_by_scope"] == {"user:tokens_per_hour": 1, "user:requests_per_minute": 1}


async def test_a_request_larger_than_the_limit_says_so() -> None:
    admission = Admission(LimitSettings(user_tokens_per_hour=100), MemoryLimiter(), Metrics())
    principal = Principal(key_id="k1", scopes=frozenset({"user"}), user_id="carol")
    limits = admission.limits(principal, resolved("carol"), None, "/v1/chat/completions", None)
    with pytest.raises(RateLimited) as caught:
        await admission.admit(limits, 50, 1024)
    assert "more than" in caught.value.message and caught.value.details["requested"] == 1074


async def test_disabled_limits_admit_without_a_charge() -> None:
    admission = Admission(LimitSettings(enabled=False), MemoryLimiter(), Metrics())
    principal = Principal(key_id="k1", scopes=frozenset({"user"}), user_id="carol")
    assert admission.limits(principal, resolved("carol"), None, "/v1/chat/completions", None) == []
    assert await admission.admit([], 10, 10) is None
