"""The OpenAI-compatible routes: chat completions and embeddings through the pipeline, and the models."""

from __future__ import annotations

import functools
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from chatgate import pipeline
from chatgate.api.doors import OpenAIDoor
from chatgate.api.endpoint import PipelineEndpoint, new_turn
from chatgate.api.protocol import check_chat, check_embeddings, parse_object
from chatgate.api.responses import json_response
from chatgate.errors import ModelNotFound
from chatgate.turn import Answer, Services, Turn


def parse_completion(scope: Scope, raw: bytes) -> Turn:
    payload = parse_object(raw)
    check_chat(payload)
    if "use_cache" not in payload:
        return new_turn(scope, payload, raw)
    opted_out = payload.pop("use_cache") is False  # ours: it never goes upstream
    return new_turn(scope, payload, None, no_cache=opted_out)


def parse_embeddings(scope: Scope, raw: bytes) -> Turn:
    payload = parse_object(raw)
    check_embeddings(payload)
    return new_turn(scope, payload, raw)


def chat_completions(door: OpenAIDoor) -> PipelineEndpoint:
    return PipelineEndpoint(parse_completion, functools.partial(_run, door))


async def _run(door: OpenAIDoor, services: Services, turn: Turn) -> Answer:
    return await pipeline.run(services, door, turn)


embeddings = PipelineEndpoint(parse_embeddings, pipeline.embed)


async def _assistants(services: Services) -> list[dict[str, Any]]:
    return [a.model_object() for a in await services.rag.assistants.listing()] if services.rag is not None else []


async def list_models(request: Request) -> Response:
    """Served models, aliases, then assistants."""
    services: Services = request.app.state.services
    listed = await services.catalog.listing()
    ids = {m["id"] for m in listed}
    extra = [a for a in await _assistants(services) if a["id"] not in ids]
    return json_response({"object": "list", "data": [*listed, *extra]})


async def get_model(request: Request) -> Response:
    services: Services = request.app.state.services
    model_id = request.path_params["model_id"]
    found = await services.catalog.find(model_id)
    if found is None and services.rag is not None and (a := await services.rag.assistants.get(model_id)) is not None:
        found = a.model_object()
    if found is None:
        raise ModelNotFound(
            f"The model '{model_id}' does not exist or is not served here.", details={"model": model_id}
        )
    return json_response(found)
