"""Capability serving: handlers declared by the labels they serve, routed by labels.

::

    from servemesh.capability import App, Context, ModelInferRequest, ModelInferResponse

    app = App()     # AnyServe's ``AnyServe()``

    @app.capability(type="chat", model="demo")
    def chat(request: ModelInferRequest, context: Context) -> ModelInferResponse: ...

Serve it with ``servemesh serve module:app --api-server http://host:8080`` and call it
through an API server (``servemesh api-server``) with ``X-Capability-Type: chat``.
This package is the domain (handlers, replicas, routing, registrations); the HTTP
and gRPC surfaces are in ``servemesh.gateway.capability``. See docs/capability.md.
"""

from ..tensors import InferRequest, InferResponse, InferTensor, ModelInferRequest, ModelInferResponse
from . import wire
from .app import AnyServe, App, CapabilitySpec
from .context import Context
from .models import ModelSpec, TensorSpec
from .stream import Stream

__all__ = [
    "AnyServe",
    "App",
    "CapabilitySpec",
    "Context",
    "InferRequest",
    "InferResponse",
    "InferTensor",
    "ModelInferRequest",
    "ModelInferResponse",
    "ModelSpec",
    "Stream",
    "TensorSpec",
    "wire",
]
