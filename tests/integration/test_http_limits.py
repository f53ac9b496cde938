"""HTTP limits of every surface, on real loopback sockets: body size (413), body time
(408), header time (slowloris, idle sockets), open connections, and malformed requests.

The OpenAI frontend stands for every surface: the limits come from the gateway kit
and ``HttpServer``, configured by the runtime's settings."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from servemesh.http import protocol, server

from .mock_pipeline import mock_pipeline

MiB = 1024 * 1024
CHAT = "/v1/chat/completions"
ASK = {"model": "mock", "messages": [{"role": "user", "content": "x"}], "max_tokens": 3}


@pytest.fixture(autouse=True, params=["httptools", "h11"])
def http_protocol(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every limit holds with both guarded protocols: httptools (what servers use) and h11
    (the fallback without httptools)."""
    chosen = protocol.GuardedHttpToolsProtocol if request.param == "httptools" else protocol.GuardedH11Protocol
    monkeypatch.setattr(server, "GuardedProtocol", chosen)
    monkeypatch.setattr(protocol.log, "_windows", {})  # each run's log lines counted afresh
    return str(request.param)


def pipeline(**settings: object) -> contextlib.AbstractAsyncContextManager[str]:
    return mock_pipeline(tokens_per_s=100, **settings)


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body, read from a raw socket."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


