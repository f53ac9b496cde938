"""The object store's errors keep their meaning across a process boundary (as the existing
servemesh error whose wire kind they share) and at a gateway (their HTTP status)."""

from __future__ import annotations

import pytest

from servemesh import errors
from servemesh.gateway.kit.errors import describe
from servemesh.objects import (
    InvalidObjectRef,
    ObjectCorrupted,
    ObjectNotFound,
    ObjectRefused,
    ObjectStoreError,
    ObjectStoreUnavailable,
    ObjectTooLarge,
)
from servemesh.runtime import codec, errortable

REF = "obj-" + "0" * 64

CASES = [
    (InvalidObjectRef("../../etc/passwd"), errors.ValidationError, 400),
    (ObjectNotFound(REF), ObjectNotFound, 404),
    (ObjectNotFound(REF, expired=True), ObjectNotFound, 404),
    (ObjectTooLarge(200, 100, REF), ObjectTooLarge, 413),
    (ObjectRefused("pickle is not allowed", REF), errors.SerializationError, 400),
    (ObjectCorrupted(REF, "it is a symbolic link"), errors.ProtocolError, 500),
    (ObjectStoreUnavailable("nats://h:4222 bucket b", "no answer"), ObjectStoreUnavailable, 503),
    (ObjectStoreError("closed"), errors.ServemeshError, 500),
]


def hop(exc: errors.ServemeshError) -> errors.ServemeshError:
    kind, fields = errortable.encode(exc)
    frame = codec.decode(codec.encode(codec.Error(1, kind, fields)))  # type: ignore[arg-type]
    return errortable.decode(frame.kind, frame.fields)


@pytest.mark.parametrize("exc, base, status", CASES, ids=lambda c: type(c).__name__)
def test_an_error_arrives_as_its_base_with_its_message(exc, base, status):
    assert isinstance(exc, ObjectStoreError) and isinstance(exc, base)
    back = hop(hop(exc))
    assert type(back) is base
    assert str(back) == str(exc)
    if type(exc) is base:
        assert back.wire_fields() == exc.wire_fields()


@pytest.mark.parametrize("exc, base, status", CASES, ids=lambda c: type(c).__name__)
def test_a_gateway_maps_it_to_its_status(exc, base, status):
    assert describe(exc).status == status == describe(hop(exc)).status


def test_refs_in_messages_are_cut_short():
    exc = InvalidObjectRef("x" * 1_000_000)
    assert len(str(exc)) < 400 and exc.field == "obj_ref"


def test_messages_say_what_to_do():
    assert "SERVEMESH_OBJECT_MAX_BYTES" in str(ObjectTooLarge(200, 100))
    assert "ttl" in str(ObjectNotFound(REF, expired=True))
    assert "SERVEMESH_OBJECT_STORE" in str(ObjectNotFound(REF))
