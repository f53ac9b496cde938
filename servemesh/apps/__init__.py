"""Application assembly: services and gateways wired into runnable applications.

The top of the dependency graph: ``apps`` may import ``llm``, ``gateway``, ``sdk``
and ``runtime``; nothing in servemesh imports ``apps``."""

import gc


def settle_heap() -> None:
    """Move what start-up allocated (modules, FastAPI's and pydantic's tables, the app)
    out of the garbage collector's sight; called by a process's assembler once its
    servers are up. It lives as long as the process, and scanning it in every full
    collection stalled requests for tens of milliseconds (p99)."""
    gc.collect()
    gc.freeze()
