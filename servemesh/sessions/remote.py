"""The session service on the request plane, and its client.

:func:`serve_sessions` serves a :class:`Sessions` as the runtime endpoint
``{namespace}.{app}.session``; any number of replicas may serve it over one shared
store (the store's compare-and-set keeps them correct). :class:`RemoteSessions` has
the methods of :class:`Sessions` and calls a replica for each: the gateway uses it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal

import msgspec

from ..runtime import Client, Context, DistributedRuntime
from .records import Page, Session, Step
from .service import Sessions

#: the namespace session services register in unless told otherwise
NAMESPACE = "sessions"

Op = Literal["get_or_create", "get", "list_sessions", "partitions", "history", "delete", "fork", "run", "stream"]


class SessionCall(msgspec.Struct, forbid_unknown_fields=True):
    """One request to a session service: the method and its keyword arguments."""

    op: Op
    args: dict[str, Any] = {}


def endpoint_path(app_name: str, namespace: str = NAMESPACE) -> str:
    return f"{namespace}.{app_name}.session"


def _wire(value: Any) -> Any:
    if isinstance(value, (Session, Page, Step)):
        return value.to_wire()
    if isinstance(value, list):
        return [_wire(v) for v in value]
    return value


async def serve_sessions(runtime: DistributedRuntime, sessions: Sessions, *, namespace: str = NAMESPACE) -> None:
    """Serve ``sessions`` on the request plane until the runtime stops."""

    async def handle(call: SessionCall) -> AsyncIterator[Any]:
        if call.op == "stream":
            async for item in sessions.stream(**call.args):
                yield {"session": item.to_wire()} if isinstance(item, Session) else {"chunk": item}
            return
        result = await getattr(sessions, call.op)(**call.args)
        yield _wire(result)

    endpoint = runtime.namespace(namespace).component(sessions.app.name).endpoint("session")
    await endpoint.serve_endpoint(handle, capabilities={"app": sessions.app.name,
                                                        "actions": list(sessions.app.actions)})


class RemoteSessions:
    """The methods of :class:`Sessions`, each a call to a replica of the session service."""

    def __init__(self, client: Client, *, timeout: float | None = None) -> None:
        self.client = client
        self.timeout = timeout

    @classmethod
    async def connect(cls, runtime: DistributedRuntime, app_name: str, *, namespace: str = NAMESPACE,
                      timeout: float | None = None) -> RemoteSessions:
        client = await runtime.endpoint(endpoint_path(app_name, namespace)).client()
        return cls(client, timeout=timeout)

    async def close(self) -> None:
        await self.client.close()

    def ready(self) -> bool:
        return bool(self.client.instance_ids())

    async def _one(self, op: str, **args: Any) -> Any:
        stream = self.client.generate(SessionCall(op, args), context=Context(timeout=self.timeout),  # type: ignore[arg-type]
                                      annotated=False)
        async with stream:  # closed however the call ends
            async for item in stream:
                return item
        raise RuntimeError(f"the session service answered {op} with nothing")  # pragma: no cover

    async def get_or_create(self, partition_key: str, app_id: str) -> Session:
        return Session.from_wire(await self._one("get_or_create", partition_key=partition_key, app_id=app_id))

    async def get(self, partition_key: str, app_id: str) -> Session:
        return Session.from_wire(await self._one("get", partition_key=partition_key, app_id=app_id))

    async def list_sessions(self, partition_key: str | None = None, app_id: str | None = None, *,
                            partitions: Sequence[str] | None = None, cursor: str | None = None,
                            limit: int = 50) -> Page:
        return Page.from_wire(await self._one("list_sessions", partition_key=partition_key, app_id=app_id,
                                              partitions=None if partitions is None else list(partitions),
                                              cursor=cursor, limit=limit))

    async def partitions(self, *, partitions: Sequence[str] | None = None, after: str | None = None,
                         limit: int = 50) -> list[str]:
        return list(await self._one("partitions", partitions=None if partitions is None else list(partitions),
                                    after=after, limit=limit))

    async def history(self, partition_key: str, app_id: str, *, after: int = -1, limit: int = 50) -> list[Step]:
        items = await self._one("history", partition_key=partition_key, app_id=app_id, after=after, limit=limit)
        return [Step(**s) for s in items]

    async def delete(self, partition_key: str, app_id: str) -> None:
        await self._one("delete", partition_key=partition_key, app_id=app_id)

    async def fork(self, partition_key: str, app_id: str, new_app_id: str, *, at_sequence_id: int | None = None,
                   overrides: dict[str, Any] | None = None, new_partition_key: str | None = None) -> Session:
        return Session.from_wire(await self._one(
            "fork", partition_key=partition_key, app_id=app_id, new_app_id=new_app_id,
            at_sequence_id=at_sequence_id, overrides=overrides, new_partition_key=new_partition_key))

    async def run(self, partition_key: str, app_id: str, action: str, inputs: dict[str, Any],
                  if_match: int | None = None) -> Session:
        return Session.from_wire(await self._one("run", partition_key=partition_key, app_id=app_id, action=action,
                                                 inputs=inputs, if_match=if_match))

    async def stream(self, partition_key: str, app_id: str, action: str, inputs: dict[str, Any],
                     if_match: int | None = None) -> AsyncIterator[Any]:
        call = SessionCall("stream", {"partition_key": partition_key, "app_id": app_id, "action": action,
                                      "inputs": inputs, "if_match": if_match})
        stream = self.client.generate(call, context=Context(timeout=self.timeout), annotated=False)
        async with stream:  # a client that leaves mid-stream cancels the action: nothing is stored
            async for item in stream:
                yield Session.from_wire(item["session"]) if "session" in item else item["chunk"]
