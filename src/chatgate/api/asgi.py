"""Small ASGI helpers for the hot routes, which run without a framework request object."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from starlette.types import Receive, Scope, Send

T = TypeVar("T")
Headers = Sequence[tuple[bytes, bytes]]

JSON_HEADERS: Headers = ((b"content-type", b"application/json"),)
SSE_HEADERS: Headers = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
)


class ClientLeft(Exception):
    """The client hung up before the answer was complete."""


async def read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        return body
    parts = [body]
    while message.get("more_body"):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientLeft
        parts.append(message.get("body", b""))
    return b"".join(parts)


async def send_bytes(send: Send, status: int, body: bytes, headers: Headers = JSON_HEADERS) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Chunks(Protocol):
    def __aiter__(self) -> AsyncIterator[bytes]: ...
    async def aclose(self) -> None: ...


async def send_stream(send: Send, chunks: Chunks, headers: Headers = SSE_HEADERS) -> None:
    """Each chunk goes out as it comes; nothing is buffered. ``chunks`` is closed whatever happens."""
    try:
        await send({"type": "http.response.start", "status": 200, "headers": list(headers)})
        async for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    finally:
        await chunks.aclose()
    await send({"type": "http.response.body", "body": b""})


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Await ``work`` in this task, cancelling it the moment the client disconnects.

    The request body must have been read already. One watcher task per request; the work
    itself stays in the caller's task, so nothing is copied between tasks.
    """
    task = asyncio.current_task()
    assert task is not None
    left = False

    async def watch() -> None:
        nonlocal left
        while (await receive())["type"] != "http.disconnect":
            pass
        left = True
        task.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if left:
            task.uncancel()
            raise ClientLeft from None
        raise
    finally:
        watcher.cancel()


class Endpoint:
    """Marks a plain ASGI function as an endpoint (Starlette would wrap a bare function as request/response)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
