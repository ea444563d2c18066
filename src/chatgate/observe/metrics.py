"""Prometheus metrics, correct across worker processes, at a few microseconds per request.

Recording is plain arithmetic on this process's dicts (no locks, no I/O: each worker is one event
loop). With several workers, ``chatgate serve`` sets ``CHATGATE_METRICS_DIR`` (``<data_dir>/metrics``,
emptied at start) and each worker writes a snapshot of its values there every
:data:`FLUSH_INTERVAL` seconds and when it stops. A scrape, whichever worker answers it, adds up its
own live values and every other worker's latest snapshot: counters and histograms summed over all
processes that ever wrote (a restarted worker's totals are kept), gauges summed (``livesum``) or
maxed (``max``) over the live ones. So another worker's part of a scrape is at most
``FLUSH_INTERVAL`` old. (prometheus_client's own multiprocess mode writes a memory-mapped value under
a lock on every increment: measured here it cost ~180 µs per request under load, a quarter of a
request's CPU, so it is used only to render the text format.)

The families (all prefixed ``chatgate_``) are declared below; ``docs/operations.md`` lists them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from chatgate.processes import alive

DIR_ENV = "CHATGATE_METRICS_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST
FLUSH_INTERVAL = 1.0

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_BUCKETS = (16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0)
RATIO_BUCKETS = (0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}

Labels = tuple[str, ...]


class Family:
    kind = ""

    def __init__(self, name: str, help: str, labels: Iterable[str] = ()) -> None:
        self.name = name
        self.help = help
        self.labels = tuple(labels)
        self.values: dict[Labels, Any] = {}  # labels -> a number (a list for histograms)
        FAMILIES[name] = self

    def dump(self) -> list[list[Any]]:
        return [[list(k), v] for k, v in self.values.items()]


class Counter(Family):
    kind = "counter"

    def inc(self, labels: Labels = (), amount: float = 1.0) -> None:
        values = self.values
        values[labels] = values.get(labels, 0.0) + amount


class Gauge(Family):
    kind = "gauge"

    def __init__(self, name: str, help: str, labels: Iterable[str] = (), mode: str = "livesum") -> None:
        super().__init__(name, help, labels)
        self.mode = mode  # how workers combine: "livesum" or "max" (over live processes)

    def set(self, value: float, labels: Labels = ()) -> None:
        self.values[labels] = value

    def inc(self, amount: float = 1.0, labels: Labels = ()) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount


class Histogram(Family):
    kind = "histogram"

    def __init__(self, name: str, help: str, labels: Iterable[str] = (), buckets: Iterable[float] = ()) -> None:
        super().__init__(name, help, labels)
        self.buckets = tuple(buckets)  # values: per bucket (non-cumulative), +Inf, then the sum

    def observe(self, value: float, labels: Labels = ()) -> None:
        row = self.values.get(labels)
        if row is None:
            row = self.values[labels] = [0.0] * (len(self.buckets) + 2)
        row[bisect_left(self.buckets, value)] += 1
        row[-1] += value


FAMILIES: dict[str, Family] = {}

HTTP_REQUESTS = Counter(
    "chatgate_http_requests", "HTTP requests by route template, method and status.", ["route", "method", "status"]
)
HTTP_LATENCY = Histogram(
    "chatgate_http_request_duration_seconds",
    "Time from request to the last response byte, by route template.",
    ["route"],
    LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge("chatgate_http_requests_in_flight", "HTTP requests being served.")
UPSTREAM_LATENCY = Histogram(
    "chatgate_upstream_request_duration_seconds",
    "Upstream call time: to the whole answer (non-streaming) or to the response headers (streaming).",
    ["upstream"],
    LATENCY_BUCKETS,
)
UPSTREAM_TTFT = Histogram(
    "chatgate_upstream_time_to_first_token_seconds",
    "From sending the request upstream to its first answer bytes (first stream event, or the whole answer).",
    ["upstream"],
    LATENCY_BUCKETS,
)
UPSTREAM_RETRIES = Counter("chatgate_upstream_retries", "Attempts beyond the first, by upstream.", ["upstream"])
CIRCUIT = Gauge(
    "chatgate_upstream_circuit_state",
    "Circuit breaker state per upstream: 0 closed, 1 half-open, 2 open (the worst any worker sees).",
    ["upstream"],
    mode="max",
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
    "chatgate_token_budget_used_tokens", "Tokens charged per admitted request after reconciliation.", (), TOKEN_BUCKETS
)
BUDGET_REMAINING = Histogram(
    "chatgate_token_budget_remaining_ratio",
    "Share of the tightest token limit left after admitting a request.",
    (),
    RATIO_BUCKETS,
)
CONTEXT_ACTIONS = Counter(
    "chatgate_context_overflows",
    "Prompts over the model's window, by what was done: truncated, summarized, summarize_failed_truncated, rejected.",
    ["action"],
)
SUMMARIZATIONS = Counter(
    "chatgate_summarizations", "Running-brief summariser calls, by outcome (ok, failed).", ["outcome"]
)
CACHE_LOOKUPS = Counter("chatgate_cache_lookups", "Response cache lookups, by result (hit, miss).", ["result"])
RAG_RETRIEVALS = Counter(
    "chatgate_rag_retrievals", "Document searches (chat grounding and the search API), by mode.", ["mode"]
)
RAG_RETRIEVAL_LATENCY = Histogram(
    "chatgate_rag_retrieval_seconds",
    "Document search latency (query embedding included), by mode.",
    ["mode"],
    LATENCY_BUCKETS,
)
RAG_INGESTED = Counter(
    "chatgate_rag_documents_ingested",
    "Documents through ingestion, by outcome (added, unchanged, updated, failed).",
    ["outcome"],
)
RAG_UNRESOLVED = Counter(
    "chatgate_rag_unresolved_collections",
    "Requests for an assistant some of whose collections matched nothing the caller may read, by assistant.",
    ["assistant"],
)
SESSIONS_ACTIVE = Gauge("chatgate_sessions_active", "Sessions held hot in memory.")
QUEUE_DEPTH = Gauge("chatgate_writebehind_queue_depth", "Writes waiting in the queue.")
QUEUE_DROPS = Gauge("chatgate_writebehind_dropped", "Writes dropped because the queue was full, since start.")


def observe_http(route: str, method: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.inc((route, method, str(status)))
    HTTP_LATENCY.observe(seconds, (route,))


def observe_call(
    upstream: str,
    model: str | None,
    retries: int,
    seconds: float | None,
    ttft: float | None,
    usage: Mapping[str, Any] | None,
) -> None:
    key = (upstream,)
    if retries:
        UPSTREAM_RETRIES.inc(key, retries)
    if seconds is not None:
        UPSTREAM_LATENCY.observe(seconds, key)
    if ttft is not None:
        UPSTREAM_TTFT.observe(ttft, key)
    if usage and model:
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int) and prompt > 0:
            TOKENS.inc((model, "in"), prompt)
        if isinstance(completion, int) and completion > 0:
            TOKENS.inc((model, "out"), completion)


def set_circuit(upstream: str, state: str) -> None:
    CIRCUIT.set(CIRCUIT_STATES.get(state, 0), (upstream,))


# ---- across processes -----------------------------------------------------------------------------


def metrics_dir() -> Path | None:
    path = os.environ.get(DIR_ENV)
    return Path(path) if path else None


SAMPLERS: list[Callable[[], None]] = []
"""Called before values are read: they set the gauges that describe state (circuits, sessions, the
queue), so nothing on the request path has to."""


def sample() -> None:
    for sampler in SAMPLERS:
        sampler()


def snapshot() -> bytes:
    sample()
    return orjson.dumps({name: family.dump() for name, family in FAMILIES.items()})


def _write(directory: Path, data: bytes) -> None:
    target = directory / f"{os.getpid()}.json"
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(target)


def flush(directory: Path) -> None:
    """Write this process's values for the others to add up (atomically: write, then rename)."""
    _write(directory, snapshot())


