"""HTTP surfaces of stateful sessions: the session API router and the sessions gateway."""

from .router import Backend, session_router

__all__ = ["Backend", "session_router"]
