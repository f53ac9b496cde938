"""``FunctionContext``: what an execution may use besides its inputs and params."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..objects import Objects
from ..runtime import Context


@dataclasses.dataclass(frozen=True)
class FunctionContext:
    """Passed to ``on_execute`` when it has a parameter annotated ``FunctionContext``:
    ``objects`` is the object store media refs live in (``await inputs.image.read(ctx.objects)``),
    ``context`` the request's runtime context (id, deadline, cancellation)."""

    objects: Objects
    context: Context
    function: Any = None
