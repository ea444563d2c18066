"""``LimitedHttpTools`` in process: a protocol instance fed bytes as a socket would, over a transport that
keeps what is written. Heads are counted as they arrive (split anyhow, with a body or a next request in
the same bytes); refusals are the unified body; the header timer runs only for a head still arriving."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from chatgate.api.httpserver import GatewayConfig, HeadLimits, LimitedHttpTools


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = b""
        self.closed = False
        self.eof = False

    def write(self, data: Any) -> None:
        self.out += bytes(data)

    def write_eof(self) -> None:
        self.eof = True

    def can_write_eof(self) -> bool:
        return True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def echo_app(scope: Any, receive: Any, send: Any) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    answer = json.dumps({"path": scope["path"], "body_bytes": len(body), "headers": len(scope["headers"])}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(answer))]})
    await send({"type": "http.response.body", "body": answer})


def make(**limits: Any) -> tuple[LimitedHttpTools, Transport, ServerState]:
    config = GatewayConfig(echo_app, head_limits=HeadLimits(**limits), lifespan="off", log_config=None)
    state = ServerState()
    proto = LimitedHttpTools(config, state, {}, _loop=asyncio.get_running_loop())
    transport = Transport()
    proto.connection_made(transport)
    return proto, transport, state


async def settle(state: ServerState) -> None:
    """Until every request task has run (they drop out of ``state.tasks`` once done)."""
    while state.tasks:
        await asyncio.wait(list(state.tasks))
        await asyncio.sleep(0)  # their done callbacks


def responses(out: bytes) -> list[tuple[int, dict[str, Any]]]:
    found = []
    for part in out.split(b"HTTP/1.1 ")[1:]:
        head, _, body = part.partition(b"\r\n\r\n")
        found.append((int(head[:3]), json.loads(body)))
    return found


def request(path: str = "/x", headers: int = 1, filler: int = 0, body: bytes = b"") -> bytes:
    fields = b"".join(b"X-H%d: v\r\n" % i for i in range(headers - 1))
    extra = b"X-Fill: " + b"a" * filler + b"\r\n" if filler else b""
    return b"POST %s HTTP/1.1\r\nHost: x\r\n%s%sContent-Length: %d\r\n\r\n%s" % (
        path.encode(),
        fields,
        extra,
        len(body),
        body,
    )


async def test_a_head_split_into_bytes_is_counted_and_served():
    proto, transport, state = make(max_bytes=2048)
    for byte in request(filler=1500):
        proto.data_received(bytes([byte]))
    await settle(state)
    assert [status for status, _ in responses(transport.out)] == [200]


async def test_a_head_over_the_limit_in_pieces_is_refused_with_the_unified_body():
    proto, transport, state = make(max_bytes=2048)
    raw = request(filler=3000)
    for i in range(0, len(raw), 500):
        proto.data_received(raw[i : i + 500])
    await settle(state)
    ((status, body),) = responses(transport.out)
    assert status == 431 and body["error"]["code"] == "HEADERS_TOO_LARGE"
    assert body["error"]["details"] == {"max_bytes": 2048}
    assert transport.eof and b"content-type: application/json" in transport.out
    assert not state.tasks  # the app never saw it


async def test_a_large_body_after_a_small_head_is_not_counted_as_head():
    proto, transport, state = make(max_bytes=2048)
    proto.data_received(request(body=b"b" * 100_000))  # one read: the head, then far more body than the limit
    await settle(state)
    assert responses(transport.out) == [(200, {"path": "/x", "body_bytes": 100_000, "headers": 2})]


async def test_pipelined_requests_each_get_their_own_budget():
    proto, transport, state = make(max_bytes=2048)
    one, two = request("/one", filler=1500), request("/two", filler=1500)
    proto.data_received(one + two)  # two heads of 1.5 KiB, together over the limit
    await settle(state)
    assert [body["path"] for _, body in responses(transport.out)] == ["/one", "/two"]


async def test_too_many_header_fields_are_refused():
    proto, transport, state = make(max_fields=10)
    proto.data_received(request(headers=10))  # Host + 9 + Content-Length: 11 fields
    await settle(state)
    ((status, body),) = responses(transport.out)
    assert status == 431 and body["error"]["details"] == {"max_headers": 10}
    proto, transport, state = make(max_fields=11)
    proto.data_received(request(headers=10))
    await settle(state)
    assert [status for status, _ in responses(transport.out)] == [200]


async def test_the_header_timer_runs_only_for_a_head_still_arriving():
    proto, transport, state = make(timeout=0.05)
    proto.data_received(request())
    await settle(state)
    assert proto._head_timer is None  # a whole head: no timer, an idle keep-alive connection is not timed
    await asyncio.sleep(0.1)
    assert not transport.closed and len(responses(transport.out)) == 1
    proto.data_received(b"POST /x HTTP/1.1\r\nHost: x\r\n")
    assert proto._head_timer is not None
    await asyncio.sleep(0.1)
    status, body = responses(transport.out)[-1]
    assert status == 408 and body["error"]["code"] == "REQUEST_TIMEOUT"


@pytest.mark.parametrize(
    "framing",
    [b"Content-Length: abc\r\n", b"Content-Length: -1\r\n", b"Content-Length: 1\r\nContent-Length: 2\r\n"],
)
async def test_malformed_framing_gets_the_unified_400(framing: bytes):
    proto, transport, state = make()
    proto.data_received(b"POST /x HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\nab")
    await settle(state)
    ((status, body),) = responses(transport.out)
    assert status == 400 and body["error"]["code"] == "INVALID_HTTP" and body["error"]["details"]["reason"]


async def test_what_follows_a_refusal_is_discarded_then_the_connection_closes():
    proto, transport, _ = make(max_bytes=1024)
    proto.data_received(request(filler=2000))
    written = transport.out
    proto.data_received(b"x" * 1000)  # lingering: read, dropped
    assert transport.out == written and not transport.closed
    proto.data_received(b"x" * 300_000)  # too much: closed at once
    assert transport.closed


def test_the_limits_travel_with_the_config_to_the_workers():
    import pickle

    config = GatewayConfig("chatgate.app:create_app_from_env", head_limits=HeadLimits(4096, 20, 5.0))
    again = pickle.loads(pickle.dumps(config))
    assert isinstance(again, uvicorn.Config) and again.head_limits == HeadLimits(4096, 20, 5.0)
