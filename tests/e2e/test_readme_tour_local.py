"""The README tour's chat steps, as written, against the bundled model (the tour's own first screen: no
upstream, `make run` serves Qwen2.5-Coder 0.5B as `local`). Slow on two cores: only the steps that chat
(the rest is tests/integration/test_readme_tour.py, with the fake upstream), every answer kept short."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import stop
from tests.integration.test_readme_tour import ServedTour, run_tour

pytestmark = pytest.mark.e2e

CHAT_STEPS = {"ask", "stream", "users"}
SHORT = {"CHATGATE_LOCAL__N_CTX": "2048", "CHATGATE_LOCAL__DEFAULT_MAX_TOKENS": "32"}  # the chat API sets none


def test_the_readme_tours_chat_steps_with_the_bundled_model(tmp_path: Path) -> None:
    tour = ServedTour(tmp_path, url="")
    tour.config_file, tour.config = tmp_path / "server.yaml", {}
    try:
        assert run_tour(tour, SHORT, only=CHAT_STEPS, ready_timeout=300) == ["ask", "stream", "users"]
    finally:
        if tour.gw is not None:
            stop(tour.gw.proc)
