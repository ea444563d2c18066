"""``/admin/assistants``: assistants stored in the database (admin key; to anyone else these routes do not
exist). Those defined in the config file are listed too, marked ``"source": "config"``, and are read-only."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from chatgate.api.admin import _admin
from chatgate.api.protocol import parse_object
from chatgate.api.responses import json_response, no_route
from chatgate.errors import BadRequest, Conflict, NotFound
from chatgate.rag.assistants import Assistant, Assistants
from chatgate.settings import AssistantSettings


def _registry(request: Request) -> Assistants:
    services = _admin(request)
    if services.rag is None:
        raise no_route(request)
    return services.rag.assistants


def _parse(request: Request, data: dict[str, Any]) -> Assistant:
    for name in ("top_k", "max_steps"):  # JSON Schema's integer: 5.0 is 5
        value = data.get(name)
        if isinstance(value, float) and value.is_integer():
            data = {**data, name: int(value)}
    try:  # strict: `research: 0` is not a boolean, `top_k: "5"` not an integer
        settings = AssistantSettings.model_validate(data, strict=True)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "body"
        raise BadRequest(f"'{field}': {error['msg']}.", details={"field": field}) from None
    assistant = Assistant.from_settings(settings, source="api")
    loop = _admin(request).tool_loop
    if loop is not None:
        loop.tools.check(assistant)  # a tool it offers that does not exist: said now, not on its first request
    return assistant


def _no_assistant(name: str) -> NotFound:
    return NotFound("No such assistant.", details={"name": name})


def _read_only(name: str) -> Conflict:
    return Conflict(f"The assistant {name!r} is defined in the config file: change it there.", details={"name": name})


async def list_assistants(request: Request) -> Response:
    """``GET /admin/assistants``."""
    registry = _registry(request)
    await registry.refresh()  # an admin sees other instances' changes at once
    return json_response({"object": "list", "data": [a.as_json() for a in await registry.listing()]})


async def create_assistant(request: Request) -> Response:
    """``POST /admin/assistants``: 201, or 409 when the name is taken."""
    registry = _registry(request)
    assistant = _parse(request, parse_object(await request.body()))
    if assistant.name in registry.configured or not await registry.repo.create(assistant):
        raise Conflict(f"An assistant named {assistant.name!r} exists.", details={"field": "name"})
    await registry.refresh()
    return json_response(assistant.as_json(), 201)


async def get_assistant(request: Request) -> Response:
    """``GET /admin/assistants/{name}``."""
    registry = _registry(request)
    name = request.path_params["name"]
    await registry.refresh()
    found = await registry.get(name)
    if found is None:
        raise _no_assistant(name)
    return json_response(found.as_json())


async def replace_assistant(request: Request) -> Response:
    """``PUT /admin/assistants/{name}``: the whole definition (``name`` may be left out)."""
    registry = _registry(request)
    name = request.path_params["name"]
    data = parse_object(await request.body())
    if data.setdefault("name", name) != name:
        raise BadRequest("'name' must match the path (an assistant cannot be renamed).", details={"field": "name"})
    if name in registry.configured:
        raise _read_only(name)
    assistant = _parse(request, data)
    if not await registry.repo.replace(assistant):
        raise _no_assistant(name)
    await registry.refresh()
    return json_response(assistant.as_json())


async def delete_assistant(request: Request) -> Response:
    """``DELETE /admin/assistants/{name}``."""
    registry = _registry(request)
    name = request.path_params["name"]
    if name in registry.configured:
        raise _read_only(name)
    if not await registry.repo.delete(name):
        raise _no_assistant(name)
    await registry.refresh()
    return json_response({"name": name, "deleted": True})
