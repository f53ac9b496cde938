"""Servemesh errors between gRPC servers and ``GrpcConnector``: ``x-servemesh-error``
(trailing metadata, or a stream error response's parameter) rebuilds the exact error."""

from __future__ import annotations

import pytest

from servemesh import errors
from servemesh.gateway.kit.grpc import (
    ERROR_KEY,
    MAX_ERROR_BYTES,
    error_from_metadata,
    error_from_text,
    error_metadata,
    error_text,
    parse_request,
)
from servemesh.tensors.proto import grpc_predict_v2_pb2 as pb2

from .test_errortable import SAMPLES


def hop(exc: errors.ServemeshError) -> errors.ServemeshError | None:
    """Over one gRPC hop: as a servicer sends it, as a connector reads it."""
    metadata = error_metadata(exc)
    for _, value in metadata:  # what gRPC allows in a metadata value: printable ASCII
        assert all(0x20 <= ord(c) < 0x7F for c in value)
    return error_from_metadata(metadata)


@pytest.mark.parametrize("exc", SAMPLES, ids=lambda e: type(e).__name__)
def test_every_kind_survives_grpc_hops(exc):
    back = hop(hop(hop(exc)))  # type: ignore[arg-type]
    assert type(back) is type(exc) and str(back) == str(exc) and back.wire_fields() == exc.wire_fields()


def test_text_that_needs_escaping_travels_as_printable_ascii():
    exc = errors.RemoteError("ValueError", "ünïcödé \x7f\x00\n \ud800 'quoted' \"too\"")
    back = hop(exc)
    assert isinstance(back, errors.RemoteError) and back.message.startswith("ünïcödé \x7f\x00\n ")


def test_too_large_errors_and_foreign_values_fall_back_to_the_status_code():
    huge = errors.CapabilityNotFound({"type": "x"}, [{"type": f"cap-{i}"} for i in range(MAX_ERROR_BYTES)])
    assert error_metadata(huge) == () and error_text(huge) is None
    assert error_metadata(KeyError("not a servemesh error")) == ()
    for value in ("", "not json", "[1]", '{"kind": "no such kind"}', '{"kind": "remote", "fields": 3}'):
        found = error_from_metadata([(ERROR_KEY, value)])
        assert found is None or (value.endswith("3}") and isinstance(found, errors.RemoteError))
    assert error_from_metadata([("other", "x")]) is None and error_from_text(None) is None


def test_request_bytes_are_parsed_or_refused():
    message = pb2.ModelInferRequest(id="a", model_name="m")
    assert parse_request(message.SerializeToString()) == message
    assert parse_request(message) is message
    with pytest.raises(errors.ValidationError, match="the request is not a ModelInferRequest: "):
        parse_request(b"\xff\xff\xff\xff garbage")
