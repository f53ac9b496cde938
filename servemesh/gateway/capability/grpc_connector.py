"""``GrpcConnector``: the request plane's way to replicas that only speak OIP v2 gRPC.

A replica registered by hand (``curl .../register`` with just an ``endpoint``) has
records whose transport is ``{"grpc": "host:port"}``. This connector, added to a
runtime's request plane (``plane.add_connector``), opens streams to them: an
``InferCall`` becomes a ``ModelInferRequest`` (the labels as ``x-capability-*``
metadata, the delegation chain too), ``ModelInfer`` answers a unary call and
``ModelStreamInfer`` a streamed one, and each response comes back as contents JSON
bytes, exactly as a servemesh replica's would. A servemesh replica's failures arrive as
the exact servemesh error (its kind and fields in ``x-servemesh-error``: trailing
metadata, or a stream error response's parameter); another server's status codes become
servemesh errors (``UNAVAILABLE`` is ``InstanceUnavailable``, so the router fails over;
``UNIMPLEMENTED``, an endpoint that does not serve OIP v2 gRPC, ``UpstreamProtocolError``:
a 502).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Any

import grpc
import msgspec

from ...capability import wire
from ...errors import (
    Cancelled,
    CapabilityNotFound,
    DeadlineExceeded,
    InstanceUnavailable,
    Overloaded,
    RemoteError,
    ServemeshError,
    UpstreamProtocolError,
    ValidationError,
)
from ...runtime import Annotated
from ...runtime import Context as RuntimeContext
from ...runtime.records import InstanceRecord
from ...runtime.serving import ANNOTATED
from ...tensors import decode_contents_request, from_proto, to_proto
from ...tensors.proto import grpc_predict_v2_pb2_grpc as pb2_grpc
from ..kit.grpc import ERROR_KEY, error_from_metadata, error_from_text

KEY = "grpc"


class GrpcConnector:
    def __init__(self, connect_timeout: float = 3.0, request_timeout: float = 300.0) -> None:
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self._channels: dict[str, tuple[grpc.aio.Channel, pb2_grpc.GRPCInferenceServiceStub]] = {}

    def accepts(self, record: InstanceRecord) -> bool:
        return KEY in record.transport

    def stub(self, address: str) -> pb2_grpc.GRPCInferenceServiceStub:
        found = self._channels.get(address)
        if found is None:
            channel = grpc.aio.insecure_channel(address)
            found = self._channels[address] = (channel, pb2_grpc.GRPCInferenceServiceStub(channel))
        return found[1]

    def open_nowait(self, record: InstanceRecord, request: Any, ctx: RuntimeContext | None) -> GrpcStream:
        call = request if isinstance(request, wire.InferCall) else msgspec.convert(request, wire.InferCall)
        message = to_proto(decode_contents_request(call.body))  # a bad body fails here, before any I/O
        return GrpcStream(self, record, call, message, ctx)

    async def open(self, record: InstanceRecord, request: Any, ctx: RuntimeContext | None) -> GrpcStream:
        return self.open_nowait(record, request, ctx)

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel, _ in channels.values():
            await channel.close()


class GrpcStream:
    """One call to a gRPC replica (``ClientStream``); refusals surface while iterating."""

    refusable = False

    def __init__(self, connector: GrpcConnector, record: InstanceRecord, call: wire.InferCall, message: Any,
                 ctx: RuntimeContext | None) -> None:
        self._connector = connector
        self._record = record
        self._call = call
        self._message = message
        self._ctx = ctx
        self._rpc: Any = None
        self._done = False
        self._interrupt: ServemeshError | None = None
        #: set by the client: run once when the stream ends
        self.on_close: Callable[[], None] | None = None

    @property
    def finished(self) -> bool:
        return self._done

    def _metadata(self) -> list[tuple[str, str]]:
        call = self._call
        metadata = [(wire.CAPABILITY_PREFIX + k.replace("_", "-"), v) for k, v in call.want.items()]
        if call.chain:
            metadata.append((wire.DELEGATED_FROM, ",".join(call.chain)))
            metadata.append((wire.DELEGATION_DEPTH, str(call.depth)))
        return metadata

    async def items(self, mode: int) -> AsyncGenerator[Any, None]:
        record = self._record
        address = record.transport[KEY]
        stub = self._connector.stub(address)
        remaining = self._ctx.remaining() if self._ctx is not None else None
        timeout = self._connector.request_timeout if remaining is None else max(remaining, 0.001)
        try:
            if record.endpoint == wire.UNARY:
                self._rpc = stub.ModelInfer(self._message, metadata=self._metadata(), timeout=timeout)
                response = await self._rpc
                yield _wrap(wire.encode_response(from_proto(response)), mode)
            else:
                self._rpc = stub.ModelStreamInfer(iter([self._message]), metadata=self._metadata(), timeout=timeout)
                async for message in self._rpc:
                    if message.error_message:
                        typed = message.infer_response.parameters.get(ERROR_KEY)
                        raise (error_from_text(typed.string_param) if typed is not None else None) \
                            or RemoteError("InferError", message.error_message)
                    yield _wrap(wire.encode_response(from_proto(message.infer_response)), mode)
        except grpc.aio.AioRpcError as exc:
            if self._interrupt is not None:
                raise self._interrupt from None
            raise _error(exc, record, self._call) from None
        finally:
            self._finish()

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            on_close, self.on_close = self.on_close, None
            if on_close is not None:
                on_close()

    def interrupt(self, exc: ServemeshError) -> None:
        self._interrupt = exc
        self.cancel()

    def cancel(self) -> None:
        if self._rpc is not None and not self._done:
            self._rpc.cancel()

    async def aclose(self) -> None:
        self.cancel()


def _wrap(data: bytes, mode: int) -> Any:
    return Annotated(data) if mode == ANNOTATED else data


def _error(exc: grpc.aio.AioRpcError, record: InstanceRecord, call: wire.InferCall) -> ServemeshError:
    typed = error_from_metadata(exc.trailing_metadata())
    if typed is not None:  # a servemesh replica: the error it raised, whole
        return typed
    code = exc.code()
    details = exc.details() or code.name
    address = record.transport.get(KEY, "")
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return UpstreamProtocolError(address, "OIP v2 gRPC", code.name)
    if code == grpc.StatusCode.UNAVAILABLE:
        return InstanceUnavailable(record.instance_id, address, details)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return ValidationError(details)
    if code == grpc.StatusCode.NOT_FOUND:
        return CapabilityNotFound(dict(call.want), [])
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return Overloaded(f"replica at {address}", 0)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"the replica at {address} did not answer in time")
    if code == grpc.StatusCode.CANCELLED:
        return Cancelled(details)
    return RemoteError(code.name, details)
