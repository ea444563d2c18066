"""The admit step: check and charge a request's limits, and settle the charge once the call is over.

Costs: every request costs 1 ``requests`` unit and an estimate of ``tokens``: the prompt as
counted by the model's tokenizer plus the completion budget (``max_tokens`` /
``max_completion_tokens``, else ``limits.default_max_tokens_reservation``). After the call the
token charge is reconciled with the real usage (the usage object; a count of the reply when the
upstream sent none); a failed or cancelled call is refunded (its request still counts).

Who is limited: the resolved end user. A sub-identity named by the OpenAI ``user`` field on an
ordinary key is limited as the key's owner (otherwise any caller could mint fresh limits by
varying ``user``); a trusted forwarder's end users are limited one by one.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from chatgate.context.window import requested_max_tokens
from chatgate.errors import Rate, RateLimited
from chatgate.identity.keys import Principal
from chatgate.identity.model import Resolved
from chatgate.limits.base import Decision, Limit, Limiter, LimiterUnavailable, Reservation
from chatgate.limits.cap import StreamCap
from chatgate.limits.policy import limits_for
from chatgate.limits.redis import RedisLimiter
from chatgate.limits.shared import SharedLimiter
from chatgate.observe.metrics import Metrics
from chatgate.settings import LimitSettings

if TYPE_CHECKING:
    from chatgate.tokens.counter import TokenCounter
    from chatgate.turn import Turn
    from chatgate.upstream.stream import ReplyBuffer

log = logging.getLogger("chatgate.limits")

LINES_CACHE = 10_000  # callers whose limit lines are kept built


@dataclass(slots=True)
class AdmissionStats:
    admitted: int = 0
    limited: Counter[str] = field(default_factory=Counter)  # scope -> requests refused by it
    reconciled: int = 0
    refunded: int = 0
    tokens_reserved: int = 0
    tokens_charged: int = 0  # after reconciliation: what admitted requests really cost
    settle_errors: int = 0
    unavailable: int = 0  # requests refused because the shared limiter was down (fail closed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "admitted": self.admitted,
            "limited": sum(self.limited.values()),
            "limited_by_scope": dict(self.limited),
            "reconciled": self.reconciled,
            "refunded": self.refunded,
            "tokens_reserved": self.tokens_reserved,
            "tokens_charged": self.tokens_charged,
            "settle_errors": self.settle_errors,
            "unavailable": self.unavailable,
        }


@dataclass(slots=True)
class Admitted:
    """One admitted request's charge, settled exactly once (``Admission.settle``)."""

    reservation: Reservation
    rates: tuple[Rate, ...]  # where the caller stands, per unit (the answer's x-ratelimit-* headers)
    prompt_tokens: int
    limits: list[Limit] = field(default_factory=list)  # the lines it was charged to
    settled: bool = False


def completion_budget(payload: Mapping[str, Any], default: int) -> int:
    """The completion tokens to reserve: the request's limit, else ``default``."""
    requested = requested_max_tokens(payload)
    return default if requested is None else requested


def limit_subject(principal: Principal, resolved: Resolved) -> str:
    """The user id limits are charged to (see the module docstring)."""
    identity = resolved.identity
    if identity.source == "api_key" and "trusted_forwarder" not in principal.scopes:
        return principal.user_id or f"key:{principal.key_id}"
    return identity.user_id


def rates_of(limits: list[Limit], decision: Decision) -> tuple[Rate, ...]:
    """Per unit, the tightest limit (least remaining): OpenAI's ``x-ratelimit-*`` trio."""
    tightest: dict[str, tuple[int, Limit]] = {}
    remaining = decision.remaining
    for lim in limits:
        left = remaining.get(lim.scope, lim.limit)
        best = tightest.get(lim.unit)
        if best is None or left < best[0]:
            tightest[lim.unit] = (left, lim)
    return tuple(
        Rate(unit, lim.limit, left, decision.reset_in.get(lim.scope, 0.0)) for unit, (left, lim) in tightest.items()
    )


