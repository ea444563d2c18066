"""Model routing: public name -> alias target -> the upstreams serving it -> the one to call.

Pure bookkeeping, no I/O. Several upstreams serving one model are balanced by least in-flight
calls (scaled by weight); upstreams whose circuit is open are skipped; a failed model falls back
to the models configured for it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from chatgate.errors import ModelNotFound
from chatgate.upstream.breaker import CircuitBreaker


class InProcess(Protocol):
    """An upstream that runs inside chatgate (the local embedding model, ``rag/embeddings_api.py``): the body
    the client would have POSTed to ``path`` in, the answer's body out; a ``ChatgateError`` for a request it
    refuses (a 4xx: the caller's mistake) or cannot answer."""

    async def post(self, path: str, body: bytes) -> bytes: ...


@dataclass(eq=False, slots=True)
class Upstream:
    name: str
    base_url: str
    api_key: str | None = None
    weight: float = 1.0
    timeout: float | None = None
    first_byte: float | None = None  # None: the client's timeouts.first_byte
    max_retries: int | None = None
    configured_models: tuple[str, ...] = ()
    chat_defaults: dict[str, Any] = field(default_factory=dict)
    discovered_models: frozenset[str] = frozenset()
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    in_flight: int = 0
    target: InProcess | None = None  # set: called in process instead of over HTTP at ``base_url``
    standby: bool = False  # serves only the models no other upstream serves

    @property
    def remote(self) -> bool:
        return self.target is None

    @property
    def models(self) -> frozenset[str]:
        return frozenset(self.configured_models) if self.configured_models else self.discovered_models

    @property
    def discovers(self) -> bool:
        return not self.configured_models

    def load(self) -> float:
        return self.in_flight / self.weight


class Router:
    def __init__(
        self,
        upstreams: Iterable[Upstream],
        aliases: dict[str, str] | None = None,
        fallbacks: dict[str, list[str]] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.upstreams = list(upstreams)
        self.aliases = dict(aliases or {})
        self.fallbacks = {k: list(v) for k, v in (fallbacks or {}).items()}
        self._rng = rng or random.Random()
        self._table: dict[str, list[Upstream]] = {}
        self.rebuild()

    def rebuild(self) -> None:
        """Recompute the model table after the upstreams' model lists change."""
        table: dict[str, list[Upstream]] = {}
        for up in self.upstreams:
            if not up.standby:
                for model in up.models:
                    table.setdefault(model, []).append(up)
        for up in self.upstreams:
            if up.standby:
                for model in up.models:
                    if model not in table or all(u.standby for u in table[model]):
                        table.setdefault(model, []).append(up)
        self._table = table

    def served_models(self) -> dict[str, list[Upstream]]:
        return self._table

    def resolve(self, model: str) -> str:
        """The served model name behind a public name (aliases followed, cycles refused)."""
        seen = {model}
        while model in self.aliases and model not in self._table:
            model = self.aliases[model]
            if model in seen:
                break
            seen.add(model)
        return model

    def knows(self, model: str) -> bool:
        return self.resolve(model) in self._table

    def plan(self, model: str) -> list[str]:
        """Served model names to try in order: the model itself, then its fallbacks (known ones only)."""
        if not self.knows(model):
            raise ModelNotFound(f"The model '{model}' does not exist or is not served here.", details={"model": model})
        order: list[str] = []
        for name in [model, *self.fallbacks.get(model, []), *self.fallbacks.get(self.resolve(model), [])]:
            served = self.resolve(name)
            if served in self._table and served not in order:
                order.append(served)
        return order

    def pick(self, served_model: str, avoid: frozenset[Upstream] | set[Upstream] = frozenset()) -> Upstream | None:
        """The least-loaded upstream for a served model whose circuit lets a call through.

        Upstreams in ``avoid`` (those that just failed) are used only when nothing else is left.
        Returns None when every candidate's circuit is open.
        """
        candidates = self._table.get(served_model, ())
        if len(candidates) == 1:  # the common case: nothing to balance
            only = candidates[0]
            return only if only.breaker.acquire() else None
        for pool in ([u for u in candidates if u not in avoid], list(candidates)):
            ready = [u for u in pool if u.breaker.available()]
            if not ready:
                continue
            least = min(u.load() for u in ready)
            best = [u for u in ready if u.load() == least]
            choice = best[0] if len(best) == 1 else self._rng.choice(best)
            if choice.breaker.acquire():
                return choice
        return None

    def retry_in(self, served_model: str) -> float:
        """Seconds until some upstream of this model accepts calls again."""
        waits = [u.breaker.retry_in() for u in self._table.get(served_model, ())]
        return min(waits, default=0.0)
