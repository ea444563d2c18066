"""The HTTP surface in process: auth, the unified error body on every path, limits, request ids, logs."""

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.routing import Route
from starlette.testclient import TestClient

from chatgate.app import create_app
from chatgate.settings import Settings
from tests.conftest import ADMIN_KEY, free_port

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hello"}]}


def settings(tmp_path: Path, base_url: str, **kw) -> Settings:
    return Settings(
        data_dir=tmp_path,
        admin_key=ADMIN_KEY,
        upstream_base_url=base_url,
        retry={"max_retries": 1, "base": 0.01, "cap": 0.05},
        **kw,
    )


@pytest.fixture
def access() -> io.BytesIO:
    return io.BytesIO()


@pytest.fixture
def client(tmp_path, fake_b, access) -> Iterator[TestClient]:
    app = create_app(settings(tmp_path, fake_b.base_url, server={"max_body_bytes": 2048}), access_stream=access)
    with TestClient(app) as c:
        yield c


def assert_error(resp, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "type", "details"}
    assert body["error"]["code"] == code and body["error"]["message"]
    assert "Traceback" not in resp.text
    return body["error"]


def test_health_is_public_and_reports_version(client):
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["version"] and body["uptime_s"] >= 0


@pytest.mark.parametrize("path", ["/v1/models", "/ready", "/openapi.json", "/nope"])
def test_everything_else_needs_a_key(client, path):
    err = assert_error(client.get(path), 401, "UNAUTHORIZED")
    assert err["type"] == "authentication_error"


def test_wrong_key_and_both_key_headers(client):
    assert_error(client.get("/v1/models", headers={"Authorization": "Bearer nope"}), 401, "UNAUTHORIZED")
    assert client.get("/v1/models", headers={"x-api-key": ADMIN_KEY}).status_code == 200
    assert client.get("/v1/models", headers=AUTH).status_code == 200


def test_chat_round_trip(client):
    resp = client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"] == "echo: hello"


def test_unknown_route_and_method(client):
    assert_error(client.get("/v2/whatever", headers=AUTH), 404, "NOT_FOUND")
    assert_error(client.get("/v1/chat/completions", headers=AUTH), 405, "METHOD_NOT_ALLOWED")


def test_unknown_model_is_404(client):
    err = assert_error(
        client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-9"}, headers=AUTH), 404, "MODEL_NOT_FOUND"
    )
    assert err["details"] == {"model": "gpt-9"}
    assert_error(client.get("/v1/models/gpt-9", headers=AUTH), 404, "MODEL_NOT_FOUND")


def test_malformed_json(client):
    err = assert_error(client.post("/v1/chat/completions", content=b'{"model": ', headers=AUTH), 400, "INVALID_JSON")
    assert err["type"] == "invalid_request_error"
    assert_error(client.post("/v1/chat/completions", content=b"[1,2]", headers=AUTH), 400, "INVALID_JSON")
    assert_error(client.post("/v1/chat/completions", content=b"", headers=AUTH), 400, "INVALID_JSON")


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"model": 3}, "model"),
        ({"messages": "hi"}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"content": "x"}]}, "messages[0].role"),
        ({"stream": "yes"}, "stream"),
        ({"n": True}, "n"),
        ({"temperature": "hot"}, "temperature"),
        ({"tools": {}}, "tools"),
    ],
)
def test_wrong_types_name_the_field(client, patch, field):
    err = assert_error(client.post("/v1/chat/completions", json={**CHAT, **patch}, headers=AUTH), 400, "BAD_REQUEST")
    assert err["details"]["field"] == field


def test_embeddings_checked_and_passed_through(client):
    resp = client.post("/v1/embeddings", json={"model": "fake-model", "input": ["a", "b"]}, headers=AUTH)
    assert resp.status_code == 200 and len(resp.json()["data"]) == 2
    err = assert_error(client.post("/v1/embeddings", json={"model": "fake-model"}, headers=AUTH), 400, "BAD_REQUEST")
    assert err["details"]["field"] == "input"


