"""Prometheus metrics of one runtime, in a registry of its own."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class RuntimeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("servemesh_requests", "Streams served, by endpoint and outcome",
                                ["endpoint", "outcome"], registry=self.registry)
        self.inflight = Gauge("servemesh_inflight_streams", "Streams being served now",
                              ["endpoint"], registry=self.registry)
        self.duration = Histogram("servemesh_request_duration_seconds", "Time from request to end of stream",
                                  ["endpoint"], buckets=_BUCKETS, registry=self.registry)
        self._endpoints: dict[str, EndpointMetrics] = {}

    def endpoint(self, path: str) -> EndpointMetrics:
        found = self._endpoints.get(path)
        if found is None:
            found = self._endpoints[path] = EndpointMetrics(self, path)
        return found

    def render(self) -> bytes:
        return generate_latest(self.registry)


class EndpointMetrics:
    __slots__ = ("_duration", "_inflight", "_outcomes", "_parent", "_path")

    def __init__(self, parent: RuntimeMetrics, path: str) -> None:
        self._parent = parent
        self._path = path
        self._inflight = parent.inflight.labels(path)
        self._duration = parent.duration.labels(path)
        self._outcomes: dict[str, Any] = {}

    def started(self) -> None:
        self._inflight.inc()

    def finished(self, outcome: str, seconds: float) -> None:
        self._inflight.dec()
        self._duration.observe(seconds)
        counter = self._outcomes.get(outcome)
        if counter is None:
            counter = self._outcomes[outcome] = self._parent.requests.labels(self._path, outcome)
        counter.inc()
