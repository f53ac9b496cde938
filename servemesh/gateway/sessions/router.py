"""The session API of one app as an ``APIRouter``: mount it in any FastAPI app.

::

    POST   {prefix}/getOrCreate        {app_id, partition_key}                    -> Session
    GET    {prefix}/exists?app_id=&partition_key=                                 -> Session | 404
    GET    {prefix}/list?partition_key=&app_id=&limit=&cursor=                    -> {items, cursor}
    GET    {prefix}/partitions?after=&limit=                                      -> {partitions, cursor}
    POST   {prefix}/{action}          {app_id, partition_key, <inputs>}  If-Match -> Session
    POST   {prefix}/{action}/stream   (streaming actions) SSE: {"chunk": ...}*, {"session": ...}, [DONE]
    POST   {prefix}/fork              {app_id, new_app_id, partition_key, at_sequence_id, state_overrides}
    GET    {prefix}/history?app_id=&partition_key=&after=&limit=                  -> {steps}
    DELETE {prefix}/session?app_id=&partition_key=                               -> 204

Errors are rendered here (so the router works outside the gateway too) through the
kit's one mapping (``describe``): 404 unknown session, 409 stale ``If-Match`` or
wrong action (the body names ``next_action``), 422 invalid or unknown fields (the
body names the field), 500 a failing action (its error type and message).
With ``principals``, every request needs ``Authorization: Bearer <key>`` (401) and
may touch only the partitions granted (403); ``list`` shows only those.
"""


import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from enum import Enum
from typing import Any, Protocol

from fastapi import APIRouter, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.responses import JSONResponse, Response

from ...errors import ConfigError, ServemeshError
from ...http.shape import Shape, plain_shape
from ...sessions.acl import Principal, Principals
from ...sessions.definition import Definition
from ...sessions.records import MAX_ID, MAX_SEQUENCE, Page, Session, Step
from ..kit import DONE, ApiError, Problem, describe, event, event_stream
from .models import HttpModels, PartitionsPage, SessionKey, session_body

log = logging.getLogger("servemesh.gateway.sessions")

APP_ID = Query(..., min_length=1, max_length=MAX_ID)
PARTITION = Query("", max_length=MAX_ID)

#: route names an action may not take
FIXED = frozenset({"getOrCreate", "exists", "list", "partitions", "fork", "history", "session", "health", "live",
                   "ready", "metrics", "docs", "redoc", "v1"})


class Backend(Protocol):
    """What the router calls: :class:`~servemesh.sessions.Sessions` or ``RemoteSessions``."""

    async def get_or_create(self, partition_key: str, app_id: str) -> Session: ...
    async def get(self, partition_key: str, app_id: str) -> Session: ...
    async def list_sessions(self, partition_key: str | None = None, app_id: str | None = None, *,
                            partitions: list[str] | None = None, cursor: str | None = None,
                            limit: int = 50) -> Page: ...
    async def partitions(self, *, partitions: list[str] | None = None, after: str | None = None,
                         limit: int = 50) -> list[str]: ...
    async def history(self, partition_key: str, app_id: str, *, after: int = -1, limit: int = 50) -> list[Step]: ...
    async def delete(self, partition_key: str, app_id: str) -> None: ...
    async def fork(self, partition_key: str, app_id: str, new_app_id: str, *, at_sequence_id: int | None = None,
                   overrides: dict[str, Any] | None = None, new_partition_key: str | None = None) -> Session: ...
    async def run(self, partition_key: str, app_id: str, action: str, inputs: dict[str, Any],
                  if_match: int | None = None) -> Session: ...
    def stream(self, partition_key: str, app_id: str, action: str, inputs: dict[str, Any],
               if_match: int | None = None) -> AsyncIterator[Any]: ...


class Renderer:
    """Errors as responses in ``shape`` (the gateway's, or ``plain_shape`` standalone)."""

    def __init__(self, shape: Shape = plain_shape, debug: bool = False) -> None:
        self.shape = shape
        self.debug = debug

    def problem(self, exc: BaseException) -> Problem:
        if isinstance(exc, RequestValidationError):
            err = dict(exc.errors()[0]) if exc.errors() else {}
            loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "header")]
            param = ".".join(loc) or None
            message = str(err.get("msg", "invalid request"))
            return Problem(422, f"{param}: {message}" if param else message, "invalid_request_error",
                           str(err.get("type")), param, details={"field": param} if param else None)
        problem = describe(exc, debug=self.debug, handler_errors=True)
        if problem.status >= 500:
            log.warning("session request failed: %s", exc)
        return problem

    def response(self, exc: BaseException) -> JSONResponse:
        problem = self.problem(exc)
        return JSONResponse(problem.body(self.shape), status_code=problem.status, headers=problem.headers())


def _route_class(renderer: Renderer) -> type[APIRoute]:
    class SessionRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def route(request: Request) -> Response:
                try:
                    return await handler(request)
                except (ServemeshError, ApiError, RequestValidationError) as exc:
                    return renderer.response(exc)

            return route

    return SessionRoute


