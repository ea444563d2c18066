#!/usr/bin/env python3
"""How long the identify step takes: ``IdentityResolver.resolve()`` per call, by kind of caller.

    .venv/bin/python bench/identity_resolve.py [--calls 100000] [--jwt-calls 20000]

Each case is warmed up, then timed call by call with ``time.perf_counter_ns`` (the body is rebuilt
outside the timed window, since ``resolve`` takes ``metadata`` out of it). Prints p50 / p90 / p99 / mean
in microseconds, and the cost of the timer itself. Open WebUI's signed JWT is timed twice: a new token on
every call (an HS256 check each time, as when Open WebUI mints one per request) and the same token again
(a verified-token cache hit). Figures only, never a verdict; the target for identity + session together
is 50 us p50.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import jwt  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from chatgate.identity.keys import Principal  # noqa: E402
from chatgate.identity.resolve import IdentityResolver  # noqa: E402
from chatgate.settings import IdentitySettings  # noqa: E402

OWUI_SECRET = "bench-open-webui-forward-secret-of-32-bytes+"


BASE_HEADERS = {
    "host": "chatgate:8080",
    "content-type": "application/json",
    "authorization": "Bearer cg-user-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "user-agent": "OpenAI/Python 1.50.0",
    "accept": "application/json",
    "content-length": "187",
}
OWUI_HEADERS = {
    **BASE_HEADERS,
    "x-openwebui-user-id": "2d95199f-1f70-4690-9b4a-8f98280ca9da",
    "x-openwebui-user-name": "Jos%C3%A9%20Garc%C3%ADa",
    "x-openwebui-user-email": "jose@example.com",
    "x-openwebui-user-role": "user",
    "x-openwebui-chat-id": "040539c8-5b4c-4d3e-9f0a-0f5d7c1b2a3e",
    "x-openwebui-message-id": "b5ce1537-8a2b-4c1d-9e3f-1a2b3c4d5e6f",
}
METADATA = {
    "user_id": "2d95199f-1f70-4690-9b4a-8f98280ca9da",
    "chat_id": "040539c8-5b4c-4d3e-9f0a-0f5d7c1b2a3e",
    "message_id": "b5ce1537-8a2b-4c1d-9e3f-1a2b3c4d5e6f",
    "session_id": "sess-1",
    "variables": {
        "{{USER_NAME}}": "José",
        "{{USER_LOCATION}}": "Unknown",
        "{{CURRENT_DATETIME}}": "2025-06-01 10:00:00",
        "{{CURRENT_TIMEZONE}}": "Europe/Paris",
        "{{USER_LANGUAGE}}": "fr-FR",
    },
    "model": {"id": "qwen3", "max_model_len": 32768},
    "features": {"web_search": False},
}
MESSAGES = [{"role": "user", "content": "Hello"}]


def owui_token(i: int) -> str:
    now = int(time.time())
    claims = {
        "sub": "671fa9fb-0000-4000-8000-000000000000",
        "email": "bob@example.com",
        "name": "bob",
        "role": "user",
        "iss": "open-webui",
        "iat": now,
        "exp": now + 300,
        "n": i,  # a distinct token per call
    }
    return jwt.encode(claims, OWUI_SECRET, algorithm="HS256")


Args = tuple[Principal, dict[str, str], dict[str, Any], str | None, str | None]


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    resolver: IdentityResolver
    make: Callable[[int], Args]  # call number -> resolve()'s arguments, built outside the timed window
    new_jwt: bool = False  # signs its own tokens: timed over --jwt-calls


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "qwen3", "messages": MESSAGES, "stream": True, **extra}


def cases(jwt_calls: int) -> list[Case]:
    plain = IdentityResolver(IdentitySettings())
    owui = IdentityResolver(IdentitySettings(openwebui_jwt_secret=SecretStr(OWUI_SECRET)))
    proxied = IdentityResolver(IdentitySettings(trusted_proxies=["10.0.0.0/8", "172.16.0.0/12", "fd00::/8"]))
    key = Principal("k1", frozenset({"user"}), user_id="usr_1", name="Ann", email="ann@example.com")
    fwd = Principal("owui", frozenset({"user", "trusted_forwarder"}), user_id="usr_owui")
    anon = Principal("anonymous", frozenset({"anonymous"}), user_id="anonymous")
    tokens = [owui_token(i) for i in range(jwt_calls * 2)]  # warm-up and timed calls each get new ones
    same = {**BASE_HEADERS, "x-openwebui-user-jwt": owui_token(-1)}
    xff = "203.0.113.7, 172.16.0.4"
    return [
        Case("plain API key", plain, lambda i: (key, BASE_HEADERS, body(), "10.0.0.9", None)),
        Case("API key + `user` field", plain, lambda i: (key, BASE_HEADERS, body(user="u-9"), "10.0.0.9", None)),
        Case("trusted forwarder, Open WebUI headers", plain, lambda i: (fwd, OWUI_HEADERS, body(), None, None)),
        Case(
            "trusted forwarder, body metadata",
            plain,
            lambda i: (fwd, BASE_HEADERS, body(metadata=dict(METADATA)), None, None),
        ),
        Case(
            "untrusted key, headers + metadata",
            plain,
            lambda i: (key, OWUI_HEADERS, body(metadata=dict(METADATA)), None, None),
        ),
        Case("anonymous behind 2 trusted proxies", proxied, lambda i: (anon, BASE_HEADERS, body(), "10.0.0.2", xff)),
        Case("Open WebUI JWT, same token (cache hit)", owui, lambda i: (key, same, body(), None, None)),
        Case(
            "Open WebUI JWT, new token (HS256 check)",
            owui,
            lambda i: (key, {**BASE_HEADERS, "x-openwebui-user-jwt": tokens[i]}, body(), None, None),
            new_jwt=True,
        ),
    ]


def measure(resolver: IdentityResolver, make: Callable[[int], Args], calls: int, offset: int = 0) -> list[int]:
    resolve = resolver.resolve
    clock = time.perf_counter_ns
    out = [0] * calls
    for i in range(calls):
        args = make(offset + i)
        start = clock()
        resolve(*args)
        out[i] = clock() - start
    return out


def timer_overhead(calls: int) -> int:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(calls):
        start = clock()
        samples.append(clock() - start)
    samples.sort()
    return samples[len(samples) // 2]


def pct(sorted_ns: list[int], p: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(len(sorted_ns) * p))] / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=100_000, help="timed calls per case")
    parser.add_argument("--jwt-calls", type=int, default=20_000, help="timed calls for the new-token JWT case")
    args = parser.parse_args()
    logging.getLogger("chatgate.identity").addHandler(logging.NullHandler())  # the one-time "untrusted" warning
    logging.getLogger("chatgate.identity").propagate = False

    print("$ " + " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"python {platform.python_version()} on {platform.machine()}, PyJWT {jwt.__version__}")
    print(f"timer overhead (perf_counter_ns pair), p50: {timer_overhead(100_000) / 1000:.3f} us (included below)")
    print(f"{'case':<44} {'calls':>7} {'p50 us':>8} {'p90 us':>8} {'p99 us':>8} {'mean us':>8}")
    all_cases = cases(args.jwt_calls)
    for case in all_cases:  # warm every case up before timing any (the first timed case ran slow otherwise)
        calls = args.jwt_calls if case.new_jwt else args.calls
        measure(case.resolver, case.make, min(calls, 10_000), offset=calls)  # tokens not reused below
    for case in all_cases:
        calls = args.jwt_calls if case.new_jwt else args.calls
        samples = sorted(measure(case.resolver, case.make, calls))
        mean = sum(samples) / len(samples) / 1000
        print(
            f"{case.name:<44} {calls:>7} {pct(samples, 0.5):>8.2f} {pct(samples, 0.9):>8.2f} "
            f"{pct(samples, 0.99):>8.2f} {mean:>8.2f}"
        )


if __name__ == "__main__":
    main()
