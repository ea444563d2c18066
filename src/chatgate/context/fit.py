"""The fit step: a request's prompt plus its completion budget within the model's window.

:meth:`ContextFitter.fit` counts the prompt (the model's tokenizer, OpenAI's message rules, tool
definitions included) and compares prompt + completion budget with the window (see
``window.py`` for both). When it fits, or no window is known, the messages go as they are.
When it overflows, ``context.strategy`` decides:

- ``reject``: :class:`ContextLengthExceeded` (400 ``CONTEXT_LENGTH``, with the numbers);
- ``truncate``: the oldest turns are left out (whole turns; see ``history.py``), keeping the
  system prompts at the head and the last turn (the last user message and what follows it);
- ``summarize``: older turns are folded into the conversation's running brief, sent as one system
  message (:data:`SUMMARY_PREFIX` + the brief) after the head, followed by the recent turns.

The brief lives on the session (``brief``, ``brief_upto``: how many leading non-head messages it
covers, ``brief_digest``: their hash) and is stored with the conversation, so it is extended
with the turns it does not cover yet rather than rewritten every turn; a history that no longer
hashes the same (edited, or another branch) gets a new brief. Folding goes beyond what this
request needs (``context.fold_target``) so the next turns fit without another call, but never
into the last ``context.keep_last_turns`` turns unless it must. If the summariser fails, the
history is truncated instead (keeping a still-valid older brief), logged and counted.

Whatever the strategy, a request whose head and last turn alone overflow is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from chatgate.context.history import digest, head_length, turn_starts
from chatgate.context.summarize import Summariser, SummaryFailed, SummaryUsage
from chatgate.context.window import WindowResolver
from chatgate.errors import ContextLengthExceeded
from chatgate.observe.metrics import Metrics
from chatgate.sessions.manager import Session, SessionManager
from chatgate.settings import ContextSettings
from chatgate.tokens.counter import REPLY_PRIMING_TOKENS, TokenCounter

log = logging.getLogger("chatgate.context")

SUMMARY_PREFIX = "Summary of the earlier conversation:\n"
TRUNCATED = "truncated"
SUMMARIZED = "summarized"
SUMMARY_FAILED = "summarize_failed_truncated"
_JOIN_SLACK = 2  # tokens a brief may gain where it is joined to the prefix


@dataclass(slots=True)
class Fitted:
    """What the fit step decided for one request."""

    messages: list[dict[str, Any]]  # to send upstream; the very list given when nothing changed
    prompt_tokens: int  # counted, tool definitions included
    window: int | None  # None: no source knew it, nothing was fitted
    max_tokens: int  # the completion budget kept free in the window
    action: str | None = None  # None, "truncated", "summarized" or "summarize_failed_truncated"
    window_source: str = "unknown"  # settings, upstream, metadata, default or unknown
    dropped: int = 0  # messages left out
    folded: int = 0  # messages newly folded into the brief
    summary_usage: dict[str, int] | None = None  # summariser calls and tokens, when any were made


@dataclass(slots=True)
class FitStats:
    """Counters for the metrics issue."""

    requests: int = 0
    unknown_window: int = 0
    overflows: int = 0
    rejected: int = 0
    truncated: int = 0
    summarized: int = 0
    briefs_reused: int = 0
    briefs_invalidated: int = 0
    summarize_calls: int = 0
    summarize_failures: int = 0
    messages_dropped: int = 0
    messages_folded: int = 0
    summary_prompt_tokens: int = 0
    summary_completion_tokens: int = 0


class _History:
    """Head and body of one request's messages, with token costs and where turns start."""

    def __init__(self, messages: list[dict[str, Any]], costs: list[int], extra: int, served: str) -> None:
        self.served = served
        n = head_length(messages)
        self.head, self.body = messages[:n], messages[n:]
        self.fixed = REPLY_PRIMING_TOKENS + extra + sum(costs[:n])
        self.suffix = [0] * (len(self.body) + 1)
        for i in range(len(self.body) - 1, -1, -1):
            self.suffix[i] = self.suffix[i + 1] + costs[n + i]
        self.starts = turn_starts(self.body)

    def tokens(self, start: int, brief_cost: int = 0) -> int:
        """Prompt tokens with the body from ``start`` on (and a brief of ``brief_cost``)."""
        return self.fixed + brief_cost + self.suffix[start]

    def first_fitting(self, candidates: Sequence[int], limit: int, brief_cost: int = 0) -> int | None:
        return next((c for c in candidates if self.tokens(c, brief_cost) <= limit), None)

    def messages(self, start: int, brief: str | None = None) -> list[dict[str, Any]]:
        summary = [{"role": "system", "content": SUMMARY_PREFIX + brief}] if brief is not None else []
        return [*self.head, *summary, *self.body[start:]]


