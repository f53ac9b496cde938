"""Running one capability handler: ``def`` handlers in bounded worker threads,
``async def`` ones on the event loop; unary or streamed.

The wire forms are the caller's choice (``encode``): contents JSON bytes for the
request plane, protobuf messages for gRPC. For a ``def`` handler, decoding the
request, the handler and encoding its answer all run in the worker thread, so the
event loop only moves bytes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from ..errors import (
    InvalidObjectRef,
    ObjectStoreError,
    ObjectTooLarge,
    Overloaded,
    RemoteError,
    SerializationError,
    ServemeshError,
    ValidationError,
)
from ..log import Throttled
from ..tensors import InferRequest, response_from_any
from .app import CapabilitySpec
from .stream import Stream

if TYPE_CHECKING:
    from .context import Context

Encode = Callable[[Any], Any]
Decode = Callable[[Any], InferRequest]


def answer(encode: Encode, ctx: Context | None = None) -> Encode:
    """``encode`` applied to what a handler returned or sent, as an ``InferResponse``; a
    response without an ``id`` (or ``model_name``) gets the request's, as OIP v2 says."""
    def convert(item: Any) -> Any:
        if item is None:
            raise SerializationError("the handler returned None: return a ModelInferResponse (InferResponse), "
                                     "a protobuf ModelInferResponse, or a contents JSON dict")
        response = response_from_any(item)
        request = ctx.request if ctx is not None else None
        if request is not None:
            if not response.id:
                response.id = request.id
            if not response.model_name:
                response.model_name = request.model_name
        return encode(response)

    return convert


#: errors that say "the request is wrong" (4xx): raised by a handler's own code (a bad
#: output tensor, an answer that is not a response, an object too large to store) they
#: are the handler's failure, not the caller's
_CALLER_ERRORS = (ValidationError, SerializationError, ObjectTooLarge)


log = logging.getLogger("servemesh.capability")
throttled = Throttled(log)


def handler_fault(exc: BaseException) -> BaseException:
    """What the caller sees for ``exc`` out of a handler (after its request was decoded):
    a request-shaped error, or a misuse of the object store (``objects.create`` on the
    event loop), becomes ``RemoteError`` (500, its type and message), unless it came
    back from a call the handler made (``context.call`` / ``delegate``: that replica's
    answer stands). Exceptions that are not servemesh's are logged here, with their
    traceback (throttled): the caller gets only their type and message."""
    if getattr(exc, "forwarded", False):
        return exc
    if not isinstance(exc, ServemeshError):
        throttled.warning(type(exc).__name__, "a handler raised %s: %s", type(exc).__name__, exc, exc_info=exc)
        return exc
    if ((isinstance(exc, _CALLER_ERRORS) and not isinstance(exc, InvalidObjectRef))  # a ref is the caller's input
            or type(exc) is ObjectStoreError):
        fault = RemoteError(type(exc).__name__, str(exc))
        fault.__cause__ = exc
        return fault
    return exc


class Runner:
    """Runs handlers for one replica; ``threads`` worker threads for ``def`` handlers and
    at most ``max_queue`` requests in flight (then ``Overloaded``: the caller may try
    another replica)."""

    def __init__(self, path: str, threads: int, max_queue: int) -> None:
        self.path = path
        self.executor = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="capability")
        self.max_queue = max_queue
        self.inflight = 0

    def close(self) -> None:
        # threads still in a handler finish on their own; nothing new starts
        self.executor.shutdown(wait=False, cancel_futures=True)

    def _admit(self) -> None:
        if self.inflight >= self.max_queue:
            raise Overloaded(self.path, self.max_queue)

    async def unary(self, spec: CapabilitySpec, raw: Any, decode: Decode, ctx: Context, encode: Encode) -> Any:
        """The encoded answer of a unary handler to ``decode(raw)``."""
        self._admit()
        self.inflight += 1
        try:
            return await self._unary_admitted(spec, raw, decode, ctx, encode)
        finally:
            self.inflight -= 1

    async def stream(self, spec: CapabilitySpec, raw: Any, decode: Decode, ctx: Context,
                     encode: Encode) -> AsyncIterator[Any]:
        """The encoded responses of a handler: every ``stream.send`` of a streaming one,
        or the one answer of a unary one."""
        self._admit()
        self.inflight += 1
        try:
            if not spec.stream:
                yield await self._unary_admitted(spec, raw, decode, ctx, encode)
                return
            if spec.is_generator:
                request = ctx.request = decode(raw)
                try:
                    async for item in spec.handler(request, ctx):
                        yield encode(item)
                except Exception as exc:
                    raise handler_fault(exc) from None
                return
            loop = asyncio.get_running_loop()
            stream = Stream(loop, encode)
            if spec.is_async:
                request = ctx.request = decode(raw)
                running: asyncio.Future[Any] = asyncio.ensure_future(spec.handler(request, ctx, stream))
            else:
                running = loop.run_in_executor(self.executor, _stream_in_thread, spec, raw, decode, ctx, stream)
            running.add_done_callback(lambda f: stream.finish(None if f.cancelled() else f.exception()))
            try:
                while True:
                    try:
                        item = await stream.get()
                    except StopAsyncIteration:
                        break
                    except Exception as exc:
                        raise handler_fault(exc) from None
                    yield item
            finally:
                stream.close()
                if not running.done():
                    running.cancel()  # an async handler stops now; a thread stops at its next send
                    if spec.is_async:
                        await asyncio.gather(running, return_exceptions=True)
        finally:
            self.inflight -= 1

    async def _unary_admitted(self, spec: CapabilitySpec, raw: Any, decode: Decode, ctx: Context,
                              encode: Encode) -> Any:
        if spec.is_async:
            request = ctx.request = decode(raw)
            try:
                return encode(await _call(spec, request, ctx))
            except Exception as exc:
                raise handler_fault(exc) from None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, _in_thread, spec, raw, decode, ctx, encode)


async def _call(spec: CapabilitySpec, request: InferRequest, ctx: Context) -> Any:
    return await (spec.handler(request, ctx) if spec.takes_context else spec.handler(request))


def _in_thread(spec: CapabilitySpec, raw: Any, decode: Decode, ctx: Context, encode: Encode) -> Any:
    request = ctx.request = decode(raw)
    try:
        return encode(spec.handler(request, ctx) if spec.takes_context else spec.handler(request))
    except Exception as exc:
        raise handler_fault(exc) from None


def _stream_in_thread(spec: CapabilitySpec, raw: Any, decode: Decode, ctx: Context, stream: Stream) -> None:
    request = ctx.request = decode(raw)
    try:
        spec.handler(request, ctx, stream)
    except Exception as exc:
        raise handler_fault(exc) from None
