"""A stateful application in plain Python: typed actions and declared transitions.

::

    class Counter(pydantic.BaseModel):
        total: int = 0

    app = StatefulApp("counter", Counter)

    @app.action
    def add(state: Counter, amount: int = 1) -> Counter:
        return state.model_copy(update={"total": state.total + amount})

    @app.action
    async def count(state: Counter, to: int) -> AsyncIterator[int | Counter]:
        for i in range(to):
            yield i              # a chunk
        yield state              # the new state: the last item of the state's type

    app.transitions(("add", "count", lambda s: s.total > 10), ("add", "add"), ("count", "add"))

An action is a function, coroutine function or async generator taking the state
(an instance of the state model) and keyword inputs; the first action is the entry
point unless ``entrypoint=`` says otherwise. After an action, the first transition
from it whose condition holds names the next action; none: the session finished.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import pydantic

from ..errors import ConfigError
from .definition import RESERVED, ActionSpec, Result, inputs_of

F = TypeVar("F", bound=Callable[..., Any])
Condition = Callable[[Any], bool]


class StatefulApp:
    """``StatefulApp(name, StateModel, entrypoint=None)``; actions added with ``@app.action``."""

    def __init__(self, name: str, state: type[pydantic.BaseModel], *, entrypoint: str | None = None) -> None:
        if not (isinstance(state, type) and issubclass(state, pydantic.BaseModel)):
            raise ConfigError(f"the state of app {name!r} must be a pydantic model class, not {state!r}")
        self.name = name
        self.state_model: type[pydantic.BaseModel] = state
        self.actions: dict[str, ActionSpec] = {}
        self._funcs: dict[str, Callable[..., Any]] = {}
        self._transitions: list[tuple[str, str, Condition | None]] = []
        self._entrypoint = entrypoint

    @property
    def entrypoint(self) -> str:
        entry = self._entrypoint or next(iter(self.actions), None)
        if entry is None or entry not in self.actions:
            raise ConfigError(f"app {self.name!r} has no action {entry!r} to start with: add actions with @app.action")
        return entry

    def action(self, func: F | None = None, *, name: str | None = None) -> Any:
        """Register ``func`` as an action (``@app.action`` or ``@app.action(name="...")``)."""
        def register(func: F) -> F:
            action = name or func.__name__
            if action in self.actions:
                raise ConfigError(f"app {self.name!r} already has an action {action!r}")
            inputs = inputs_of(func)
            clash = RESERVED & set(inputs)
            if clash:
                raise ConfigError(f"action {action!r} of app {self.name!r} has inputs named {sorted(clash)}: "
                                  "those names belong to the request; rename them")
            self.actions[action] = ActionSpec(action, inputs, inspect.isasyncgenfunction(func),
                                              inspect.getdoc(func))
            self._funcs[action] = func
            return func

        return register(func) if func is not None else register

    def transitions(self, *edges: tuple[str, str] | tuple[str, str, Condition | None]) -> StatefulApp:
        """``("from", "to")`` or ``("from", "to", condition)``; tried in order."""
        for edge in edges:
            src, dst, cond = (*edge, None)[:3]  # type: ignore[misc]
            for end in (src, dst):
                if end not in self.actions:
                    raise ConfigError(f"transition {src!r} -> {dst!r} of app {self.name!r}: no action {end!r}")
            self._transitions.append((src, dst, cond))
        return self

    def initial_state(self) -> dict[str, Any]:
        return self.state_model().model_dump(mode="json")

    def next_action(self, last: str, state: pydantic.BaseModel) -> str | None:
        for src, dst, cond in self._transitions:
            if src == last and (cond is None or cond(state)):
                return dst
        return None

    async def stream(self, action: str, state: dict[str, Any], inputs: dict[str, Any]) -> AsyncIterator[Any]:
        model = self.state_model.model_validate(state)
        func = self._funcs[action]
        new: Any = None
        if inspect.isasyncgenfunction(func):
            async for item in func(model, **inputs):
                if isinstance(item, self.state_model):
                    new = item
                else:
                    yield item
            if new is None:
                raise ConfigError(f"streaming action {action!r} of app {self.name!r} ended without yielding "
                                  f"the new state (an instance of {self.state_model.__name__})")
        elif inspect.iscoroutinefunction(func):
            new = await func(model, **inputs)
        else:  # a plain def runs in a worker thread: it must not stall the event loop
            new = await asyncio.to_thread(func, model, **inputs)
            if inspect.isawaitable(new):
                new = await new
        final = new if isinstance(new, self.state_model) else self.state_model.model_validate(new)
        yield Result(final.model_dump(mode="json"), self.next_action(action, final))

