"""SIGHUP: a real `chatgate serve` re-reads its config file and applies the assistants and the limits in every
worker, without a restart; a file that does not load changes nothing. And the README's documents tour, as
written, for a user key: `chatgate ingest ./handbook --collection hr --visibility shared`, an assistant naming
`hr` added to the file, SIGHUP, the question: the answer cites `handbook/leave.md`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import Fake, Gateway, start_gateway, stop, user_key

CHATGATE = str(Path(sys.executable).with_name("chatgate"))


def base_config(fake: Fake, **extra: Any) -> dict[str, Any]:
    return {
        "upstreams": [{"name": "a", "base_url": fake.base_url, "api_key": "upstream-secret-a"}],
        "rag": {
            "embeddings": {
                "backend": "openai",
                "base_url": fake.base_url,
                "api_key": "upstream-secret-a",
                "model": "fake-word-hash",
            }
        },
        **extra,
    }


def config_file(gw: Gateway) -> Path:
    return gw.log_path.parent / "chatgate.yaml"


def reloads(gw: Gateway) -> list[dict[str, Any]]:
    lines = (json.loads(line) for line in gw.logs().splitlines() if line.startswith("{"))
    return [line for line in lines if line.get("msg", "").startswith("configuration ")]


def sighup_and_wait(gw: Gateway, workers: int) -> list[dict[str, Any]]:
    """SIGHUP to the server (its supervisor with several workers); the new reload lines, one per worker."""
    seen = len(reloads(gw))
    gw.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        new = reloads(gw)[seen:]
        if len(new) >= workers:
            return new
        time.sleep(0.05)
    raise AssertionError(f"no reload logged: {gw.logs()[-3000:]}")


def model_ids(gw: Gateway, key: str) -> set[str]:
    resp = httpx.get(gw.base_url + "/models", headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 200, resp.text
    return {m["id"] for m in resp.json()["data"]}


def chat(gw: Gateway, key: str, text: str = "hello") -> httpx.Response:
    body = {"model": "fake-model", "messages": [{"role": "user", "content": text}]}
    return httpx.post(gw.base_url + "/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_applies_new_assistants_and_limits_in_every_worker(tmp_path: Path, fake_a: Fake, workers: int) -> None:
    cfg = base_config(fake_a, limits={"user_requests_per_minute": 3})
    gw = start_gateway(tmp_path, cfg, args=["--workers", str(workers)])
    try:
        key = user_key(gw, "reloader")
        assert "helper" not in model_ids(gw, key)
        if workers == 1:  # one process: the in-memory limit is exact
            assert [chat(gw, key).status_code for _ in range(4)] == [200, 200, 200, 429]
        cfg["limits"] = {"user_requests_per_minute": 50}
        cfg["assistants"] = [{"name": "helper", "model": "fake-model", "system_prompt": "Be brief."}]
        config_file(gw).write_text(yaml.safe_dump(cfg))

        done = sighup_and_wait(gw, workers)
        assert {line["msg"] for line in done} == {"configuration reloaded"}
        assert len({line["pid"] for line in done}) == workers  # every worker, each once
        assert gw.proc.poll() is None
        for _ in range(4 * workers):  # whichever worker answers
            assert "helper" in model_ids(gw, key)
            resp = chat(gw, key)
            assert resp.status_code == 200 and resp.headers["x-ratelimit-limit-requests"] == "50"
        helper = httpx.post(
            gw.base_url + "/chat/completions",
            json={"model": "helper", "messages": [{"role": "user", "content": "hi there"}]},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert helper.status_code == 200 and helper.json()["choices"][0]["message"]["content"] == "echo: hi there"

        config_file(gw).write_text("limits: {user_requests_per_minute: -1}\n")  # invalid: nothing changes
        failed = sighup_and_wait(gw, workers)
        assert {line["msg"] for line in failed} == {"configuration not reloaded: the running one stays"}
        assert failed[0]["fields"] == ["limits.user_requests_per_minute"]
        assert "helper" in model_ids(gw, key) and chat(gw, key).headers["x-ratelimit-limit-requests"] == "50"
    finally:
        stop(gw.proc)
    assert gw.proc.returncode == 0


def test_the_readme_documents_tour_works_for_a_user_key(tmp_path: Path, fake_a: Fake) -> None:
    cfg = base_config(fake_a)
    gw = start_gateway(tmp_path, cfg)  # running, no documents yet: the index is free for the CLI
    try:
        key = user_key(gw, "ada")
        handbook = tmp_path / "handbook"
        handbook.mkdir()
        (handbook / "leave.md").write_text("# Leave\n\nParental leave is sixteen weeks at full pay.\n")
        (handbook / "expenses.md").write_text("# Expenses\n\nTaxi receipts are refunded within ten days.\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATGATE_")}
        env["CHATGATE_DATA_DIR"] = str(gw.data_dir)
        ingest = subprocess.run(
            [CHATGATE, "ingest", "./handbook", "--collection", "hr", "--visibility", "shared"],
            env={**env, "CHATGATE_CONFIG": str(config_file(gw))},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ingest.returncode == 0, ingest.stderr + ingest.stdout
        cfg["assistants"] = [
            {
                "name": "hr-assistant",
                "model": "fake-model",
                "system_prompt": "You answer HR questions.",
                "collections": ["hr"],
            }
        ]
        config_file(gw).write_text(yaml.safe_dump(cfg))
        sighup_and_wait(gw, 1)
        resp = httpx.post(
            gw.url + "/api/v1/chat",
            json={"message": "How long is parental leave?", "model": "hr-assistant"},
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        )
        assert resp.status_code == 200, resp.text
        sources = resp.json()["sources"]
        assert sources and sources[0]["document"] == "handbook/leave.md"
        assert all(not s["document"].startswith("/") for s in sources)  # no server paths
    finally:
        stop(gw.proc)
