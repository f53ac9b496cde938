"""The session service: one app's sessions over one store.

Every operation of the HTTP API is a method here; the router and the runtime
service call these (the router directly, or through :class:`RemoteSessions`).

A step: read the session; refuse it if ``if_match`` is not its sequence id
(``SessionConflict``) or the action is not its next one (``WrongAction``); run the
action; commit with compare-and-set on the sequence id read. An action that raises
stores nothing (``ActionFailed``); a commit that lost a race stores nothing
(``SessionConflict``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec

from ..errors import ActionFailed, ServemeshError, SessionConflict, SessionNotFound, ValidationError, WrongAction
from .definition import Definition, Result
from .records import Lineage, Page, Session, Step, check_id, check_sequence
from .schema import Models
from .store import SessionStore

log = logging.getLogger("servemesh.sessions")

#: the most sessions, partitions or steps one page holds
MAX_PAGE = 500


class Sessions:
    """``Sessions(definition, store)``; ``await sessions.open()`` (opens the store)."""

    def __init__(self, app: Definition, store: SessionStore, *, action_timeout: float | None = None) -> None:
        self.app = app
        self.store = store
        self.models = Models(app)
        #: seconds an action may run (``None``: no limit)
        self.action_timeout = action_timeout

    async def open(self) -> Sessions:
        await self.store.open()
        return self

    async def close(self) -> None:
        await self.store.close()

    async def get_or_create(self, partition_key: str, app_id: str) -> Session:
        check_id("partition_key", partition_key)
        check_id("app_id", app_id)
        session, _ = await self.store.create(partition_key, app_id, self.app.initial_state(), self.app.entrypoint)
        return session

    async def get(self, partition_key: str, app_id: str) -> Session:
        check_id("partition_key", partition_key)
        check_id("app_id", app_id)
        session = await self.store.get(partition_key, app_id)
        if session is None:
            raise SessionNotFound(partition_key, app_id)
        return session

    async def list_sessions(self, partition_key: str | None = None, app_id: str | None = None, *,
                   partitions: Sequence[str] | None = None, cursor: str | None = None, limit: int = 50) -> Page:
        for kind, value in (("partition_key", partition_key), ("app_id", app_id)):
            if value is not None:
                check_id(kind, value)
        return await self.store.list_sessions(partition_key, app_id, partitions, cursor, _limit(limit))

    async def partitions(self, *, partitions: Sequence[str] | None = None, after: str | None = None,
                         limit: int = 50) -> list[str]:
        if after is not None:
            check_id("after", after)
        return await self.store.partitions(partitions, after, _limit(limit))

    async def history(self, partition_key: str, app_id: str, *, after: int = -1, limit: int = 50) -> list[Step]:
        await self.get(partition_key, app_id)
        check_sequence("after", after, -1)
        return await self.store.history(partition_key, app_id, after, _limit(limit))

    async def delete(self, partition_key: str, app_id: str) -> None:
        check_id("partition_key", partition_key)
        check_id("app_id", app_id)
        if not await self.store.delete(partition_key, app_id):
            raise SessionNotFound(partition_key, app_id)

    async def fork(self, partition_key: str, app_id: str, new_app_id: str, *, at_sequence_id: int | None = None,
                   overrides: dict[str, Any] | None = None, new_partition_key: str | None = None) -> Session:
        """A new session ``new_app_id`` from ``app_id``'s state at ``at_sequence_id`` (default: its
        latest), with ``overrides`` applied; its ``parent`` records where it came from."""
        source = await self.get(partition_key, app_id)
        seq = source.sequence_id if at_sequence_id is None else check_sequence("at_sequence_id", at_sequence_id)
        step = await self.store.step(partition_key, app_id, seq)
        if step is None:
            raise SessionNotFound(partition_key, app_id, seq)
        target_pk = partition_key if new_partition_key is None else check_id("partition_key", new_partition_key)
        check_id("app_id", new_app_id)
        state = self.models.apply_overrides(step.state, overrides or {})
        session, created = await self.store.create(target_pk, new_app_id, state, step.next_action,
                                                   Lineage(partition_key, app_id, seq))
        if not created:
            raise SessionConflict(target_pk, new_app_id, None, session.sequence_id)
        return session

    async def run(self, partition_key: str, app_id: str, action: str, inputs: dict[str, Any],
                  if_match: int | None = None) -> Session:
        """Run ``action`` on the session; the stored session after it."""
        result: Session | None = None
        async for item in self.stream(partition_key, app_id, action, inputs, if_match):
            if isinstance(item, Session):
                result = item
        assert result is not None  # stream always ends with the session
        return result

    async def stream(self, partition_key: str, app_id: str, action: str, inputs: dict[str, Any],
                     if_match: int | None = None) -> AsyncIterator[Any]:
        """The action's chunks, then the stored :class:`Session` after it."""
        if action not in self.app.actions:
            raise ValidationError(f"no action {action!r}; actions: {', '.join(self.app.actions)}", "action")
        values = self.models.validate_inputs(action, inputs)
        stored_inputs = _jsonable(inputs)
        for name, value in stored_inputs.items():
            if not _storable(value):
                raise ValidationError("holds text that is not valid Unicode (a lone surrogate): it cannot be "
                                      "stored or answered as JSON", name)
        before = await self.get(partition_key, app_id)
        if if_match is not None and check_sequence("If-Match", if_match) != before.sequence_id:
            raise SessionConflict(partition_key, app_id, if_match, before.sequence_id)
        if action != before.next_action:
            raise WrongAction(action, before.next_action, app_id, partition_key)
        result: Result | None = None
        try:
            async with asyncio.timeout(self.action_timeout):
                async for item in self.app.stream(action, before.state, values):
                    if isinstance(item, Result):
                        result = item
                    else:
                        yield item
        except ServemeshError:
            raise
        except Exception as exc:  # the app's own error: reported, nothing stored
            log.info("action %r of session %r/%r failed: %s: %s", action, partition_key, app_id,
                     type(exc).__name__, exc)
            raise ActionFailed(action, type(exc).__name__, str(exc)) from exc
        if result is None:
            raise ActionFailed(action, "RuntimeError", "the action ended without a new state")
        if not _storable(result.state):  # stored, it would fail every later read of the session
            raise ActionFailed(action, "ValueError", "the new state holds text that is not valid Unicode "
                                                      "(a lone surrogate): nothing was stored")
        yield await self.store.commit(before, action, stored_inputs, result.state, result.next_action)


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise ValidationError(f"must be between 1 and {MAX_PAGE}", "limit")
    return limit


def _storable(value: Any) -> bool:
    """Whether ``value`` can be written as UTF-8 JSON (what every store and answer needs)."""
    try:
        msgspec.json.encode(value)
    except UnicodeEncodeError:
        return False
    except (TypeError, ValueError):
        return True  # not a text problem: the store reports what it cannot hold
    return True


def _jsonable(inputs: dict[str, Any]) -> dict[str, Any]:
    import pydantic

    return pydantic.TypeAdapter(dict[str, Any]).dump_python(inputs, mode="json")
