"""Prometheus metrics, correct across worker processes.

``chatgate serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at ``<data_dir>/metrics`` (emptied at start)
before its workers import ``prometheus_client`` (see ``cli.py``), which then keeps every value in a
small memory-mapped file per process, and a scrape, whichever worker answers it, adds them up
(counters and histograms summed; gauges as noted on each). Without the variable (an app built in
process, as in tests) values live in this process's default registry.

The families (all prefixed ``chatgate_``): HTTP requests and latency; upstream latency, time to
first token, retries and circuit state; tokens by model; rate-limit decisions by scope; token
budget used and remaining; context overflows and summarisations; hot sessions and requests in
flight; the write-behind queue; and per-process CPU, memory and file descriptors. Recording is a
handful of memory writes per request; nothing here awaits.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144)
RATIO_BUCKETS = (0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}

HTTP_REQUESTS = Counter(
    "chatgate_http_requests", "HTTP requests by route template, method and status.", ["route", "method", "status"]
)
HTTP_LATENCY = Histogram(
    "chatgate_http_request_duration_seconds",
    "Time from request to the last response byte, by route template.",
    ["route"],
    buckets=LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge("chatgate_http_requests_in_flight", "HTTP requests being served.", multiprocess_mode="livesum")
UPSTREAM_LATENCY = Histogram(
    "chatgate_upstream_request_duration_seconds",
    "Upstream call time: to the whole answer (non-streaming) or to the response headers (streaming).",
    ["upstream"],
    buckets=LATENCY_BUCKETS,
)
UPSTREAM_TTFT = Histogram(
    "chatgate_upstream_time_to_first_token_seconds",
    "From sending the request upstream to its first answer bytes (first stream event, or the whole answer).",
    ["upstream"],
    buckets=LATENCY_BUCKETS,
)
UPSTREAM_RETRIES = Counter("chatgate_upstream_retries", "Attempts beyond the first, by upstream.", ["upstream"])
CIRCUIT = Gauge(
    "chatgate_upstream_circuit_state",
    "Circuit breaker state per upstream: 0 closed, 1 half-open, 2 open (the worst any worker sees).",
    ["upstream"],
    multiprocess_mode="max",
)
TOKENS = Counter(
    "chatgate_tokens", "Tokens by model and direction (in: prompt, out: completion).", ["model", "direction"]
)
LIMIT_DECISIONS = Counter(
    "chatgate_rate_limit_decisions",
    "Rate-limit checks per limit line: allowed, or rejected by the line that refused.",
    ["scope", "decision"],
)
BUDGET_USED = Histogram(
    "chatgate_token_budget_used_tokens",
    "Tokens charged per admitted request after reconciliation.",
    buckets=TOKEN_BUCKETS,
)
BUDGET_REMAINING = Histogram(
    "chatgate_token_budget_remaining_ratio",
    "Share of the tightest token limit left after admitting a request.",
    buckets=RATIO_BUCKETS,
)
CONTEXT_ACTIONS = Counter(
    "chatgate_context_overflows",
    "Prompts over the model's window, by what was done: truncated, summarized, summarize_failed_truncated, rejected.",
    ["action"],
)
SUMMARIZATIONS = Counter(
    "chatgate_summarizations", "Running-brief summariser calls, by outcome (ok, failed).", ["outcome"]
)
SESSIONS_ACTIVE = Gauge("chatgate_sessions_active", "Sessions held hot in memory.", multiprocess_mode="livesum")
QUEUE_DEPTH = Gauge("chatgate_writebehind_queue_depth", "Writes waiting in the queue.", multiprocess_mode="livesum")
QUEUE_DROPS = Gauge(
    "chatgate_writebehind_dropped",
    "Writes dropped because the queue was full, since start.",
    multiprocess_mode="livesum",
)


def observe_http(route: str, method: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(route, method, str(status)).inc()
    HTTP_LATENCY.labels(route).observe(seconds)


def observe_call(
    upstream: str,
    model: str | None,
    retries: int,
    seconds: float | None,
    ttft: float | None,
    usage: Mapping[str, Any] | None,
) -> None:
    if retries:
        UPSTREAM_RETRIES.labels(upstream).inc(retries)
    if seconds is not None:
        UPSTREAM_LATENCY.labels(upstream).observe(seconds)
    if ttft is not None:
        UPSTREAM_TTFT.labels(upstream).observe(ttft)
    if usage and model:
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int) and prompt > 0:
            TOKENS.labels(model, "in").inc(prompt)
        if isinstance(completion, int) and completion > 0:
            TOKENS.labels(model, "out").inc(completion)


def set_circuit(upstream: str, state: str) -> None:
    CIRCUIT.labels(upstream).set(CIRCUIT_STATES.get(state, 0))


def multiprocess_dir() -> Path | None:
    path = os.environ.get(MULTIPROC_ENV)
    return Path(path) if path else None


class ProcessCollector(Collector):
    """CPU seconds, resident memory, open file descriptors and start time of every chatgate process
    that has written metrics (the workers), of this one and, with workers, of their parent; labelled
    by pid (Linux ``/proc``)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._tick = os.sysconf("SC_CLK_TCK")
        self._page = os.sysconf("SC_PAGE_SIZE")
        with open("/proc/stat") as f:
            self._boot = next(float(line.split()[1]) for line in f if line.startswith("btime"))

    def _pids(self) -> set[int]:
        pids = {os.getpid()}
        if self.directory is not None:
            pids.add(os.getppid())  # the parent (`chatgate serve`) that started the workers
            for path in self.directory.glob("*.db"):
                tail = path.stem.rsplit("_", 1)[-1]
                if tail.isdigit():
                    pids.add(int(tail))
        return pids

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        cpu = CounterMetricFamily("chatgate_process_cpu_seconds", "User + system CPU time.", labels=["pid"])
        rss = GaugeMetricFamily("chatgate_process_resident_memory_bytes", "Resident memory.", labels=["pid"])
        fds = GaugeMetricFamily("chatgate_process_open_fds", "Open file descriptors.", labels=["pid"])
        start = GaugeMetricFamily("chatgate_process_start_time_seconds", "Start time (Unix).", labels=["pid"])
        for pid in sorted(self._pids()):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                n_fds = len(os.listdir(f"/proc/{pid}/fd"))
            except OSError:
                continue  # gone since its file was written
            label = [str(pid)]
            cpu.add_metric(label, (int(fields[11]) + int(fields[12])) / self._tick)
            rss.add_metric(label, int(fields[21]) * self._page)
            fds.add_metric(label, n_fds)
            start.add_metric(label, self._boot + int(fields[19]) / self._tick)
        yield from (cpu, rss, fds, start)


_DIRECTORY = multiprocess_dir()  # fixed at import, as prometheus_client's own choice of value storage is
if _DIRECTORY is None:
    REGISTRY.register(ProcessCollector(None))


def exposition() -> bytes:
    """The Prometheus text of every worker's values (multiprocess), or of this process's registry."""
    if _DIRECTORY is None:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(_DIRECTORY))  # type: ignore[no-untyped-call]
    registry.register(ProcessCollector(_DIRECTORY))
    return generate_latest(registry)
