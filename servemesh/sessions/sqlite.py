"""The SQLite store (aiosqlite): the default, a file, shared by every replica on a machine.

Each commit is one ``BEGIN IMMEDIATE`` transaction whose ``UPDATE ... WHERE
sequence_id = ?`` is the compare-and-set; WAL mode and a busy timeout let several
processes share the file.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError, SessionConflict, SessionError, SessionNotFound
from .records import Lineage, Page, Session, Step, decode_cursor, now
from .store import page

#: seconds a writer waits for another process's transaction
BUSY_TIMEOUT = 30.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS servemesh_sessions (
    partition_key TEXT NOT NULL, app_id TEXT NOT NULL, sequence_id INTEGER NOT NULL,
    state TEXT NOT NULL, next_action TEXT, last_action TEXT,
    parent_partition_key TEXT, parent_app_id TEXT, parent_sequence_id INTEGER,
    created_at REAL NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (partition_key, app_id));
CREATE TABLE IF NOT EXISTS servemesh_session_steps (
    partition_key TEXT NOT NULL, app_id TEXT NOT NULL, sequence_id INTEGER NOT NULL,
    action TEXT, inputs TEXT NOT NULL, state TEXT NOT NULL, next_action TEXT, created_at REAL NOT NULL,
    PRIMARY KEY (partition_key, app_id, sequence_id));
"""

_COLUMNS = ("partition_key, app_id, sequence_id, state, next_action, last_action, parent_partition_key, "
            "parent_app_id, parent_sequence_id, created_at, updated_at")


def _session(row: Sequence[Any]) -> Session:
    parent = Lineage(row[6], row[7], row[8]) if row[7] is not None else None
    return Session(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5], parent, row[9], row[10])


class SQLiteStore:
    """``SQLiteStore("sessions.db")``; ``await store.open()`` before use."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._db: Any = None
        # one connection: its transactions must not interleave between coroutines
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        try:
            import aiosqlite
        except ImportError as exc:  # pragma: no cover - a dependency of servemesh
            raise ConfigError("the SQLite session store needs aiosqlite: pip install aiosqlite") from exc
        self._db = await aiosqlite.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
        # Switching a new file to WAL takes an exclusive lock without waiting on the busy
        # timeout: replicas opening one new file together retry it for as long (WAL, once
        # set, stays set; later opens do not contend).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BUSY_TIMEOUT
        while True:
            try:
                await self._db.execute("PRAGMA journal_mode=WAL")
                break
            except aiosqlite.OperationalError as exc:
                if "locked" not in str(exc) or loop.time() > deadline:
                    await self.close()
                    raise
                await asyncio.sleep(0.02)
        await self._db.execute("PRAGMA synchronous=NORMAL")
        await self._db.executescript(SCHEMA)

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await db.close()

    @property
    def db(self) -> Any:
        if self._db is None:
            raise SessionError(f"the SQLite session store {self.path} is not open")
        return self._db

    # -- the Protocol: each operation alone on the connection ------------------------------
    async def create(self, partition_key: str, app_id: str, state: dict[str, Any], next_action: str | None,
                     parent: Lineage | None = None) -> tuple[Session, bool]:
        async with self._lock:
            return await self._create(partition_key, app_id, state, next_action, parent)

    async def get(self, partition_key: str, app_id: str) -> Session | None:
        async with self._lock:
            return await self._get(partition_key, app_id)

    async def step(self, partition_key: str, app_id: str, sequence_id: int) -> Step | None:
        async with self._lock:
            return await self._step(partition_key, app_id, sequence_id)

    async def commit(self, before: Session, action: str, inputs: dict[str, Any], state: dict[str, Any],
                     next_action: str | None) -> Session:
        async with self._lock:
            return await self._commit(before, action, inputs, state, next_action)

    async def history(self, partition_key: str, app_id: str, after: int, limit: int) -> list[Step]:
        async with self._lock:
            return await self._history(partition_key, app_id, after, limit)

    async def list_sessions(self, partition_key: str | None, app_id: str | None, partitions: Sequence[str] | None,
                   cursor: str | None, limit: int) -> Page:
        async with self._lock:
            return await self._list_sessions(partition_key, app_id, partitions, cursor, limit)

    async def partitions(self, partitions: Sequence[str] | None, after: str | None, limit: int) -> list[str]:
        async with self._lock:
            return await self._partitions(partitions, after, limit)

    async def delete(self, partition_key: str, app_id: str) -> bool:
        async with self._lock:
            return await self._delete(partition_key, app_id)

    # -- one operation each, under the lock --------------------------------------------------
    async def _create(self, partition_key: str, app_id: str, state: dict[str, Any], next_action: str | None,
                     parent: Lineage | None = None) -> tuple[Session, bool]:
        t = now()
        text = json.dumps(state)
        db = self.db
        await db.execute("BEGIN IMMEDIATE")
        try:
            cur = await db.execute(
                f"INSERT INTO servemesh_sessions ({_COLUMNS}) VALUES (?, ?, 0, ?, ?, NULL, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (partition_key, app_id, text, next_action, parent.partition_key if parent else None,
                 parent.app_id if parent else None, parent.sequence_id if parent else None, t, t))
            created = cur.rowcount == 1
            if created:
                await db.execute("INSERT INTO servemesh_session_steps VALUES (?, ?, 0, NULL, '{}', ?, ?, ?)",
                                 (partition_key, app_id, text, next_action, t))
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        if created:
            return Session(partition_key, app_id, 0, state, next_action, None, parent, t, t), True
        found = await self._get(partition_key, app_id)
        if found is None:  # deleted in between: rare; the caller may retry
            raise SessionNotFound(partition_key, app_id)
        return found, False

    async def _get(self, partition_key: str, app_id: str) -> Session | None:
        async with self.db.execute(f"SELECT {_COLUMNS} FROM servemesh_sessions WHERE partition_key = ? AND "
                                   "app_id = ?", (partition_key, app_id)) as cur:
            row = await cur.fetchone()
        return _session(row) if row else None

    async def _step(self, partition_key: str, app_id: str, sequence_id: int) -> Step | None:
        async with self.db.execute("SELECT sequence_id, action, inputs, state, next_action, created_at FROM "
                                   "servemesh_session_steps WHERE partition_key = ? AND app_id = ? AND "
                                   "sequence_id = ?", (partition_key, app_id, sequence_id)) as cur:
            row = await cur.fetchone()
        return _step(row) if row else None

    async def _commit(self, before: Session, action: str, inputs: dict[str, Any], state: dict[str, Any],
                     next_action: str | None) -> Session:
        t = now()
        seq = before.sequence_id + 1
        text = json.dumps(state)
        db = self.db
        await db.execute("BEGIN IMMEDIATE")
        try:
            cur = await db.execute(
                "UPDATE servemesh_sessions SET sequence_id = ?, state = ?, next_action = ?, last_action = ?, "
                "updated_at = ? WHERE partition_key = ? AND app_id = ? AND sequence_id = ? AND created_at = ?",
                (seq, text, next_action, action, t, before.partition_key, before.app_id, before.sequence_id,
                 before.created_at))
            if cur.rowcount != 1:
                await db.execute("ROLLBACK")
                current = await self._get(before.partition_key, before.app_id)
                if current is None or current.created_at != before.created_at:  # gone (maybe made anew)
                    raise SessionNotFound(before.partition_key, before.app_id)
                raise SessionConflict(before.partition_key, before.app_id, before.sequence_id, current.sequence_id)
            await db.execute("INSERT INTO servemesh_session_steps VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (before.partition_key, before.app_id, seq, action, json.dumps(inputs), text,
                              next_action, t))
            await db.execute("COMMIT")
        except SessionError:
            raise
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        return Session(before.partition_key, before.app_id, seq, state, next_action, action, before.parent,
                       before.created_at, t)

    async def _history(self, partition_key: str, app_id: str, after: int, limit: int) -> list[Step]:
        async with self.db.execute("SELECT sequence_id, action, inputs, state, next_action, created_at FROM "
                                   "servemesh_session_steps WHERE partition_key = ? AND app_id = ? AND "
                                   "sequence_id > ? ORDER BY sequence_id LIMIT ?",
                                   (partition_key, app_id, after, limit)) as cur:
            return [_step(r) for r in await cur.fetchall()]

    async def _list_sessions(self, partition_key: str | None, app_id: str | None, partitions: Sequence[str] | None,
                   cursor: str | None, limit: int) -> Page:
        where, args = _filters(partition_key, app_id, partitions)
        start = decode_cursor(cursor)
        if start is not None:
            where.append("(partition_key > ? OR (partition_key = ? AND app_id > ?))")
            args += [start[0], start[0], start[1]]
        sql = f"SELECT {_COLUMNS} FROM servemesh_sessions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY partition_key, app_id LIMIT ?"
        async with self.db.execute(sql, (*args, limit + 1)) as cur:
            rows = await cur.fetchall()
        return page([_session(r) for r in rows], limit)

    async def _partitions(self, partitions: Sequence[str] | None, after: str | None, limit: int) -> list[str]:
        where, args = _filters(None, None, partitions)
        if after is not None:
            where.append("partition_key > ?")
            args.append(after)
        sql = "SELECT DISTINCT partition_key FROM servemesh_sessions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        async with self.db.execute(sql + " ORDER BY partition_key LIMIT ?", (*args, limit)) as cur:
            return [r[0] for r in await cur.fetchall()]

    async def _delete(self, partition_key: str, app_id: str) -> bool:
        db = self.db
        await db.execute("BEGIN IMMEDIATE")
        try:
            cur = await db.execute("DELETE FROM servemesh_sessions WHERE partition_key = ? AND app_id = ?",
                                   (partition_key, app_id))
            await db.execute("DELETE FROM servemesh_session_steps WHERE partition_key = ? AND app_id = ?",
                             (partition_key, app_id))
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        return bool(cur.rowcount)


def _step(row: Sequence[Any]) -> Step:
    return Step(row[0], row[1], json.loads(row[2]), json.loads(row[3]), row[4], row[5])


def _filters(partition_key: str | None, app_id: str | None,
             partitions: Sequence[str] | None) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    if partition_key is not None:
        where.append("partition_key = ?")
        args.append(partition_key)
    if app_id is not None:
        where.append("app_id = ?")
        args.append(app_id)
    if partitions is not None:
        where.append(f"partition_key IN ({', '.join('?' * len(partitions)) or 'NULL'})")
        args += list(partitions)
    return where, args