async def run_flusher(directory: Path, interval: float = FLUSH_INTERVAL) -> None:
    """Flush now (so every worker is known from its start), then every ``interval`` seconds until
    cancelled, then once more."""
    try:
        while True:  # values are read on the loop (samplers touch its state), written in a thread
            await asyncio.to_thread(_write, directory, snapshot())
            await asyncio.sleep(interval)
    finally:
        flush(directory)

    return True


def _others(directory: Path | None) -> list[tuple[int, dict[str, list[list[Any]]]]]:
    if directory is None:
        return []
    me = os.getpid()
    out = []
    for path in directory.glob("*.json"):
        if not path.stem.isdigit() or int(path.stem) == me:
            continue
        with contextlib.suppress(OSError, orjson.JSONDecodeError):
            out.append((int(path.stem), orjson.loads(path.read_bytes())))
    return out


class _Merged(Collector):
    """This process's live values plus the other workers' snapshots, as Prometheus families."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    def collect(self) -> Iterator[Metric]:
        others = _others(self.directory)
        running = {pid: alive(pid) for pid, _ in others}
        for name, family in FAMILIES.items():
            rows: list[tuple[Labels, Any, bool]] = [(k, v, True) for k, v in family.values.items()]
            for pid, data in others:
                rows += [(tuple(k), v, running[pid]) for k, v in data.get(name, ())]
            yield _render(family, rows)


def _render(family: Family, rows: list[tuple[Labels, Any, bool]]) -> Metric:
    if isinstance(family, Histogram):
        totals: dict[Labels, list[float]] = {}
        for labels, row, _ in rows:
            acc = totals.setdefault(labels, [0.0] * len(row))
            for i, x in enumerate(row):
                acc[i] += x
        hist = HistogramMetricFamily(family.name, family.help, labels=family.labels)
        bounds = [*(repr(float(b)) for b in family.buckets), "+Inf"]
        for labels, acc in totals.items():
            cumulative, running = [], 0.0
            for bound, count in zip(bounds, acc[:-1], strict=True):
                running += count
                cumulative.append((bound, running))
            hist.add_metric(list(labels), cumulative, acc[-1])
        return hist
    if isinstance(family, Gauge):
        values: dict[Labels, float] = {}
        for labels, v, live in rows:
            if not live:
                continue  # a gauge of a process that is gone says nothing now
            if family.mode == "max":
                values[labels] = max(values.get(labels, v), v)
            else:
                values[labels] = values.get(labels, 0.0) + v
        gauge = GaugeMetricFamily(family.name, family.help, labels=family.labels)
        for labels, v in values.items():
            gauge.add_metric(list(labels), v)
        return gauge
    sums: dict[Labels, float] = {}
    for labels, v, _ in rows:
        sums[labels] = sums.get(labels, 0.0) + v
    counter = CounterMetricFamily(family.name, family.help, labels=family.labels)
    for labels, v in sums.items():
        counter.add_metric(list(labels), v)
    return counter


class ProcessCollector(Collector):
    """CPU seconds, resident memory, open file descriptors and start time of this process, of the
    other workers that wrote metrics and, with workers, of their parent; labelled by pid (``/proc``)."""

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
            pids |= {int(p.stem) for p in self.directory.glob("*.json") if p.stem.isdigit()}
        return pids

    def collect(self) -> Iterator[Metric]:
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


def exposition() -> bytes:
    """The Prometheus text of every worker's values."""
    sample()
    return generate_latest(_registry(metrics_dir()))


@functools.cache
def _registry(directory: Path | None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(directory))
    registry.register(ProcessCollector(directory))
    return registry
