"""OpenTelemetry tracing, when ``tracing.enabled``: spans exported over OTLP/HTTP (protobuf).

One trace per request (or the caller's, when it sends a W3C ``traceparent``):

- the server span, ``POST /v1/chat/completions`` (``api/tracing.TraceRequests``, outermost
  middleware): method, route, status, request id, user, model, upstream, cache result;
- a child span per pipeline step that ran (``pipeline.py``): ``identify``, ``admit``, ``session``,
  ``fit``, ``ground``, ``cache``, ``call``, ``account`` and ``settle`` (the reservation reconciled);
- under ``call``, the upstream call, ``upstream /chat/completions`` (``upstream/client.py``):
  upstream, model, attempts, status, each failed attempt as an event, and for a stream its time to
  first token; the upstream gets a ``traceparent`` naming this span.

Log lines written inside a span carry its ``trace_id`` and ``span_id`` (the access-log line too).

Off (the default) none of this runs on a request: the middleware is not installed, ``step`` hands
out one shared do-nothing context manager, the upstream client checks ``tracer is None`` once per
call, and the SDK and the exporter are not even imported. The provider lives on the app
(``app.state.tracing`` and ``Services.tracing``), made and shut down (flushed) by its lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from chatgate import __version__
from chatgate.observe.logging import AccessLog
from chatgate.settings import TracingSettings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

W3C = TraceContextTextMapPropagator()  # stateless: reads and writes traceparent / tracestate
_OFF: AbstractContextManager[None] = contextlib.nullcontext()  # stateless and reusable
_PROPAGATED = (b"traceparent", b"tracestate")


class Tracing:
    """The tracer provider (batching exporter) and the tracer of one app."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("chatgate", __version__)
        self._ids = TraceIds()

    @classmethod
    def start(cls, settings: TracingSettings) -> Tracing | None:
        """The provider exporting to ``settings.endpoint``, with trace ids on our log lines; None when off."""
        if not settings.enabled:
            return None
        # Imported only when on: the SDK and the exporter (requests, protobuf) cost start-up time.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        exporter = OTLPSpanExporter(
            endpoint=settings.endpoint,
            headers={k: v.get_secret_value() for k, v in settings.headers.items()},
            timeout=settings.export_timeout,
        )
        provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
            resource=Resource.create({SERVICE_NAME: settings.service_name, SERVICE_VERSION: __version__}),
            shutdown_on_exit=False,  # the lifespan shuts it down
        )
        provider.add_span_processor(
            BatchSpanProcessor(
                exporter,
                max_queue_size=settings.queue_size,
                schedule_delay_millis=settings.batch_delay * 1000,
                max_export_batch_size=min(settings.batch_size, settings.queue_size),
                export_timeout_millis=settings.export_timeout * 1000,
            )
        )
        tracing = cls(provider)
        for handler in logging.getLogger().handlers:
            handler.addFilter(tracing._ids)
        return tracing

    async def close(self) -> None:
        """Export the spans still queued and stop the exporter's thread (blocking: off the event loop)."""
        for handler in logging.getLogger().handlers:
            handler.removeFilter(self._ids)
        await asyncio.to_thread(self.provider.shutdown)


def step(tracing: Tracing | None, name: str, attributes: dict[str, Any] | None = None) -> AbstractContextManager[Any]:
    """A span around one pipeline step (the current span while it runs, given as the ``with`` target); nothing
    (None) when tracing is off."""
    if tracing is None:
        return _OFF
    return tracing.tracer.start_as_current_span(name, attributes=attributes, record_exception=False)


def incoming(headers: Iterable[tuple[bytes, bytes]]) -> Context | None:
    """The caller's trace context from its ``traceparent`` (and ``tracestate``) header, if it sent one."""
    carrier = {name.decode(): value.decode("latin-1") for name, value in headers if name in _PROPAGATED}
    return W3C.extract(carrier) if carrier else None


def outgoing(span: trace.Span) -> dict[str, str]:
    """The ``traceparent`` (and ``tracestate``) headers that make ``span`` the parent of the receiver's spans."""
    carrier: dict[str, str] = {}
    W3C.inject(carrier, trace.set_span_in_context(span))
    return carrier


def current_ids() -> dict[str, str] | None:
    """The current span's trace and span ids as log fields (hex, as tracing backends show them)."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return {"trace_id": trace.format_trace_id(context.trace_id), "span_id": trace.format_span_id(context.span_id)}


class TraceIds(logging.Filter):
    """Adds ``trace_id`` and ``span_id`` to records made inside a span (they become JSON fields)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = current_ids()
        if ids is not None:
            record.trace_id, record.span_id = ids["trace_id"], ids["span_id"]
        return True


class TracedAccessLog(AccessLog):
    """The access log of a traced app: each line carries its request's trace and span ids (the
    server span is current while ``RequestLog`` writes it)."""

    def write(self, fields: dict[str, Any]) -> None:
        ids = current_ids()
        super().write(fields if ids is None else {**fields, **ids})
