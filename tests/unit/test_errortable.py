"""The error table: every kind maps to one class and back, with its fields, over any number of hops."""

from __future__ import annotations

import pytest

from servemesh import errors
from servemesh.runtime import codec, errortable

SAMPLES = [
    errors.RemoteError("KeyError", "'x'", "ns.c.e"),
    errors.ValidationError("must be positive", "sampling.max_tokens", "ns.c.e"),
    errors.SerializationError("cannot encode"),
    errors.NoInstancesError("ns.c.e", ["ns.c.f"], {"model": "m"}, 2.5),
    errors.InstanceUnavailable(0xABC, "127.0.0.1:1", "shutting down"),
    errors.StreamIncomplete("ns.c.e", 7, 3, "connection lost"),
    errors.Overloaded("ns.c.e", 16),
    errors.Cancelled("stopped"),
    errors.DeadlineExceeded("late"),
    errors.ProtocolError("garbage"),
    errors.FrameTooLarge(100, 10),
    errors.ConfigError("bad setting"),
    errors.DiscoveryError("etcd down"),
    errors.ObjectNotFound("obj-" + "0" * 64, expired=True),
    errors.ObjectTooLarge(200, 100, "obj-" + "0" * 64),
    errors.ObjectStoreUnavailable("nats://h:4222 bucket b", "no answer within 30 s"),
    errors.CapabilityNotFound({"type": "x"}, [{"type": "chat", "model": "demo"}]),
    errors.DelegationRefused("loop", ["r-a", "r-b"], 4, {"type": "a"}),
    errors.DelegationRefused("depth", ["r-a"], 1),
    errors.UpstreamProtocolError("10.0.0.1:9000", "OIP v2 gRPC", "UNIMPLEMENTED"),
    errors.SessionNotFound("p", "a", 3),
    errors.SessionConflict("p", "a", 1, 2),
    errors.WrongAction("ask", "answer", "a", "p"),
    errors.ActionFailed("ask", "RuntimeError", "on fire"),
    errors.ServemeshError("something"),
]


def hop(exc: errors.ServemeshError) -> errors.ServemeshError:
    kind, fields = errortable.encode(exc)
    frame = codec.decode(codec.encode(codec.Error(1, kind, fields)))  # type: ignore[arg-type]
    return errortable.decode(frame.kind, frame.fields)


def test_every_kind_has_exactly_one_class():
    assert len(errortable.KINDS) == len({id(c) for c in errortable.KINDS.values()})
    for kind, cls in errortable.KINDS.items():
        assert cls.kind == kind


@pytest.mark.parametrize("exc", SAMPLES, ids=lambda e: type(e).__name__)
def test_fields_survive_three_hops(exc):
    back = hop(hop(hop(exc)))
    assert type(back) is type(exc)
    assert str(back) == str(exc)
    assert back.wire_fields() == exc.wire_fields()


def test_overloaded_keeps_its_limit():
    back = hop(errors.Overloaded("a.b.c", 42))
    assert isinstance(back, errors.Overloaded) and back.limit == 42 and back.endpoint == "a.b.c"


def test_a_users_subclass_travels_as_its_servemesh_base():
    class TooBig(errors.ValidationError):
        pass

    back = hop(TooBig("too big", "prompt"))
    assert type(back) is errors.ValidationError and back.field == "prompt"


def test_foreign_exceptions_become_remote_errors():
    mapped = errortable.as_servemesh_error(KeyError("k"), "a.b.c")
    assert isinstance(mapped, errors.RemoteError) and mapped.remote_type == "KeyError"
    same = errors.Overloaded("a.b.c", 1)
    assert errortable.as_servemesh_error(same, "x.y.z") is same


def test_error_text_with_a_lone_surrogate_still_encodes():
    back = hop(errors.RemoteError("ValueError", "bad \ud800 text"))
    assert isinstance(back, errors.RemoteError) and "bad" in back.message


def test_malformed_fields_still_give_the_right_class():
    assert isinstance(errortable.decode("overloaded", {"limit": "not a number"}), errors.Overloaded)
