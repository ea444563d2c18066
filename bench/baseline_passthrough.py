"""The baseline for ``bench/overhead.py``: the least a Python pass-through can do.

Reads the body, POSTs it to the upstream over one shared aiohttp session, returns the upstream's
status, content type and body; ``"stream": true`` requests go to ``BENCH_UPSTREAM_STREAM`` (default
``BENCH_UPSTREAM``) and their bytes are relayed as they arrive. No auth, no checks, no logs.
"""

import os
from contextlib import asynccontextmanager

import aiohttp
import orjson
from starlette.applications import Starlette
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

BASE = os.environ["BENCH_UPSTREAM"].rstrip("/")
UPSTREAM = BASE + "/chat/completions"
UPSTREAM_STREAM = os.environ.get("BENCH_UPSTREAM_STREAM", BASE).rstrip("/") + "/chat/completions"
HEADERS = {"Content-Type": "application/json"}
session: aiohttp.ClientSession


@asynccontextmanager
async def lifespan(app):
    global session
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    yield
    await session.close()


async def chat(request):
    body = await request.body()
    stream = orjson.loads(body).get("stream") is True
    resp = await session.post(UPSTREAM_STREAM if stream else UPSTREAM, data=body, headers=HEADERS)
    ctype = resp.headers.get("Content-Type", "application/json")
    if not stream:
        async with resp:
            return Response(await resp.read(), status_code=resp.status, media_type=ctype)

    async def relay():
        async with resp:
            async for chunk in resp.content.iter_any():
                yield chunk

    return StreamingResponse(relay(), status_code=resp.status, media_type=ctype)


app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])], lifespan=lifespan)
