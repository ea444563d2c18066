"""The real Open WebUI in front of a real gateway: started offline, driven as its web page drives it.

Open WebUI lives in its own virtual environment (``make test-clients`` builds it; ``OPENWEBUI_VENV`` names it,
default ``.venv-clients/open-webui``). Each start gets a fresh data directory: Open WebUI writes the settings
it was started with into its database on first start, and would keep them.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import socketio

from tests.conftest import ROOT, free_port, stop, wait_http

VERSION = "0.12.4"
MODEL = "fake-model"
PASSWORD = "Correct-horse-battery-9"

# What keeps Open WebUI from reaching out at start or later (its env.py and config.py; its start log shows no
# download with these): no update check, no Hugging Face hub, no model auto-updates (the embedding model is
# never loaded with the `openai` engine), no Ollama probing, no telemetry, no plugin requirements installed.
OFFLINE_ENV = {
    "OFFLINE_MODE": "true",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "RAG_EMBEDDING_MODEL_AUTO_UPDATE": "false",
    "RAG_RERANKING_MODEL_AUTO_UPDATE": "false",
    "WHISPER_MODEL_AUTO_UPDATE": "false",
    "ENABLE_VERSION_UPDATE_CHECK": "false",
    "ENABLE_OLLAMA_API": "false",
    "RAG_EMBEDDING_ENGINE": "openai",
    "ANONYMIZED_TELEMETRY": "false",
    "DO_NOT_TRACK": "true",
    "SCARF_NO_ANALYTICS": "true",
}


def venv() -> Path:
    return Path(os.environ.get("OPENWEBUI_VENV") or ROOT / ".venv-clients" / "open-webui")


def python() -> Path:
    """Open WebUI's interpreter; missing means `make test-clients` has not built its environment."""
    exe = venv() / "bin" / "python"
    if not exe.exists():
        raise RuntimeError(f"Open WebUI {VERSION} is not installed at {venv()}: run `make test-clients`")
    return exe


@dataclass
class OpenWebUI:
    port: int
    proc: subprocess.Popen[bytes]
    data_dir: Path
    log_path: Path
    jwt_secret: str | None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


def start(
    tmp: Path, base_url: str, api_key: str, *, jwt_secret: str | None = None, timeout: float = 240.0
) -> OpenWebUI:
    """Open WebUI on 127.0.0.1 with one OpenAI connection (``base_url`` ends in ``/v1``) and user forwarding on."""
    port = free_port()
    data_dir = tmp / "openwebui-data"
    data_dir.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATGATE_", "VIRTUAL_ENV", "PYTHONPATH"))}
    env.update(OFFLINE_ENV)
    env.update(
        {
            "DATA_DIR": str(data_dir),
            "WEBUI_SECRET_KEY": uuid.uuid4().hex,
            "CORS_ALLOW_ORIGIN": f"http://127.0.0.1:{port}",
            "ENABLE_OPENAI_API": "true",
            "OPENAI_API_BASE_URL": base_url,
            "OPENAI_API_KEY": api_key,
            "ENABLE_FORWARD_USER_INFO_HEADERS": "true",
            "DEFAULT_MODELS": MODEL,  # a new chat on the web page starts with it selected
        }
    )
    if jwt_secret:
        env["FORWARD_USER_INFO_HEADER_JWT_SECRET"] = jwt_secret
    log_path = tmp / "openwebui.log"
    exe = python().with_name("open-webui")
    with open(log_path, "wb") as out:
        cmd = [str(exe), "serve", "--host", "127.0.0.1", "--port", str(port)]
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    owui = OpenWebUI(port, proc, data_dir, log_path, jwt_secret)
    try:
        wait_http(owui.url + "/health", timeout=timeout, proc=proc)
    except Exception:
        stop(proc)
        raise RuntimeError("Open WebUI did not start:\n" + owui.logs()[-5000:]) from None
    return owui


