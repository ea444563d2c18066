"""Chat-API conversations checked from outside, over several servers or workers of one: the follow-up sent
right after the reply that made its session, a long run of turns whose history is checked where it arrives
(the fake upstream's recorded bodies), a repeated text stored every time. Used by ``test_sessions.py``
(workers of one server) and ``test_cluster.py`` (instances).

Every request here goes on a new connection: a kept-alive one would stay with the worker that accepted it,
and the point is that the next turn may land anywhere.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections import Counter
from typing import Any

import httpx

from tests.conftest import Fake

LIMITS = httpx.Limits(max_keepalive_connections=0)  # a new connection per request


def knob(scenario: str) -> str:
    """The fake upstream's knobs in a chat-API message: its body kept under ``scenario``."""
    return " [fake:" + json.dumps({"id": scenario}) + "]"


def client(url: str, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60, limits=LIMITS)


async def follow_ups(urls: list[str], key: str, tries: int, concurrency: int = 8) -> Counter[int]:
    """``tries`` times: a new session on one server, then at once a follow-up on the next (``urls`` in turn);
    the follow-ups' statuses."""
    statuses: Counter[int] = Counter()
    clients = [client(u, key) for u in urls]
    todo = iter(range(tries))

    async def chain() -> None:
        for i in todo:
            first = clients[i % len(clients)]
            then = clients[(i + 1) % len(clients)]
            made = await first.post("/api/v1/chat", json={"message": f"hello {i}", "model": "fake-model"})
            assert made.status_code == 200, made.text
            sid = made.json()["session_id"]
            resp = await then.post(
                "/api/v1/chat", json={"message": f"again {i}", "session_id": sid, "model": "fake-model"}
            )
            statuses[resp.status_code] += 1

    try:
        await asyncio.gather(*(chain() for _ in range(concurrency)))
    finally:
        for c in clients:
            await c.aclose()
    return statuses


def turns(urls: list[str], key: str, fake: Fake, texts: list[str], history_turns: int = 10) -> str:
    """One session, turn ``i`` sent to ``urls[i % len(urls)]``, each after the last one's reply; asserts that
    every turn went upstream with exactly the last ``history_turns`` turns before it, in order, and that the
    stored conversation holds every message. The session's id."""
    scenario = "turns-" + secrets.token_hex(4)
    sent = [text + knob(scenario) for text in texts]

    async def run() -> str:
        clients = [client(u, key) for u in urls]
        sid: str | None = None
        try:
            for i, message in enumerate(sent):
                body: dict[str, Any] = {"message": message, "model": "fake-model"}
                if sid is not None:
                    body["session_id"] = sid
                resp = await clients[i % len(clients)].post("/api/v1/chat", json=body)
                assert resp.status_code == 200, f"turn {i + 1}: {resp.status_code} {resp.text}"
                assert resp.json()["response"] == "echo: " + texts[i]
                sid = resp.json()["session_id"]
        finally:
            for c in clients:
                await c.aclose()
        assert sid is not None
        return sid

    sid = asyncio.run(run())
    bodies = fake.stats(scenario)["bodies"]
    assert len(bodies) == len(texts)
    transcript: list[dict[str, str]] = []
    for i, body in enumerate(bodies):
        expected = [*transcript[-2 * history_turns :], {"role": "user", "content": sent[i]}]
        got = [{"role": m["role"], "content": m["content"]} for m in body["messages"]]
        assert got == expected, f"turn {i + 1} went upstream with {[m['content'][:12] for m in got]}"
        transcript += [{"role": "user", "content": sent[i]}, {"role": "assistant", "content": "echo: " + texts[i]}]
    stored = httpx.get(
        f"{urls[0]}/api/v1/chat/sessions/{sid}", params={"limit": 500}, headers={"Authorization": f"Bearer {key}"}
    ).json()
    assert stored["message_count"] == 2 * len(texts) and stored["total_messages"] == 2 * len(texts)
    assert [{"role": m["role"], "content": m["content"]} for m in stored["messages"]] == transcript
    return sid


def session_misses_per_worker(url: str, key: str, workers: int = 2, tries: int = 300) -> dict[int, int]:
    """Each worker's count of conversations read from the store (``/admin/metrics`` answers for the worker
    that took its connection: asked on new connections until every worker has answered)."""
    seen: dict[int, int] = {}
    with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=30, limits=LIMITS) as c:
        for _ in range(tries):
            snap = c.get(url + "/admin/metrics").json()
            seen[snap["pid"]] = snap["sessions"]["misses"]
            if len(seen) == workers:
                break
    assert len(seen) == workers, f"only workers {sorted(seen)} answered {tries} new connections"
    return seen
