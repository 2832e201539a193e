"""Aliases, weighted choice, sticky keys and the routing operations (pure, no Ray)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from serving.errors import ConflictError, InvalidInputError, ModelNotFoundError
from serving.lifecycle import routing as r
from serving.lifecycle.routing import ModelRouting


def test_promote_keeps_history_and_rollback_walks_it_back() -> None:
    x = r.promote(ModelRouting(), "production", 1)
    x = r.promote(x, "production", 2)
    x = r.promote(x, "production", 3)
    assert r.resolve_alias(x, "m", "production") == (3, (2, 1))
    x = r.rollback(x, "m", "production")
    assert r.resolve_alias(x, "m", "production") == (2, (1,))
    x = r.rollback(x, "m", "production")
    assert x.aliases == {"production": 1}
    with pytest.raises(ConflictError, match="no earlier target"):
        r.rollback(x, "m", "production")


def test_promoting_to_the_same_version_adds_no_history() -> None:
    x = r.promote(r.promote(ModelRouting(), "canary", 2), "canary", 2)
    assert x.previous.get("canary", ()) == ()


@pytest.mark.parametrize("alias", ["Production", "1", "", "a b", "-x", "x" * 80, "prod/uction"])
def test_invalid_alias_names_are_refused(alias: str) -> None:
    with pytest.raises(InvalidInputError, match="not valid"):
        r.promote(ModelRouting(), alias, 1)


def test_unknown_alias_names_the_known_ones() -> None:
    x = r.promote(ModelRouting(), "production", 1)
    with pytest.raises(ModelNotFoundError, match="aliases: production"):
        r.resolve_alias(x, "m", "staging")
    with pytest.raises(ModelNotFoundError, match="aliases: none"):
        r.resolve_alias(None, "m", "staging")


def test_weighted_choice_follows_the_weights() -> None:
    rng = random.Random(7)
    counts = Counter(r.choose({1: 90, 2: 10}, {1, 2}, None, rng) for _ in range(20_000))
    assert abs(counts[2] / 20_000 - 0.10) < 0.01
    assert set(counts) == {1, 2}


def test_weighted_choice_skips_versions_not_ready_and_gives_none_when_none_is() -> None:
    assert {r.choose({1: 50, 2: 50}, {2}) for _ in range(50)} == {2}
    assert r.choose({1: 100}, {2}) is None
    assert r.choose({1: 0, 2: 100}, {1, 2}) == 2


def test_sticky_keys_keep_their_version_and_spread_by_weight() -> None:
    keys = [f"user-{i}" for i in range(5000)]
    first = {k: r.choose({1: 70, 2: 30}, {1, 2}, k) for k in keys}
    again = {k: r.choose({1: 70, 2: 30}, {1, 2}, k) for k in keys}
    assert first == again
    share = sum(v == 2 for v in first.values()) / len(keys)
    assert abs(share - 0.30) < 0.03


def test_traffic_weights_must_add_up_to_100() -> None:
    with pytest.raises(InvalidInputError, match="add up to 100"):
        r.set_traffic(ModelRouting(), {1: 90, 2: 20}, None)
    with pytest.raises(InvalidInputError, match="0..100"):
        r.set_traffic(ModelRouting(), {1: 110, 2: -10}, None)
    with pytest.raises(InvalidInputError, match="header"):
        r.set_traffic(ModelRouting(), {1: 100}, "bad header")
    x = r.set_traffic(ModelRouting(), {1: 90, 2: 10}, "X-User")
    assert x.sticky_header == "x-user"
    assert r.set_traffic(x, {}, "x-user").sticky_header is None  # no split, nothing to stick to


def test_a_version_that_routing_points_at_cannot_be_unloaded() -> None:
    x = r.promote(ModelRouting(), "production", 1)
    with pytest.raises(ConflictError, match="aliases \\['production'\\]"):
        r.unload(x, "m", 1)
    with pytest.raises(ConflictError, match="traffic weights or shadow"):
        r.unload(r.set_shadow(ModelRouting(), 2), "m", 2)
    with pytest.raises(ConflictError, match="clear them"):
        r.unload(x, "m", None)
    assert r.unload(x, "m", 2).unloaded == (2,)


def test_load_clears_an_unload_and_raises_the_generation() -> None:
    x = r.unload(r.unload(ModelRouting(), "m", 1), "m", 2)
    y = r.load(x, 1)
    assert y.unloaded == (2,) and y.generation == x.generation + 1
    z = r.load(r.unload(ModelRouting(), "m", None), None)
    assert not z.model_unloaded and z.unloaded == ()


def test_routing_round_trips_through_json() -> None:
    x = r.set_traffic(r.promote(ModelRouting(), "production", 3), {3: 60, 4: 40}, "x-user")
    assert ModelRouting.model_validate_json(x.model_dump_json()) == x
    with pytest.raises(ValueError):
        ModelRouting.model_validate({"alias": {"production": 1}})  # a typo is refused
