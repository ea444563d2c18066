"""Query-string parameters, checked (400 with the field's name when wrong)."""

from __future__ import annotations

from starlette.requests import Request

from chatgate.errors import BadRequest


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise BadRequest(f"'{name}' must be an integer from {low} to {high}.", details={"field": name})
    return int(raw)
