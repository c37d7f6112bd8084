"""WebSockets facing hostile or broken peers, over real loopback sockets: invalid opening
handshakes (400 with the reason, the app never called), protocol violations after the handshake
(1002, 1007, 1009; a 2 GiB declared frame and a permessage-deflate bomb), the open-WebSocket
limit (503 with Retry-After), keep-alive pings, the idle and close timeouts, a client that stops
reading (the minimum response data rate), an app that stops reading (backpressure), graceful
shutdown (1001 to every WebSocket), a WSGI app asked for a WebSocket, and an HTTP/2 extended
CONNECT for another protocol (501).

Attack-style clients are raw sockets: the handshake is written by hand and frames are built with
:mod:`struct` (masked unless said otherwise); wsproto's client-side frame layer only parses what
the server sends back. Well-behaved clients are trio-websocket. Every test is bounded by
``trio.fail_after`` and every server timeout is small, so the module runs in seconds. Nothing the
clients do may make the server log at ERROR (checked for every test).
"""

from __future__ import annotations

import base64
import logging
import os
import socket
import struct
import tracemalloc
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
import trio
from conftest import make_config, parse_responses, raw_exchange, run_server
from trio_websocket import ConnectionClosed, open_websocket_url
from trioserve.bridges.wsgi import WSGIBridge
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection, Event, Ping

from trioserve import Config, MinDataRate, WebSocketConfig

TIMEOUT = 15  # the generous bound on every test; each behaviour has its own, tighter one
KiB = 1024
MiB = 1024 * KiB

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

Scope = dict[str, Any]
Message = dict[str, Any]


# ------------------------------------------------------------------------------ no ERROR logs


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def error_logs() -> Iterator[list[logging.LogRecord]]:
    """Client garbage, slow or dead peers and shutdowns are not server errors: nothing may be
    logged at ERROR (a traceback there would page an operator for every hostile client). The
    handler sits on the ``trioserve`` logger itself, so it sees records even when another test
    in the session turned propagation off. A test that checks the records itself empties the
    list."""
    handler = _Collect()
    logger = logging.getLogger("trioserve")
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
    assert [f"{r.name}: {r.getMessage()}" for r in handler.records] == []


def take(records: list[logging.LogRecord]) -> list[str]:
    """The ERROR records so far (``name: message``), taken off the fixture's list."""
    out = [f"{r.name}: {r.getMessage()}" for r in records]
    records.clear()
    return out


# ------------------------------------------------------------------------------ apps


