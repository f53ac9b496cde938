"""A plain-Python stateful app: a counter with a streaming countdown.

    servemesh sessions serve examples/sessions/counter.py:app
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pydantic

from servemesh.sessions import StatefulApp


class Counter(pydantic.BaseModel):
    total: int = 0
    log: list[str] = []


app = StatefulApp("counter", Counter)


@app.action
def add(state: Counter, amount: int = 1, note: str = "") -> Counter:
    """Add ``amount`` to the total."""
    if amount < 0:
        raise ValueError("amount must not be negative")
    return state.model_copy(update={"total": state.total + amount, "log": [*state.log, note or f"+{amount}"]})


@app.action
async def countdown(state: Counter, step: int = 1) -> AsyncIterator[int | Counter]:
    """Stream the total down to zero, then reset it."""
    for value in range(state.total, 0, -step):
        yield value
    yield state.model_copy(update={"total": 0, "log": [*state.log, "countdown"]})


app.transitions(("add", "countdown", lambda s: s.total >= 100), ("add", "add"), ("countdown", "add"))
