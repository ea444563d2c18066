"""Rate limits and budgets: one ``Limiter`` interface, memory and Redis backends, and the policy."""

from chatgate.limits.base import SLOTS, Decision, Limit, Limiter, LimiterUnavailable, Reservation
from chatgate.limits.memory import MemoryLimiter
from chatgate.limits.policy import limits_for, subject_key
from chatgate.limits.redis import RedisLimiter

__all__ = [
    "SLOTS",
    "Decision",
    "Limit",
    "Limiter",
    "LimiterUnavailable",
    "MemoryLimiter",
    "RedisLimiter",
    "Reservation",
    "limits_for",
    "subject_key",
]
