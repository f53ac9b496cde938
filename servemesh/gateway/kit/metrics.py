"""A gateway's own Prometheus metrics, in a registry per gateway instance.

Several gateways (or tests) in one process never collide, and ``/metrics`` serves
this registry followed by the runtime's per-endpoint metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"

#: request durations from the first byte in to the last byte out (streams included)
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("servemesh_http_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.inflight = Gauge("servemesh_http_inflight", "HTTP requests in flight (admitted)",
                              registry=self.registry)
        self.duration = Histogram("servemesh_http_request_duration_seconds",
                                  "HTTP request duration, to the end of the response body", ["route"],
                                  buckets=BUCKETS, registry=self.registry)
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._inflight: list[Callable[[], int]] = []
        self.inflight.set_function(lambda: sum(source() for source in self._inflight))

    def count_inflight(self, source: Callable[[], int]) -> None:
        """Add ``source()`` to the in-flight gauge (gateways sharing these metrics each add theirs)."""
        self._inflight.append(source)

    def observe(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        children = self._children.get(key)
        if children is None:  # label lookups are not free: one per (route, status), ever
            if len(self._children) > 4096:
                self._children.clear()
            children = self._children[key] = (self.requests.labels(route, str(status)), self.duration.labels(route))
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
