"""What the session service needs from an application, whatever wrote it.

:class:`Definition` is the seam: :class:`~servemesh.sessions.app.StatefulApp` (plain
Python) and :class:`~servemesh.sessions.burr.BurrApp` (a Burr application) implement
it. An action runs on a state dict with validated inputs and gives the new state
and the next action; a streaming one yields chunks before its :class:`Result`.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol

import pydantic

#: an input without a default
REQUIRED: Any = ...
#: names an action input may not take: they are the request's own fields
RESERVED = frozenset({"app_id", "partition_key", "state", "self"})


@dataclasses.dataclass(frozen=True)
class ActionSpec:
    name: str
    #: ``{name: (annotation, default or REQUIRED)}``, in signature order
    inputs: Mapping[str, tuple[Any, Any]]
    streaming: bool = False
    doc: str | None = None


@dataclasses.dataclass(frozen=True)
class Result:
    """An action's outcome: the new state and the action that may run next."""

    state: dict[str, Any]
    next_action: str | None


class Definition(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def state_model(self) -> type[pydantic.BaseModel] | None:
        """The pydantic model of the state (``None``: an untyped dict)."""
        ...

    @property
    def actions(self) -> Mapping[str, ActionSpec]: ...

    @property
    def entrypoint(self) -> str: ...

    def initial_state(self) -> dict[str, Any]: ...

    def stream(self, action: str, state: dict[str, Any], inputs: dict[str, Any]) -> AsyncIterator[Any]:
        """Chunks (any JSON value), then one :class:`Result`; a plain action yields only its result."""
        ...


def inputs_of(func: Callable[..., Any], skip: int = 1, names: tuple[list[str], list[str]] | None = None,
              ) -> dict[str, tuple[Any, Any]]:
    """``{name: (annotation, default)}`` of ``func``'s parameters after the first ``skip``
    (the state); ``names`` (required, optional) limits them to those Burr passes."""
    try:
        hints = typing.get_type_hints(func) or _source_hints(func)
    except Exception:  # an annotation that does not resolve: Any, not a crash
        hints = {}
    out: dict[str, tuple[Any, Any]] = {}
    params = list(inspect.signature(func).parameters.values())[skip:]
    wanted = None if names is None else set(names[0]) | set(names[1])
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or (wanted is not None and p.name not in wanted):
            continue
        default = REQUIRED if p.default is p.empty else p.default
        out[p.name] = (hints.get(p.name, Any), default)
    return out


def _source_hints(func: Callable[..., Any]) -> dict[str, Any]:
    """Parameter annotations read from ``func``'s source, for a copy that lost them
    (Burr's ``@streaming_action`` copies the function without its annotations)."""
    import ast
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    except (OSError, TypeError, SyntaxError):
        return {}
    node = next((n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))), None)
    if node is None:
        return {}
    hints: dict[str, Any] = {}
    for arg in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs):
        if arg.annotation is not None:
            try:
                hints[arg.arg] = eval(ast.unparse(arg.annotation), getattr(func, "__globals__", {}))
            except Exception:  # a name that does not resolve: Any
                continue
    return hints


def jsonable(model: type[pydantic.BaseModel] | None, state: Mapping[str, Any]) -> dict[str, Any]:
    """A state as JSON-ready data (through its model when it has one); Burr's own keys dropped."""
    clean = {k: v for k, v in state.items() if not k.startswith("__")}
    if model is not None:
        return model.model_validate(clean).model_dump(mode="json")
    return pydantic.TypeAdapter(dict[str, Any]).dump_python(clean, mode="json")
