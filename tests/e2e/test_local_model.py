"""End to end: `chatgate serve` with no upstream starts the bundled model, and it chats through every door.

Against the real model on the CPU: few requests, small ``max_tokens``, ``temperature: 0`` where the door
takes one."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import openai
import pytest

from chatgate.rag.ground import build_context, with_system
from chatgate.rag.retrieve import Hit
from chatgate.settings import DEFAULT_GROUNDING_TEMPLATE
from chatgate.upstream.models import DEFAULT
from tests.conftest import Gateway, start_gateway, stop

pytestmark = pytest.mark.e2e

DEFAULT_MAX_TOKENS = 64


@pytest.fixture(scope="module")
def gw(tmp_path_factory) -> Iterator[Gateway]:
    gateway = start_gateway(
        tmp_path_factory.mktemp("local"),
        ready_timeout=300,
        env={"CHATGATE_LOCAL__N_CTX": "2048", "CHATGATE_LOCAL__DEFAULT_MAX_TOKENS": str(DEFAULT_MAX_TOKENS)},
    )
    yield gateway
    stop(gateway.proc)


def client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=gw.key, max_retries=0, timeout=300)


def has_word(text: str, word: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text.lower()) is not None


def test_local_model_is_listed_under_both_names(gw):
    ids = {m.id for m in client(gw).models.list()}
    assert {"local", DEFAULT} <= ids


def test_it_answers_a_question_and_stops(gw):
    resp = client(gw).chat.completions.create(
        model="local", messages=[{"role": "user", "content": "What is 2+2?"}], max_tokens=32, temperature=0
    )
    choice = resp.choices[0]
    assert has_word(choice.message.content, "4"), choice.message.content
    assert choice.finish_reason == "stop"  # on its own, before max_tokens
    assert resp.model == DEFAULT
    # the model's own chat template wraps the question, so the prompt costs more than its words
    assert resp.usage.prompt_tokens >= 10 and 0 < resp.usage.completion_tokens < 32


def test_a_greeting_through_the_chat_api_is_brief(gw):
    resp = httpx.post(
        gw.url + "/api/v1/chat", json={"message": "Hello!"}, headers={"Authorization": f"Bearer {gw.key}"}, timeout=300
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert any(has_word(body["response"], w) for w in ("hello", "hi", "hey", "help", "assist")), body["response"]
    assert body["usage"]["completion_tokens"] < DEFAULT_MAX_TOKENS  # it stopped on its own, with room to spare


def test_streaming_answer_under_its_own_name(gw):
    stream = client(gw).chat.completions.create(
        model=DEFAULT,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
        temperature=0,
        stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert has_word(text, "paris"), text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_a_second_request_waits_its_turn_and_cuts_off_no_stream(gw):
    """llama-cpp-python's server would end the stream being written when another request comes in."""
    from concurrent.futures import ThreadPoolExecutor

    def ask(question: str) -> tuple[str, str | None]:
        stream = client(gw).chat.completions.create(
            model="local", messages=[{"role": "user", "content": question}], max_tokens=24, temperature=0, stream=True
        )
        chunks = [c for c in stream if c.choices]
        return "".join(c.choices[0].delta.content or "" for c in chunks), chunks[-1].choices[0].finish_reason

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(ask, "Count from one to twenty in words.")
        second = pool.submit(ask, "What is 7 times 8?")
        (text_1, finish_1), (text_2, finish_2) = first.result(), second.result()
    assert finish_1 in {"stop", "length"} and text_1.strip()  # ended by the model or max_tokens, not cut off
    assert finish_2 == "stop" and has_word(text_2, "56")


def test_a_grounded_question_is_answered_from_its_source(gw):
    """The system message as chatgate's ground step writes it: the grounding template, numbered sources."""
    hits = [
        Hit(1, "d1", "c", "manual.md", "Orion X200 manual", "Orion X200 headphones come with a warranty of 30 "
            "months from the date of purchase.", None, ("Warranty",), 0, 0.9),
        Hit(2, "d1", "c", "manual.md", "Orion X200 manual", "The Orion X200 battery lasts 41 hours on a single "
            "charge.", None, ("Battery",), 1, 0.5),
    ]  # fmt: skip
    context, used = build_context(hits, DEFAULT_GROUNDING_TEMPLATE, lambda t: len(t.split()) * 2, 2000)
    assert context is not None and len(used) == 2
    question = [{"role": "user", "content": "How long is the warranty on the Orion X200 headphones?"}]
    resp = client(gw).chat.completions.create(
        model="local", messages=with_system(question, context, before=False), max_tokens=48, temperature=0
    )
    assert has_word(resp.choices[0].message.content, "30"), resp.choices[0].message.content


def test_default_max_tokens_bounds_requests_that_set_none(gw):
    resp = client(gw).chat.completions.create(
        model="local", messages=[{"role": "user", "content": "Write a long story about a dragon and a knight."}]
    )
    assert 0 < resp.usage.completion_tokens <= DEFAULT_MAX_TOKENS


def test_the_model_runs_with_the_chat_template_its_gguf_carries(gw):
    log = (gw.data_dir / "logs" / "local-model.log").read_text()
    assert "qwen2.block_count" in log  # it is the server's output for this model
    assert "Using gguf chat template" in log and "Using fallback chat format" not in log


def test_the_gateway_log_is_json_lines_only(gw):
    lines = [line for line in gw.logs().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # raw text from llama.cpp (either process) would fail here
    assert all(isinstance(e, dict) and {"ts", "level", "logger", "msg"} <= e.keys() for e in entries)
    assert any(e["logger"] == "chatgate.local_model" and e["msg"] == "local model ready" for e in entries)


def test_shutdown_stops_the_model_server(tmp_path):
    import os
    import signal
    import subprocess

    gateway = start_gateway(tmp_path, ready_timeout=300, env={"CHATGATE_LOCAL__N_CTX": "1024"})
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
