"""The real Open WebUI 0.12.4 in front of a real `chatgate serve` (and the fake upstream behind it).

Two deployments, each with its own gateway and a fresh Open WebUI: user info forwarded as plain headers, and as
Open WebUI's signed ``X-OpenWebUI-User-Jwt`` (``FORWARD_USER_INFO_HEADER_JWT_SECRET`` on Open WebUI,
``identity.openwebui_jwt_secret`` on chatgate). In each: the first account signed up (Ada, Open WebUI's admin)
adds a second (Bob), makes the model public, and both chat through ``POST /api/chat/completions`` as the web
page does (a Socket.IO session, message ids, Open WebUI's background tasks: title and tags after the first
turn, follow-ups after every turn) and as an API client does (the history in every request), streaming and not,
two turns per chat. Run with ``make test-clients`` (it builds Open WebUI's virtual environment first).

The chats are made once per deployment (by the first test that needs them); the tests after them run in file
order and some add requests of their own (other tasks, the limits check), so each states what it expects then.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from chatgate.sessions.manager import conversation_id
from chatgate.sessions.openwebui_prompts import OPENWEBUI_TEMPLATES
from tests.clients import openwebui as ow
from tests.conftest import FAKE, Fake, Gateway, free_port, start_gateway, stop, wait_http

pytestmark = pytest.mark.timeout(900)

CHATGATE = str(Path(sys.executable).with_name("chatgate"))
JWT_SECRET = "owui-forward-secret-" + "x" * 24  # HS256 wants 32 bytes or more
TURNS = ("Tell me about sourdough", "And how long should it proof?")


def start_fake(name: str) -> Fake:
    port = free_port()
    cmd = [sys.executable, str(FAKE), "--port", str(port), "--name", name, "--models", ow.MODEL, "--openwebui"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{port}/_stats/ping", proc=proc)
    return Fake(name, port, proc)


def forwarder_key(gw: Gateway) -> str:
    """A chatgate key with the ``trusted_forwarder`` scope, for Open WebUI's connection."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATGATE_")}
    env["CHATGATE_DATA_DIR"] = str(gw.data_dir)

    def cli(*args: str) -> str:
        out = subprocess.run([CHATGATE, *args], capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    cli("users", "create", "Open WebUI", "--id", "u-openwebui")
    out = cli("keys", "create", "--user", "u-openwebui", "--scope", "user", "--scope", "trusted_forwarder")
    return next(line.strip() for line in out.splitlines() if line.strip().startswith("cg-"))


@dataclass
class Deployment:
    mode: str
    fake: Fake
    gw: Gateway
    key: str
    owui: ow.OpenWebUI
    admin: ow.User
    bob: ow.User
    bob_saw_before_public: list[str]
    chats: dict[str, list[Any]] = field(default_factory=dict)  # Open WebUI user id -> their chats

    def as_user(self, user: ow.User) -> dict[str, str]:
        """Headers that make chatgate see ``user``, as Open WebUI sends them in this deployment."""
        if self.mode == "jwt":
            now = int(time.time())
            claims = {"sub": user.id, "email": user.email, "name": user.name, "role": user.role}
            token = jwt.encode({**claims, "iss": "open-webui", "iat": now, "exp": now + 300}, JWT_SECRET, "HS256")
            return {"Authorization": f"Bearer {self.key}", "X-OpenWebUI-User-Jwt": token}
        return {"Authorization": f"Bearer {self.key}", "X-OpenWebUI-User-Id": user.id}

    def chatgate(self, user: ow.User | None = None) -> httpx.Client:
        """chatgate's API as ``user`` sees it through the forwarder key; the admin key without a user."""
        headers = self.as_user(user) if user else {"Authorization": f"Bearer {self.gw.key}"}
        return httpx.Client(base_url=self.gw.url, headers=headers, timeout=30)

    def admin_get(self, path: str) -> Any:
        with self.chatgate() as c:
            r = c.get(path)
        assert r.status_code == 200, (path, r.text)
        return r.json()


@pytest.fixture(scope="module", params=["headers", "jwt"])
def deployment(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    mode = request.param
    tmp = tmp_path_factory.mktemp(f"owui-{mode}")
    fake = start_fake(f"owui-{mode}")
    config = {"upstreams": [{"name": "fake", "base_url": fake.base_url, "models": [ow.MODEL]}]}
    env = {"CHATGATE_IDENTITY__OPENWEBUI_JWT_SECRET": JWT_SECRET} if mode == "jwt" else {}
    gw = start_gateway(tmp / "gateway", config, env=env)
    owui: ow.OpenWebUI | None = None
    try:
        key = forwarder_key(gw)
        owui = ow.start(tmp, gw.base_url, key, jwt_secret=JWT_SECRET if mode == "jwt" else None)
        admin = ow.sign_up(owui, "Ada")
        bob = ow.add_user(admin, "Bob")
        before = [m["id"] for m in bob.get("/api/models")["data"]]
        ow.make_public(admin, ow.MODEL)
        yield Deployment(mode, fake, gw, key, owui, admin, bob, before)
    finally:
        if owui is not None:
            stop(owui.proc)
        stop(gw.proc)
        stop(fake.proc)


def _chats(dep: Deployment) -> dict[str, list[Any]]:
    """Each user's four chats, two turns each, run once per deployment: the web page's (streamed, and not) and
    an API client's (streamed, and not)."""
    if not dep.chats:
        for user in (dep.admin, dep.bob):
            chats: list[Any] = []
            with ow.web_page(user) as page:
                for stream in (True, False):
                    chat = ow.WebChat(page, stream=stream)
                    for text in TURNS:
                        assert chat.send(f"{user.name}: {text}").strip() == f"echo: {user.name}: {text}"
                    chats.append(chat)
            for stream in (True, False):
                direct = ow.DirectChat(user, stream=stream)
                for text in TURNS:
                    assert direct.send(f"{user.name}: {text}").strip() == f"echo: {user.name}: {text}"
                chats.append(direct)
            dep.chats[user.id] = chats
    return dep.chats


def _session(dep: Deployment, user: ow.User, chat_id: str) -> dict[str, Any]:
    sid = conversation_id(f"owui:{user.id}", chat_id)
    with dep.chatgate(user) as c:
        r = c.get(f"/api/v1/chat/sessions/{sid}", params={"limit": 500})
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_the_model_is_the_admins_until_made_public(deployment: Deployment) -> None:
    assert deployment.bob_saw_before_public == []
    assert [m["id"] for m in deployment.bob.get("/api/models")["data"]] == [ow.MODEL]


def test_open_webui_runs_its_tasks_through_chatgate(deployment: Deployment) -> None:
    """The background tasks really happen (so the tests below are about something): Open WebUI got a title, tags
    and follow-ups for its web-page chats from the model behind chatgate, and offered its tools on chat requests."""
    chats = _chats(deployment)
    for user in (deployment.admin, deployment.bob):
        for chat in chats[user.id][:2]:
            saved = chat.saved()
            assert saved["title"] == "Fake Title"
            assert {t.lower() for t in saved["meta"]["tags"]} == {"general", "testing"}
            replies = [m for m in saved["chat"]["history"]["messages"].values() if m["role"] == "assistant"]
            assert len(replies) == 2 and all(m["followUps"] == ["Tell me more", "Give an example"] for m in replies)
    stats = deployment.fake.stats("openwebui")
    assert stats["tasks"] == {"title": 4, "tags": 4, "follow_ups": 8}  # 2 users x 2 web chats
    web = [b for b in stats["bodies"] if not b["messages"][-1]["content"].startswith("### Task:") and b.get("tools")]
    assert len(web) == 8  # every web-page chat request offered Open WebUI's built-in tools; none called one


def test_each_open_webui_user_is_a_chatgate_user(deployment: Deployment) -> None:
    _chats(deployment)
    source = "openwebui_jwt" if deployment.mode == "jwt" else "forwarded_headers"
    for user in (deployment.admin, deployment.bob):
        page = deployment.admin_get(f"/admin/users/owui:{user.id}")
        assert page["user"]["name"] == user.name and page["user"]["email"] == user.email
        assert (page["user"]["role"], page["user"]["source"]) == (user.role, source)
        assert page["sessions"]["conversations"] == 4
    assert deployment.admin.role == "admin" and deployment.bob.role == "user"
    key_owner = deployment.admin_get("/admin/users/u-openwebui")  # the forwarder key's own user: nothing charged
    assert key_owner["sessions"]["conversations"] == 0 and key_owner["analytics"]["requests"] == 0


def test_each_chat_is_one_session_of_its_real_turns(deployment: Deployment) -> None:
    """A two-turn chat is 4 messages: its turns, never Open WebUI's task prompts (title, tags, follow-ups)."""
    chats = _chats(deployment)
    for user in (deployment.admin, deployment.bob):
        with deployment.chatgate(user) as c:
            listed = c.get("/api/v1/chat/sessions").json()["data"]
        mine = {conversation_id(f"owui:{user.id}", chat.chat_id) for chat in chats[user.id]}
        assert {s["session_id"] for s in listed} == mine and {s["source"] for s in listed} == {"openwebui"}
        for chat in chats[user.id]:
            session = _session(deployment, user, chat.chat_id)
            got = [(m["role"], str(m["content"]).strip()) for m in session["messages"]]
            want = []
            for text in TURNS:
                want += [("user", f"{user.name}: {text}"), ("assistant", f"echo: {user.name}: {text}")]
            assert got == want, (type(chat).__name__, got)
            assert session["message_count"] == 4
            assert session["request_counts"]["standard"] == 2 and session["request_counts"]["tool"] == 0


def test_task_requests_are_recorded_as_kind_task(deployment: Deployment) -> None:
    chats = _chats(deployment)
    for user in (deployment.admin, deployment.bob):
        summary = deployment.admin_get(f"/admin/analytics/users/owui:{user.id}")
        kinds = {kind: totals["requests"] for kind, totals in summary["by_kind"].items()}
        assert kinds == {"standard": 8, "task": 8}, kinds  # tools offered, never called: no `tool`
        for chat in chats[user.id][:2]:  # a web-page chat: its 2 turns, title, tags, 2 follow-ups
            sid = conversation_id(f"owui:{user.id}", chat.chat_id)
            per_chat = deployment.admin_get(f"/admin/analytics/chats/{sid}")
            assert {k: t["requests"] for k, t in per_chat["by_kind"].items()} == {"standard": 2, "task": 4}


def test_other_task_prompts_rendered_by_open_webui_are_tasks(deployment: Deployment) -> None:
    """Search queries, emoji (and the tasks above) as Open WebUI renders them, on a chat's id: kind task, and
    the chat's session unchanged."""
    chats = _chats(deployment)
    user, chat = deployment.bob, chats[deployment.bob.id][0]
    before = deployment.admin_get(f"/admin/analytics/users/owui:{user.id}")["by_kind"]
    history = [{"role": "user", "content": TURNS[0]}, {"role": "assistant", "content": "Flour, water, salt."}]
    user.post(
        "/api/v1/tasks/queries/completions",
        {"model": ow.MODEL, "messages": history, "type": "web_search", "chat_id": chat.chat_id},
    )
    user.post("/api/v1/tasks/emoji/completions", {"model": ow.MODEL, "prompt": "I love bread", "chat_id": chat.chat_id})
    after = deployment.admin_get(f"/admin/analytics/users/owui:{user.id}")["by_kind"]
    tasks_before, tasks_after = (kinds.get("task", {}).get("requests", 0) for kinds in (before, after))
    assert tasks_after == tasks_before + 2, after
    assert after["standard"]["requests"] == before["standard"]["requests"]
    assert _session(deployment, user, chat.chat_id)["message_count"] == 4


def test_limits_are_charged_to_the_open_webui_user(deployment: Deployment) -> None:
    _chats(deployment)
    admin, bob = deployment.admin, deployment.bob
    with deployment.chatgate() as c:
        for user in (admin, bob):
            assert c.post(f"/admin/users/owui:{user.id}/limits/reset").status_code == 200

    def used(user: ow.User) -> dict[str, int]:
        lines = deployment.admin_get(f"/admin/users/owui:{user.id}/limits")["limits"]
        return {line["scope"]: line["used"] for line in lines}

    assert used(admin)["user:requests_per_minute"] == used(bob)["user:requests_per_minute"] == 0
    ow.DirectChat(bob, stream=False).send("one more")
    assert used(bob)["user:requests_per_minute"] == 1 and used(bob)["user:tokens_per_hour"] > 0
    assert used(admin) == {"user:requests_per_minute": 0, "user:tokens_per_hour": 0}
    with ow.web_page(admin) as page:
        ow.WebChat(page).send("a new chat")  # the chat request, its title, tags and follow-ups: all the admin's
    assert used(admin)["user:requests_per_minute"] == 4 and used(bob)["user:requests_per_minute"] == 1


def test_a_users_sessions_are_invisible_to_the_other(deployment: Deployment) -> None:
    chats = _chats(deployment)
    admin, bob = deployment.admin, deployment.bob
    theirs = conversation_id(f"owui:{admin.id}", chats[admin.id][0].chat_id)
    with deployment.chatgate(bob) as c:
        assert theirs not in {s["session_id"] for s in c.get("/api/v1/chat/sessions").json()["data"]}
        for r in (c.get(f"/api/v1/chat/sessions/{theirs}"), c.delete(f"/api/v1/chat/sessions/{theirs}")):
            assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"
            assert TURNS[0] not in r.text
    with deployment.chatgate(admin) as c:
        assert c.get(f"/api/v1/chat/sessions/{theirs}").status_code == 200


def test_chatgate_knows_open_webuis_own_task_templates() -> None:
    """The built-in templates are the installed Open WebUI's, character for character."""
    where = subprocess.run(
        [str(ow.python()), "-c", "import importlib.util; print(importlib.util.find_spec('open_webui').origin)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    source = (Path(where).parent / "config.py").read_text(encoding="utf-8")
    defaults = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
        if node.targets[0].id.startswith("DEFAULT_") and node.targets[0].id.endswith("_PROMPT_TEMPLATE")
    }
    for name, template in OPENWEBUI_TEMPLATES.items():
        assert defaults[f"DEFAULT_{name.upper()}_PROMPT_TEMPLATE"] == template, name


def test_the_web_page_in_headless_chromium(deployment: Deployment, tmp_path: Path) -> None:
    """Open WebUI's own page in Debian's Chromium: Bob signs in, sends a message, sees the reply rendered; the
    message reached chatgate as Bob's."""
    from playwright.sync_api import expect, sync_playwright

    bob, text = deployment.bob, f"Hello from the browser {deployment.mode}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=ow.CHROMIUM, args=ow.BROWSER_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(deployment.owui.url + "/auth")
            page.fill("#email", bob.email)
            page.fill("#password", ow.PASSWORD)
            page.click("button[type=submit]")
            prompt = page.locator("#chat-input")
            expect(prompt).to_be_visible(timeout=60_000)
            page.keyboard.press("Escape")  # a first sign-in may open the release notes over the page
            prompt.click()
            page.keyboard.type(text)
            page.keyboard.press("Enter")
            try:
                expect(page.get_by_text(f"echo: {text}")).to_be_visible(timeout=60_000)
            finally:
                page.screenshot(path=str(tmp_path / "openwebui.png"))
        finally:
            browser.close()
    with deployment.chatgate(bob) as c:
        listed = c.get("/api/v1/chat/sessions", params={"limit": 500}).json()["data"]
        contents = [
            m["content"]
            for s in listed
            for m in c.get(f"/api/v1/chat/sessions/{s['session_id']}", params={"limit": 500}).json()["messages"]
        ]
    assert text in contents
