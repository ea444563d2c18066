"""Grounding a chat request (the pipeline's ``ground`` step, :class:`Grounder`): the assistant's collections
as the caller may read them, the search query, the sources injected within the token budget; and the
sources on the answer (a JSON field, a stream's last chunk). Plain values in and out.

Everything the model is told goes into one system message at the head of the conversation (many chat
templates accept a system message only there): the assistant's prompt, then the client's own system
message, then the grounding template with the numbered sources. Sources are numbered in rank order;
when they do not all fit the budget, the lowest-ranked are dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import orjson

from chatgate.cache.key import Scope
from chatgate.context import Fitted, WindowResolver
from chatgate.rag.assistants import Assistant
from chatgate.rag.retrieve import Hit
from chatgate.sessions.messages import text_of
from chatgate.settings import GroundingSettings
from chatgate.tokens.counter import TokenCounter
from chatgate.upstream.answer import parse_answer
from chatgate.upstream.sse import choiceless_chunk

if TYPE_CHECKING:
    from chatgate.rag.repo import CollectionRow
    from chatgate.rag.service import Rag

log = logging.getLogger("chatgate.rag")
SLACK = 8  # tokens a text may gain where it is joined to the system message


@dataclass(slots=True)
class Grounded:
    """What grounding made of a request: the scope its answer may be built from (part of its cache key);
    and, when documents went in, the messages with the sources and the citations."""

    scope: Scope
    messages: list[dict[str, Any]] | None = None
    sources: list[dict[str, Any]] | None = None
    warnings: list[dict[str, Any]] | None = None  # the assistant's collections that matched nothing for the caller


class Grounder:
    def __init__(self, rag: Rag, settings: GroundingSettings, counter: TokenCounter, windows: WindowResolver) -> None:
        self.rag = rag
        self.settings = settings
        self.counter = counter
        self.windows = windows

    async def ground(
        self,
        assistant: Assistant,
        user_id: str,
        messages: list[dict[str, Any]],
        fitted: Fitted | None,
        *,
        applied: bool,
        versioned: bool = False,
    ) -> Grounded:
        """The assistant's documents into ``messages`` per its retrieval policy (``applied``: the conversation
        was grounded before, which ``once_per_conversation`` heeds), within the room the window leaves.

        With ``retrieval: tool`` nothing goes in: the model searches when it chooses (the tool loop), so what
        it may find is part of the scope: with ``versioned`` (the cache is on), the collections' versions.

        The assistant's collections that match nothing the caller may read are said in ``warnings``, whatever
        else happens: an answer not grounded in them must not look like one that found nothing in them."""
        if not assistant.collections:
            return await self._ground(assistant, user_id, messages, fitted, [], applied=applied, versioned=versioned)
        found = await self.rag.resolve_collections(assistant, user_id)
        grounded = await self._ground(
            assistant, user_id, messages, fitted, found.collections, applied=applied, versioned=versioned
        )
        grounded.warnings = unresolved_warnings(found.unresolved) or None
        return grounded

    async def _ground(
        self,
        assistant: Assistant,
        user_id: str,
        messages: list[dict[str, Any]],
        fitted: Fitted | None,
        collections: list[CollectionRow],
        *,
        applied: bool,
        versioned: bool,
    ) -> Grounded:
        rag = self.rag
        private = any(c.visibility == "private" for c in collections)
        scope = Scope(assistant.name, tuple(c.id for c in collections), user_id if private else None)
        if assistant.retrieval == "tool":
            if versioned and collections:
                found = await rag.repo.versions(scope.collections)
                scope = replace(scope, versions=tuple(f"{cid}@{found[cid]}" for cid in scope.collections))
            return Grounded(scope)
        if not collections or assistant.retrieval == "off":
            return Grounded(scope)
        if assistant.retrieval == "once_per_conversation" and applied:
            return Grounded(scope)
        query = query_text(messages, self.settings.condense_turns)
        if not query:
            return Grounded(scope)
        try:
            hits, _ = await rag.search(collections, query, assistant.top_k, assistant.mode)
        except Exception as exc:  # the answer goes on without documents rather than failing
            log.warning("grounding search failed", extra={"assistant": assistant.name, "error": str(exc)})
            return Grounded(scope)
        budget = self.settings.max_context_tokens
        if fitted is not None and fitted.window is not None:
            budget = min(budget, fitted.window - fitted.max_tokens - fitted.prompt_tokens)
        served = self.windows.served(assistant.model)
        context, used = build_context(
            hits, self.settings.template, lambda text: self.counter.count(text, served), budget
        )
        if context is None:
            return Grounded(scope)
        sources = [source_json(i + 1, hit) for i, hit in enumerate(used)]
        return Grounded(scope, with_system(messages, context, before=False), sources)


def with_system(messages: list[dict[str, Any]], text: str | None, *, before: bool = True) -> list[dict[str, Any]]:
    """``text`` added to the leading system message (before its content, or after it), or as a new one."""
    if not text:
        return messages
    if messages and isinstance(messages[0], dict) and messages[0].get("role") in ("system", "developer"):
        head = messages[0]
        content = head.get("content")
        if isinstance(content, str):
            merged: Any = f"{text}\n\n{content}" if before else f"{content}\n\n{text}"
        elif isinstance(content, list):
            part = {"type": "text", "text": text}
            merged = [part, *content] if before else [*content, part]
        else:
            merged = text
        return [{**head, "content": merged}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def query_text(messages: Sequence[Any], condense_turns: int = 0) -> str:
    """The search query: the last user message, after up to ``condense_turns`` earlier user messages."""
    users = [text_of(m.get("content")) for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    users = [u for u in users if u.strip()]
    if not users:
        return ""
    return "\n".join(users[-(condense_turns + 1) :])


def source_block(number: int, hit: Hit) -> str:
    """``[n] title > heading path (page p)`` then the chunk's text."""
    head = [hit.title or hit.source]
    head += [h for h in hit.headings if h and h not in head]
    page = f" (page {hit.page})" if hit.page is not None else ""
    return f"[{number}] {' > '.join(head)}{page}\n{hit.text.strip()}"


