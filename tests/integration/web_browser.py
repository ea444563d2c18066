"""Driving the web page in a real browser: Debian's Chromium under Playwright (never a downloaded browser).

``open_tab`` gives a fresh browser context (its own sessionStorage and cookies) that records what must never
happen on the page: uncaught script errors, Content-Security-Policy violations, dialogs (``alert``...), and
requests anywhere but the gateway (no CDN, no fonts from elsewhere).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from playwright.sync_api import Browser, BrowserContext, Page, Playwright, expect

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 30_000  # generous: a loaded 2-core machine; every wait is for an event or a DOM state

expect.set_options(timeout=TIMEOUT_MS)


def launch(pw: Playwright) -> Browser:
    return pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


@dataclass
class Tab:
    page: Page
    context: BrowserContext
    origin: str
    errors: list[str] = field(default_factory=list)  # uncaught exceptions and CSP violations
    dialogs: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def goto(self, path: str) -> None:
        self.page.goto(self.origin + path)

    def foreign_requests(self) -> list[str]:
        return [u for u in self.requests if not u.startswith((self.origin + "/", "data:", "blob:"))]


@contextmanager
def open_tab(browser: Browser, origin: str, **context_options: Any) -> Iterator[Tab]:
    context = browser.new_context(**context_options)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    tab = Tab(page, context, origin)
    page.on("pageerror", lambda exc: tab.errors.append(f"page error: {exc}"))
    page.on(
        "console",
        lambda msg: (
            tab.errors.append(f"console: {msg.text}")
            if re.search(r"Content Security Policy|Refused to", msg.text)
            else None
        ),
    )
    page.on("request", lambda req: tab.requests.append(req.url))

    def on_dialog(dialog: Any) -> None:
        tab.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    try:
        yield tab
    finally:
        context.close()


def sign_in(tab: Tab, key: str, path: str = "/ui/") -> None:
    """Opens ``path`` and signs in with ``key`` through the form, as a person would."""
    tab.goto(path)
    page = tab.page
    page.get_by_label("API key", exact=True).fill(key)
    page.get_by_role("button", name="Sign in").click()
    if path == "/ui/":
        expect(page.locator("body")).to_have_attribute("data-ready", "true")


def send(tab: Tab, text: str) -> Any:
    """Types ``text`` into the message box and sends it; the locator of its answer (the last one)."""
    page = tab.page
    before = page.locator("article.msg.assistant").count()
    page.get_by_label("Message", exact=True).fill(text)
    page.get_by_role("button", name="Send").click()
    answer = page.locator("article.msg.assistant").nth(before)
    expect(answer).to_be_attached()
    return answer
