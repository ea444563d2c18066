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

The families (all prefixed ``chatgate_``) are declared in :class:`Metrics`; ``docs/operations.md`` lists
them. Their values live on a ``Metrics`` object that ``create_app`` makes and hands to what records
(the pipeline, the middleware, admission, RAG): there is no module-level state.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

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
STEP_BUCKETS = (1.0, 2.0, 3.0, 4.0, 5.0, 8.0, 17.0)
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


F = TypeVar("F", bound=Family)


class Metrics:
    """Every family and its values, for one application (``create_app`` makes one and keeps it on the services).

    ``samplers`` are called before values are read: they set the gauges that describe state (circuits,
    sessions, the queue), so nothing on the request path has to.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory  # where every worker's snapshot lives (several workers), else None
        self.families: dict[str, Family] = {}
        self.samplers: list[Callable[[], None]] = []
        self._registry: CollectorRegistry | None = None
        self.http_requests = self._add(
            Counter(
                "chatgate_http_requests",
                "HTTP requests by route template, method and status.",
                ["route", "method", "status"],
            )
        )
        self.http_latency = self._add(
            Histogram(
                "chatgate_http_request_duration_seconds",
                "Time from request to the last response byte, by route template.",
                ["route"],
                LATENCY_BUCKETS,
            )
        )
        self.in_flight = self._add(Gauge("chatgate_http_requests_in_flight", "HTTP requests being served."))
        self.upstream_latency = self._add(
            Histogram(
                "chatgate_upstream_request_duration_seconds",
                "Upstream call time: to the whole answer (non-streaming) or to the response headers (streaming).",
                ["upstream"],
                LATENCY_BUCKETS,
            )
        )
        self.upstream_ttft = self._add(
            Histogram(
                "chatgate_upstream_time_to_first_token_seconds",
                "From sending the request upstream to its first answer bytes (first stream event, or the whole "
                "answer).",
                ["upstream"],
                LATENCY_BUCKETS,
            )
        )
        self.upstream_retries = self._add(
            Counter("chatgate_upstream_retries", "Attempts beyond the first, by upstream.", ["upstream"])
        )
        self.circuit = self._add(
            Gauge(
                "chatgate_upstream_circuit_state",
                "Circuit breaker state per upstream: 0 closed, 1 half-open, 2 open (the worst any worker sees).",
                ["upstream"],
                mode="max",
            )
        )
        self.tokens = self._add(
            Counter(
                "chatgate_tokens",
                "Tokens by model and direction (in: prompt, out: completion).",
                ["model", "direction"],
            )
        )
        self.limit_decisions = self._add(
            Counter(
                "chatgate_rate_limit_decisions",
                "Rate-limit checks per limit line: allowed, or rejected by the line that refused.",
                ["scope", "decision"],
            )
        )
        self.budget_used = self._add(
            Histogram(
                "chatgate_token_budget_used_tokens",
                "Tokens charged per admitted request after reconciliation.",
                (),
                TOKEN_BUCKETS,
            )
        )
        self.budget_remaining = self._add(
            Histogram(
                "chatgate_token_budget_remaining_ratio",
                "Share of the tightest token limit left after admitting a request.",
                (),
                RATIO_BUCKETS,
            )
        )
        self.context_actions = self._add(
            Counter(
                "chatgate_context_overflows",
                "Prompts over the model's window, by what was done: truncated, summarized, "
                "summarize_failed_truncated, rejected.",
                ["action"],
            )
        )
        self.summarizations = self._add(
            Counter("chatgate_summarizations", "Running-brief summariser calls, by outcome (ok, failed).", ["outcome"])
        )
        self.cache_lookups = self._add(
            Counter("chatgate_cache_lookups", "Response cache lookups, by result (hit, miss).", ["result"])
        )
        self.rag_retrievals = self._add(
            Counter(
                "chatgate_rag_retrievals", "Document searches (chat grounding and the search API), by mode.", ["mode"]
            )
        )
        self.rag_retrieval_latency = self._add(
            Histogram(
                "chatgate_rag_retrieval_seconds",
                "Document search latency (query embedding included), by mode.",
                ["mode"],
                LATENCY_BUCKETS,
            )
        )
        self.rag_ingested = self._add(
            Counter(
                "chatgate_rag_documents_ingested",
                "Documents through ingestion, by outcome (added, unchanged, updated, failed).",
                ["outcome"],
            )
        )
        self.rag_unresolved = self._add(
            Counter(
                "chatgate_rag_unresolved_collections",
                "Requests for an assistant some of whose collections matched nothing the caller may read, by "
                "assistant.",
                ["assistant"],
            )
        )
        self.tool_calls = self._add(
            Counter(
                "chatgate_tool_calls",
                "Server tool calls in the tool loop, by tool and outcome (ok, error, timeout).",
                ["tool", "outcome"],
            )
        )
        self.tool_latency = self._add(
            Histogram("chatgate_tool_duration_seconds", "Server tool run time, by tool.", ["tool"], LATENCY_BUCKETS)
        )
        self.tool_steps = self._add(
            Histogram(
                "chatgate_tool_loop_steps",
                "Model answers per tool-loop request (1: it answered without calling a server tool).",
                (),
                STEP_BUCKETS,
            )
        )
        self.sessions_active = self._add(Gauge("chatgate_sessions_active", "Sessions held hot in memory."))
        self.queue_depth = self._add(Gauge("chatgate_writebehind_queue_depth", "Writes waiting in the queue."))
        self.queue_drops = self._add(
            Gauge("chatgate_writebehind_dropped", "Writes dropped because the queue was full, since start.")
        )

    def _add(self, family: F) -> F:
        self.families[family.name] = family
        return family

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        self.http_requests.inc((route, method, str(status)))
        self.http_latency.observe(seconds, (route,))

    def observe_call(
        self,
        upstream: str,
        model: str | None,
        retries: int,
        seconds: float | None,
        ttft: float | None,
        usage: Mapping[str, Any] | None,
    ) -> None:
        key = (upstream,)
        if retries:
            self.upstream_retries.inc(key, retries)
        if seconds is not None:
            self.upstream_latency.observe(seconds, key)
        if ttft is not None:
            self.upstream_ttft.observe(ttft, key)
        if usage and model:
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            if isinstance(prompt, int) and prompt > 0:
                self.tokens.inc((model, "in"), prompt)
            if isinstance(completion, int) and completion > 0:
                self.tokens.inc((model, "out"), completion)

    def set_circuit(self, upstream: str, state: str) -> None:
        self.circuit.set(CIRCUIT_STATES.get(state, 0), (upstream,))

    # ---- reading: this process, and every worker ------------------------------------------------

    def sample(self) -> None:
        for sampler in self.samplers:
            sampler()

    def snapshot(self) -> bytes:
        self.sample()
        return orjson.dumps({name: family.dump() for name, family in self.families.items()})

    def flush(self) -> None:
        """Write this process's values for the others to add up (atomically: write, then rename)."""
        if self.directory is not None:
            _write(self.directory, self.snapshot())

    async def run_flusher(self, interval: float = FLUSH_INTERVAL) -> None:
        """Flush now (so every worker is known from its start), then every ``interval`` seconds until
        cancelled, then once more. Values are read on the loop (samplers touch its state), written in a thread."""
        directory = self.directory
        assert directory is not None
        try:
            while True:
                await asyncio.to_thread(_write, directory, self.snapshot())
                await asyncio.sleep(interval)
        finally:
            self.flush()

    def exposition(self) -> bytes:
        """The Prometheus text of every worker's values."""
        self.sample()
        if self._registry is None:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(_Merged(self.families, self.directory))
            registry.register(ProcessCollector(self.directory))
            self._registry = registry
        return generate_latest(self._registry)


# ---- across processes -----------------------------------------------------------------------------


def metrics_dir() -> Path | None:
    path = os.environ.get(DIR_ENV)
    return Path(path) if path else None


def _write(directory: Path, data: bytes) -> None:
    target = directory / f"{os.getpid()}.json"
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(target)


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

    def __init__(self, families: Mapping[str, Family], directory: Path | None) -> None:
        self.families = families
        self.directory = directory

    def collect(self) -> Iterator[Metric]:
        others = _others(self.directory)
        running = {pid: alive(pid) for pid, _ in others}
        for name, family in self.families.items():
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