def if_match_of(value: str | None) -> int | None:
    if value is None:
        return None
    text = value.strip().removeprefix("W/").strip('"')
    if not text.isdigit() or len(text) > 18:
        raise ApiError(400, f"If-Match must be a session's sequence_id, not {value!r}", param="If-Match")
    return int(text)


class Guard:
    """Bearer keys to principals, and their grants (``principals`` ``None``: open)."""

    def __init__(self, principals: Principals | None) -> None:
        self.principals = principals

    def principal(self, request: Request) -> Principal | None:
        if self.principals is None:
            return None
        header = request.headers.get("authorization")
        scheme, _, token = (header or "").partition(" ")
        found = self.principals.authenticate(token) if scheme.lower() == "bearer" and token else None
        if found is None:
            raise ApiError(401, "an API key is required: send `Authorization: Bearer <key>`" if header is None
                           else "the API key is not valid", code="invalid_api_key")
        return found

    def check(self, request: Request, partition_key: str) -> Principal | None:
        who = self.principal(request)
        if who is not None and not who.may(partition_key):
            raise ApiError(403, f"principal {who.name!r} may not use partition {partition_key!r}",
                           type="permission_error", code="partition_forbidden", param="partition_key")
        return who

    def visible(self, request: Request, partition_key: str | None) -> list[str] | None:
        """Partitions a listing may show."""
        if partition_key is not None:
            self.check(request, partition_key)
            return None
        who = self.principal(request)
        return None if who is None else who.visible()


def session_router(app: Definition, backend: Backend, *, prefix: str = "", principals: Principals | None = None,
                   shape: Shape = plain_shape, debug_errors: bool = False, tags: list[str | Enum] | None = None,
                   models: HttpModels | None = None) -> APIRouter:
    """The session API of ``app`` over ``backend``, as a router to ``include_router``."""
    clash = FIXED & set(app.actions)
    if clash:
        raise ConfigError(f"app {app.name!r} has actions named {sorted(clash)}: those paths belong to the session "
                          "API; rename the actions")
    m = models or HttpModels(app)
    renderer = Renderer(shape, debug_errors)
    guard = Guard(principals)
    router = APIRouter(prefix=prefix, tags=list(tags or [app.name]), route_class=_route_class(renderer))
    responses: dict[int | str, dict[str, Any]] = {401: {}, 403: {}, 404: {}, 409: {}, 422: {}, 500: {}}

    def ok(session: Session, status: int = 200) -> JSONResponse:
        return JSONResponse(session_body(session), status_code=status, headers={"ETag": f'"{session.sequence_id}"'})

    async def get_or_create(request: Request, body: SessionKey) -> JSONResponse:
        guard.check(request, body.partition_key)
        return ok(await backend.get_or_create(body.partition_key, body.app_id))

    router.add_api_route("/getOrCreate", get_or_create, methods=["POST"], response_model=m.session,
                         responses=responses, summary="Get a session, creating (and storing) it if absent",
                         operation_id=f"{app.name}_getOrCreate")

    async def exists(request: Request, app_id: str = APP_ID,
                     partition_key: str = PARTITION) -> JSONResponse:
        guard.check(request, partition_key)
        return ok(await backend.get(partition_key, app_id))

    router.add_api_route("/exists", exists, methods=["GET"], response_model=m.session, responses=responses,
                         summary="The session if it exists (404 if not)", operation_id=f"{app.name}_exists")

    async def list_(request: Request, partition_key: str | None = Query(None, max_length=MAX_ID),
                    app_id: str | None = Query(None, max_length=MAX_ID),
                    limit: int = Query(50, ge=1, le=500), cursor: str | None = None) -> JSONResponse:
        visible = guard.visible(request, partition_key)
        page = await backend.list_sessions(partition_key, app_id, partitions=visible, cursor=cursor, limit=limit)
        return JSONResponse({"items": [session_body(s) for s in page.items], "cursor": page.cursor})

    router.add_api_route("/list", list_, methods=["GET"], response_model=m.page, responses=responses,
                         summary="Sessions, by partition and app id, a page at a time",
                         operation_id=f"{app.name}_list")

    async def partitions(request: Request, after: str | None = Query(None, max_length=MAX_ID),
                         limit: int = Query(50, ge=1, le=500)) -> JSONResponse:
        visible = guard.visible(request, None)
        names = await backend.partitions(partitions=visible, after=after, limit=limit)
        return JSONResponse({"partitions": names, "cursor": names[-1] if len(names) == limit else None})

    router.add_api_route("/partitions", partitions, methods=["GET"], response_model=PartitionsPage,
                         responses=responses, summary="Partition keys that hold sessions (cursor: pass as after)",
                         operation_id=f"{app.name}_partitions")

    async def fork(request: Request, body: m.fork) -> JSONResponse:  # type: ignore[valid-type,name-defined]
        guard.check(request, body.partition_key)  # type: ignore[attr-defined]
        target = body.new_partition_key  # type: ignore[attr-defined]
        if target is not None:
            guard.check(request, target)
        overrides = body.state_overrides.model_dump(exclude_unset=True)  # type: ignore[attr-defined]
        session = await backend.fork(body.partition_key, body.app_id, body.new_app_id,  # type: ignore[attr-defined]
                                     at_sequence_id=body.at_sequence_id,  # type: ignore[attr-defined]
                                     overrides=overrides, new_partition_key=target)
        return ok(session, 201)

    router.add_api_route("/fork", fork, methods=["POST"], response_model=m.session, status_code=201,
                         responses=responses, summary="A new session from another's state at a sequence id",
                         operation_id=f"{app.name}_fork")

    async def history(request: Request, app_id: str = APP_ID, partition_key: str = PARTITION,
                      after: int = Query(-1, ge=-1, le=MAX_SEQUENCE),
                      limit: int = Query(50, ge=1, le=500)) -> JSONResponse:
        guard.check(request, partition_key)
        steps = await backend.history(partition_key, app_id, after=after, limit=limit)
        return JSONResponse({"steps": [{"sequence_id": s.sequence_id, "method": s.action, "inputs": s.inputs,
                                        "state": s.state, "next_method": s.next_action,
                                        "created_at": s.created_at} for s in steps]})

    router.add_api_route("/history", history, methods=["GET"], response_model=m.history, responses=responses,
                         summary="The session's steps, oldest first", operation_id=f"{app.name}_history")

    async def delete(request: Request, app_id: str = APP_ID, partition_key: str = PARTITION) -> Response:
        guard.check(request, partition_key)
        await backend.delete(partition_key, app_id)
        return Response(status_code=204)

    router.add_api_route("/session", delete, methods=["DELETE"], status_code=204, responses=responses,
                         summary="Delete a session and its history", operation_id=f"{app.name}_delete")

    for action, spec in app.actions.items():
        _add_action(router, app, action, m.requests[action], m, backend, guard, renderer, responses, spec.doc,
                    spec.streaming)
    return router


