"""The local embedding model as an upstream: ``POST /v1/embeddings`` answered in process, offline.

When the embedder of document search is the local one (``rag.embeddings.backend: local``, all-MiniLM-L6-v2
by default), routing knows its model (and the alias ``local-embed``) as served by an in-process upstream,
``local-embeddings``, on standby: only while no configured upstream serves a model of that name. An
embeddings request for it goes the way of any other (identify, admit, call, account); the call step hands
the body to :class:`LocalEmbeddings` instead of sending it over HTTP. The model is the one document search
uses (loaded once, on its own thread: the event loop never waits for it).

The answer is OpenAI's: ``{"object": "list", "data": [{"object": "embedding", "index", "embedding"}],
"model", "usage": {"prompt_tokens", "total_tokens"}}``, the vectors as floats or, with
``encoding_format: base64``, as base64 of little-endian float32 (what the openai SDK asks for by default).
Text only: token-id arrays are another model's tokens, refused with a 400 naming the field.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from typing import Any

import orjson

from chatgate.errors import BadRequest
from chatgate.rag.types import Embedder

UPSTREAM_NAME = "local-embeddings"
ALIAS = "local-embed"
MAX_INPUTS = 2048  # OpenAI's limit on one request's inputs


class LocalEmbeddings:
    """``InProcess`` (``upstream/routing.py``) over the local embedder; ``embedder`` gives the shared one."""

    def __init__(self, embedder: Callable[[], Embedder], model: str) -> None:
        self._embedder = embedder
        self.model = model

    async def post(self, path: str, body: bytes) -> bytes:
        if path != "/embeddings":
            raise BadRequest(
                f"The model '{self.model}' only makes embeddings (POST /v1/embeddings).",
                details={"field": "model", "model": self.model},
            )
        payload = orjson.loads(body)
        texts = _texts(payload.get("input"))
        embedder = self._embedder()
        dimensions = payload.get("dimensions")
        if dimensions is not None:
            await _wait_ready(embedder)
            if dimensions != embedder.dimension:
                raise BadRequest(
                    f"'dimensions' must be {embedder.dimension} for the model '{self.model}' (it cannot shorten "
                    "its vectors).",
                    details={"field": "dimensions", "expected": embedder.dimension, "got": dimensions},
                )
        vectors = await embedder.embed(texts)
        tokens = sum(await count_tokens(embedder, texts))
        as_base64 = payload.get("encoding_format") == "base64"
        data = [
            {"object": "embedding", "index": i, "embedding": _base64(v) if as_base64 else v}
            for i, v in enumerate(vectors)
        ]
        return orjson.dumps(
            {
                "object": "list",
                "data": data,
                "model": self.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )


def _texts(given: Any) -> list[str]:
    """The input as texts; a 400 for token ids (the request's shape was checked at the door)."""
    if isinstance(given, str):
        return [given]
    if isinstance(given, list) and all(isinstance(x, str) for x in given):
        if len(given) > MAX_INPUTS:
            raise BadRequest(
                f"'input' may hold at most {MAX_INPUTS} texts.",
                details={"field": "input", "max_items": MAX_INPUTS, "got": len(given)},
            )
        return given
    raise BadRequest(
        "'input' must be a string or an array of strings for the local embedding model: token arrays are not "
        "supported (they are another tokenizer's ids).",
        details={"field": "input", "expected": "a string or an array of strings", "got": "token ids"},
    )


def _base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


async def _wait_ready(embedder: Embedder) -> None:
    wait = getattr(embedder, "wait_ready", None)
    if wait is not None:
        await wait()


async def count_tokens(embedder: Embedder, texts: list[str]) -> list[int]:
    """Each text's tokens as the model reads them (``LocalEmbedder.count_tokens``), through a cache."""
    inner = getattr(embedder, "inner", embedder)
    count = getattr(inner, "count_tokens", None)
    if count is None:  # not a local model: a word estimate
        return [len(t.split()) for t in texts]
    counted: list[int] = await count(texts)
    return counted
