"""OpenAI-compatible HTTP frontend: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``.

Requests go to the processor serving the model (``inference.processor.process``),
which calls the engines. A client that disconnects cancels the work all the way
down: the response body runs next to a disconnect listener, and the processor and
engine calls share its context.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..errors import ServemeshError
from ..llm.protocol import ProcessorOutput, ProcessorRequest, SamplingParams
from ..runtime import Client, Context, DistributedRuntime, ResponseStream
from .errors import error_body, error_response, status_of, to_response
from .openai_models import ChatCompletionRequest, CompletionRequest

log = logging.getLogger("servemesh.gateway.openai")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class OpenAIFrontend:
    """``await OpenAIFrontend(runtime).start()`` then serve ``.app`` (see ``servemesh.http``)."""

    def __init__(self, runtime: DistributedRuntime, *, namespace: str = "inference", max_inflight: int = 256,
                 request_timeout: float = 600.0) -> None:
        self.runtime = runtime
        self.namespace = namespace
        self.max_inflight = max_inflight
        self.request_timeout = request_timeout
        self.inflight = 0
        self._engines: Client | None = None
        self._processors: Client | None = None
        self._by_model: dict[str, Client] = {}
        self.registry = CollectorRegistry()
        self._requests = Counter("servemesh_http_requests", "HTTP requests by route and status",
                                 ["route", "status"], registry=self.registry)
        self._inflight = Gauge("servemesh_http_inflight", "HTTP requests in flight", registry=self.registry)
        self._ttft = Histogram("servemesh_http_time_to_first_token_seconds", "Time to the first token",
                               ["model"], registry=self.registry)
        self.app = self._build()

    async def start(self) -> OpenAIFrontend:
        self._engines = await self.runtime.endpoint(f"{self.namespace}.engine.generate").client()
        self._processors = await self.runtime.endpoint(f"{self.namespace}.processor.process").client()
        return self

    # -- models ---------------------------------------------------------------------------
    def models(self) -> list[str]:
        """Models with a live engine and a live processor, as discovery sees them now."""
        assert self._engines is not None and self._processors is not None
        engines = {str(i.capabilities.get("model")) for i in self._engines.instances()}
        processors = {str(i.capabilities.get("model")) for i in self._processors.instances()}
        return sorted(engines & processors)

    def _known(self, model: str) -> tuple[bool, bool]:
        assert self._engines is not None and self._processors is not None
        has_engine = any(str(i.capabilities.get("model")) == model for i in self._engines.instances())
        has_proc = any(str(i.capabilities.get("model")) == model for i in self._processors.instances())
        return has_engine, has_proc

    async def _processor(self, model: str) -> Client:
        client = self._by_model.get(model)
        if client is None:
            client = self._by_model[model] = await self.runtime.endpoint(
                f"{self.namespace}.processor.process").client("least_loaded", {"model": model})
        return client

    # -- the app --------------------------------------------------------------------------
    def _build(self) -> FastAPI:
        app = FastAPI(title="servemesh OpenAI-compatible frontend", version="1")

        @app.exception_handler(RequestValidationError)
        async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
            err = exc.errors()[0] if exc.errors() else {}
            loc = [str(p) for p in err.get("loc", ()) if p != "body"]
            param = ".".join(loc) or None
            message = err.get("msg", "invalid request")
            if err.get("type") == "json_invalid":
                message = f"the request body is not valid JSON: {err.get('ctx', {}).get('error', message)}"
            elif param:
                message = f"{param}: {message}"
            self._requests.labels(request.url.path, "400").inc()
            return error_response(400, message, "invalid_request_error", err.get("type"), param)

        @app.post("/v1/chat/completions", response_model=None)
        async def chat(body: ChatCompletionRequest, request: Request) -> Response:
            stream = body.stream
            sampling = self._sampling(body, body.max_completion_tokens or body.max_tokens)
            preq = ProcessorRequest(model=body.model, messages=body.messages, sampling=sampling, stop=body.stops())
            return await self._complete("chat", body, preq, request, stream)

        @app.post("/v1/completions", response_model=None)
        async def completions(body: CompletionRequest, request: Request) -> Response:
            prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
            if len(prompts) != 1:
                return error_response(400, "only one prompt per request is supported", "invalid_request_error",
                                      "unsupported_value", "prompt")
            preq = ProcessorRequest(model=body.model, prompt=prompts[0], stop=body.stops(),
                                    sampling=self._sampling(body, body.max_tokens))
            return await self._complete("completion", body, preq, request, body.stream)

        @app.get("/v1/models")
        async def list_models() -> dict[str, Any]:
            now = int(time.time())
            return {"object": "list", "data": [{"id": m, "object": "model", "created": now, "owned_by": "servemesh"}
                                               for m in self.models()]}

        @app.get("/health")
        async def health() -> JSONResponse:
            ok = not self.runtime.is_stopping
            return JSONResponse({"status": "ok" if ok else "stopping", "models": self.models(),
                                 "inflight": self.inflight}, status_code=200 if ok else 503)

        @app.get("/live")
        async def live() -> dict[str, str]:
            return {"status": "alive"}

        @app.get("/ready")
        async def ready() -> JSONResponse:
            models = self.models()
            return JSONResponse({"models": models}, status_code=200 if models else 503)

        @app.get("/metrics")
        async def metrics() -> Response:
            return Response(generate_latest(self.registry) + self.runtime.metrics.render(),
                            media_type="text/plain; version=0.0.4; charset=utf-8")

        return app

    @staticmethod
    def _sampling(body: ChatCompletionRequest | CompletionRequest, max_tokens: int | None) -> SamplingParams:
        values: dict[str, Any] = {"max_tokens": max_tokens or 256}
        for name in ("temperature", "top_p", "seed"):
            value = getattr(body, name)
            if value is not None:
                values[name] = value
        return SamplingParams(**values)

    async def _complete(self, kind: str, body: ChatCompletionRequest | CompletionRequest, preq: ProcessorRequest,
                        request: Request, stream: bool) -> Response:
        route = request.url.path
        if body.n != 1:
            return self._error(route, error_response(400, "only n=1 is supported", "invalid_request_error",
                                                     "unsupported_value", "n"))
        has_engine, has_proc = self._known(body.model)
        if not (has_engine or has_proc):
            return self._error(route, error_response(
                404, f"the model {body.model!r} does not exist; available: {', '.join(self.models()) or 'none'}",
                "invalid_request_error", "model_not_found", "model"))
        if not has_engine or not has_proc:
            missing = "engine" if not has_engine else "processor"
            return self._error(route, error_response(
                503, f"no live {missing} serves model {body.model!r} right now; retry when one is up",
                "service_unavailable", f"no_{missing}"))
        if self.inflight >= self.max_inflight:
            return self._error(route, error_response(
                429, f"the frontend is at its limit of {self.max_inflight} requests in flight; retry later",
                "rate_limit_error", "overloaded"))

        ctx = Context(id=request.headers.get("x-request-id"), timeout=self.request_timeout)
        started = time.perf_counter()
        self.inflight += 1
        self._inflight.inc()
        try:
            client = await self._processor(body.model)
            response = client.generate(preq, context=ctx, annotated=False)
            first = await _first(response)  # errors before the first token become HTTP errors
        except ServemeshError as exc:
            self._done()
            return self._error(route, to_response(exc))
        except BaseException:
            self._done()
            raise
        self._ttft.labels(body.model).observe(time.perf_counter() - started)
        ident = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        if not stream:
            try:
                return await self._collect(kind, ident, body, first, response, route)
            finally:
                self._done()
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        self._requests.labels(route, "200").inc()
        return StreamingResponse(self._sse(kind, ident, body.model, first, response, include_usage),
                                 media_type="text/event-stream", headers=SSE_HEADERS)

    def _done(self) -> None:
        self.inflight -= 1
        self._inflight.dec()

    def _error(self, route: str, response: JSONResponse) -> JSONResponse:
        self._requests.labels(route, str(response.status_code)).inc()
        return response

    async def _collect(self, kind: str, ident: str, body: Any, first: ProcessorOutput, response: ResponseStream,
                       route: str) -> Response:
        parts = [first.text]
        last = first
        try:
            if first.finish_reason is None:
                async for item in response:
                    last = ProcessorOutput.model_validate(item)
                    parts.append(last.text)
                    if last.finish_reason is not None:
                        break
        except ServemeshError as exc:
            return self._error(route, to_response(exc))
        finally:
            await response.aclose()
        text = "".join(parts)
        usage = _usage(last)
        created = int(time.time())
        if kind == "chat":
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                      "finish_reason": last.finish_reason, "logprobs": None}
            payload = {"id": ident, "object": "chat.completion", "created": created, "model": body.model,
                       "choices": [choice], "usage": usage}
        else:
            payload = {"id": ident, "object": "text_completion", "created": created, "model": body.model,
                       "choices": [{"index": 0, "text": text, "finish_reason": last.finish_reason,
                                    "logprobs": None}], "usage": usage}
        self._requests.labels(route, "200").inc()
        return JSONResponse(payload)

    async def _sse(self, kind: str, ident: str, model: str, first: ProcessorOutput, response: ResponseStream,
                   include_usage: bool) -> AsyncIterator[bytes]:
        created = int(time.time())
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

        def chunk(text: str | None, finish: str | None, role: bool = False) -> bytes:
            if kind == "chat":
                delta: dict[str, Any] = {}
                if role:
                    delta["role"] = "assistant"
                if text is not None:
                    delta["content"] = text
                choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
            data = {"id": ident, "object": obj, "created": created, "model": model, "choices": [choice]}
            return b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"

        try:
            out = first
            yield chunk(out.text, None, role=True)
            while out.finish_reason is None:
                out = ProcessorOutput.model_validate(await response.__anext__())
                if out.finish_reason is None or out.text:
                    yield chunk(out.text, None)
            yield chunk(None if kind == "chat" else "", out.finish_reason)
            if include_usage:
                usage = {"id": ident, "object": obj, "created": created, "model": model, "choices": [],
                         "usage": _usage(out)}
                yield b"data: " + json.dumps(usage).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"
        except StopAsyncIteration:
            err = error_body("the stream ended without a finish reason", "upstream_error", "stream_incomplete")
            yield b"data: " + json.dumps(err).encode() + b"\n\n"
        except ServemeshError as exc:
            _, type_, code = status_of(exc)
            log.warning("stream %s failed: %s", ident, exc)
            yield b"data: " + json.dumps(error_body(str(exc), type_, code)).encode() + b"\n\n"
        finally:
            await response.aclose()  # on disconnect too: cancels the processor and the engine
            self._done()


async def _first(response: ResponseStream) -> ProcessorOutput:
    try:
        return ProcessorOutput.model_validate(await response.__anext__())
    except StopAsyncIteration:
        return ProcessorOutput(finish_reason="stop")


def _usage(out: ProcessorOutput) -> dict[str, int]:
    return {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
            "total_tokens": out.prompt_tokens + out.completion_tokens}
