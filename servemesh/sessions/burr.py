"""Burr applications served unchanged, and Burr persisters as session stores.

:class:`BurrApp` reads a Burr application's graph (actions, transitions, entry
point), its pydantic state type (``burr.integrations.pydantic``) and its initial
state. To run an action on a stored state it builds a Burr application at that
state with the action as entry point and takes one step (``astream_result``
halting after it), so Burr runs the action, its reducers and hooks exactly as
it would in the user's own process, and Burr's transitions name the next one.

Burr is an optional extra (``pip install 'servemesh[burr]'``), imported here only.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pydantic

from ..errors import ConfigError
from .definition import ActionSpec, Result, inputs_of, jsonable
from .records import Lineage, Page, Session, Step, now
from .store import MemoryStore


def import_burr() -> Any:
    try:
        import burr.core
    except ImportError as exc:
        raise ConfigError("serving Burr applications needs Burr: pip install 'servemesh[burr]'") from exc
    return burr.core


class BurrApp:
    """``BurrApp(builder_or_application, name=None)``: a Burr application as a session definition."""

    def __init__(self, source: Any, *, name: str | None = None) -> None:
        core = import_burr()
        built = source.build() if isinstance(source, core.ApplicationBuilder) else source
        if not isinstance(built, core.Application):
            raise ConfigError(f"BurrApp needs a Burr ApplicationBuilder or Application, not {type(source).__name__}")
        self.application = built
        self.graph = built.graph
        self.name = name or "burr"
        self.entrypoint: str = self.graph.entrypoint.name
        self.typing = built.state.typing_system
        state_type = self.typing.state_type()
        model = state_type if isinstance(state_type, type) and issubclass(state_type, pydantic.BaseModel) else None
        self.state_model: type[pydantic.BaseModel] | None = model
        self._initial = jsonable(model, built.state.get_all())
        self.actions: dict[str, ActionSpec] = {a.name: _spec(a) for a in self.graph.actions}

    def initial_state(self) -> dict[str, Any]:
        return dict(self._initial)

    def next_after(self, position: str | None, state: dict[str, Any]) -> str | None:
        """The action Burr would run after ``position`` (``None``: the entry point) on ``state``."""
        nxt = self.graph.get_next_node(position, import_burr().State(dict(state)), self.entrypoint)
        return nxt.name if nxt is not None else None

    async def stream(self, action: str, state: dict[str, Any], inputs: dict[str, Any]) -> AsyncIterator[Any]:
        core = import_burr()
        app = (core.ApplicationBuilder().with_graph(self.graph).with_typing(self.typing)
               .with_state(**state).with_entrypoint(action).build())
        _, container = await app.astream_result(halt_after=[action], inputs=inputs)
        async for chunk in container:
            if chunk is not None:
                yield chunk
        await container.get()
        nxt = app.get_next_action()
        yield Result(jsonable(self.state_model, app.state.get_all()), nxt.name if nxt is not None else None)


def _spec(action: Any) -> ActionSpec:
    inputs = action.inputs
    names = inputs if isinstance(inputs, tuple) else (list(inputs), [])
    # Burr wraps some functions (async streaming ones) in an unannotated one: type from the original
    fn = getattr(action, "_originating_fn", None) or getattr(action, "fn", None)
    if fn is not None:
        typed = inputs_of(fn, names=names)
    else:  # a class-based action: names only
        typed = {}
    for required in names[0]:
        typed.setdefault(required, (Any, ...))
    for optional in names[1]:
        typed.setdefault(optional, (Any, None))
    return ActionSpec(action.name, typed, bool(action.streaming), getattr(fn, "__doc__", None))


class BurrPersisterStore(MemoryStore):
    """A Burr persister (``SQLLitePersister``, ``AsyncPostgreSQLPersister``, ...) as the
    session store: every step is saved through it as Burr saves its own (position = the
    action run, Burr's sequence id = ours - 1), so Burr's tools and
    ``ApplicationBuilder().initialize_from(persister, resume_at_next_action=True)`` see
    the sessions; sessions Burr saved are found on first use (``app`` computes their next
    action).

    Lineage, history and the compare-and-set are kept in this process: use it with one
    session-service replica (several replicas need ``SQLiteStore`` or ``PostgresStore``).
    Like Burr, the persister sees a session from its first step on."""

    def __init__(self, persister: Any, app: BurrApp) -> None:
        super().__init__()
        self.persister = persister
        self.app = app

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        method = getattr(self.persister, name)
        if asyncio.iscoroutinefunction(method):
            return await method(*args, **kwargs)
        return await asyncio.to_thread(method, *args, **kwargs)

    async def _adopt(self, partition_key: str, app_id: str) -> None:
        """Bring a session Burr saved (not through this store) into memory."""
        key = (partition_key, app_id)
        if key in self._sessions:
            return
        loaded = await self._call("load", partition_key, app_id)
        if not loaded or key in self._sessions:
            return
        state = {k: v for k, v in dict(loaded["state"].get_all()).items() if not k.startswith("__")}
        position = loaded.get("position")
        seq = int(loaded.get("sequence_id") or 0) + 1
        t = now()
        nxt = self.app.next_after(position, state)
        self._sessions[key] = Session(partition_key, app_id, seq, state, nxt, position, None, t, t)
        self._steps[key] = [Step(seq, position, {}, state, nxt, t)]  # Burr keeps no history of its own

    async def create(self, partition_key: str, app_id: str, state: dict[str, Any], next_action: str | None,
                     parent: Lineage | None = None) -> tuple[Session, bool]:
        await self._adopt(partition_key, app_id)
        return await super().create(partition_key, app_id, state, next_action, parent)

    async def get(self, partition_key: str, app_id: str) -> Session | None:
        await self._adopt(partition_key, app_id)
        return await super().get(partition_key, app_id)

    async def commit(self, before: Session, action: str, inputs: dict[str, Any], state: dict[str, Any],
                     next_action: str | None) -> Session:
        after = await super().commit(before, action, inputs, state, next_action)
        burr_state = import_burr().State({**state, "__PRIOR_STEP": action, "__SEQUENCE_ID": after.sequence_id - 1})
        await self._call("save", after.partition_key, after.app_id, after.sequence_id - 1, action, burr_state,
                         "completed")
        return after

    async def list_sessions(self, partition_key: str | None, app_id: str | None, partitions: Sequence[str] | None,
                            cursor: str | None, limit: int) -> Page:
        if partition_key is not None:
            for known in await self._call("list_app_ids", partition_key):
                await self._adopt(partition_key, known)
        return await super().list_sessions(partition_key, app_id, partitions, cursor, limit)

    async def step(self, partition_key: str, app_id: str, sequence_id: int) -> Step | None:
        await self._adopt(partition_key, app_id)
        steps = self._steps.get((partition_key, app_id), [])
        return next((s for s in steps if s.sequence_id == sequence_id), None)

    async def history(self, partition_key: str, app_id: str, after: int, limit: int) -> list[Step]:
        await self._adopt(partition_key, app_id)
        return await super().history(partition_key, app_id, after, limit)
