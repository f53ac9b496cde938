"""The Open Inference Protocol v2 gRPC surface: ``inference.GRPCInferenceService``.

``ServerLive``, ``ServerReady``, ``ModelReady``, ``ServerMetadata``, ``ModelMetadata``,
``ModelInfer`` (outputs in ``raw_output_contents``, as Triton answers and tritonclient
reads them; inputs typed or raw) and the bidirectional ``ModelStreamInfer``: each
request of a stream is served as it arrives (at most ``STREAM_CONCURRENCY`` at once),
every response of a streaming (decoupled) model goes back as one message carrying the
request's id, and a request that fails gets a message with ``error_message`` (and the
request's id in ``infer_response``) while the stream goes on, as Triton does (a replica
lost mid-stream too: never a short stream without an error). With Triton's
``triton_enable_empty_final_response`` a request's last message is an empty response
marked ``triton_final_response``. A client that cancels stops the replicas' handlers.
Errors become status codes through the kit's one table (``kit.grpc``); bytes that are
not a ``ModelInferRequest`` are ``INVALID_ARGUMENT`` (in a stream: that request's error
response).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from ... import __version__
from ...errors import ServemeshError
from ...runtime import Context
from ...tensors import InferRequest, from_proto, to_proto
from ...tensors.proto import grpc_predict_v2_pb2 as pb2
from ...tensors.proto import grpc_predict_v2_pb2_grpc as pb2_grpc
from ..kit import ApiError
from ..kit.grpc import add_inference_servicer, bind_server, parse_request, problem_of
from .service import ENABLE_FINAL, EXTENSIONS, FINAL, KServeService

log = logging.getLogger("servemesh.gateway.kserve.grpc")

#: requests of one ModelStreamInfer call served at once; responses waiting to be sent
STREAM_CONCURRENCY = 32
STREAM_QUEUE = 64

_DONE = object()


class KServeServicer(pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, service: KServeService) -> None:
        self.service = service
        settings = service.router.runtime.settings
        self.debug = settings.debug_errors
        self.timeout = settings.request_timeout

    def _context(self, context: grpc.aio.ServicerContext) -> Context:
        remaining = context.time_remaining()
        return Context(timeout=remaining if remaining is not None and remaining > 0 else self.timeout)

    async def _abort(self, context: grpc.aio.ServicerContext, exc: BaseException, what: str) -> None:
        if not isinstance(exc, (ServemeshError, ApiError)):
            log.exception("%s failed", what)  # a bug here: handlers' errors arrive as RemoteError
        code, problem = problem_of(exc, self.debug)
        await context.abort(code, problem.message)

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        runtime = self.service.router.runtime
        return pb2.ServerReadyResponse(ready=not runtime.is_stopping and bool(self.service.catalog.models()))

    async def ModelReady(self, request: Any, context: Any) -> Any:
        return pb2.ModelReadyResponse(ready=self.service.ready(request.name, request.version))

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb2.ServerMetadataResponse(name="servemesh", version=__version__, extensions=EXTENSIONS)

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            meta = self.service.metadata(self.service.model(request.name, request.version))
        except Exception as exc:
            await self._abort(context, exc, "ModelMetadata")
            raise  # not reached: abort raises
        tensors = [[pb2.ModelMetadataResponse.TensorMetadata(**t) for t in meta[k]] for k in ("inputs", "outputs")]
        return pb2.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                                         inputs=tensors[0], outputs=tensors[1])

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            response = await self.service.infer(from_proto(parse_request(request)), self._context(context))
            return to_proto(response, raw=True)
        except Exception as exc:
            await self._abort(context, exc, "ModelInfer")

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[Any],
                               context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        queue: asyncio.Queue[Any] = asyncio.Queue(STREAM_QUEUE)
        reader = asyncio.ensure_future(self._read(request_iterator, context, queue))
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                yield item
            await reader  # its failure (the request stream broke) ends the call with it
        finally:
            if not reader.done():
                reader.cancel()  # the client left: every request's work stops, replicas included
            await asyncio.gather(reader, return_exceptions=True)

    async def _read(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext,
                    queue: asyncio.Queue[Any]) -> None:
        """Serve each request of the stream as it arrives; ``_DONE`` once all are answered."""
        slots = asyncio.Semaphore(STREAM_CONCURRENCY)
        async with asyncio.TaskGroup() as group:
            async for message in requests:
                await slots.acquire()
                task = group.create_task(self._serve_one(message, context, queue))
                task.add_done_callback(lambda _: slots.release())
        await queue.put(_DONE)

    async def _serve_one(self, message: Any, context: grpc.aio.ServicerContext, queue: asyncio.Queue[Any]) -> None:
        request: InferRequest | None = None
        final = False
        try:
            message = parse_request(message)
            request = from_proto(message)
            final = request.parameters.pop(ENABLE_FINAL, False) is True
            async for response in self.service.stream(request, self._context(context)):
                if final:
                    response.parameters[FINAL] = False
                await queue.put(pb2.ModelStreamInferResponse(infer_response=to_proto(response, raw=True)))
        except Exception as exc:  # this request failed; the stream goes on
            if not isinstance(exc, (ServemeshError, ApiError)):
                log.exception("a request of ModelStreamInfer failed")
            _, problem = problem_of(exc, self.debug)
            failed = pb2.ModelInferResponse()
            if isinstance(message, pb2.ModelInferRequest):  # the request's id: the client knows which one failed
                failed.id, failed.model_name, failed.model_version = \
                    message.id, message.model_name, message.model_version
            await queue.put(pb2.ModelStreamInferResponse(error_message=problem.message, infer_response=failed))
            return
        if final:
            last = pb2.ModelInferResponse(model_name=request.model_name, model_version=request.model_version,
                                          id=request.id)
            last.parameters[FINAL].bool_param = True
            await queue.put(pb2.ModelStreamInferResponse(infer_response=last))


class KServeGrpcServer:
    """``server = KServeGrpcServer(host, port)`` binds at once (port 0: a free one);
    ``await server.start(service)`` serves, ``await server.stop()`` ends."""

    def __init__(self, host: str, port: int, *, max_message: int = 64 * 1024 * 1024) -> None:
        self._server, self.port = bind_server(host, port, max_message)
        self.host = host

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self, service: KServeService) -> None:
        add_inference_servicer(KServeServicer(service), self._server)
        await self._server.start()

    async def stop(self, grace: float = 5.0) -> None:
        await self._server.stop(grace)
