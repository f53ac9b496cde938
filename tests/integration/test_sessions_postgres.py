"""The session service over PostgreSQL (a real server): the same contract as the memory
and SQLite stores, and two replicas sharing it behind a gateway."""

from __future__ import annotations

import pytest

from servemesh.sessions import PostgresStore, Sessions, open_store

from ..unit.test_sessions_service import (  # the store contract, collected here against PostgreSQL
    test_a_step_begun_before_a_delete_never_lands_on_the_session_made_anew,
    test_concurrent_steps_from_stale_reads_never_lose_an_update,
    test_fork_history_delete_and_paging,
    test_get_or_create_persists_at_once_and_is_idempotent,
    test_steps_wrong_action_if_match_and_failure_leave_state,
    test_streaming_action_chunks_then_session,
)
from .sessions_helpers import counter
from .test_sessions_replicas import CLIENTS, STEPS_EACH, hammer, replicas_and_gateway

__all__ = [
    "test_a_step_begun_before_a_delete_never_lands_on_the_session_made_anew",
    "test_concurrent_steps_from_stale_reads_never_lose_an_update",
    "test_fork_history_delete_and_paging",
    "test_get_or_create_persists_at_once_and_is_idempotent",
    "test_steps_wrong_action_if_match_and_failure_leave_state",
    "test_streaming_action_chunks_then_session",
]


@pytest.fixture
async def sessions(postgres_url):
    store = open_store(postgres_url)
    assert isinstance(store, PostgresStore)
    service = await Sessions(counter.app, store).open()
    yield service
    await service.close()


async def test_two_replicas_on_postgres_lose_no_update(etcd, namespace, postgres_url):
    async with replicas_and_gateway(etcd, namespace, counter.app, postgres_url) as c:
        done = await hammer(c, "/counter", lambda s: ("add", {"amount": 1}))
        final = (await c.get("/counter/exists", params={"app_id": "shared", "partition_key": "p"})).json()
        assert done == CLIENTS * STEPS_EACH == final["state"]["total"] == final["sequence_id"]


async def test_the_whole_api_of_a_burr_app_on_postgres(postgres_url):
    from servemesh import DistributedRuntime

    from .sessions_helpers import burr_chat, served
    from .test_sessions_http import whole_api

    async with DistributedRuntime() as rt, served(burr_chat.builder, rt, store=postgres_url, name="chat") as client:
        await whole_api(client, "/chat")
