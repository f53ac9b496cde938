"""OpenAI-compatible HTTP frontend: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``.

Requests go to a processor serving the model (``inference.processor.process``),
which calls the engines. The models listed are those of the live processors'
registrations (a processor registers only once it sees an engine), so a listed
model is one whose requests will be served. A client that disconnects cancels the
work all the way down, streamed or not: the work runs next to a disconnect
listener, and the processor and engine calls share its context.

Work per request is bounded: the request models bound every field
(``openai_models``), ``max_tokens`` is checked against the model's context length
(the processors' ``context_length`` capability; the processor checks the prompt
too), and answers are read by what is ready (``runtime.ready.ready_batches``), which
yields to the event loop after every full batch, so one huge answer in an embedded
pipeline (where the engine runs in the frontend's own task) never starves other
requests or signals.

Streams relayed that way: the tokens that arrived together become their chunks (one per token, each rendered from the
request's prepared prefix and suffix, no model or dict per token) written in one
send; the first token is never held back to wait for others.

Health, metrics, admission control, request ids and the mapping of errors to
HTTP come from the gateway kit; this module has the routes and the error shape.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import msgspec
import pydantic
from fastapi import FastAPI, Request
from prometheus_client import Histogram
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from ..errors import NoInstancesError, ServemeshError
from ..llm.protocol import ChatMessage, ProcessorOutput, ProcessorRequest, SamplingParams, processor_output
from ..runtime import Client, Context, DistributedRuntime, ResponseStream
from ..runtime.ready import ready_batches
from .kit import DONE, ApiError, GatewayKit, GatewayMetrics, Problem, event, event_stream
from .kit.disconnect import unless_disconnected
from .kit.gateway import invalid_request
from .kit.raw import header
from .openai_models import ChatCompletionRequest, CompletionRequest, ErrorResponse

log = logging.getLogger("servemesh.gateway.openai")

_encode = msgspec.json.Encoder().encode
M = TypeVar("M", bound=pydantic.BaseModel)

#: max_tokens when the request gives none (capped by the context length)
DEFAULT_MAX_TOKENS = 256


def openai_error(status: int, message: str, type: str, code: str | None, param: str | None) -> dict[str, Any]:
    """The OpenAI error body."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class OpenAIFrontend:
    """``await OpenAIFrontend(runtime).start()`` then serve ``.app`` (see ``servemesh.http``)."""

    def __init__(self, runtime: DistributedRuntime, *, namespace: str = "inference", max_inflight: int = 256,
                 request_timeout: float | None = None, metrics: GatewayMetrics | None = None) -> None:
        self.runtime = runtime
        self.path = f"{namespace}.processor.process"
        #: seconds a request may take, streams included (default: SERVEMESH_REQUEST_TIMEOUT)
        self.request_timeout = request_timeout or runtime.settings.request_timeout
        self.kit = GatewayKit(runtime, "openai", shape=openai_error, error_model=ErrorResponse,
                              max_inflight=max_inflight, ready=lambda: bool(self.models()),
                              info=lambda: {"models": self.models()}, metrics=metrics)
        self._ttft = Histogram("servemesh_http_time_to_first_token_seconds", "Time to the first token",
                               ["model"], registry=self.kit.registry)
        self._processors: Client | None = None
        self._by_model: dict[str, Client] = {}
        self._seen: set[str] = set()  # models some processor registered for, ever
        self.app = self.kit.install(self._build(), raw_routes={("POST", "/v1/chat/completions"): self._raw_chat,
                                                               ("POST", "/v1/completions"): self._raw_completion})

    async def start(self) -> OpenAIFrontend:
        self._processors = await self.runtime.endpoint(self.path).client()
        return self

    async def close(self) -> None:
        clients = [c for c in (self._processors, *self._by_model.values()) if c is not None]
        self._processors, self._by_model = None, {}
        for client in clients:
            await client.close()

    @property
    def inflight(self) -> int:
        return self.kit.inflight

    # -- models ---------------------------------------------------------------------------
    def models(self) -> list[str]:
        """Models with a live processor, from the processors' ``model`` capability."""
        if self._processors is None:
            return []
        models = {str(i.capabilities["model"]) for i in self._processors.instances() if "model" in i.capabilities}
        self._seen |= models
        return sorted(models)

    def context_length(self, model: str) -> int | None:
        """The smallest context length the live processors of ``model`` declare, if any does."""
        if self._processors is None:
            return None
        lengths = [i.capabilities.get("context_length") for i in self._processors.instances()
                   if i.capabilities.get("model") == model]
        known = [n for n in lengths if isinstance(n, int) and n > 0]
        return min(known) if known else None

    async def _open(self, model: str, request: ProcessorRequest,
                    ctx: Context) -> tuple[ResponseStream, ProcessorOutput]:
        """Call a processor of ``model``; errors before the first item become HTTP errors.

        With no live processor the runtime waits its grace period for one, then raises
        ``NoInstancesError``: a 503 for a model served before, a 404 for one never seen."""
        self.models()
        client = self._by_model.get(model)
        cached = client is not None
        if client is None:
            # a model never seen gets a client of its own for this call only, so that
            # requests for made-up names leave nothing behind
            client = await self.runtime.endpoint(self.path).client("least_loaded", {"model": model})
            if model in self._seen:
                new, client = client, self._by_model.setdefault(model, client)
                if client is not new:  # another request made one meanwhile
                    await new.close()
                cached = True
        try:
            response = client.generate(request, context=ctx, annotated=False)
            first = await _first(response)
        except NoInstancesError:
            self.models()
            if model not in self._seen:
                raise ApiError(404, f"the model {model!r} does not exist; available: "
                               f"{', '.join(self.models()) or 'none'}", code="model_not_found",
                               param="model") from None
            raise
        finally:
            if not cached:
                await client.close()  # a stream past its first item no longer needs its client's watch
        self._seen.add(model)
        return response, first

    # -- the app --------------------------------------------------------------------------
    def _build(self) -> FastAPI:
        app = FastAPI(title="servemesh OpenAI-compatible frontend", version="1")

        # the FastAPI routes document the API (OpenAPI) and serve it under the app alone; the
        # server's requests take the raw routes below (the same code, without FastAPI's layers)
        @app.post("/v1/chat/completions", response_model=None)
        async def chat(body: ChatCompletionRequest, request: Request) -> Response:
            return await self._chat(body, request.scope, request.receive)

        @app.post("/v1/completions", response_model=None)
        async def completions(body: CompletionRequest, request: Request) -> Response:
            return await self._completion(body, request.scope, request.receive)

        @app.get("/v1/models")
        async def list_models() -> dict[str, Any]:
            now = int(time.time())
            data = []
            for m in self.models():
                entry: dict[str, Any] = {"id": m, "object": "model", "created": now, "owned_by": "servemesh"}
                if (length := self.context_length(m)) is not None:
                    entry["max_model_len"] = length  # as vLLM reports it
                data.append(entry)
            return {"object": "list", "data": data}

        return app

    def _sampling(self, body: ChatCompletionRequest | CompletionRequest, max_tokens: int | None,
                  param: str) -> SamplingParams:
        """Sampling parameters, ``max_tokens`` checked against the model's context length."""
        limit = self.context_length(body.model)
        if max_tokens is None:
            max_tokens = min(DEFAULT_MAX_TOKENS, limit or DEFAULT_MAX_TOKENS)
        elif limit is not None and max_tokens > limit:
            raise ApiError(400, f"{param} is {max_tokens}, but model {body.model!r} has a context length of "
                           f"{limit} tokens (prompt included)", code="context_length_exceeded", param=param)
        values: dict[str, Any] = {"max_tokens": max_tokens}
        for name in ("temperature", "top_p", "seed"):
            value = getattr(body, name)
            if value is not None:
                values[name] = value
        return SamplingParams(**values)

    # -- the raw routes (the kit's ``RawLane``) -------------------------------------------
    async def _raw_chat(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        request = _parse(ChatCompletionRequest, scope, body)
        await (await self._chat(request, scope, receive))(scope, receive, send)

    async def _raw_completion(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        request = _parse(CompletionRequest, scope, body)
        await (await self._completion(request, scope, receive))(scope, receive, send)

    async def _chat(self, body: ChatCompletionRequest, scope: Scope, receive: Receive) -> Response:
        param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        sampling = self._sampling(body, body.max_completion_tokens or body.max_tokens, param)
        messages = [ChatMessage(role=m.role, content=m.content) for m in body.messages]
        preq = ProcessorRequest(model=body.model, messages=messages, sampling=sampling, stop=body.stops())
        return await self._complete("chat", body, preq, scope, receive)

    async def _completion(self, body: CompletionRequest, scope: Scope, receive: Receive) -> Response:
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise ApiError(400, "only one prompt per request is supported", code="unsupported_value",
                           param="prompt")
        preq = ProcessorRequest(model=body.model, prompt=prompts[0], stop=body.stops(),
                                sampling=self._sampling(body, body.max_tokens, "max_tokens"))
        return await self._complete("completion", body, preq, scope, receive)

    async def _complete(self, kind: str, body: ChatCompletionRequest | CompletionRequest, preq: ProcessorRequest,
                        scope: Scope, receive: Receive) -> Response:
        if body.n != 1:
            raise ApiError(400, "only n=1 is supported", code="unsupported_value", param="n")
        subject = f"model {body.model!r}"
        self.kit.about_scope(scope, subject)
        ctx = self.kit.scope_context(scope, timeout=self.request_timeout)
        # the first item (and a whole unstreamed answer) is awaited next to a disconnect listener
        return await unless_disconnected(receive, self._answer(kind, body, preq, ctx, subject))

    async def _answer(self, kind: str, body: ChatCompletionRequest | CompletionRequest, preq: ProcessorRequest,
                      ctx: Context, subject: str) -> Response:
        started = time.perf_counter()
        response, first = await self._open(body.model, preq, ctx)
        self._ttft.labels(body.model).observe(time.perf_counter() - started)
        ident = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        if not body.stream:
            return JSONResponse(await _collect(kind, ident, body.model, first, response))
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return event_stream(self._sse(kind, ident, body.model, first, response, include_usage, subject))

    async def _sse(self, kind: str, ident: str, model: str, first: ProcessorOutput, response: ResponseStream,
                   include_usage: bool, subject: str) -> AsyncIterator[bytes]:
        chunks = Chunks(kind, ident, model)

        def ending(out: ProcessorOutput) -> bytes:
            frames = [chunks.chunk(None if kind == "chat" else "", out.finish_reason)]
            if include_usage:
                frames.append(chunks.usage(_usage(out)))
            frames.append(DONE)
            return b"".join(frames)

        batches = ready_batches(response)
        try:
            out = first
            texts = _texts(first)
            frames = [chunks.chunk(texts[0], None, role=True), *[chunks.token(t) for t in texts[1:]]]
            if out.finish_reason is not None:
                frames.append(ending(out))
                yield b"".join(frames)
                return
            yield b"".join(frames)
            async for batch in batches:  # what was ready together is written together
                frames = []
                for item in batch:
                    out = processor_output(item)
                    if out.finish_reason is None or out.text:
                        frames.extend(chunks.token(t) for t in _texts(out))
                    if out.finish_reason is not None:
                        frames.append(ending(out))
                        yield b"".join(frames)
                        return
                yield b"".join(frames)
            yield self.kit.sse_error(ApiError(502, "the stream ended without a finish reason",
                                              type="upstream_error", code="stream_incomplete"))
        except ServemeshError as exc:
            yield self.kit.sse_error(exc, subject)
        finally:
            await batches.aclose()
            await response.aclose()  # on disconnect too: cancels the processor and the engine


class Chunks:
    """One streamed answer's SSE chunks. A token's chunk is the answer's prepared prefix,
    the text as JSON and a fixed suffix: byte for byte what encoding the whole chunk
    object would make, without building it."""

    __slots__ = ("head", "kind", "prefix", "suffix")

    def __init__(self, kind: str, ident: str, model: str) -> None:
        self.kind = kind
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
        self.head = {"id": ident, "object": obj, "created": int(time.time()), "model": model}
        opening = b',"choices":[{"index":0,"delta":{"content":' if kind == "chat" else b',"choices":[{"index":0,"text":'
        self.prefix = b"data: " + _encode(self.head)[:-1] + opening
        closing = b'},"finish_reason":null,"logprobs":null}]}' if kind == "chat" else \
            b',"finish_reason":null,"logprobs":null}]}'
        self.suffix = closing + b"\n\n"

    def token(self, text: str) -> bytes:
        """The chunk of one token's text."""
        return self.prefix + _encode(text) + self.suffix

    def chunk(self, text: str | None, finish: str | None, role: bool = False) -> bytes:
        """Any chunk: the first (with the role), the last (with the finish reason)."""
        if self.kind == "chat":
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
        return event({**self.head, "choices": [choice]})

    def usage(self, usage: dict[str, int]) -> bytes:
        return event({**self.head, "choices": [], "usage": usage})


def _texts(out: ProcessorOutput) -> list[str]:
    """The text of each token an item carries (one chunk each): ``text`` cut by ``pieces``."""
    pieces = out.pieces
    if not pieces or sum(pieces) != len(out.text):  # one token, or lengths that do not add up
        return [out.text]
    texts, at = [], 0
    for length in pieces:
        texts.append(out.text[at:at + length])
        at += length
    return texts


def _parse(model: type[M], scope: Scope, body: bytes) -> M:
    """A raw route's JSON body as ``model``; what FastAPI would refuse, refused the same way."""
    content_type = header(scope, b"content-type")
    if content_type is not None:
        kind = content_type.split(";", 1)[0].strip().lower()
        if kind != "application/json" and not (kind.startswith("application/") and kind.endswith("+json")):
            raise _refusal(invalid_request([{"type": "model_attributes_type", "loc": ("body",)}], content_type))
    if not body:
        raise _refusal(invalid_request([{"type": "missing", "loc": ("body",), "msg": "Field required"}], content_type))
    try:
        return model.model_validate_json(body)
    except pydantic.ValidationError as exc:
        errors = exc.errors()
    if errors and errors[0].get("type") == "json_invalid":
        # pydantic's parser refuses what Python's accepts (a lone surrogate escape): parsed
        # as FastAPI does, such text is then refused naming its field
        try:
            data = json.loads(body)
        except ValueError:  # not JSON after all
            pass
        else:
            try:
                return model.model_validate(data)
            except pydantic.ValidationError as exc:
                errors = exc.errors()
    raise _refusal(invalid_request(errors, content_type))


def _refusal(problem: Problem) -> ApiError:
    return ApiError(problem.status, problem.message, type=problem.type, code=problem.code, param=problem.param)


async def _first(response: ResponseStream) -> ProcessorOutput:
    try:
        return processor_output(await response.__anext__())
    except StopAsyncIteration:
        return ProcessorOutput(finish_reason="stop")
    except BaseException:
        await response.aclose()
        raise


async def _collect(kind: str, ident: str, model: str, first: ProcessorOutput,
                   response: ResponseStream) -> dict[str, Any]:
    parts = [first.text]
    last = first
    # read by what is ready: a fast engine in this task yields the loop between batches
    # (other requests, the disconnect listener, signals are not starved)
    batches = ready_batches(response)
    try:
        if first.finish_reason is None:
            async for batch in batches:
                for item in batch:
                    last = processor_output(item)
                    parts.append(last.text)
                    if last.finish_reason is not None:
                        break
                if last.finish_reason is not None:
                    break
    finally:
        await batches.aclose()
        await response.aclose()
    text = "".join(parts)
    created = int(time.time())
    if kind == "chat":
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": last.finish_reason, "logprobs": None}
        return {"id": ident, "object": "chat.completion", "created": created, "model": model,
                "choices": [choice], "usage": _usage(last)}
    return {"id": ident, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": last.finish_reason, "logprobs": None}],
            "usage": _usage(last)}


def _usage(out: ProcessorOutput) -> dict[str, int]:
    return {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
            "total_tokens": out.prompt_tokens + out.completion_tokens}
