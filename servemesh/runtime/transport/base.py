"""The transport seam: the small Protocols every request-plane transport implements.

A transport has two roles. Its **listener** takes the endpoints this process
serves and says how others reach them (the ``transport`` entry of their
discovery record); its **connector** opens a stream to an instance record it
``accepts``. The runtime holds them in a ``RequestPlane`` and never asks which
transport a record uses: the first connector that accepts the record opens it.

Implementations: ``inproc`` (same process, Python objects handed over as they
are), ``tcp`` (one multiplexed connection per peer), ``nats`` (a subject per
instance) and ``memory`` (the in-memory twin of a network transport for tests:
real frames through the real codec, no sockets). A new transport implements
these two Protocols and is listed in ``transport.TRANSPORTS``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ...errors import ServemeshError
    from ..context import Context
    from ..records import InstanceRecord
    from ..serving import ServedEndpoint


class ClientStream(Protocol):
    """The client side of one open stream, read by ``ResponseStream``."""

    #: True if the instance may still refuse the stream after ``open`` returned (the
    #: caller then fails over); False when refusals are raised by ``open`` itself.
    refusable: bool

    @property
    def finished(self) -> bool: ...

    def items(self, mode: int) -> AsyncGenerator[Any, None]:
        """The stream's items (``serving.RAW``, ``DATA`` or ``ANNOTATED``)."""
        ...

    def interrupt(self, exc: ServemeshError) -> None:
        """Stop the stream because of ``exc`` (context stopped, deadline); the caller
        sees ``exc``."""

    def cancel(self) -> None:
        """The caller left: stop the remote work, without waiting."""

    async def aclose(self) -> None: ...


class Connector(Protocol):
    """The calling side of a transport."""

    def accepts(self, record: InstanceRecord) -> bool:
        """True if this connector can open streams to ``record``'s instance."""

    def open_nowait(self, record: InstanceRecord, request: Any, ctx: Context | None) -> ClientStream | None:
        """Open without waiting if that is possible now (connection up), else None."""

    async def open(self, record: InstanceRecord, request: Any, ctx: Context | None) -> ClientStream:
        """Open a stream; raises ``InstanceUnavailable`` (or the instance's refusal) if
        it cannot."""

    async def close(self) -> None: ...


class Listener(Protocol):
    """The serving side of a transport."""

    async def add(self, served: ServedEndpoint, record: InstanceRecord) -> dict[str, str]:
        """Start taking requests for ``served``; returns the record's ``transport`` entry."""

    async def remove(self, path: str) -> None: ...

    async def close(self) -> None:
        """Stop listening and cancel the streams being served."""