def test_oversized_body_by_length_and_by_stream(client):
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
    err = assert_error(client.post("/v1/chat/completions", json=big, headers=AUTH), 413, "PAYLOAD_TOO_LARGE")
    assert err["details"]["max_bytes"] == 2048

    def chunks():
        for _ in range(10):
            yield b"x" * 500

    assert_error(client.post("/v1/chat/completions", content=chunks(), headers=AUTH), 413, "PAYLOAD_TOO_LARGE")
    assert client.post("/v1/chat/completions", json=CHAT, headers=AUTH).status_code == 200  # still serving


def test_request_id_honoured_or_generated(client):
    resp = client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert resp.headers["x-request-id"] == "abc-123"
    generated = client.get("/health", headers={"X-Request-ID": "bad id with spaces"}).headers["x-request-id"]
    assert generated != "bad id with spaces" and len(generated) == 24
    assert client.get("/nope").headers["x-request-id"]  # error paths too


def test_dead_upstream_gives_502_and_server_keeps_serving(tmp_path):
    dead = [{"name": "default", "base_url": f"http://127.0.0.1:{free_port()}/v1", "models": ["m"]}]
    app = create_app(
        Settings(
            data_dir=tmp_path, admin_key=ADMIN_KEY, upstreams=dead, retry={"max_retries": 1, "base": 0.01, "cap": 0.05}
        )
    )
    with TestClient(app) as c:
        err = assert_error(
            c.post("/v1/chat/completions", json={**CHAT, "model": "m"}, headers=AUTH), 502, "UPSTREAM_ERROR"
        )
        assert err["type"] == "api_error"
        assert c.get("/health").status_code == 200
        ready = c.get("/ready", headers=AUTH)
        assert ready.status_code == 503 and ready.json()["upstreams"]["default"]["reachable"] is False


def test_unexpected_error_is_a_500_without_internals(client, monkeypatch, caplog):
    async def boom(*_a, **_k):
        raise RuntimeError("secret-token-123 in a traceback")

    endpoint = next(r.app for r in client.app.routes if getattr(r, "path", "") == "/v1/chat/completions")
    monkeypatch.setattr(endpoint, "run", boom)
    with caplog.at_level(logging.INFO):
        resp = client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert_error(resp, 500, "INTERNAL")
    assert "secret-token-123" not in resp.text
    assert "secret-token-123" not in caplog.text and "Traceback" not in caplog.text


def access_lines(access: io.BytesIO) -> list[dict]:
    return [json.loads(line) for line in access.getvalue().splitlines()]


def test_access_log_line_has_the_request_facts(client, access):
    client.post("/v1/chat/completions", json=CHAT, headers={**AUTH, "X-Request-ID": "rid-1"})
    client.get("/v1/models/fake-model", headers=AUTH)
    client.app.state.access_log.flush()
    lines = access_lines(access)
    line = next(e for e in lines if e["request_id"] == "rid-1")
    assert line["route"] == "/v1/chat/completions" and line["status"] == 200 and line["model"] == "fake-model"
    assert line["upstream"] == "default" and line["retries"] == 0 and line["latency_ms"] > 0
    assert line["usage"] == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    assert line["level"] == "info" and line["logger"] == "chatgate.access" and line["ts"].endswith("Z")
    assert lines[-1]["route"] == "/v1/models/{model_id:path}" and lines[-1]["key_id"] == "bootstrap-admin"


def test_openapi_documents_every_route(client):
    spec = client.get("/openapi.json", headers=AUTH).json()
    body = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"].endswith("ChatCompletionRequest")
    assert "InstructedMessage" in spec["components"]["schemas"]
    documented = {
        (path.replace("{model_id}", "{model_id:path}").replace("{user_id}", "{user_id:path}"), m.upper())
        for path, ops in spec["paths"].items()
        for m in ops
    }
    served = {
        (r.path, m)
        for r in client.app.routes
        if isinstance(r, Route) and r.path not in ("/docs", "/openapi.json")
        for m in r.methods or {"GET"}  # no methods: an app that answers every one (/metrics: 405 but to GET)
        if m != "HEAD"
    }
    assert documented == served


