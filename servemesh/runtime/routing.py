"""Routing policies: pure choices over a list of candidate instance ids."""

from __future__ import annotations

import random as _random
from collections.abc import Mapping, Sequence
from typing import Literal, Protocol

from ..errors import ConfigError

RouterName = Literal["round_robin", "random", "least_loaded"]


class Router(Protocol):
    def choose(self, candidates: Sequence[int], load: Mapping[int, int]) -> int: ...


class RoundRobin:
    """Cycles through candidates in id order; stable when the set changes."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: int | None = None

    def choose(self, candidates: Sequence[int], load: Mapping[int, int]) -> int:
        if len(candidates) == 1:
            self._last = candidates[0]
            return candidates[0]
        ordered = sorted(candidates)
        last = self._last
        pick = ordered[0]
        if last is not None:
            for cid in ordered:
                if cid > last:
                    pick = cid
                    break
        self._last = pick
        return pick


class Random:
    __slots__ = ("_rng",)

    def __init__(self, seed: int | None = None) -> None:
        self._rng = _random.Random(seed)

    def choose(self, candidates: Sequence[int], load: Mapping[int, int]) -> int:
        return candidates[self._rng.randrange(len(candidates))]


class LeastLoaded:
    """Fewest in-flight streams from this client; ties go round robin."""

    __slots__ = ("_tie",)

    def __init__(self) -> None:
        self._tie = RoundRobin()

    def choose(self, candidates: Sequence[int], load: Mapping[int, int]) -> int:
        low = min(load.get(c, 0) for c in candidates)
        return self._tie.choose([c for c in candidates if load.get(c, 0) == low], load)


def make_router(name: str) -> Router:
    if name == "round_robin":
        return RoundRobin()
    if name == "random":
        return Random()
    if name == "least_loaded":
        return LeastLoaded()

    raise ConfigError(f"unknown router {name!r}: use 'round_robin', 'random' or 'least_loaded'")
