"""Integration fixtures: the multi-instance cluster (``cluster.py``); each test's outcome on its node
(``rep_call``), so that fixtures can print logs when the test failed; and for the web page's browser tests
(tests/integration/test_web_*.py) one Chromium per module.

Not one Chromium per session: Playwright's synchronous API keeps an event loop running on the main thread
while it is open, and every asyncio test after it would find that loop running."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.conftest import Gateway
from tests.integration.cluster import chroma_server, cluster_factory  # noqa: F401  (fixtures)
from tests.integration.web_browser import Tab, launch, open_tab


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, Any]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    with sync_playwright() as pw:
        browser = launch(pw)
        yield browser
        browser.close()


@pytest.fixture
def tab(chromium: Browser, gw: Gateway) -> Iterator[Tab]:
    """A fresh tab on the module's gateway (``gw``); afterwards, nothing that must never happen did."""
    with open_tab(chromium, gw.url) as t:
        yield t
        assert not t.errors, t.errors  # no script error, no CSP violation
        assert not t.dialogs, t.dialogs
        assert not t.foreign_requests(), t.foreign_requests()  # everything from chatgate: no CDN
