"""A gateway's own Prometheus metrics, in a registry per gateway instance.

Several gateways (or tests) in one process never collide, and ``/metrics`` serves
this registry followed by the runtime's per-endpoint metrics. A gateway served by
several worker processes (``--workers``) answers with every worker's metrics summed
(:func:`merge_expositions`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.utils import floatToGoString

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


def merge_expositions(texts: Iterable[bytes]) -> bytes:
    """Prometheus text expositions of the same metrics from several processes, as one.

    Samples with the same name and labels are summed (counters, histogram buckets, sums and
    counts, and gauges: the in-flight gauges of several workers add up), except
    ``*_created`` timestamps, which keep the earliest. Families keep the order in which
    they first appear; a sample only some processes have is kept as it is."""
    families: dict[str, tuple[list[str], dict[str, float]]] = {}
    current: tuple[list[str], dict[str, float]] = families.setdefault("", ([], {}))
    for text in texts:
        for line in text.decode().splitlines():
            if line.startswith("#"):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    current = families.setdefault(parts[2], ([], {}))
                    if line not in current[0]:
                        current[0].append(line)
                continue
            key, _, value = line.rpartition(" ")
            if not key:
                continue
            samples = current[1]
            number = float(value)
            before = samples.get(key)
            if before is None:
                samples[key] = number
            elif key.split("{", 1)[0].endswith("_created"):
                samples[key] = min(before, number)
            else:
                samples[key] = before + number
    lines: list[str] = []
    for header, samples in families.values():
        lines += header
        lines += [f"{key} {floatToGoString(number)}" for key, number in samples.items()]
    return "".join(f"{line}\n" for line in lines).encode()
