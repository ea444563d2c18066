"""Settings: every source, priorities, masking, and the generated reference staying true."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from chatgate.settings import SECRET_MASK, Settings, load_settings, masked
from chatgate.settings_doc import render, rows

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    import os

    for key in list(os.environ):
        if key.startswith("CHATGATE_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no stray .env


def write_config(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(autouse=True)
def _config_env_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """``load_settings(path)`` sets CHATGATE_CONFIG (for ``serve``'s workers): undone after each test."""
    monkeypatch.setenv("CHATGATE_CONFIG", "")  # recorded (absent), so that the undo removes what a test set
    monkeypatch.delenv("CHATGATE_CONFIG")


def test_defaults():
    s = Settings()
    assert s.server.port == 8080 and s.server.max_body_bytes == 10 * 1024 * 1024
    assert (s.retry.base, s.retry.cap, s.retry.max_retries) == (0.5, 8.0, 3)
    assert s.data_dir == Path.cwd() / "data" and s.wants_local_model()  # ./data, absolute


def test_yaml_then_dotenv_then_env_win_in_that_order(tmp_path, monkeypatch):
    cfg = write_config(
        tmp_path,
        {
            "retry": {"max_retries": 1, "cap": 2.0},
            "server": {"port": 9000},
            "upstreams": [{"name": "u", "base_url": "http://u:1/v1/", "models": ["m"]}],
        },
    )
    (tmp_path / ".env").write_text("CHATGATE_RETRY__MAX_RETRIES=5\nCHATGATE_SERVER__PORT=9100\n")
    monkeypatch.setenv("CHATGATE_SERVER__PORT", "9200")
    s = load_settings(cfg)
    assert s.retry.cap == 2.0  # yaml
    assert s.retry.max_retries == 5  # .env over yaml
    assert s.server.port == 9200  # env over .env
    assert s.upstreams[0].base_url == "http://u:1/v1" and not s.wants_local_model()


def test_config_from_env_variable_and_missing_file(tmp_path, monkeypatch):
    cfg = write_config(tmp_path, {"aliases": {"a": "b"}})
    monkeypatch.setenv("CHATGATE_CONFIG", str(cfg))
    assert load_settings().aliases == {"a": "b"}
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "missing.yaml")


def test_single_upstream_shortcut(monkeypatch):
    monkeypatch.setenv("CHATGATE_UPSTREAM_BASE_URL", "http://vllm:8000/v1")
    monkeypatch.setenv("CHATGATE_UPSTREAM_API_KEY", "sk-x")
    s = Settings()
    (up,) = s.all_upstreams()
    assert up.name == "default" and up.api_key.get_secret_value() == "sk-x" and not s.wants_local_model()


def test_invalid_values_are_refused(tmp_path):
    with pytest.raises(ValueError, match="max_retries"):
        load_settings(write_config(tmp_path, {"retry": {"max_retries": -1}}))
    with pytest.raises(ValueError, match="unknown_knob"):
        load_settings(write_config(tmp_path, {"server": {"unknown_knob": 1}}))


def test_masked_hides_every_secret(monkeypatch):
    s = Settings(
        admin_key="adm-secret",
        upstream_api_key="up-secret",
        database_url="postgresql+asyncpg://u:db-secret@h/db",
        upstreams=[{"name": "x", "base_url": "http://user:url-secret@x/v1", "api_key": "x-secret"}],
    )
    text = str(masked(s))
    for secret in ("adm-secret", "up-secret", "db-secret", "url-secret", "x-secret"):
        assert secret not in text
    assert text.count(SECRET_MASK) >= 5


def test_every_setting_is_documented():
    def walk(model: type[BaseModel]) -> None:
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description"
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                walk(info.annotation)

    walk(Settings)
    assert any(r[1] == "CHATGATE_RETRY__MAX_RETRIES" for r in rows(Settings))


def test_configuration_reference_is_up_to_date():
    assert (ROOT / "docs" / "configuration.md").read_text() == render(), (
        "docs/configuration.md is stale: run `make docs`"
    )
