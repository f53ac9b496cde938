"""The naming tree: ``runtime.namespace(ns).component(name).endpoint(name)``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .records import check_name

if TYPE_CHECKING:
    from .client import Client
    from .distributed import DistributedRuntime
    from .handler import Handler
    from .routing import RouterName


class Namespace:
    def __init__(self, runtime: DistributedRuntime, name: str) -> None:
        self.runtime = runtime
        self.name = check_name("namespace", name)

    def component(self, name: str) -> Component:
        return Component(self, name)

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"


class Component:
    def __init__(self, namespace: Namespace, name: str) -> None:
        self.runtime = namespace.runtime
        self.namespace = namespace.name
        self.name = check_name("component", name)

    async def create_service(self) -> None:
        """Prepare this process to serve the component's endpoints (starts the request
        plane). Optional: ``serve_endpoint`` does it too."""
        await self.runtime.start()

    def endpoint(self, name: str) -> Endpoint:
        return Endpoint(self, name)

    @property
    def path(self) -> str:
        return f"{self.namespace}.{self.name}"

    def __repr__(self) -> str:
        return f"Component({self.path!r})"


class Endpoint:
    def __init__(self, component: Component, name: str) -> None:
        self.runtime = component.runtime
        self.namespace = component.namespace
        self.component = component.name
        self.name = check_name("endpoint", name)

    @property
    def path(self) -> str:
        return f"{self.namespace}.{self.component}.{self.name}"

    async def serve_endpoint(self, handler: Handler, *, capabilities: dict[str, Any] | None = None,
                             graceful_shutdown: bool = True) -> None:
        """Register ``handler`` and serve it until the runtime shuts down.

        The endpoint is callable before it becomes visible in discovery, and leaves
        discovery before it stops taking requests. With ``graceful_shutdown`` the
        call returns once in-flight streams finished (up to the drain timeout).
        ``await runtime.wait_served(path)`` returns once it is registered and callable."""
        await self.runtime.serve(self, handler, capabilities, graceful_shutdown)

    async def client(self, router: RouterName = "round_robin",
                     capabilities: dict[str, Any] | None = None) -> Client:
        """A client of this endpoint, watching its live instances."""
        return await self.runtime.client(self, router, capabilities)

    def __repr__(self) -> str:
        return f"Endpoint({self.path!r})"