BROWSER_FLAGS = [  # as this machine's Chromium needs them: no sandbox as root, no GPU, no calls home
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
CHROMIUM = "/usr/bin/chromium"  # Debian's (`make browser-deps`); Playwright never downloads a browser here


@dataclass
class User:
    """One Open WebUI account, signed in."""

    owui: OpenWebUI
    id: str
    name: str
    email: str
    role: str
    token: str

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.owui.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=60)

    def get(self, path: str) -> Any:
        with self.http() as c:
            r = c.get(path)
        assert r.status_code == 200, (path, r.status_code, r.text)
        return r.json()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        with self.http() as c:
            r = c.post(path, json=body)
        assert r.status_code == 200, (path, r.status_code, r.text)
        return r.json()


def sign_up(owui: OpenWebUI, name: str) -> User:
    """The first account signed up is Open WebUI's admin."""
    email = f"{name.lower()}@example.com"
    with httpx.Client(base_url=owui.url, timeout=60) as c:
        r = c.post("/api/v1/auths/signup", json={"name": name, "email": email, "password": PASSWORD})
    assert r.status_code == 200, r.text
    data = r.json()
    return User(owui, data["id"], data["name"], data["email"], data["role"], data["token"])


def add_user(admin: User, name: str) -> User:
    """A user added by the admin (Admin Panel, Users, Add User), then signed in."""
    email = f"{name.lower()}@example.com"
    admin.post("/api/v1/auths/add", {"name": name, "email": email, "password": PASSWORD, "role": "user"})
    with httpx.Client(base_url=admin.owui.url, timeout=60) as c:
        r = c.post("/api/v1/auths/signin", json={"email": email, "password": PASSWORD})
    assert r.status_code == 200, r.text
    data = r.json()
    return User(admin.owui, data["id"], data["name"], data["email"], data["role"], data["token"])


def make_public(admin: User, model: str) -> None:
    """Models from a connection are the admin's alone until given read access for every user."""
    grants = [{"principal_type": "user", "principal_id": "*", "permission": "read"}]
    admin.post("/api/v1/models/model/access/update", {"id": model, "name": model, "access_grants": grants})


