"""The OpenAPI document and the API docs page (Swagger UI 5, which renders OpenAPI 3.1), served offline.

The document is generated on its first request (``api/spec.py``: FastAPI, loaded then, not at start) and kept,
one for admin keys (every route) and one for everyone else (no admin routes: to them those do not exist).
It needs a key like any route, unless ``server.public_paths`` opens ``/openapi.json``; a key sent to an
opened ``/openapi.json`` still counts (an admin's gets the admin routes).

The page (``/docs``) and its assets (``/docs/static/*``, from the ``swagger-ui-py`` package: no CDN) are public:
they hold nothing but Swagger UI. The page fetches ``/openapi.json`` itself: when that answers 401, it asks for a
key, sends it as ``Authorization: Bearer``, keeps it in the tab's ``sessionStorage`` and authorizes the
"Try it out" requests with it (Swagger UI's Authorize button changes it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from chatgate.identity.keys import Authenticator, Principal

PAGE = "/docs"
STATIC = "/docs/static"
SPEC = "/openapi.json"
PUBLIC_PATHS = (PAGE, f"{STATIC}/*")  # always public (Authenticate lets them through)


def assets_dir() -> Path:
    """Swagger UI's files, as the ``swagger-ui-py`` package ships them."""
    from swagger_ui.utils import SWAGGER_UI_PY_ROOT

    return Path(SWAGGER_UI_PY_ROOT) / "static"


_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>chatgate API</title>
<link rel="stylesheet" href="{static}/swagger-ui.css">
<link rel="icon" type="image/png" href="{static}/favicon-32x32.png">
<style>
  body {{ margin: 0; font-family: sans-serif; }}
  #key-form {{ max-width: 40rem; margin: 3rem auto; padding: 0 1rem; }}
  #key-form input {{ width: 24rem; padding: .4rem; }}
  #key-form button {{ padding: .4rem 1rem; }}
  #key-error {{ color: #b00020; }}
</style>
</head>
<body>
<form id="key-form" hidden>
  <h2>chatgate API</h2>
  <p>This server's API description needs an API key (<code>cg-...</code>). It is sent to this server only,
  and kept in this tab until you close it.</p>
  <label>API key <input id="key" type="password" autocomplete="off" spellcheck="false"></label>
  <button type="submit">Authorize</button>
  <p id="key-error" role="alert"></p>
</form>
<div id="swagger-ui"></div>
<script src="{static}/swagger-ui-bundle.js"></script>
<script>
(function () {{
  const SPEC = "{spec}", STORE = "chatgate.apiKey";
  const form = document.getElementById("key-form");
  const input = document.getElementById("key");
  const error = document.getElementById("key-error");
  function ask(message) {{
    error.textContent = message || "";
    form.hidden = false;
    input.focus();
  }}
  async function load(key) {{
    let resp;
    try {{
      resp = await fetch(SPEC, {{ headers: key ? {{ Authorization: "Bearer " + key }} : {{}} }});
    }} catch (e) {{
      return ask("Could not reach " + SPEC + ".");
    }}
    if (resp.status === 401) {{
      sessionStorage.removeItem(STORE);
      return ask(key ? "That key was not accepted." : "");
    }}
    if (!resp.ok) return ask("Could not load " + SPEC + ": HTTP " + resp.status + ".");
    const spec = await resp.json();
    form.hidden = true;
    const ui = SwaggerUIBundle({{
      spec: spec,
      dom_id: "#swagger-ui",
      deepLinking: true,
      presets: [SwaggerUIBundle.presets.apis],
      layout: "BaseLayout",
      onComplete: function () {{
        if (key) setTimeout(function () {{ ui.preauthorizeApiKey("bearer", key); }});
      }},
    }});
  }}
  form.addEventListener("submit", function (event) {{
    event.preventDefault();
    const key = input.value.trim();
    if (!key) return ask("Paste an API key.");
    sessionStorage.setItem(STORE, key);
    load(key);
  }});
  load(sessionStorage.getItem(STORE));
}})();
</script>
</body>
</html>
"""


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key", "").strip() or None


def routes(
    authenticator: Authenticator, public_paths: Sequence[str] = ("/health",), tool_names: Sequence[str] = ()
) -> list[BaseRoute]:
    documents: dict[bool, bytes] = {}
    page = _HTML.format(static=STATIC, spec=SPEC)

    async def caller(request: Request) -> Principal | None:
        principal: Principal | None = request.scope["chatgate"].principal
        if principal is None and (key := _bearer(request)) is not None:  # an opened /openapi.json
            try:
                principal = await authenticator.authenticate(key)
            except Exception:  # a JWT that fails verification: the public document, as without a key
                principal = None
        return principal

    async def openapi_json(request: Request) -> Response:
        principal = await caller(request)
        admin = principal is not None and "admin" in principal.scopes
        body = documents.get(admin)
        if body is None:
            import orjson

            from chatgate.api.spec import openapi_schema

            schema: dict[str, Any] = openapi_schema(admin=admin, public_paths=public_paths, tool_names=tool_names)
            body = documents[admin] = orjson.dumps(schema)
        return Response(body, media_type="application/json", headers={"cache-control": "no-store"})

    async def docs_page(_: Request) -> Response:
        return HTMLResponse(page)

    return [
        Route(SPEC, openapi_json, methods=["GET"]),
        Route(PAGE, docs_page, methods=["GET"]),
        Mount(STATIC, app=StaticFiles(directory=assets_dir()), name="docs-static"),
    ]