def test_docs_page_is_public_and_works_offline(client):
    page = client.get("/docs")  # no key: the page asks for one, then fetches /openapi.json with it
    assert page.status_code == 200 and "/docs/static/swagger-ui-bundle.js" in page.text and "/openapi.json" in page.text
    asset = client.get("/docs/static/swagger-ui-bundle.js")
    assert asset.status_code == 200 and len(asset.content) > 100_000
    assert re.search(rb'PACKAGE_VERSION:"5\.\d+\.\d+"', asset.content)  # Swagger UI 5: renders OpenAPI 3.1
    assert client.get("/docs/static/swagger-ui.css").status_code == 200


def test_openapi_lists_admin_routes_to_admin_keys_only(client):
    admin_doc = client.get("/openapi.json", headers=AUTH).json()
    assert admin_doc["openapi"].startswith("3.1")
    admin_paths = [p for p in admin_doc["paths"] if p.startswith("/admin/") or p == "/metrics"]
    assert len(admin_paths) == 17 and "AssistantDefinition" in admin_doc["components"]["schemas"]
    user_doc = user_client_doc(client)
    assert user_doc["paths"] and not [p for p in user_doc["paths"] if p.startswith("/admin/") or p == "/metrics"]
    assert set(user_doc["paths"]) == set(admin_doc["paths"]) - set(admin_paths)
    assert "AssistantDefinition" not in user_doc["components"]["schemas"]  # the schemas only admin routes use
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(user_doc)))
    assert refs == set(user_doc["components"]["schemas"])


def user_client_doc(client) -> dict:
    import asyncio

    from chatgate.store.db import Store, database_url

    settings = client.app.state.settings

    async def make_key() -> str:
        store = await Store.open(database_url(settings))
        try:
            await store.users.create("Uma", user_id="u-uma")
            _, plain = await store.keys.create("u-uma", scopes=("user",))
            return plain
        finally:
            await store.close()

    key = asyncio.run(make_key())
    resp = client.get("/openapi.json", headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 200
    assert client.get("/admin/metrics", headers={"Authorization": f"Bearer {key}"}).status_code == 404
    return resp.json()


def test_every_operation_documents_its_errors_with_the_error_body(client):
    spec = client.get("/openapi.json", headers=AUTH).json()
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            codes = set(op["responses"])
            assert "422" not in codes, (method, path)  # chatgate answers a bad request with 400
            if path == "/health" or path.startswith("/chatkit/attachments/"):  # no key (an attachment: its token)
                assert op["security"] == [] and "401" not in codes
                continue
            assert {"401", "429", "503"} <= codes, (method, path)
            if "{" in path:
                assert "404" in codes, (method, path)
            if method in ("post", "put") and path != "/admin/users/{user_id}/limits/reset":
                assert {"400", "413"} <= codes, (method, path)
            for code in codes - {"200", "201", "202"}:
                if code not in ("503",) or path != "/ready":
                    schema = op["responses"][code]["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, code)
    chat = spec["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"400", "404", "4XX", "502", "504"} <= set(chat)


def test_public_paths_with_prefix(tmp_path, fake_b):
    app = create_app(
        settings(tmp_path, fake_b.base_url, server={"public_paths": ["/health", "/ready", "/openapi.json"]})
    )
    with TestClient(app) as c:
        assert c.get("/ready").status_code == 200
        doc = c.get("/openapi.json")  # opened: no key needed, the public document
        assert doc.status_code == 200 and "/admin/metrics" not in doc.json()["paths"]
        assert doc.json()["paths"]["/ready"]["get"]["security"] == []
        with_key = c.get("/openapi.json", headers=AUTH).json()  # an admin key still counts there
        assert "/admin/metrics" in with_key["paths"]
        assert c.get("/v1/models").status_code == 401
