"""``Context``: what a capability handler gets next to its request.

- ``context.objects``: the object store (``create`` / ``get`` from ``def`` handlers,
  ``acreate`` / ``aget`` from ``async def`` ones);
- ``context.call(capability, inputs)``: call another capability (on any replica, this
  one included) and get its response;
- ``context.delegate(capability=...)``: hand this request to a replica that has the
  capability and answer with its response; the delegation chain travels with it, a
  replica is never asked again for labels it was already asked for on the way (a
  loop), and the depth is limited;
- ``replica_id``, ``capability`` (the labels this handler serves), ``request_id``,
  ``chain`` (the replicas this request came through).

From a ``def`` handler (a worker thread) ``call`` and ``delegate`` wait for the answer;
``async def`` handlers ``await context.acall(...)`` / ``await context.adelegate(...)``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ..errors import Cancelled, ConfigError, DeadlineExceeded, ServemeshError, ValidationError
from ..runtime import Context as RuntimeContext
from ..tensors import InferRequest, InferResponse, InferTensor, decode_contents_response
from . import wire

if TYPE_CHECKING:
    from ..objects import Objects
    from .replica import Replica

T = TypeVar("T")


class Context:
    """Per request; made by the replica."""

    __slots__ = ("_body", "_hops", "_runtime_ctx", "_want", "call_depth", "capability", "chain", "replica",
                 "request")

    def __init__(self, replica: Replica, labels: Mapping[str, Any], want: Mapping[str, Any],
                 runtime_ctx: RuntimeContext, chain: list[str], depth: int, body: bytes | None) -> None:
        self.replica = replica
        #: the labels of the handler serving this request
        self.capability = dict(labels)
        self._want = want  # the labels the request asked for
        self._runtime_ctx = runtime_ctx
        self._hops = chain
        #: replicas this request was delegated or called from, oldest first
        self.chain = wire.replicas_of(chain)
        self.call_depth = depth
        self._body = body
        #: the request being served (set once it is decoded)
        self.request: InferRequest | None = None

    @property
    def replica_id(self) -> str:
        return self.replica.replica_id

    @property
    def request_id(self) -> str:
        return self._runtime_ctx.id

    @property
    def objects(self) -> Objects:
        """The object store every replica of this API server shares (``--object-store``)."""
        objects = self.replica.objects
        if objects is None:
            raise ConfigError("this replica has no object store: start it with --object-store PATH-or-URL")
        return objects

    def is_cancelled(self) -> bool:
        """True once the caller left or the deadline passed: a long handler may stop early."""
        return self._runtime_ctx.is_stopped() or self._runtime_ctx.expired()

    # -- calling other capabilities ---------------------------------------------------------
    async def acall(self, capability: Mapping[str, Any], inputs: Any = None, *, model_name: str = "",
                    request: InferRequest | None = None) -> InferResponse:
        """Call the capability ``capability`` (labels, like the ``X-Capability-*`` headers)
        with ``request``, or a request of ``inputs`` (``{"text": "hi"}``, a list of
        tensors); its response."""
        body = wire.encode_request(request if request is not None else build_request(inputs, model_name))
        return await self._forward(capability, body, delegate=False)

    async def adelegate(self, capability: Mapping[str, Any] | None = None, *, request: InferRequest | None = None,
                        **labels: Any) -> InferResponse:
        """Hand this request (or ``request``) to a replica with ``capability`` (or the
        labels as keywords) and return its response."""
        want = dict(capability or {}, **labels)
        if not want:
            raise ConfigError("delegate(capability={...}) needs the labels of the capability to delegate to")
        body = wire.encode_request(request) if request is not None else self._body
        if body is None:
            assert self.request is not None
            body = wire.encode_request(self.request)
        return await self._forward(want, body, delegate=True)

    def call(self, capability: Mapping[str, Any], inputs: Any = None, *, model_name: str = "",
             request: InferRequest | None = None) -> InferResponse:
        """``acall`` for ``def`` handlers (worker threads): waits for the response."""
        return self._blocking("call", "acall", self.acall(capability, inputs, model_name=model_name, request=request))

    def delegate(self, capability: Mapping[str, Any] | None = None, *, request: InferRequest | None = None,
                 **labels: Any) -> InferResponse:
        """``adelegate`` for ``def`` handlers (worker threads): waits for the response."""
        return self._blocking("delegate", "adelegate", self.adelegate(capability, request=request, **labels))

    async def _forward(self, capability: Mapping[str, Any], body: bytes, *, delegate: bool) -> InferResponse:
        want = {wire.match_key(k): str(v) for k, v in capability.items()}
        ctx = RuntimeContext(self._runtime_ctx.id, deadline=self._runtime_ctx.deadline)
        unlink = self._runtime_ctx.on_stop(ctx.stop_generating)  # the caller left: so does the call
        try:
            data = await self.replica.forward(want, body, self._hops, self.call_depth, ctx, delegate=delegate,
                                              received=self._want)
        except ServemeshError as exc:
            exc.forwarded = True  # type: ignore[attr-defined]  # that replica's answer: it stands (handler_fault)
            raise
        finally:
            unlink()
        return decode_contents_response(data)

    def _blocking(self, name: str, async_name: str, op: Coroutine[Any, Any, T]) -> T:
        loop = self.replica.loop
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            op.close()
            raise ConfigError(f"context.{name}() waits for the answer and was called on the event loop, which it "
                              f"would block: in an async def handler use `await context.{async_name}(...)`")
        future = asyncio.run_coroutine_threadsafe(op, loop)
        remaining = self._runtime_ctx.remaining()
        try:
            return future.result(None if remaining is None else max(remaining, 0.0) + 1.0)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise DeadlineExceeded(f"context.{name}() did not finish within the request's deadline") from None
        except concurrent.futures.CancelledError:
            raise Cancelled(f"context.{name}() was cancelled: the replica is stopping") from None


def build_request(inputs: Any, model_name: str = "") -> InferRequest:
    """A request of ``inputs``: a mapping of names to values (``str`` / ``bytes`` and lists
    of them are BYTES, numbers and arrays take numpy's datatype, tensors pass as they
    are), or a sequence of ``InferTensor``."""
    request = InferRequest(model_name)
    if inputs is None:
        return request
    if isinstance(inputs, Mapping):
        for name, value in inputs.items():
            request.inputs.append(_tensor(str(name), value))
        return request
    if isinstance(inputs, (list, tuple)) and all(isinstance(t, InferTensor) for t in inputs):
        request.inputs.extend(inputs)
        return request
    raise ValidationError(f"inputs must be a mapping of names to values or a list of tensors, not "
                          f"{type(inputs).__name__}", field="inputs")


def _tensor(name: str, value: Any) -> InferTensor:
    if isinstance(value, InferTensor):
        return value
    if isinstance(value, (str, bytes)):
        return InferTensor(name, "BYTES", [1], [value])
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (str, bytes)) for v in value):
        return InferTensor(name, "BYTES", [len(value)], list(value))
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"input {name!r}: {exc}", field=name) from None
    if array.dtype == object:
        raise ValidationError(f"input {name!r} holds {type(value).__name__} values that are not a tensor",
                              field=name)
    return InferTensor.from_numpy(name, array if array.ndim else array.reshape(1))


__all__ = ["Context", "build_request"]
