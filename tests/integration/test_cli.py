"""The command line as a user runs it: version, config show, and the bootstrap admin key."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from chatgate import __version__
from tests.conftest import free_port, start_gateway, stop, wait_http

CHATGATE = str(Path(sys.executable).with_name("chatgate"))


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CHATGATE_")}
    return subprocess.run(
        [CHATGATE, *args], capture_output=True, text=True, env={**base, **(env or {})}, cwd=cwd, timeout=60
    )


def test_version():
    out = run("version")
    assert out.returncode == 0 and out.stdout.strip() == f"chatgate {__version__}"


def test_config_show_masks_secrets_and_merges_sources(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "upstreams": [
                    {
                        "name": "o",
                        "base_url": "https://api.example/v1",
                        "api_key": "sk-very-secret",
                        "models": ["gpt-x"],
                    }
                ]
            }
        )
    )
    out = run(
        "config",
        "show",
        "--config",
        str(cfg),
        env={"CHATGATE_ADMIN_KEY": "admin-secret", "CHATGATE_RETRY__CAP": "3"},
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    shown = yaml.safe_load(out.stdout)
    assert shown["upstreams"][0]["api_key"] == "**********" and shown["admin_key"] == "**********"
    assert shown["retry"]["cap"] == 3.0 and shown["upstreams"][0]["models"] == ["gpt-x"]
    assert "sk-very-secret" not in out.stdout and "admin-secret" not in out.stdout


def test_config_errors_are_one_clear_line(tmp_path):
    out = run("config", "show", "--config", str(tmp_path / "nope.yaml"))
    assert out.returncode != 0 and "config file not found" in out.stderr and "Traceback" not in out.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("retry: {max_retries: -2}\n")
    out = run("config", "show", "--config", str(bad))
    assert out.returncode != 0 and "max_retries" in out.stderr and "Traceback" not in out.stderr


def test_generated_admin_key_printed_once_stored_hashed_and_working(tmp_path, fake_b):
    env = {"CHATGATE_ADMIN_KEY": "", "CHATGATE_UPSTREAM_BASE_URL": fake_b.base_url}
    gw = start_gateway(tmp_path / "one", env=env)
    try:
        keys = re.findall(r"cg-admin-[A-Za-z0-9_\-]+", gw.logs())
        assert len(keys) == 1
        key = keys[0]
        stored = gw.data_dir / "admin_key.sha256"
        assert stat.S_IMODE(stored.stat().st_mode) == 0o600
        assert key not in stored.read_text() and len(stored.read_text().strip()) == 64
        assert httpx.get(gw.base_url + "/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    finally:
        stop(gw.proc)
    # a restart on the same data dir keeps the key and does not print it again
    port_env = {**env, "CHATGATE_DATA_DIR": str(gw.data_dir)}
    gw2 = start_gateway(tmp_path / "two", env=port_env)
    try:
        assert "cg-admin-" not in gw2.logs()
        assert httpx.get(gw2.base_url + "/models", headers={"x-api-key": key}).status_code == 200
    finally:
        stop(gw2.proc)


def test_users_and_keys_commands(tmp_path):
    env = {"CHATGATE_DATA_DIR": str(tmp_path / "data")}
    assert (
        "user id: u-dana"
        in run("users", "create", "Dana", "--id", "u-dana", "--email", "d@example.com", env=env).stdout
    )
    dup = run("users", "create", "Dana", "--id", "u-dana", env=env)
    assert dup.returncode != 0 and "Traceback" not in dup.stderr
    created = run("keys", "create", "--user", "u-dana", "--scope", "user", "--scope", "trusted_forwarder", env=env)
    assert created.returncode == 0, created.stderr
    key = next(w for w in created.stdout.split() if w.startswith("cg-"))
    listed = run("keys", "list", "--json", env=env)
    (row,) = json.loads(listed.stdout)
    assert row["user"] == "u-dana" and row["scopes"] == "user,trusted_forwarder" and key.startswith(row["prefix"])
    assert key not in listed.stdout  # only the prefix is ever shown again
    assert run("keys", "revoke", row["prefix"], env=env).returncode == 0
    assert json.loads(run("keys", "list", "--json", env=env).stdout)[0]["revoked"]
    assert run("users", "disable", "u-dana", env=env).returncode == 0
    users = json.loads(run("users", "list", "--json", env=env).stdout)
    assert users == [
        {"id": "u-dana", "name": "Dana", "email": "d@example.com", "role": "", "source": "cli", "disabled": True}
    ]
    missing = run("keys", "create", "--user", "nobody", env=env)
    assert missing.returncode != 0 and "no user" in missing.stderr


def test_a_read_only_command_without_a_store_says_so_and_creates_nothing(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for args in (("users", "list"), ("keys", "list"), ("keys", "revoke", "cg-x"), ("users", "disable", "u")):
        out = run(*args, cwd=elsewhere)
        assert out.returncode != 0, args
        assert f"no store at {elsewhere / 'data' / 'chatgate.db'}" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr and "(none)" not in out.stdout
    shown = run("config", "show", cwd=elsewhere)  # only reads the configuration: says so, still shows it
    assert shown.returncode == 0 and "no store at" in shown.stderr and yaml.safe_load(shown.stdout)["server"]
    assert f"data directory {elsewhere / 'data'} (from the default" in shown.stderr
    assert list(elsewhere.iterdir()) == []  # no ./data left behind


def test_one_rule_for_the_data_directory_for_serve_and_every_command(tmp_path, fake_b):
    site = tmp_path / "site"
    site.mkdir()
    cfg = site / "chatgate.yaml"
    cfg.write_text(yaml.safe_dump({"data_dir": "state", "upstream_base_url": fake_b.base_url}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # data_dir in the config file: relative to the file's folder, wherever the command runs
    made = run("users", "create", "Ada", "--id", "u-ada", "--config", str(cfg), cwd=elsewhere)
    assert made.returncode == 0, made.stderr
    assert f"data directory {site / 'state'} (from data_dir in {cfg})" in made.stderr
    assert (site / "state" / "chatgate.db").is_file() and list(elsewhere.iterdir()) == []
    listed = run("users", "list", "--json", env={"CHATGATE_CONFIG": str(cfg)}, cwd=tmp_path)
    assert [u["id"] for u in json.loads(listed.stdout)] == ["u-ada"]
    key = next(
        w for w in run("keys", "create", "--user", "u-ada", "--config", str(cfg)).stdout.split() if w.startswith("cg-")
    )
    # CHATGATE_DATA_DIR wins over the file
    other = run("users", "list", "--config", str(cfg), env={"CHATGATE_DATA_DIR": str(tmp_path / "other")})
    assert other.returncode != 0 and "(from CHATGATE_DATA_DIR)" in other.stderr
    # serve, started from yet another folder with the same file, uses the same store: the CLI's key works
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATGATE_")} | {"CHATGATE_LOG__FORMAT": "json"}
    log = tmp_path / "serve.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            [CHATGATE, "serve", "--port", str(port), "--config", str(cfg)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc=proc)
        resp = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert resp.status_code == 200, resp.text
    finally:
        stop(proc)
    said = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    (line,) = [entry for entry in said if entry.get("msg") == "data directory"]
    assert line["data_dir"] == str(site / "state") and line["from"] == f"data_dir in {cfg}"
    assert not (tmp_path / "data").exists()
