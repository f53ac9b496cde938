from __future__ import annotations

import msgspec
import pytest
from pydantic import BaseModel

from servemesh.errors import FrameTooLarge, ProtocolError, SerializationError
from servemesh.runtime import codec

FRAMES = [
    codec.Request(1, "ns.comp.ep", {"text": "hi", "ids": [1, 2]}, "req-1", 64),
    codec.Request(2, "ns.comp.ep", "plain", "", 1, timeout_ms=250, metadata={"k": "v"}, window_bytes=1 << 20),
    codec.Item(1, {"token_ids": [7]}),
    codec.Item(1, "x", event="delta", comments=["c1"], id="7"),
    codec.End(1),
    codec.Error(1, "validation", {"message": "bad", "field": "max_tokens"}),
    codec.Error(2, "overloaded", {"endpoint": "a.b.c", "limit": 4}, refused=True),
    codec.Cancel(3),
    codec.Credit(3, 32),
]


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: type(f).__name__)
def test_round_trip(frame):
    assert codec.decode(codec.encode(frame)) == frame


def test_stream_decoder_reassembles_frames_split_anywhere():
    data = b"".join(codec.encode(f) for f in FRAMES)
    for cut in range(1, len(data)):
        decoder = codec.FrameDecoder(limit=1 << 20)
        frames = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
        assert frames == FRAMES
        assert decoder.pending == 0


def test_pydantic_models_are_encoded_as_their_json_form():
    class Tok(BaseModel):
        text: str
        ids: list[int]

    frame = codec.decode(codec.encode(codec.Item(1, Tok(text="a", ids=[1]))))
    assert frame.data == {"text": "a", "ids": [1]}


def test_truncated_frame_is_a_protocol_error():
    data = codec.encode(codec.Item(1, "hello"))
    with pytest.raises(ProtocolError, match="truncated"):
        codec.decode(data[:-2])
    with pytest.raises(ProtocolError, match="truncated"):
        codec.decode(data[:3])


def test_truncated_body_with_consistent_header_is_a_protocol_error():
    body = codec.encode(codec.Item(1, "hello"))[4:-2]
    with pytest.raises(ProtocolError, match="malformed"):
        codec.decode(len(body).to_bytes(4, "big") + body)


def test_oversized_frame_is_refused_on_both_sides():
    with pytest.raises(FrameTooLarge) as info:
        codec.encode(codec.Item(1, "x" * 2000), limit=1000)
    assert info.value.limit == 1000 and info.value.size > 1000
    decoder = codec.FrameDecoder(limit=1000)
    with pytest.raises(FrameTooLarge):
        decoder.feed((5000).to_bytes(4, "big") + b"\0" * 10)


def test_failed_append_leaves_the_buffer_unchanged():
    buf = bytearray(codec.encode(codec.End(1)))
    before = bytes(buf)
    with pytest.raises(FrameTooLarge):
        codec.append_frame(buf, codec.Item(2, "x" * 2000), 1000)
    with pytest.raises(SerializationError):
        codec.append_frame(buf, codec.Item(2, object()), 1000)
    assert bytes(buf) == before


@pytest.mark.parametrize("payload", [
    msgspec.msgpack.encode([99, 1]),              # unknown tag
    msgspec.msgpack.encode([2, "not-an-int", 1]),  # wrong type for sid
    msgspec.msgpack.encode({"sid": 1}),            # not an array
    b"\xc1",                                       # invalid msgpack
])
def test_wrong_types_are_protocol_errors(payload):
    with pytest.raises(ProtocolError):
        codec.decode(len(payload).to_bytes(4, "big") + payload)
    with pytest.raises(ProtocolError):
        codec.FrameDecoder(1 << 20).feed(len(payload).to_bytes(4, "big") + payload)


def test_an_unknown_error_kind_is_a_malformed_frame():
    body = msgspec.msgpack.encode([4, 1, "made_up_kind", {"message": "x"}])
    with pytest.raises(ProtocolError, match="malformed"):
        codec.decode(len(body).to_bytes(4, "big") + body)


@pytest.mark.parametrize("bad", ["\ud800 lone surrogate", 2**70, object()])
def test_an_unencodable_value_leaves_no_partial_frame(bad):
    buf = bytearray(codec.encode(codec.Item(1, "kept")))
    before = bytes(buf)
    with pytest.raises(SerializationError):
        codec.append_frame(buf, codec.Item(2, {"text": bad}), 1 << 20)
    assert bytes(buf) == before


def test_decoder_reports_each_frame_size():
    frames = [codec.Item(1, "x" * 10), codec.Item(1, "y" * 1000)]
    data = b"".join(codec.encode(f) for f in frames)
    decoder = codec.FrameDecoder(limit=1 << 20)
    assert decoder.feed(data) == frames
    assert decoder.sizes == [len(codec.encode(f)) - codec.HEADER for f in frames]
