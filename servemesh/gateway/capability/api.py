"""The capability API server (AnyServe-compatible), built on the gateway kit.

- ``POST /register`` / ``POST|DELETE /unregister``, ``GET /registry``: replicas, kept
  by :class:`~servemesh.capability.registry.Registry` (HTTP, with a TTL) and found in
  discovery (etcd);
- ``POST /infer/json``: the AnyServe contents JSON in, the handler's response out;
- ``POST /infer/stream``: the same request, one ``data: <json>`` SSE frame per
  ``stream.send``; a failure after the first frame is an ``event: error`` frame.

Requests are routed by **every** ``X-Capability-*`` header over every replica that
offers those labels (``CapabilityRouter``). The body goes to the replica as it came:
this server never parses a tensor. Health, metrics, admission, request ids and the
mapping of errors to HTTP come from the kit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from ...capability import wire
from ...capability.registry import Registration, Registry, RuntimeInfo, iso
from ...capability.routing import CapabilityRouter
from ...errors import ServemeshError, ValidationError
from ...runtime import DistributedRuntime
from ...runtime.discovery.memory import MemoryStore
from ...runtime.tasks import TaskSet
from ..kit import ApiError, GatewayKit, GatewayMetrics, event_stream
from ..kit.disconnect import unless_disconnected
from ..kit.raw import header, send_bytes
from .models import (
    ErrorBody,
    RegisterRequest,
    RegisterResponse,
    RegistryResponse,
    UnregisterRequest,
    capability_error,
)

log = logging.getLogger("servemesh.gateway.capability")

_ERROR_EVENT = b"event: error\n"


class CapabilityApiServer:
    """``await CapabilityApiServer(runtime, store).start()``, then serve ``.app``
    (``kit.http_server(host, port)``). ``store`` is the ``MemoryStore`` of the runtime's
    discovery where HTTP registrations become instance records."""

    def __init__(self, runtime: DistributedRuntime, store: MemoryStore, *, max_inflight: int | None = None,
                 router: CapabilityRouter | None = None, metrics: GatewayMetrics | None = None,
                 infer: bool = True) -> None:
        settings = runtime.settings
        self.runtime = runtime
        self.namespace = settings.capability_namespace
        self.registry = Registry(store, self.namespace, settings.capability_ttl)
        #: a router given is shared with other surfaces, and started and closed by its owner
        self._own_router = router is None
        self.router = router or CapabilityRouter(runtime, self.namespace)
        self.request_timeout = settings.request_timeout
        self.kit = GatewayKit(runtime, "capability", shape=capability_error, error_model=ErrorBody,
                              max_inflight=max_inflight or settings.capability_max_inflight,
                              handler_errors=True, healthy="healthy",
                              ready=lambda: bool(self.router.replicas()),
                              info=lambda: {"replicas": len(self.listing())}, metrics=metrics)
        self.tasks = TaskSet("capability api server")
        self._first_seen: dict[str, float] = {}
        # without ``infer``: only the registry (replicas register here for another surface, e.g. KServe)
        self.kit.install(self._build(), raw_routes={("POST", "/infer/json"): self.infer_json,
                                                    ("POST", "/infer/stream"): self.infer_stream} if infer else None)
        #: the ASGI app to serve (``kit.http_server``, or any ASGI server)
        self.app = self.kit.asgi

    async def start(self) -> CapabilityApiServer:
        if self._own_router:
            await self.router.start()
        self.tasks.spawn(self._sweep(), name="capability-registry-ttl")
        return self

    async def close(self) -> None:
        await self.tasks.close()
        if self._own_router:
            await self.router.close()
        self.registry.close()

    async def _sweep(self) -> None:
        """Drop registrations that missed their heartbeats."""
        interval = max(min(self.registry.ttl / 4, 5.0), 0.05)
        while True:
            await asyncio.sleep(interval)
            for replica_id in self.registry.expire():
                log.info("replica %s missed its heartbeats for %gs: dropped", replica_id, self.registry.ttl)

    # -- the registry ---------------------------------------------------------------------------
    def listing(self) -> list[dict[str, Any]]:
        """Every replica: those registered over HTTP, then those found only in discovery."""
        entries = [e.listing() for e in self.registry.entries()]
        known = {e["replica_id"] for e in entries}
        now = time.time()
        seen = self._first_seen
        live: set[str] = set()
        for view in self.router.replicas():
            live.add(view.replica_id)
            if view.replica_id in known:
                continue
            known.add(view.replica_id)
            first = seen.setdefault(view.replica_id, now)
            entries.append({"replica_id": view.replica_id, "endpoint": view.endpoint,
                            "capabilities": list(view.labels), "registered_at": iso(first),
                            "last_heartbeat": iso(now), "source": "discovery"})
        for gone in [r for r in seen if r not in live]:
            del seen[gone]
        return entries

    def _peers(self, entry: Registration) -> list[dict[str, Any]]:
        own = entry.runtime.instance_id if entry.runtime is not None else None
        return [msgspec.to_builtins(r) for r in self.router.records() if r.instance_id != own]

    # -- the app --------------------------------------------------------------------------------
    def _build(self) -> FastAPI:
        app = FastAPI(title="servemesh capability API server (AnyServe-compatible)", version="1")

        @app.get("/registry", response_model=RegistryResponse)
        async def registry() -> dict[str, Any]:
            entries = self.listing()
            return {"replicas": entries, "total": len(entries)}

        @app.post("/register", response_model=RegisterResponse, response_model_exclude_none=True)
        async def register(body: RegisterRequest) -> dict[str, Any]:
            info = body.servemesh
            runtime = None if info is None else RuntimeInfo(info.namespace, info.instance_id, dict(info.transport),
                                                            info.streams, info.models)
            entry, created = self.registry.register(body.replica_id, body.endpoint, body.capabilities,
                                                    token=body.token, runtime=runtime)
            if created:
                log.info("registered replica %s at %s: %s", entry.replica_id, entry.endpoint, entry.capabilities)
            caps = ", ".join(wire_text(c) for c in entry.capabilities)
            verb = "Registered" if created else "Refreshed"
            reply: dict[str, Any] = {"success": True, "ttl": self.registry.ttl,
                                     "message": f"{verb} {entry.replica_id} at {entry.endpoint} with "
                                                f"capabilities: {caps}"}
            if info is not None:
                reply["peers"] = self._peers(entry)
            return reply

        async def unregister(body: UnregisterRequest) -> dict[str, Any]:
            if not self.registry.unregister(body.replica_id, body.token):
                raise ApiError(404, f"replica {body.replica_id!r} is not registered here", code="replica_not_found",
                               param="replica_id", type="not_found_error")
            log.info("unregistered replica %s", body.replica_id)
            return {"success": True, "message": f"Unregistered {body.replica_id}"}

        app.add_api_route("/unregister", unregister, methods=["POST", "DELETE"], response_model=RegisterResponse,
                          response_model_exclude_none=True)

        return app

    def _call(self, scope: Scope, body: bytes) -> tuple[wire.InferCall, str]:
        want = wire.want_from_headers(scope["headers"])
        subject = "capability " + wire_text(want)
        self.kit.about_scope(scope, subject)
        if not want:
            raise ValidationError("say which capability to call: give at least one X-Capability-* header "
                                  "(e.g. X-Capability-Type: chat)", field="X-Capability-*")
        chain, depth = wire.chain_from_headers(header(scope, b"x-delegated-from"), header(scope, b"x-delegation-depth"))
        return wire.InferCall(body, want, chain, depth), subject

    async def infer_json(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        """``POST /infer/json``: a raw route (``kit.raw``), the hot path of this server."""
        call, _ = self._call(scope, body)
        # this server's SERVEMESH_REQUEST_TIMEOUT bounds the call (a 504); the deadline travels
        # to the replica, whose handler sees it (context.is_cancelled()) and is stopped at it
        ctx = self.kit.scope_context(scope, timeout=self.request_timeout)
        data = await unless_disconnected(receive, self.router.unary(call, ctx, wire.excluded(call.chain, call.want)))
        await send_bytes(send, 200, data)

    async def infer_stream(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        """``POST /infer/stream``: failures before the first frame get their status code;
        after it, an ``event: error`` frame."""
        call, subject = self._call(scope, body)
        ctx = self.kit.scope_context(scope, timeout=self.request_timeout)
        exclude = wire.excluded(call.chain, call.want)
        first, rest = await unless_disconnected(receive, self.router.stream(call, ctx, exclude))
        await event_stream(self._sse(first, rest, subject))(scope, receive, send)

    async def _sse(self, first: bytes | None, rest: AsyncIterator[list[bytes]], subject: str) -> AsyncIterator[bytes]:
        try:
            if first is not None:
                yield b"data: " + first + b"\n\n"
            async for batch in rest:  # what arrived together is written together
                yield b"".join([b"data: " + item + b"\n\n" for item in batch])
        except ServemeshError as exc:
            yield _ERROR_EVENT + self.kit.sse_error(exc, subject)
        finally:
            await rest.aclose()  # type: ignore[attr-defined]


def wire_text(labels: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in labels.items()) + "}"
