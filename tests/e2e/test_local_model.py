"""End to end: `chatgate serve` with no upstream starts the bundled Gemma 3 270M and answers through it."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.conftest import Gateway, start_gateway, stop

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def gw(tmp_path_factory) -> Iterator[Gateway]:
    gateway = start_gateway(
        tmp_path_factory.mktemp("local"),
        ready_timeout=180,
        env={"CHATGATE_LOCAL__N_CTX": "2048", "CHATGATE_LOCAL__DEFAULT_MAX_TOKENS": "24"},
    )
    yield gateway
    stop(gateway.proc)


def client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=gw.key, max_retries=0, timeout=120)


def test_local_model_is_listed_under_both_names(gw):
    ids = {m.id for m in client(gw).models.list()}
    assert {"local", "gemma-3-270m"} <= ids


def test_non_streaming_answer(gw):
    resp = client(gw).chat.completions.create(
        model="local", messages=[{"role": "user", "content": "The capital of France is"}], max_tokens=12, temperature=0
    )
    choice = resp.choices[0]
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in {"stop", "length"}
    assert resp.model == "gemma-3-270m"
    # Gemma's own template: the prompt is wrapped in turn markers, so it costs more than its words
    assert resp.usage.prompt_tokens >= 10 and 0 < resp.usage.completion_tokens <= 12


def test_streaming_answer_under_its_own_name(gw):
    stream = client(gw).chat.completions.create(
        model="gemma-3-270m",
        messages=[{"role": "user", "content": "Say something."}],
        max_tokens=12,
        temperature=0,
        stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-1].choices[0].finish_reason in {"stop", "length"}


def test_default_max_tokens_bounds_requests_that_set_none(gw):
    resp = client(gw).chat.completions.create(model="local", messages=[{"role": "user", "content": "Hi"}])
    assert 0 < resp.usage.completion_tokens <= 24


def test_the_model_runs_with_the_gemma3_template(gw):
    log = (gw.data_dir / "logs" / "local-model.log").read_text()
    assert "gemma3.block_count" in log  # it is the server's log of this model
    assert "Using fallback chat format" not in log  # llama.cpp did not fall back to a Llama-2 prompt


def test_shutdown_stops_the_model_server(tmp_path):
    import os
    import signal
    import subprocess

    gateway = start_gateway(tmp_path, ready_timeout=180, env={"CHATGATE_LOCAL__N_CTX": "1024"})
    children = subprocess.run(
        ["ps", "-o", "pid=,args=", "--ppid", str(gateway.proc.pid)], capture_output=True, text=True
    ).stdout
    model_pids = [int(line.split()[0]) for line in children.splitlines() if "chatgate.upstream.llama_server" in line]
    assert len(model_pids) == 1
    gateway.proc.send_signal(signal.SIGTERM)
    assert gateway.proc.wait(30) == 0  # drained, stopped the model, exited cleanly
    try:
        os.kill(model_pids[0], 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive
