"""What ``serve()`` gives a service: its ``ServiceContext`` and ``depends()`` clients."""

from __future__ import annotations

import dataclasses
from typing import Any, Generic, TypeVar, overload

from ..errors import ConfigError
from ..runtime import Client, Component, Context, DistributedRuntime, Endpoint, ResponseStream
from ..runtime.routing import RouterName
from .spec import ServiceSpec, spec_of

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class ServiceContext:
    """Injected into any ``__init__`` parameter annotated ``ServiceContext``."""

    runtime: DistributedRuntime
    component: Component
    endpoints: list[Endpoint]
    name: str
    namespace: str

    async def client(self, target: type | str, endpoint: str | None = None, *,
                     router: RouterName = "round_robin", capabilities: dict[str, Any] | None = None) -> Client:
        """A client of another service's endpoint: ``await ctx.client(Worker, "generate")``,
        or of any endpoint by path: ``await ctx.client("ns.component.endpoint")``."""
        return await self.runtime.endpoint(resolve_path(target, endpoint)).client(router, capabilities)


def resolve_path(target: type | str, endpoint: str | None) -> str:
    if isinstance(target, str):
        if endpoint is not None:
            return f"{target}.{endpoint}"
        return target
    spec = spec_of(target)
    if endpoint is None:
        if len(spec.endpoints) != 1:
            names = ", ".join(e.name for e in spec.endpoints) or "none"
            raise ConfigError(f"{target.__qualname__} has endpoints {names}: say which one, "
                              f"e.g. client({target.__qualname__}, endpoint=...)")
        endpoint = spec.endpoints[0].name
    elif endpoint not in {e.name for e in spec.endpoints}:
        raise ConfigError(f"{target.__qualname__} has no endpoint {endpoint!r} "
                          f"(it has {', '.join(e.name for e in spec.endpoints) or 'none'})")
    return f"{spec.path}.{endpoint}"


class ServiceClient(Generic[T]):
    """Clients of every endpoint of another service. ``self.worker.generate(request)``
    streams from the worker's ``generate`` endpoint, routed by the chosen router."""

    def __init__(self, target: type[T], spec: ServiceSpec, clients: dict[str, Client]) -> None:
        self.target = target
        self.spec = spec
        self._clients = clients

    def client(self, endpoint: str) -> Client:
        try:
            return self._clients[endpoint]
        except KeyError:
            raise ConfigError(f"{self.target.__qualname__} has no endpoint {endpoint!r} "
                              f"(it has {', '.join(self._clients)})") from None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        client = self.client(name)

        def call(request: Any, *, context: Context | None = None, annotated: bool = True) -> ResponseStream:
            return client.generate(request, context=context, annotated=annotated)

        call.__name__ = name
        return call

    def __repr__(self) -> str:
        return f"ServiceClient({self.spec.path}, endpoints={list(self._clients)})"


class Depends(Generic[T]):
    """Class attribute placeholder; ``serve()`` puts a ``ServiceClient`` on the instance."""

    def __init__(self, target: type[T], router: RouterName, capabilities: dict[str, Any] | None) -> None:
        spec_of(target)  # fail at class creation if the target is not a service
        self.target = target
        self.router: RouterName = router
        self.capabilities = capabilities
        self.attr = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.attr = name

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> Depends[T]: ...

    @overload
    def __get__(self, obj: object, objtype: type | None = None) -> ServiceClient[T]: ...

    def __get__(self, obj: object | None, objtype: type | None = None) -> Depends[T] | ServiceClient[T]:
        if obj is None:
            return self
        raise ConfigError(
            f"{type(obj).__qualname__}.{self.attr} (depends({self.target.__qualname__})) is resolved by serve() "
            "after __init__: use it in @async_init, endpoints or the entrypoint, not in __init__")

    async def resolve(self, runtime: DistributedRuntime) -> ServiceClient[T]:
        spec = spec_of(self.target)
        clients = {e.name: await runtime.endpoint(f"{spec.path}.{e.name}").client(self.router, self.capabilities)
                   for e in spec.endpoints}
        return ServiceClient(self.target, spec, clients)


def depends(target: type[T], *, router: RouterName = "round_robin",
            capabilities: dict[str, Any] | None = None) -> Any:
    """``worker = depends(Worker)``: a client of every endpoint of ``Worker``, wherever it runs."""
    return Depends(target, router, capabilities)
