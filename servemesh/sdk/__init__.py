"""The authoring SDK: components as plain classes, served by ``serve()``."""

from .context import ServiceClient, ServiceContext, depends
from .serve import run, serve
from .spec import async_init, endpoint, entrypoint, on_shutdown, service

__all__ = [
    "ServiceClient",
    "ServiceContext",
    "async_init",
    "depends",
    "endpoint",
    "entrypoint",
    "on_shutdown",
    "run",
    "serve",
    "service",
]
