"""``GET /metrics`` through a real `chatgate serve` with 2 workers: the text parses with
prometheus_client's own parser, and counters move by exactly the requests made, whichever worker
served them and whichever answers the scrape (once the other worker's values are shared: each
worker writes them every second)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chatgate.observe.metrics import FLUSH_INTERVAL
from tests.conftest import Fake, Gateway, start_gateway, stop

TOKEN = "scrape-token-for-tests"
CHAT = "/v1/chat/completions"


def samples(gw: Gateway, headers: dict[str, str] | None = None) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    resp = httpx.get(gw.url + "/metrics", headers=headers or {"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, fake_a: Fake) -> Iterator[Gateway]:
    cfg = {
        "upstreams": [{"name": "a", "base_url": fake_a.base_url, "api_key": "upstream-secret-a"}],
        "metrics": {"token": TOKEN},
        "limits": {"user_requests_per_minute": 10_000},
    }
    g = start_gateway(tmp_path_factory.mktemp("metrics"), cfg, args=["--workers", "2"])
    yield g
    stop(g.proc)


def test_counters_move_by_exactly_the_requests_made_across_two_workers(gw: Gateway) -> None:
    before = samples(gw)
    n_ok, n_stream, n_missing = 40, 10, 5
    auth = {"Authorization": f"Bearer {gw.key}"}

    async def load() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gw.url, headers=auth, timeout=30) as c:
            calls: list[Any] = [
                c.post(CHAT, json={"model": "fake-model", "messages": [{"role": "user", "content": f"hi {i}"}]})
                for i in range(n_ok)
            ]
            calls += [
                c.post(CHAT, json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
                for _ in range(n_missing)
            ]
            calls += [
                c.post(
                    CHAT,
                    json={"model": "fake-model", "stream": True, "messages": [{"role": "user", "content": "a b c"}]},
                )
                for _ in range(n_stream)
            ]
            return await asyncio.gather(*calls)

    responses = asyncio.run(load())
    assert sorted(r.status_code for r in responses) == [200] * (n_ok + n_stream) + [404] * n_missing
    prompt_tokens = sum(r.json()["usage"]["prompt_tokens"] for r in responses[:n_ok])

    # Each worker shares its values every second: after a little more than that, whichever worker
    # answers sees the other's share of the load.
    time.sleep(2.5 * FLUSH_INTERVAL)
    pids = set()
    for _ in range(4):  # several scrapes: whichever worker answers, the same totals
        after = samples(gw)
        pids |= {dict(labels)["pid"] for (name, labels) in after if name == "chatgate_process_cpu_seconds_total"}

        def moved(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)  # noqa: B023

        assert moved("chatgate_http_requests_total", route=CHAT, method="POST", status="200") == n_ok + n_stream
        assert moved("chatgate_http_requests_total", route=CHAT, method="POST", status="404") == n_missing
        assert moved("chatgate_http_request_duration_seconds_count", route=CHAT) == n_ok + n_stream + n_missing
        assert moved("chatgate_upstream_request_duration_seconds_count", upstream="a") == n_ok + n_stream
        assert moved("chatgate_upstream_time_to_first_token_seconds_count", upstream="a") == n_ok + n_stream
        # Unknown models are refused after admission (the routing step), so they count as requests too.
        allowed = moved("chatgate_rate_limit_decisions_total", scope="user:requests_per_minute", decision="allowed")
        assert allowed == n_ok + n_stream + n_missing
        # The streams' usage is counted too (chatgate asks upstream for it): at least the plain calls' tokens.
        assert moved("chatgate_tokens_total", model="fake-model", direction="in") >= prompt_tokens > 0
        assert value(after, "chatgate_upstream_circuit_state", upstream="a") == 0
        assert value(after, "chatgate_http_requests_in_flight") >= 1  # this scrape itself
    assert len(pids) >= 3, pids  # the parent and both workers report CPU, memory and descriptors


def test_access_needs_the_token_an_admin_key_or_an_allowed_network(gw: Gateway) -> None:
    assert httpx.get(gw.url + "/metrics").status_code == 401
    assert httpx.get(gw.url + "/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(gw.url + "/metrics", headers={"x-api-key": gw.key}).status_code == 200
    cli = str(Path(sys.executable).with_name("chatgate"))
    env = {"CHATGATE_DATA_DIR": str(gw.data_dir), "PATH": os.environ["PATH"]}
    subprocess.run([cli, "users", "create", "erin", "--id", "erin"], check=True, env=env, capture_output=True)
    out = subprocess.run([cli, "keys", "create", "--user", "erin"], check=True, env=env, capture_output=True, text=True)
    key = next(word for word in out.stdout.split() if word.startswith("cg-"))
    hidden = httpx.get(gw.url + "/metrics", headers={"Authorization": f"Bearer {key}"})
    assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "NOT_FOUND"


def test_allowed_network_reads_without_a_key(tmp_path: Path, fake_a: Fake) -> None:
    cfg = {
        "upstreams": [{"name": "a", "base_url": fake_a.base_url, "api_key": "upstream-secret-a"}],
        "metrics": {"allow": ["127.0.0.0/8"]},
    }
    g = start_gateway(tmp_path, cfg)
    try:
        resp = httpx.get(g.url + "/metrics")
        assert resp.status_code == 200 and "chatgate_http_requests_total" in resp.text
    finally:
        stop(g.proc)
