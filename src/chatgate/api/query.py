"""Query-string parameters, checked (400 with the field's name when wrong)."""

from __future__ import annotations

import re

from starlette.requests import Request

from chatgate.errors import BadRequest

_INTEGER = re.compile(r"[+-]?[0-9]{1,20}")


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not _INTEGER.fullmatch(raw) or not low <= int(raw) <= high:
        raise BadRequest(f"'{name}' must be an integer from {low} to {high}.", details={"field": name})
    return int(raw)
