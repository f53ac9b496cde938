"""Turn a user's handler into a uniform ``(request, context) -> async iterator``.

Handlers may be async generators or coroutines (served as a stream of one), take
``(request)`` or ``(request, context)``, and annotate the request parameter with
a pydantic model, msgspec Struct, dataclass, TypedDict or plain type; the
annotation validates incoming data and gives the endpoint its JSON Schema.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import re
import typing
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec

from ..errors import ConfigError, ValidationError
from .context import Context

Handler = Callable[..., Any]
Validator = Callable[[Any], Any]

_MSGSPEC_PATH = re.compile(r"at `\$((?:\.[^\s`\[]+|\[\d+\])+)`")


@dataclasses.dataclass(frozen=True)
class AdaptedHandler:
    call: Callable[[Any, Context], AsyncIterator[Any]]
    #: for ``async def`` handlers returning one value: awaited directly, no generator
    unary: Callable[[Any, Context], Awaitable[Any]] | None
    validate: Validator | None
    request_schema: dict[str, Any] | None
    response_schema: dict[str, Any] | None
    name: str
    #: the handler itself when it takes only the request (``plain(request)`` is its
    #: generator or coroutine): one frame less per call than ``call`` / ``unary``, and
    #: no ``Context`` to make for it
    plain: Callable[[Any], Any] | None = None
    #: requests of exactly this type are valid as they are: ``validate`` is not called
    exact: type | None = None


def adapt(handler: Handler, *, endpoint: str = "") -> AdaptedHandler:
    if not callable(handler):
        raise ConfigError(f"handler for {endpoint} must be callable, got {type(handler).__name__}")
    func = inspect.unwrap(handler)
    name = getattr(func, "__qualname__", repr(handler))
    is_gen = inspect.isasyncgenfunction(func)
    if not is_gen and not inspect.iscoroutinefunction(func):
        raise ConfigError(
            f"handler {name} for {endpoint} must be an async generator (async def ... yield) "
            "or an async def returning one value"
        )
    hints = _hints(func)
    # parameters with defaults are the user's own, unless annotated as the Context
    params = [
        p for p in inspect.signature(handler).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        and (p.default is p.empty or hints.get(p.name) is Context)
    ]
    if not params or len(params) > 2:
        raise ConfigError(
            f"handler {name} for {endpoint} must take (request) or (request, context), "
            f"it takes {len(params)} positional parameters"
        )
    wants_context = len(params) == 2
    req_type = hints.get(params[0].name, inspect.Parameter.empty)
    validate, req_schema = request_validator(req_type, endpoint)
    resp_schema = _response_schema(hints.get("return"), is_gen)

    unary: Callable[[Any, Context], Awaitable[Any]] | None = None
    plain = None if wants_context else handler
    if is_gen:
        if wants_context:
            call = handler
        else:
            def call(request: Any, context: Context) -> AsyncIterator[Any]:
                return handler(request)  # type: ignore[no-any-return]
    else:
        if wants_context:
            unary = handler
        else:
            def unary(request: Any, context: Context) -> Awaitable[Any]:
                return handler(request)  # type: ignore[no-any-return]

        async def call(request: Any, context: Context) -> AsyncIterator[Any]:
            yield await unary(request, context)  # type: ignore[misc]

    # instances of the annotated class itself are what the validator passes through unchanged
    exact = _instances_of(req_type) if validate is not None else None
    return AdaptedHandler(call, unary, validate, req_schema, resp_schema, name, plain, exact)


def _instances_of(tp: Any) -> type | None:
    """``tp`` if it is a class whose instances ``isinstance`` can tell: not a generic
    alias, and not a ``TypedDict`` (its values are plain dicts; it refuses the check)."""
    if not isinstance(tp, type) or (issubclass(tp, dict) and hasattr(tp, "__required_keys__")):
        return None
    return tp


def _hints(func: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(func, include_extras=False)
    except Exception:
        return dict(getattr(func, "__annotations__", {}))


_PLAIN = (dict, list, str, int, float, bool)


def request_validator(tp: Any, endpoint: str = "") -> tuple[Validator | None, dict[str, Any] | None]:
    """A function that turns wire data into ``tp`` (raising ``ValidationError``), and ``tp``'s schema."""
    if tp is inspect.Parameter.empty or tp is Any or tp is None or isinstance(tp, str):
        return None, None
    if isinstance(tp, type) and issubclass(tp, Context):
        raise ConfigError(f"the first handler parameter of {endpoint} is the request, not the Context")
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return _msgspec_validator(tp, endpoint), msgspec.json.schema(tp)
    import pydantic  # a core dependency, but heavy: only when a typed handler needs it

    try:
        adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(tp)
        schema = adapter.json_schema()
    except pydantic.PydanticUserError as exc:
        raise ConfigError(f"cannot validate requests of type {tp!r} for {endpoint}: {exc}") from exc
    is_model = isinstance(tp, type) and issubclass(tp, pydantic.BaseModel)
    exact = _instances_of(tp) if tp not in _PLAIN else None
    #: a bare builtin (``request: dict``): data of exactly that type is already valid
    plain = tp if tp in _PLAIN else None

    def validate(data: Any) -> Any:
        if type(data) is plain or (exact is not None and isinstance(data, exact)):
            return data
        try:
            if is_model and isinstance(data, (str, bytes)):
                return adapter.validate_json(data)
            return adapter.validate_python(data)
        except pydantic.ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err.get("loc", ())) or None
            got = err.get("input")
            got_text = "" if err.get("type") == "missing" else f" (got {_short(got)})"
            raise ValidationError(f"{err.get('msg')}{got_text}", field=field, endpoint=endpoint) from None

    return validate, schema


def _msgspec_validator(tp: type, endpoint: str) -> Validator:
    def validate(data: Any) -> Any:
        if isinstance(data, tp):
            return data
        try:
            if isinstance(data, (bytes, str)):
                return msgspec.json.decode(data, type=tp)
            return msgspec.convert(data, tp)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            text = str(exc)
            m = _MSGSPEC_PATH.search(text)
            field = m.group(1).lstrip(".") if m else None
            if field is None and "missing required field" in text:
                field = text.split("`")[1] if "`" in text else None
            message = _MSGSPEC_PATH.sub("", text).strip(" -")
            raise ValidationError(message, field=field, endpoint=endpoint) from None

    return validate


def _response_schema(ret: Any, is_gen: bool) -> dict[str, Any] | None:
    if ret is None:
        return None
    if is_gen:
        origin = typing.get_origin(ret)
        if origin not in (collections.abc.AsyncIterator, collections.abc.AsyncGenerator,
                          collections.abc.AsyncIterable):
            return None
        args = typing.get_args(ret)
        if not args:
            return None
        ret = args[0]
    if ret is Any:
        return None
    try:
        if isinstance(ret, type) and issubclass(ret, msgspec.Struct):
            return msgspec.json.schema(ret)
        import pydantic

        return pydantic.TypeAdapter(ret).json_schema()
    except Exception:
        return None


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
