"""The PostgreSQL store (asyncpg): for replicas on several machines.

A commit is one transaction whose ``UPDATE ... WHERE sequence_id = $n`` is the
compare-and-set (row-level locking makes the loser see zero rows). The tables are
created at ``open`` under an advisory lock, so replicas starting together agree.
States are ``jsonb``. ``pip install 'servemesh[postgres]'``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError, SessionConflict, SessionError, SessionNotFound
from .records import Lineage, Page, Session, Step, decode_cursor, now
from .store import page

#: seconds to connect, and for one statement
CONNECT_TIMEOUT = 10.0
COMMAND_TIMEOUT = 30.0
#: an arbitrary key for the advisory lock that serialises schema creation
_SCHEMA_LOCK = 0x5E551045

SCHEMA = """
CREATE TABLE IF NOT EXISTS servemesh_sessions (
    partition_key TEXT NOT NULL, app_id TEXT NOT NULL, sequence_id BIGINT NOT NULL,
    state JSONB NOT NULL, next_action TEXT, last_action TEXT,
    parent_partition_key TEXT, parent_app_id TEXT, parent_sequence_id BIGINT,
    created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (partition_key, app_id));
CREATE TABLE IF NOT EXISTS servemesh_session_steps (
    partition_key TEXT NOT NULL, app_id TEXT NOT NULL, sequence_id BIGINT NOT NULL,
    action TEXT, inputs JSONB NOT NULL, state JSONB NOT NULL, next_action TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (partition_key, app_id, sequence_id));