class Admission:
    def __init__(self, settings: LimitSettings, limiter: Limiter, metrics: Metrics) -> None:
        self.settings = settings
        self.limiter = limiter
        self.metrics = metrics
        self.stats = AdmissionStats()
        self._lines: dict[tuple[str, str | None, str, str | None], list[Limit]] = {}  # limit lines by caller

    def reload(self, settings: LimitSettings) -> None:
        """New limit lines (SIGHUP): usage so far is kept; the backend (memory or Redis, its prefix, fail-open)
        stays as it started."""
        self.settings = settings
        self._lines = {}

    def limits(
        self, principal: Principal, resolved: Resolved, client_ip: str | None, route: str, model: str | None
    ) -> list[Limit]:
        anonymous = resolved.identity.source == "anonymous"
        subject = resolved.identity.user_id if anonymous else limit_subject(principal, resolved)
        key_id = None if anonymous else principal.key_id
        cache_key = (subject, key_id, route, model)
        lines = self._lines.get(cache_key)
        if lines is None:
            if len(self._lines) >= LINES_CACHE:
                self._lines.clear()  # cheap and rare: rebuilt on demand
            lines = self._lines[cache_key] = limits_for(
                self.settings,
                user_id=subject,
                key_id=key_id,
                anonymous=anonymous,
                client_ip=subject.removeprefix("ip:") if anonymous else client_ip,
                route=route,
                model=model,
            )
        return lines

    @property
    def backend(self) -> str:
        """``redis``, ``shared`` (the workers of this server, one table) or ``memory`` (this process)."""
        if isinstance(self.limiter, RedisLimiter):
            return "redis"
        return "shared" if isinstance(self.limiter, SharedLimiter) else "memory"

    def overview(self) -> dict[str, Any]:
        """Admission counters (this process), and the Redis backend's outage count."""
        out: dict[str, Any] = {"enabled": self.settings.enabled, "backend": self.backend, **self.stats.as_dict()}
        if isinstance(self.limiter, RedisLimiter):
            out["redis_errors"] = self.limiter.redis_errors
            out["fallback"] = "shared" if isinstance(self.limiter.fallback, SharedLimiter) else "memory"
        return out

    def route_limits(self, principal: Principal | None, client_ip: str | None, route: str) -> list[Limit]:
        """The route line alone, for routes outside the pipeline (the caller: its key's user, else its IP)."""
        if route not in self.settings.routes:
            return []
        anonymous = principal is None or principal.key_id == "anonymous"
        lines = limits_for(
            self.settings,
            user_id="" if principal is None else principal.user_id or f"key:{principal.key_id}",
            key_id=None,
            anonymous=anonymous,
            client_ip=client_ip,
            route=route,
            model=None,
        )
        return [lim for lim in lines if lim.scope.startswith("route:")]

    async def admit(self, limits: list[Limit], prompt_tokens: int, completion_tokens: int) -> Admitted | None:
        """Charge 1 request and the token estimate to every limit, or raise ``RateLimited`` (429)."""
        if not limits:
            return None
        tokens = prompt_tokens + completion_tokens
        try:
            decision = await self.limiter.acquire(limits, {"requests": 1, "tokens": tokens})
        except LimiterUnavailable:
            self.stats.unavailable += 1
            raise
        rates = rates_of(limits, decision)
        decisions = self.metrics.limit_decisions
        if not decision.allowed:
            assert decision.blocked is not None
            decisions.inc((decision.blocked.scope, "rejected"))
            raise self._refused(decision, rates, tokens)
        assert decision.reservation is not None
        tightest: float | None = None
        for lim in limits:
            decisions.inc((lim.scope, "allowed"))
            if lim.unit == "tokens":
                share = decision.remaining.get(lim.scope, lim.limit) / lim.limit
                tightest = share if tightest is None else min(tightest, share)
        if tightest is not None:
            self.metrics.budget_remaining.observe(tightest)
        self.stats.admitted += 1
        self.stats.tokens_reserved += tokens
        return Admitted(decision.reservation, rates, prompt_tokens, limits)

    def stream_cap(
        self, admitted: Admitted | None, reply: ReplyBuffer, count: Callable[[str], int]
    ) -> StreamCap | None:
        """What stops a stream that writes past its reservation once a token limit is spent (``cap.py``); None
        when the request has no token limit."""
        if admitted is None:
            return None
        lines = [line for line in admitted.limits if line.unit == "tokens"]
        if not lines:
            return None
        reserved = admitted.reservation.costs.get("tokens", 0) - admitted.prompt_tokens
        return StreamCap(self.limiter, lines, reserved, reply, count)

    def _refused(self, decision: Decision, rates: tuple[Rate, ...], tokens: int) -> RateLimited:
        blocked = decision.blocked
        assert blocked is not None
        self.stats.limited[blocked.scope] += 1
        remaining = decision.remaining.get(blocked.scope, 0)
        reset_in = decision.reset_in.get(blocked.scope, 0.0)
        retry = max(decision.retry_after, 0.001)
        if blocked.unit == "tokens" and tokens > blocked.limit:
            message = (
                f"This request needs about {tokens} tokens (prompt + max_tokens), more than the "
                f"{blocked.scope} limit of {blocked.limit} allows; lower max_tokens or shorten the prompt."
            )
        else:
            message = (
                f"Rate limit reached: {blocked.scope} allows {blocked.limit} {blocked.unit}; "
                f"try again in {math.ceil(retry)} s."
            )
        return RateLimited(
            message,
            details={
                "scope": blocked.scope,
                "limit": blocked.limit,
                "remaining": remaining,
                "reset_in_seconds": round(reset_in, 3),
                "retry_after_seconds": round(retry, 3),
                "requested": tokens if blocked.unit == "tokens" else 1,
            },
            retry_after=retry,
            blocked=Rate(blocked.unit, blocked.limit, remaining, reset_in),
            rates=rates,
        )

    async def settle(self, admitted: Admitted | None, tokens: int | None) -> None:
        """Reconcile to ``tokens`` actually used, or refund (``None``: failed or cancelled). Once; never raises."""
        if admitted is None or admitted.settled:
            return
        admitted.settled = True
        try:
            if tokens is None:
                await self.limiter.refund(admitted.reservation)
                self.stats.refunded += 1
            else:
                await self.limiter.reconcile(admitted.reservation, {"tokens": tokens})
                self.stats.reconciled += 1
                self.stats.tokens_charged += tokens
                self.metrics.budget_used.observe(tokens)
        except Exception as exc:  # the charge stays as reserved: safe, and logged
            self.stats.settle_errors += 1
            log.warning("rate limiter: settling a reservation failed (%s)", type(exc).__name__)

    async def close(self) -> None:
        await self.limiter.close()


