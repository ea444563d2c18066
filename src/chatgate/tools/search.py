"""``search_documents``: the assistant's collections searched as the calling user (a private collection stays
its owner's), the best chunks returned as numbered sources within the result's token budget."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from chatgate.rag.assistants import Assistant
from chatgate.rag.ground import source_block, source_json
from chatgate.rag.retrieve import Hit
from chatgate.tools.base import ToolContext, ToolResult, trim_to

if TYPE_CHECKING:
    from chatgate.rag.service import Rag

log = logging.getLogger("chatgate.tools")
MAX_TOP_K = 20


class SearchDocuments:
    name = "search_documents"
    deterministic = True  # while the documents stay as they are: the cache key holds the collections' versions
    description = (
        "Search the documents this assistant answers from. Returns numbered sources ([1], [2], ...) with their "
        "title, page and text. Search before answering any question the documents may cover, and cite the "
        "sources you use by their numbers. Search again with other words if nothing relevant comes back."
    )

    def __init__(self, rag: Rag, count: Callable[[str], int], default_top_k: int) -> None:
        self.rag = rag
        self.count = count
        self.default_top_k = default_top_k

    def parameters(self, assistant: Assistant) -> dict[str, Any]:
        properties: dict[str, Any] = {
            "query": {"type": "string", "description": "What to look for, in the documents' own words."},
            "top_k": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_TOP_K,
                "description": f"How many sources (default {self.default_top_k}).",
            },
        }
        if len(assistant.collections) > 1:
            properties["collection"] = {
                "type": "string",
                "enum": list(assistant.collections),
                "description": "Search only this collection (default: all of them).",
            }
        return {"type": "object", "properties": properties, "required": ["query"], "additionalProperties": False}

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        query = arguments.get("query")
        if not isinstance(query, str) or not query.strip():
            return ToolResult("Give a non-empty 'query' to search for.", error="arguments")
        top_k = arguments.get("top_k", self.default_top_k)
        if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= MAX_TOP_K:
            top_k = self.default_top_k
        assistant = ctx.assistant
        named = arguments.get("collection")
        if named is not None and named not in assistant.collections:
            known = ", ".join(assistant.collections)
            return ToolResult(f"No collection {named!r} here; the collections are: {known}.", error="arguments")
        only = Assistant(assistant.name, assistant.model, collections=(named,)) if named else assistant
        collections = await self.rag.for_assistant(only, ctx.user_id)  # as the caller: never another's private one
        if not collections:
            return ToolResult("There are no documents to search.", error="no_documents")
        hits, _ = await self.rag.search(collections, query, top_k, assistant.mode)
        if not hits:
            return ToolResult(f"Nothing in the documents matches {query!r}.")
        count = self.count
        blocks: list[str] = []
        used: list[Hit] = []
        room = ctx.budget
        for hit in hits:
            block = source_block(len(used) + 1, hit)
            cost = count(block) + 2  # the blank line between two sources
            if cost > room:
                if not used:  # not even the first fits whole: its text cut to the room there is
                    blocks.append(trim_to(block, room, count))
                    used.append(hit)
                break
            room -= cost
            blocks.append(block)
            used.append(hit)
        sources = [{**source_json(i + 1, hit), "text": hit.text} for i, hit in enumerate(used)]

        def renumber(first: int) -> str:
            return "\n\n".join(block.replace(f"[{i + 1}]", f"[{first + i}]", 1) for i, block in enumerate(blocks))

        return ToolResult("\n\n".join(blocks), sources, renumber=renumber)
