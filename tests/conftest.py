"""Shared fixtures: the fake upstream and the real gateway, each as a real process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
FAKE = ROOT / "tests" / "fake_upstream.py"
ADMIN_KEY = "cg-test-admin-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(url)


def stop(proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Fake:
    name: str
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stats(self, scenario: str) -> dict[str, Any]:
        import json

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_stats/{scenario}", timeout=5) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]


def start_fake(
    name: str,
    models: str = "fake-model",
    port: int | None = None,
    api_key: str | None = None,
    max_model_len: int | None = None,
    answers: Path | None = None,
) -> Fake:
    port = port or free_port()
    cmd = [sys.executable, str(FAKE), "--port", str(port), "--name", name, "--models", models]
    if api_key:
        cmd += ["--api-key", api_key]
    if max_model_len:
        cmd += ["--max-model-len", str(max_model_len)]
    if answers:
        cmd += ["--answers", str(answers)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{port}/_stats/ping", proc=proc)
    return Fake(name, port, proc)


@pytest.fixture(scope="session")
def fake_a() -> Iterator[Fake]:
    fake = start_fake("a", "fake-model,fake-other", api_key="upstream-secret-a")
    yield fake
    stop(fake.proc)


@pytest.fixture(scope="session")
def fake_b() -> Iterator[Fake]:
    fake = start_fake("b", "fake-model")
    yield fake
    stop(fake.proc)


@dataclass
class Gateway:
    port: int
    proc: subprocess.Popen[bytes]
    data_dir: Path
    log_path: Path
    key: str = ADMIN_KEY
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def logs(self) -> str:
        return self.log_path.read_text()


def start_gateway(
    tmp: Path,
    config: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
    ready_timeout: float = 30.0,
) -> Gateway:
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    data_dir = tmp / "data"
    cmd = [str(Path(sys.executable).with_name("chatgate")), "serve", "--port", str(port), *(args or [])]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CHATGATE_")}
    full_env.update(
        {"CHATGATE_DATA_DIR": str(data_dir), "CHATGATE_ADMIN_KEY": ADMIN_KEY, "CHATGATE_LOG__FORMAT": "json"}
    )
    if config is not None:
        cfg = tmp / "chatgate.yaml"
        cfg.write_text(yaml.safe_dump(config))
        cmd += ["--config", str(cfg)]
    full_env.update(env or {})
    log_path = tmp / "gateway.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=tmp)
    gw = Gateway(port, proc, data_dir, log_path, key=full_env.get("CHATGATE_ADMIN_KEY", ""))
    try:
        wait_http(gw.url + "/health", timeout=ready_timeout, proc=proc)
    except Exception:
        stop(proc)
        raise RuntimeError("gateway did not start:\n" + gw.logs()) from None
    return gw


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []

    def make(config: dict[str, Any] | None = None, **kw: Any) -> Gateway:
        gw = start_gateway(tmp_path / f"gw{len(started)}", config, **kw)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        stop(gw.proc)


def fast_retry_config(*upstreams: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A config with quick backoff so retry tests finish fast."""
    return {"upstreams": list(upstreams), "retry": {"max_retries": 3, "base": 0.01, "cap": 0.2}, **extra}


def user_key(gw: Gateway, user_id: str) -> str:
    """An ordinary (``user`` scope) key for a new user, made with the CLI as an operator would."""
    cli = str(Path(sys.executable).with_name("chatgate"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATGATE_")} | {
        "CHATGATE_DATA_DIR": str(gw.data_dir)
    }
    subprocess.run([cli, "users", "create", user_id, "--id", user_id], check=True, env=env, capture_output=True)
    out = subprocess.run(
        [cli, "keys", "create", "--user", user_id], check=True, env=env, capture_output=True, text=True
    ).stdout
    return next(word for word in out.split() if word.startswith("cg-"))


WINDOW = 300
SUMMARY_KEY = "summary-secret"


@pytest.fixture(scope="module")
def fake_window() -> Iterator[Fake]:
    """Context tests: serves ``ctx-model`` and ``ctx-other`` with ``max_model_len`` 300, and refuses longer requests."""
    fake = start_fake("w", "ctx-model,ctx-other", max_model_len=WINDOW)
    yield fake
    stop(fake.proc)


@pytest.fixture(scope="module")
def fake_plain() -> Iterator[Fake]:
    """States no window; wants an API key (the summariser's own endpoint in some tests)."""
    fake = start_fake("p", "plain-model", api_key=SUMMARY_KEY)
    yield fake
    stop(fake.proc)


@pytest.fixture(scope="module")
def collector() -> Iterator[Any]:
    """An OTLP/HTTP trace receiver (tests/observe/otlp.py)."""
    from tests.observe.otlp import Collector

    c = Collector()
    yield c
    c.close()
