"""How a scrape adds up the workers' shared snapshots: counters and histograms over every process
that wrote (a dead worker's totals stay), gauges over live processes only (sum or max). Each test has
its own ``Metrics`` (the values live on the application, not in the module)."""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from chatgate.observe.metrics import LATENCY_BUCKETS, Metrics

DEAD_PID = 2**22 + 12345  # above the default pid_max: never a live process


def scrape(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_snapshots_add_up(tmp_path: Path) -> None:
    metrics = Metrics(tmp_path)
    live = os.getppid()  # alive for the whole test
    buckets = len(LATENCY_BUCKETS) + 2
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
    metrics.http_requests.inc(("/t", "GET", "200"), 10)  # this process's own, live values
    metrics.in_flight.inc(2)
    found = scrape(metrics)
    route = frozenset({("route", "/t"), ("method", "GET"), ("status", "200")})
    assert found[("chatgate_http_requests_total", route)] == 18  # 10 + 3 + 5: the dead worker's kept
    assert found[("chatgate_http_requests_in_flight", frozenset())] == 2 + 4  # live ones only
    assert found[("chatgate_upstream_circuit_state", frozenset({("upstream", "u-test")}))] == 1  # max, live
    assert found[("chatgate_http_request_duration_seconds_count", frozenset({("route", "/t")}))] == 4
    le = frozenset({("route", "/t"), ("le", "0.001")})
    assert found[("chatgate_http_request_duration_seconds_bucket", le)] == 4
    pids = {dict(k[1])["pid"] for k in found if k[0] == "chatgate_process_cpu_seconds_total"}
    assert str(os.getpid()) in pids and str(live) in pids and str(DEAD_PID) not in pids


def test_flush_writes_this_process_snapshot(tmp_path: Path) -> None:
    metrics = Metrics(tmp_path)
    metrics.tokens.inc(("m-flush", "in"), 7)
    metrics.flush()
    data = orjson.loads((tmp_path / f"{os.getpid()}.json").read_bytes())
    assert [["m-flush", "in"], 7.0] in data["chatgate_tokens"]
    assert not list(tmp_path.glob("*.tmp"))  # written whole, then renamed


def test_two_applications_keep_their_own_values() -> None:
    a, b = Metrics(), Metrics()
    a.cache_lookups.inc(("hit",))
    assert a.cache_lookups.values == {("hit",): 1.0} and b.cache_lookups.values == {}
    assert set(a.families) == set(b.families) and all(name.startswith("chatgate_") for name in a.families)


def test_samplers_run_before_values_are_read() -> None:
    metrics = Metrics()
    metrics.samplers.append(lambda: metrics.sessions_active.set(7))
    assert b"chatgate_sessions_active 7.0" in metrics.exposition()
