"""``merge_expositions``: the metrics of several workers as one exposition (bytes in, bytes out)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from servemesh.gateway.kit import GatewayMetrics, merge_expositions


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode()) for s in family.samples}


def worker(inflight: int, *observed: tuple[str, int, float]) -> GatewayMetrics:
    metrics = GatewayMetrics()
    metrics.count_inflight(lambda: inflight)
    for route, status, seconds in observed:
        metrics.observe(route, status, seconds)
    return metrics


def test_counters_histograms_and_gauges_sum_across_workers():
    a = worker(2, ("/v1/chat/completions", 200, 0.02), ("/v1/chat/completions", 200, 3.0), ("/health", 200, 0.001))
    b = worker(1, ("/v1/chat/completions", 200, 0.02), ("/v1/models", 404, 0.001))
    merged = samples(merge_expositions([a.render(), b.render()]))
    chat = (("route", "/v1/chat/completions"), ("status", "200"))
    assert merged[("servemesh_http_requests_total", chat)] == 3
    assert merged[("servemesh_http_requests_total", (("route", "/health"), ("status", "200")))] == 1
    assert merged[("servemesh_http_requests_total", (("route", "/v1/models"), ("status", "404")))] == 1
    assert merged[("servemesh_http_inflight", ())] == 3
    route = (("route", "/v1/chat/completions"),)
    assert merged[("servemesh_http_request_duration_seconds_count", route)] == 3
    assert merged[("servemesh_http_request_duration_seconds_sum", route)] == 3.04
    assert merged[("servemesh_http_request_duration_seconds_bucket", (("le", "0.025"), *route))] == 2
    assert merged[("servemesh_http_request_duration_seconds_bucket", (("le", "+Inf"), *route))] == 3


def test_creation_times_keep_the_earliest_and_headers_appear_once():
    a = b"# HELP x_total n\n# TYPE x_total counter\nx_total 1.0\n# HELP x_created n\n# TYPE x_created gauge\n" \
        b"x_created 200.0\n"
    b = a.replace(b"x_total 1.0", b"x_total 2.0").replace(b"200.0", b"100.0")
    merged = merge_expositions([a, b])
    assert merged == (b"# HELP x_total n\n# TYPE x_total counter\nx_total 3.0\n"
                      b"# HELP x_created n\n# TYPE x_created gauge\nx_created 100.0\n")


def test_label_values_with_spaces_and_quotes_and_one_worker_alone():
    text = b'# HELP m h\n# TYPE m counter\nm_total{model="a \\"b\\" c"} 2.0\n'
    assert merge_expositions([text, text]) == text.replace(b"2.0", b"4.0")
    assert merge_expositions([text]) == text
    assert merge_expositions([]) == b""
