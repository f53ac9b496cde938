"""``Function``: a typed function's declaration. Decorators only record what they are given.

::

    func = Function(description="Greets", name="greet", version="1.0.0")

    @func.set_input
    class Inputs(BaseModel):
        name: str

    @func.on_execute
    async def main(inputs: Inputs, params: Params) -> Outputs: ...

Without ``set_input`` / ``set_param`` / ``set_output``, the models come from the typed
signature of ``on_execute`` (first parameter: inputs, second: params, return: outputs).
The object is an ASGI app (``uvicorn main:func``): the app is built on its first call,
never at import (:mod:`servemesh.gateway.functions.asgi`).
"""

from __future__ import annotations

import inspect
import re
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from ..errors import FunctionError
from .context import FunctionContext
from .semver import is_semver

F = TypeVar("F", bound=Callable[..., Any])
M = TypeVar("M", bound=type[BaseModel])

# a directory named like a version (``v1``, ``1.0``): taken as the version, so validation names it
_VERSIONISH = re.compile(r"^v?\d+(\.\d+)*$")


class Empty(BaseModel):
    """The model of a function without params (or inputs)."""


class Function:
    """A typed function: ``Inputs`` / ``Params`` / ``Outputs`` models and three lifecycle hooks.

    ``name`` and ``version`` default to the seed's layout ``category/name/version/`` of the
    file that creates the function (``sdk/text/greet/1.0.0/metadata.py``)."""

    def __init__(self, description: str = "", *, name: str | None = None, version: str | None = None,
                 category: str | None = None) -> None:
        self.description = description
        self.origin, self.origin_line = _caller()
        where = _layout(self.origin)
        self.name = name or where.get("name") or "function"
        self.version = version or where.get("version") or "0.1.0"
        self.category = category or where.get("category")
        self.inputs: type[BaseModel] | None = None
        self.params: type[BaseModel] | None = None
        self.outputs: type[BaseModel] | None = None
        self.startup: Callable[..., Any] | None = None
        self.execute: Callable[..., Any] | None = None
        self.shutdown: Callable[..., Any] | None = None
        #: the parameter of ``on_execute`` that takes a :class:`FunctionContext`
        self.context_param: str | None = None
        #: set by a load without the function's requirements (``loader``): ``main.py`` was read, not run
        self.execute_in_source = False
        self.missing_module: str | None = None
        self._asgi: Any = None

    def __repr__(self) -> str:
        return f"Function({self.name!r}, version={self.version!r})"

    # -- the ports ----------------------------------------------------------------------------
    def set_input(self, model: M) -> M:
        self.inputs = _model("set_input", model)
        return model

    def set_param(self, model: M) -> M:
        self.params = _model("set_param", model)
        return model

    def set_output(self, model: M) -> M:
        self.outputs = _model("set_output", model)
        return model

    # -- the lifecycle --------------------------------------------------------------------------
    def on_startup(self, fn: F) -> F:
        """Awaited before the function reports ready (load weights here); if it raises, the
        process exits with its error."""
        self.startup = _async("on_startup", fn)
        return fn

    def on_execute(self, fn: F) -> F:
        """``async def main(inputs, params[, ctx: FunctionContext]) -> Outputs``."""
        self.execute = _async("on_execute", fn)
        hints = _hints(fn)
        params = list(inspect.signature(fn).parameters.values())
        for param in params:
            if hints.get(param.name) is FunctionContext:
                self.context_param = param.name
        ports = [p for p in params if p.name != self.context_param]
        if self.inputs is None and ports and _is_model(hints.get(ports[0].name)):
            self.inputs = hints[ports[0].name]
        if self.params is None and len(ports) > 1 and _is_model(hints.get(ports[1].name)):
            self.params = hints[ports[1].name]
        if self.outputs is None and _is_model(hints.get("return")):
            self.outputs = hints["return"]
        return fn

    def on_shutdown(self, fn: F) -> F:
        """Awaited once, on SIGTERM, after the executions in flight finished."""
        self.shutdown = _async("on_shutdown", fn)
        return fn

    # -- derived ----------------------------------------------------------------------------------
    @property
    def input_model(self) -> type[BaseModel]:
        return self.inputs or Empty

    @property
    def param_model(self) -> type[BaseModel]:
        return self.params or Empty

    @property
    def output_model(self) -> type[BaseModel]:
        return self.outputs or Empty

    def metadata(self) -> dict[str, Any]:
        """What ``GET /metadata`` answers and the image label holds: the JSON Schemas of the ports."""
        from .ports import metadata_of

        return metadata_of(self)

    def check(self) -> None:
        """Refuse to serve a function that cannot work (``servemesh validate`` says more)."""
        if self.execute is None:
            raise FunctionError(f"function {self.name!r} has no on_execute: decorate its main coroutine "
                                "with @func.on_execute")
        if not is_semver(self.version):
            raise FunctionError(f"function {self.name!r} has version {self.version!r}, which is not a semantic "
                                "version (MAJOR.MINOR.PATCH, e.g. 1.0.0)")

    # -- ASGI ------------------------------------------------------------------------------------
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """``uvicorn main:func``: the function's HTTP surface, built on the first call."""
        if self._asgi is None:
            # the one import of a gateway from the functions domain (tests/unit/test_apps_layout.py):
            # the seed serves the Function object itself (`uvicorn main:func`), so it must reach its surface
            from ..gateway.functions.asgi import FunctionAsgi

            self._asgi = FunctionAsgi(self)
        await self._asgi(scope, receive, send)


def _caller() -> tuple[str | None, int]:
    """The file and line that create the function (for defaults and validation messages)."""
    frame = sys._getframe(2)
    file = frame.f_globals.get("__file__")
    return (str(file) if file else None), frame.f_lineno


def _layout(origin: str | None) -> dict[str, str]:
    """``category/name/version/`` of the directory holding ``origin``."""
    if not origin:
        return {}
    parts = Path(origin).resolve().parent.parts
    if len(parts) >= 2 and (is_semver(parts[-1]) or _VERSIONISH.match(parts[-1])):
        out = {"name": parts[-2], "version": parts[-1]}
        if len(parts) >= 3:
            out["category"] = parts[-3]
        return out
    return {"name": parts[-1]} if parts else {}


def _model(what: str, model: Any) -> type[BaseModel]:
    if not _is_model(model):
        raise FunctionError(f"@func.{what} decorates a pydantic model class (class Inputs(BaseModel)), "
                            f"not {model!r}")
    return typing.cast(type[BaseModel], model)


def _is_model(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def _async(what: str, fn: Any) -> Callable[..., Any]:
    if not inspect.iscoroutinefunction(inspect.unwrap(fn)):
        raise FunctionError(f"@func.{what} decorates an `async def` function, not {fn!r}")
    return typing.cast(Callable[..., Any], fn)


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:
        return {}
