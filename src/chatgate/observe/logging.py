"""Structured logs: JSON lines for machines, readable lines on a terminal.

Every record carries its ``extra`` fields. The access log is one record per request, written
by ``api/middleware.py`` once the response (streamed or not) has ended.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

import orjson

from chatgate.settings import LogSettings

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's ANSI copy of the message
}
ACCESS_LOGGER = "chatgate.access"


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


def configure(settings: LogSettings, stream: TextIO | None = None) -> None:
    """Install our handler on the root logger (idempotent) and quiet uvicorn's own access log."""
    stream = stream or sys.stderr
    fmt = settings.format
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
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
