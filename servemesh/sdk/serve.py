"""``serve()``: read it top to bottom to see exactly what happens to a service class."""

from __future__ import annotations

import asyncio
import inspect
import logging
import typing
from collections.abc import Coroutine
from typing import Any

from ..errors import ConfigError
from ..runtime import DistributedRuntime
from ..runtime import run as run_coroutine
from ..runtime.worker import run_until_signalled
from .context import Depends, ServiceContext
from .spec import ServiceSpec, capabilities_of, spec_of

log = logging.getLogger("servemesh.sdk")


async def serve(*service_classes: type, runtime: DistributedRuntime | None = None, **kwargs: Any) -> None:
    """Serve one or more ``@service`` classes in this process until shutdown.

    1. Use ``runtime``, or create one from the environment (and own its signals).
    2. For each class: build its ``ServiceContext`` and construct it, injecting the
       context into any ``__init__`` parameter annotated ``ServiceContext`` and
       passing it the ``kwargs`` its ``__init__`` accepts.
    3. Resolve ``depends()`` attributes and await every ``@async_init``.
    4. Work out each endpoint's capabilities (calling capability functions now).
    5. Serve every ``@endpoint`` — or hand control to the ``@entrypoint``.
    6. On shutdown (or error) await every ``@on_shutdown``.
    """
    if not service_classes:
        raise ConfigError("serve() needs at least one @service class")
    specs = [spec_of(cls) for cls in service_classes]
    _check_kwargs(service_classes, kwargs)
    if runtime is None:
        async with DistributedRuntime() as owned:
            await run_until_signalled(owned, serve(*service_classes, runtime=owned, **kwargs))
        return
    await runtime.start()

    instances: list[tuple[ServiceSpec, Any]] = []
    try:
        for cls, spec in zip(service_classes, specs, strict=True):
            ctx = _context(runtime, spec)
            instances.append((spec, _construct(cls, ctx, kwargs)))
        for spec, obj in instances:
            await _resolve_depends(obj, runtime)
            for method in spec.async_init:
                await getattr(obj, method)()
        capabilities = [[capabilities_of(spec, ep, obj) for ep in spec.endpoints] for spec, obj in instances]
        async with asyncio.TaskGroup() as group:
            for (spec, obj), caps in zip(instances, capabilities, strict=True):
                if spec.entrypoint is not None:
                    group.create_task(_run_entrypoint(runtime, getattr(obj, spec.entrypoint)))
                    continue
                component = runtime.namespace(spec.namespace).component(spec.name)
                for ep, ep_caps in zip(spec.endpoints, caps, strict=True):
                    group.create_task(component.endpoint(ep.name).serve_endpoint(
                        getattr(obj, ep.method), capabilities=ep_caps or None))
    finally:
        for spec, obj in reversed(instances):
            for method in spec.on_shutdown:
                try:
                    await getattr(obj, method)()
                except Exception:
                    log.exception("@on_shutdown %s.%s failed", type(obj).__qualname__, method)


def _context(runtime: DistributedRuntime, spec: ServiceSpec) -> ServiceContext:
    component = runtime.namespace(spec.namespace).component(spec.name)
    return ServiceContext(runtime=runtime, component=component,
                          endpoints=[component.endpoint(e.name) for e in spec.endpoints],
                          name=spec.name, namespace=spec.namespace)


def _init_params(cls: type) -> dict[str, inspect.Parameter]:
    init = vars_init(cls)
    if init is object.__init__:
        return {}
    params = dict(inspect.signature(init).parameters)
    params.pop(next(iter(params)), None)  # self
    return params


def _context_params(cls: type) -> set[str]:
    init = vars_init(cls)
    try:
        hints = typing.get_type_hints(init)
    except Exception:
        hints = getattr(init, "__annotations__", {})
    return {name for name, hint in hints.items() if hint is ServiceContext or hint == "ServiceContext"}


def vars_init(cls: type) -> Any:
    """The ``__init__`` the class's instances run (looked up on the class, not an instance)."""
    return getattr(cls, "__init__")  # noqa: B009


def _check_kwargs(classes: tuple[type, ...], kwargs: dict[str, Any]) -> None:
    """Every kwarg must be wanted by some class, and every class must get what it requires."""
    accepted: set[str] = set()
    for cls in classes:
        params = _init_params(cls)
        inject = _context_params(cls)
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        accepted |= set(params) if not takes_any else set(kwargs)
        missing = [n for n, p in params.items()
                   if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                   and n not in inject and n not in kwargs]
        if missing:
            raise ConfigError(f"{cls.__qualname__}.__init__ needs {', '.join(missing)}: pass "
                              f"serve({cls.__qualname__}, {missing[0]}=...)")
    unused = set(kwargs) - accepted
    if unused:
        raise ConfigError(f"no service's __init__ takes {', '.join(sorted(unused))}")


def _construct(cls: type, ctx: ServiceContext, kwargs: dict[str, Any]) -> Any:
    params = _init_params(cls)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    args = {name: ctx for name in _context_params(cls)}
    args.update({k: v for k, v in kwargs.items() if takes_any or k in params})
    return cls(**args)


async def _resolve_depends(obj: Any, runtime: DistributedRuntime) -> None:
    for klass in type(obj).__mro__:
        for attr, value in vars(klass).items():
            if isinstance(value, Depends) and attr not in obj.__dict__:
                obj.__dict__[attr] = await value.resolve(runtime)


async def _run_entrypoint(runtime: DistributedRuntime, method: Any) -> None:
    await method()
    # the entrypoint may return after starting its own tasks: stay up until shutdown
    await runtime.wait_stopped()


def run(*targets: Any, **kwargs: Any) -> Any:
    """``servemesh.run(Worker)``: serve service classes (uvloop when installed) until
    SIGINT/SIGTERM; or run a coroutine / zero-argument async function to completion."""
    if targets and all(isinstance(t, type) for t in targets):
        return run_coroutine(serve(*targets, **kwargs))
    if len(targets) == 1 and not kwargs:
        target = targets[0]
        if isinstance(target, Coroutine) or callable(target):
            return run_coroutine(target)
    raise ConfigError("run() takes @service classes, or one coroutine / async function")
