"""The batching engine's counters in Prometheus form, on the runtime's ``/metrics``."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .batching import Batcher

#: counter name -> (BatchStats field, help)
COUNTERS = {
    "servemesh_engine_requests": ("requests", "Requests admitted to a slot"),
    "servemesh_engine_rejected": ("rejected", "Requests refused because too many waited (429)"),
    "servemesh_engine_prompt_tokens": ("prompt_tokens", "Prompt tokens of admitted requests"),
    "servemesh_engine_cached_tokens": ("cached_tokens", "Prompt tokens taken from the prefix cache"),
    "servemesh_engine_prefix_hits": ("prefix_hits", "Requests that reused a cached prefix"),
    "servemesh_engine_generated_tokens": ("generated_tokens", "Tokens generated"),
    "servemesh_engine_steps": ("steps", "Decode steps (tokens per step = generated / steps)"),
}


class EngineCollector(Collector):
    """Built when ``/metrics`` is scraped; the decode loop only bumps integers."""

    def __init__(self, batcher: Batcher, model: str) -> None:
        self.batcher = batcher
        self.model = model

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = self.batcher.stats
        for name, (field, text) in COUNTERS.items():
            family = CounterMetricFamily(name, text, labels=["model"])
            family.add_metric([self.model], getattr(stats, field))
            yield family
        b = self.batcher
        for name, text, value in (("servemesh_engine_slots", "Sequences decoded together at most", len(b.slots)),
                                  ("servemesh_engine_busy_slots", "Slots running a request", b.busy),
                                  ("servemesh_engine_waiting", "Requests waiting for a slot", b.waiting)):
            gauge = GaugeMetricFamily(name, text, labels=["model"])
            gauge.add_metric([self.model], value)
            yield gauge
