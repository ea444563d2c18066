"""``openai-chatkit`` (and the ``openai-agents`` it imports) load with the first ``/chatkit`` request, never before:
a gateway that serves only other doors imports none of it. In a fresh interpreter (this process has long
imported them), a whole gateway starts and answers requests on every other door first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ADMIN_KEY, Fake

SCRIPT = """
import sys
from starlette.testclient import TestClient
from chatgate.app import create_app
from chatgate.settings import Settings

def loaded():
    return sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in ("chatkit", "agents")})

app = create_app(Settings(data_dir=sys.argv[1], admin_key=sys.argv[2], upstream_base_url=sys.argv[3]))
auth = {"Authorization": "Bearer " + sys.argv[2]}
with TestClient(app) as c:
    assert c.get("/health").status_code == 200
    assert c.get("/ready", headers=auth).status_code in (200, 503)
    chat = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
    assert c.post("/v1/chat/completions", json=chat, headers=auth).status_code == 200
    assert c.post("/api/v1/chat", json={"message": "hi", "model": "fake-model"}, headers=auth).status_code == 200
    assert c.get("/openapi.json", headers=auth).status_code == 200
    print("before", loaded())
    assert c.post("/chatkit", json={"type": "threads.list", "params": {}}, headers=auth).status_code == 200
    print("after", loaded())
"""


def test_chatkit_is_imported_on_the_first_chatkit_request_only(tmp_path: Path, fake_b: Fake) -> None:
    src = str(Path(__file__).parents[2] / "src")
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), ADMIN_KEY, fake_b.base_url],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith(("before", "after"))]
    assert lines == ["before []", "after ['agents', 'chatkit']"]
