"""In-flight requests by user, conversation and message id, with an optional per-user cap."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from chatgate.errors import Rate, RateLimited


@dataclass(frozen=True, slots=True)
class Connection:
    token: int
    user_id: str
    conversation_id: str | None
    message_id: str | None
    started: float  # time.monotonic() when it came in


class Connections:
    def __init__(self, max_per_user: int | None = None) -> None:
        self.max_per_user = max_per_user
        self._open: dict[int, Connection] = {}
        self._per_user: Counter[str] = Counter()
        self._tokens = itertools.count(1)
        self.rejected = 0

    def enter(self, user_id: str, conversation_id: str | None = None, message_id: str | None = None) -> Connection:
        """Count a request in; 429 when the user already has ``max_per_user`` in flight."""
        if self.max_per_user is not None and self._per_user[user_id] >= self.max_per_user:
            self.rejected += 1
            raise RateLimited(
                f"Too many requests in flight for this user (at most {self.max_per_user} at once).",
                details={"limit": self.max_per_user, "scope": "concurrent_requests"},
                retry_after=1.0,
                blocked=Rate("requests", self.max_per_user, 0, 0.0),
            )
        conn = Connection(next(self._tokens), user_id, conversation_id, message_id, time.monotonic())
        self._open[conn.token] = conn
        self._per_user[user_id] += 1
        return conn

    def leave(self, conn: Connection) -> None:
        if self._open.pop(conn.token, None) is None:
            return  # already left
        self._per_user[conn.user_id] -= 1
        if self._per_user[conn.user_id] <= 0:
            del self._per_user[conn.user_id]

    def in_flight(self, user_id: str | None = None) -> int:
        return self._per_user.get(user_id, 0) if user_id is not None else len(self._open)

    def overview(self) -> dict[str, Any]:
        conversations = Counter(c.conversation_id for c in self._open.values() if c.conversation_id)
        return {
            "in_flight": len(self._open),
            "users": len(self._per_user),
            "conversations": len(conversations),
            "by_user": dict(self._per_user.most_common(20)),
            "rejected": self.rejected,
        }

    def listing(self, limit: int = 1000) -> dict[str, Any]:
        """``GET /admin/connections``: requests in flight by user and by conversation, and the oldest
        ``limit`` of them one by one (user, conversation, message id, seconds in flight)."""
        now = time.monotonic()
        conversations = Counter(c.conversation_id for c in self._open.values() if c.conversation_id)
        oldest = sorted(self._open.values(), key=lambda c: c.started)[:limit]
        return {
            "in_flight": len(self._open),
            "by_user": dict(self._per_user.most_common()),
            "by_conversation": dict(conversations.most_common()),
            "requests": [
                {
                    "user_id": c.user_id,
                    "conversation_id": c.conversation_id,
                    "message_id": c.message_id,
                    "seconds": round(now - c.started, 3),
                }
                for c in oldest
            ],
            "listed": len(oldest),
            "rejected": self.rejected,
        }