def peak_rss_reset() -> bool:
    """Reset this process's peak RSS (VmHWM), where the kernel allows it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


async def chunks(total: int, size: int = MiB) -> AsyncIterator[bytes]:
    block = b"x" * size  # one block, sent again and again: the client holds 1 MiB
    for _ in range(total // size):
        yield block


async def test_a_100_mb_body_is_refused_with_413_quickly_and_never_held_in_memory():
    # the memory bound is the point of this test: a kernel without a resettable peak RSS fails it
    assert peak_rss_reset(), "this kernel does not let a process reset its peak RSS (/proc/self/clear_refs)"
    async with pipeline(http_max_body=MiB) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            await http.post(CHAT, json=ASK)  # warm: imports and first allocations done
            peak_rss_reset()
            before = peak_rss()
            started = time.monotonic()
            # declared up front: refused before a byte of the body is read
            declared = await http.post(CHAT, content=chunks(100 * MiB), headers={
                "Content-Type": "application/json", "Content-Length": str(100 * MiB), "X-Request-Id": "big-1"})
            # chunked, no length: counted while it streams, refused once past the limit
            streamed = await http.post(CHAT, content=chunks(100 * MiB), headers={"Content-Type": "application/json"})
            elapsed = time.monotonic() - started
            grown = peak_rss() - before
            for response in (declared, streamed):
                assert response.status_code == 413, response.text
                error = response.json()["error"]
                assert error["code"] == "request_too_large" and "1048576" in error["message"]
                assert set(error) == {"message", "type", "param", "code"}
            assert declared.headers["x-request-id"] == "big-1"
            assert elapsed < 10, elapsed
            assert grown < 40 * MiB, f"peak RSS grew by {grown / MiB:.0f} MiB"
            # a body under the limit is still served
            assert (await http.post(CHAT, json=ASK)).status_code == 200


async def test_a_body_that_arrives_too_slowly_gets_408():
    async with pipeline(http_body_timeout=0.5) as url:
        reader, writer = await asyncio.open_connection(*address(url))
        try:
            body = json.dumps(ASK).encode()
            writer.write(b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:10])
            await writer.drain()  # ... and the rest never comes
            async with asyncio.timeout(10):
                status, headers, raw = await read_response(reader)
                assert await reader.read() == b""  # and the connection is closed
        finally:
            writer.close()
        assert status == 408
        assert json.loads(raw)["error"]["code"] == "request_timeout"
        assert headers["connection"] == "close"


async def _trickle(writer: asyncio.StreamWriter, data: bytes) -> None:
    with contextlib.suppress(ConnectionError):
        for byte in data:  # one byte every 20 ms
            writer.write(bytes((byte,)))
            await writer.drain()
            await asyncio.sleep(0.02)


async def test_slowloris_and_silent_connections_are_dropped_after_the_header_timeout():
    async with pipeline(http_header_timeout=0.5) as url:
        silent_reader, silent = await asyncio.open_connection(*address(url))
        slow_reader, slow = await asyncio.open_connection(*address(url))
        # the whole head would take 20 ms x 230 bytes = 4.6 s to arrive
        head = f"GET /v1/models HTTP/1.1\r\nHost: t\r\nX-Pad: {'a' * 200}\r\n\r\n".encode()
        trickler = asyncio.create_task(_trickle(slow, head))
        started = time.monotonic()
        try:
            async with asyncio.timeout(10):
                answer = await slow_reader.read()  # to EOF: the server closed the connection
                assert not trickler.done(), "the slowloris client sent its whole head"
                assert await silent_reader.read() == b""  # sent nothing: closed without a response
            assert time.monotonic() - started < 3
        finally:
            trickler.cancel()
            silent.close()
            slow.close()
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
        assert b'"code":"request_timeout"' in answer
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            assert (await http.get("/v1/models")).status_code == 200


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        assert hard == resource.RLIM_INFINITY or hard >= wanted, (
            f"this test needs {wanted} file descriptors; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


async def test_3000_idle_sockets_neither_lock_out_new_clients_nor_disturb_busy_ones():
    _raise_fd_limit(8192)
    async with pipeline(http_max_connections=200) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as busy:
            # a client mid-stream when the flood starts
            body = {**ASK, "max_tokens": 150, "stream": True}
            async with busy.stream("POST", CHAT, json=body) as stream:
                lines = stream.aiter_lines()
                assert (await lines.__anext__()).startswith("data: ")
                idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
                try:
                    for _ in range(3000):  # bounded, loopback only, all closed below
                        with contextlib.suppress(OSError):
                            idle.append(await asyncio.open_connection(*address(url)))
                    # the server holds at most 200: the oldest idle ones were closed to make room
                    async with asyncio.timeout(10):
                        assert set(await asyncio.gather(*(r.read() for r, _ in idle[:2700]))) == {b""}
                    started = time.monotonic()
                    async with httpx.AsyncClient(base_url=url, timeout=10) as fresh:
                        ok = await fresh.post(CHAT, json=ASK)
                    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3
                    assert time.monotonic() - started < 10
                    rest = [line async for line in lines]
                    assert rest[-2] == "data: [DONE]"  # the busy client's stream went on undisturbed
                finally:
                    for _, writer in idle:
                        writer.close()


async def test_beyond_the_connection_limit_with_every_connection_busy_a_new_one_gets_503():
    async with pipeline(http_max_connections=2) as url, httpx.AsyncClient(base_url=url, timeout=10) as a, \
            httpx.AsyncClient(base_url=url, timeout=10) as b:
        body = {**ASK, "max_tokens": 200, "stream": True}
        async with a.stream("POST", CHAT, json=body) as s1, b.stream("POST", CHAT, json=body) as s2:
            await s1.aiter_lines().__anext__()
            await s2.aiter_lines().__anext__()
            reader, writer = await asyncio.open_connection(*address(url))
            try:
                writer.write(b"GET /v1/models HTTP/1.1\r\nHost: t\r\n\r\n")
                async with asyncio.timeout(10):
                    status, headers, raw = await read_response(reader)
            finally:
                writer.close()
        assert status == 503 and headers["retry-after"] == "1"
        assert json.loads(raw)["error"]["code"] == "too_many_connections"


async def test_malformed_requests_get_a_400_in_shape_and_their_log_lines_are_throttled(caplog):
    caplog.set_level(logging.WARNING)
    async with pipeline() as url:
        for _ in range(40):
            reader, writer = await asyncio.open_connection(*address(url))
            try:
                writer.write(b"NOT HTTP AT ALL\r\n\r\n")
                async with asyncio.timeout(10):
                    status, _, raw = await read_response(reader)
            finally:
                writer.close()
            assert status == 400 and json.loads(raw)["error"]["type"] == "invalid_request_error"
    lines = [r for r in caplog.records if "invalid http request" in r.getMessage().lower()]
    assert 1 <= len(lines) <= 10, len(lines)


async def test_pipelined_requests_and_an_upgrade_are_answered_and_keep_alive_stays_under_the_guard():
    async with pipeline(http_header_timeout=1.0) as url:
        reader, writer = await asyncio.open_connection(*address(url))
        try:
            # three requests in one write: each answered, in order
            one = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
            writer.write(one * 3)
            async with asyncio.timeout(10):
                for _ in range(3):
                    status, _, _ = await read_response(reader)
                    assert status == 200
                # idle after them: the header timeout closes the connection, silently
                assert await reader.read() == b""
        finally:
            writer.close()
        # an Upgrade is not supported: answered as a plain request, then the connection closes
        reader, writer = await asyncio.open_connection(*address(url))
        try:
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
            async with asyncio.timeout(10):
                status, _, _ = await read_response(reader)
                assert status == 200
                assert await reader.read() == b""
        finally:
            writer.close()
