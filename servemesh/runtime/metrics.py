"""Per-endpoint request metrics of one runtime, exported in Prometheus format.

The hot path only bumps plain integers (a stream start costs two additions);
the Prometheus metric families are built when ``/metrics`` is scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class EndpointMetrics:
    __slots__ = ("buckets", "inflight", "outcomes", "path", "total_seconds")

    def __init__(self, path: str) -> None:
        self.path = path
        self.inflight = 0
        self.outcomes: dict[str, int] = {}
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.total_seconds = 0.0

    def started(self) -> None:
        self.inflight += 1

    def finished(self, outcome: str, seconds: float) -> None:
        self.inflight -= 1
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self.buckets[bisect_left(BUCKETS, seconds)] += 1
        self.total_seconds += seconds


class RuntimeMetrics(Collector):
    def __init__(self) -> None:
        self._endpoints: dict[str, EndpointMetrics] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def endpoint(self, path: str) -> EndpointMetrics:
        found = self._endpoints.get(path)
        if found is None:
            found = self._endpoints[path] = EndpointMetrics(path)
        return found

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        requests = CounterMetricFamily("servemesh_requests", "Streams served, by endpoint and outcome",
                                       labels=["endpoint", "outcome"])
        errors = CounterMetricFamily("servemesh_errors", "Streams that ended in an error, by endpoint",
                                     labels=["endpoint"])
        inflight = GaugeMetricFamily("servemesh_inflight_streams", "Streams being served now",
                                     labels=["endpoint"])
        duration = HistogramMetricFamily("servemesh_request_duration_seconds",
                                         "Time from request to end of stream", labels=["endpoint"])
        for path, m in sorted(self._endpoints.items()):
            for outcome, count in sorted(m.outcomes.items()):
                requests.add_metric([path, outcome], count)
            errors.add_metric([path], sum(c for o, c in m.outcomes.items() if o != "ok"))
            inflight.add_metric([path], m.inflight)
            cumulative, running = [], 0
            for bound, count in zip((*BUCKETS, float("inf")), m.buckets, strict=True):
                running += count
                cumulative.append((str(bound) if bound != float("inf") else "+Inf", running))
            duration.add_metric([path], cumulative, m.total_seconds)
        yield requests
        yield errors
        yield inflight
        yield duration

    def render(self) -> bytes:
        return generate_latest(self.registry)
