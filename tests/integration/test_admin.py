"""The admin API through a real gateway: the JSON snapshot of every subsystem, one user's page, the
requests in flight; and every admin route is a 404 (not revealed) to a key without the admin role."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Fake, Gateway, start_gateway, stop, user_key

ADMIN_ROUTES = [
    ("GET", "/admin/metrics"),
    ("GET", "/admin/connections"),
    ("GET", "/admin/users/erin"),
    ("GET", "/admin/users/erin/limits"),
    ("POST", "/admin/users/erin/limits/reset"),
    ("GET", "/admin/cache/stats"),
    ("DELETE", "/admin/cache"),
    ("GET", "/admin/analytics/global"),
    ("GET", "/admin/analytics/users/erin"),
    ("GET", "/admin/analytics/chats/x"),
    ("GET", "/admin/analytics/export"),
]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, fake_a: Fake) -> Iterator[Gateway]:
    cfg = {"upstreams": [{"name": "a", "base_url": fake_a.base_url, "api_key": "upstream-secret-a"}]}
    g = start_gateway(tmp_path_factory.mktemp("admin"), cfg)
    yield g
    stop(g.proc)


@pytest.fixture(scope="module")
def erin(gw: Gateway) -> dict[str, str]:
    return {"Authorization": "Bearer " + user_key(gw, "erin")}


def admin(gw: Gateway) -> dict[str, str]:
    return {"x-api-key": gw.key}


def chat(gw: Gateway, headers: dict[str, str], message: str, **extra: Any) -> httpx.Response:
    return httpx.post(
        gw.url + "/api/v1/chat", json={"message": message, "model": "fake-model", **extra}, headers=headers
    )


def test_a_users_page(gw: Gateway, erin: dict[str, str]) -> None:
    first = chat(gw, erin, "hello").json()
    chat(gw, erin, "again", session_id=first["session_id"])
    chat(gw, erin, "another conversation")
    page = httpx.get(gw.url + "/admin/users/erin", headers=admin(gw))
    assert page.status_code == 200
    body = page.json()
    assert body["user_id"] == "erin" and body["user"]["name"] == "erin" and body["user"]["disabled"] is False
    assert body["sessions"]["conversations"] == 2 and body["sessions"]["messages"] == 6
    assert {s["session_id"] for s in body["sessions"]["recent"]} >= {first["session_id"]}
    assert body["in_flight"] == 0
    limits = {line["scope"]: line for line in body["limits"]}
    assert limits["user:requests_per_minute"]["used"] == 3
    assert body["analytics"]["requests"] == 3 and body["analytics"]["errors"] == 0
    missing = httpx.get(gw.url + "/admin/users/nobody-at-all", headers=admin(gw))
    assert missing.status_code == 404 and missing.json()["error"]["details"]["user_id"] == "nobody-at-all"


def test_connections_list_requests_in_flight(gw: Gateway) -> None:
    slow = {
        "model": "fake-model",
        "stream": True,
        "messages": [{"role": "user", "content": "slow"}],
        "fake": {"chunk_delay": 0.4},
        "metadata": {"chat_id": "chat-slow"},
    }
    done = threading.Event()

    def stream() -> None:
        with httpx.stream("POST", gw.base_url + "/chat/completions", json=slow, headers=admin(gw), timeout=30) as r:
            for _ in r.iter_bytes():
                pass
        done.set()

    worker = threading.Thread(target=stream)
    worker.start()
    try:
        deadline = time.monotonic() + 10
        listing: dict[str, Any] = {}
        while time.monotonic() < deadline:
            listing = httpx.get(gw.url + "/admin/connections", headers=admin(gw)).json()
            if listing["in_flight"]:
                break
            time.sleep(0.05)
        assert listing["in_flight"] == 1 and listing["by_user"] == {"admin": 1}
        (request,) = listing["requests"]
        assert request["user_id"] == "admin" and listing["by_conversation"] == {request["conversation_id"]: 1}
        assert request["seconds"] >= 0
        during = httpx.get(gw.url + "/admin/users/admin", headers=admin(gw)).json()
        assert during["in_flight"] == 1
    finally:
        worker.join(30)
    assert done.is_set()
    assert httpx.get(gw.url + "/admin/connections", headers=admin(gw)).json()["in_flight"] == 0


def test_the_snapshot_covers_every_subsystem(gw: Gateway, erin: dict[str, str]) -> None:
    chat(gw, erin, "for the snapshot")
    snap = httpx.get(gw.url + "/admin/metrics", headers=admin(gw))
    assert snap.status_code == 200
    body = snap.json()
    for part in ("sessions", "connections", "limits", "cache", "analytics", "upstreams", "queue", "context", "tokens"):
        assert part in body, part
    assert body["upstreams"]["a"]["circuit"] == "closed"
    assert body["analytics"]["requests"] >= 1 and body["sessions"]["conversations"] >= 1
    assert body["limits"]["admitted"] >= 1 and body["cache"]["enabled"] is True
    assert body["queue"]["drops"] == 0


def test_admin_routes_are_not_revealed_to_others(gw: Gateway, erin: dict[str, str]) -> None:
    unknown = httpx.get(gw.url + "/admin/no-such-thing", headers=erin)
    assert unknown.status_code == 404
    for method, path in ADMIN_ROUTES:
        resp = httpx.request(method, gw.url + path, headers=erin)
        assert resp.status_code == 404, (method, path)
        assert resp.json()["error"]["code"] == "NOT_FOUND" and resp.json()["error"]["details"] == {"path": path}
        assert httpx.request(method, gw.url + path, headers=admin(gw)).status_code == 200, (method, path)
