"""The running brief: older turns folded into a short summary by an LLM call.

:meth:`Summariser.extend` takes the brief so far and the turns it does not cover yet, and returns
the new brief: one call when the turns fit ``summarizer.input_max_tokens``, else one call per
chunk, each folding into the brief the previous one wrote. The answer is asked for with
``max_tokens = brief_max_tokens`` and cut to that many tokens if the model ran over.

The call goes to ``summarizer.base_url`` when set (with its key, timeout and retries), else it
is routed like a chat request (upstreams, retries, fallbacks, breakers) within the timeout. Any
failure (timeout, error status, unreadable or empty answer) raises :class:`SummaryFailed`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from chatgate.context.history import cut_to_tokens, render
from chatgate.errors import ChatgateError
from chatgate.settings import SummarizerSettings
from chatgate.tokens.counter import REPLY_PRIMING_TOKENS, TOKENS_PER_MESSAGE, TokenCounter
from chatgate.upstream.backoff import RETRYABLE_STATUSES, parse_retry_after
from chatgate.upstream.client import CallTrace, UpstreamClient

# The user message's shape; tests' fake upstream recognises a summariser call by ``<turns>``.
REQUEST_TEMPLATE = "<brief>\n{brief}\n</brief>\n<turns>\n{turns}\n</turns>"
NO_BRIEF = "(none yet)"
_OVERHEAD = 2 * TOKENS_PER_MESSAGE + REPLY_PRIMING_TOKENS + 16  # two messages, priming, the template's tags
_THINKING = re.compile(r"<think>.*?</think>", re.DOTALL)


class SummaryFailed(Exception):
    """The summariser could not write a brief; the message names the failure, never the conversation."""


@dataclass(slots=True)
class SummaryUsage:
    """What summariser calls cost, to be charged to the user like any other call."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


class Summariser:
    def __init__(
        self,
        settings: SummarizerSettings,
        counter: TokenCounter,
        upstream: UpstreamClient,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.counter = counter
        self.upstream = upstream
        self._sleep = sleep

    def model_for(self, model: str) -> str:
        """The model that writes the brief for a request to ``model``."""
        return self.settings.model or model

    async def extend(
        self, brief: str | None, turns: Sequence[Mapping[str, Any]], *, model: str, usage: SummaryUsage | None = None
    ) -> str:
        """``brief`` with ``turns`` folded in, at most ``brief_max_tokens`` tokens of ``model``'s tokenizer."""
        writer = self.model_for(model)
        for chunk in self.chunks(turns, writer):
            answer = await self._call(writer, brief, chunk, usage)
            brief = cut_to_tokens(self.counter, answer, self.settings.brief_max_tokens, model)
            if not brief:
                raise SummaryFailed("brief could not be cut to size")
        if brief is None:
            raise SummaryFailed("nothing to summarise")
        return brief

    def chunks(self, turns: Sequence[Mapping[str, Any]], writer: str) -> list[str]:
        """The turns as transcript text, in pieces that each fit one call with the instruction and a brief."""
        s = self.settings
        room = s.input_max_tokens - self.counter.count(s.prompt, writer) - s.brief_max_tokens - _OVERHEAD
        room = max(room, 64)
        out: list[str] = []
        lines: list[str] = []
        used = 0
        for message in turns:
            line = cut_to_tokens(self.counter, render(message), room, writer)
            n = self.counter.count(line, writer) + 1
            if lines and used + n > room:
                out.append("\n".join(lines))
                lines, used = [], 0
            lines.append(line)
            used += n
        if lines:
            out.append("\n".join(lines))
        return out

    async def _call(self, writer: str, brief: str | None, chunk: str, usage: SummaryUsage | None) -> str:
        messages = [
            {"role": "system", "content": self.settings.prompt},
            {"role": "user", "content": REQUEST_TEMPLATE.format(brief=brief or NO_BRIEF, turns=chunk)},
        ]
        payload = {"model": writer, "messages": messages, "max_tokens": self.settings.brief_max_tokens, "stream": False}
        try:
            async with asyncio.timeout(self.settings.timeout):
                if self.settings.base_url:
                    body = await self._direct(payload)
                else:
                    body = await self.upstream.call("/chat/completions", payload, None, CallTrace())
        except TimeoutError:
            raise SummaryFailed("timed out") from None
        except ChatgateError as exc:
            raise SummaryFailed(f"{exc.code} ({exc.status})") from None
        text, used = _answer(body)
        if usage is not None:
            usage.calls += 1
            if used is not None:
                usage.prompt_tokens += int(used.get("prompt_tokens") or 0)
                usage.completion_tokens += int(used.get("completion_tokens") or 0)
            else:
                usage.prompt_tokens += self.counter.count_messages(messages, writer)
                usage.completion_tokens += self.counter.count(text, writer)
        if not text:
            raise SummaryFailed("empty answer")
        return text

    async def _direct(self, payload: dict[str, Any]) -> bytes:
        """POST to ``summarizer.base_url``, retrying connect errors, 429 and 5xx with backoff."""
        s = self.settings
        assert s.base_url is not None
        url = s.base_url.rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json"}
        if s.api_key is not None:
            headers["Authorization"] = f"Bearer {s.api_key.get_secret_value()}"
        data = orjson.dumps(payload)
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                async with self.upstream.session.post(url, data=data, headers=headers) as resp:
                    body = await resp.read()
                    if resp.status == 200:
                        return body
                    if resp.status not in RETRYABLE_STATUSES:
                        raise SummaryFailed(f"HTTP {resp.status}")
                    failure = f"HTTP {resp.status}"
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            except (aiohttp.ClientError, ConnectionError) as exc:
                failure = type(exc).__name__
            if attempt >= s.retries:
                raise SummaryFailed(failure)
            await self._sleep(self.upstream.backoff.delay(attempt, retry_after))
            attempt += 1


def _answer(body: bytes) -> tuple[str, dict[str, Any] | None]:
    """The answer's text (reasoning blocks removed) and its usage, if it says."""
    try:
        data = orjson.loads(body)
        message = data["choices"][0]["message"]
        content = message.get("content")
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
        raise SummaryFailed("unreadable answer") from None
    text = _THINKING.sub("", content).strip() if isinstance(content, str) else ""
    usage = data.get("usage")
    return text, usage if isinstance(usage, dict) else None
