"""Rate limits and budgets: one ``Limiter`` interface, memory, machine-wide (SQLite) and Redis backends, and the
policy."""

from chatgate.limits.base import SLOTS, Decision, Limit, Limiter, LimiterUnavailable, Reservation
from chatgate.limits.memory import MemoryLimiter
from chatgate.limits.policy import limits_for, subject_key
from chatgate.limits.redis import RedisLimiter
from chatgate.limits.shared import SharedLimiter

__all__ = [
    "SLOTS",
    "Decision",
    "Limit",
    "Limiter",
    "LimiterUnavailable",
    "MemoryLimiter",
    "RedisLimiter",
    "Reservation",
    "SharedLimiter",
    "limits_for",
    "subject_key",
]
