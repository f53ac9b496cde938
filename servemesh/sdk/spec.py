"""The SDK decorators. They only attach metadata; the class stays a plain class."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ..errors import ConfigError
from ..runtime.records import check_name

C = TypeVar("C", bound=type)
F = TypeVar("F", bound=Callable[..., Any])

SERVICE_ATTR = "__servemesh_service__"
ENDPOINT_ATTR = "__servemesh_endpoint__"
HOOK_ATTR = "__servemesh_hook__"  # "async_init" | "on_shutdown" | "entrypoint"

DEFAULT_NAMESPACE = "servemesh"

#: capabilities: a dict fixed at decoration, or a function of the instance returning
#: one, called by ``serve()`` after ``__init__`` and every ``@async_init``
Capabilities = Mapping[str, Any] | Callable[[Any], Mapping[str, Any]]


@dataclasses.dataclass(frozen=True)
class EndpointSpec:
    name: str
    method: str
    capabilities: Capabilities


@dataclasses.dataclass(frozen=True)
class ServiceSpec:
    name: str
    namespace: str
    capabilities: Capabilities
    endpoints: tuple[EndpointSpec, ...]
    async_init: tuple[str, ...]
    on_shutdown: tuple[str, ...]
    entrypoint: str | None

    @property
    def path(self) -> str:
        return f"{self.namespace}.{self.name}"


def service(cls: C | None = None, *, name: str | None = None, namespace: str = DEFAULT_NAMESPACE,
            capabilities: Capabilities | None = None) -> Any:
    """Mark a class as a servemesh service: ``@service(name="worker", namespace="inference")``.

    ``name`` defaults to the class name in lower case. ``capabilities`` go into every
    endpoint's registration: a dict, or a function of the instance for values known
    only at run time (``capabilities=lambda self: {"model": self.model}``). Checks
    the class's endpoints and hooks now, so authoring mistakes fail at import, not
    in production."""

    def decorate(cls: C) -> C:
        if not isinstance(cls, type):
            raise ConfigError(f"@service decorates a class, not {cls!r}")
        svc_name = check_name("service", name or cls.__name__.lower())
        check_name("namespace", namespace)
        caps = _check_capabilities(capabilities, f"@service {cls.__qualname__}")
        setattr(cls, SERVICE_ATTR, _collect(cls, svc_name, namespace, caps))
        return cls

    return decorate(cls) if cls is not None else decorate


def endpoint(func: F | None = None, *, name: str | None = None,
             capabilities: Capabilities | None = None) -> Any:
    """Mark an async method (generator or one value) as an endpoint; ``name`` defaults to its own.

    ``capabilities`` (a dict, or a function of the instance) add to the service's."""

    def decorate(func: F) -> F:
        target = inspect.unwrap(func)
        if not (inspect.isasyncgenfunction(target) or inspect.iscoroutinefunction(target)):
            raise ConfigError(
                f"@endpoint {getattr(func, '__qualname__', func)!r} must be `async def` "
                "(an async generator, or returning one value)")
        ep_name = check_name("endpoint", name or func.__name__)
        caps = _check_capabilities(capabilities, f"@endpoint {getattr(func, '__qualname__', func)!r}")
        setattr(func, ENDPOINT_ATTR, EndpointSpec(ep_name, func.__name__, caps))
        return func

    return decorate(func) if func is not None else decorate


def _check_capabilities(capabilities: Capabilities | None, where: str) -> Capabilities:
    if capabilities is None:
        return {}
    if isinstance(capabilities, Mapping):
        return dict(capabilities)
    if callable(capabilities):
        return capabilities
    raise ConfigError(f"{where}: capabilities must be a dict or a function of the instance returning one, "
                      f"not {type(capabilities).__name__}")


def capabilities_of(spec: ServiceSpec, ep: EndpointSpec, obj: Any) -> dict[str, Any]:
    """The capabilities ``ep`` registers with: the service's, then the endpoint's own."""
    return {**_evaluate(spec.capabilities, obj, spec.path),
            **_evaluate(ep.capabilities, obj, f"{spec.path}.{ep.name}")}


def _evaluate(capabilities: Capabilities, obj: Any, where: str) -> Mapping[str, Any]:
    if isinstance(capabilities, Mapping):
        return capabilities
    value = capabilities(obj)
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"the capabilities function of {where} must return a dict with string keys, "
                          f"not {value!r}")
    return value


def _hook(kind: str) -> Callable[[F], F]:
    def decorate(func: F) -> F:
        if not inspect.iscoroutinefunction(inspect.unwrap(func)):
            raise ConfigError(f"@{kind} {getattr(func, '__qualname__', func)!r} must be `async def`")
        setattr(func, HOOK_ATTR, kind)
        return func

    decorate.__name__ = kind
    return decorate


#: ``@async_init``: awaited after construction, before anything is served (may be several).
async_init = _hook("async_init")
#: ``@on_shutdown``: awaited when the service stops, also after errors.
on_shutdown = _hook("on_shutdown")
#: ``@entrypoint``: takes full control of serving; nothing is served automatically.
entrypoint = _hook("entrypoint")


def _collect(cls: type, name: str, namespace: str, capabilities: Capabilities) -> ServiceSpec:
    endpoints: dict[str, EndpointSpec] = {}
    hooks: dict[str, list[str]] = {"async_init": [], "on_shutdown": [], "entrypoint": []}
    seen: set[str] = set()
    for klass in reversed(cls.__mro__):  # base classes first, overrides win
        for attr, value in vars(klass).items():
            func = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
            spec = getattr(func, ENDPOINT_ATTR, None)
            hook = getattr(func, HOOK_ATTR, None)
            if spec is None and hook is None:
                continue
            if attr in seen:
                for eps in list(endpoints.values()):
                    if eps.method == attr:
                        del endpoints[eps.name]
                for names in hooks.values():
                    if attr in names:
                        names.remove(attr)
            seen.add(attr)
            if spec is not None:
                if spec.name in endpoints:
                    raise ConfigError(
                        f"service {cls.__qualname__} has two endpoints named {spec.name!r} "
                        f"({endpoints[spec.name].method} and {attr})")
                endpoints[spec.name] = spec
            if hook is not None:
                if spec is not None:
                    raise ConfigError(f"{cls.__qualname__}.{attr} cannot be both @endpoint and @{hook}")
                hooks[hook].append(attr)
    if len(hooks["entrypoint"]) > 1:
        raise ConfigError(f"service {cls.__qualname__} has several @entrypoint methods: "
                          f"{', '.join(hooks['entrypoint'])}")
    if hooks["entrypoint"] and endpoints:
        raise ConfigError(
            f"service {cls.__qualname__} has an @entrypoint ({hooks['entrypoint'][0]}) and @endpoint methods "
            f"({', '.join(e.method for e in endpoints.values())}): with @entrypoint nothing is served "
            "automatically, so serve those methods from the entrypoint and drop their @endpoint")
    return ServiceSpec(name, namespace, capabilities, tuple(endpoints.values()), tuple(hooks["async_init"]),
                       tuple(hooks["on_shutdown"]), hooks["entrypoint"][0] if hooks["entrypoint"] else None)


def spec_of(cls: Any) -> ServiceSpec:
    spec = cls.__dict__.get(SERVICE_ATTR) if isinstance(cls, type) else None
    if spec is None:
        raise ConfigError(f"{cls!r} is not a servemesh service: decorate the class with @service(...)")
    return spec  # type: ignore[no-any-return]
