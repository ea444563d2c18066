"""CORS (``server.cors``) from a real browser: a page on another origin calls ``/chatkit`` with a key in headless
Chromium, which sends the preflight itself; a page on an origin not listed is refused by the browser. And the
preflight as plain HTTP: answered without a key, on every route; off by default."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser

from tests.conftest import Fake, Gateway, free_port, start_gateway, stop
from tests.integration.web_browser import open_tab

ROOT = Path(__file__).parents[2]
PAGE = b"<!doctype html><title>shop</title><p>the deployer's site</p>"


class _Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def site() -> Iterator[int]:
    """The deployer's own site: another origin (another port) than the gateway's."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, fake_a: Fake, site: int) -> Iterator[Gateway]:
    config = {
        "upstreams": [{"name": "a", "base_url": fake_a.base_url, "api_key": "upstream-secret-a"}],
        "server": {"cors": {"allow_origins": [f"http://127.0.0.1:{site}"], "max_age": 321}},
        "chatkit": {"default_model": "fake-model"},
    }
    g = start_gateway(tmp_path_factory.mktemp("cors"), config, env={"PYTHONPATH": str(ROOT / "src")})
    yield g
    stop(g.proc)


FETCH = """async ([url, key]) => {
  const r = await fetch(url + "/chatkit", {
    method: "POST",
    headers: {"Authorization": "Bearer " + key, "Content-Type": "application/json"},
    body: JSON.stringify({type: "threads.create", params: {input: {
      content: [{type: "input_text", text: "hello from the shop"}], attachments: [], inference_options: {}}}}),
  });
  return {status: r.status, type: r.headers.get("content-type"), text: await r.text()};
}"""
FETCH_401 = """async (url) => {
  const r = await fetch(url + "/chatkit", {method: "POST", headers: {"Content-Type": "application/json"}, body: "{}"});
  return {status: r.status, code: (await r.json()).error.code, retry: r.headers.get("x-ratelimit-limit")};
}"""
FETCH_REFUSED = """async ([url, key]) => {
  try {
    await fetch(url + "/v1/models", {headers: {"Authorization": "Bearer " + key}});
    return "read";
  } catch (e) { return "refused: " + e.name; }
}"""


def test_a_page_on_an_allowed_origin_calls_chatkit(chromium: Browser, gw: Gateway, site: int) -> None:
    with open_tab(chromium, f"http://127.0.0.1:{site}") as tab:
        tab.goto("/")
        preflights: list[str] = []
        tab.page.on("request", lambda r: preflights.append(r.method) if r.method == "OPTIONS" else None)
        got = tab.page.evaluate(FETCH, [gw.url, gw.key])
        assert got["status"] == 200 and got["type"].startswith("text/event-stream"), got
        assert '"type":"thread.created"' in got["text"] and "echo: hello from the shop" in got["text"]
        denied = tab.page.evaluate(FETCH_401, gw.url)  # an error, readable by the page too
        assert denied["status"] == 401 and denied["code"] == "UNAUTHORIZED"


def test_a_page_on_another_origin_is_refused(chromium: Browser, gw: Gateway, site: int) -> None:
    with open_tab(chromium, f"http://localhost:{site}") as tab:  # not the listed origin (exact match)
        tab.goto("/")
        assert tab.page.evaluate(FETCH_REFUSED, [gw.url, gw.key]) == "refused: TypeError"


def test_preflight_without_a_key_on_every_route(gw: Gateway, site: int, tmp_path: Path, fake_a: Fake) -> None:
    origin = f"http://127.0.0.1:{site}"
    for path in ("/chatkit", "/v1/chat/completions", "/api/v1/chat", "/admin/users"):
        pre = httpx.options(
            gw.url + path,
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert pre.status_code == 200, (path, pre.text)
        assert pre.headers["access-control-allow-origin"] == origin
        assert pre.headers["access-control-max-age"] == "321"
        assert "authorization" in pre.headers["access-control-allow-headers"].lower()
    other = httpx.options(
        gw.url + "/chatkit", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    simple = httpx.get(gw.url + "/health", headers={"Origin": origin})
    assert simple.headers["access-control-allow-origin"] == origin
    assert (
        "access-control-allow-origin"
        not in httpx.get(gw.url + "/health", headers={"Origin": "https://evil.example"}).headers
    )

    off = start_gateway(tmp_path / "off", {"upstreams": [{"name": "a", "base_url": fake_a.base_url}]})
    try:  # off by default: no CORS headers, a preflight is not answered as one
        pre = httpx.options(off.url + "/chatkit", headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in pre.headers and pre.status_code in (401, 405)
    finally:
        stop(off.proc)
