import random

import pytest

from chatgate.errors import ModelNotFound
from chatgate.upstream.breaker import CircuitBreaker
from chatgate.upstream.routing import Router, Upstream


def up(name: str, *models: str, weight: float = 1.0) -> Upstream:
    return Upstream(
        name=name,
        base_url=f"http://{name}",
        configured_models=models,
        weight=weight,
        breaker=CircuitBreaker(minimum_calls=1, reset_timeout=60),
    )


def test_unknown_model_is_model_not_found():
    r = Router([up("a", "m")])
    with pytest.raises(ModelNotFound) as err:
        r.plan("nope")
    assert err.value.status == 404 and err.value.details == {"model": "nope"}


def test_aliases_resolve_and_cycles_stop():
    r = Router([up("a", "served")], aliases={"pretty": "served", "x": "y", "y": "x"})
    assert r.plan("pretty") == ["served"]
    assert not r.knows("x")


def test_plan_appends_known_fallbacks_in_order():
    r = Router(
        [up("a", "m1"), up("b", "m2"), up("c", "m3")],
        aliases={"alias2": "m2"},
        fallbacks={"m1": ["alias2", "ghost", "m3", "m1"]},
    )
    assert r.plan("m1") == ["m1", "m2", "m3"]


def test_least_in_flight_wins():
    a, b = up("a", "m"), up("b", "m")
    r = Router([a, b], rng=random.Random(1))
    a.in_flight = 3
    b.in_flight = 1
    assert r.pick("m") is b
    b.in_flight = 5
    assert r.pick("m") is a


def test_weight_scales_load():
    a, b = up("a", "m", weight=4), up("b", "m")
    a.in_flight, b.in_flight = 3, 1  # a: 0.75, b: 1.0
    assert Router([a, b]).pick("m") is a


def test_ties_are_spread():
    a, b = up("a", "m"), up("b", "m")
    r = Router([a, b], rng=random.Random(7))
    picks = {r.pick("m").name for _ in range(50)}
    assert picks == {"a", "b"}


def test_open_circuit_is_skipped_and_all_open_gives_none():
    a, b = up("a", "m"), up("b", "m")
    r = Router([a, b])
    a.breaker.record_failure()
    assert all(r.pick("m") is b for _ in range(5))
    b.breaker.record_failure()
    assert r.pick("m") is None
    assert 59 < r.retry_in("m") <= 60


def test_avoided_upstream_used_only_as_last_resort():
    a, b = up("a", "m"), up("b", "m")
    r = Router([a, b])
    assert r.pick("m", avoid={a}) is b
    assert r.pick("m", avoid={a, b}) in (a, b)


def test_rebuild_picks_up_discovered_models():
    a = Upstream(name="a", base_url="http://a")
    r = Router([a])
    assert not r.knows("m")
    a.discovered_models = frozenset({"m"})
    r.rebuild()
    assert r.plan("m") == ["m"]


def test_a_standby_upstream_serves_only_what_no_other_upstream_serves():
    local = up("local-embeddings", "all-MiniLM-L6-v2", "only-here")
    local.standby = True
    remote = up("tei", "all-MiniLM-L6-v2")
    r = Router([local, remote, up("chat", "m")], aliases={"local-embed": "all-MiniLM-L6-v2"})
    assert r.served_models()["all-MiniLM-L6-v2"] == [remote]  # a configured upstream serving the name wins
    assert r.served_models()["only-here"] == [local]
    assert r.pick(r.resolve("local-embed")) is remote
    remote.configured_models = ()  # its discovered list no longer has the model: the standby takes over
    r.rebuild()
    assert r.pick("all-MiniLM-L6-v2") is local
