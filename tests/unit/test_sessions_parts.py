"""Small parts of sessions: principals, store URLs, errors on the wire and over HTTP, no Burr at import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from servemesh.errors import ActionFailed, ConfigError, SessionConflict, SessionNotFound, WrongAction
from servemesh.gateway.kit import describe
from servemesh.runtime.errortable import decode, encode
from servemesh.sessions import MemoryStore, SQLiteStore, open_store
from servemesh.sessions.acl import Principals, hash_key


def test_principals_hash_grant_and_refuse():
    principals = Principals.from_data({"principals": [
        {"name": "alice", "key_sha256": hash_key("k1")},
        {"name": "bob", "key_sha256": hash_key("k2"), "partitions": ["$self", "team"]},
        {"name": "root", "key_sha256": hash_key("k3"), "admin": True}]})
    alice, bob, root = (principals.authenticate(k) for k in ("k1", "k2", "k3"))
    assert principals.authenticate("nope") is None
    assert alice.may("alice") and not alice.may("bob") and alice.visible() == ["alice"]
    assert bob.may("team") and bob.visible() == ["bob", "team"]
    assert root.may("anything") and root.visible() is None
    with pytest.raises(ConfigError, match="key_sha256"):
        Principals.from_data({"principals": [{"name": "x", "key_sha256": "short"}]})
    with pytest.raises(ConfigError, match="non-empty"):
        Principals.from_data({"principals": []})


def test_principals_file(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"principals": [{"name": "a", "key_sha256": hash_key("k")}]}))
    assert Principals.from_file(str(path)).authenticate("k").name == "a"
    with pytest.raises(ConfigError, match="SERVEMESH_SESSIONS_PRINCIPALS"):
        Principals.from_file(str(tmp_path / "missing.json"))


def test_store_urls():
    assert isinstance(open_store("memory://"), MemoryStore)
    assert open_store("sqlite:///rel.db").path == "rel.db"  # type: ignore[union-attr]
    assert open_store("sqlite:////abs/x.db").path == "/abs/x.db"  # type: ignore[union-attr]
    assert isinstance(open_store(None), SQLiteStore)
    assert type(open_store("postgresql://u@h/db")).__name__ == "PostgresStore"
    for bad in ("sqlite://x.db", "redis://x"):
        with pytest.raises(ConfigError):
            open_store(bad)


@pytest.mark.parametrize(("exc", "status"), [
    (SessionNotFound("p", "a"), 404), (SessionNotFound("p", "a", 4), 404),
    (SessionConflict("p", "a", 1, 2), 409), (SessionConflict("p", "a", None, 0), 409),
    (WrongAction("ask", "answer", "a", "p"), 409), (WrongAction("ask", None), 409),
    (ActionFailed("ask", "RuntimeError", "on fire"), 500)])
def test_session_errors_cross_the_wire_whole_and_map_to_http(exc, status):
    kind, fields = encode(exc)
    back = decode(kind, fields)
    assert type(back) is type(exc) and str(back) == str(exc)
    problem = describe(back)
    assert problem.status == status and problem.message == str(exc)


def test_conflict_and_wrong_action_bodies_say_what_to_do_next():
    assert describe(WrongAction("ask", "answer")).details == {"next_action": "answer"}
    assert describe(SessionConflict("p", "a", 1, 3)).details == {"sequence_id": 3}
    assert "If-Match: 3" in str(SessionConflict("p", "a", 1, 3))


def test_importing_sessions_imports_no_burr_nor_drivers():
    code = ("import sys, servemesh.sessions, servemesh.gateway.sessions, servemesh.apps.sessions; "
            "print([m for m in ('burr', 'asyncpg', 'aiosqlite') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


async def test_replicas_opening_one_new_sqlite_file_together(tmp_path):
    import asyncio

    for round_ in range(20):  # the switch to WAL of a new file: one wins, the others wait for it
        stores = [SQLiteStore(str(tmp_path / f"s{round_}.db")) for _ in range(3)]
        try:
            await asyncio.gather(*(s.open() for s in stores))
            session, created = await stores[1].create("p", "a", {}, None)
            assert created and (await stores[2].get("p", "a")) == session
        finally:
            for store in stores:
                await store.close()