"""

_COLUMNS = ("partition_key, app_id, sequence_id, state, next_action, last_action, parent_partition_key, "
            "parent_app_id, parent_sequence_id, created_at, updated_at")


def _session(row: Any) -> Session:
    parent = (Lineage(row["parent_partition_key"], row["parent_app_id"], row["parent_sequence_id"])
              if row["parent_app_id"] is not None else None)
    return Session(row["partition_key"], row["app_id"], row["sequence_id"], json.loads(row["state"]),
                   row["next_action"], row["last_action"], parent, row["created_at"], row["updated_at"])


def _step(row: Any) -> Step:
    return Step(row["sequence_id"], row["action"], json.loads(row["inputs"]), json.loads(row["state"]),
                row["next_action"], row["created_at"])


class PostgresStore:
    """``PostgresStore("postgresql://user@host:5432/db")``; ``await store.open()`` before use."""

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10) -> None:
        self.url = url
        self.min_size = min_size
        self.max_size = max_size
        self._pool: Any = None

    async def open(self) -> None:
        try:
            import asyncpg
        except ImportError as exc:
            raise ConfigError("the PostgreSQL session store needs asyncpg: pip install 'servemesh[postgres]'") from exc
        self._pool = await asyncpg.create_pool(self.url, min_size=self.min_size, max_size=self.max_size,
                                               timeout=CONNECT_TIMEOUT, command_timeout=COMMAND_TIMEOUT)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
            await conn.execute(SCHEMA)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @property
    def pool(self) -> Any:
        if self._pool is None:
            raise SessionError("the PostgreSQL session store is not open")
        return self._pool

    async def create(self, partition_key: str, app_id: str, state: dict[str, Any], next_action: str | None,
                     parent: Lineage | None = None) -> tuple[Session, bool]:
        t = now()
        text = json.dumps(state)
        async with self.pool.acquire() as conn, conn.transaction():
            created = await conn.fetchval(
                f"INSERT INTO servemesh_sessions ({_COLUMNS}) VALUES ($1, $2, 0, $3::jsonb, $4, NULL, $5, $6, $7, "
                "$8, $8) ON CONFLICT DO NOTHING RETURNING true",
                partition_key, app_id, text, next_action, parent.partition_key if parent else None,
                parent.app_id if parent else None, parent.sequence_id if parent else None, t)
            if created:
                await conn.execute("INSERT INTO servemesh_session_steps VALUES ($1, $2, 0, NULL, '{}'::jsonb, "
                                   "$3::jsonb, $4, $5)", partition_key, app_id, text, next_action, t)
                return Session(partition_key, app_id, 0, state, next_action, None, parent, t, t), True
            row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM servemesh_sessions WHERE partition_key = $1 AND "
                                      "app_id = $2", partition_key, app_id)
        if row is None:  # deleted in between
            raise SessionNotFound(partition_key, app_id)
        return _session(row), False

    async def get(self, partition_key: str, app_id: str) -> Session | None:
        row = await self.pool.fetchrow(f"SELECT {_COLUMNS} FROM servemesh_sessions WHERE partition_key = $1 AND "
                                       "app_id = $2", partition_key, app_id)
        return _session(row) if row else None

    async def step(self, partition_key: str, app_id: str, sequence_id: int) -> Step | None:
        row = await self.pool.fetchrow("SELECT * FROM servemesh_session_steps WHERE partition_key = $1 AND "
                                       "app_id = $2 AND sequence_id = $3", partition_key, app_id, sequence_id)
        return _step(row) if row else None

    async def commit(self, before: Session, action: str, inputs: dict[str, Any], state: dict[str, Any],
                     next_action: str | None) -> Session:
        t = now()
        seq = before.sequence_id + 1
        text = json.dumps(state)
        key = (before.partition_key, before.app_id)
        async with self.pool.acquire() as conn, conn.transaction():
            status = await conn.execute(
                "UPDATE servemesh_sessions SET sequence_id = $1, state = $2::jsonb, next_action = $3, "
                "last_action = $4, updated_at = $5 WHERE partition_key = $6 AND app_id = $7 AND sequence_id = $8 "
                "AND created_at = $9", seq, text, next_action, action, t, *key, before.sequence_id, before.created_at)
            if status != "UPDATE 1":
                current = await conn.fetchrow("SELECT sequence_id, created_at FROM servemesh_sessions WHERE "
                                              "partition_key = $1 AND app_id = $2", *key)
                if current is None or current["created_at"] != before.created_at:  # gone (maybe made anew)
                    raise SessionNotFound(*key)
                raise SessionConflict(*key, before.sequence_id, current["sequence_id"])
            await conn.execute("INSERT INTO servemesh_session_steps VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, "
                               "$7, $8)", *key, seq, action, json.dumps(inputs), text, next_action, t)
        return Session(*key, seq, state, next_action, action, before.parent, before.created_at, t)

    async def history(self, partition_key: str, app_id: str, after: int, limit: int) -> list[Step]:
        rows = await self.pool.fetch("SELECT * FROM servemesh_session_steps WHERE partition_key = $1 AND app_id = $2 "
                                     "AND sequence_id > $3 ORDER BY sequence_id LIMIT $4",
                                     partition_key, app_id, after, limit)
        return [_step(r) for r in rows]

    async def list_sessions(self, partition_key: str | None, app_id: str | None, partitions: Sequence[str] | None,
                            cursor: str | None, limit: int) -> Page:
        where, args = _filters(partition_key, app_id, partitions)
        start = decode_cursor(cursor)
        if start is not None:
            args += [start[0], start[1]]
            where.append(f"(partition_key, app_id) > (${len(args) - 1}, ${len(args)})")
        sql = f"SELECT {_COLUMNS} FROM servemesh_sessions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        args.append(limit + 1)
        rows = await self.pool.fetch(sql + f" ORDER BY partition_key, app_id LIMIT ${len(args)}", *args)
        return page([_session(r) for r in rows], limit)

    async def partitions(self, partitions: Sequence[str] | None, after: str | None, limit: int) -> list[str]:
        where, args = _filters(None, None, partitions)
        if after is not None:
            args.append(after)
            where.append(f"partition_key > ${len(args)}")
        sql = "SELECT DISTINCT partition_key FROM servemesh_sessions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        args.append(limit)
        rows = await self.pool.fetch(sql + f" ORDER BY partition_key LIMIT ${len(args)}", *args)
        return [r["partition_key"] for r in rows]

    async def delete(self, partition_key: str, app_id: str) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            status = await conn.execute("DELETE FROM servemesh_sessions WHERE partition_key = $1 AND app_id = $2",
                                        partition_key, app_id)
            await conn.execute("DELETE FROM servemesh_session_steps WHERE partition_key = $1 AND app_id = $2",
                               partition_key, app_id)
        return bool(status == "DELETE 1")


def _filters(partition_key: str | None, app_id: str | None,
             partitions: Sequence[str] | None) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    if partition_key is not None:
        args.append(partition_key)
        where.append(f"partition_key = ${len(args)}")
    if app_id is not None:
        args.append(app_id)
        where.append(f"app_id = ${len(args)}")
    if partitions is not None:
        args.append(list(partitions))
        where.append(f"partition_key = ANY(${len(args)}::text[])")
    return where, args
