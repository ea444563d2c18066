"""The OpenAI-compatible routes. Thin: read the body, run the pipeline, map the result."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive

from chatgate import pipeline
from chatgate.api.middleware import info
from chatgate.api.protocol import (
    ERRORS,
    ChatCompletion,
    ChatCompletionRequest,
    EmbeddingRequest,
    ModelList,
    ModelObject,
    check_chat,
    check_embeddings,
    parse_object,
    request_body,
)
from chatgate.errors import ModelNotFound

router = APIRouter(prefix="/v1", tags=["openai"])

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
T = TypeVar("T")


class ClientLeft(Exception):
    """The client hung up before the answer was ready."""


async def _until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Run ``work``, cancelling it the moment the client disconnects."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    raise ClientLeft


def _services(request: Request) -> pipeline.Services:
    return request.app.state.services  # type: ignore[no-any-return]


def _turn(request: Request, payload: dict[str, Any], raw: bytes) -> pipeline.Turn:
    req = info(request.scope)
    req.model = payload["model"]
    return pipeline.Turn(payload=payload, raw=raw, principal=req.principal)


def _traced(request: Request, turn: pipeline.Turn) -> None:
    req = info(request.scope)
    req.upstream, req.retries, req.usage = turn.trace.upstream, turn.trace.retries, turn.usage


@router.post(
    "/chat/completions",
    summary="Create a chat completion (streaming or not)",
    openapi_extra=request_body(ChatCompletionRequest),
    response_model=ChatCompletion,
    responses={**ERRORS, 200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE when `stream`"}},
)
async def chat_completions(request: Request) -> Response:
    raw = await request.body()
    payload = parse_object(raw)
    check_chat(payload)
    turn = _turn(request, payload, raw)
    services = _services(request)
    try:
        result = await _until_disconnect(request.receive, pipeline.chat(services, turn))
    except ClientLeft:
        return Response(status_code=499)  # nobody reads it; the access log records the hang-up
    finally:
        _traced(request, turn)
    if isinstance(result, bytes):
        return Response(result, media_type="application/json")

    async def stream(chunks: AsyncIterator[bytes] = result) -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            _traced(request, turn)

    return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)


@router.post(
    "/embeddings",
    summary="Create embeddings (passed through to the upstream serving the model)",
    openapi_extra=request_body(EmbeddingRequest),
    responses=ERRORS,
)
async def embeddings(request: Request) -> Response:
    raw = await request.body()
    payload = parse_object(raw)
    check_embeddings(payload)
    turn = _turn(request, payload, raw)
    try:
        body = await _until_disconnect(request.receive, pipeline.embeddings(_services(request), turn))
    except ClientLeft:
        return Response(status_code=499)
    finally:
        _traced(request, turn)
    return Response(body, media_type="application/json")


@router.get("/models", summary="List models: upstream models and aliases", response_model=ModelList, responses=ERRORS)
async def list_models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": await _services(request).catalog.listing()}


@router.get("/models/{model_id:path}", summary="One model", response_model=ModelObject, responses=ERRORS)
async def get_model(request: Request, model_id: str) -> dict[str, Any]:
    found = await _services(request).catalog.find(model_id)
    if found is None:
        raise ModelNotFound(
            f"The model '{model_id}' does not exist or is not served here.", details={"model": model_id}
        )
    return found
