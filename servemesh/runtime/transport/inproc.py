"""In-process calls: the caller runs the serving path (``serving.Call``) itself.

No serialisation and no task hop: the caller iterates the call's ``items``
generator, which runs the handler in the caller's task, with the same
admission, validation, unary fast path, accounting and error mapping as a
remote call. Refusals (shutting down, overloaded) are raised by ``open`` so the
client can fail over to another instance.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...config import Settings
from ...errors import InstanceUnavailable
from ..context import Context
from ..records import InstanceRecord
from ..serving import Call, ServedEndpoint
from ..tasks import TaskSet


class InprocTransport:
    """Connector of this process's own endpoints, and the listener of embedded mode."""

    key = "inproc"

    def __init__(self, settings: Settings, endpoints: Mapping[str, ServedEndpoint], instance_id: int,
                 tasks: TaskSet) -> None:
        self.endpoints = endpoints
        self.instance_id = instance_id
        self.tasks = tasks

    def accepts(self, record: InstanceRecord) -> bool:
        return record.instance_id == self.instance_id

    def open_nowait(self, record: InstanceRecord, request: Any, ctx: Context | None) -> Call:
        served = self.endpoints.get(record.path)
        if served is None:  # a stale record of ours: refused, the caller fails over
            raise InstanceUnavailable(record.instance_id, "in-process", f"{record.path} is not served here")
        if ctx is None:
            call = Call(served, request, None)
            call.interruptible = False  # no caller context: nothing can interrupt it
        else:
            call = Call(served, request, Context(ctx.id, ctx.metadata, deadline=ctx.deadline))
        call._tasks = self.tasks
        return call

    async def open(self, record: InstanceRecord, request: Any, ctx: Context | None) -> Call:
        return self.open_nowait(record, request, ctx)

    async def add(self, served: ServedEndpoint, record: InstanceRecord) -> dict[str, str]:
        return {self.key: f"{self.instance_id:x}"}

    async def remove(self, path: str) -> None:
        return None

    async def close(self) -> None:
        return None
