"""The servemesh runtime: ``DistributedRuntime``, naming, clients, streams."""

from .annotated import Annotated
from .client import Client, InstanceInfo, ResponseStream
from .component import Component, Endpoint, Namespace
from .context import Context
from .distributed import DistributedRuntime
from .worker import run, worker

__all__ = [
    "Annotated",
    "Client",
    "Component",
    "Context",
    "DistributedRuntime",
    "Endpoint",
    "InstanceInfo",
    "Namespace",
    "ResponseStream",
    "run",
    "worker",
]
