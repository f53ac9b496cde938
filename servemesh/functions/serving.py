"""``FunctionService``: one function's lifecycle and executions, shared by its HTTP surface
and its runtime endpoint (``<function_namespace>.<name>.execute``).

Lifecycle: ``start()`` starts the runtime, opens the object store, awaits ``on_startup``
(a failure raises ``FunctionStartupError``: the function never becomes ready) and serves
the endpoint; ``ready`` turns true only then. ``drain()`` waits for executions in flight
(new ones are refused once draining began); ``close()`` then awaits ``on_shutdown`` once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import pydantic

from ..config import Settings
from ..errors import FunctionInputError, FunctionStartupError, NoInstancesError, ServemeshError
from ..log import Throttled
from ..objects import Objects, ObjectStoreSettings, open_objects
from ..runtime import Context, DistributedRuntime
from ..runtime.errortable import as_servemesh_error
from ..runtime.tasks import TaskSet
from .context import FunctionContext
from .function import Function

log = logging.getLogger("servemesh.functions")
#: failures of the user's on_execute, at most 10 lines a minute per exception type
throttled = Throttled(log)

ENDPOINT = "execute"


class FunctionService:
    """``await FunctionService(func, runtime).start()``; ``await service.execute(body, ctx)``."""

    def __init__(self, func: Function, runtime: DistributedRuntime, *,
                 objects: ObjectStoreSettings | None = None) -> None:
        func.check()
        self.func = func
        self.runtime = runtime
        settings: Settings = runtime.settings
        self.namespace = settings.function_namespace
        self.path = f"{self.namespace}.{func.name}.{ENDPOINT}"
        self.capabilities = {"function": func.name, "version": func.version}
        self.object_settings = objects or ObjectStoreSettings.from_settings(settings)
        self.state = "created"  # -> starting -> ready -> draining -> stopped | failed
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._objects: Objects | None = None
        self._stack = contextlib.AsyncExitStack()
        self._tasks = TaskSet(f"function {func.name}")
        self._shut = False

    @property
    def ready(self) -> bool:
        return self.state == "ready" and not self.runtime.is_stopping

    @property
    def objects(self) -> Objects:
        if self._objects is None:
            raise NoInstancesError(self.path)  # not started: nothing can be served yet
        return self._objects

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> FunctionService:
        self.state = "starting"
        await self.runtime.start()
        self._objects = await self._stack.enter_async_context(open_objects(self.object_settings))
        if self.func.startup is not None:
            try:
                await self.func.startup()
            except Exception as exc:
                self.state = "failed"
                raise FunctionStartupError(self.func.name, f"{type(exc).__name__}: {exc}") from exc
        endpoint = self.runtime.namespace(self.namespace).component(self.func.name).endpoint(ENDPOINT)
        self._tasks.spawn(endpoint.serve_endpoint(self.handle, capabilities=dict(self.capabilities)),
                          name=f"serve {self.path}")
        await self.runtime.wait_served(self.path, timeout=self.runtime.settings.connect_timeout * 10)
        self.state = "ready"
        log.info("function %s %s ready (runtime endpoint %s)", self.func.name, self.func.version, self.path)
        return self

    async def drain(self, timeout: float | None = None) -> None:
        """Refuse new executions and wait (up to ``timeout``) for those in flight."""
        if self.state in ("ready", "starting", "created"):
            self.state = "draining"
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            log.warning("function %s: %d execution(s) still running after %gs of draining", self.func.name,
                        self.inflight, timeout)

    async def close(self) -> None:
        """``on_shutdown`` (once, and only after a successful start), then release everything."""
        try:
            if not self._shut and self.state in ("ready", "draining"):
                self._shut = True
                if self.func.shutdown is not None:
                    try:
                        await asyncio.shield(self.func.shutdown())
                    except Exception:
                        log.exception("on_shutdown of function %s failed", self.func.name)
                log.info("function %s stopped: executions drained, on_shutdown done", self.func.name)
        finally:
            self.state = "stopped" if self.state != "failed" else "failed"
            await self._tasks.close()
            await self._stack.aclose()

    # -- executions ------------------------------------------------------------------------------
    async def handle(self, request: Any, context: Context) -> dict[str, Any]:
        """The runtime endpoint's handler."""
        return await self.execute(request, context)

    async def execute(self, body: Any, context: Context) -> dict[str, Any]:
        """``{"inputs": ..., "params": ...}`` -> the outputs as JSON-ready data."""
        if self.state != "ready":
            raise NoInstancesError(self.path)
        func = self.func
        if not isinstance(body, dict):
            raise FunctionInputError("the request must be an object {\"inputs\": {...}, \"params\": {...}}")
        unknown = set(body) - {"inputs", "params"}
        if unknown:
            raise FunctionInputError(f"unknown field(s) {', '.join(sorted(unknown))}: the request holds only "
                                     "inputs and params", sorted(unknown)[0])
        inputs = _validated(func.input_model, body.get("inputs") or {}, "inputs")
        params = _validated(func.param_model, body.get("params") or {}, "params")
        self.inflight += 1
        self._idle.clear()
        try:
            kwargs = {}
            if func.context_param is not None:
                kwargs[func.context_param] = FunctionContext(self.objects, context, func)
            assert func.execute is not None
            try:
                result = await func.execute(inputs, params, **kwargs)
            except Exception as exc:
                # what a caller over the runtime sees too: the handler's type and message, no traceback
                throttled.warning(type(exc).__name__, "on_execute of %s raised %s: %s", func.name,
                                  type(exc).__name__, exc)
                raise as_servemesh_error(exc, self.path) from exc
        finally:
            self.inflight -= 1
            if self.inflight == 0:
                self._idle.set()
        try:
            outputs = result if isinstance(result, func.output_model) else func.output_model.model_validate(result)
        except pydantic.ValidationError as exc:
            raise ServemeshError(f"on_execute of {func.name} returned outputs that fail Outputs: "
                                 f"{_first(exc)[1]}") from exc
        return outputs.model_dump(mode="json")


def _validated(model: type[pydantic.BaseModel], value: Any, kind: str) -> pydantic.BaseModel:
    try:
        return model.model_validate(value)
    except pydantic.ValidationError as exc:
        field, message = _first(exc)
        where = f"{kind}.{field}" if field else kind
        raise FunctionInputError(message, where) from None


def _first(exc: pydantic.ValidationError) -> tuple[str, str]:
    errors = exc.errors()
    if not errors:
        return "", "invalid value"
    return ".".join(str(p) for p in errors[0]["loc"]), str(errors[0]["msg"])


__all__ = ["ENDPOINT", "FunctionService"]
