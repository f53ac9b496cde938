"""Stateful sessions: serve Burr applications and plain-Python stateful apps.

- :class:`StatefulApp`: a plain-Python app (typed actions, declared transitions);
  :class:`BurrApp`: a Burr application, unchanged (``servemesh[burr]``).
- :class:`Sessions`: getOrCreate / exists / list / run an action / fork / history /
  delete over a :class:`SessionStore` with compare-and-set steps.
- Stores: :class:`SQLiteStore` (default), :class:`PostgresStore`, :class:`MemoryStore`,
  :class:`BurrPersisterStore`; :func:`open_store` from a URL.

HTTP: :func:`servemesh.gateway.sessions.session_router` (an ``APIRouter``) and the
one-call server :func:`servemesh.apps.sessions.serve_sessions`. See ``docs/sessions.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .app import StatefulApp
from .definition import ActionSpec, Definition, Result
from .records import Lineage, Page, Session, Step
from .service import Sessions
from .store import MemoryStore, SessionStore, open_store

if TYPE_CHECKING:
    from .burr import BurrApp, BurrPersisterStore
    from .postgres import PostgresStore
    from .sqlite import SQLiteStore

_LAZY = {"BurrApp": ".burr", "BurrPersisterStore": ".burr", "PostgresStore": ".postgres", "SQLiteStore": ".sqlite"}


def __getattr__(name: str) -> Any:  # Burr, aiosqlite and asyncpg are imported when first used
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(name)


__all__ = [
    "ActionSpec",
    "BurrApp",
    "BurrPersisterStore",
    "Definition",
    "Lineage",
    "MemoryStore",
    "Page",
    "PostgresStore",
    "Result",
    "SQLiteStore",
    "Session",
    "SessionStore",
    "Sessions",
    "StatefulApp",
    "Step",
    "open_store",
]
