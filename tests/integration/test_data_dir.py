"""The data directory is its owner's only (a real `chatgate serve`, an upload, the CLI), and the CLI's
key and user commands take what an operator has at hand."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import Fake, Gateway, start_gateway, stop, user_key

CHATGATE = str(Path(sys.executable).with_name("chatgate"))


def cli(gw: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATGATE_")} | {
        "CHATGATE_DATA_DIR": str(gw.data_dir)
    }
    return subprocess.run([CHATGATE, *args], capture_output=True, text=True, env=env, timeout=60)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def rag_config(fake: Fake, **extra: Any) -> dict[str, Any]:
    return {
        "upstreams": [{"name": "a", "base_url": fake.base_url, "api_key": "upstream-secret-a"}],
        "rag": {
            "embeddings": {
                "backend": "openai",
                "base_url": fake.base_url,
                "api_key": "upstream-secret-a",
                "model": "fake-word-hash",
            },
            "retrieval": {"job_poll_interval": 0.2},
        },
        **extra,
    }


def upload(gw: Gateway) -> None:
    auth = {"Authorization": f"Bearer {gw.key}"}
    made = httpx.post(f"{gw.url}/api/v1/collections", json={"name": "hr", "visibility": "admin"}, headers=auth)
    assert made.status_code == 201, made.text
    cid = made.json()["id"]
    files = [("files", ("policy.md", b"# Leave\n\nParental leave is twenty six weeks at full pay.\n"))]
    job = httpx.post(f"{gw.url}/api/v1/collections/{cid}/documents", files=files, headers=auth).json()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = httpx.get(f"{gw.url}/api/v1/jobs/{job['job_id']}", headers=auth).json()
        if state["status"] in ("done", "failed"):
            assert state["status"] == "done", state
            return
        time.sleep(0.1)
    raise AssertionError("the upload job did not finish")


def open_to_others(root: Path) -> list[str]:
    """Everything under ``root`` (itself included) that its group or others may read, write or enter."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = os.lstat(path).st_mode
        if not stat.S_ISLNK(mode) and stat.S_IMODE(mode) & 0o077:
            found.append(f"{path.relative_to(root.parent)} {stat.filemode(mode)}")
    return found


def test_everything_under_the_data_dir_is_private(gateway_factory, fake_a: Fake):
    gw = gateway_factory(rag_config(fake_a))
    upload(gw)
    key = user_key(gw, "carol")  # the CLI writes the store too
    chat = httpx.post(
        gw.base_url + "/chat/completions",
        json={"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert chat.status_code == 200
    names = {p.name for p in gw.data_dir.rglob("*")}
    # uploads are kept in the store until their job ends, so no upload folder is written
    assert {"chatgate.db", "chatgate.db-wal", "chatgate.db-shm", "chroma.sqlite3"} <= names
    assert stat.S_IMODE(gw.data_dir.stat().st_mode) == 0o700
    assert open_to_others(gw.data_dir) == []


def test_an_existing_data_dir_is_tightened(tmp_path: Path, fake_a: Fake):
    data = tmp_path / "gw" / "data"
    (data / "old").mkdir(parents=True)
    os.chmod(data, 0o755)
    os.chmod(data / "old", 0o755)
    for name in ("chatgate.db", "old/notes.txt"):
        (data / name).write_bytes(b"")
        os.chmod(data / name, 0o644)
    gw = start_gateway(tmp_path / "gw", rag_config(fake_a))
    try:
        assert open_to_others(data) == []
        assert stat.S_IMODE((data / "chatgate.db").stat().st_mode) == 0o600
        os.chmod(data, 0o755)  # opened again by hand: any CLI command closes it
        assert cli(gw, "users", "list").returncode == 0
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
    finally:
        stop(gw.proc)


def test_keys_revoke_takes_the_key_itself_its_id_or_its_prefix(tmp_path: Path, fake_a: Fake):
    gw = start_gateway(tmp_path, rag_config(fake_a, identity={"key_cache_ttl": 0}))
    try:
        listed = {}
        for user in ("dave", "erin", "frank"):
            key = user_key(gw, user)
            assert httpx.get(gw.base_url + "/models", headers=auth(key)).status_code == 200
            (row,) = json.loads(cli(gw, "keys", "list", "--user", user, "--json").stdout)
            listed[user] = (key, row["id"], row["prefix"])
        for user, given in (("dave", listed["dave"][0]), ("erin", listed["erin"][1]), ("frank", listed["frank"][2])):
            out = cli(gw, "keys", "revoke", given)
            assert out.returncode == 0, out.stderr
            assert listed[user][0] not in out.stdout + out.stderr  # the key is never printed back
            assert httpx.get(gw.base_url + "/models", headers=auth(listed[user][0])).status_code == 401
        missing = cli(gw, "keys", "revoke", "cg-not-a-key-at-all-0000000000000000000000")
        assert missing.returncode != 0 and "no single key" in missing.stderr
    finally:
        stop(gw.proc)


def test_user_ids_that_would_clash_with_derived_ids_are_refused(tmp_path: Path, fake_a: Fake):
    gw = start_gateway(tmp_path, rag_config(fake_a))
    try:
        for bad in ("team/alice", "nul\u0001", ""):
            out = cli(gw, "users", "create", "x", "--id", bad)
            assert out.returncode != 0 and "printable" in out.stderr, bad
        assert cli(gw, "users", "create", "x", "--id", "team-alice").returncode == 0
    finally:
        stop(gw.proc)
