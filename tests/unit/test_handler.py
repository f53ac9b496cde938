from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import msgspec
import pytest
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
