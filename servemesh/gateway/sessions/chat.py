"""The OpenAI flavour: ``POST /v1/chat/completions`` drives a session's chat turn.

A turn runs the :class:`ChatFlavour`'s ``steps`` (say ``ask`` then ``answer``): the
first gets the last user message as its ``message_input``; the answer is read from
the state (``reply``). With ``stream: true`` the last step's chunks are relayed as
``chat.completion.chunk`` deltas. The session is ``user`` (or the ``X-Session-Id``
header) in the partition of the ``X-Partition-Key`` header (default: the only
partition granted to the principal, else ``""``); it is created on first use.
"""

import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pydantic
from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from ...errors import ConfigError, ServemeshError
from ...sessions.acl import Principals
from ...sessions.definition import Definition
from ...sessions.records import Session
from ..kit import DONE, ApiError, event, event_stream
from ..openai import openai_error
from .router import Backend, Guard, Renderer, _route_class


def default_delta(chunk: Any) -> str | None:
    """A chunk's text: a string, or a dict's ``delta`` / ``content`` / ``text``."""
    if isinstance(chunk, str):
        return chunk
    if isinstance(chunk, dict):
        for key in ("delta", "content", "text"):
            if isinstance(chunk.get(key), str):
                return str(chunk[key])
    return None


@dataclasses.dataclass(frozen=True)
class ChatFlavour:
    #: the actions one chat turn runs, in order
    steps: Sequence[str]
    #: the first step's input that receives the user's message
    message_input: str = "message"
    #: the state field holding the answer, or a function of the state
    reply: str | Callable[[dict[str, Any]], str] = "reply"
    delta: Callable[[Any], str | None] = default_delta

    def answer(self, state: dict[str, Any]) -> str:
        return self.reply(state) if callable(self.reply) else str(state.get(self.reply, ""))


class ChatMessage(pydantic.BaseModel):
    role: str
    content: str | None = None


class ChatRequest(pydantic.BaseModel):
    """The fields used of an OpenAI chat request; others (temperature, ...) are accepted and ignored."""

    model: str | None = None
    messages: list[ChatMessage] = pydantic.Field(min_length=1)
    stream: bool = False
    user: str | None = pydantic.Field(None, min_length=1, max_length=200)


def chat_router(app: Definition, backend: Backend, chat: ChatFlavour, *, principals: Principals | None = None,
                debug_errors: bool = False) -> APIRouter:
    for step in chat.steps:
        if step not in app.actions:
            raise ConfigError(f"chat step {step!r} is not an action of {app.name!r}")
    if not chat.steps or chat.message_input not in app.actions[chat.steps[0]].inputs:
        raise ConfigError(f"the first chat step must take the input {chat.message_input!r}")
    renderer = Renderer(openai_error, debug_errors)
    guard = Guard(principals)
    router = APIRouter(route_class=_route_class(renderer), tags=["chat"])

    def session_of(request: Request, body: ChatRequest) -> tuple[str, str]:
        app_id = body.user or request.headers.get("x-session-id")
        if not app_id:
            raise ApiError(400, "name the session: the `user` field or the X-Session-Id header", param="user")
        partition = request.headers.get("x-partition-key")
        if partition is None:
            who = guard.principal(request)
            granted = who.visible() if who is not None else None
            partition = granted[0] if granted and len(granted) == 1 else ""
        guard.check(request, partition)
        return partition, app_id

    async def completions(request: Request, body: ChatRequest) -> Response:
        pk, app_id = session_of(request, body)
        message = next((m.content or "" for m in reversed(body.messages) if m.role == "user"), None)
        if message is None:
            raise ApiError(400, "the messages hold no user message", param="messages")
        session = await backend.get_or_create(pk, app_id)
        model = body.model or app.name
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        last = chat.steps[-1]
        for i, step in enumerate(chat.steps[:-1] if body.stream else chat.steps):
            inputs = {chat.message_input: message} if i == 0 else {}
            session = await backend.run(pk, app_id, step, inputs, session.sequence_id)
        if not body.stream:
            return JSONResponse({
                "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": chat.answer(session.state)}}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}})
        inputs = {chat.message_input: message} if len(chat.steps) == 1 else {}
        items = backend.stream(pk, app_id, last, inputs, session.sequence_id)
        first = await anext(items)
        return event_stream(_deltas(first, items, chat, cid, model, renderer))

    router.add_api_route("/v1/chat/completions", completions, methods=["POST"],
                         summary=f"Chat with a session of {app.name} (OpenAI-compatible)")
    return router


async def _deltas(first: Any, items: AsyncIterator[Any], chat: ChatFlavour, cid: str, model: str,
                  renderer: Renderer) -> AsyncIterator[bytes]:
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return event({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                      "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    try:
        yield chunk({"role": "assistant", "content": ""})
        item = first
        while True:
            if isinstance(item, Session):
                yield chunk({}, "stop")
                break
            text = chat.delta(item)
            if text:
                yield chunk({"content": text})
            try:
                item = await anext(items)
            except StopAsyncIteration:  # pragma: no cover - a stream always ends with its session
                break
        yield DONE
    except (ServemeshError, ApiError) as exc:
        yield event(renderer.problem(exc).body(renderer.shape))
    finally:
        await items.aclose()  # type: ignore[attr-defined]
