from __future__ import annotations

import dataclasses
import typing
from collections.abc import AsyncIterator

import msgspec
import pytest
import typing_extensions
from pydantic import BaseModel

from servemesh import Context
from servemesh.errors import ConfigError, ValidationError
from servemesh.runtime.handler import adapt


class Req(BaseModel):
    prompt: str
    max_tokens: int = 16


class Tok(BaseModel):
    text: str


class SReq(msgspec.Struct):
    ids: list[int]
    temperature: float = 1.0


@dataclasses.dataclass
class DReq:
    name: str
    count: int


async def collect(adapted, payload, ctx=None):
    request = adapted.validate(payload) if adapted.validate else payload
    return [item async for item in adapted.call(request, ctx or Context())]


async def test_generator_and_coroutine_handlers_with_and_without_context():
    async def gen(request):
        yield request["a"]
        yield request["a"] + 1

    async def gen_ctx(request, context: Context):
        yield context.id

    async def unary(request) -> int:
        return 41 + request

    assert await collect(adapt(gen), {"a": 1}) == [1, 2]
    assert await collect(adapt(gen_ctx), {}, Context(id="r1")) == ["r1"]
    assert await collect(adapt(unary), 1) == [42]


@pytest.mark.parametrize(("payload", "field"), [
    ({"prompt": "hi", "max_tokens": "lots"}, "max_tokens"),
    ({"max_tokens": 3}, "prompt"),
    ("not json", None),
    ([1, 2], None),
])
async def test_pydantic_request_validation_names_the_field(payload, field):
    async def handler(request: Req) -> AsyncIterator[Tok]:
        yield Tok(text=request.prompt)

    adapted = adapt(handler, endpoint="ns.c.e")
    with pytest.raises(ValidationError) as info:
        adapted.validate(payload)
    assert info.value.field == field
    assert "ns.c.e" in str(info.value)
    assert adapted.request_schema["required"] == ["prompt"]
    assert adapted.response_schema["properties"]["text"]["type"] == "string"


async def test_msgspec_and_dataclass_requests():
    async def s(request: SReq):
        yield sum(request.ids)

    async def d(request: DReq):
        yield request.name * request.count

    assert await collect(adapt(s), {"ids": [1, 2]}) == [3]
    assert await collect(adapt(d), {"name": "ab", "count": 2}) == ["abab"]
    with pytest.raises(ValidationError) as info:
        adapt(s).validate({"ids": ["x"]})
    assert info.value.field == "ids[0]" or info.value.field == "ids"
    with pytest.raises(ValidationError) as info:
        adapt(s).validate({})
    assert info.value.field == "ids"
    with pytest.raises(ValidationError) as info:
        adapt(d).validate({"name": "a", "count": "x"})
    assert info.value.field == "count"


def test_bad_handlers_fail_at_serve_time():
    def sync(request):
        return 1

    async def too_many(a, b, c):
        yield 1

    async def none():
        yield 1

    with pytest.raises(ConfigError, match="async generator"):
        adapt(sync)
    with pytest.raises(ConfigError, match="takes 3"):
        adapt(too_many)
    with pytest.raises(ConfigError, match="takes 0"):
        adapt(none)


def test_exact_request_types_skip_the_validator_and_nothing_else_does():
    class DictSub(dict):
        pass

    async def plain(request: dict): ...

    async def generic(request: dict[str, int]): ...

    async def model(request: Req): ...

    async def untyped(request): ...

    assert adapt(plain).exact is dict
    assert adapt(model).exact is Req
    assert adapt(generic).exact is None and adapt(untyped).exact is None
    # what ``exact`` lets through unchecked is exactly what the validator returns unchanged
    for handler, value in ((plain, {"a": 1}), (model, Req(prompt="p"))):
        adapted = adapt(handler)
        assert type(value) is adapted.exact and adapted.validate(value) is value
    # a subclass is not the exact type: it still goes through the validator
    assert type(DictSub(a=1)) is not adapt(plain).exact
    with pytest.raises(ValidationError):
        adapt(plain).validate([1, 2])


async def test_a_handler_taking_only_the_request_is_called_as_it_is():
    async def gen(request):
        yield request

    async def gen_ctx(request, context: Context):
        yield request

    async def unary(request):
        return request

    async def unary_ctx(request, context: Context):
        return request

    assert adapt(gen).plain is gen and adapt(unary).plain is unary
    assert adapt(gen_ctx).plain is None and adapt(unary_ctx).plain is None
    assert [item async for item in adapt(gen).plain(7)] == [7]
    assert await adapt(unary).plain(7) == 7


@pytest.mark.parametrize("typed_dict", [typing.TypedDict, typing_extensions.TypedDict],
                         ids=["typing", "typing_extensions"])
def test_typeddict_requests_are_validated_as_dicts(typed_dict):
    request_type = typed_dict("Request", {"a": int})

    async def handler(request): ...

    handler.__annotations__ = {"request": request_type}  # (this module's annotations are strings)
    try:
        adapted = adapt(handler)
    except ConfigError as exc:  # pydantic on Python < 3.12 takes typing_extensions' only, and says so
        assert typed_dict is typing.TypedDict and "typing_extensions" in str(exc)
        return
    assert adapted.exact is None
    assert adapted.validate({"a": "1"}) == {"a": 1}
    with pytest.raises(ValidationError) as err:
        adapted.validate({"a": "x"})
    assert err.value.field == "a"
