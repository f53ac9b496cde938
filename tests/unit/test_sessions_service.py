"""The session service over the in-memory and SQLite stores: no sockets."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from servemesh.errors import ActionFailed, SessionConflict, SessionNotFound, ValidationError, WrongAction
from servemesh.sessions import MemoryStore, Session, Sessions, open_store

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "sessions"))
import counter


@pytest.fixture(params=["memory", "sqlite"])
async def sessions(request, tmp_path):
    store = MemoryStore() if request.param == "memory" else open_store(f"sqlite:///{tmp_path}/s.db")
    service = await Sessions(counter.app, store).open()
    yield service
    await service.close()


async def test_get_or_create_persists_at_once_and_is_idempotent(sessions):
    first = await sessions.get_or_create("p", "a")
    assert (first.sequence_id, first.next_action, first.state) == (0, "add", {"total": 0, "log": []})
    assert (await sessions.get("p", "a")).sequence_id == 0
    again = await sessions.get_or_create("p", "a")
    assert again.created_at == first.created_at
    page = await sessions.list_sessions()
    assert [(s.partition_key, s.app_id) for s in page.items] == [("p", "a")]


async def test_steps_wrong_action_if_match_and_failure_leave_state(sessions):
    await sessions.get_or_create("p", "a")
    after = await sessions.run("p", "a", "add", {"amount": 5})
    assert (after.sequence_id, after.state["total"], after.last_action) == (1, 5, "add")
    with pytest.raises(WrongAction) as wrong:
        await sessions.run("p", "a", "countdown", {})
    assert wrong.value.next_action == "add"
    with pytest.raises(SessionConflict) as stale:
        await sessions.run("p", "a", "add", {"amount": 1}, if_match=0)
    assert stale.value.actual == 1
    with pytest.raises(ActionFailed) as failed:
        await sessions.run("p", "a", "add", {"amount": -1})
    assert failed.value.error_type == "ValueError"
    with pytest.raises(ValidationError) as bad:
        await sessions.run("p", "a", "add", {"amount": "x"})
    assert bad.value.field == "amount"
    with pytest.raises(ValidationError) as unknown:
        await sessions.run("p", "a", "add", {"amont": 1})
    assert unknown.value.field == "amont"
    current = await sessions.get("p", "a")
    assert (current.sequence_id, current.state["total"]) == (1, 5)


async def test_streaming_action_chunks_then_session(sessions):
    await sessions.get_or_create("p", "a")
    await sessions.run("p", "a", "add", {"amount": 100})
    items = [i async for i in sessions.stream("p", "a", "countdown", {"step": 40})]
    assert items[:-1] == [100, 60, 20]
    assert isinstance(items[-1], Session) and items[-1].state["total"] == 0 and items[-1].next_action == "add"


async def test_fork_history_delete_and_paging(sessions):
    await sessions.get_or_create("p", "a")
    for n in (1, 2, 3):
        await sessions.run("p", "a", "add", {"amount": n})
    fork = await sessions.fork("p", "a", "b", at_sequence_id=2, overrides={"log": ["forked"]})
    assert fork.state == {"total": 3, "log": ["forked"]} and fork.sequence_id == 0
    assert (fork.parent.app_id, fork.parent.sequence_id) == ("a", 2)
    with pytest.raises(SessionConflict):
        await sessions.fork("p", "a", "b")
    with pytest.raises(SessionNotFound):
        await sessions.fork("p", "a", "c", at_sequence_id=9)
    with pytest.raises(ValidationError) as bad:
        await sessions.fork("p", "a", "c", overrides={"total": "many"})
    assert bad.value.field == "total"
    steps = await sessions.history("p", "a")
    assert [(s.sequence_id, s.action) for s in steps] == [(0, None), (1, "add"), (2, "add"), (3, "add")]
    assert steps[2].inputs == {"amount": 2}
    for i in range(5):
        await sessions.get_or_create(f"q{i % 2}", f"x{i}")
    keys, cursor, pages = [], None, 0
    while True:
        page = await sessions.list_sessions(limit=3, cursor=cursor)
        keys += [(s.partition_key, s.app_id) for s in page.items]
        pages += 1
        cursor = page.cursor
        if cursor is None:
            break
    assert keys == sorted(keys) and len(keys) == 7 and pages == 3
    assert await sessions.partitions() == ["p", "q0", "q1"]
    assert [s.app_id for s in (await sessions.list_sessions(partitions=["q1"])).items] == ["x1", "x3"]
    await sessions.delete("p", "a")
    with pytest.raises(SessionNotFound):
        await sessions.get("p", "a")


async def test_concurrent_steps_from_stale_reads_never_lose_an_update(sessions):
    await sessions.get_or_create("p", "a")
    wins = 0

    async def bump() -> None:
        nonlocal wins
        while True:
            try:
                await sessions.run("p", "a", "add", {"amount": 1})
                wins += 1
                return
            except SessionConflict:
                continue

    await asyncio.gather(*(bump() for _ in range(20)))
    final = await sessions.get("p", "a")
    assert final.state["total"] == wins == 20 == final.sequence_id


async def test_text_that_is_not_unicode_is_refused_and_never_poisons_the_session(sessions):
    await sessions.get_or_create("p", "a")
    with pytest.raises(ValidationError) as bad:
        await sessions.run("p", "a", "add", {"amount": 1, "note": "x\ud800y"})
    assert bad.value.field == "note"
    current = await sessions.get("p", "a")
    assert current.sequence_id == 0
    assert [s.app_id for s in (await sessions.list_sessions()).items] == ["a"]


async def test_a_plain_def_action_runs_off_the_event_loop():
    import threading

    from servemesh.sessions import StatefulApp

    seen: list[str] = []
    app = StatefulApp("threads", counter.Counter)

    @app.action
    def add(state: counter.Counter, amount: int = 1) -> counter.Counter:
        seen.append(threading.current_thread().name)
        return state.model_copy(update={"total": state.total + amount})

    service = await Sessions(app, MemoryStore()).open()
    try:
        await service.get_or_create("p", "a")
        assert (await service.run("p", "a", "add", {"amount": 2})).state["total"] == 2
    finally:
        await service.close()
    assert seen and seen[0] != threading.main_thread().name


async def test_a_step_begun_before_a_delete_never_lands_on_the_session_made_anew(sessions):
    await sessions.get_or_create("p", "a")
    before = await sessions.get("p", "a")
    await sessions.delete("p", "a")
    await sessions.get_or_create("p", "a")  # the same id, a new session at sequence 0
    with pytest.raises(SessionNotFound):
        await sessions.store.commit(before, "add", {"amount": 9}, {"total": 9, "log": ["+9"]}, "add")
    current = await sessions.get("p", "a")
    assert (current.sequence_id, current.state["total"]) == (0, 0)