def used_tokens(usage: Mapping[str, Any] | None) -> int | None:
    """Total tokens from an OpenAI usage object, or None when it has none."""
    if not usage:
        return None
    total = usage.get("total_tokens")
    if isinstance(total, int) and total > 0:
        return total
    parts = [usage.get("prompt_tokens"), usage.get("completion_tokens")]
    if any(isinstance(p, int) for p in parts):
        return sum(p for p in parts if isinstance(p, int))
    return None


def spent(turn: Turn, counter: TokenCounter) -> int | None:
    """The tokens to charge for ``turn``: the usage, else a count of the reply; None (a refund) when nothing
    was answered. The summariser's tokens were spent for this user whatever became of the call; a hit spent
    none."""
    admitted = turn.admitted
    if admitted is None:
        return None
    summarised = (turn.fitted.summary_usage or {}).get("total_tokens", 0) if turn.fitted is not None else 0
    tokens = 0 if turn.cache_status == "HIT" else used_tokens(turn.usage)
    if tokens is None and turn.completed:
        prompt = turn.fitted.prompt_tokens if turn.fitted is not None else admitted.prompt_tokens
        counted = counter.count_reply(turn.reply, turn.payload.get("model"))
        tokens = prompt + counted if counted is not None else admitted.reservation.costs.get("tokens")
    if summarised:
        tokens = (tokens or 0) + summarised
    return tokens
