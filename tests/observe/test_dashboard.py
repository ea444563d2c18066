"""docs/grafana-dashboard.json: importable, and every metric its panels query is one the gateway serves."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from chatgate.app import create_app
from chatgate.observe.metrics import Metrics
from chatgate.settings import Settings
from tests.conftest import ADMIN_KEY, ROOT, Fake

DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
METRIC = re.compile(r"\bchatgate_[a-z0-9_]+\b")
GROUPED = re.compile(r"\bby \(([^)]*)\)")
SCRAPE_LABELS = {"job", "instance", "le"}  # added by Prometheus, or the histogram's own
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def queried(dashboard: dict[str, Any]) -> set[str]:
    """Every metric name in a panel's expression or a variable's query."""
    exprs = [t["expr"] for p in panels(dashboard) for t in p["targets"]]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"]]
    return {name for expr in exprs for name in METRIC.findall(expr)}


def served(text: str) -> set[str]:
    """The sample names /metrics serves, or would serve for each family it declares (a counter with
    no samples yet is still declared)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names |= {sample.name for sample in family.samples}
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ())}
    return names


def scrape(tmp_path: Path, fake: Fake) -> str:
    settings = Settings(data_dir=tmp_path, admin_key=ADMIN_KEY, upstream_base_url=fake.base_url)
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with TestClient(create_app(settings)) as client:
        chat = {"model": "fake-model", "temperature": 0, "messages": [{"role": "user", "content": "dashboard"}]}
        assert client.post("/v1/chat/completions", json=chat, headers=auth).status_code == 200
        resp = client.get("/metrics", headers=auth)
        assert resp.status_code == 200
        return resp.text


def test_every_metric_on_the_dashboard_is_served(tmp_path: Path, fake_b: Fake) -> None:
    used = queried(load())
    assert len(used) >= 20  # the dashboard covers the gateway, not a corner of it
    missing = used - served(scrape(tmp_path, fake_b))
    assert not missing, f"the dashboard queries metrics /metrics does not serve: {sorted(missing)}"


def family_labels(name: str) -> set[str]:
    base = re.sub(r"_(total|bucket|sum|count)$", "", name)
    families = Metrics().families
    family = families.get(base) or families.get(name)
    return set(family.labels) if family is not None else {"pid"}  # the process collector's families


def test_panels_group_by_labels_their_metrics_have() -> None:
    for panel in panels(load()):
        for target in panel["targets"]:
            expr = target["expr"]
            labels = set().union(*(family_labels(name) for name in METRIC.findall(expr)))
            for group in GROUPED.findall(expr):
                wanted = {label.strip() for label in group.split(",")} - SCRAPE_LABELS
                assert wanted <= labels, (panel["title"], expr)


def test_the_dashboard_is_importable() -> None:
    dashboard = load()
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        assert panel["datasource"] == DATASOURCE and panel["targets"], panel["title"]
        assert all(t["datasource"] == DATASOURCE and t["expr"] for t in panel["targets"]), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"] == DATASOURCE