def _add_action(router: APIRouter, app: Definition, action: str, request_model: Any, m: HttpModels,
                backend: Backend, guard: Guard, renderer: Renderer, responses: dict[int | str, dict[str, Any]],
                doc: str | None, streaming: bool) -> None:
    names = [n for n in request_model.model_fields if n not in ("app_id", "partition_key")]

    def split(body: Any) -> tuple[str, str, dict[str, Any]]:
        # as JSON data: the inputs may travel to a replica, and are validated again there
        given = body.model_fields_set & set(names)
        return body.partition_key, body.app_id, body.model_dump(mode="json", include=given)

    async def run(request: Request, body: request_model,  # type: ignore[valid-type]
                  if_match: str | None = Header(None, alias="If-Match")) -> JSONResponse:
        pk, app_id, inputs = split(body)
        guard.check(request, pk)
        session = await backend.run(pk, app_id, action, inputs, if_match_of(if_match))
        return JSONResponse(session_body(session), headers={"ETag": f'"{session.sequence_id}"'})

    router.add_api_route(f"/{action}", run, methods=["POST"], response_model=m.session, responses=responses,
                         summary=f"Run {action}", description=doc or "", operation_id=f"{app.name}_{action}")
    if not streaming:
        return

    async def stream(request: Request, body: request_model,  # type: ignore[valid-type]
                     if_match: str | None = Header(None, alias="If-Match")) -> Response:
        pk, app_id, inputs = split(body)
        guard.check(request, pk)
        items = backend.stream(pk, app_id, action, inputs, if_match_of(if_match))
        try:
            first = await anext(items)  # errors before the first item are HTTP statuses
        except StopAsyncIteration:  # pragma: no cover - a stream always ends with its session
            return Response(status_code=204)
        return event_stream(_frames(first, items, renderer))

    router.add_api_route(f"/{action}/stream", stream, methods=["POST"], responses={
        **responses, 200: {"content": {"text/event-stream": {}},
                           "description": 'SSE: {"chunk": ...} frames, then {"session": ...}, then [DONE]'}},
        summary=f"Run {action}, streaming its chunks", operation_id=f"{app.name}_{action}_stream")


async def _frames(first: Any, items: AsyncIterator[Any], renderer: Renderer) -> AsyncIterator[bytes]:
    try:
        item = first
        while True:
            yield event({"session": session_body(item)} if isinstance(item, Session) else {"chunk": item})
            try:
                item = await anext(items)
            except StopAsyncIteration:
                break
        yield DONE
    except (ServemeshError, ApiError) as exc:  # after the headers: an error frame ends the stream
        yield event(renderer.problem(exc).body(renderer.shape))
    finally:
        await items.aclose()  # type: ignore[attr-defined]
