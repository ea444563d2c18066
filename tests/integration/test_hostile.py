"""Hostile input through a real `chatgate serve`: one caller's bad requests never reach the upstream nor
open the circuit for everyone, admin routes do not exist for other keys whatever the method, and ids
with control characters (NUL could merge two users' conversations) are refused wherever they come from."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Fake, Gateway, fast_retry_config, start_gateway, stop, user_key

MESSAGES = [{"role": "user", "content": "hello"}]


def h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat(gw: Gateway, key: str, **body: Any) -> httpx.Response:
    return httpx.post(
        gw.base_url + "/chat/completions",
        json={"model": "fake-model", "messages": MESSAGES, **body},
        headers=h(key),
        timeout=30,
    )


def upstream(fake: Fake) -> dict[str, Any]:
    return {"name": fake.name, "base_url": fake.base_url, "api_key": "upstream-secret-a"}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, fake_a: Fake) -> Iterator[Gateway]:
    """Default breaker settings, quick retries (four attempts a request)."""
    g = start_gateway(tmp_path_factory.mktemp("hostile"), fast_retry_config(upstream(fake_a)))
    yield g
    stop(g.proc)


# ---- 1. a bad request is refused before the call ------------------------------------------------------------

BAD = [
    ({"tools": [1]}, "tools[0]"),
    ({"tools": [{"type": "function"}]}, "tools[0].function"),
    ({"tools": [{"type": "function", "function": {"name": ""}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}, "tools[0].function.parameters"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {}}}, "tool_choice.function.name"),
    ({"messages": [{"role": "user", "content": [1]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "picture"}]}]}, "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0].text"),
    (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"link": "x"}}]}]},
        "messages[0].content[0].image_url.url",
    ),
    ({"messages": [{"role": "user", "content": {"text": "hi"}}]}, "messages[0].content"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "tool", "content": "42"}]}, "messages[0].tool_call_id"),
    (
        {"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "c", "function": {"name": 1}}]}]},
        "messages[0].tool_calls[0].function.name",
    ),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"max_tokens": -1}, "max_tokens"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"temperature": 3}, "temperature"),
    ({"temperature": -0.5}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"n": 0}, "n"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"),
    ({"top_logprobs": 21}, "top_logprobs"),
    ({"logit_bias": {"50256": 101}}, "logit_bias.50256"),
    ({"stop": ["a", 1]}, "stop[1]"),
    ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
]


@pytest.mark.parametrize(("patch", "field"), BAD)
def test_malformed_fields_are_refused_before_the_call(gw: Gateway, fake_a: Fake, patch: dict[str, Any], field: str):
    s = uuid.uuid4().hex
    resp = chat(gw, gw.key, fake={"id": s}, **patch)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["code"] == "BAD_REQUEST" and err["details"]["field"] == field
    assert fake_a.stats(s)["attempts"] == 0  # never sent


def test_well_formed_requests_pass_through_unchanged(gw: Gateway, fake_a: Fake):
    s = uuid.uuid4().hex
    body = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": "data:,"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
            {"role": "ipython", "content": "a role OpenAI does not define"},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        "temperature": 2,
        "top_p": 0,
        "n": 1,
        "max_tokens": 5,
        "logit_bias": {"50256": -100},
        "a_field_chatgate_does_not_know": {"kept": True},
    }
    resp = chat(gw, gw.key, fake={"id": s}, **body)
    assert resp.status_code == 200, resp.text
    assert fake_a.stats(s)["bodies"][0]["a_field_chatgate_does_not_know"] == {"kept": True}


def test_bad_embeddings_input_is_refused_before_the_call(gw: Gateway, fake_a: Fake):
    for given, field in ([[{}], "input[0]"], [["a", 2], "input[1]"], [[[1, 2], []], "input[1]"], [[True], "input[0]"]):
        s = uuid.uuid4().hex
        resp = httpx.post(
            gw.base_url + "/embeddings",
            json={"model": "fake-model", "input": given, "fake": {"id": s}},
            headers=h(gw.key),
        )
        assert resp.status_code == 400 and resp.json()["error"]["details"]["field"] == field, resp.text
        assert fake_a.stats(s)["attempts"] == 0


def test_one_callers_bad_requests_do_not_open_the_circuit_for_everyone(gw: Gateway, fake_a: Fake):
    mallory, alice = user_key(gw, "mallory"), user_key(gw, "alice")
    # What was observed: two requests the upstream answered 500 (`tools: [1]`, now refused before the call),
    # retried 4 times each, opened the circuit: every user got 503 for 30 s.
    for _ in range(2):
        s = uuid.uuid4().hex
        assert chat(gw, mallory, fake={"id": s, "fail": [500] * 10}).status_code == 502
        assert fake_a.stats(s)["attempts"] == 4
    resp = chat(gw, alice)
    assert resp.status_code == 200, resp.text
    ready = httpx.get(gw.url + "/ready", headers=h(gw.key)).json()
    assert ready["upstreams"]["a"]["circuit"] == "closed"


def test_a_real_outage_still_opens_the_circuit(gateway_factory, fake_a: Fake):
    config = fast_retry_config(upstream(fake_a), breaker={"minimum_calls": 4, "failure_rate": 0.5})
    gw = gateway_factory(config)
    for _ in range(4):
        assert chat(gw, gw.key, fake={"id": uuid.uuid4().hex, "fail": [503] * 10}).status_code == 502
    s = uuid.uuid4().hex
    resp = chat(gw, gw.key, fake={"id": s})
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "UPSTREAM_UNAVAILABLE"
    assert int(resp.headers["retry-after"]) >= 1
    assert fake_a.stats(s)["attempts"] == 0


# ---- 3. admin routes do not exist for others, whatever the method ------------------------------------------

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")


def admin_routes(tmp: Path) -> list[tuple[str, frozenset[str]]]:
    """Every admin route of the app (its path with sample parameters) and the methods it answers."""
    from starlette.routing import Route

    from chatgate.app import create_app
    from chatgate.settings import Settings

    app = create_app(Settings(data_dir=tmp, admin_key="k"))  # only its route table is read
    methods: dict[str, set[str]] = {}
    for route in app.routes:
        if isinstance(route, Route) and (route.path.startswith("/admin/") or route.path == "/metrics"):
            path = route.path.replace("{user_id:path}", "erin").replace("{name}", "x").replace("{chat_id}", "c")
            methods.setdefault(path, set()).update(route.methods or ())
    return [(path, frozenset(m)) for path, m in sorted(methods.items())]


def test_wrong_method_on_an_admin_route_is_the_unknown_route_404(gw: Gateway, tmp_path: Path):
    erin = h(user_key(gw, "erin"))
    unknown = httpx.request("PATCH", gw.url + "/no/such/route", headers=erin)
    assert unknown.status_code == 404
    cases = 0
    for path, allowed in admin_routes(tmp_path):
        for method in METHODS:
            if method in allowed:
                continue
            cases += 1
            resp = httpx.request(method, gw.url + path, headers=erin)
            assert resp.status_code == 404, (method, path, resp.status_code)
            assert "allow" not in resp.headers
            err = resp.json()["error"]
            assert err == {
                **unknown.json()["error"],
                "message": f"No route {method} {path}.",
                "details": {"path": path},
            }
    assert cases >= 21
    own = httpx.request("PUT", gw.url + "/admin/metrics", headers=h(gw.key))
    assert own.status_code == 405 and set(own.headers["allow"].split(", ")) == {"GET", "HEAD"}  # admins learn why


# ---- 4. ids: printable, length-capped, wherever they come from ---------------------------------------------


@pytest.mark.parametrize(
    ("body", "headers", "field"),
    [
        ({"metadata": {"user_id": "alice\u0000c1", "chat_id": "c2"}}, {}, "metadata.user_id"),
        ({"metadata": {"user_id": "alice", "chat_id": "c1\u0000c2"}}, {}, "metadata.chat_id"),
        ({"metadata": {"session_id": "s\u0001"}}, {}, "metadata.session_id"),
        ({"metadata": {"message_id": "m\u0085"}}, {}, "metadata.message_id"),
        ({"user": "bob\u0000"}, {}, "user"),
        ({"user": "b" * 257}, {}, "user"),
        ({}, {"X-OpenWebUI-Chat-Id": "c\x85"}, "x-openwebui-chat-id"),
        ({}, {"X-OpenWebUI-User-Id": "u\x9b"}, "x-openwebui-user-id"),
    ],
)
def test_ids_with_control_characters_are_refused(gw: Gateway, fake_a: Fake, body, headers, field):
    s = uuid.uuid4().hex
    resp = httpx.post(
        gw.base_url + "/chat/completions",
        json={"model": "fake-model", "messages": MESSAGES, "fake": {"id": s}, **body},
        headers={**h(gw.key), **{k: v.encode("latin-1") for k, v in headers.items()}},  # the admin key forwards
    )
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["details"]["field"] == field
    assert fake_a.stats(s)["attempts"] == 0


def test_nul_cannot_merge_two_users_conversations(gw: Gateway):
    """``user alice, chat "c1\\0c2"`` and ``user "alice\\0c1", chat "c2"`` were the same conversation."""
    first = chat(gw, gw.key, metadata={"user_id": "alice", "chat_id": "c1\u0000c2"})
    second = chat(gw, gw.key, metadata={"user_id": "alice\u0000c1", "chat_id": "c2"})
    assert (first.status_code, second.status_code) == (400, 400)
    page = httpx.get(gw.url + "/admin/users/meta:alice", headers=h(gw.key))
    assert page.status_code == 404  # nothing of either was stored
