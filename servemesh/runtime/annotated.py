"""``Annotated``: one item of a response stream, with its optional annotations."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Annotated(Generic[T]):
    """A stream item. ``data()`` is the payload; ``event`` / ``comments`` / ``id``
    are optional annotations (SSE-style) a handler may attach by yielding an
    ``Annotated`` itself. An item whose event is ``"error"`` reports an in-band
    error that the handler chose to stream rather than raise."""

    __slots__ = ("_data", "comments", "event", "id")

    def __init__(
        self,
        data: T,
        event: str | None = None,
        comments: list[str] | None = None,
        id: str | None = None,
    ) -> None:
        self._data = data
        self.event = event
        self.comments = comments
        self.id = id

    def data(self) -> T:
        return self._data

    def is_error(self) -> bool:
        return self.event == "error"

    def __repr__(self) -> str:
        extra = "".join(
            f", {name}={value!r}"
            for name, value in (("event", self.event), ("comments", self.comments), ("id", self.id))
            if value is not None
        )
        return f"Annotated({self._data!r}{extra})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Annotated):
            return NotImplemented
        return (self._data, self.event, self.comments, self.id) == (
            other._data, other.event, other.comments, other.id,
        )

    __hash__ = None  # type: ignore[assignment]


def unwrap(item: Any) -> tuple[Any, str | None, list[str] | None, str | None]:
    if isinstance(item, Annotated):
        return item._data, item.event, item.comments, item.id
    return item, None, None, None
