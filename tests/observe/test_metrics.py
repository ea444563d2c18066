"""How a scrape adds up the workers' shared snapshots: counters and histograms over every process
that wrote (a dead worker's totals stay), gauges over live processes only (sum or max)."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chatgate.observe import metrics

DEAD_PID = 2**22 + 12345  # above the default pid_max: never a live process


def scrape() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_snapshots_add_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(metrics.DIR_ENV, str(tmp_path))
    live = os.getppid()  # alive for the whole test
    buckets = len(metrics.LATENCY_BUCKETS) + 2
    hist = [0.0] * buckets
    hist[0], hist[-1] = 2.0, 0.001  # two observations of 0.0005 s
    for pid, requests, in_flight, circuit in ((live, 3, 4, 1), (DEAD_PID, 5, 7, 2)):
        snapshot = {
            "chatgate_http_requests": [[["/t", "GET", "200"], requests]],
            "chatgate_http_requests_in_flight": [[[], in_flight]],
            "chatgate_upstream_circuit_state": [[["u-test"], circuit]],
            "chatgate_http_request_duration_seconds": [[["/t"], hist]],
        }
        (tmp_path / f"{pid}.json").write_bytes(orjson.dumps(snapshot))
    metrics.HTTP_REQUESTS.inc(("/t", "GET", "200"), 10)  # this process's own, live values
    try:
        found = scrape()
        route = frozenset({("route", "/t"), ("method", "GET"), ("status", "200")})
        assert found[("chatgate_http_requests_total", route)] == 18  # 10 + 3 + 5: the dead worker's kept
        mine = metrics.IN_FLIGHT.values.get((), 0.0)
        assert found[("chatgate_http_requests_in_flight", frozenset())] == mine + 4  # live ones only
        assert found[("chatgate_upstream_circuit_state", frozenset({("upstream", "u-test")}))] == 1  # max, live
        assert found[("chatgate_http_request_duration_seconds_count", frozenset({("route", "/t")}))] == 4
        le = frozenset({("route", "/t"), ("le", "0.001")})
        assert found[("chatgate_http_request_duration_seconds_bucket", le)] == 4
        pids = {dict(k[1])["pid"] for k in found if k[0] == "chatgate_process_cpu_seconds_total"}
        assert str(os.getpid()) in pids and str(live) in pids and str(DEAD_PID) not in pids
    finally:
        metrics.HTTP_REQUESTS.values.pop(("/t", "GET", "200"), None)


def test_flush_writes_this_process_snapshot(tmp_path: Path) -> None:
    metrics.TOKENS.inc(("m-flush", "in"), 7)
    try:
        metrics.flush(tmp_path)
        data = orjson.loads((tmp_path / f"{os.getpid()}.json").read_bytes())
        assert [["m-flush", "in"], 7.0] in data["chatgate_tokens"]
        assert not list(tmp_path.glob("*.tmp"))  # written whole, then renamed
    finally:
        metrics.TOKENS.values.pop(("m-flush", "in"), None)
