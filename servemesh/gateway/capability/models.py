"""The request and response bodies of the capability API (AnyServe-compatible)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

Scalar = str | int | float | bool
Label = Scalar | list[Scalar]


class ServemeshInfo(BaseModel):
    """What a servemesh replica adds to its registration: how to reach it on the request plane.
    Fields a newer replica adds are ignored (a rolling upgrade registers with an older
    API server)."""

    model_config = ConfigDict(extra="ignore")

    namespace: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    instance_id: int = Field(ge=1, lt=2**64)
    transport: dict[str, str] = Field(max_length=8)
    streams: list[bool] | None = Field(default=None, max_length=256)
    #: each capability's declared model metadata (inputs, outputs, platform, versions), or null
    models: list[dict[str, Any] | None] | None = Field(default=None, max_length=256)


class RegisterRequest(BaseModel):
    """``POST /register``: a replica, where it answers OIP v2 gRPC, and its capabilities."""

    replica_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    #: host:port of its OIP v2 gRPC server (``[v6::addr]:port`` for IPv6)
    endpoint: str = Field(min_length=3, max_length=256, pattern=r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):[0-9]{1,5}$")
    capabilities: list[Annotated[dict[str, Label], Field(min_length=1)]] = Field(min_length=1, max_length=256)
    #: the secret that owns this replica id (re-registering it elsewhere, unregistering)
    token: str | None = Field(default=None, min_length=8, max_length=256)
    servemesh: ServemeshInfo | None = None


class UnregisterRequest(BaseModel):
    replica_id: str = Field(min_length=1, max_length=128)
    token: str | None = Field(default=None, max_length=256)


class RegisterResponse(BaseModel):
    success: bool
    message: str
    #: seconds the registration lives without a heartbeat (POST /register again)
    ttl: float | None = None
    #: the other servemesh replicas' runtime records (for their delegations)
    peers: list[dict[str, Any]] | None = None


class RegistryEntry(BaseModel):
    replica_id: str
    endpoint: str
    capabilities: list[dict[str, Any]]
    registered_at: str
    last_heartbeat: str
    #: "http" (registered with this API server) or "discovery" (found in etcd)
    source: str


class RegistryResponse(BaseModel):
    replicas: list[RegistryEntry]
    total: int


class ErrorBody(BaseModel):
    """Every error: ``{"error": message, "code": ..., "status": ...}``; a missing capability
    adds ``capability`` and ``available``, a refused delegation ``chain``, a failed
    handler ``error_type``."""

    error: str
    code: str | None = None
    status: int
    param: str | None = None


def capability_error(status: int, message: str, type: str, code: str | None, param: str | None) -> dict[str, Any]:
    """The capability API's error body (AnyServe's ``{"error": message}``, with more)."""
    body: dict[str, Any] = {"error": message, "code": code, "status": status}
    if param:
        body["param"] = param
    return body
