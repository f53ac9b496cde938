"""servemesh: serve AI pipelines across processes and machines.

The public API is this module's ``__all__``; everything else is implementation."""

from .config import Settings
from .errors import (
    Cancelled,
    ConfigError,
    DeadlineExceeded,
    InstanceUnavailable,
    NoInstancesError,
    Overloaded,
    RemoteError,
    ServemeshError,
    StreamIncomplete,
    ValidationError,
)
from .log import configure_logging
from .runtime import (
    Annotated,
    Client,
    Context,
    DistributedRuntime,
    ResponseStream,
    worker,
)
from .sdk import (
    ServiceClient,
    ServiceContext,
    async_init,
    depends,
    endpoint,
    entrypoint,
    on_shutdown,
    run,
    serve,
    service,
)

__version__ = "0.1.0"

__all__ = [
    "Annotated",
    "Cancelled",
    "Client",
    "ConfigError",
    "Context",
    "DeadlineExceeded",
    "DistributedRuntime",
    "InstanceUnavailable",
    "NoInstancesError",
    "Overloaded",
    "RemoteError",
    "ResponseStream",
    "ServemeshError",
    "ServiceClient",
    "ServiceContext",
    "Settings",
    "StreamIncomplete",
    "ValidationError",
    "__version__",
    "async_init",
    "configure_logging",
    "depends",
    "endpoint",
    "entrypoint",
    "on_shutdown",
    "run",
    "serve",
    "service",
    "worker",
]
