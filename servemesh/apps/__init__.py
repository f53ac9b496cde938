"""Application assembly: services and gateways wired into runnable applications.

The top of the dependency graph: ``apps`` may import ``llm``, ``gateway``, ``sdk``
and ``runtime``; nothing in servemesh imports ``apps``."""
