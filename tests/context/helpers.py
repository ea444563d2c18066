"""Shared pieces for the context tests: a word-counting token counter, histories, a recording summariser."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from chatgate.context import ContextFitter, Summariser, SummaryFailed, SummaryUsage, WindowResolver
from chatgate.settings import ContextSettings, RetrySettings, SummarizerSettings, TimeoutSettings, TokenSettings
from chatgate.tokens.counter import TokenCounter
from chatgate.upstream.client import UpstreamClient
from chatgate.upstream.routing import Router


def word_counter() -> TokenCounter:
    """One token per word: a message costs 3 + its words + 1 for the role."""
    return TokenCounter(TokenSettings(default="words", tokens_per_word=1.0))


def client(router: Router | None = None) -> UpstreamClient:
    return UpstreamClient(
        router or Router([]),
        RetrySettings(max_retries=1, base=0.01, cap=0.05),
        TimeoutSettings(connect=1, first_byte=5, total=10),
    )


def words(n: int, tag: str) -> str:
    return " ".join(f"{tag}w{i}" for i in range(n))


def turn(i: int, size: int = 10) -> list[dict[str, Any]]:
    """A user message and the reply: ``size`` words each."""
    return [
        {"role": "user", "content": words(size, f"q{i}")},
        {"role": "assistant", "content": words(size, f"a{i}")},
    ]


def history(turns: int, size: int = 10, system: str | None = "be brief") -> list[dict[str, Any]]:
    """``turns`` complete turns, then one new user message."""
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for i in range(turns):
        out += turn(i, size)
    out.append({"role": "user", "content": words(size, f"q{turns}")})
    return out


class RecordingSummariser(Summariser):
    """The real class with its call replaced: records what it is asked to fold, answers a fixed brief."""

    def __init__(self, settings: SummarizerSettings | None = None, fail: str | None = None) -> None:
        super().__init__(settings or SummarizerSettings(brief_max_tokens=20), word_counter(), client())
        self.calls: list[tuple[str | None, list[Mapping[str, Any]]]] = []
        self.fail = fail

    async def extend(
        self, brief: str | None, turns: Sequence[Mapping[str, Any]], *, model: str, usage: SummaryUsage | None = None
    ) -> str:
        self.calls.append((brief, list(turns)))
        if usage is not None:
            usage.calls += 1
            usage.prompt_tokens += 100
            usage.completion_tokens += 10
        if self.fail:
            raise SummaryFailed(self.fail)
        return f"brief#{len(self.calls)} of {len(turns)}"


def fitter(
    window: int = 200,
    summariser: Summariser | None = None,
    model: str = "m",
    **settings: Any,
) -> ContextFitter:
    ctx = ContextSettings(windows={model: window}, **settings)
    return ContextFitter(ctx, word_counter(), WindowResolver(ctx), summariser)
