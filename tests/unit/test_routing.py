from __future__ import annotations

import collections

import pytest

from servemesh.errors import ConfigError
from servemesh.runtime.records import capabilities_match
from servemesh.runtime.routing import LeastLoaded, Random, RoundRobin, make_router


def test_round_robin_cycles_in_id_order_and_survives_set_changes():
    rr = RoundRobin()
    assert [rr.choose([30, 10, 20], {}) for _ in range(4)] == [10, 20, 30, 10]
    # 20 leaves: the cycle continues after the last pick
    assert [rr.choose([10, 30], {}) for _ in range(3)] == [30, 10, 30]


def test_random_spreads_over_every_candidate():
    r = Random(seed=1)
    counts = collections.Counter(r.choose([1, 2, 3], {}) for _ in range(3000))
    assert set(counts) == {1, 2, 3}
    assert min(counts.values()) > 800


def test_least_loaded_picks_the_lowest_and_rotates_ties():
    ll = LeastLoaded()
    assert ll.choose([1, 2, 3], {1: 5, 2: 1, 3: 4}) == 2
    assert [ll.choose([1, 2, 3], {1: 2}) for _ in range(4)] == [3, 2, 3, 2]  # continues after 2


def test_unknown_router_is_a_config_error():
    with pytest.raises(ConfigError, match="least_loaded"):
        make_router("fastest")


@pytest.mark.parametrize(("labels", "wanted", "ok"), [
    ({"model": "gemma", "gpus": 2}, None, True),
    ({"model": "gemma", "gpus": 2}, {"model": "gemma"}, True),
    ({"model": "gemma", "gpus": 2}, {"gpus": "2"}, True),
    ({"model": "gemma", "gpus": 2}, {"gpus": "2.0"}, True),
    ({"model": "gemma", "gpus": 2}, {"gpus": 3}, False),
    ({"model": "gemma"}, {"type": "chat"}, False),
    ({"stream": True}, {"stream": "true"}, True),
    ({"stream": True}, {"stream": "1"}, True),
    ({"stream": False}, {"stream": "true"}, False),
    ({"ratio": 0.5}, {"ratio": "0.5"}, True),
    ({"tags": ["a", "b"]}, {"tags": "b"}, True),
    ({"tags": ["a", "b"]}, {"tags": "c"}, False),
    ({"model": "2"}, {"model": 2}, True),
])
def test_capability_subset_match_with_coercion(labels, wanted, ok):
    assert capabilities_match(labels, wanted) is ok
