"""The store Protocol every backend implements, and its in-memory twin.

Backends: :class:`~servemesh.sessions.sqlite.SQLiteStore` (default, a file),
:class:`~servemesh.sessions.postgres.PostgresStore` (asyncpg), :class:`MemoryStore`
(one process, tests) and :class:`~servemesh.sessions.burr.BurrPersisterStore` (a Burr
persister). :func:`open_store` picks one from a URL.

The one rule: :meth:`SessionStore.commit` is a compare-and-set on the session's
``sequence_id``. Two replicas that both read sequence id ``n`` may both run the
action, but only one commit of ``n -> n + 1`` succeeds; the other gets
``SessionConflict`` and nothing of it is stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

from ..errors import ConfigError, SessionConflict, SessionNotFound
from .records import Lineage, Page, Session, Step, decode_cursor, encode_cursor, now


class SessionStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def create(self, partition_key: str, app_id: str, state: dict[str, Any], next_action: str | None,
                     parent: Lineage | None = None) -> tuple[Session, bool]:
        """The session, created at sequence id 0 if absent (``True``), else the stored one (``False``)."""
        ...

    async def get(self, partition_key: str, app_id: str) -> Session | None: ...

    async def step(self, partition_key: str, app_id: str, sequence_id: int) -> Step | None: ...

    async def commit(self, before: Session, action: str, inputs: dict[str, Any], state: dict[str, Any],
                     next_action: str | None) -> Session:
        """Store the step after ``before``, if the session is still at ``before.sequence_id``
        and is the same session (``created_at``: not deleted and made anew meanwhile); else
        raise ``SessionConflict`` (or ``SessionNotFound``, deleted meanwhile)."""
        ...

    async def history(self, partition_key: str, app_id: str, after: int, limit: int) -> list[Step]: ...

    async def list_sessions(self, partition_key: str | None, app_id: str | None, partitions: Sequence[str] | None,
                   cursor: str | None, limit: int) -> Page:
        """Sessions in ``(partition_key, app_id)`` order; ``partitions`` (if given) bounds
        which partitions may appear."""
        ...

    async def partitions(self, partitions: Sequence[str] | None, after: str | None, limit: int) -> list[str]: ...

    async def delete(self, partition_key: str, app_id: str) -> bool: ...


class MemoryStore:
    """A store in this process's memory: the twin the unit tests use."""

    def __init__(self) -> None:
        self._sessions: dict[tuple[str, str], Session] = {}
        self._steps: dict[tuple[str, str], list[Step]] = {}
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def create(self, partition_key: str, app_id: str, state: dict[str, Any], next_action: str | None,
                     parent: Lineage | None = None) -> tuple[Session, bool]:
        key = (partition_key, app_id)
        async with self._lock:
            if key in self._sessions:
                return self._sessions[key], False
            t = now()
            session = Session(partition_key, app_id, 0, state, next_action, None, parent, t, t)
            self._sessions[key] = session
            self._steps[key] = [Step(0, None, {}, state, next_action, t)]
            return session, True

    async def get(self, partition_key: str, app_id: str) -> Session | None:
        return self._sessions.get((partition_key, app_id))

    async def step(self, partition_key: str, app_id: str, sequence_id: int) -> Step | None:
        steps = self._steps.get((partition_key, app_id), [])
        return steps[sequence_id] if 0 <= sequence_id < len(steps) else None

    async def commit(self, before: Session, action: str, inputs: dict[str, Any], state: dict[str, Any],
                     next_action: str | None) -> Session:
        key = (before.partition_key, before.app_id)
        async with self._lock:
            current = self._sessions.get(key)
            if current is None or current.created_at != before.created_at:  # gone (maybe made anew)
                raise SessionNotFound(*key)
            if current.sequence_id != before.sequence_id:
                raise SessionConflict(*key, before.sequence_id, current.sequence_id)
            t = now()
            seq = before.sequence_id + 1
            after = Session(*key, seq, state, next_action, action, current.parent, current.created_at, t)
            self._sessions[key] = after
            self._steps[key].append(Step(seq, action, inputs, state, next_action, t))
            return after

    async def history(self, partition_key: str, app_id: str, after: int, limit: int) -> list[Step]:
        steps = self._steps.get((partition_key, app_id), [])
        return [s for s in steps if s.sequence_id > after][:limit]

    async def list_sessions(self, partition_key: str | None, app_id: str | None, partitions: Sequence[str] | None,
                   cursor: str | None, limit: int) -> Page:
        start = decode_cursor(cursor)
        keys = sorted(k for k in self._sessions
                      if (partition_key is None or k[0] == partition_key) and (app_id is None or k[1] == app_id)
                      and (partitions is None or k[0] in partitions) and (start is None or k > start))
        items = [self._sessions[k] for k in keys[: limit + 1]]
        return page(items, limit)

    async def partitions(self, partitions: Sequence[str] | None, after: str | None, limit: int) -> list[str]:
        names = sorted({k[0] for k in self._sessions if partitions is None or k[0] in partitions})
        return [n for n in names if after is None or n > after][:limit]

    async def delete(self, partition_key: str, app_id: str) -> bool:
        async with self._lock:
            self._steps.pop((partition_key, app_id), None)
            return self._sessions.pop((partition_key, app_id), None) is not None


def page(items: list[Session], limit: int) -> Page:
    """``limit + 1`` items read: the page, and a cursor if there is more."""
    if len(items) > limit:
        last = items[limit - 1]
        return Page(items[:limit], encode_cursor(last.partition_key, last.app_id))
    return Page(items, None)


def open_store(url: str | None) -> SessionStore:
    """``sqlite:///relative.db``, ``sqlite:////absolute.db`` (or a plain path), ``postgresql://...``, ``memory://``;
    ``None``: ``sqlite:///servemesh-sessions.db`` in the working directory."""
    url = url or "sqlite:///servemesh-sessions.db"
    if url.startswith("memory:"):
        return MemoryStore()
    if url.startswith(("postgres://", "postgresql://")):
        from .postgres import PostgresStore

        return PostgresStore(url)
    if url.startswith("sqlite:"):
        if not url.startswith("sqlite:///"):
            raise ConfigError(f"a SQLite URL is sqlite:///relative.db or sqlite:////absolute.db, not {url!r}")
        from .sqlite import SQLiteStore

        return SQLiteStore(url.removeprefix("sqlite:///"))
    if "://" in url:
        raise ConfigError(f"unknown session store {url!r}: use sqlite:///file.db, postgresql://... or memory://")
    from .sqlite import SQLiteStore

    return SQLiteStore(url)
