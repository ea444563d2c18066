"""Structured logs: JSON lines for machines, readable lines on a terminal.

Every record carries its ``extra`` fields. The access log (one line per request, written by
``api/middleware.py`` once the response, streamed or not, has ended) is the one log line on the
hot path, so in JSON mode it skips the logging machinery: ``AccessLog`` serialises the line
with orjson into a buffer that is written out every ``FLUSH_INTERVAL`` seconds, when it grows
past ``FLUSH_BYTES``, and at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any, BinaryIO, TextIO

import orjson

from chatgate.settings import LogSettings

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's ANSI copy of the message
}
ACCESS_LOGGER = "chatgate.access"
FLUSH_INTERVAL = 0.1
FLUSH_BYTES = 64 * 1024

# The logging module's documented switches for information we never log (see its HOWTO, "Optimization").
logging.logThreads = False
logging.logProcesses = False
logging.logMultiprocessing = False


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_extras(record))
        if record.exc_info and record.exc_info[0] is not None:
            # The exception's type only: messages and tracebacks may carry secrets or user data.
            entry["exc_type"] = record.exc_info[0].__name__
        return orjson.dumps(entry, default=str).decode()


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items() if v is not None)
        line = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if record.exc_info and record.exc_info[0] is not None:
            line += f" [{record.exc_info[0].__name__}]"
        return f"{line}  {extras}" if extras else line


def resolved_format(settings: LogSettings, stream: TextIO) -> str:
    if settings.format == "auto":
        return "console" if stream.isatty() else "json"
    return settings.format


def configure(settings: LogSettings, stream: TextIO | None = None) -> None:
    """Install our handler on the root logger (idempotent) and quiet uvicorn's own access log."""
    stream = stream or sys.stderr
    fmt = resolved_format(settings, stream)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(ConsoleFormatter() if fmt == "console" else JSONFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_chatgate", False):
            root.removeHandler(old)
    handler._chatgate = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(settings.level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("alembic").setLevel(max(root.level, logging.WARNING))  # one line per migration step otherwise


class AccessLog:
    """The per-request log line. JSON: buffered straight to the stream. Console: through ``logging``."""

    def __init__(self, settings: LogSettings, stream: TextIO | None = None, raw: BinaryIO | None = None) -> None:
        stream = stream or sys.stderr
        self._logger = logging.getLogger(ACCESS_LOGGER)
        self.enabled = self._logger.isEnabledFor(logging.INFO)
        self._raw = raw if raw is not None else (stream.buffer if resolved_format(settings, stream) == "json" else None)
        self._buf = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self._second, self._stamp = -1, ""

    def write(self, fields: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self._raw is None:
            self._logger.info("request", extra=fields)
            return
        now = time.time()
        second = int(now)
        if second != self._second:  # the timestamp's seconds part, formatted once a second
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        entry = {
            "ts": f"{self._stamp}.{int(now % 1 * 1000):03d}Z",
            "level": "info",
            "logger": ACCESS_LOGGER,
            "msg": "request",
            **fields,
        }
        self._buf += orjson.dumps(entry, default=str)
        self._buf += b"\n"
        if len(self._buf) >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self.flush)
            except RuntimeError:  # no loop (tests, shutdown): write now
                self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._buf and self._raw is not None:
            try:
                self._raw.write(self._buf)
                self._raw.flush()
            except (OSError, ValueError):
                pass  # a closed or broken log stream must not break requests
            self._buf.clear()
