"""Burr in your own FastAPI app, one route per call (seed 003, part 1)::

    burr_app = builder.build()
    app = FastAPI()
    post("/api/v0/ask", app, burr_app, halt_after=["ask"], response_model=Reply)
    post_streaming("/api/v0/answer", app, burr_app, halt_after=["answer"])

    @post("/api/v0/summary", app, burr_app, halt_after=["answer"])
    def summary(state: dict, action: str, result: dict | None) -> Summary:
        return Summary(turns=state["turns"])

The request body holds the actions' inputs (typed from their signatures, unknown
fields refused with 422). ``response_model`` is filled from the state dict (its
fields taken from the state, defaults for the rest); without one, the response is
the app's pydantic state type (``burr.integrations.pydantic``), or the state dict.
The decorated form replaces the route's answer by the function's, typed by its
return annotation. A streaming route sends ``{"chunk": ...}`` SSE frames, then
``{"state": <response>}`` and ``[DONE]``. One Burr application is one session:
its steps run one at a time. For many sessions use :func:`session_router`.
"""

import asyncio
import inspect
import typing
from collections.abc import AsyncIterator, Callable
from typing import Any

import pydantic
from fastapi import FastAPI, Request
from fastapi.routing import APIRoute
from starlette.responses import JSONResponse, Response

from ...errors import ActionFailed, ServemeshError
from ...sessions.burr import import_burr
from ...sessions.definition import REQUIRED, inputs_of, jsonable
from ...sessions.schema import STRICT, _camel
from ..kit import DONE, ApiError, event, event_stream
from .router import Renderer, _route_class


class Binding:
    """The route ``post`` added; calling it with a function (the decorator form) makes
    that function build the answer."""

    def __init__(self, path: str, app: FastAPI, burr_app: Any, halt_after: list[str] | None,
                 halt_before: list[str] | None, response_model: type[pydantic.BaseModel] | None,
                 streaming: bool) -> None:
        core = import_burr()
        if not isinstance(burr_app, core.Application):
            raise TypeError(f"post() needs a built Burr Application, not {type(burr_app).__name__}")
        self.path, self.app, self.burr_app, self.streaming = path, app, burr_app, streaming
        self.halt_after, self.halt_before = halt_after or [], halt_before or []
        typing_system = burr_app.state.typing_system
        state_type = typing_system.state_type()
        self.state_model = (state_type if isinstance(state_type, type) and issubclass(state_type, pydantic.BaseModel)
                            else None)
        self.response_model = response_model or self.state_model
        self.hook: Callable[..., Any] | None = None
        self.lock = asyncio.Lock()  # one Burr application: one step at a time
        self.request_model = _request_model(path, burr_app, self.halt_after)
        self.renderer = Renderer()
        self.route = self._add()

    def __call__(self, func: Callable[..., Any]) -> Callable[..., Any]:
        self.hook = func
        caller = inspect.currentframe()
        returns = _return_type(func, caller.f_back.f_locals if caller and caller.f_back else {})
        if isinstance(returns, type) and issubclass(returns, pydantic.BaseModel):
            self.response_model = returns
        self.app.router.routes.remove(self.route)
        self.app.openapi_schema = None
        self.route = self._add()
        return func

    def _add(self) -> APIRoute:
        body_model = self.request_model

        async def endpoint(request: Request, body: body_model) -> Response:  # type: ignore[valid-type]
            inputs = body.model_dump(exclude_unset=True)  # type: ignore[attr-defined]
            return await (self._stream(inputs) if self.streaming else self._run(inputs))

        name = self.path.strip("/").replace("/", "_") or "root"
        # errors are rendered through the kit's mapping, as in the session router
        self.app.router.add_api_route(self.path, endpoint, methods=["POST"], name=name,
                                      response_model=None if self.streaming else self.response_model,
                                      route_class_override=_route_class(self.renderer))
        return self.app.router.routes[-1]  # type: ignore[return-value]

    def _answer(self, action: Any, result: Any, state: Any) -> Any:
        data = {k: v for k, v in state.get_all().items() if not k.startswith("__")}
        if self.hook is not None:
            out = self.hook(data, action.name if action is not None else None, result)
        elif self.response_model is not None:
            fields = self.response_model.model_fields
            out = self.response_model.model_validate({k: data[k] for k in fields if k in data})
        else:
            out = jsonable(None, data)
        return out.model_dump(mode="json") if isinstance(out, pydantic.BaseModel) else out

    async def _run(self, inputs: dict[str, Any]) -> Response:
        async with self.lock:
            try:
                action, result, state = await self.burr_app.arun(halt_after=self.halt_after,
                                                                 halt_before=self.halt_before, inputs=inputs)
            except (ServemeshError, ApiError):
                raise
            except Exception as exc:
                raise ActionFailed(self.path, type(exc).__name__, str(exc)) from exc
            return JSONResponse(self._answer(action, result, state))

    async def _stream(self, inputs: dict[str, Any]) -> Response:
        await self.lock.acquire()
        try:
            action, container = await self.burr_app.astream_result(halt_after=self.halt_after,
                                                                   halt_before=self.halt_before, inputs=inputs)
        except Exception as exc:
            self.lock.release()
            raise ActionFailed(self.path, type(exc).__name__, str(exc)) from exc
        return event_stream(self._frames(action, container))

    async def _frames(self, action: Any, container: Any) -> AsyncIterator[bytes]:
        try:
            async for chunk in container:
                if chunk is not None:
                    yield event({"chunk": chunk})
            result, state = await container.get()
            yield event({"state": self._answer(action, result, state)})
            yield DONE
        except Exception as exc:
            failed = exc if isinstance(exc, ServemeshError) else ActionFailed(self.path, type(exc).__name__, str(exc))
            yield event(self.renderer.problem(failed).body(self.renderer.shape))
        finally:
            self.lock.release()