@dataclass
class WebPage:
    """What the chat page holds: a Socket.IO session (its id goes with every chat request) and the events on it."""

    user: User
    sio: socketio.Client
    model_item: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def sid(self) -> str:
        sid = self.sio.get_sid()
        assert sid
        return sid

    def wait_for(self, what: str, found: Callable[[list[dict[str, Any]]], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not found(list(self.events)):
            if time.monotonic() > deadline:
                types = [(e.get("message_id"), (e.get("data") or {}).get("type")) for e in self.events]
                raise AssertionError(f"no {what} within {timeout} s; events: {types}\n" + self.user.owui.logs()[-4000:])
            time.sleep(0.05)


@contextmanager
def web_page(user: User) -> Iterator[WebPage]:
    models = {m["id"]: m for m in user.get("/api/models")["data"]}
    assert MODEL in models, f"{user.name} cannot see {MODEL}: {sorted(models)}"
    sio = socketio.Client(reconnection=False)
    page = WebPage(user, sio, models[MODEL])
    sio.on("events", lambda data: page.events.append(data))
    sio.connect(user.owui.url, socketio_path="/ws/socket.io", auth={"token": user.token}, transports=["websocket"])
    sio.emit("user-join", {"auth": {"token": user.token}})
    try:
        yield page
    finally:
        sio.disconnect()


def _events(events: list[dict[str, Any]], message_id: str, kind: str) -> list[dict[str, Any]]:
    """The payloads (``data.data``) of the events of one type about one message."""
    out = []
    for e in events:
        data = e.get("data") or {}
        if e.get("message_id") == message_id and data.get("type") == kind:
            out.append(data.get("data") or {})
    return out


def _done(events: list[dict[str, Any]], message_id: str) -> dict[str, Any] | None:
    """The last ``chat:completion`` event: ``done``, with the reply's whole text."""
    found = [d for d in _events(events, message_id, "chat:completion") if d.get("done")]
    return found[-1] if found else None


@dataclass
class WebChat:
    """A chat as the web page runs it: Open WebUI keeps the history; each request sends the new user message,
    the Socket.IO session, the message ids and the background tasks (title and tags on the first turn,
    follow-ups on every turn); the answer arrives as events."""

    page: WebPage
    stream: bool = True
    chat_id: str | None = None
    last_assistant: str | None = None
    replies: list[str] = field(default_factory=list)

    def send(self, text: str) -> str:
        user = self.page.user
        user_msg, reply_id = str(uuid.uuid4()), str(uuid.uuid4())
        first = self.chat_id is None
        tasks = {"follow_up_generation": True}
        if first:
            tasks = {"title_generation": True, "tags_generation": True, **tasks}
        body: dict[str, Any] = {
            "stream": self.stream,
            "model": MODEL,
            "params": {},
            "tool_servers": [],
            "features": {"voice": False, "image_generation": False, "code_interpreter": False, "web_search": False},
            "variables": {"{{USER_NAME}}": user.name, "{{USER_EMAIL}}": user.email},
            "model_item": self.page.model_item,
            "session_id": self.page.sid,
            "id": reply_id,
            "parent_id": self.last_assistant,
            "user_message": {
                "id": user_msg,
                "parentId": self.last_assistant,
                "childrenIds": [],
                "role": "user",
                "content": text,
                "timestamp": int(time.time()),
                "models": [MODEL],
            },
            "background_tasks": tasks,
        }
        if self.chat_id is not None:
            body["chat_id"] = self.chat_id
        started = user.post("/api/chat/completions", body)
        assert started["status"] is True and started["task_ids"], started
        self.chat_id = started["chat_id"]

        self.page.wait_for("answer", lambda ev: _done(ev, reply_id) is not None)
        self.page.wait_for("follow-ups", lambda ev: bool(_events(ev, reply_id, "chat:message:follow_ups")))
        if first:
            self.page.wait_for("title", lambda ev: any((e.get("data") or {}).get("type") == "chat:title" for e in ev))
            self.page.wait_for("tags", lambda ev: any((e.get("data") or {}).get("type") == "chat:tags" for e in ev))
        stored = self.saved()["chat"]["history"]["messages"][reply_id]  # what the page shows, as Open WebUI saved it
        assert stored["done"] is True, stored
        reply = str(stored["content"])
        self.last_assistant = reply_id
        self.replies.append(reply)
        return reply

    def saved(self) -> dict[str, Any]:
        """The chat as Open WebUI keeps it (title, tags, history)."""
        return dict(self.page.user.get(f"/api/v1/chats/{self.chat_id}"))


@dataclass
class DirectChat:
    """A chat as an API client runs it through Open WebUI: the whole history in every request, no Socket.IO
    session, the answer in the response; a temporary chat id (``temporary:...``, not saved by Open WebUI)."""

    user: User
    stream: bool
    chat_id: str = field(default_factory=lambda: f"temporary:{uuid.uuid4()}")
    messages: list[dict[str, Any]] = field(default_factory=list)

    def send(self, text: str) -> str:
        self.messages.append({"role": "user", "content": text})
        body = {"model": MODEL, "stream": self.stream, "messages": self.messages, "chat_id": self.chat_id}
        with self.user.http() as c:
            if self.stream:
                with c.stream("POST", "/api/chat/completions", json=body) as r:
                    assert r.status_code == 200, r.read()
                    chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
                reply = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks if ch.get("choices"))
            else:
                r = c.post("/api/chat/completions", json=body)
                assert r.status_code == 200, r.text
                reply = r.json()["choices"][0]["message"]["content"]
        self.messages.append({"role": "assistant", "content": reply})
        return reply
