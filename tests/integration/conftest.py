"""Integration fixtures: the multi-instance cluster (``cluster.py``), and each test's outcome on its node
(``rep_call``), so that fixtures can print logs when the test failed."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from tests.integration.cluster import chroma_server, cluster_factory  # noqa: F401  (fixtures)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, Any]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
