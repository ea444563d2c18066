#!/usr/bin/env python3
"""The web page's speed in Chromium on loopback: first-load bytes, time to interactive, send to first character.

    .venv/bin/python bench/web.py [--runs 10] [--sends 20]

Starts the fake upstream and ``chatgate serve`` (the built page, ``make install``), then in Debian's Chromium
(headless, a fresh context per run: nothing cached):

- first load of ``/ui/``: bytes transferred (every response, headers included, as the network saw them: the
  pre-compressed bodies), and the time from navigation start to the sign-in form (no key) and to the chat page
  being usable (a key kept in the tab: sessions and models loaded), read from the page's
  ``performance.mark("chatgate:interactive")``;
- pressing Send to the answer's first character on screen, against the upstream's own first byte (a streaming
  request straight to the fake upstream from Python) and chatgate's (the same chat-API stream from Python),
  measured in the same run. Prints figures, never a verdict.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import Browser, sync_playwright  # noqa: E402
from tests.conftest import Gateway, start_fake, start_gateway, stop  # noqa: E402
from tests.integration.web_browser import launch  # noqa: E402

FIRST_CHAR = """() => new Promise((resolve) => {
    const before = document.querySelectorAll('article.msg.assistant').length;
    const observer = new MutationObserver(() => {
        const answer = document.querySelectorAll('article.msg.assistant')[before];
        const body = answer && answer.querySelector('.msg-body');
        if (body && body.textContent.length) { observer.disconnect(); resolve(performance.now() - window.__sent); }
    });
    observer.observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
    document.getElementById('send').addEventListener('click', () => { window.__sent = performance.now(); },
                                                     {capture: true, once: true});
    document.getElementById('composer-input').value = 'how fast is the first word?';
    document.getElementById('send').click();
})"""


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def first_load(browser: Browser, gw: Gateway, key: str | None) -> tuple[int, float]:
    context = browser.new_context()
    if key:
        context.add_init_script(f"sessionStorage.setItem('chatgate.key', {key!r})")
    page = context.new_page()
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    received: list[int] = []
    cdp.on("Network.loadingFinished", lambda e: received.append(int(e["encodedDataLength"])))
    page.goto(gw.url + "/ui/")
    if key:
        page.wait_for_selector("body[data-ready=true]")
        ready = page.evaluate("performance.getEntriesByName('chatgate:interactive')[0].startTime")
    else:
        page.wait_for_selector("#signin-key")
        ready = page.evaluate("performance.getEntriesByName('chatgate:sign-in')[0].startTime")
    page.wait_for_load_state("networkidle")
    total = sum(received)
    context.close()
    return total, float(ready)


def upstream_first_byte(url: str, body: dict[str, Any], headers: dict[str, str], content: str) -> float:
    """Milliseconds from sending a streaming request until the first event carrying text."""
    with httpx.Client(timeout=30) as client:
        start = time.perf_counter()
        with client.stream("POST", url, json=body, headers=headers) as resp:
            for line in resp.iter_lines():
                if content in line:
                    return (time.perf_counter() - start) * 1000
    raise RuntimeError("no content streamed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="first loads of each kind")
    parser.add_argument("--sends", type=int, default=20, help="messages sent (and direct streams) measured")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fake = start_fake("bench", "fake-model")
        config = {
            "upstreams": [{"name": "bench", "base_url": fake.base_url}],
            "limits": {"user_requests_per_minute": 100_000},
            "log": {"level": "warning"},
        }
        gw = start_gateway(Path(tmp) / "gw", config)
        auth = {"Authorization": f"Bearer {gw.key}"}
        try:
            with sync_playwright() as pw:
                browser = launch(pw)
                cold = [first_load(browser, gw, None) for _ in range(args.runs)]
                warm = [first_load(browser, gw, gw.key) for _ in range(args.runs)]
                context = browser.new_context()
                context.add_init_script(f"sessionStorage.setItem('chatgate.key', {gw.key!r})")
                page = context.new_page()
                page.goto(gw.url + "/ui/")
                page.wait_for_selector("body[data-ready=true]")
                page.select_option("#model", "fake-model")
                page_ms = []
                for _ in range(args.sends):
                    page_ms.append(float(page.evaluate(FIRST_CHAR)))
                    page.wait_for_selector("#send:not([hidden])")
                context.close()
                browser.close()
            question = {"role": "user", "content": "how fast is the first word?"}
            direct = [
                upstream_first_byte(
                    fake.base_url + "/chat/completions",
                    {"model": "fake-model", "messages": [question], "stream": True},
                    {},
                    '"content": "echo:',
                )
                for _ in range(args.sends)
            ]
            api = [
                upstream_first_byte(
                    gw.url + "/api/v1/chat",
                    {"message": question["content"], "model": "fake-model", "stream": True},
                    auth,
                    '"type":"delta"',
                )
                for _ in range(args.sends)
            ]
        finally:
            stop(gw.proc)
            stop(fake.proc)
    print(f"first load of /ui/, {args.runs} fresh contexts each (median):")
    kb, ms = median([b for b, _ in cold]) / 1024, median([t for _, t in cold])
    print(f"  sign-in form: {kb:.1f} KB transferred, usable at {ms:.0f} ms")
    print(
        f"  chat page with a kept key: {median([b for b, _ in warm]) / 1024:.1f} KB transferred (API calls included), "
        f"interactive at {median([t for _, t in warm]):.0f} ms"
    )
    up, via_api, shown = median(direct), median(api), median(page_ms)
    print(f"send to first character, {args.sends} messages (median):")
    print(f"  upstream's own first byte (Python, straight to the fake upstream): {up:.1f} ms")
    print(f"  chatgate's chat-API stream, first delta (Python):                 {via_api:.1f} ms")
    print(f"  the page: Send pressed to the first character on screen:         {shown:.1f} ms")
    print(
        f"  added over the upstream's first byte: {shown - up:.1f} ms "
        f"(chatgate {via_api - up:.1f} ms, page and browser {shown - via_api:.1f} ms)"
    )


if __name__ == "__main__":
    main()
