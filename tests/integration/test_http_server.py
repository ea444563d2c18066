"""The HTTP server under hostile framing, through a real `chatgate serve` and raw sockets: oversized heads
and too many header fields are refused with 431 as they arrive, slow heads with 408, malformed framing
with 400; each with the unified error body; and none of it slows anyone else down."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Gateway, start_gateway, stop

MAX_HEADER_BYTES = 16 * 1024
HEADER_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = {
        "local": {"enabled": "never"},
        "server": {"max_header_bytes": MAX_HEADER_BYTES, "max_headers": 50, "header_timeout": HEADER_TIMEOUT},
    }
    g = start_gateway(tmp_path_factory.mktemp("http"), config)
    yield g
    stop(g.proc)


def connect(gw: Gateway, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gw.port), timeout=timeout)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of the one response the server sends before it closes."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def exchange(gw: Gateway, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    with connect(gw) as sock:
        sock.sendall(raw)
        return read_response(sock)


def assert_unified(headers: dict[str, str], body: bytes, code: str) -> dict[str, object]:
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert set(error) == {"code", "message", "type", "details"} and error["code"] == code
    return error  # type: ignore[no-any-return]


def health_answer(sock: socket.socket) -> bytes:
    """One whole ``/health`` answer on a kept-alive connection (its head and body may come apart)."""
    data = b""
    while not data.endswith(b"}"):
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return data


def health(gw: Gateway) -> int:
    return httpx.get(gw.url + "/health", timeout=10).status_code


def test_a_head_over_the_limit_is_refused_with_431(gw: Gateway):
    raw = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES + 100) + b"\r\n\r\n"
    status, headers, body = exchange(gw, raw)
    assert status == 431
    error = assert_unified(headers, body, "HEADERS_TOO_LARGE")
    assert error["details"] == {"max_bytes": MAX_HEADER_BYTES}
    assert health(gw) == 200


def test_a_head_just_under_the_limit_is_served(gw: Gateway):
    filler = b"a" * (MAX_HEADER_BYTES - 200)
    status, _, body = exchange(
        gw, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + filler + b"\r\nConnection: close\r\n\r\n"
    )
    assert status == 200 and json.loads(body)["status"] == "ok"


def test_too_many_header_fields_are_refused_with_431(gw: Gateway):
    fields = b"".join(b"X-F%d: 1\r\n" % i for i in range(60))
    status, headers, body = exchange(gw, b"GET /health HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
    assert status == 431
    assert assert_unified(headers, body, "HEADERS_TOO_LARGE")["details"] == {"max_headers": 50}


def test_a_flood_of_headers_is_cut_off_early(gw: Gateway):
    """64 MiB of headers were read whole (and answered 200); now the server stops after the limit."""
    total = 64 * 1024 * 1024
    chunk = b"X-Flood: " + b"a" * 65000 + b"\r\n"
    sent = 0
    with connect(gw) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        try:
            while sent < total:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        status = None
        try:
            status, _, _ = read_response(sock)
        except (IndexError, ValueError):  # the reset came before our answer could be read
            pass
    assert sent < total  # the server stopped reading long before the end
    assert status in (None, 431)
    assert health(gw) == 200


def test_a_slow_head_gets_408_and_others_are_served_meanwhile(gw: Gateway):
    slow = connect(gw)
    slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    stop_trickle = threading.Event()

    def trickle() -> None:  # a byte at a time, never finishing the head
        while not stop_trickle.wait(0.05):
            try:
                slow.sendall(b"a")
            except OSError:
                return

    t = threading.Thread(target=trickle)
    t.start()
    try:
        assert [health(gw) for _ in range(20)] == [200] * 20  # while the slow head is still arriving
        status, headers, body = read_response(slow)
    finally:
        stop_trickle.set()
        t.join()
        slow.close()
    assert status == 408
    assert assert_unified(headers, body, "REQUEST_TIMEOUT")["details"] == {"timeout_seconds": HEADER_TIMEOUT}


def test_keep_alive_requests_are_not_limited_together(gw: Gateway):
    """Each request on a connection has its own head budget and its own header timeout."""
    filler = b"a" * (MAX_HEADER_BYTES // 2)
    one = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Half: " + filler + b"\r\n\r\n"
    with connect(gw) as sock:
        for _ in range(4):  # four heads of half the limit each, one after the other
            sock.sendall(one)
            assert health_answer(sock).startswith(b"HTTP/1.1 200")


def test_an_idle_keep_alive_connection_is_not_timed_as_a_slow_head(gw: Gateway):
    one = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    with connect(gw) as sock:
        sock.sendall(one)
        assert health_answer(sock).startswith(b"HTTP/1.1 200")
        time.sleep(HEADER_TIMEOUT * 1.5)  # idle (under uvicorn's 5 s keep-alive), longer than the header timeout
        sock.sendall(one)
        assert health_answer(sock).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize(
    ("framing", "reason"),
    [
        (b"Content-Length: abc\r\n", "Content-Length"),
        (b"Content-Length: -1\r\n", "Content-Length"),
        (b"Content-Length: 2\r\nContent-Length: 3\r\n", "Duplicate Content-Length"),
        (b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", "Transfer-Encoding"),
    ],
)
def test_malformed_framing_gets_the_unified_400(gw: Gateway, framing: bytes, reason: str):
    raw = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n{}"
    status, headers, body = exchange(gw, raw)
    assert status == 400
    error = assert_unified(headers, body, "INVALID_HTTP")
    assert reason in str(error["details"]["reason"])  # type: ignore[index]
