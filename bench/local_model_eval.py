#!/usr/bin/env python3
"""Which packaged local model chats best at a usable speed: the same 30 prompts to each, scored.

    nice -n 0 .venv/bin/python bench/local_model_eval.py [--models a,b,...] [--max-tokens 128] \\
        [--threads N] [--data-dir DIR] [--out answers.json]

``--models qwen2.5-coder-0.5b-instruct@1,qwen2.5-coder-0.5b-instruct@2`` compares thread counts the same way.

Each model runs as chatgate runs it: ``LocalModel`` from ``chatgate.upstream.local`` starts llama.cpp's
server with the production command line (chat template, threads, context), one server per model, all
started before the first prompt. The prompts then go round the models in turn (prompt 1 to every model,
then prompt 2, ...), so that a change in the machine's load falls on every model alike. Every request
streams, with ``temperature: 0`` and ``max_tokens`` (128), no system message unless the prompt is
grounded. Grounded prompts carry chatgate's real grounding: ``rag.ground.build_context`` with the
default ``grounding.template``, the numbered sources in the system message (``with_system``), counted
with the model's own vocabulary against ``grounding.max_context_tokens``.

An answer passes when it contains, for each group of expected words, one of them (case-insensitive, whole
words), and does not echo the prompt (the question word for word, the grounding instructions, a source's
heading line: what a pretrained model does); a greeting must also stop on its own; a question whose
answer is not in the sources passes when the answer says so.

Printed per model: passes per category, how often an answer stopped on its own before ``max_tokens``,
generation speed (tokens after the first one, counted with the model's vocabulary, over the time from the
first to the last), time to first token for short and for grounded prompts; then a summary with speeds
relative to the first model (measured in the same rounds). Scores and the stop rate do not depend on the
machine's load (greedy decoding); speeds do, ratios less so.
Figures only, never a verdict.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shlex
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from chatgate.rag.ground import build_context, with_system  # noqa: E402
from chatgate.rag.retrieve import Hit  # noqa: E402
from chatgate.settings import DEFAULT_GROUNDING_TEMPLATE, GroundingSettings, LocalModelSettings  # noqa: E402
from chatgate.tokens import LlamaVocabTokenizer  # noqa: E402
from chatgate.upstream.local import LocalModel, default_threads  # noqa: E402
from chatgate.upstream.models import PACKAGED  # noqa: E402

SAYS_NOT_IN_SOURCES = [
    "not mention", "not mentioned", "no mention", "not contain", "no information", "not provide", "not provided",
    "don't know", "do not know", "not specified", "not stated", "not available", "not included", "not listed",
    "doesn't say", "does not say", "doesn't specify", "does not specify", "don't have", "do not have",
    "does not have", "doesn't have", "cannot", "can't", "unable", "not found", "not in the", "no details",
    "not given", "unknown", "not sure",
]  # fmt: skip


def source(n: int, title: str, heading: str, text: str) -> Hit:
    return Hit(n, f"doc-{title}", "bench", f"{title}.md", title, text, None, (heading,), n, 1.0 / n)


ORION = [
    source(1, "Orion X200 manual", "Warranty", "Orion X200 headphones come with a warranty of 30 months from the date "
           "of purchase. The warranty covers the ear cushions and the charging case."),
    source(2, "Orion X200 manual", "Battery", "The Orion X200 battery lasts 41 hours on a single charge and charges "
           "fully in 90 minutes over USB-C."),
    source(3, "Tern kettle guide", "Capacity", "The Tern kettle holds 1.7 litres and switches itself off when the "
           "water boils."),
]  # fmt: skip
BRIGHTWELL = [
    source(1, "Brightwell handbook", "Remote work", "Employees at Brightwell may work remotely up to three days per "
           "week, agreed with their manager."),
    source(2, "Brightwell handbook", "Office hours", "The Brightwell office opens at 7:30 and closes at 19:00 on "
           "weekdays."),
    source(3, "Brightwell handbook", "Parking", "Parking permits cost 12 euros a month and are sold at reception."),
    source(4, "Brightwell handbook", "Meeting rooms", "Room 4B is reserved for the design team every Thursday."),
]  # fmt: skip
ZEPHYR = [
    source(1, "Zephyr-9 datasheet", "Specifications", "The Zephyr-9 drone weighs 870 grams and has a top speed of "
           "68 km/h."),
    source(2, "Zephyr-9 datasheet", "Updates", "Zephyr-9 firmware updates are installed through the Skyline app."),
]  # fmt: skip


@dataclass
class Prompt:
    category: str
    text: str
    expect: list[list[str]]  # every group must match one of its words
    sources: list[Hit] = field(default_factory=list)
    must_stop: bool = False


def rotate(hits: list[Hit], k: int) -> list[Hit]:
    """The same sources in another order (renumbered by ``build_context``)."""
    return hits[k:] + hits[:k]


PROMPTS = [
    Prompt("facts", "What is the capital of France?", [["paris"]]),
    Prompt("facts", "Which planet is the largest in our solar system?", [["jupiter"]]),
    Prompt("facts", "What is the chemical symbol for gold?", [["au"]]),
    Prompt("facts", "Who wrote Romeo and Juliet?", [["shakespeare"]]),
    Prompt("facts", "At what temperature in degrees Celsius does water boil at sea level?", [["100"]]),
    Prompt("facts", "How many continents are there on Earth?", [["seven", "7"]]),
    Prompt("arithmetic", "What is 2+2?", [["4", "four"]]),
    Prompt("arithmetic", "What is 7 times 8?", [["56"]]),
    Prompt("arithmetic", "What is 100 minus 37?", [["63"]]),
    Prompt("arithmetic", "What is 144 divided by 12?", [["12"]]),
    Prompt("arithmetic", "What is 15 + 27?", [["42"]]),
    Prompt("arithmetic", "I have 3 apples and buy 5 more. How many apples do I have now?", [["8", "eight"]]),
    Prompt("greeting", "Hello!", [["hello", "hi", "hey", "help", "assist", "welcome"]], must_stop=True),
    Prompt("greeting", "Good morning!", [["morning", "hello", "hi", "help", "assist"]], must_stop=True),
    Prompt("greeting", "Hi, how are you?", [["hello", "hi", "good", "well", "fine", "help", "thank"]], must_stop=True),
    Prompt(
        "summary",
        "Summarise this in one sentence: The city council voted on Tuesday to build a new public library downtown, "
        "and construction is expected to finish in 2027.",
        [["library"], ["council", "city", "build", "built", "construction"]],
    ),
    Prompt(
        "summary",
        "Summarise in one short sentence: After three weeks of heavy rain, the river overflowed its banks, flooding "
        "dozens of homes in the lower town.",
        [["flood", "flooded", "flooding", "overflowed", "overflow"], ["rain", "river", "homes"]],
    ),
    Prompt(
        "summary",
        "Give a one-sentence summary: Maria practised the piano every day for a year and finally won first prize "
        "at the national competition.",
        [["maria"], ["piano", "competition", "prize", "won"]],
    ),
    Prompt(
        "summary",
        "Summarise: The company reported record profits this quarter, driven mainly by strong sales of its new "
        "electric bicycle.",
        [["profit", "profits"], ["bicycle", "bike", "bicycles", "sales"]],
    ),
    Prompt("grounded", "How long is the warranty on the Orion X200 headphones?", [["30"]], ORION),
    Prompt("grounded", "How many hours does the Orion X200 battery last?", [["41"]], rotate(ORION, 2)),
    Prompt("grounded", "How many days a week can Brightwell employees work from home?", [["three", "3"]], BRIGHTWELL),
    Prompt(
        "grounded",
        "What time does the Brightwell office close?",
        [["19:00", "7 pm", "7pm", "7:00", "seven"]],
        rotate(BRIGHTWELL, 1),
    ),
    Prompt("grounded", "Which team has room 4B on Thursdays?", [["design"]], rotate(BRIGHTWELL, 3)),
    Prompt("grounded", "What is the top speed of the Zephyr-9 drone?", [["68"]], ZEPHYR),
    Prompt("grounded", "Which app installs Zephyr-9 firmware updates?", [["skyline"]], rotate(ZEPHYR, 1)),
    Prompt("not in sources", "What colour options does the Orion X200 come in?", [SAYS_NOT_IN_SOURCES], ORION),
    Prompt("not in sources", "Who is the CEO of Brightwell?", [SAYS_NOT_IN_SOURCES], BRIGHTWELL),
    Prompt("not in sources", "What is the price of the Zephyr-9 drone?", [SAYS_NOT_IN_SOURCES], ZEPHYR),
    Prompt("not in sources", "How much does the Tern kettle weigh?", [SAYS_NOT_IN_SOURCES], rotate(ORION, 1)),
]
CATEGORIES = list(dict.fromkeys(p.category for p in PROMPTS))


def normal(text: str) -> str:
    return " ".join(text.lower().replace("\u2019", "'").split())


def echoed(text: str, prompt: Prompt) -> bool:
    """The answer repeats the prompt's scaffolding (a pretrained model continuing the text): the question
    word for word (unless it is a short greeting), the grounding instructions, or a source's
    ``[n] title > heading`` line."""
    answer = normal(text)
    if len(prompt.text.split()) > 3 and normal(prompt.text) in answer:  # "Hello!" may well be answered "Hello!"
        return True
    if not prompt.sources:
        return False
    scaffolding = [normal(DEFAULT_GROUNDING_TEMPLATE.split(".")[0])]
    scaffolding += [normal(f"{h.title} > {' > '.join(h.headings)}") for h in prompt.sources]
    return any(s in answer for s in scaffolding)


def matches(text: str, words: list[str]) -> bool:
    low = text.lower().replace("\u2019", "'")
    return any(re.search(rf"(?<![\w]){re.escape(w)}(?![\w])", low) for w in words)


@dataclass
class Answer:
    prompt: Prompt
    text: str
    finish: str | None
    tokens: int
    ttft: float | None
    gen_seconds: float

    @property
    def stopped(self) -> bool:
        return self.finish == "stop"

    @property
    def passed(self) -> bool:
        ok = all(matches(self.text, group) for group in self.prompt.expect) and not self.echoed
        return ok and (self.stopped or not self.prompt.must_stop)

    @property
    def echoed(self) -> bool:
        return echoed(self.text, self.prompt)

    @property
    def tokens_per_second(self) -> float | None:
        return (self.tokens - 1) / self.gen_seconds if self.tokens > 2 and self.gen_seconds > 0 else None


class Candidate:
    def __init__(self, name: str, data_dir: Path, threads: int | None) -> None:
        """``name``: a ``local.model`` name, or ``name@N`` for that model with N threads."""
        self.name = name
        model, _, count = name.partition("@")
        self.model = model
        threads = int(count) if count else threads
        settings = LocalModelSettings(model=model, n_threads=threads, startup_timeout=600)  # type: ignore[arg-type]
        self.server = LocalModel(settings, data_dir)
        self.answers: list[Answer] = []
        self.vocab: LlamaVocabTokenizer | None = None

    def start(self) -> None:
        started = time.perf_counter()
        self.server.start()
        assert self.server.model_path is not None
        self.vocab = LlamaVocabTokenizer(self.server.model_path, self.name)
        print(f"  {self.name}: ready in {time.perf_counter() - started:.1f} s", flush=True)

    def messages(self, prompt: Prompt) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = [{"role": "user", "content": prompt.text}]
        if not prompt.sources:
            return messages
        assert self.vocab is not None
        budget = GroundingSettings().max_context_tokens
        context, used = build_context(prompt.sources, DEFAULT_GROUNDING_TEMPLATE, self.vocab.count, budget)
        assert context is not None and len(used) == len(prompt.sources)
        return with_system(messages, context, before=False)

    def ask(self, prompt: Prompt, max_tokens: int) -> Answer:
        body = {
            "model": self.server.settings.served_name,
            "messages": self.messages(prompt),
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
        }
        request = urllib.request.Request(
            self.server.base_url + "/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.server.api_key}", "Content-Type": "application/json"},
        )
        parts: list[str] = []
        finish = None
        sent = time.perf_counter()
        first = last = None
        with urllib.request.urlopen(request, timeout=900) as resp:
            for raw in resp:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                choice = json.loads(data)["choices"][0]
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    last = time.perf_counter()
                    first = first or last
                    parts.append(piece)
                finish = choice.get("finish_reason") or finish
        text = "".join(parts)
        assert self.vocab is not None
        tokens = self.vocab.count(text)
        gen = (last - first) if first is not None and last is not None else 0.0
        return Answer(prompt, text, finish, tokens, (first - sent) if first is not None else None, gen)

    def stop(self) -> None:
        self.server.stop()


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def report(c: Candidate, max_tokens: int) -> dict[str, Any]:
    model = PACKAGED[c.model]
    print(f"\n== {c.name}: {model.title}, {model.size / 1e6:.0f} MB, {model.licence}")
    print(f"{'category':16} {'passed':>7}")
    for cat in CATEGORIES:
        rows = [a for a in c.answers if a.prompt.category == cat]
        print(f"{cat:16} {sum(a.passed for a in rows):>3}/{len(rows):<3}")
    passed = sum(a.passed for a in c.answers)
    stopped = sum(a.stopped for a in c.answers)
    print(f"{'total':16} {passed:>3}/{len(c.answers):<3}")
    speeds = [s for a in c.answers if (s := a.tokens_per_second) is not None]
    short = [a.ttft for a in c.answers if a.ttft is not None and not a.prompt.sources]
    grounded = [a.ttft for a in c.answers if a.ttft is not None and a.prompt.sources]
    print(f"stopped on its own before max_tokens ({max_tokens}): {stopped}/{len(c.answers)}")
    print(f"generation: median {fmt(median(speeds), ' tok/s')} (min {fmt(min(speeds, default=None))}, "
          f"max {fmt(max(speeds, default=None))})")  # fmt: skip
    print(f"time to first token: short prompts median {fmt(median(short), ' s', 2)}, "
          f"grounded median {fmt(median(grounded), ' s', 2)}")  # fmt: skip
    print(f"mean answer length: {statistics.mean(a.tokens for a in c.answers):.0f} tokens")
    for a in c.answers:
        if not a.passed:
            snippet = " ".join(a.text.split())[:110]
            why = f"{a.finish}, echoed the prompt" if a.echoed else a.finish
            print(f"  failed [{a.prompt.category}] {a.prompt.text[:48]!r}: {snippet!r} ({why})")
    return {
        "model": c.name,
        "passed": passed,
        "total": len(c.answers),
        "by_category": {cat: sum(a.passed for a in c.answers if a.prompt.category == cat) for cat in CATEGORIES},
        "stopped": stopped,
        "tok_s": median(speeds),
        "ttft_short": median(short),
        "ttft_grounded": median(grounded),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models", default=",".join(PACKAGED), help="comma-separated `local.model` names (`name@N`: with N threads)"
    )
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="local.n_threads (default: chatgate's)")
    parser.add_argument("--data-dir", type=Path, default=None, help="where chunked models are joined (default: temp)")
    parser.add_argument("--out", type=Path, default=None, help="write every answer to this JSON file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s: %(message)s")
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="chatgate-eval-"))

    print(f"$ {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}; {platform.platform()}; {os.cpu_count()} CPUs; "
        f"python {platform.python_version()}"
    )
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
    print(f"{len(PROMPTS)} prompts, max_tokens {args.max_tokens}, temperature 0; starting {len(names)} servers")
    candidates = [Candidate(n, data_dir, args.threads) for n in names]
    try:
        for c in candidates:
            c.start()
        warm = Prompt("warm-up", "Hi", [])
        for c in candidates:
            c.ask(warm, 8)
        loads = []
        for i, prompt in enumerate(PROMPTS, 1):
            loads.append(os.getloadavg()[0])
            for c in candidates:
                c.answers.append(c.ask(prompt, args.max_tokens))
            print(f"  prompt {i}/{len(PROMPTS)} answered by every model (load {loads[-1]:.2f})", flush=True)
    finally:
        for c in candidates:
            c.stop()

    print(f"load average (1 min) during the rounds: min {min(loads):.2f}, median {statistics.median(loads):.2f}, "
          f"max {max(loads):.2f}; at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
    threads = {c.name: c.server.settings.n_threads or default_threads() for c in candidates}
    print(f"threads per server (prompt and generation): {threads}")
    rows = [report(c, args.max_tokens) for c in candidates]

    base = rows[0]
    print(f"\n== summary (speed ratios: against {base['model']}, measured in the same rounds)")
    print(f"{'model':30} {'score':>6} {'stopped':>8} {'tok/s':>7} {'x':>5} {'TTFT short':>11} {'TTFT grounded':>14}")
    for r in rows:
        ratio = r["tok_s"] / base["tok_s"] if r["tok_s"] and base["tok_s"] else None
        print(
            f"{r['model']:30} {r['passed']:>3}/{r['total']:<2} {r['stopped']:>4}/{r['total']:<3} "
            f"{fmt(r['tok_s']):>7} {fmt(ratio, '', 2):>5} {fmt(r['ttft_short'], ' s', 2):>11} "
            f"{fmt(r['ttft_grounded'], ' s', 2):>14}"
        )
    if args.out:
        dump = {
            "rows": rows,
            "answers": {
                c.name: [
                    {"prompt": a.prompt.text, "answer": a.text, "finish": a.finish, "passed": a.passed}
                    for a in c.answers
                ]
                for c in candidates
            },
        }  # fmt: skip
        args.out.write_text(json.dumps(dump, indent=1))
        print(f"answers written to {args.out}")


if __name__ == "__main__":
    main()