def build_context(
    hits: Sequence[Hit], template: str, count: Callable[[str], int], budget: int
) -> tuple[str | None, list[Hit]]:
    """The template filled with the best hits whose text fits ``budget`` tokens (template included), and
    those hits; (None, []) when not even the first fits."""
    blocks = [source_block(i + 1, h) for i, h in enumerate(hits)]
    room = budget - SLACK - count(template.replace("{sources}", ""))
    n = 0
    for block in blocks:
        room -= count(block) + 2  # the blank line between two sources
        if room < 0:
            break
        n += 1
    if n == 0:
        return None, []
    return template.replace("{sources}", "\n\n".join(blocks[:n])), list(hits[:n])


def source_json(number: int, hit: Hit) -> dict[str, Any]:
    """A citation, as the answers carry it."""
    return {
        "index": number,
        "document": hit.source,
        "document_id": hit.document_id,
        "collection_id": hit.collection_id,
        "title": hit.title,
        "chunk_id": hit.chunk_id,
        "page": hit.page,
        "headings": list(hit.headings),
        "score": round(hit.score, 6),
    }


UNRESOLVED = "COLLECTION_UNRESOLVED"


def unresolved_warnings(references: Sequence[str]) -> list[dict[str, Any]]:
    """The answer's ``warnings`` for the assistant's collections that matched nothing the caller may read."""
    return [
        {
            "code": UNRESOLVED,
            "collection": ref,
            "message": f"The assistant's collection {ref!r} matches no collection you may read: "
            "the answer is not grounded in it.",
        }
        for ref in references
    ]


def with_sources(
    body: bytes | None, sources: list[dict[str, Any]] | None, warnings: list[dict[str, Any]] | None = None
) -> bytes | None:
    """A ``chat.completion`` body with top-level ``sources`` and ``warnings`` fields, when there are any
    (OpenAI clients ignore them)."""
    if body is None or not (sources or warnings):
        return body
    data = parse_answer(body)
    if not data:
        return body
    return orjson.dumps({**data, **_metadata(sources, warnings)})


def sources_event(
    head: Mapping[str, Any], sources: list[dict[str, Any]] | None, warnings: list[dict[str, Any]] | None = None
) -> bytes:
    """The last chunk of a grounded stream, before ``[DONE]``: no choices, the sources (and the warnings);
    nothing when there are neither."""
    if not (sources or warnings):
        return b""
    return choiceless_chunk(head, **_metadata(sources, warnings))


def _metadata(sources: list[dict[str, Any]] | None, warnings: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {"sources": sources or [], **({"warnings": warnings} if warnings else {})}