def _return_type(func: Callable[..., Any], local: dict[str, Any]) -> Any:
    """``func``'s return annotation, resolved (also a string one naming a class local to the caller)."""
    try:
        return typing.get_type_hints(func, localns=local).get("return")
    except Exception:  # unresolvable: no response model, the answer as returned
        return None


def _request_model(path: str, burr_app: Any, halt_after: list[str]) -> type[pydantic.BaseModel]:
    """The inputs of every action (a run may pass through several); required where the one
    ``halt_after`` action requires them."""
    fields: dict[str, Any] = {}
    target = halt_after[0] if len(halt_after) == 1 else None
    for action in burr_app.graph.actions:
        raw = action.inputs
        names = raw if isinstance(raw, tuple) else (list(raw), [])
        fn = getattr(action, "_originating_fn", None) or getattr(action, "fn", None)
        typed = inputs_of(fn, names=names) if fn is not None else {n: (Any, REQUIRED) for n in names[0]}
        for name, (ann, default) in typed.items():
            required = default is REQUIRED and action.name == target
            if name not in fields or required:
                fields[name] = (ann, ... if required else (None if default is REQUIRED else default))
    return pydantic.create_model(f"{_camel(path.strip('/').replace('/', '_')) or 'Root'}Request",
                                 __config__=STRICT, **fields)


def post(path: str, app: FastAPI, burr_app: Any, *, halt_after: list[str] | None = None,
         halt_before: list[str] | None = None, response_model: type[pydantic.BaseModel] | None = None) -> Binding:
    """``POST path`` on ``app``: run ``burr_app`` until ``halt_after`` / ``halt_before``, answer
    ``response_model`` (or, as a decorator, the decorated function's answer)."""
    return Binding(path, app, burr_app, halt_after, halt_before, response_model, streaming=False)


def post_streaming(path: str, app: FastAPI, burr_app: Any, *, halt_after: list[str] | None = None,
                   halt_before: list[str] | None = None,
                   response_model: type[pydantic.BaseModel] | None = None) -> Binding:
    """``post`` for a streaming action: SSE chunks, then the response."""
    return Binding(path, app, burr_app, halt_after, halt_before, response_model, streaming=True)
