#!/usr/bin/env python3
"""What identity plus session resolution adds to a request: the identify and session steps, timed per request.

    .venv/bin/python bench/identity_session.py [--requests 50000] [--conversations 500]

Per request, exactly what the pipeline does before and after the upstream call, with the real
components over a real SQLite store and write-behind queue:

    resolve identity (Open WebUI headers from a trusted forwarder key)
    -> get or create the session (hot after its first request)
    -> count the request in flight -> record usage and kind -> queue the user message and the reply
    -> count it out.

Timed request by request with ``time.perf_counter_ns``; the write-behind queue flushes in the
background as in production (its flush time is not in the figure: the request never waits for it).
The loop pauses, untimed, whenever more than 20,000 writes are queued: it makes requests far faster
than a server can, and would otherwise overflow the queue.
Prints p50 / p90 / p99 in microseconds, for sessions already hot and for first requests (a store
read each). Figures only, never a verdict; the target is 50 us p50.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from chatgate.identity.keys import Principal  # noqa: E402
from chatgate.identity.resolve import IdentityResolver  # noqa: E402
from chatgate.sessions.connections import Connections  # noqa: E402
from chatgate.sessions.manager import SessionManager  # noqa: E402
from chatgate.sessions.messages import Kept, request_kind  # noqa: E402
from chatgate.settings import IdentitySettings, SessionSettings  # noqa: E402
from chatgate.store.db import Store  # noqa: E402
from chatgate.store.writebehind import WriteBehind  # noqa: E402

FORWARDER = Principal(key_id="k-owui", scopes=frozenset({"user", "trusted_forwarder"}), user_id="u-owui")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(requests: int, conversations: int) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        store = await Store.open(f"sqlite+aiosqlite:///{tmp}/bench.db")
        writer = WriteBehind(store)
        await writer.start()
        resolver = IdentityResolver(IdentitySettings())
        sessions = SessionManager(store, writer, SessionSettings(cache_size=conversations * 2))
        conns = Connections(max_per_user=1000)
        timings: dict[str, list[float]] = {"first request of a conversation": [], "hot session": []}
        for i in range(requests):
            chat = f"chat-{i % conversations}"
            headers = {
                "authorization": "Bearer x",
                "x-openwebui-user-id": f"user-{i % 50}",
                "x-openwebui-user-name": "Ada%20Lovelace",
                "x-openwebui-chat-id": chat,
                "x-openwebui-message-id": f"m-{i}",
            }
            body = {"model": "m", "messages": [{"role": "user", "content": f"question {i}"}]}
            start = time.perf_counter_ns()
            resolved = resolver.resolve(FORWARDER, headers, body, "127.0.0.1", None)
            session = await sessions.get_or_create(resolved.identity, resolved.conversation_key, resolved.channel)
            conn = conns.enter(resolved.identity.user_id, session.id, resolved.message_id)
            content = body["messages"][0]["content"]
            await sessions.keep(
                session,
                request_kind(body, resolved.features, frozenset()),
                {"prompt_tokens": 12, "completion_tokens": 30},
                rag_applied=False,
                messages=[Kept(0, "user", content, resolved.message_id)],
                reply="an answer",
                reply_at=1,
                model="m",
                durable=False,
            )
            conns.leave(conn)
            elapsed = (time.perf_counter_ns() - start) / 1000
            first = session.is_first_message and i < conversations
            timings["first request of a conversation" if first else "hot session"].append(elapsed)
            await asyncio.sleep(0)  # a real request yields to the loop (the flusher runs) many times
            while writer.depth > 20_000:  # noqa: ASYNC110 - polling the queue depth is the point here
                await asyncio.sleep(0.005)
        await writer.close()
        stats = await store.conversations.stats(None)
        await store.close()
        print(f"write-behind: {writer.written} ops written, {writer.drops} dropped; stored: {stats}")
        return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--conversations", type=int, default=500)
    args = parser.parse_args()
    print(f"command: {' '.join(sys.argv)}")
    print(f"python {platform.python_version()} on {platform.machine()}")
    timings = asyncio.run(run(args.requests, args.conversations))
    print(f"\n{'case':36} {'n':>7} {'p50 us':>8} {'p90 us':>8} {'p99 us':>8} {'mean us':>8}")
    for case, values in timings.items():
        if values:
            print(
                f"{case:36} {len(values):7d} {pct(values, 0.5):8.1f} {pct(values, 0.9):8.1f} "
                f"{pct(values, 0.99):8.1f} {statistics.fmean(values):8.1f}"
            )
    everything = [v for values in timings.values() for v in values]
    print(f"\nall requests: p50 {pct(everything, 0.5):.1f} us (target: identity + session <= 50 us p50)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