class ContextFitter:
    def __init__(
        self,
        settings: ContextSettings,
        counter: TokenCounter,
        windows: WindowResolver,
        summariser: Summariser | None = None,
        sessions: SessionManager | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """Without a ``summariser``, ``summarize`` truncates; without ``sessions``, briefs stay in memory."""
        self.settings = settings
        self.counter = counter
        self.windows = windows
        self.summariser = summariser
        self.sessions = sessions
        self.metrics = metrics or Metrics()
        self._stats = FitStats()

    @property
    def stats(self) -> dict[str, int]:
        return asdict(self._stats)

    async def fit(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str,
        max_tokens: int | None,
        session: Session | None = None,
        model_info: Mapping[str, Any] | None = None,
        tools: Any = None,
        prompt_tokens: int | None = None,
    ) -> Fitted:
        """The messages to send for a request to ``model`` (see the module docstring).

        ``max_tokens``: the request's completion limit (:func:`requested_max_tokens`), None if it set
        none. ``tools``: the request's tool definitions, which take room too. ``prompt_tokens``:
        :meth:`prompt_tokens` of these very messages, when the caller has it already. Raises
        :class:`ContextLengthExceeded`.
        """
        window, source = await self.windows.window(model, model_info)
        metrics = self.metrics
        try:
            fitted = await self._fit(messages, model, max_tokens, session, window, tools, prompt_tokens)
        except ContextLengthExceeded:
            metrics.context_actions.inc(("rejected",))
            raise
        fitted.window_source = source
        if fitted.action is not None:
            metrics.context_actions.inc((fitted.action,))
        if fitted.summary_usage is not None:
            outcome = "failed" if fitted.action == SUMMARY_FAILED else "ok"
            metrics.summarizations.inc((outcome,), fitted.summary_usage.get("calls", 1))
        return fitted

    def prompt_tokens(self, messages: Sequence[Mapping[str, Any]], model: str, tools: Any = None) -> int:
        """The prompt's tokens as :meth:`fit` counts them (the served model's tokenizer, tools included)."""
        served = self.windows.served(model)
        return self.counter.count_messages(messages, served) + self._tools_tokens(tools, served)

    def _tools_tokens(self, tools: Any, served: str) -> int:
        return self.counter.count(orjson.dumps(tools).decode(), served) if tools else 0

    async def _fit(
        self,
        messages: list[dict[str, Any]],
        model: str,
        max_tokens: int | None,
        session: Session | None,
        window: int | None,
        tools: Any,
        counted: int | None,
    ) -> Fitted:
        stats = self._stats
        stats.requests += 1
        served = self.windows.served(model)
        budget = max_tokens if max_tokens is not None else self.windows.default_completion(model)
        extra = self._tools_tokens(tools, served)
        prompt = counted if counted is not None else self.counter.count_messages(messages, served) + extra
        if window is None:
            stats.unknown_window += 1
            return Fitted(messages, prompt, None, budget)
        limit = window - budget
        if prompt <= limit:
            return Fitted(messages, prompt, window, budget)
        stats.overflows += 1
        costs = [self.counter.count_messages([m], served) - REPLY_PRIMING_TOKENS for m in messages]
        h = _History(messages, costs, extra, served)
        if self.settings.strategy == "reject" or h.tokens(h.starts[-1]) > limit:
            stats.rejected += 1
            why = "" if self.settings.strategy == "reject" else ", more than fits even with earlier turns left out"
            raise ContextLengthExceeded(
                f"This model's context window is {window} tokens; the request needs {prompt} prompt tokens "
                f"plus {budget} for the completion{why}. Shorten the conversation or lower max_tokens.",
                details={"window": window, "prompt_tokens": prompt, "max_tokens": budget, "model": model},
            )
        if self.settings.strategy == "truncate" or self.summariser is None:
            return self._truncate(h, limit, window, budget, TRUNCATED)
        return await self._summarize(h, limit, window, budget, model, served, session)

    # ---- truncate --------------------------------------------------------------------------------

    def _truncate(
        self,
        h: _History,
        limit: int,
        window: int,
        budget: int,
        action: str,
        brief: tuple[str, int] | None = None,
        usage: SummaryUsage | None = None,
    ) -> Fitted:
        """The latest turns that fit, after the head (and ``brief``: text and how many messages it covers)."""
        messages: list[dict[str, Any]] | None = None
        if brief is not None:
            text, covered = brief
            cost = self._brief_cost(text, h)
            start = h.first_fitting([covered, *(s for s in h.starts if s > covered)], limit, cost)
            if start is not None:
                messages, tokens, dropped = h.messages(start, text), h.tokens(start, cost), start - covered
        if messages is None:
            start = h.first_fitting(h.starts, limit)
            assert start is not None  # the caller checked that the last turn fits
            messages, tokens, dropped = h.messages(start), h.tokens(start), start
        self._stats.truncated += 1
        self._stats.messages_dropped += dropped
        return Fitted(messages, tokens, window, budget, action, dropped=dropped, summary_usage=_usage(usage))

    # ---- summarize -------------------------------------------------------------------------------

    async def _summarize(
        self, h: _History, limit: int, window: int, budget: int, model: str, served: str, session: Session | None
    ) -> Fitted:
        assert self.summariser is not None
        stats, settings = self._stats, self.settings
        covered, brief = self._valid_brief(session, h)
        candidates = [covered, *(s for s in h.starts if s > covered)]
        if brief is not None:
            cost = self._brief_cost(brief, h)
            if h.tokens(covered, cost) <= limit:  # the brief as it is will do
                stats.briefs_reused += 1
                return Fitted(h.messages(covered, brief), h.tokens(covered, cost), window, budget, SUMMARIZED)
        allowance = self._brief_cost("", h) + self.summariser.settings.brief_max_tokens + _JOIN_SLACK
        need = h.first_fitting(candidates, limit, allowance)
        if need is None or need <= covered:  # no room for a longer brief: truncate, with the brief as it is
            return self._truncate(h, limit, window, budget, TRUNCATED, (brief, covered) if brief else None)
        target = settings.fold_target * (limit - h.fixed - allowance)
        by_share = next((c for c in candidates if c >= need and h.suffix[c] <= target), candidates[-1])
        by_keep = h.starts[-settings.keep_last_turns] if len(h.starts) >= settings.keep_last_turns else 0
        upto = max(need, min(by_share, by_keep))
        usage = SummaryUsage()
        try:
            new = await self.summariser.extend(brief, h.body[covered:upto], model=served, usage=usage)
        except SummaryFailed as exc:
            self._count_usage(usage)
            stats.summarize_failures += 1
            log.warning(
                "summariser failed; history truncated instead",
                extra={
                    "model": self.summariser.model_for(served),
                    "error": str(exc),
                    "session_id": session.id if session is not None else None,
                },
            )
            kept = (brief, covered) if brief is not None else None
            return self._truncate(h, limit, window, budget, SUMMARY_FAILED, kept, usage)
        self._count_usage(usage)
        stats.summarized += 1
        stats.messages_folded += upto - covered
        if session is not None:
            self._keep(session, new, upto, digest(h.body[:upto]))
        cost = self._brief_cost(new, h)
        start = h.first_fitting([upto, *(s for s in h.starts if s > upto)], limit, cost)
        if start is None:  # the brief came out longer than allowed for: leave it out this time
            return self._truncate(h, limit, window, budget, TRUNCATED, usage=usage)
        stats.messages_dropped += start - upto
        return Fitted(
            h.messages(start, new),
            h.tokens(start, cost),
            window,
            budget,
            SUMMARIZED,
            dropped=start - upto,
            folded=upto - covered,
            summary_usage=usage.as_dict(),
        )

    def _valid_brief(self, session: Session | None, h: _History) -> tuple[int, str | None]:
        """How many body messages the session's brief covers, and the brief; (0, None) when it has none that fits."""
        if session is None or session.brief is None or session.brief_upto <= 0:
            return 0, None
        upto = session.brief_upto
        if upto in h.starts and digest(h.body[:upto]) == session.brief_digest:
            return upto, session.brief
        self._stats.briefs_invalidated += 1
        return 0, None

    def _keep(self, session: Session, brief: str, upto: int, digest_: str) -> None:
        if self.sessions is not None:
            self.sessions.set_brief(session, brief, upto, digest_)
        else:
            session.brief, session.brief_upto, session.brief_digest = brief, upto, digest_

    def _brief_cost(self, brief: str, h: _History) -> int:
        message = {"role": "system", "content": SUMMARY_PREFIX + brief}
        return self.counter.count_messages([message], h.served) - REPLY_PRIMING_TOKENS

    def _count_usage(self, usage: SummaryUsage) -> None:
        self._stats.summarize_calls += usage.calls
        self._stats.summary_prompt_tokens += usage.prompt_tokens
        self._stats.summary_completion_tokens += usage.completion_tokens


def _usage(usage: SummaryUsage | None) -> dict[str, int] | None:
    return usage.as_dict() if usage is not None and usage.calls else None
