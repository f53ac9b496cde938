"""What a store keeps: a session's head (:class:`Session`) and each of its steps (:class:`Step`).

A session is ``(partition_key, app_id)``. Its ``sequence_id`` is 0 when created and
grows by one with every step; a step moves it from ``n`` to ``n + 1`` only if it is
still ``n`` in the store (compare-and-set). States are JSON-ready dicts.
"""

from __future__ import annotations

import base64
import dataclasses
import time
from typing import Any

from ..errors import ValidationError

#: the longest partition key or app id accepted
MAX_ID = 200


@dataclasses.dataclass(frozen=True)
class Lineage:
    """Where a forked session came from."""

    partition_key: str
    app_id: str
    sequence_id: int


@dataclasses.dataclass(frozen=True)
class Session:
    partition_key: str
    app_id: str
    sequence_id: int
    state: dict[str, Any]
    #: the action that may run next (``None``: the session has finished)
    next_action: str | None
    #: the action that produced this state (``None``: created or forked)
    last_action: str | None = None
    parent: Lineage | None = None
    created_at: float = 0.0
    updated_at: float = 0.0

    def to_wire(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Session:
        parent = data.get("parent")
        return cls(**{**data, "parent": Lineage(**parent) if parent else None})


@dataclasses.dataclass(frozen=True)
class Step:
    """One entry of a session's history (sequence id 0 is its creation or fork)."""

    sequence_id: int
    action: str | None
    inputs: dict[str, Any]
    state: dict[str, Any]
    next_action: str | None
    created_at: float

    def to_wire(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Page:
    """Sessions in ``(partition_key, app_id)`` order; ``cursor`` continues after the last."""

    items: list[Session]
    cursor: str | None

    def to_wire(self) -> dict[str, Any]:
        return {"items": [s.to_wire() for s in self.items], "cursor": self.cursor}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Page:
        return cls([Session.from_wire(s) for s in data["items"]], data.get("cursor"))


def now() -> float:
    return time.time()


#: the largest sequence id accepted (stores keep 64-bit integers)
MAX_SEQUENCE = 2**62


def check_id(kind: str, value: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_ID or (kind == "app_id" and not value):
        raise ValidationError(f"must be a string of 1 to {MAX_ID} characters" if kind == "app_id"
                              else f"must be a string of at most {MAX_ID} characters", kind)
    if "\x00" in value:
        raise ValidationError("must not hold NUL characters", kind)
    return value


def check_sequence(kind: str, value: int, low: int = 0) -> int:
    if not low <= value <= MAX_SEQUENCE:
        raise ValidationError(f"must be between {low} and {MAX_SEQUENCE}", kind)
    return value


def encode_cursor(partition_key: str, app_id: str) -> str:
    return base64.urlsafe_b64encode(f"{partition_key}\0{app_id}".encode()).decode()


def decode_cursor(cursor: str | None) -> tuple[str, str] | None:
    if not cursor:
        return None
    try:
        pk, sep, app_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("\0")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError("not a cursor returned by list", "cursor") from exc
    if not sep:
        raise ValidationError("not a cursor returned by list", "cursor")
    return pk, app_id
