"""The route label of ``chatgate_http_requests``: the route template, also for answers given before
routing ran (a 401 from ``Authenticate``, a 413 from ``BodyLimit``), on routes inside and outside the
fast lane; ``unmatched`` only for a path no route has."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from chatgate.app import create_app
from chatgate.settings import Settings
from tests.conftest import ADMIN_KEY

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def client(tmp_path: Path, fake_b) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path, admin_key=ADMIN_KEY, upstream_base_url=fake_b.base_url)
    with TestClient(create_app(settings)) as c:
        yield c


def count(client: TestClient, route: str, method: str, status: int) -> float:
    values = client.app.state.metrics.http_requests.values  # type: ignore[attr-defined]
    return float(values.get((route, method, str(status)), 0.0))


@pytest.mark.parametrize(
    ("method", "path", "route", "headers", "status"),
    [
        ("GET", "/api/v1/collections/abc123", "/api/v1/collections/{collection_id}", {}, 401),  # before routing
        ("GET", "/admin/users/u-1/limits", "/admin/users/{user_id:path}/limits", {}, 401),
        ("POST", "/v1/chat/completions", "/v1/chat/completions", {}, 401),  # the fast lane
        ("GET", "/v1/models", "/v1/models", AUTH, 200),  # routed by Starlette: scope["route"]
        ("GET", "/api/v1/chat/sessions/nope", "/api/v1/chat/sessions/{session_id}", AUTH, 404),
        ("GET", "/no/such/route", "unmatched", AUTH, 404),
    ],
)
def test_route_label_is_the_template(client, method, path, route, headers, status):
    before = count(client, route, method, status)
    assert client.request(method, path, headers=headers).status_code == status
    assert count(client, route, method, status) == before + 1


def test_a_method_not_allowed_is_labelled_by_its_path(client):
    before = count(client, "/api/v1/collections", "PATCH", 405)
    assert client.patch("/api/v1/collections", headers=AUTH).status_code == 405
    assert count(client, "/api/v1/collections", "PATCH", 405) == before + 1
