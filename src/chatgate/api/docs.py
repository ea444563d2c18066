"""The OpenAPI document and the Swagger UI page, served offline.

The document is generated on its first request (``api/spec.py``: FastAPI, loaded then, not at start) and
kept. Swagger UI's assets come from the ``swagger-ui-bundle`` package.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = "/docs/static"


def routes() -> list[BaseRoute]:
    import swagger_ui_bundle

    schema: dict[str, Any] = {}

    async def openapi_json(_: Request) -> Response:
        if not schema:
            from chatgate.api.spec import openapi_schema

            schema.update(openapi_schema())
        return JSONResponse(schema)

    async def swagger(_: Request) -> Response:
        from fastapi.openapi.docs import get_swagger_ui_html

        page: HTMLResponse = get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="chatgate API",
            swagger_js_url=f"{STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{STATIC}/favicon-32x32.png",
        )
        return page

    return [
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/docs", swagger, methods=["GET"]),
        Mount(STATIC, app=StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-static"),
    ]
