"""The local model server's output, as chatgate log records (logger ``chatgate.local_model``).

Both sides of it. In the child (``llama_server.py``), ``ggml_lines`` replaces llama.cpp's log callback
with one that writes each message as a JSON line carrying llama.cpp's own level (its warnings are
otherwise plain text with no mark of being warnings). In chatgate, ``OutputRelay`` reads everything the
child writes to stdout and stderr, copies it to ``logs/local-model.log`` as it is, and turns each line
into a record at the right level: llama.cpp's JSON lines by their level, uvicorn's ``WARNING:`` and
``ERROR:`` lines by theirs, a Python traceback into one error line with its last line (frames are not
logged), any other line at debug. Paths under the data directory and the Python installation are cut
down to names. Nothing the child writes reaches chatgate's log unformatted.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import logging
import re
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("chatgate.local_model")

# enum ggml_log_level in the ggml.h llama-cpp-python installs (its _logger.py comment has an older order);
# 5 (CONT): the previous message goes on.
GGML_LEVELS = {0: "none", 1: "debug", 2: "info", 3: "warn", 4: "error"}
_BY_GGML = {"warn": logging.WARNING, "error": logging.ERROR}
_BY_NAME = {"WARNING": logging.WARNING, "ERROR": logging.ERROR, "CRITICAL": logging.ERROR}
_UVICORN = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL):\s+(.*)$")
_PY_WARNING = re.compile(r"\b[A-Z]\w*Warning: ")
_CONTROL = re.compile(r"\x1b\[[0-9;]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")  # ANSI colours, stray control bytes


def ggml_callback(emit: Callable[[str, str], None]) -> Callable[..., None]:
    """Install a llama.cpp log callback (process-wide) that calls ``emit(level, line)`` once per line.

    llama.cpp keeps only a C pointer to it: the callback must live as long as the process may log, which
    is why the installers below are cached (the cache holds it) rather than called per object."""
    import llama_cpp  # first: importing it installs llama-cpp-python's own callback, which this one replaces

    pending: list[str] = []
    level = ["info"]

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def callback(ggml_level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
        if ggml_level != 5 and not pending:
            level[0] = GGML_LEVELS.get(ggml_level, "info")
        pending.append(text.decode("utf-8", "replace"))
        joined = "".join(pending)
        if not joined.endswith("\n"):
            return
        pending.clear()
        for line in joined.splitlines():
            if line.strip():
                emit(level[0], line)

    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    return callback


@functools.cache
def ggml_lines() -> Callable[..., None]:
    """Child side: llama.cpp's messages on stderr as JSON lines with their level (``OutputRelay`` reads them)."""
    stream = sys.stderr

    def emit(level: str, line: str) -> None:
        stream.write(json.dumps({"ggml": level, "msg": line}) + "\n")

    return ggml_callback(emit)


@functools.cache
def ggml_to_logging() -> Callable[..., None]:
    """In chatgate's own processes (the tokenizer loads a GGUF's vocabulary with llama.cpp): its messages as
    records of ``chatgate.llama_cpp`` instead of llama-cpp-python's raw lines on stderr. Only errors are more
    than debug: a vocabulary-only load warns about a context it never uses."""
    logger = logging.getLogger("chatgate.llama_cpp")

    def emit(level: str, line: str) -> None:
        to = logging.WARNING if level == "error" else logging.DEBUG
        if logger.isEnabledFor(to):
            logger.log(to, line, extra={"from": "llama.cpp"})

    return ggml_callback(emit)


class OutputRelay:
    """chatgate side: one line of the child's output at a time -> a log record (or none)."""

    def __init__(self, replace: Iterable[tuple[str, str]] = ()) -> None:
        # Longest first, so that a path inside another one is cut as a whole.
        self.replace = sorted(((a, b) for a, b in replace if a), key=lambda p: -len(p[0]))
        self._in_traceback = False

    def feed(self, raw: str) -> tuple[int, str] | None:
        """The level and text to log for one line of output, or None for a line not logged."""
        line = _CONTROL.sub("", raw).rstrip()
        if not line.strip():
            return None
        if self._in_traceback:
            if line[0].isspace() or line.startswith(("During handling", "The above exception", "Traceback")):
                return None  # frames and source lines: never logged
            self._in_traceback = False
            return logging.ERROR, self._scrub(line)
        if line.startswith("Traceback (most recent call last)"):
            self._in_traceback = True
            return None
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and "ggml" in entry:
                    text = str(entry.get("msg", "")).strip()
                    return (_BY_GGML.get(str(entry["ggml"]), logging.DEBUG), self._scrub(text)) if text else None
        match = _UVICORN.match(line)
        if match:
            return _BY_NAME.get(match.group(1), logging.DEBUG), self._scrub(match.group(2))
        if _PY_WARNING.search(line):
            return logging.WARNING, self._scrub(line)
        return logging.DEBUG, self._scrub(line)

    def _scrub(self, text: str) -> str:
        for path, name in self.replace:
            text = text.replace(path, name)
        return text


def scrubbed_paths(model_path: Path, data_dir: Path) -> list[tuple[str, str]]:
    """Paths the child prints that the log shows by name only."""
    return [
        (str(model_path), model_path.name),
        (str(data_dir.resolve()), "<data_dir>"),
        (str(data_dir), "<data_dir>"),
        (sys.prefix, "<python>"),
        (sys.base_prefix, "<python>"),
    ]


def relay(stream: IO[bytes], copy: IO[bytes], relay: OutputRelay, extra: dict[str, Any]) -> threading.Thread:
    """Start a thread that reads ``stream`` to its end: each line copied to ``copy`` and logged."""

    def run() -> None:
        with stream:
            for raw in iter(stream.readline, b""):
                with contextlib.suppress(OSError, ValueError):
                    copy.write(raw)
                    copy.flush()
                try:
                    record = relay.feed(raw.decode("utf-8", "replace"))
                    if record is not None and log.isEnabledFor(record[0]):
                        log.log(record[0], record[1], extra=extra)
                except Exception:  # a bad line must not stop the relay: the child would block on a full pipe
                    log.exception("local model output could not be logged")
        with contextlib.suppress(OSError):
            copy.close()

    thread = threading.Thread(target=run, name="local-model-output", daemon=True)
    thread.start()
    return thread
