"""The managed local model: which model and command, Gemma 3's template, the child's lifecycle, its timeouts."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from chatgate.settings import LocalModelSettings, Settings
from chatgate.upstream.llama_server import CHAT_FORMAT, gemma3_template, register_gemma3
from chatgate.upstream.local import LocalModel, bundled_model_path, default_threads, free_port, model_file
from chatgate.upstream.models import DEFAULT, PACKAGED

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
    assert path.parent == tmp_path / "models" and path.stat().st_size == PACKAGED[DEFAULT].size
    path.write_bytes(b"half-written")  # an interrupted start leaves a bad file: it is rebuilt
    assert bundled_model_path(tmp_path).stat().st_size == PACKAGED[DEFAULT].size


def test_which_file_and_chat_format_are_served(tmp_path, monkeypatch):
    # Packaged models other than the default are extras, not installed everywhere: where their file would be.
    monkeypatch.setattr("chatgate.upstream.local.gguf_path", lambda m, data_dir: data_dir / "models" / m.file)
    gemma = LocalModelSettings(model="gemma-3-270m")
    path, chat_format = model_file(gemma, tmp_path)
    assert path == tmp_path / "models" / "gemma-3-270m-q4_k_m.gguf" and chat_format == CHAT_FORMAT
    assert gemma.served_name == "gemma-3-270m"
    for name in ("qwen2.5-coder-1.5b-instruct", "smollm2-135m-instruct", DEFAULT):  # their GGUFs carry a template
        assert model_file(LocalModelSettings(model=name), tmp_path) == (tmp_path / "models" / PACKAGED[name].file, None)
    own = LocalModelSettings(model_path=tmp_path / "My-Model.Q8_0.gguf")
    assert model_file(own, tmp_path) == (tmp_path / "My-Model.Q8_0.gguf", None)
    assert own.served_name == "My-Model.Q8_0"  # the file's name, unless set
    assert LocalModelSettings(served_name="mine").served_name == "mine"
    assert LocalModelSettings().served_name == DEFAULT


def fake_server(model: LocalModel) -> list[str]:
    """The fake upstream stands in for llama.cpp's server: the supervisor is the real one."""
    model.port = free_port()
    return [sys.executable, str(FAKE), "--port", str(model.port), "--models", DEFAULT]


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


def test_command_is_the_stock_server_with_chatgates_choices(tmp_path):
    model = LocalModel(LocalModelSettings(n_threads=2), tmp_path)
    cmd = model.command(Path("/m.gguf"), CHAT_FORMAT)
    assert cmd[1:3] == ["-m", "chatgate.upstream.llama_server"]
    assert cmd[cmd.index("--chat_format") + 1] == "gemma3"
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--n_threads") + 1] == cmd[cmd.index("--n_threads_batch") + 1] == "2"
    assert cmd[cmd.index("--interrupt_requests") + 1] == "false"  # a second request must not cut off a stream
    assert cmd[cmd.index("--model_alias") + 1] == DEFAULT
    own = LocalModel(LocalModelSettings(), tmp_path).command(Path("/own.gguf"), None)
    assert "--chat_format" not in own
    assert own[own.index("--n_threads") + 1] == str(default_threads())
    assert default_threads() == max(1, len(os.sched_getaffinity(0)) // 2)


def test_the_server_accepts_the_command_line(tmp_path):
    """llama-cpp-python's own argument parser takes every option chatgate passes."""
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    cmd = LocalModel(LocalModelSettings(), tmp_path).command(Path("/m.gguf"), CHAT_FORMAT)
    options = {a[2:] for a in cmd if a.startswith("--")}
    assert options <= set(ModelSettings.model_fields) | set(ServerSettings.model_fields)


def test_the_local_upstream_has_no_first_byte_timeout_of_its_own():
    s = Settings(local={"base_url": "http://127.0.0.1:9/v1"}, timeouts={"first_byte": 60, "total": 600})
    (local,) = s.all_upstreams()
    assert local.name == "local" and local.models == [DEFAULT]
    assert local.first_byte_timeout == 600 and local.timeout is None  # only the total applies


async def test_a_slow_local_answer_is_waited_for_and_generated_once(fake_b):
    """llama.cpp sends a whole answer's headers after the answer: slower than ``timeouts.first_byte`` is normal."""
    import uuid

    import orjson

    from chatgate.app import build_upstream
    from chatgate.errors import UpstreamTimeout
    from chatgate.upstream.client import CallTrace

    timeouts = {"first_byte": 0.3, "total": 20}
    scenario = uuid.uuid4().hex
    payload = {"model": "local", "messages": [{"role": "user", "content": "hi"}], "fake": {"id": scenario, "delay": 1}}
    settings = Settings(local={"base_url": fake_b.base_url, "served_name": "fake-model"}, timeouts=timeouts)
    client = build_upstream(settings)
    try:
        answer = orjson.loads(await client.call("/chat/completions", payload, None, CallTrace()))
    finally:
        await client.close()
    assert answer["choices"][0]["message"]["content"] == "echo: hi"
    assert fake_b.stats(scenario)["attempts"] == 1  # asked once: not cut off, not generated again

    # The same slow answer from a configured upstream is cut off by the first-byte timeout (and, with no other
    # upstream to try, not asked again: retry.first_byte_timeout "elsewhere").
    other = uuid.uuid4().hex
    payload["model"], payload["fake"] = "fake-model", {"id": other, "delay": 1}
    settings = Settings(
        upstreams=[{"name": "b", "base_url": fake_b.base_url, "models": ["fake-model"]}], timeouts=timeouts
    )
    settings.retry.max_retries = 1
    client = build_upstream(settings)
    try:
        with pytest.raises(UpstreamTimeout):
            await client.call("/chat/completions", payload, None, CallTrace())
    finally:
        await client.close()
    assert fake_b.stats(other)["attempts"] == 1
