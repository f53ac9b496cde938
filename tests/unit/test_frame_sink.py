"""The server side of one stream's flow control, without sockets."""

from __future__ import annotations

from servemesh.runtime.transport.streams import FrameSink


class Quiet:
    congested = False


def test_credit_never_exceeds_the_window_whatever_a_credit_frame_claims():
    written: list[object] = []
    sink = FrameSink(lambda frame: written.append(frame) or 10, 1, 4, 1 << 20, Quiet())
    for _ in range(4):
        sink.send("x", None, None, None)
    assert not sink.ready()
    sink.grant(1 << 40, 0)  # forged, or a buggy caller
    assert sink.credit == 4
    sent = 0
    while sink.ready():
        sink.send("x", None, None, None)
        sent += 1
    assert sent == 4


def test_bytes_granted_back_never_go_below_zero_outstanding():
    sink = FrameSink(lambda frame: 100, 1, 100, 150, Quiet())
    sink.send("x", None, None, None)
    sink.send("x", None, None, None)
    assert not sink.ready()  # 200 bytes out, budget 150
    sink.grant(0, 1 << 40)
    assert sink.outstanding == 0 and sink.ready()
