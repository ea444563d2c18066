"""Fake upstreams for the context tests: one that states its window like vLLM, one that does not."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Fake, start_fake, stop

WINDOW = 300
SUMMARY_KEY = "summary-secret"


@pytest.fixture(scope="module")
def fake_window() -> Iterator[Fake]:
    """Serves ``ctx-model`` and ``ctx-other`` with ``max_model_len`` 300, and refuses longer requests."""
    fake = start_fake("w", "ctx-model,ctx-other", max_model_len=WINDOW)
    yield fake
    stop(fake.proc)


@pytest.fixture(scope="module")
def fake_plain() -> Iterator[Fake]:
    """States no window; wants an API key (the summariser's own endpoint in some tests)."""
    fake = start_fake("p", "plain-model", api_key=SUMMARY_KEY)
    yield fake
    stop(fake.proc)
