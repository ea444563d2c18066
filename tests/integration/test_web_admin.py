"""The admin dashboard in a real browser, and the admin listing routes it needs (/admin/users, /admin/collections,
/admin/jobs): charts of the requests just made, users and their limits, operations; a user key sees a 404."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import expect

from tests.conftest import Fake, Gateway, start_fake, start_gateway, stop, user_key
from tests.integration.test_rag import POLICY, make_collection
from tests.integration.test_web_chat import config
from tests.integration.web_browser import Tab, sign_in

REQUESTS = 3  # chat requests made by the module's users, before the dashboard is opened


@pytest.fixture(scope="module")
def fake() -> Iterator[Fake]:
    f = start_fake("web", "fake-model", api_key="upstream-secret-web")
    yield f
    stop(f.proc)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, fake: Fake) -> Iterator[Gateway]:
    g = start_gateway(tmp_path_factory.mktemp("web-admin-gw"), config(fake))
    make_collection(g, g.key, "hr", "admin", {"policy.md": POLICY.encode()})
    yield g
    stop(g.proc)


@pytest.fixture(scope="module")
def keys(gw: Gateway) -> dict[str, str]:
    made = {name: user_key(gw, name) for name in ("ada", "bob")}
    for i in range(REQUESTS):
        resp = httpx.post(
            gw.url + "/api/v1/chat",
            json={"message": f"hello {i}", "model": "fake-model"},
            headers=auth(made["ada"]),
            timeout=30,
        )
        assert resp.status_code == 200, resp.text
    return made


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def admin(tab: Tab, gw: Gateway, section: str = "") -> None:
    sign_in(tab, gw.key, "/ui/admin" + (f"#{section}" if section else ""))
    expect(tab.page.get_by_role("heading", name="chatgate admin")).to_be_visible()
    expect(tab.page.locator("#admin-main")).not_to_have_attribute("data-loading", "true")


def test_the_overview_charts_show_the_requests_just_made(tab: Tab, gw: Gateway, keys: dict[str, str]) -> None:
    admin(tab, gw)
    page = tab.page
    expect(page.locator("[data-tile=requests] dd")).to_have_text(str(REQUESTS))
    values = page.locator("[data-chart=requests] .chart-data td").evaluate_all(
        "cells => cells.map(c => Number(c.dataset.value || 0))"
    )
    assert sum(values) == REQUESTS and len(values) >= 24  # one row per hour of the last 24 hours
    expect(page.locator("[data-chart=requests] canvas")).to_have_count(1)  # drawn by uPlot
    for key in ("tokens", "errors", "latency", "cache"):
        expect(page.locator(f"[data-chart={key}] canvas")).to_have_count(1)
    model_row = page.locator("[data-breakdown=model] tbody tr")
    expect(model_row).to_have_count(1)
    expect(model_row.locator("th")).to_have_text("fake-model")
    expect(model_row.locator("td").first).to_have_text(str(REQUESTS))
    expect(page.locator("[data-breakdown=kind] tbody tr th")).to_have_text(["standard"])


def test_a_user_key_cannot_open_the_dashboard(tab: Tab, gw: Gateway, keys: dict[str, str]) -> None:
    page = tab.page
    sign_in(tab, keys["bob"], "/ui/admin")
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    expect(page.get_by_role("heading", name="chatgate admin")).to_have_count(0)
    assert not [u for u in tab.requests if "/assets/dashboard-" in u]  # the dashboard's code never loaded
    admin_calls = {u for u in tab.requests if "/admin/" in u}
    assert admin_calls == {gw.url + "/admin/metrics"}  # the probe (the deployer's sign-in, then the key): 404
    # Signed in on the chat page with the same key, in the same tab: the dashboard is still a 404.
    tab.goto("/ui/")
    page.get_by_label("API key", exact=True).fill(keys["bob"])
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    tab.goto("/ui/admin")
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    # The page itself is the same bytes for anyone, with or without a key: code, never data.
    anonymous = httpx.get(gw.url + "/ui/admin")
    assert anonymous.status_code == 200
    assert httpx.get(gw.url + "/ui/admin", headers=auth(keys["bob"])).content == anonymous.content
    assert httpx.get(gw.url + "/admin/metrics", headers=auth(keys["bob"])).status_code == 404


def test_users_search_and_a_users_limits_reset(tab: Tab, gw: Gateway, keys: dict[str, str]) -> None:
    admin(tab, gw, "users")
    page = tab.page
    page.get_by_label("Search users").fill("AD")
    page.get_by_role("button", name="Search", exact=True).click()
    rows = page.locator(".users-results tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.locator("th")).to_have_text("ada")
    rows.get_by_role("link", name="ada").click()
    expect(page.get_by_role("heading", name="ada", exact=True)).to_be_visible()
    minute = page.locator(".limits tbody tr", has_text="user:requests_per_minute")
    expect(minute.locator("td").first).to_have_text(str(REQUESTS))  # used
    expect(page.get_by_role("heading", name="Sessions (3)")).to_be_visible()
    reset = page.get_by_role("button", name="Reset limits")
    reset.click()
    page.get_by_role("button", name="Reset? Click again").click()
    expect(minute.locator("td").first).to_have_text("0")
    limits = httpx.get(gw.url + "/admin/users/ada/limits", headers=auth(gw.key)).json()["limits"]
    assert {line["scope"]: line["used"] for line in limits}["user:requests_per_minute"] == 0


def test_operations_upstreams_cache_assistants_collections_and_export(
    tab: Tab, gw: Gateway, keys: dict[str, str]
) -> None:
    admin(tab, gw, "operations")
    page = tab.page
    upstreams = page.locator("[data-section=upstreams] tbody tr")
    expect(upstreams).to_have_count(1)
    expect(upstreams).to_contain_text("web")
    expect(upstreams).to_contain_text("closed")
    expect(page.locator("[data-section=connections] [data-tile=in-flight] dd")).to_have_text("0")
    expect(page.locator("[data-section=cache] [data-tile=entries]")).to_be_visible()
    page.get_by_role("button", name="Clear the cache").click()
    page.get_by_role("button", name="Clear? Click again").click()
    expect(page.locator("[data-section=cache] [data-tile=entries] dd")).to_have_text("0 valid, 0 expired")
    collections = page.locator("[data-section=collections] table").first.locator("tbody tr")
    expect(collections).to_contain_text(["hr"])
    expect(collections.first).to_contain_text("1 ready")
    jobs = page.locator("[data-section=collections] table").nth(1).locator("tbody tr")
    expect(jobs.first).to_contain_text("done")

    page.get_by_role("button", name="New assistant").click()
    form = page.get_by_role("dialog", name="New assistant")
    form.get_by_label("Name (the model id clients ask for)").fill("web-helper")
    form.get_by_label("Base model").fill("fake-model")
    form.get_by_label("Collections (names or ids, comma separated)").fill("hr, My documents")
    form.get_by_role("button", name="Save").click()
    assistants = page.locator("[data-section=assistants] tbody tr")
    row = assistants.filter(has_text="web-helper")
    expect(row).to_contain_text("hr, My documents")
    row.get_by_role("button", name="Edit").click()
    edit = page.get_by_role("dialog", name="Edit web-helper")
    edit.get_by_label("Retrieval").select_option("off")
    edit.get_by_role("button", name="Save").click()
    expect(assistants.filter(has_text="web-helper")).to_contain_text("off")
    stored = httpx.get(gw.url + "/admin/assistants/web-helper", headers=auth(gw.key)).json()
    assert stored["retrieval"] == "off" and stored["collections"] == ["hr", "My documents"]
    expect(assistants.filter(has_text="hr-assistant")).to_contain_text("in the config file")
    delete = page.get_by_role("button", name="Delete web-helper")
    delete.click()
    expect(delete).to_have_text("Delete?")
    delete.click()
    expect(assistants.filter(has_text="web-helper")).to_have_count(0)

    with page.expect_download() as download:
        page.get_by_role("button", name="Download CSV").click()
    lines = download.value.path().read_text().splitlines()
    assert {"user_id", "model", "status"} <= set(lines[0].split(","))
    assert len(lines) == 1 + REQUESTS


def test_admin_listing_routes_are_404_to_anyone_else(gw: Gateway, keys: dict[str, str]) -> None:
    for path in ("/admin/users", "/admin/collections", "/admin/jobs"):
        resp = httpx.get(gw.url + path, headers=auth(keys["bob"]))
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "NOT_FOUND"
    users = httpx.get(gw.url + "/admin/users?query=b&limit=1", headers=auth(gw.key)).json()
    assert [u["user_id"] for u in users["data"]] == ["bob"] and users["total"] == 1
    page2 = httpx.get(gw.url + "/admin/users?limit=1&offset=1", headers=auth(gw.key)).json()
    assert len(page2["data"]) == 1 and page2["total"] >= 2
    none = httpx.get(gw.url + "/admin/users?query=100%25_", headers=auth(gw.key)).json()  # LIKE wildcards: literal
    assert none["data"] == [] and none["total"] == 0
    bad = httpx.get(gw.url + "/admin/users?limit=0", headers=auth(gw.key))
    assert bad.status_code == 400 and bad.json()["error"]["details"]["field"] == "limit"
    collections = httpx.get(gw.url + "/admin/collections", headers=auth(gw.key)).json()["data"]
    hr = next(c for c in collections if c["name"] == "hr")
    assert hr["documents"] == {"ready": 1} and hr["visibility"] == "admin"
    jobs = httpx.get(gw.url + "/admin/jobs?limit=5", headers=auth(gw.key)).json()["data"]
    assert jobs[0]["collection_id"] == hr["id"] and jobs[0]["status"] == "done"
