"""An OTLP/HTTP trace receiver for the tracing tests (the ``collector`` fixture in tests/conftest.py)."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue


def _value(kv: KeyValue) -> Any:
    which = kv.value.WhichOneof("value")
    return getattr(kv.value, which) if which else None


class Collector:
    """An OTLP/HTTP trace receiver on a free port: every span it was sent, flattened."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                collector.receive(
                    self.path, self.headers.get("Content-Type"), ExportTraceServiceRequest.FromString(body)
                )
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"

    def receive(self, path: str, content_type: str | None, request: ExportTraceServiceRequest) -> None:
        assert path == "/v1/traces" and content_type == "application/x-protobuf"
        found = []
        for resource_spans in request.resource_spans:
            resource = {kv.key: _value(kv) for kv in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append(
                        {
                            "name": span.name,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent": span.parent_span_id.hex(),
                            "kind": span.kind,
                            "status": span.status.code,
                            "attributes": {kv.key: _value(kv) for kv in span.attributes},
                            "events": [(e.name, {kv.key: _value(kv) for kv in e.attributes}) for e in span.events],
                            "service": resource.get("service.name"),
                            "scope": scope_spans.scope.name,
                        }
                    )
        with self.lock:
            self.spans += found

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [s for s in self.spans if s["trace_id"] == trace_id]

    def wait(self, match: Callable[[list[dict[str, Any]]], bool], timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                spans = list(self.spans)
            if match(spans):
                return spans
            time.sleep(0.05)
        raise AssertionError(f"spans never arrived; got {[s['name'] for s in self.spans]}")

    def server_span(self, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The server span of the request with this id (the last of its trace to end)."""

        def mine(spans: list[dict[str, Any]]) -> bool:
            return any(s["attributes"].get("chatgate.request_id") == request_id for s in spans)

        spans = self.wait(mine, timeout)
        return next(s for s in spans if s["attributes"].get("chatgate.request_id") == request_id)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
