"""``serving.Call`` without a caller's context: one is made only for a handler that
takes it, and the accounting closes whichever way the stream ends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from servemesh.errors import RemoteError, ServemeshError
from servemesh.runtime.annotated import Annotated
from servemesh.runtime.context import Context
from servemesh.runtime.handler import adapt
from servemesh.runtime.metrics import EndpointMetrics
from servemesh.runtime.serving import DATA, Call, ServedEndpoint


def served(handler: Any) -> ServedEndpoint:
    return ServedEndpoint("ns.comp.ep", adapt(handler, endpoint="ns.comp.ep"), 8, EndpointMetrics("ns.comp.ep"))


async def test_a_handler_without_a_context_parameter_never_gets_one_made():
    async def gen(request: dict) -> AsyncIterator[Any]:
        yield request
        yield Annotated({"b": 2}, event="e")

    ep = served(gen)
    call = Call(ep, {"a": 1}, None)
    assert [item async for item in call.items(DATA)] == [{"a": 1}, {"b": 2}]
    assert call._ctx is None and call.outcome == "ok" and ep.inflight == 0


async def test_a_handler_that_takes_a_context_gets_a_fresh_one():
    seen: list[Context] = []

    async def gen(request, context: Context) -> AsyncIterator[Any]:
        seen.append(context)
        yield 1
        yield 2

    ep = served(gen)
    call = Call(ep, None, None)
    items = call.items(DATA)
    assert await items.__anext__() == 1
    await items.aclose()  # the caller left: the handler's context is told
    assert isinstance(seen[0], Context) and seen[0].is_stopped() and call.ctx is seen[0]
    assert call.outcome == "cancelled" and ep.inflight == 0


async def test_a_failing_handler_without_a_context_is_mapped_and_accounted():
    async def gen(request):
        yield 1
        raise ValueError("boom")

    ep = served(gen)
    call = Call(ep, None, None)
    with pytest.raises(ServemeshError) as err:
        async for _ in call.items(DATA):
            pass
    assert isinstance(err.value, RemoteError) and "boom" in str(err.value)
    assert call._ctx is None and call.outcome == "error" and ep.inflight == 0
    assert ep.metrics.outcomes == {"error": 1}


async def test_a_unary_handler_without_a_context_parameter_never_gets_one_made():
    async def unary(request: int) -> int:
        return request + 1

    ep = served(unary)
    call = Call(ep, 41, None)
    assert await call.one() == 42
    assert call._ctx is None and call.outcome == "ok"
    call = Call(ep, 1, None)
    assert [item async for item in call.items(DATA)] == [2] and call._ctx is None
    assert ep.inflight == 0 and ep.metrics.outcomes == {"ok": 2}


async def test_a_call_closed_before_it_ran_gives_its_handler_a_stopped_context():
    async def gen(request, context: Context) -> AsyncIterator[Any]:
        yield context.is_stopped()

    ep = served(gen)
    call = Call(ep, None, None)
    await call.aclose()
    assert [item async for item in call.items(DATA)] == [True]
