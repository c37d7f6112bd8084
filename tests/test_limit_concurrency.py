"""The app concurrency limit (``Limits.max_concurrent_requests``, ``--limit-concurrency``) over
real loopback sockets: HTTP/1.1 (raw sockets and httpx), HTTP/2 (the raw frame client of
``test_http2_bad_input``) and WebSockets (trio-websocket and a raw handshake) all count against
one server-wide limit; a request beyond it is not given to the app and gets 503 with
``Retry-After: 1`` (over HTTP/1.1 with ``Connection: close``; over HTTP/2 on its stream alone,
the connection goes on); a finished request frees its slot; and no way of failing — an app
exception, a client that leaves, a reset stream, a refused head or body, a refusal by the limit
itself — leaks a slot or gives one back twice.

The app counts its own calls (``Gate``): ``/block`` waits until the test releases it, so the test
knows exactly how many calls are in progress.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import make_config, parse_responses, raw_exchange, read_until_closed, run_server
from hyperframe.frame import RstStreamFrame
from procs import module_command, run_to_exit, server_process
from test_cli import assert_clean_error, write_module
from test_http2_bad_input import CANCEL, PROTOCOL_ERROR, RawH2, StreamState, h2_client
from test_websocket_limits import handshake, header_values
from trio_websocket import open_websocket_url

from trioserve import ConfigError, Limits

TIMEOUT = 15
Scope = dict[str, Any]
Message = dict[str, Any]

BLOCK = b"GET /block HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
PLAIN = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


# --------------------------------------------------------------------------------- the app


@dataclass
class Gate:
    """What the app sees: the calls (``"http /path"``, ``"websocket /path"``), how many run now
    and the most that ever ran at once, and one event per ``/block`` call waiting for release."""

    calls: list[str] = field(default_factory=list)
    running: int = 0
    peak: int = 0
    finished: int = 0
    blocked: list[trio.Event] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)

    def bump(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self.changed.wait()

    async def wait_blocked(self, n: int) -> None:
        await self.wait_for(lambda: len(self.blocked) >= n)

    def release_one(self) -> None:
        self.blocked.pop(0).set()
        self.bump()

    def release_all(self) -> None:
        while self.blocked:
            self.release_one()


def make_app(gate: Gate) -> Callable[[Scope, Any, Any], Awaitable[None]]:
    """``/block``: waits for release, then 200 "done". ``/fail``: raises before responding
    (500). ``/fail-late``: raises after the response started (reset). ``/echo``: the body's
    length. WebSocket: accepts and echoes text until the peer leaves. Anything else: 200 "ok"."""

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        gate.calls.append(f"{scope['type']} {scope['path']}")
        gate.running += 1
        gate.peak = max(gate.peak, gate.running)
        gate.bump()
        try:
            await _serve(scope, receive, send)
        finally:
            gate.running -= 1
            gate.finished += 1
            gate.bump()

    async def answer(send: Any, body: bytes) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": body})

    async def _serve(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            assert (await receive())["type"] == "websocket.connect"
            await send({"type": "websocket.accept"})
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return
                await send({"type": "websocket.send", "text": message.get("text")})
        path = scope["path"]
        if path == "/block":
            event = trio.Event()
            gate.blocked.append(event)
            gate.bump()
            try:
                await event.wait()
            finally:
                if event in gate.blocked:
                    gate.blocked.remove(event)
            await answer(send, b"done")
        elif path == "/fail":
            raise RuntimeError("the app fails (on purpose)")
        elif path == "/fail-late":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"partial", "more_body": True})
            raise RuntimeError("the app fails after starting (on purpose)")
        elif path == "/echo":
            size = 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                size += len(message.get("body", b""))
                if not message.get("more_body"):
                    break
            await answer(send, str(size).encode())
        else:
            await answer(send, b"ok")

    return app


@asynccontextmanager
async def limited(n: int | None, **limits: Any) -> AsyncIterator[tuple[int, Gate]]:
    """A server with ``max_concurrent_requests=n`` (and ``limits``) serving the gate app."""
    gate = Gate()
    config = make_config(limits={"max_concurrent_requests": n, **limits},
                         timeouts={"graceful": 2.0})
    async with run_server(make_app(gate), config, lifespan="off") as srv:
        try:
            yield srv.port, gate
        finally:
            gate.release_all()  # blocked apps must not hold the graceful shutdown


# ------------------------------------------------------------------------------ assertions


def assert_busy_h1(data: bytes, limit: int) -> None:
    """``data`` (everything the server sent until it closed) is one 503 for the limit."""
    responses = parse_responses(data)
    assert [r.status_code for r, _ in responses] == [503], data[:500]
    [(response, body)] = responses
    assert header_values(response.headers, b"retry-after") == [b"1"], response
    assert header_values(response.headers, b"connection") == [b"close"], response
    [ctype] = header_values(response.headers, b"content-type")
    assert ctype.startswith(b"text/plain"), response
    assert str(limit).encode() in body, body  # names the limit it hit


def assert_busy_h2(st: StreamState, limit: int) -> None:
    """A 503 for the limit on the stream itself: a complete response, not a reset."""
    assert (st.status, st.reset, st.ended) == (503, None, True), st
    fields = dict(st.headers or [])
    assert fields.get(b"retry-after") == b"1", st.headers
    assert b"connection" not in fields, st.headers  # connection-specific: never over HTTP/2
    assert fields.get(b"content-type", b"").startswith(b"text/plain"), st.headers
    assert str(limit).encode() in bytes(st.data), st.data


async def served_h1(port: int, request: bytes = PLAIN) -> bytes:
    """The body of a 200 for ``request``. The slot of a request that just finished is given
    back as its app call returns, a moment after its response went out: a 503 is retried for at
    most 2 s."""
    with trio.fail_after(2):
        while True:
            data = await raw_exchange(port, request)
            responses = parse_responses(data)
            if [r.status_code for r, _ in responses] != [503]:
                assert [r.status_code for r, _ in responses] == [200], data[:500]
                return responses[0][1]
            await trio.sleep(0.01)


async def served_h2(c: RawH2, next_id: list[int], path: str = "/") -> StreamState:
    """A 200 for a new stream on ``c`` (a 503 retried on a new stream, as in ``served_h1``)."""
    with trio.fail_after(2):
        while True:
            sid = next_id[0]
            next_id[0] += 2
            await c.send(c.get(sid, path))
            st = await c.response(sid)
            if st.status != 503:
                assert (st.status, st.reset) == (200, None), st
                return st
            await trio.sleep(0.01)


async def open_blocked(port: int, n: int) -> list[trio.SocketStream]:
    """``n`` HTTP/1.1 connections, each with a ``/block`` request sent (not waited for)."""
    streams = []
    for _ in range(n):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(BLOCK)
        streams.append(stream)
    return streams


async def finish_all(streams: list[trio.SocketStream]) -> list[tuple[int, bytes]]:
    """The (status, body) of the one response on each connection, read until it closes."""
    out = []
    for stream in streams:
        async with stream:
            data = await read_until_closed(stream)
        out += [(r.status_code, body) for r, body in parse_responses(data)]
    return out


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno == logging.WARNING:
            self.records.append(record)


@pytest.fixture
def warnings_logged() -> Iterator[list[logging.LogRecord]]:
    """WARNING records of the ``trioserve`` logger and its children, during the test."""
    handler = _Warnings()
    logger = logging.getLogger("trioserve")
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


# ------------------------------------------------------------------------------- HTTP/1.1


async def test_config_refuses_a_negative_limit() -> None:
    """``Limits.max_concurrent_requests`` is validated like every limit: a negative count is a
    ``ConfigError`` naming the field; ``None`` (the default) is unbounded."""
    assert Limits().max_concurrent_requests is None
    with pytest.raises(ConfigError, match="max_concurrent_requests"):
        Limits(max_concurrent_requests=-1)


async def test_http1_request_over_the_limit_gets_503(
        warnings_logged: list[logging.LogRecord]) -> None:
    """Three ``/block`` calls in progress with a limit of 3: a fourth request, on a new
    connection or on a kept-alive one, is answered 503 + ``Retry-After: 1`` + ``Connection:
    close`` and the connection closes, without calling the app; the refusals are logged at
    WARNING at most once a second. Once one call finishes the next request is served, and the
    app never had more than 3 calls at once."""
    with trio.fail_after(TIMEOUT):
        async with limited(3) as (port, gate):
            keep = await trio.open_tcp_stream("127.0.0.1", port)
            await keep.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            first = await keep.receive_some(65536)
            assert first.startswith(b"HTTP/1.1 200 ") and first.endswith(b"ok"), first

            streams = await open_blocked(port, 3)
            await gate.wait_blocked(3)
            calls = list(gate.calls)
            start = trio.current_time()
            for _ in range(4):
                assert_busy_h1(await raw_exchange(port, PLAIN), 3)
            async with keep:  # a kept-alive connection's next request: refused, then closed
                await keep.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert_busy_h1(await read_until_closed(keep), 3)
            elapsed = trio.current_time() - start
            assert gate.calls == calls  # the app never saw a refused request

            busy = [r for r in warnings_logged if r.name.startswith("trioserve")]
            assert 1 <= len(busy) <= math.floor(elapsed) + 1, [r.getMessage() for r in busy]

            gate.release_one()
            await gate.wait_for(lambda: gate.finished >= 2)  # the keep-alive "/" and one /block
            assert await served_h1(port) == b"ok"
            gate.release_all()
            assert sorted(await finish_all(streams)) == [(200, b"done")] * 3
            assert gate.peak == 3


async def test_http1_limit_with_httpx() -> None:
    """A real client: two requests held in the app with a limit of 2; httpx sees the third
    refused with 503, ``Retry-After: 1`` and ``Connection: close``; once both finish, the same
    client is served again."""
    results: list[int] = []
    with trio.fail_after(TIMEOUT):
        async with limited(2) as (port, gate):
            url = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=url) as client:

                async def blocked() -> None:
                    results.append((await client.get("/block")).status_code)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(blocked)
                    nursery.start_soon(blocked)
                    await gate.wait_blocked(2)
                    r = await client.get("/")
                    assert r.status_code == 503
                    assert r.headers["retry-after"] == "1"
                    assert r.headers["connection"] == "close"
                    assert r.headers["content-type"].startswith("text/plain")
                    assert "2" in r.text
                    gate.release_all()
                assert results == [200, 200]
                await gate.wait_for(lambda: gate.running == 0)
                with trio.fail_after(2):
                    # a bounded retry (see served_h1), not a wait for a state
                    while (r := await client.get("/")).status_code == 503:  # noqa: ASYNC110
                        await trio.sleep(0.01)
                assert (r.status_code, r.text) == (200, "ok")
            assert gate.peak == 2


async def test_no_limit_by_default() -> None:
    """Without ``max_concurrent_requests`` (``None``) twenty calls run at once, none refused."""
    with trio.fail_after(TIMEOUT):
        async with limited(None) as (port, gate):
            streams = await open_blocked(port, 20)
            await gate.wait_blocked(20)
            gate.release_all()
            assert await finish_all(streams) == [(200, b"done")] * 20


# --------------------------------------------------------------------------------- HTTP/2


async def test_http2_stream_over_the_limit_gets_503_and_the_connection_goes_on() -> None:
    """Two streams in the app with a limit of 2: a third stream on the same connection gets a
    complete 503 response (``Retry-After: 1``, no reset, no GOAWAY); so does a stream on a
    second connection. Once one call finishes, a new stream on the first connection is served,
    and the held streams end with 200."""
    with trio.fail_after(TIMEOUT):
        async with limited(2) as (port, gate):
            async with h2_client(port) as c, h2_client(port) as other:
                await c.send(c.get(1, "/block"), c.get(3, "/block"))
                await gate.wait_blocked(2)
                calls = list(gate.calls)
                await c.send(c.get(5, "/"))
                assert_busy_h2(await c.response(5), 2)
                await other.send(other.get(1, "/"))
                assert_busy_h2(await other.response(1), 2)
                assert gate.calls == calls
                assert c.goaway is None and other.goaway is None

                gate.release_one()
                held = [c.streams.setdefault(sid, StreamState()) for sid in (1, 3)]
                await c.read_until(lambda: held[0].ended or held[1].ended)
                st = await served_h2(c, [7])
                assert bytes(st.data) == b"ok"
                gate.release_all()
                for sid in (1, 3):
                    st = await c.response(sid)
                    assert (st.status, bytes(st.data), st.reset) == (200, b"done", None)
                assert c.goaway is None
            assert gate.peak == 2


# ------------------------------------------------------------------ across protocols, WebSocket


async def test_one_limit_across_http1_http2_and_websockets() -> None:
    """The limit is server-wide: an HTTP/1.1 call, an HTTP/2 stream and an open WebSocket fill a
    limit of 3; then an HTTP/1.1 request, an HTTP/2 stream and a WebSocket handshake are all
    refused with 503 (the handshake without ``Sec-WebSocket-Accept``), the app never called.
    Closing the WebSocket gives its slot back."""
    with trio.fail_after(TIMEOUT):
        async with limited(3) as (port, gate):
            [h1] = await open_blocked(port, 1)
            async with h2_client(port) as c:
                await c.send(c.get(1, "/block"))
                await gate.wait_blocked(2)
                async with open_websocket_url(f"ws://127.0.0.1:{port}/ws") as ws:
                    await ws.send_message("hello")
                    assert await ws.get_message() == "hello"
                    assert gate.running == 3
                    calls = list(gate.calls)

                    assert_busy_h1(await raw_exchange(port, PLAIN), 3)
                    await c.send(c.get(3, "/"))
                    assert_busy_h2(await c.response(3), 3)
                    data = await raw_exchange(port, handshake())
                    assert_busy_h1(data, 3)
                    [(response, _)] = parse_responses(data)
                    assert header_values(response.headers, b"sec-websocket-accept") == []
                    assert gate.calls == calls

                    await ws.send_message("still open")
                    assert await ws.get_message() == "still open"
                await gate.wait_for(lambda: gate.running == 2)
                assert await served_h1(port) == b"ok"
                gate.release_all()
                st = await c.response(1)
                assert (st.status, bytes(st.data)) == (200, b"done")
            assert await finish_all([h1]) == [(200, b"done")]
            assert gate.peak == 3


# --------------------------------------------------------------------------- no leaked slots


async def _failing_requests(port: int, gate: Gate) -> None:
    """Every way a request can end badly, at least three times the limit of 2 in all, each
    finished (its app call over) before the next."""
    # app exceptions: before the response (500) and after it started (reset)
    for _ in range(2):
        assert [r.status_code for r, _ in parse_responses(
            await raw_exchange(port, b"GET /fail HTTP/1.1\r\nHost: x\r\n\r\n"))] == [500]
    await raw_exchange(port, b"GET /fail-late HTTP/1.1\r\nHost: x\r\n\r\n")
    # heads refused before the app: 400, 414, 431, 505
    for raw in (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
                b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X: 1\r\n" * 101 + b"\r\n",
                b"GET / HTTP/2.0\r\nHost: x\r\n\r\n"):
        status = parse_responses(await raw_exchange(port, raw))[0][0].status_code
        assert status in (400, 414, 431, 505), status
    # bodies refused while the app reads them: too large (413), cut short (400)
    data = await raw_exchange(port, b"POST /echo HTTP/1.1\r\nHost: x\r\n"
                                    b"Content-Length: 5000\r\n\r\n" + b"z" * 5000)
    assert parse_responses(data)[0][0].status_code == 413
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
                              b"0123456789")
        await stream.send_eof()
        assert parse_responses(await read_until_closed(stream))[0][0].status_code == 400
    # a client that leaves while its call waits in the app, or in the middle of its body
    for request in (BLOCK, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab"):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(request)
        await gate.wait_for(lambda: gate.running == 1)
        await stream.aclose()
        gate.release_all()  # the app's answer then finds the client gone
        await gate.wait_for(lambda: gate.running == 0)
    # a WebSocket handshake refused (400), and a WebSocket whose peer vanishes without a close
    data = await raw_exchange(port, b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                                    b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n")
    assert parse_responses(data)[0][0].status_code == 400
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(handshake())
    assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 101 ")
    await stream.aclose()
    await gate.wait_for(lambda: gate.running == 0)
    # HTTP/2: an app exception (500 on the stream), a malformed request (reset, no app), a
    # stream the client resets while its app waits
    async with h2_client(port) as c:
        await c.send(c.get(1, "/fail"))
        assert (await c.response(1)).status == 500
        await c.send(c.get(3, extra=[("connection", "close")]))
        assert await c.expect_reset(3) == PROTOCOL_ERROR
        await c.send(c.get(5, "/block"))
        await gate.wait_for(lambda: gate.running == 1)
        await c.send(RstStreamFrame(5, error_code=CANCEL))
        # the app is not cancelled, its next read or write fails (docs: "Resets and GOAWAY")
        gate.release_all()
        await gate.wait_for(lambda: gate.running == 0)
    # refusals by the limit itself, over both protocols, while two calls are held
    streams = await open_blocked(port, 2)
    await gate.wait_blocked(2)
    for _ in range(3):
        assert_busy_h1(await raw_exchange(port, PLAIN), 2)
    async with h2_client(port) as c:
        await c.send(c.get(1), c.get(3))
        for sid in (1, 3):
            assert_busy_h2(await c.response(sid), 2)
    gate.release_all()
    assert await finish_all(streams) == [(200, b"done")] * 2
    await gate.wait_for(lambda: gate.running == 0)


async def _try_fill(port: int, gate: Gate, n: int) -> tuple[list[trio.SocketStream], int]:
    """Send ``n`` ``/block`` requests; once each is either held in the app or refused, the
    connections and how many were refused."""
    streams = await open_blocked(port, n)
    refused: list[trio.SocketStream] = []

    async def watch(stream: trio.SocketStream) -> None:
        if await stream.receive_some(65536):  # only a refusal answers at once
            refused.append(stream)
            gate.bump()

    async with trio.open_nursery() as nursery:
        for stream in streams:
            nursery.start_soon(watch, stream)
        await gate.wait_for(lambda: len(gate.blocked) + len(refused) >= n)
        nursery.cancel_scope.cancel()
    return streams, len(refused)


async def _fill_exactly(port: int, gate: Gate, n: int) -> list[trio.SocketStream]:
    """``n`` ``/block`` calls held in the app at once. A slot given back a moment after its app
    call returned may make an attempt see 503: then everything is released and the attempt
    repeated, for at most 3 s (a leaked slot fails every attempt)."""
    with trio.fail_after(3):
        while True:
            streams, refused = await _try_fill(port, gate, n)
            if not refused:
                return streams
            gate.release_all()
            await finish_all(streams)
            await gate.wait_for(lambda: gate.running == 0)


async def test_failing_requests_leak_no_slot() -> None:
    """After well over three times the limit of failing requests of every kind (app exceptions,
    clients leaving mid-request, reset HTTP/2 streams, heads and bodies refused with 4xx, bad
    WebSocket handshakes, refusals by the limit itself), the limit of 2 is exactly what it was:
    two calls can run at once, and a third request is refused."""
    with trio.fail_after(30):
        async with limited(2, max_request_body_size=1000) as (port, gate):
            await _failing_requests(port, gate)
            await _failing_requests(port, gate)  # a leak of one slot per round shows by now
            streams = await _fill_exactly(port, gate, 2)
            assert_busy_h1(await raw_exchange(port, PLAIN), 2)  # no slot given back twice
            async with h2_client(port) as c:
                await c.send(c.get(1))
                assert_busy_h2(await c.response(1), 2)
            gate.release_all()
            assert await finish_all(streams) == [(200, b"done")] * 2
            assert gate.peak == 2


# ------------------------------------------------------------------------ the command line


GATE_APP = """
    async def app(scope, receive, send):
        # starts its response at once, then finishes once the client sent its body
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"started;", "more_body": True})
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.body", "body": b"read %d" % size})
"""
HELD = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\n"


async def _hold(port: int, n: int) -> list[tuple[trio.SocketStream, bytes]]:
    """``n`` requests whose app calls have started (the first body chunk arrived) and wait for
    their one-byte body; each connection with what it received so far."""
    held = []
    for _ in range(n):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(HELD)
        got = b""
        while b"started;" not in got:
            chunk = await stream.receive_some(65536)
            assert chunk, got
            got += chunk
        held.append((stream, got))
    return held


async def _release(held: list[tuple[trio.SocketStream, bytes]]) -> None:
    """Send each held request its body: each is answered in full."""
    for stream, got in held:
        async with stream:
            await stream.send_all(b"x")
            data = got + await read_until_closed(stream)
        assert [(r.status_code, body) for r, body in parse_responses(data, [b"POST"])] == [
            (200, b"started;read 1")]


@pytest.mark.slow
async def test_cli_limit_concurrency(tmp_path: Path) -> None:
    """``--limit-concurrency 2``: with two calls in progress, a third request gets 503 with
    ``Retry-After: 1``, and the server logs why; once the two finish, requests are served."""
    write_module(tmp_path, "gateapp", GATE_APP)
    cmd = module_command("gateapp:app", "--port", "0", "--limit-concurrency", "2",
                         "--no-access-log", "--lifespan", "off")
    with server_process(cmd, cwd=tmp_path) as sp:
        port = sp.wait_port()
        with trio.fail_after(TIMEOUT):
            streams = await _hold(port, 2)
            assert_busy_h1(await raw_exchange(port, PLAIN), 2)
            await trio.to_thread.run_sync(sp.wait_for_line, r"503|limit-concurrency")
            await _release(streams)
            with trio.fail_after(2):
                # a bounded retry (see served_h1)
                while b" 503 " in (data := await raw_exchange(port, PLAIN))[:20]:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            assert [(r.status_code, body) for r, body in parse_responses(data)] == [
                (200, b"started;read 0")]


@pytest.mark.slow
async def test_cli_limit_concurrency_0_is_unbounded(tmp_path: Path) -> None:
    """``--limit-concurrency 0``: no limit, twelve calls run at once."""
    write_module(tmp_path, "gateapp", GATE_APP)
    cmd = module_command("gateapp:app", "--port", "0", "--limit-concurrency", "0",
                         "--no-access-log", "--lifespan", "off")
    with server_process(cmd, cwd=tmp_path) as sp:
        port = sp.wait_port()
        with trio.fail_after(TIMEOUT):
            await _release(await _hold(port, 12))


@pytest.mark.slow
@pytest.mark.parametrize("value", ["-1", "lots", "1.5"])
def test_cli_bad_limit_concurrency_exits_2(value: str) -> None:
    """A negative or non-integer ``--limit-concurrency`` is a usage error: exit 2, one
    ``trioserve: error:`` line naming the option, no traceback."""
    res = run_to_exit(module_command("trioserve.demo:app", "--limit-concurrency", value))
    assert res.returncode == 2, res.stderr
    assert_clean_error(res.stderr, "--limit-concurrency")
