"""Regression tests for WebSocket bugs found in review, each proved against a live server on
127.0.0.1 before it was fixed:

- a handshake carrying a request body was a 500 with an ERROR traceback (now a 400);
- a continuation frame whose header arrives split across two reads is counted twice against
  ``max_message_size`` (a valid message was refused with 1009);
- the close timeout was stretched by the whole time the reader waited for the app, even the
  time before the close frame was sent;
- a message sent as tiny fragments was held as one Python object per fragment: memory many
  times ``max_message_size``;
- an ASGI ``receive()`` pending before ``websocket.accept`` crashed the WebSocket over HTTP/1.1
  (``BusyResourceError``) and never got the messages over HTTP/2.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from conftest import run_server
from test_websocket_asgi import H2WebSocketClient, serve
from test_websocket_limits import (
    OP_BINARY,
    OP_CONT,
    OP_TEXT,
    EchoApp,
    PeakMemory,
    RawWS,
    _Collect,
    close_codes,
    config,
    frame,
)
from wsproto.events import BytesMessage, CloseConnection

KiB = 1024
Scope = dict[str, Any]


@pytest.fixture
def errors() -> Iterator[list[logging.LogRecord]]:
    """ERROR records of the ``trioserve`` loggers (checked inside each test, so that a failure
    shows in the test's body rather than in a fixture's teardown)."""
    handler = _Collect()
    logger = logging.getLogger("trioserve")
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


def _messages(records: list[logging.LogRecord]) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in records]


# ------------------------------------------------------------------------- handshake


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_handshake_with_a_body_is_a_client_error(
        framing: str, errors: list[logging.LogRecord]) -> None:
    body = (b"Content-Length: 5\r\n\r\nhello" if framing == "content-length"
            else b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    key = base64.b64encode(os.urandom(16))
    request = (b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n" + body)
    with trio.fail_after(10):
        async with run_server(EchoApp(), config(graceful=2), lifespan="off") as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            async with stream:
                await stream.send_all(request)
                data = b""
                with trio.move_on_after(3):
                    while b"\r\n\r\n" not in data:
                        chunk = await stream.receive_some(65536)
                        if not chunk:
                            break
                        data += chunk
    status = int(data.split(b" ", 2)[1])  # refused as a client error, or accepted (101)
    assert 400 <= status < 500 or status == 101, data
    assert _messages(errors) == []


# ------------------------------------------------------------------------- message limit


async def test_continuation_header_split_across_reads_is_counted_once() -> None:
    with trio.fail_after(10):
        async with run_server(EchoApp(), config(max_message_size=1024 * KiB, graceful=2),
                              lifespan="off") as srv:
            ws = await RawWS.connect(srv.port)
            first = frame(OP_BINARY, b"a" * 500_000, fin=False)
            last = frame(OP_CONT, b"b" * 500_000, fin=True)  # 1,000,000 bytes in all: allowed
            # 2 + 8 header bytes (the length is parsed), the masking key not yet
            await ws.send(first + last[:10])
            await trio.sleep(0.3)
            await ws.send(last[10:])
            received = 0
            with trio.fail_after(5):
                while received < 1_000_000:
                    ev = await ws.next_event()
                    assert not isinstance(ev, CloseConnection), (ev.code, ev.reason)
                    assert isinstance(ev, BytesMessage)
                    received += len(ev.data)
            await ws.stream.aclose()


async def test_tiny_fragments_do_not_multiply_the_memory_a_message_holds() -> None:
    limit = 64 * KiB
    app = EchoApp()
    with trio.fail_after(20):
        async with run_server(app, config(max_message_size=limit, graceful=2),
                              lifespan="off") as srv:
            ws = await RawWS.connect(srv.port)
            n = (limit - 2) // 2  # 2-byte fragments: 32,767 of them, 65,534 bytes in all
            data = b"".join(frame(OP_BINARY if i == 0 else OP_CONT, b"ab", fin=i == n - 1,
                                  key=b"\1\2\3\4") for i in range(n))
            with PeakMemory() as memory:
                await ws.send(data)
                received = 0
                while received < 2 * n:
                    ev = await ws.next_event()
                    assert isinstance(ev, BytesMessage), ev
                    received += len(ev.data)
            await ws.stream.aclose()
    # The same message in one frame peaks at about 0.3 MiB.
    assert memory.peak < 1.5 * 1024 * KiB, f"peak {memory.peak / 2**20:.1f} MiB"


# ------------------------------------------------------------------------- close timeout


async def test_close_timeout_is_not_stretched_by_time_spent_before_the_close() -> None:
    app_done = trio.Event()

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await trio.sleep(2)  # never reads: the peer's second message waits for it
        app_done.set()  # returning closes with 1000

    with trio.fail_after(15):
        async with run_server(app, config(close_timeout=0.3, graceful=2),
                              lifespan="off") as srv:
            ws = await RawWS.connect(srv.port)
            for i in range(3):
                await ws.send(frame(OP_TEXT, b"message %d" % i))
            await app_done.wait()
            started = trio.current_time()
            events = await ws.read_until_closed()  # never answers the close frame
            elapsed = trio.current_time() - started
            await ws.stream.aclose()
    assert close_codes(events) == [1000]
    assert elapsed < 1.0, f"dropped {elapsed:.2f}s after the close frame (close_timeout 0.3s)"


# ------------------------------------------------------------------------- ASGI bridge


def _reads_before_accepting(got: list[dict[str, Any]], received: trio.Event) -> Any:
    """An ASGI app whose receive loop starts (in its own task) before it accepts; it echoes.
    ``received`` is set once the loop got anything."""

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        async with trio.open_nursery() as nursery:
            async def reader() -> None:
                while True:
                    message = await receive()
                    got.append(message)
                    received.set()
                    if message["type"] == "websocket.disconnect":
                        return
                    await send({"type": "websocket.send", "text": f"echo:{message['text']}"})

            nursery.start_soon(reader)
            await trio.sleep(0.2)  # the reader waits in receive() meanwhile
            await send({"type": "websocket.accept"})

    return app


async def test_receive_pending_before_accept_over_http1(
        errors: list[logging.LogRecord]) -> None:
    got: list[dict[str, Any]] = []
    received = trio.Event()
    with trio.fail_after(10):
        async with run_server(_reads_before_accepting(got, received), config(graceful=2),
                              lifespan="off") as srv:
            ws = await RawWS.connect(srv.port)
            await ws.send(frame(OP_TEXT, b"hello"))
            with trio.move_on_after(3):
                await received.wait()
            await ws.stream.aclose()
    assert _messages(errors) == []
    assert got[:1] == [{"type": "websocket.receive", "text": "hello"}]


async def test_receive_pending_before_accept_over_http2() -> None:
    got: list[dict[str, Any]] = []
    reply: str | bytes | None = None
    with trio.fail_after(10):
        async with serve(_reads_before_accepting(got, trio.Event())) as srv, \
                H2WebSocketClient.connect(srv.port) as client:
            ws = await client.open_websocket("/ws")
            await ws.send("hello")
            with trio.move_on_after(3):
                reply = await ws.receive()
    assert reply == "echo:hello"
    assert got[:1] == [{"type": "websocket.receive", "text": "hello"}]
