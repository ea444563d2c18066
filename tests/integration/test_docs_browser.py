"""The API docs page in a real browser: Debian's chromium (``make browser-deps``), driven by Playwright, against a
real `chatgate serve`. The page is public; it asks for a key, loads ``/openapi.json`` (OpenAPI 3.1) with it,
renders the operations (an admin key's with the admin routes, a user key's without), and "Try it out" sends
the key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Fake, Gateway, start_gateway, stop, user_key

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, fake_a: Fake) -> Iterator[Gateway]:
    g = start_gateway(
        tmp_path_factory.mktemp("docs-browser"),
        {"upstreams": [{"name": "a", "base_url": fake_a.base_url, "api_key": "upstream-secret-a"}]},
    )
    yield g
    stop(g.proc)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run `make browser-deps`"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def open_docs(browser: Any, gw: Gateway, key: str) -> tuple[Any, list[str]]:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(gw.url + "/docs")
    page.wait_for_selector("#key-form:not([hidden])", timeout=15_000)  # /openapi.json answered 401: a key, please
    assert page.locator(".opblock").count() == 0
    page.fill("#key", key)
    page.click("#key-form button")
    page.wait_for_selector(".opblock", timeout=20_000)
    return page, errors


def paths(page: Any) -> set[str]:
    return {t.strip().replace("\u200b", "") for t in page.locator(".opblock-summary-path").all_inner_texts()}


def test_the_page_asks_for_a_key_then_renders_every_operation(browser: Any, gw: Gateway) -> None:
    page, errors = open_docs(browser, gw, gw.key)
    try:
        assert "Unable to render this definition" not in page.content()
        document = httpx.get(gw.url + "/openapi.json", headers={"Authorization": f"Bearer {gw.key}"}).json()
        operations = sum(len(methods) for methods in document["paths"].values())
        assert page.locator(".opblock").count() == operations  # every documented operation, admin routes included
        shown = paths(page)
        assert {"/v1/chat/completions", "/admin/metrics", "/api/v1/collections/{collection_id}/search"} <= shown
        assert "OAS 3.1" in page.locator(".info").inner_text()
        # Try it out: the key is already the page's authorization.
        models = page.locator(".opblock-get", has_text="List models")
        models.locator(".opblock-summary").click()
        models.locator("button.try-out__btn").click()
        models.locator("button.execute").click()
        status = models.locator(".live-responses-table tbody .response-col_status").first
        status.wait_for(timeout=15_000)
        assert status.inner_text().strip().startswith("200")
        assert "fake-model" in models.locator(".live-responses-table .microlight").first.inner_text()
        assert errors == []
    finally:
        page.close()


def test_a_user_key_sees_no_admin_routes(browser: Any, gw: Gateway) -> None:
    page, errors = open_docs(browser, gw, user_key(gw, "docs-reader"))
    try:
        shown = paths(page)
        assert "/v1/chat/completions" in shown and "/api/v1/chat" in shown
        assert not [p for p in shown if p.startswith("/admin/") or p == "/metrics"]
        assert errors == []
    finally:
        page.close()


def test_a_wrong_key_is_said_so(browser: Any, gw: Gateway) -> None:
    page = browser.new_page()
    try:
        page.goto(gw.url + "/docs")
        page.wait_for_selector("#key-form:not([hidden])", timeout=15_000)
        page.fill("#key", "cg-not-a-key")
        page.click("#key-form button")
        page.wait_for_function("document.getElementById('key-error').textContent.length > 0", timeout=15_000)
        assert "not accepted" in page.locator("#key-error").inner_text()
        assert page.locator(".opblock").count() == 0
    finally:
        page.close()
