"""Where a window comes from, in order; the completion budget; the catalog reading upstreams' windows."""

from __future__ import annotations

from typing import Any

import pytest

from chatgate.context import WindowResolver, local_windows, requested_max_tokens
from chatgate.settings import ContextSettings, Settings
from chatgate.upstream.catalog import ModelCatalog, window_in
from chatgate.upstream.models import DEFAULT as DEFAULT_LOCAL
from chatgate.upstream.routing import Router, Upstream
from tests.conftest import SUMMARY_KEY, WINDOW, Fake

from .helpers import client


class CountingCatalog(ModelCatalog):
    def __init__(self, *ups: Upstream, aliases: dict[str, str] | None = None) -> None:
        super().__init__(client(Router(ups, aliases=aliases)), ttl=60)
        self.fetches = 0

    async def fetch(self, up: Upstream, timeout: float = 3.0) -> list[dict[str, Any]]:  # noqa: ASYNC109
        self.fetches += 1
        return await super().fetch(up, timeout)


def discovered(fake: Fake) -> Upstream:
    return Upstream(name=fake.name, base_url=fake.base_url, api_key=SUMMARY_KEY if fake.name == "p" else None)


def configured(fake: Fake, *models: str, **kw: Any) -> Upstream:
    key = SUMMARY_KEY if fake.name == "p" else None
    return Upstream(name=fake.name, base_url=fake.base_url, api_key=key, configured_models=models, **kw)


def test_window_in_reads_the_known_fields():
    assert window_in({"id": "m", "max_model_len": 32768}) == 32768
    assert window_in({"id": "m", "context_length": 8192}) == 8192
    assert window_in({"id": "m", "context_window": 4096, "n_ctx": 1}) == 4096
    assert window_in({"id": "m", "n_ctx": 2048}) == 2048
    for bad in ({"id": "m"}, {"max_model_len": "4096"}, {"max_model_len": True}, {"max_model_len": 0}):
        assert window_in(bad) is None


def test_requested_max_tokens():
    assert requested_max_tokens({"max_completion_tokens": 10, "max_tokens": 20}) == 10
    assert requested_max_tokens({"max_tokens": 20}) == 20
    assert requested_max_tokens({"max_tokens": True}) is None
    assert requested_max_tokens({"max_tokens": None}) is None
    assert requested_max_tokens({}) is None


async def test_order_settings_then_upstream_then_metadata_then_default(fake_window: Fake, fake_plain: Fake):
    catalog = CountingCatalog(discovered(fake_window), discovered(fake_plain), aliases={"short": "ctx-model"})
    await catalog.refresh(force=True)
    ctx = ContextSettings(windows={"ctx-other": 1000}, default_window=777)
    windows = WindowResolver(ctx, catalog)
    info = {"max_model_len": 555}
    assert await windows.window("ctx-other", info) == (1000, "settings")  # 1. settings beat the upstream
    assert await windows.window("ctx-model", info) == (WINDOW, "upstream")  # 2. the upstream's max_model_len
    assert await windows.window("short", info) == (WINDOW, "upstream")  # an alias: its served model's
    assert await windows.window("plain-model", info) == (555, "metadata")  # 3. metadata.model.max_model_len
    assert await windows.window("plain-model", {"max_model_len": "9"}) == (777, "default")  # 4. the default
    assert await WindowResolver(ContextSettings(), catalog).window("plain-model") == (None, "unknown")


async def test_settings_by_public_or_served_name():
    router_catalog = CountingCatalog(aliases={"fast": "served-x"})
    windows = WindowResolver(ContextSettings(windows={"served-x": 4000}), router_catalog)
    assert await windows.window("fast") == (4000, "settings")
    assert windows.served("fast") == "served-x"
    assert router_catalog.fetches == 0


async def test_configured_upstreams_are_asked_once_per_ttl(fake_window: Fake):
    catalog = CountingCatalog(configured(fake_window, "ctx-model"))
    windows = WindowResolver(ContextSettings(), catalog)
    results = [await windows.window("ctx-model") for _ in range(3)]
    assert results == [(WINDOW, "upstream")] * 3
    assert catalog.fetches == 1
    assert await catalog.listing() == [{"id": "ctx-model", "object": "model", "created": 0, "owned_by": "w"}]


async def test_the_smallest_window_of_several_upstreams(fake_window: Fake):
    other = Upstream(name="w2", base_url=fake_window.base_url, configured_models=("ctx-model",))
    catalog = CountingCatalog(configured(fake_window, "ctx-model"), other)
    catalog._probed_windows["w2\0ctx-model"] = 128  # as if w2 had said so
    catalog._next_probe["w2"] = float("inf")
    assert await catalog.window_of("ctx-model") == 128


async def test_an_unreachable_upstream_gives_no_window_and_is_not_asked_again_at_once():
    dead = Upstream(name="dead", base_url="http://127.0.0.1:9/v1", configured_models=("m",))
    catalog = CountingCatalog(dead)
    windows = WindowResolver(ContextSettings(), catalog)
    assert await windows.window("m", {"max_model_len": 64}) == (64, "metadata")
    assert await windows.window("m") == (None, "unknown")
    assert catalog.fetches == 1


def test_the_local_model_window_is_its_n_ctx_unless_configured():
    local = Settings(local={"n_ctx": 4096})
    assert local_windows(local) == {DEFAULT_LOCAL: 4096}  # no upstream: the local model serves
    assert local_windows(Settings(upstream_base_url="http://x/v1")) == {}
    assert local_windows(Settings(upstream_base_url="http://x/v1", local={"base_url": "http://l/v1"})) == {
        DEFAULT_LOCAL: 8192
    }
    resolver = WindowResolver.from_settings(Settings(context={"windows": {DEFAULT_LOCAL: 2048}}), None)
    assert resolver.windows == {DEFAULT_LOCAL: 2048}


@pytest.mark.parametrize(("defaults", "expected"), [({"max_tokens": 512}, 512), ({}, 1024)])
def test_default_completion_budget_is_the_upstreams_default_max_tokens(defaults, expected):
    up = Upstream(name="u", base_url="http://u/v1", configured_models=("m",), chat_defaults=defaults)
    windows = WindowResolver(ContextSettings(), CountingCatalog(up))
    assert windows.default_completion("m") == expected
    assert WindowResolver(ContextSettings(reserve_completion_tokens=7)).default_completion("m") == 7
