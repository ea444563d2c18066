"""Log formats: JSON lines (buffered access log), readable console lines, nothing secret."""

from __future__ import annotations

import asyncio
import io
import json
import logging

from chatgate.observe.logging import FLUSH_BYTES, AccessLog, ConsoleFormatter, JSONFormatter, configure
from chatgate.settings import LogSettings


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def record(msg: str = "hello", **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("chatgate.x", logging.WARNING, __file__, 1, msg, None, None)
    rec.__dict__.update(extra)
    return rec


def test_json_formatter_carries_extras_and_only_the_exception_type():
    try:
        raise ValueError("password=hunter2")
    except ValueError:
        import sys

        rec = record("failed", request_id="r1", upstream="u")
        rec.exc_info = sys.exc_info()
    line = json.loads(JSONFormatter().format(rec))
    assert line["msg"] == "failed" and line["level"] == "warning" and line["logger"] == "chatgate.x"
    assert line["request_id"] == "r1" and line["upstream"] == "u" and line["exc_type"] == "ValueError"
    assert "hunter2" not in json.dumps(line) and "Traceback" not in json.dumps(line)


def test_console_formatter_is_one_readable_line():
    text = ConsoleFormatter().format(record("started", port=8080))
    assert "WARNING" in text and "chatgate.x: started" in text and "port=8080" in text and "\n" not in text


def test_auto_format_follows_the_terminal():
    tty, pipe = TTY(), io.StringIO()
    try:
        configure(LogSettings(), tty)
        logging.getLogger("chatgate.t").warning("to a terminal")
        configure(LogSettings(), pipe)
        logging.getLogger("chatgate.t").warning("to a pipe")
    finally:
        configure(LogSettings(format="json"))
    assert not tty.getvalue().startswith("{") and "to a terminal" in tty.getvalue()
    assert json.loads(pipe.getvalue().splitlines()[-1])["msg"] == "to a pipe"


async def test_access_log_buffers_then_flushes_on_timer_and_size():
    raw = io.BytesIO()
    access = AccessLog(LogSettings(format="json"), raw=raw)
    access.write({"request_id": "a", "status": 200})
    assert raw.getvalue() == b""  # buffered
    await asyncio.sleep(0.2)
    assert json.loads(raw.getvalue())["request_id"] == "a"
    big = {"request_id": "b", "pad": "x" * FLUSH_BYTES}
    access.write(big)
    assert raw.getvalue().count(b"\n") == 2  # over the size limit: written at once
    access.flush()


def test_access_log_on_a_terminal_goes_through_logging(caplog):
    access = AccessLog(LogSettings(format="console"), stream=TTY())
    with caplog.at_level(logging.INFO, logger="chatgate.access"):
        access.enabled = True
        access.write({"request_id": "c", "status": 404})
    assert any(getattr(r, "request_id", None) == "c" for r in caplog.records)


def test_access_log_off_below_info():
    logging.getLogger("chatgate.access").setLevel(logging.WARNING)
    try:
        raw = io.BytesIO()
        access = AccessLog(LogSettings(format="json"), raw=raw)
        access.write({"request_id": "d"})
        access.flush()
        assert raw.getvalue() == b""
    finally:
        logging.getLogger("chatgate.access").setLevel(logging.NOTSET)
