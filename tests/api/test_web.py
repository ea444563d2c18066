"""The web page's serving (api/web.py) in process, over a small built tree made here: public files, caching,
pre-compressed bodies by Accept-Encoding, the CSP, ETags, ``web.enabled``, and the JWT cookie's header rule."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from chatgate.api.errors import EXCEPTION_HANDLERS
from chatgate.api.web import CookieSignIn, WebPages, accepted
from chatgate.app import create_app
from chatgate.settings import DEFAULT_CSP, Settings
from tests.conftest import ADMIN_KEY

INDEX = b"<!doctype html><title>chat</title>" * 20
SCRIPT = b"console.log('chat');" * 50


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    root = tmp_path / "dist"
    (root / "assets").mkdir(parents=True)
    for name, body in {"index.html": INDEX, "admin.html": b"<!doctype html><title>admin</title>"}.items():
        (root / name).write_bytes(body)
    (root / "index.html.gz").write_bytes(gzip.compress(INDEX))
    (root / "index.html.br").write_bytes(b"brotli-bytes")  # served as they are: no decoding needed here
    (root / "assets" / "chat-Ab12Cd34.js").write_bytes(SCRIPT)
    (root / "assets" / "chat-Ab12Cd34.js.gz").write_bytes(gzip.compress(SCRIPT))
    return root


@pytest.fixture
def client(dist: Path) -> Iterator[TestClient]:
    app = Starlette(routes=WebPages(DEFAULT_CSP, dist).routes(), exception_handlers=EXCEPTION_HANDLERS)
    with TestClient(app) as c:
        yield c


def test_pages_have_the_csp_and_are_revalidated(client: TestClient) -> None:
    for path, body in (("/ui/", INDEX), ("/ui/admin", b"<!doctype html><title>admin</title>")):
        resp = client.get(path, headers={"Accept-Encoding": "identity"})
        assert resp.status_code == 200 and resp.content == body
        assert resp.headers["content-type"] == "text/html; charset=utf-8"
        assert resp.headers["cache-control"] == "no-cache"
        csp = resp.headers["content-security-policy"]
        for directive in ("default-src 'self'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"):
            assert directive in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert resp.headers["x-content-type-options"] == "nosniff"
        assert resp.headers["x-frame-options"] == "DENY" and resp.headers["referrer-policy"] == "no-referrer"


def test_hashed_assets_are_immutable_and_pre_compressed(client: TestClient) -> None:
    resp = client.get("/ui/assets/chat-Ab12Cd34.js", headers={"Accept-Encoding": "gzip"})
    assert resp.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert resp.headers["content-encoding"] == "gzip" and resp.headers["vary"] == "Accept-Encoding"
    assert resp.content == SCRIPT  # the client decoded the twin made at build time
    assert "content-security-policy" not in resp.headers
    plain = client.get("/ui/assets/chat-Ab12Cd34.js", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.content == SCRIPT


def test_brotli_is_preferred_and_q0_refuses_a_coding(client: TestClient) -> None:
    br = client.get("/ui/", headers={"Accept-Encoding": "gzip, br"}, follow_redirects=False)
    assert br.headers["content-encoding"] == "br"
    no_br = client.get("/ui/", headers={"Accept-Encoding": "br;q=0, gzip;q=0.5"})
    assert no_br.headers["content-encoding"] == "gzip" and no_br.content == INDEX
    assert accepted("gzip;q=0, br, identity;q=0.1") == {"br", "identity"}
    assert accepted("") == set()


def test_etag_revalidation_head_and_errors(client: TestClient) -> None:
    etag = client.get("/ui/").headers["etag"]
    again = client.get("/ui/", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    head = client.head("/ui/assets/chat-Ab12Cd34.js", headers={"Accept-Encoding": "identity"})
    assert head.status_code == 200 and head.headers["content-length"] == str(len(SCRIPT)) and head.content == b""
    missing = client.get("/ui/assets/nope-12345678.js")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "NOT_FOUND"
    assert client.post("/ui/").json()["error"]["code"] == "METHOD_NOT_ALLOWED"


def test_an_unbuilt_page_says_how_to_build_it(tmp_path: Path) -> None:
    app = Starlette(routes=WebPages(DEFAULT_CSP, tmp_path / "none").routes(), exception_handlers=EXCEPTION_HANDLERS)
    with TestClient(app) as c:
        body = c.get("/ui/").json()["error"]
        assert body["code"] == "NOT_FOUND" and "make install" in body["message"]


def test_the_pages_are_public_and_web_enabled_false_removes_them(tmp_path: Path) -> None:
    with TestClient(create_app(Settings(data_dir=tmp_path / "a", admin_key=ADMIN_KEY))) as c:
        assert c.get("/ui/admin").status_code != 401  # served without a key (404 only if never built)
        assert c.get("/ui", follow_redirects=False).headers["location"].endswith("/ui/")
    settings = Settings(data_dir=tmp_path / "b", admin_key=ADMIN_KEY, web={"enabled": False})
    with TestClient(create_app(settings)) as c:
        assert c.get("/ui/").status_code == 401  # not a public path any more
        assert c.get("/ui/", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).status_code == 404


def cookie_app() -> CookieSignIn:
    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"authorization": request.headers.get("authorization")})

    return CookieSignIn(Starlette(routes=[Route("/", echo)]), cookie="cg_jwt")


TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZGEifQ.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-Chatgate-Web": "1", "Cookie": f"cg_jwt={TOKEN}"}, f"Bearer {TOKEN}"),
        ({"Cookie": f"cg_jwt={TOKEN}"}, None),  # no page header: a cross-site request's cookie is no credential
        ({"X-Chatgate-Web": "1", "Cookie": f"other={TOKEN}"}, None),
        ({"X-Chatgate-Web": "1", "Cookie": "cg_jwt=cg-an-api-key"}, None),  # only a JWT's shape
        ({"X-Chatgate-Web": "1", "Cookie": f"cg_jwt={TOKEN}", "Authorization": "Bearer own"}, "Bearer own"),
    ],
)
def test_the_jwt_cookie_counts_only_with_the_pages_header(headers: dict[str, str], expected: str | None) -> None:
    with TestClient(cookie_app()) as c:
        assert c.get("/", headers=headers).json()["authorization"] == expected
