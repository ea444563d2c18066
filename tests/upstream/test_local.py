"""The managed local model: Gemma 3's template, and the child process lifecycle (health wait, restart, stop)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from chatgate.settings import LocalModelSettings
from chatgate.upstream.llama_server import CHAT_FORMAT, gemma3_template, register_gemma3
from chatgate.upstream.local import LocalModel, bundled_model_path, free_port

FAKE = Path(__file__).resolve().parent.parent / "fake_upstream.py"


def render(messages: list[dict]) -> str:
    from llama_cpp import llama_chat_format

    formatter = llama_chat_format.Jinja2ChatFormatter(
        template=gemma3_template(), eos_token="<end_of_turn>", bos_token="<bos>"
    )
    return formatter(messages=messages).prompt


def test_gemma3_template_folds_system_into_first_turn():
    prompt = render(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": " Hi "},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": [{"type": "text", "text": "Again"}]},
        ]
    )
    assert prompt == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nAgain<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_gemma3_template_refuses_broken_alternation():
    with pytest.raises(ValueError, match="alternate"):
        render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_gemma3_format_is_registered_for_llama_cpp():
    from llama_cpp import llama_chat_format

    register_gemma3()
    handler = llama_chat_format.LlamaChatCompletionHandlerRegistry().get_chat_completion_handler_by_name(CHAT_FORMAT)
    assert callable(handler)


def test_bundled_model_is_assembled_into_the_data_dir(tmp_path):
    path = bundled_model_path(tmp_path)
    assert path.parent == tmp_path / "models" and path.stat().st_size > 200_000_000
    path.write_bytes(b"half-written")  # an interrupted start leaves a bad file: it is rebuilt
    assert bundled_model_path(tmp_path).stat().st_size > 200_000_000


def fake_server(model: LocalModel) -> list[str]:
    """The fake upstream stands in for llama.cpp's server: the supervisor is the real one."""
    model.port = free_port()
    return [sys.executable, str(FAKE), "--port", str(model.port), "--models", "gemma-3-270m"]


def test_child_is_health_waited_restarted_and_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr("chatgate.upstream.local.RESTART_BACKOFF", (0.1,))
    model = LocalModel(LocalModelSettings(startup_timeout=20), tmp_path)
    model.launch(fake_server(model))
    try:
        assert model.healthy()
        first = model.pid
        os.kill(first, signal.SIGKILL)  # crash
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (model.restarts and model.pid != first and model.healthy()):
            time.sleep(0.1)
        assert model.restarts == 1 and model.pid != first and model.healthy()
    finally:
        model.stop()
    assert not model.healthy()
    assert model._proc is not None and model._proc.poll() is not None


def test_start_fails_clearly_when_the_child_dies(tmp_path):
    model = LocalModel(LocalModelSettings(), tmp_path)
    model.port = free_port()
    with pytest.raises(RuntimeError, match="exited with code 3"):
        model.launch([sys.executable, "-c", "raise SystemExit(3)"])
    model.stop()


def test_command_uses_gemma3_format_only_for_the_bundled_model(tmp_path):
    model = LocalModel(LocalModelSettings(n_threads=2), tmp_path)
    bundled = model.command(Path("/m.gguf"), bundled=True)
    assert bundled[1:3] == ["-m", "chatgate.upstream.llama_server"]
    assert bundled[bundled.index("--chat_format") + 1] == "gemma3"
    assert bundled[bundled.index("--host") + 1] == "127.0.0.1"
    assert bundled[bundled.index("--n_threads") + 1] == "2"
    assert "--chat_format" not in model.command(Path("/own.gguf"), bundled=False)
