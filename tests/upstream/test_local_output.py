"""The local model server's output as chatgate log records: levels, tracebacks, paths, and a real child."""

from __future__ import annotations

import io
import json
import logging
import sys
import textwrap
import time
from pathlib import Path

from chatgate.observe.logging import JSONFormatter
from chatgate.settings import LocalModelSettings
from chatgate.upstream.local import LocalModel, free_port
from chatgate.upstream.local_output import OutputRelay, ggml_to_logging, relay, scrubbed_paths

FAKE = Path(__file__).resolve().parent.parent / "fake_upstream.py"


def feed_all(relay: OutputRelay, text: str) -> list[tuple[int, str]]:
    return [r for line in text.splitlines() if (r := relay.feed(line + "\n")) is not None]


def test_levels_come_from_llama_cpp_uvicorn_and_python_warnings():
    relay = OutputRelay()
    out = feed_all(
        relay,
        "\n".join(
            [
                json.dumps({"ggml": "warn", "msg": "llama_context: n_ctx_per_seq (2048) < n_ctx_train (32768)"}),
                json.dumps({"ggml": "error", "msg": "llama_model_load: error loading model"}),
                json.dumps({"ggml": "info", "msg": "print_info: arch = qwen2"}),
                'INFO:     127.0.0.1:5000 - "POST /v1/chat/completions HTTP/1.1" 200 OK',
                "WARNING:  Invalid HTTP request received.",
                "ERROR:    Exception in ASGI application",
                "x.py:3: UserWarning: something odd",
                "Llama.generate: 24 prefix-match hit, remaining 13 prompt tokens to eval",
                "",
                "   ",
            ]
        ),
    )
    assert out == [
        (logging.WARNING, "llama_context: n_ctx_per_seq (2048) < n_ctx_train (32768)"),
        (logging.ERROR, "llama_model_load: error loading model"),
        (logging.DEBUG, "print_info: arch = qwen2"),
        (logging.DEBUG, '127.0.0.1:5000 - "POST /v1/chat/completions HTTP/1.1" 200 OK'),
        (logging.WARNING, "Invalid HTTP request received."),
        (logging.ERROR, "Exception in ASGI application"),
        (logging.WARNING, "x.py:3: UserWarning: something odd"),
        (logging.DEBUG, "Llama.generate: 24 prefix-match hit, remaining 13 prompt tokens to eval"),
    ]


def test_a_traceback_becomes_one_error_line_without_its_frames():
    trace = textwrap.dedent(
        """\
        Traceback (most recent call last):
          File "/srv/app/llama_cpp/server/app.py", line 12, in create
            raise ValueError(msg)
        ValueError: Requested tokens (9000) exceed context window of 8192
        next line
        """
    )
    assert feed_all(OutputRelay(), trace) == [
        (logging.ERROR, "ValueError: Requested tokens (9000) exceed context window of 8192"),
        (logging.DEBUG, "next line"),
    ]


def test_paths_are_cut_to_names_and_control_bytes_dropped(tmp_path):
    model = tmp_path / "data" / "models" / "m.gguf"
    relay = OutputRelay(scrubbed_paths(model, tmp_path / "data"))
    line = json.dumps({"ggml": "info", "msg": f"loaded meta data from {model} (version GGUF V3)"})
    assert relay.feed(line) == (logging.DEBUG, "loaded meta data from m.gguf (version GGUF V3)")
    assert relay.feed(f"\x1b[32mINFO\x1b[0m:     cache in {tmp_path / 'data'}/cache\x07") == (
        logging.DEBUG,
        "cache in <data_dir>/cache",
    )
    assert relay.feed(f"{sys.prefix}/lib/x.py:1: RuntimeWarning: w") == (
        logging.WARNING,
        "<python>/lib/x.py:1: RuntimeWarning: w",
    )


def test_the_relay_thread_copies_raw_lines_and_logs_them(caplog):
    stream = io.BytesIO(b'{"ggml": "warn", "msg": "careful"}\nplain \xff line\n')
    copy = io.BytesIO()
    copy.close = lambda: None  # type: ignore[method-assign]  # keep it readable after the relay ends
    with caplog.at_level(logging.DEBUG, logger="chatgate.local_model"):
        relay(stream, copy, OutputRelay(), {"from": "model_server"}).join(5)
    assert copy.getvalue() == b'{"ggml": "warn", "msg": "careful"}\nplain \xff line\n'
    got = [(r.name, r.levelno, r.getMessage(), r.__dict__["from"]) for r in caplog.records]
    assert got == [
        ("chatgate.local_model", logging.WARNING, "careful", "model_server"),
        ("chatgate.local_model", logging.DEBUG, "plain \ufffd line", "model_server"),
    ]


CHILD = """
import json, runpy, sys
print(json.dumps({"ggml": "warn", "msg": "llama_context: a warning from llama.cpp"}), file=sys.stderr, flush=True)
print("WARNING:  a warning from uvicorn", flush=True)
print("Traceback (most recent call last):\\n  File \\"x.py\\", line 1\\nKeyError: 'k'", file=sys.stderr, flush=True)
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_supervised_child_s_output_reaches_the_json_log(tmp_path, caplog):
    model = LocalModel(LocalModelSettings(startup_timeout=20), tmp_path)
    model.port = free_port()
    cmd = [sys.executable, "-c", CHILD, str(FAKE), "--port", str(model.port), "--models", "m"]
    with caplog.at_level(logging.DEBUG, logger="chatgate.local_model"):
        model.launch(cmd)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any("KeyError" in r.getMessage() for r in caplog.records):
            time.sleep(0.05)
        model.stop()
    lines = [JSONFormatter().format(r) for r in caplog.records if r.__dict__.get("from") == "model_server"]
    entries = [json.loads(line) for line in lines]  # every record renders as one JSON object
    assert {"level": "warning", "msg": "llama_context: a warning from llama.cpp"}.items() <= entries[0].items()
    assert any(e["level"] == "warning" and e["msg"] == "a warning from uvicorn" for e in entries)
    assert any(e["level"] == "error" and e["msg"] == "KeyError: 'k'" for e in entries)
    assert not any('File "x.py"' in e["msg"] for e in entries)
    assert all(e["logger"] == "chatgate.local_model" for e in entries)
    raw = (tmp_path / "logs" / "local-model.log").read_text()
    assert 'File "x.py", line 1' in raw  # the whole output stays in the model server's own file


def test_llama_cpp_in_chatgate_s_own_process_logs_through_logging(tmp_path, caplog):
    import llama_cpp

    from chatgate.upstream.models import DEFAULT, PACKAGED, gguf_path

    assert ggml_to_logging() is ggml_to_logging()  # installed once per process, and kept
    with caplog.at_level(logging.DEBUG, logger="chatgate.llama_cpp"):
        llama = llama_cpp.Llama(model_path=str(gguf_path(PACKAGED[DEFAULT], tmp_path)), vocab_only=True, verbose=True)
        llama.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "chatgate.llama_cpp"]
    assert any(m.startswith("llama_model_loader:") for m in messages)
    assert all("\n" not in m for m in messages)
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name == "chatgate.llama_cpp")
