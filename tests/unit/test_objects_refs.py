"""Object refs: only ``obj-`` + 64 lowercase hex digits ever reach a backend."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from servemesh.errors import ValidationError
from servemesh.objects import InvalidObjectRef, ObjectCorrupted, check_ref, is_ref, ref_from_tensor, refs

GOOD = "obj-" + hashlib.sha256(b"payload").hexdigest()

BAD = [
    "../x",
    "../../etc/passwd",
    "/etc/passwd",
    "obj-../../etc/passwd",
    "obj-" + "../" * 21 + "a",
    "file:///etc/passwd",
    "nats://host/obj",
    GOOD + "/../x",
    GOOD + "\n",
    "\n" + GOOD,
    " " + GOOD,
    GOOD.upper(),
    "OBJ-" + GOOD[4:],
    GOOD[:-1],
    GOOD + "0",
    GOOD[:-1] + "g",
    GOOD[:-1] + "\x00",
    "obj-" + "/" * 64,
    "obj-" + "." * 64,
    "x" * 10_000_000,
    "",
    "obj-",
]


def test_ref_for_is_obj_and_the_sha256_of_the_payload():
    assert refs.ref_for(b"payload") == GOOD
    assert is_ref(GOOD) and check_ref(GOOD) == GOOD


@pytest.mark.parametrize("bad", BAD, ids=lambda b: repr(b)[:30])
def test_anything_else_is_refused(bad):
    assert not is_ref(bad)
    with pytest.raises(InvalidObjectRef) as caught:
        check_ref(bad)
    assert "obj-" in str(caught.value) and len(str(caught.value)) < 400  # never echoes megabytes


@pytest.mark.parametrize("bad", [None, 7, 1.5, ["x"], {"ref": GOOD}, object()])
def test_non_strings_are_refused(bad):
    with pytest.raises(InvalidObjectRef):
        check_ref(bad)


def test_invalid_ref_is_a_validation_error_of_the_obj_ref_field():
    with pytest.raises(ValidationError) as caught:
        check_ref("../x")
    assert caught.value.field == "obj_ref"


def test_ascii_bytes_are_accepted_as_tensors_carry_them():
    assert check_ref(GOOD.encode()) == GOOD
    assert check_ref(bytearray(GOOD.encode())) == GOOD
    assert check_ref(memoryview(GOOD.encode())) == GOOD
    for bad in (b"../../etc/passwd", GOOD.encode()[:-1] + b"\xff", GOOD.encode() + b"\n"):
        with pytest.raises(InvalidObjectRef):
            check_ref(bad)


@pytest.mark.parametrize("tensor", [
    GOOD, GOOD.encode(), [GOOD.encode()], (GOOD,), [[GOOD]],
    np.array([GOOD.encode()], dtype=object), np.array([GOOD]), np.array([GOOD.encode()]),
    np.array([[GOOD.encode()]], dtype=object),
], ids=lambda t: type(t).__name__)
def test_a_ref_travels_in_a_one_element_tensor(tensor):
    assert ref_from_tensor(tensor) == GOOD


@pytest.mark.parametrize("tensor", [
    [], [GOOD, GOOD], np.array([GOOD, GOOD]), np.array([b"../../etc/passwd"], dtype=object),
    [b"/etc/passwd"], np.array([1.0]), [[[[[[[[[[GOOD]]]]]]]]]],
], ids=lambda t: repr(t)[:30])
def test_a_tensor_without_exactly_one_valid_ref_is_refused(tensor):
    with pytest.raises(InvalidObjectRef):
        ref_from_tensor(tensor)


def test_verify_checks_the_bytes_against_the_ref():
    refs.verify(GOOD, b"payload")
    with pytest.raises(ObjectCorrupted, match="hashes to"):
        refs.verify(GOOD, b"payloaD")