@dataclass
class EchoApp:
    """ASGI: echoes every WebSocket message (text as text, bytes as bytes) and records the
    ``websocket.disconnect`` codes; plain HTTP gets 200 ``ok``. ``calls`` lists the scope types
    the app was called for."""

    calls: list[str] = field(default_factory=list)
    disconnects: list[int] = field(default_factory=list)
    _changed: trio.Event = field(default_factory=trio.Event)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        self.calls.append(scope["type"])
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/plain"),
                                    (b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        assert scope["type"] == "websocket"
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.disconnected(message["code"])
                return
            reply = ({"type": "websocket.send", "text": message["text"]}
                     if message.get("text") is not None
                     else {"type": "websocket.send", "bytes": message["bytes"]})
            try:
                await send(reply)
            except OSError:
                pass  # closing meanwhile: the next receive() reports the disconnect

    def disconnected(self, code: int) -> None:
        self.disconnects.append(code)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_disconnects(self, n: int) -> list[int]:
        while len(self.disconnects) < n:
            await self._changed.wait()
        return self.disconnects


def config(*, limits: dict[str, Any] | None = None, graceful: float = 10.0,
           **websocket: Any) -> Config:
    """A server config with small WebSocket timeouts: no pings and a 0.3 s close timeout unless
    said otherwise."""
    websocket.setdefault("ping_interval", None)
    websocket.setdefault("close_timeout", 0.3)
    return make_config(websocket=WebSocketConfig(**websocket), limits=limits,
                       timeouts={"graceful": graceful})


# ------------------------------------------------------------------------------ raw clients


def ws_key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


def request(method: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    lines = [f"{method} /chat HTTP/1.1", "Host: 127.0.0.1", *(f"{n}: {v}" for n, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def handshake(*, key: str | None = None, extensions: str | None = None) -> bytes:
    headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
               ("Sec-WebSocket-Key", key or ws_key()), ("Sec-WebSocket-Version", "13")]
    if extensions is not None:
        headers.append(("Sec-WebSocket-Extensions", extensions))
    return request("GET", headers)


def masked(data: bytes, key: bytes) -> bytes:
    if not data or key == b"\0\0\0\0":
        return data
    n = len(data)
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv1: bool = False,
          mask: bool = True, key: bytes | None = None, length: int | None = None) -> bytes:
    """One frame as a client sends it (masked with a random key unless ``mask`` is false).
    ``length`` declares a payload length other than ``len(payload)``."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    m = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, m | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, m | 126, n)
    else:
        head = struct.pack("!BBQ", b0, m | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4) if key is None else key
    return head + key + masked(payload, key)


def close_frame(code: int, reason: bytes = b"") -> bytes:
    return frame(OP_CLOSE, struct.pack("!H", code) + reason)


class RawWS:
    """A hand-written WebSocket client on a plain socket. What the server sends is parsed by
    wsproto's client-side frame layer (it answers nothing by itself)."""

    def __init__(self, stream: trio.SocketStream, head: bytes, leftover: bytes) -> None:
        self.stream = stream
        self.head = head
        self.conn = Connection(ConnectionType.CLIENT)
        self.events: list[Event] = []
        self.eof = False
        if leftover:
            self._feed(leftover)

    @classmethod
    async def connect(cls, port: int, *, extensions: str | None = None,
                      rcvbuf: int | None = None, sndbuf: int | None = None) -> RawWS:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect(), so the advertised window is small too
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if sndbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        await sock.connect(("127.0.0.1", port))
        stream = trio.SocketStream(sock)
        await stream.send_all(handshake(extensions=extensions))
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = await stream.receive_some(65536)
            assert chunk, f"closed during the handshake: {buf!r}"
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        return cls(stream, head, rest)

    def _feed(self, data: bytes | None) -> None:
        self.conn.receive_data(data)
        self.events.extend(self.conn.events())

    async def _receive(self) -> bytes:
        try:
            return await self.stream.receive_some(65536)
        except trio.BrokenResourceError:  # a reset ends the connection as well
            return b""

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def next_event(self) -> Event:
        """The next event from the server (a server-side close without a close frame is
        wsproto's ``CloseConnection(1006)``)."""
        while not self.events:
            assert not self.eof, "the server closed the connection"
            data = await self._receive()
            if not data:
                self.eof = True
                self._feed(None)
            else:
                self._feed(data)
        return self.events.pop(0)

    async def read_until_closed(self) -> list[Event]:
        """Every event until the server closes TCP (without wsproto's made-up 1006)."""
        while not self.eof:
            data = await self._receive()
            if not data:
                self.eof = True
                break
            self._feed(data)
        events, self.events = self.events, []
        return events


def close_codes(events: list[Event]) -> list[int]:
    return [int(e.code) for e in events if isinstance(e, CloseConnection)]


async def assert_still_serving(port: int) -> None:
    """A new WebSocket is accepted and echoes, and a plain HTTP request is answered."""
    async with open_websocket_url(f"ws://127.0.0.1:{port}/again") as ws:
        await ws.send_message("still here")
        assert await ws.get_message() == "still here"
        await ws.send_message(b"\x00\x01")
        assert await ws.get_message() == b"\x00\x01"
    data = await raw_exchange(port, b"GET /plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    [(response, body)] = parse_responses(data)
    assert (response.status_code, body) == (200, b"ok")


def header_values(headers: Any, name: bytes) -> list[bytes]:
    return [bytes(v) for n, v in headers if bytes(n) == name]


# ------------------------------------------------------------------------------ bad handshakes


KEY_REASON = "invalid Sec-WebSocket-Key (must be 16 bytes, base64-encoded)"

BAD_HANDSHAKES = {
    "missing-key": (
        request("GET", [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                        ("Sec-WebSocket-Version", "13")]),
        "missing Sec-WebSocket-Key"),
    "key-not-base64": (
        request("GET", [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                        ("Sec-WebSocket-Key", "not a key!!not a key!!=="),
                        ("Sec-WebSocket-Version", "13")]),
        KEY_REASON),
    "key-15-bytes": (
        request("GET", [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                        ("Sec-WebSocket-Key", base64.b64encode(b"x" * 15).decode()),
                        ("Sec-WebSocket-Version", "13")]),
        KEY_REASON),
    "two-keys": (
        request("GET", [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                        ("Sec-WebSocket-Key", ws_key()), ("Sec-WebSocket-Key", ws_key()),
                        ("Sec-WebSocket-Version", "13")]),
        "more than one Sec-WebSocket-Key"),
    "version-8": (
        request("GET", [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                        ("Sec-WebSocket-Key", ws_key()), ("Sec-WebSocket-Version", "8")]),
        "unsupported Sec-WebSocket-Version (8): this server speaks version 13"),
    "post": (
        request("POST", [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                         ("Sec-WebSocket-Key", ws_key()), ("Sec-WebSocket-Version", "13"),
                         ("Content-Length", "5")], b"hello"),
        "a WebSocket handshake must be a GET request, not POST"),
}


@pytest.mark.parametrize("case", BAD_HANDSHAKES)
async def test_bad_handshake_is_400_with_the_reason(case: str) -> None:
    raw, reason = BAD_HANDSHAKES[case]
    app = EchoApp()
    with trio.fail_after(TIMEOUT):
        async with run_server(app, config(), lifespan="off") as srv:
            # raw_exchange returns only once the server has closed the connection
            data = await raw_exchange(srv.port, raw, timeout=5)
            [(response, body)] = parse_responses(data, [b"POST" if case == "post" else b"GET"])
            assert response.status_code == 400
            assert body == (reason + "\n").encode()
            assert header_values(response.headers, b"connection") == [b"close"]
            assert header_values(response.headers, b"sec-websocket-accept") == []
            assert header_values(response.headers, b"upgrade") == []
            assert header_values(response.headers, b"sec-websocket-version") == (
                [b"13"] if case == "version-8" else [])
            assert app.calls == []  # refused before the app
            await assert_still_serving(srv.port)
            assert app.calls == ["websocket", "http"]


# ------------------------------------------------------------------------------ violations


VIOLATIONS = {
    "unmasked-frame": (frame(OP_TEXT, b"hello", mask=False), 1002),
    "invalid-utf8-text": (frame(OP_TEXT, b"caf\xc3 \xff\xfe"), 1007),
    "invalid-utf8-fragmented": (frame(OP_TEXT, b"ok \xe2\x82", fin=False)
                                + frame(OP_CONT, b"\xff"), 1007),
    "oversize-message": (frame(OP_BINARY, os.urandom(2000)), 1009),
    "oversize-text": (frame(OP_TEXT, b"a" * 2000), 1009),
    "oversize-fragments": (frame(OP_BINARY, os.urandom(700), fin=False)
                           + frame(OP_CONT, os.urandom(700), fin=False)
                           + frame(OP_CONT, os.urandom(600)), 1009),
}


@pytest.mark.parametrize("case", VIOLATIONS)
async def test_protocol_violation_closes_with_its_code(case: str) -> None:
    data, code = VIOLATIONS[case]
    app = EchoApp()
    with trio.fail_after(TIMEOUT):
        async with run_server(app, config(max_message_size=1024), lifespan="off") as srv:
            ws = await RawWS.connect(srv.port)
            # the connection still works before the violation
            await ws.send(frame(OP_TEXT, b"first"))
            assert (await ws.next_event()).data == "first"  # type: ignore[attr-defined]
            t0 = trio.current_time()
            await ws.send(data)
            with trio.fail_after(3):
                events = await ws.read_until_closed()
            assert trio.current_time() - t0 < 2
            # one close frame with the code, nothing else, then TCP closed (no close reply
            # awaited after failing the connection, RFC 6455 §7.1.7)
            assert close_codes(events) == [code]
            assert [type(e) for e in events] == [CloseConnection]
            assert await app.wait_disconnects(1) == [code]
            await assert_still_serving(srv.port)


# a binary frame's header declaring a 2 GiB payload (8-byte length), mask key included
HEADER_2GIB = frame(OP_BINARY, b"", length=2 * 1024 * MiB)


class PeakMemory:
    """The peak of Python allocations (tracemalloc) inside the ``with`` block, in ``peak``."""

    def __enter__(self) -> PeakMemory:
        self.started = not tracemalloc.is_tracing()
        if self.started:
            tracemalloc.start()
        tracemalloc.reset_peak()
        self.base = tracemalloc.get_traced_memory()[0]
        self.peak = 0
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = tracemalloc.get_traced_memory()[1] - self.base
        if self.started:
            tracemalloc.stop()


async def test_declared_2gib_frame_is_1009_promptly() -> None:
    app = EchoApp()
    with trio.fail_after(TIMEOUT):
        async with run_server(app, config(max_message_size=1024), lifespan="off") as srv:
            ws = await RawWS.connect(srv.port)
            with PeakMemory() as memory:
                # the header (2 GiB) and only 16 payload bytes
                await ws.send(HEADER_2GIB + os.urandom(16))
                with trio.fail_after(2):
                    events = await ws.read_until_closed()
            assert close_codes(events) == [1009]
            assert memory.peak < 16 * MiB
            assert await app.wait_disconnects(1) == [1009]
            await assert_still_serving(srv.port)


async def test_declared_2gib_frame_with_more_than_the_limit_sent_is_1009() -> None:
    """A 2 GiB declared frame whose bytes keep coming: 1009, having buffered nothing."""
    app = EchoApp()
    with trio.fail_after(TIMEOUT):
        async with run_server(app, config(max_message_size=1024), lifespan="off") as srv:
            ws = await RawWS.connect(srv.port)
            await ws.send(HEADER_2GIB + b"\0" * 1100)
            with trio.fail_after(3):
                events = await ws.read_until_closed()
            assert close_codes(events) == [1009]
            assert await app.wait_disconnects(1) == [1009]
            await assert_still_serving(srv.port)


def deflate_bomb(size: int) -> bytes:
    """A permessage-deflate message payload (RFC 7692 §7.2.1: raw DEFLATE, the final empty
    block's 00 00 ff ff removed) that inflates to ``size`` zero bytes."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(MiB)
    out = [comp.compress(chunk) for _ in range(size // MiB)]
    out.append(comp.flush(zlib.Z_SYNC_FLUSH))
    data = b"".join(out)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


async def test_permessage_deflate_bomb_is_1009_quickly() -> None:
    bomb = deflate_bomb(100 * MiB)
    assert len(bomb) < 200 * KiB  # ~1000:1
    app = EchoApp()
    with trio.fail_after(TIMEOUT):
        async with run_server(app, config(max_message_size=MiB), lifespan="off") as srv:
            ws = await RawWS.connect(srv.port, extensions="permessage-deflate")
            assert b"\r\nsec-websocket-extensions: permessage-deflate" in ws.head.lower()
            data = frame(OP_BINARY, bomb, rsv1=True)
            with PeakMemory() as memory:
                t0 = trio.current_time()
                await ws.send(data)
                with trio.fail_after(3):
                    events = await ws.read_until_closed()
                elapsed = trio.current_time() - t0
            assert close_codes(events) == [1009]
            assert elapsed < 2
            assert memory.peak < 16 * MiB, f"{memory.peak / MiB:.1f} MiB allocated inflating"
            assert await app.wait_disconnects(1) == [1009]
            await assert_still_serving(srv.port)


async def test_permessage_deflate_bomb_in_fragments_is_1009() -> None:
    """The bound is on the message, not the frame: many small compressed fragments, each under
    the limit once inflated, add up to too much."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [comp.compress(bytes(256 * KiB)) + comp.flush(zlib.Z_SYNC_FLUSH) for _ in range(8)]
    parts[-1] = parts[-1][:-4]
    app = EchoApp()
    with trio.fail_after(TIMEOUT):
        async with run_server(app, config(max_message_size=MiB), lifespan="off") as srv:
            ws = await RawWS.connect(srv.port, extensions="permessage-deflate")
            data = frame(OP_BINARY, parts[0], rsv1=True, fin=False)
            data += b"".join(frame(OP_CONT, p, fin=False) for p in parts[1:-1])
            data += frame(OP_CONT, parts[-1])
            await ws.send(data)
            with trio.fail_after(3):
                events = await ws.read_until_closed()
            assert close_codes(events) == [1009]
            assert await app.wait_disconnects(1) == [1009]
            await assert_still_serving(srv.port)


# ------------------------------------------------------------------------------ the limit


async def test_max_concurrent_upgraded_connections_is_503_with_retry_after() -> None:
    app = EchoApp()
    cfg = config(limits={"max_concurrent_upgraded_connections": 2})
    with trio.fail_after(TIMEOUT):
        async with run_server(app, cfg, lifespan="off") as srv:
            url = f"ws://127.0.0.1:{srv.port}/"
            async with open_websocket_url(url) as ws1:
                async with open_websocket_url(url) as ws2:
                    for ws in (ws1, ws2):
                        await ws.send_message("open")
                        assert await ws.get_message() == "open"
                    data = await raw_exchange(srv.port, handshake(), timeout=5)
                    [(response, body)] = parse_responses(data)
                    assert response.status_code == 503
                    assert header_values(response.headers, b"retry-after") == [b"5"]
                    assert header_values(response.headers, b"connection") == [b"close"]
                    assert header_values(response.headers, b"sec-websocket-accept") == []
                    assert body == b"too many WebSocket connections; retry later\n"
                    assert app.calls == ["websocket", "websocket"]
                    # the two open WebSockets are unaffected
                    await ws1.send_message("still")
                    assert await ws1.get_message() == "still"
                assert await app.wait_disconnects(1) == [1000]
                # the slot is given back once the closed WebSocket's request is over
                with trio.fail_after(3):
                    while True:
                        try:
                            ws3 = await RawWS.connect(srv.port)
                            break
                        except AssertionError:
                            await trio.sleep(0.02)
                await ws3.send(frame(OP_TEXT, b"third"))
                assert (await ws3.next_event()).data == "third"  # type: ignore[attr-defined]
                await ws3.send(close_frame(1000))
                assert close_codes(await ws3.read_until_closed()) == [1000]


# ------------------------------------------------------------------------------ keep-alive


async def test_peer_that_never_answers_pings_is_dropped() -> None:
    app = EchoApp()
    with trio.fail_after(TIMEOUT):
        async with run_server(app, config(ping_interval=0.2, ping_timeout=0.3),
                              lifespan="off") as srv:
            ws = await RawWS.connect(srv.port)
            t0 = trio.current_time()
            with trio.fail_after(5):
                events = await ws.read_until_closed()  # reads, never answers
            elapsed = trio.current_time() - t0
            assert 0.4 < elapsed < 3
            assert [type(e) for e in events] == [Ping]  # dropped: no close frame for the dead
            assert await app.wait_disconnects(1) == [1006]
            await assert_still_serving(srv.port)


async def test_peer_answering_pings_stays_connected() -> None:
    app = EchoApp()
    with trio.fail_after(TIMEOUT):
        async with run_server(app, config(ping_interval=0.2, ping_timeout=0.3),
                              lifespan="off") as srv:
            async with open_websocket_url(f"ws://127.0.0.1:{srv.port}/") as ws:
                await trio.sleep(1.5)  # 7 ping intervals; trio-websocket answers by itself
                await ws.send_message("alive")
                assert await ws.get_message() == "alive"
                assert app.disconnects == []
            assert await app.wait_disconnects(1) == [1000]


async def test_raw_peer_answering_pings_stays_connected() -> None:
    app = EchoApp()
    with trio.fail_after(TIMEOUT):
        async with run_server(app, config(ping_interval=0.2, ping_timeout=0.3),
                              lifespan="off") as srv:
            ws = await RawWS.connect(srv.port)
            pings = 0
            with trio.move_on_after(1.5):
                while True:
                    event = await ws.next_event()
                    assert isinstance(event, Ping), event
                    pings += 1
                    await ws.send(frame(OP_PONG, bytes(event.payload)))
            assert pings >= 4
            await ws.send(frame(OP_TEXT, b"alive"))
            event = await ws.next_event()
            while isinstance(event, Ping):
                event = await ws.next_event()
            assert event.data == "alive"  # type: ignore[attr-defined]
            assert app.disconnects == []
            await ws.send(close_frame(1000))
            assert close_codes(await ws.read_until_closed()) == [1000]
            assert await app.wait_disconnects(1) == [1000]


async def test_peer_answering_pings_survives_an_app_that_reads_slowly() -> None:
    go = trio.Event()
    to_test, from_app = trio.open_memory_channel[Message](10)

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await go.wait()
        async with to_test:  # the test sees the end of the channel once the app returns
            while True:
                message = await receive()
                await to_test.send(message)
                if message["type"] == "websocket.disconnect":
                    return

    with trio.fail_after(TIMEOUT):
        async with run_server(app, config(ping_interval=0.2, ping_timeout=0.3),
                              lifespan="off") as srv:
            async with open_websocket_url(f"ws://127.0.0.1:{srv.port}/") as ws:
                for i in range(3):
                    await ws.send_message(f"m{i}")
                await trio.sleep(1.5)  # the app is busy; the client answers every ping
                go.set()
                with trio.fail_after(3):
                    received = [await from_app.receive() for _ in range(3)]
                assert received == [{"type": "websocket.receive", "text": f"m{i}"}
                                    for i in range(3)]
                assert ws.closed is None
            with trio.fail_after(3):
                assert await from_app.receive() == {"type": "websocket.disconnect",
                                                    "code": 1000, "reason": ""}


# ------------------------------------------------------------------------------ idle, close


async def test_idle_peer_gets_1001_and_its_close_reply_ends_the_connection() -> None:
    app = EchoApp()
    # a long close timeout: the connection must end because of the reply, not the timeout
    with trio.fail_after(TIMEOUT):
        async with run_server(app, config(idle_timeout=0.3, close_timeout=5),
                              lifespan="off") as srv:
            ws = await RawWS.connect(srv.port)
            t0 = trio.current_time()
            event = await ws.next_event()
            assert isinstance(event, CloseConnection)
            assert (event.code, event.reason) == (1001, "idle timeout")
            assert 0.25 < trio.current_time() - t0 < 3
            # the server waits for the reply (up to close_timeout) ...
            with trio.move_on_after(0.3):
                await ws.read_until_closed()
                pytest.fail("the server dropped the connection without waiting for the reply")
            # ... and ends the connection as soon as it comes
            t1 = trio.current_time()
            await ws.send(close_frame(1001))
            assert await ws.read_until_closed() == []
            assert trio.current_time() - t1 < 1
            assert await app.wait_disconnects(1) == [1001]
            await assert_still_serving(srv.port)


async def test_idle_peer_that_never_replies_is_dropped_after_close_timeout() -> None:
    app = EchoApp()
    with trio.fail_after(TIMEOUT):
        async with run_server(app, config(idle_timeout=0.3, close_timeout=0.3),
                              lifespan="off") as srv:
            ws = await RawWS.connect(srv.port)
            t0 = trio.current_time()
            with trio.fail_after(5):
                events = await ws.read_until_closed()
            assert close_codes(events) == [1001]
            # idle_timeout, then close_timeout
            assert 0.55 < trio.current_time() - t0 < 3
            assert await app.wait_disconnects(1) == [1006]
            await assert_still_serving(srv.port)


async def test_idle_timeout_is_reset_by_traffic() -> None:
    app = EchoApp()
    with trio.fail_after(TIMEOUT):
        async with run_server(app, config(idle_timeout=0.4), lifespan="off") as srv:
            ws = await RawWS.connect(srv.port)
            for i in range(6):  # 1.2 s in all, never 0.4 s without a frame
                await trio.sleep(0.2)
                await ws.send(frame(OP_TEXT, f"m{i}".encode()))
                assert (await ws.next_event()).data == f"m{i}"  # type: ignore[attr-defined]
            event = await ws.next_event()  # now silent: the idle close comes
            assert isinstance(event, CloseConnection) and event.code == 1001


async def test_app_close_without_reply_is_dropped_after_close_timeout() -> None:
    done = trio.Event()
    seen: list[Message] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4000, "reason": "bye"})
        seen.append(await receive())
        done.set()

    with trio.fail_after(TIMEOUT):
        async with run_server(app, config(close_timeout=0.5), lifespan="off") as srv:
            ws = await RawWS.connect(srv.port)
            event = await ws.next_event()
            assert isinstance(event, CloseConnection)
            assert (event.code, event.reason) == (4000, "bye")
            t0 = trio.current_time()
            with trio.fail_after(5):
                assert await ws.read_until_closed() == []  # never answered
            assert 0.3 < trio.current_time() - t0 < 3
            await done.wait()
            assert [(m["type"], m["code"]) for m in seen] == [("websocket.disconnect", 1006)]


# ------------------------------------------------------------------------------ slow peers


async def test_client_that_never_reads_makes_send_raise() -> None:
    failures: list[BaseException] = []
    sent = [0]
    done = trio.Event()

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        await receive()
        await send({"type": "websocket.accept"})
        chunk = os.urandom(KiB)
        try:
            while True:
                await send({"type": "websocket.send", "bytes": chunk})
                sent[0] += 1
        except Exception as exc:
            failures.append(exc)
        finally:
            done.set()

    cfg = config(limits={"min_response_data_rate": MinDataRate(bytes_per_second=1000,
                                                                grace_period=0.5)})
    with trio.fail_after(TIMEOUT):
        async with run_server(app, cfg, lifespan="off") as srv:
            ws = await RawWS.connect(srv.port, rcvbuf=4096)  # and never reads
            with trio.fail_after(10):
                await done.wait()
            assert sent[0] > 0
            [exc] = failures
            assert isinstance(exc, OSError), repr(exc)
            # the connection is then closed: what was queued drains, then EOF
            with trio.fail_after(5):
                events = await ws.read_until_closed()
            assert ws.eof
            assert len(events) > 0
            await ws.stream.aclose()


async def test_client_that_never_reads_is_not_an_application_error(
        error_logs: list[logging.LogRecord]) -> None:
    done = trio.Event()

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        chunk = os.urandom(KiB)
        try:
            while True:  # an ordinary app: what send raises propagates
                await send({"type": "websocket.send", "bytes": chunk})
        finally:
            done.set()

    cfg = config(limits={"min_response_data_rate": MinDataRate(bytes_per_second=1000,
                                                                grace_period=0.5)})
    with trio.fail_after(TIMEOUT):
        async with run_server(app, cfg, lifespan="off") as srv:
            ws = await RawWS.connect(srv.port, rcvbuf=4096)
            with trio.fail_after(10):
                await done.wait()
            with trio.fail_after(5):
                await ws.read_until_closed()
    assert take(error_logs) == []


def _message(i: int) -> bytes:
    return struct.pack("!I", i) * (4 * KiB)  # 16 KiB, its index repeated


def _tcp_rmem_max() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        return 6 * MiB


async def test_app_that_does_not_read_pushes_back_on_the_client() -> None:
    """The server reads ahead at most a message or so: with the app not reading, the client's
    sends block once the socket buffers are full; once the app reads, every message arrives
    whole and in order."""
    go = trio.Event()
    received: list[bytes] = []
    codes: list[int] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await go.wait()
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                codes.append(message["code"])
                return
            received.append(message["bytes"])

    # what the kernel may buffer (the server's receive buffer at its largest, the client's
    # small send buffer) plus slack: anything beyond is the server buffering in memory
    bound = _tcp_rmem_max() + 16 * MiB
    with trio.fail_after(TIMEOUT * 2):
        async with run_server(app, config(max_message_size=MiB), lifespan="off") as srv:
            ws = await RawWS.connect(srv.port, sndbuf=64 * KiB)
            sock = ws.stream.socket
            pending = b""
            count = 0
            sent = 0
            while True:
                if not pending:
                    pending = frame(OP_BINARY, _message(count), key=b"\0\0\0\0")
                    count += 1
                # a trio socket send either sends or, when cancelled, sends nothing
                with trio.move_on_after(0.5) as blocked:
                    n = await sock.send(pending[:64 * KiB])
                if blocked.cancelled_caught:
                    break
                sent += n
                pending = pending[n:]
                assert sent < bound, "the server buffers what the app does not read"
            assert not received
            go.set()
            while pending:
                pending = pending[await sock.send(pending):]
            await ws.send(close_frame(1000))
            with trio.fail_after(10):
                events = await ws.read_until_closed()
            assert close_codes(events) == [1000]
            assert codes == [1000]
            assert len(received) == count
            assert all(m == _message(i) for i, m in enumerate(received))


# ------------------------------------------------------------------------------ shutdown


async def test_graceful_shutdown_closes_websockets_with_1001() -> None:
    app = EchoApp()
    cfg = config(close_timeout=3, graceful=10)
    with trio.fail_after(TIMEOUT):
        async with run_server(app, cfg, lifespan="off") as srv:
            url = f"ws://127.0.0.1:{srv.port}/"
            async with open_websocket_url(url) as ws1, open_websocket_url(url) as ws2:
                for ws in (ws1, ws2):
                    await ws.send_message("hi")
                    assert await ws.get_message() == "hi"
                t0 = trio.current_time()
                srv.shutdown.set()
                for ws in (ws1, ws2):
                    with pytest.raises(ConnectionClosed) as info:
                        await ws.get_message()
                    assert info.value.reason is not None
                    assert info.value.reason.code == 1001
                    assert info.value.reason.reason == "server shutting down"
        # both answered at once: the server is gone long before close_timeout or graceful
        assert trio.current_time() - t0 < 1.5
        assert sorted(app.disconnects) == [1001, 1001]


async def test_graceful_shutdown_drops_websocket_that_does_not_answer() -> None:
    app = EchoApp()
    cfg = config(close_timeout=0.5, graceful=10)
    with trio.fail_after(TIMEOUT):
        async with run_server(app, cfg, lifespan="off") as srv:
            silent = await RawWS.connect(srv.port)
            async with open_websocket_url(f"ws://127.0.0.1:{srv.port}/") as polite:
                await polite.send_message("hi")
                assert await polite.get_message() == "hi"
                await silent.send(frame(OP_TEXT, b"hi"))
                assert (await silent.next_event()).data == "hi"  # type: ignore[attr-defined]
                t0 = trio.current_time()
                srv.shutdown.set()
                with pytest.raises(ConnectionClosed) as info:
                    await polite.get_message()
                assert info.value.reason is not None and info.value.reason.code == 1001
                with trio.fail_after(5):
                    events = await silent.read_until_closed()  # never answers
                assert close_codes(events) == [1001]
                assert 0.3 < trio.current_time() - t0 < 3
        assert trio.current_time() - t0 < 3  # far from the 10 s graceful timeout
        assert sorted(app.disconnects) == [1001, 1006]


# ------------------------------------------------------------------------------ WSGI, HTTP/2


async def test_wsgi_app_asked_for_a_websocket_is_400() -> None:
    calls: list[str] = []

    def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        calls.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    with trio.fail_after(TIMEOUT):
        async with run_server(WSGIBridge(wsgi_app, threads=2), config(), asgi=False) as srv:
            data = await raw_exchange(srv.port, handshake(), timeout=5)
            [(response, body)] = parse_responses(data)
            assert response.status_code == 400
            assert body == (b"WebSocket requests are not supported: this server runs a WSGI "
                            b"application, which cannot accept them.\n")
            assert header_values(response.headers, b"connection") == [b"close"]
            assert header_values(response.headers, b"sec-websocket-accept") == []
            assert calls == []
            data = await raw_exchange(
                srv.port, b"GET /plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            [(response, body)] = parse_responses(data)
            assert (response.status_code, body) == (200, b"ok")
            assert calls == ["/plain"]


async def _h2_exchange(stream: trio.SocketStream, conn: h2.connection.H2Connection,
                       stream_id: int) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Read until ``stream_id`` ends (or is reset): its response headers and body."""
    headers: list[tuple[bytes, bytes]] = []
    body = b""
    while True:
        data = await stream.receive_some(65536)
        assert data, "the server closed the HTTP/2 connection"
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == stream_id:
                headers = [(bytes(n), bytes(v)) for n, v in ev.headers]
            elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == stream_id:
                body += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, stream_id)
            elif isinstance(ev, h2.events.StreamEnded | h2.events.StreamReset) and \
                    ev.stream_id == stream_id:
                await stream.send_all(conn.data_to_send())
                return headers, body
        await stream.send_all(conn.data_to_send())


async def test_http2_extended_connect_for_another_protocol_is_501() -> None:
    app = EchoApp()
    with trio.fail_after(TIMEOUT):
        async with run_server(app, config(), lifespan="off") as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            async with stream:
                conn = h2.connection.H2Connection(h2.config.H2Configuration(
                    client_side=True, header_encoding=None))
                conn.initiate_connection()
                await stream.send_all(conn.data_to_send())
                enabled = None
                while enabled is None:
                    data = await stream.receive_some(65536)
                    assert data
                    for ev in conn.receive_data(data):
                        if isinstance(ev, h2.events.RemoteSettingsChanged):
                            changed = ev.changed_settings.get(
                                h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL)
                            enabled = changed.new_value if changed is not None else 0
                    await stream.send_all(conn.data_to_send())
                assert enabled == 1  # RFC 8441 §3: the server offers extended CONNECT
                conn.send_headers(1, [(b":method", b"CONNECT"), (b":protocol", b"chat"),
                                      (b":scheme", b"http"), (b":path", b"/chat"),
                                      (b":authority", b"127.0.0.1")], end_stream=False)
                await stream.send_all(conn.data_to_send())
                headers, body = await _h2_exchange(stream, conn, 1)
                assert (b":status", b"501") in headers
                assert body == b"extended CONNECT protocol 'chat' is not supported\n"
                assert app.calls == []
                # the connection goes on: an ordinary request on it
                conn.send_headers(3, [(b":method", b"GET"), (b":scheme", b"http"),
                                      (b":path", b"/plain"), (b":authority", b"127.0.0.1")],
                                  end_stream=True)
                await stream.send_all(conn.data_to_send())
                headers, body = await _h2_exchange(stream, conn, 3)
                assert (b":status", b"200") in headers and body == b"ok"
                assert app.calls == ["http"]


async def test_send_cancelled_mid_frame_loses_the_websocket() -> None:
    """A send the app cancels (its own timeout) may leave part of a frame on the wire: the
    WebSocket is lost — later sends raise an OSError, the connection closes — rather than
    frames following a torn one."""
    outcome: list[str] = []
    done = trio.Event()

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        with trio.move_on_after(0.3):
            await send({"type": "websocket.send", "bytes": b"x" * (8 * 1024 * 1024)})
        try:
            await send({"type": "websocket.send", "text": "after"})
            outcome.append("sent")
        except OSError:
            outcome.append("OSError")
        done.set()

    cfg = config(limits={"min_response_data_rate": None})
    with trio.fail_after(TIMEOUT):
        async with run_server(app, cfg, lifespan="off") as srv:
            ws = await RawWS.connect(srv.port, rcvbuf=4096)  # reads nothing until the end
            with trio.fail_after(10):
                await done.wait()
            assert outcome == ["OSError"]
            with trio.fail_after(10):
                while await ws.stream.receive_some(1 << 20):
                    pass  # drained to the end: the server closed the connection
            await ws.stream.aclose()
