"""WebSockets end to end through the ASGI bridge, with real clients over loopback sockets.

Clients: ``websockets`` (its native Trio client, ``websockets.trio.client``), ``trio-websocket``,
``httpx-ws`` (on an ``httpx.AsyncClient``, running on Trio through AnyIO), a raw TCP client for
dropped connections, and for HTTP/2 (RFC 8441) a hand-written client: ``h2`` for the connection
(prior-knowledge h2c, or ALPN ``h2`` over TLS) with one ``wsproto`` frame connection per
extended CONNECT stream.

Covered: Starlette ``WebSocketEndpoint`` (text and bytes) and a FastAPI route (path and query
parameters, a subprotocol, JSON); refusing with ``websocket.close`` (403) and with the
``websocket.http.response`` extension (the app's own status, headers and body); the scope;
the ASGI close semantics (1011 on an exception, 1000 on return, 500 without accept, the app's
and the client's own codes and reasons, 1005, 1006 for a dropped connection, ``OSError`` from
a send after the disconnect, 1001 on shutdown); ``WebSocketConfig``'s close and idle timeouts,
pings and message size limit, the upgraded-connection limit; 5 MiB binary and multibyte text
messages (SHA-256); permessage-deflate (negotiated, bytes on the wire, switched off, client
parameters, a smaller server window); HTTP/2 WebSockets beside each other and ordinary requests
on one connection, their refusals, resets, large messages and graceful shutdown; ``wss://``
(the ``tls`` scope extension) over HTTP/1.1 and HTTP/2.

Every wait is bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import random
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import httpx
import httpx_ws
import pytest
import trio
import trio_websocket
import trustme
import websockets.exceptions
import websockets.trio.client
from conftest import make_config, run_server
from fastapi import FastAPI
from fastapi import WebSocket as FastAPIWebSocket
from starlette.applications import Starlette
from starlette.endpoints import WebSocketEndpoint
from starlette.responses import PlainTextResponse, Response
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from wsproto.connection import Connection as WsConnection
from wsproto.connection import ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Ping,
    TextMessage,
)
from wsproto.events import Message as WsMessage
from wsproto.extensions import PerMessageDeflate

from trioserve import Tls, WebSocketConfig

TIMEOUT = 20
KiB = 1024
MiB = 1024 * KiB

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# ----------------------------------------------------------------------------- fixtures


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def server_log() -> Iterator[list[logging.LogRecord]]:
    """The ``trioserve`` loggers' records during the test (a handler on the logger itself: the
    CLI tests may have turned propagation off)."""
    logger = logging.getLogger("trioserve")
    handler = _Records()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def problems(records: list[logging.LogRecord]) -> list[str]:
    """Warnings and errors (tracebacks included) the server logged."""
    return [f"{r.name} {r.levelname}: {r.getMessage()}" + (" (with a traceback)"
                                                          if r.exc_info else "")
            for r in records if r.levelno >= logging.WARNING]


@dataclass(frozen=True)
class Certs:
    ca_pem: Path
    certfile: Path
    keyfile: Path
    leaf_pem: str

    def tls(self) -> Tls:
        return Tls(certfile=str(self.certfile), keyfile=str(self.keyfile))

    def client_context(self, alpn: list[str] | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_pem))
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return ctx


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d = tmp_path_factory.mktemp("wscerts")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    for blob in server.cert_chain_pems:
        blob.write_to_path(str(d / "server.pem"), append=True)
    server.private_key_pem.write_to_path(str(d / "server-key.pem"))
    return Certs(d / "ca.pem", d / "server.pem", d / "server-key.pem",
                 server.cert_chain_pems[0].bytes().decode())


# ----------------------------------------------------------------------------- helpers


@dataclass
class Served:
    port: int
    shutdown: trio.Event
    secure: bool = False

    def url(self, path: str = "/") -> str:
        return f"{'wss' if self.secure else 'ws'}://127.0.0.1:{self.port}{path}"

    def http_url(self, path: str = "/") -> str:
        return f"{'https' if self.secure else 'http'}://127.0.0.1:{self.port}{path}"


@asynccontextmanager
async def serve(app: Any, *, websocket: WebSocketConfig | None = None, tls: Tls | None = None,
                **config: Any) -> AsyncIterator[Served]:
    """Serve the ASGI ``app`` on 127.0.0.1 port 0 (no lifespan, no server pings unless
    ``websocket`` says so)."""
    config.setdefault("timeouts", {"graceful": 5})
    cfg = make_config(websocket=websocket or WebSocketConfig(ping_interval=None), tls=tls,
                      **config)
    async with run_server(app, cfg, lifespan="off") as srv:
        url = srv.addresses[0]
        assert url.startswith("https://127.0.0.1:" if tls else "http://127.0.0.1:"), url
        yield Served(int(url.rpartition(":")[2]), srv.shutdown, secure=tls is not None)


def ws_connect(url: str, **kw: Any) -> websockets.trio.client.connect:
    """``websockets``' Trio client, without proxies from the environment or client pings."""
    kw.setdefault("proxy", None)
    kw.setdefault("ping_interval", None)
    kw.setdefault("open_timeout", TIMEOUT)
    kw.setdefault("close_timeout", TIMEOUT)
    return websockets.trio.client.connect(url, **kw)


def tws_connect(url: str, **kw: Any) -> Any:
    """``trio-websocket``'s client."""
    kw.setdefault("connect_timeout", TIMEOUT)
    kw.setdefault("disconnect_timeout", TIMEOUT)
    return trio_websocket.open_websocket_url(url, **kw)


@asynccontextmanager
async def httpx_ws_connect(url: str, **kw: Any) -> AsyncIterator[httpx_ws.AsyncWebSocketSession]:
    """``httpx-ws`` on an ``httpx.AsyncClient`` (AnyIO picks Trio), without keepalive pings."""
    kw.setdefault("keepalive_ping_interval_seconds", None)
    async with httpx.AsyncClient(trust_env=False) as client, \
            httpx_ws.aconnect_ws(url, client, **kw) as ws:
        yield ws


def pattern(n: int, seed: int = 7) -> bytes:
    """``n`` deterministic pseudo-random bytes."""
    return random.Random(seed).randbytes(n)


def multibyte_text(chars: int, seed: int = 11) -> str:
    """``chars`` characters of 1-4 UTF-8 bytes each, deterministic."""
    alphabet = "aZ9 éßж€中日😀🎉\u0800\U0010fff0"
    return "".join(random.Random(seed).choices(alphabet, k=chars))


def sha(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


class Recorded(list[Any]):
    """A list whose length can be waited for."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = trio.Event()

    def append(self, item: Any) -> None:
        super().append(item)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, n: int) -> None:
        while len(self) < n:
            await self._changed.wait()


@dataclass
class Probe:
    """What an ASGI app saw, for the test to check once ``done`` is set."""

    scopes: list[Scope] = field(default_factory=list)
    received: list[Message] = field(default_factory=list)
    disconnect: Message | None = None
    send_error: Exception | None = None
    accepted: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)


def echo_app(probe: Probe, *, subprotocol: str | None = None) -> ASGIApp:
    """Accepts, echoes every message as it came until the disconnect, records it all, then
    tries one more send (which must fail)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            assert scope["type"] == "websocket"
            probe.scopes.append(scope)
            assert (await receive()) == {"type": "websocket.connect"}
            await send({"type": "websocket.accept", "subprotocol": subprotocol})
            probe.accepted.set()
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    probe.disconnect = message
                    break
                assert message["type"] == "websocket.receive"
                probe.received.append(message)
                if message.get("text") is not None:
                    await send({"type": "websocket.send", "text": message["text"]})
                else:
                    await send({"type": "websocket.send", "bytes": message["bytes"]})
            try:
                await send({"type": "websocket.send", "text": "too late"})
            except Exception as exc:
                probe.send_error = exc
        finally:
            probe.done.set()

    return app


class CountingStream(trio.abc.HalfCloseableStream):
    """A TCP stream that counts the bytes each way (what really went over the wire)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.sent = 0
        self.received = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += len(data)
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.stream.receive_some(max_bytes)
        self.received += len(data)
        return data

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()


async def raw_handshake(port: int, path: str = "/") -> tuple[trio.SocketStream, bytes, bytes]:
    """A WebSocket opening handshake by hand: the stream, the response head and whatever
    came after it."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    await stream.send_all((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           ).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await stream.receive_some(4096)
        assert chunk, head
        head += chunk
    head, _, rest = head.partition(b"\r\n\r\n")
    return stream, head, rest


async def read_exactly(stream: trio.abc.ReceiveStream, n: int, buffered: bytes = b"") -> bytes:
    data = bytearray(buffered)
    while len(data) < n:
        chunk = await stream.receive_some(n - len(data))
        assert chunk, bytes(data)
        data += chunk
    return bytes(data)


async def read_to_eof(stream: trio.abc.ReceiveStream) -> bytes:
    """Everything until the server closes the connection (a reset counts as closing)."""
    data = bytearray()
    while True:
        try:
            chunk = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


# ----------------------------------------------------------------------------- Starlette, FastAPI


class TextEcho(WebSocketEndpoint):
    encoding = "text"

    async def on_receive(self, websocket: WebSocket, data: Any) -> None:
        assert isinstance(data, str)
        await websocket.send_text(f"text: {data}")


class BytesEcho(WebSocketEndpoint):
    encoding = "bytes"

    async def on_receive(self, websocket: WebSocket, data: Any) -> None:
        assert isinstance(data, bytes)
        await websocket.send_bytes(b"bytes: " + data[::-1])


def starlette_app(disconnects: list[tuple[str, int]], done: trio.Event) -> Starlette:
    class RecordingText(TextEcho):
        async def on_disconnect(self, websocket: WebSocket, close_code: int) -> None:
            disconnects.append(("text", close_code))
            done.set()

    class RecordingBytes(BytesEcho):
        async def on_disconnect(self, websocket: WebSocket, close_code: int) -> None:
            disconnects.append(("bytes", close_code))
            done.set()

    async def refuse(websocket: WebSocket) -> None:
        await websocket.close(code=1008)

    async def deny(websocket: WebSocket) -> None:
        await websocket.send_denial_response(PlainTextResponse(
            "login first", status_code=401, headers={"WWW-Authenticate": 'Bearer realm="ws"'}))

    async def deny_empty(websocket: WebSocket) -> None:
        await websocket.send_denial_response(Response(status_code=429,
                                                      headers={"Retry-After": "7"}))

    return Starlette(routes=[WebSocketRoute("/text", RecordingText),
                             WebSocketRoute("/bytes", RecordingBytes),
                             WebSocketRoute("/refuse", refuse),
                             WebSocketRoute("/deny", deny),
                             WebSocketRoute("/deny-empty", deny_empty)])


async def test_starlette_text_endpoint_with_trio_websocket(server_log: list[Any]) -> None:
    disconnects: list[tuple[str, int]] = []
    done = trio.Event()
    with trio.fail_after(TIMEOUT):
        async with serve(starlette_app(disconnects, done)) as srv:
            async with tws_connect(srv.url("/text")) as ws:
                for text in ("hello", "", "héllo wörld ✓ 😀"):
                    await ws.send_message(text)
                    assert await ws.get_message() == f"text: {text}"
            await done.wait()
            assert ws.closed is not None and ws.closed.code == 1000
    assert disconnects == [("text", 1000)]
    assert problems(server_log) == []


async def test_starlette_bytes_endpoint_with_websockets(server_log: list[Any]) -> None:
    disconnects: list[tuple[str, int]] = []
    done = trio.Event()
    with trio.fail_after(TIMEOUT):
        async with serve(starlette_app(disconnects, done)) as srv:
            async with ws_connect(srv.url("/bytes")) as ws:
                for data in (b"\x00\x01\x02\xff", b"", pattern(100 * KiB)):
                    await ws.send(data)
                    assert await ws.recv() == b"bytes: " + data[::-1]
                await ws.aclose(4321, "enough")
            await done.wait()
    assert disconnects == [("bytes", 4321)]
    assert problems(server_log) == []


async def test_starlette_bytes_endpoint_closes_1003_on_text() -> None:
    """Starlette closes with 1003 (Unsupported Data) and then raises: the client sees 1003,
    not the 1011 an exception would give."""
    disconnects: list[tuple[str, int]] = []
    done = trio.Event()
    with trio.fail_after(TIMEOUT):
        async with serve(starlette_app(disconnects, done)) as srv:
            async with ws_connect(srv.url("/bytes")) as ws:
                await ws.send("not bytes")
                with pytest.raises(websockets.exceptions.ConnectionClosedError) as info:
                    await ws.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1003
            await done.wait()
    assert disconnects == [("bytes", 1011)]


async def test_starlette_close_before_accept_is_http_403(server_log: list[Any]) -> None:
    with trio.fail_after(TIMEOUT):
        async with serve(starlette_app([], trio.Event())) as srv:
            with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
                async with tws_connect(srv.url("/refuse")):
                    pass  # pragma: no cover
            assert rejected.value.status_code == 403
            with pytest.raises(websockets.exceptions.InvalidStatus) as invalid:
                async with ws_connect(srv.url("/refuse")):
                    pass  # pragma: no cover
            response = invalid.value.response
            assert response.status_code == 403
            assert "Upgrade" not in response.headers
            assert "Sec-WebSocket-Accept" not in response.headers
    assert problems(server_log) == []


async def test_starlette_denial_response_reaches_the_client(server_log: list[Any]) -> None:
    """The websocket.http.response extension: the client gets the app's own status, headers
    and body instead of a handshake."""
    with trio.fail_after(TIMEOUT):
        async with serve(starlette_app([], trio.Event())) as srv:
            with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
                async with tws_connect(srv.url("/deny")):
                    pass  # pragma: no cover
            assert rejected.value.status_code == 401
            assert rejected.value.body == b"login first"
            headers = dict(rejected.value.headers)
            assert headers[b"www-authenticate"] == b'Bearer realm="ws"'
            assert headers[b"content-type"].startswith(b"text/plain")

            with pytest.raises(websockets.exceptions.InvalidStatus) as invalid:
                async with ws_connect(srv.url("/deny")):
                    pass  # pragma: no cover
            response = invalid.value.response
            assert response.status_code == 401
            assert response.body == b"login first"
            assert response.headers["Content-Length"] == str(len(b"login first"))
            assert "Sec-WebSocket-Accept" not in response.headers

            with pytest.raises(websockets.exceptions.InvalidStatus) as invalid:
                async with ws_connect(srv.url("/deny-empty")):
                    pass  # pragma: no cover
            response = invalid.value.response
            assert response.status_code == 429
            assert response.headers["Retry-After"] == "7"
            assert response.body == b""
    assert problems(server_log) == []


def fastapi_app(seen: list[dict[str, Any]]) -> FastAPI:
    """``/rooms/{room}/join?user=&limit=``: picks subprotocol chat.v2 if offered, sends what
    it got as JSON, echoes JSON, closes 4000 on ``{"bye": true}``; appends to ``seen`` how
    each one ended."""
    api = FastAPI()

    @api.websocket("/rooms/{room}/join")
    async def join(websocket: FastAPIWebSocket, room: str, user: str, limit: int = 3) -> None:
        offered = websocket.scope["subprotocols"]
        chosen = "chat.v2" if "chat.v2" in offered else None
        await websocket.accept(subprotocol=chosen, headers=[(b"x-room", room.encode())])
        await websocket.send_json({"room": room, "user": user, "limit": limit,
                                   "offered": offered, "chosen": chosen})
        try:
            while True:
                payload = await websocket.receive_json()
                if payload.get("bye"):
                    await websocket.close(code=4000, reason=f"bye {user}")
                    seen.append({"closed_by": "app"})
                    return
                await websocket.send_json({"echo": payload, "user": user})
        except WebSocketDisconnect as exc:
            seen.append({"closed_by": "client", "code": exc.code})

    return api


async def test_fastapi_route_with_websockets_client(server_log: list[Any]) -> None:
    seen: list[dict[str, Any]] = []
    with trio.fail_after(TIMEOUT):
        async with serve(fastapi_app(seen)) as srv:
            url = srv.url("/rooms/blue%20room/join?user=ana&limit=5")
            async with ws_connect(url, subprotocols=["chat.v1", "chat.v2"]) as ws:
                assert ws.subprotocol == "chat.v2"
                assert ws.response is not None
                assert ws.response.headers["X-Room"] == "blue room"
                hello = json.loads(await ws.recv())
                assert hello == {"room": "blue room", "user": "ana", "limit": 5,
                                 "offered": ["chat.v1", "chat.v2"], "chosen": "chat.v2"}
                await ws.send(json.dumps({"n": 1, "s": "ü"}))
                assert json.loads(await ws.recv()) == {"echo": {"n": 1, "s": "ü"}, "user": "ana"}
                await ws.send(json.dumps({"bye": True}))
                with pytest.raises(websockets.exceptions.ConnectionClosedError) as info:
                    await ws.recv()
            assert info.value.rcvd is not None
            assert (info.value.rcvd.code, info.value.rcvd.reason) == (4000, "bye ana")
    assert seen == [{"closed_by": "app"}]
    assert problems(server_log) == []


async def test_fastapi_route_with_httpx_ws_on_trio(server_log: list[Any]) -> None:
    seen = Recorded()
    with trio.fail_after(TIMEOUT):
        async with serve(fastapi_app(seen)) as srv:
            url = srv.http_url("/rooms/r1/join?user=bo")
            async with httpx_ws_connect(url, subprotocols=["chat.v2"]) as ws:
                assert ws.subprotocol == "chat.v2"
                assert await ws.receive_json() == {"room": "r1", "user": "bo", "limit": 3,
                                                   "offered": ["chat.v2"], "chosen": "chat.v2"}
                await ws.send_json({"k": [1, 2, 3]})
                assert await ws.receive_json() == {"echo": {"k": [1, 2, 3]}, "user": "bo"}
                await ws.send_json({"bye": True})
                with pytest.raises(httpx_ws.WebSocketDisconnect) as info:
                    await ws.receive_text()
                assert (info.value.code, info.value.reason) == (4000, "bye bo")
            await seen.wait_for(1)
            # no subprotocol offered: none chosen, no header
            async with httpx_ws_connect(srv.http_url("/rooms/r2/join?user=cy")) as ws:
                assert ws.subprotocol is None
                assert (await ws.receive_json())["chosen"] is None
            await seen.wait_for(2)  # the app's disconnect comes after the client's close
    assert seen == [{"closed_by": "app"}, {"closed_by": "client", "code": 1000}]
    assert problems(server_log) == []


async def test_fastapi_missing_query_parameter_refuses_the_handshake() -> None:
    """FastAPI closes with 1008 before accepting when a required parameter is missing: an
    HTTP 403 for the client."""
    with trio.fail_after(TIMEOUT):
        async with serve(fastapi_app([])) as srv:
            with pytest.raises(websockets.exceptions.InvalidStatus) as invalid:
                async with ws_connect(srv.url("/rooms/x/join")):
                    pass  # pragma: no cover
            assert invalid.value.response.status_code == 403


# ----------------------------------------------------------------------------- the scope


async def test_scope(server_log: list[Any]) -> None:
    probe = Probe()
    with trio.fail_after(TIMEOUT):
        async with serve(echo_app(probe, subprotocol="two")) as srv:
            url = srv.url("/caf%C3%A9/a%2Fb?x=1&y=%20z")
            async with ws_connect(url, subprotocols=["one", "two"],
                                  additional_headers=[("X-Custom", "v1"), ("X-Custom", "v2")],
                                  compression=None) as ws:
                assert ws.subprotocol == "two"
                await ws.send("ping")
                assert await ws.recv() == "ping"
                client_address = ws.local_address
            await probe.done.wait()
    (scope,) = probe.scopes
    assert scope["type"] == "websocket"
    assert scope["asgi"]["version"] == "3.0"
    assert scope["asgi"]["spec_version"] == "2.4"
    assert scope["http_version"] == "1.1"
    assert scope["scheme"] == "ws"
    assert scope["path"] == "/café/a/b"
    assert scope["raw_path"] == b"/caf%C3%A9/a%2Fb"
    assert scope["query_string"] == b"x=1&y=%20z"
    assert scope["root_path"] == ""
    assert scope["subprotocols"] == ["one", "two"]
    assert "websocket.http.response" in scope["extensions"]
    assert "tls" not in scope["extensions"]
    assert "method" not in scope
    headers = scope["headers"]
    assert all(type(n) is bytes and type(v) is bytes and n == n.lower() for n, v in headers)
    assert (b"host", f"127.0.0.1:{srv.port}".encode()) in headers
    assert [v for n, v in headers if n == b"x-custom"] == [b"v1", b"v2"]
    assert [v for n, v in headers if n == b"sec-websocket-protocol"] == [b"one, two"]
    assert [v for n, v in headers if n == b"upgrade"] == [b"websocket"]
    assert any(n == b"sec-websocket-key" for n, v in headers)
    assert tuple(scope["client"]) == (client_address[0], client_address[1])
    assert tuple(scope["server"]) == ("127.0.0.1", srv.port)
    assert probe.disconnect == {"type": "websocket.disconnect", "code": 1000, "reason": ""}
    assert problems(server_log) == []


async def test_scope_with_root_path() -> None:
    """``Config.root_path``: the scope's ``path`` and ``raw_path`` include it, as for HTTP."""
    probe = Probe()
    with trio.fail_after(TIMEOUT):
        async with serve(echo_app(probe), root_path="/api") as srv:
            async with tws_connect(srv.url("/ws/x?y=1")) as ws:
                await ws.send_message("hi")
                assert await ws.get_message() == "hi"
            await probe.done.wait()
    (scope,) = probe.scopes
    assert (scope["root_path"], scope["path"], scope["raw_path"], scope["query_string"]) == (
        "/api", "/api/ws/x", b"/api/ws/x", b"y=1")


# ----------------------------------------------------------------------------- ASGI semantics


def scripted_app(script: Callable[[Receive, Send], Awaitable[None]], done: trio.Event
                 ) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            assert (await receive())["type"] == "websocket.connect"
            await script(receive, send)
        finally:
            done.set()

    return app


async def test_exception_after_accept_closes_1011(server_log: list[logging.LogRecord]) -> None:
    async def script(receive: Receive, send: Send) -> None:
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "about to fail"})
        raise ValueError("the app broke")

    done = trio.Event()
    with trio.fail_after(TIMEOUT):
        async with serve(scripted_app(script, done)) as srv:
            async with tws_connect(srv.url()) as ws:
                assert await ws.get_message() == "about to fail"
                with pytest.raises(trio_websocket.ConnectionClosed) as info:
                    await ws.get_message()
            assert info.value.reason is not None and info.value.reason.code == 1011
            await done.wait()
    errors = [r for r in server_log if r.levelno >= logging.ERROR]
    assert len(errors) == 1, problems(server_log)
    assert errors[0].exc_info is not None and errors[0].exc_info[0] is ValueError


@pytest.mark.parametrize("client", ["websockets", "httpx-ws"])
async def test_return_after_accept_closes_1000(client: str, server_log: list[Any]) -> None:
    async def script(receive: Receive, send: Send) -> None:
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "bytes": b"last words"})

    done = trio.Event()
    with trio.fail_after(TIMEOUT):
        async with serve(scripted_app(script, done)) as srv:
            if client == "websockets":
                async with ws_connect(srv.url()) as ws:
                    assert await ws.recv() == b"last words"
                    with pytest.raises(websockets.exceptions.ConnectionClosedOK) as ok:
                        await ws.recv()
                assert ok.value.rcvd is not None and ok.value.rcvd.code == 1000
            else:
                async with httpx_ws_connect(srv.http_url()) as hws:
                    assert await hws.receive_bytes() == b"last words"
                    with pytest.raises(httpx_ws.WebSocketDisconnect) as info:
                        await hws.receive_bytes()
                assert info.value.code == 1000
            await done.wait()
    assert problems(server_log) == []


@pytest.mark.parametrize("client", ["websockets", "httpx-ws"])
async def test_return_without_accepting_is_http_500(client: str) -> None:
    async def script(receive: Receive, send: Send) -> None:
        pass

    with trio.fail_after(TIMEOUT):
        async with serve(scripted_app(script, trio.Event())) as srv:
            if client == "websockets":
                with pytest.raises(websockets.exceptions.InvalidStatus) as invalid:
                    async with ws_connect(srv.url()):
                        pass  # pragma: no cover
                assert invalid.value.response.status_code == 500
            else:
                with pytest.raises(httpx_ws.WebSocketUpgradeError) as upgrade:
                    async with httpx_ws_connect(srv.http_url()):
                        pass  # pragma: no cover
                assert upgrade.value.response.status_code == 500


async def test_app_closes_with_its_own_code_and_reason(server_log: list[Any]) -> None:
    async def script(receive: Receive, send: Send) -> None:
        await send({"type": "websocket.accept"})
        message = await receive()
        assert message == {"type": "websocket.receive", "text": "close please"}
        await send({"type": "websocket.close", "code": 4000, "reason": "bye"})
        await send({"type": "websocket.close"})  # a second close is harmless

    done = trio.Event()
    with trio.fail_after(TIMEOUT):
        async with serve(scripted_app(script, done)) as srv:
            async with tws_connect(srv.url()) as ws:
                await ws.send_message("close please")
                with pytest.raises(trio_websocket.ConnectionClosed) as info:
                    await ws.get_message()
            reason = info.value.reason
            assert reason is not None and (reason.code, reason.reason) == (4000, "bye")
            async with ws_connect(srv.url()) as ws2:
                await ws2.send("close please")
                with pytest.raises(websockets.exceptions.ConnectionClosedError) as info2:
                    await ws2.recv()
            rcvd = info2.value.rcvd
            assert rcvd is not None and (rcvd.code, rcvd.reason) == (4000, "bye")
            await done.wait()
    assert problems(server_log) == []


async def test_disconnect_after_the_app_closes_carries_the_close_code() -> None:
    """After ``websocket.close`` the app's next ``receive()`` is the end of the closing
    handshake: ``websocket.disconnect`` with the code the client answered with (its echo of
    4000), not 1006 (Abnormal Closure: no close frame), which the handshake did not end in."""
    seen: list[Message] = []

    async def script(receive: Receive, send: Send) -> None:
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4000, "reason": "bye"})
        seen.append(await receive())

    done = trio.Event()
    with trio.fail_after(TIMEOUT):
        async with serve(scripted_app(script, done)) as srv:
            async with ws_connect(srv.url()) as ws:
                with pytest.raises(websockets.exceptions.ConnectionClosedError):
                    await ws.recv()
            assert ws.protocol.close_sent is not None and ws.protocol.close_sent.code == 4000
            await done.wait()
    assert seen == [{"type": "websocket.disconnect", "code": 4000, "reason": "bye"}]


async def test_client_close_code_and_reason_reach_the_app(server_log: list[Any]) -> None:
    probe = Probe()
    with trio.fail_after(TIMEOUT):
        async with serve(echo_app(probe)) as srv:
            async with ws_connect(srv.url()) as ws:
                await ws.send("hi")
                assert await ws.recv() == "hi"
                await ws.aclose(4001, "x")
            assert ws.protocol.close_rcvd is not None
            assert ws.protocol.close_rcvd.code == 4001  # the server echoed the code
            await probe.done.wait()
    assert probe.disconnect == {"type": "websocket.disconnect", "code": 4001, "reason": "x"}
    assert isinstance(probe.send_error, OSError), probe.send_error
    assert problems(server_log) == []


async def test_client_close_without_a_code_is_1005() -> None:
    """A close frame with no payload: the app's disconnect has 1005 (No Status Received)."""
    probe = Probe()
    with trio.fail_after(TIMEOUT):
        async with serve(echo_app(probe)) as srv:
            stream, head, rest = await raw_handshake(srv.port)
            async with stream:
                assert head.startswith(b"HTTP/1.1 101 ")
                await probe.accepted.wait()
                await stream.send_all(b"\x88\x80" + os.urandom(4))  # masked, empty CLOSE
                # an empty close back (never 1005 on the wire), then the server closes the
                # TCP connection first (RFC 6455 §7.1.1)
                assert rest + await read_to_eof(stream) == b"\x88\x00"
            await probe.done.wait()
    assert probe.disconnect is not None and probe.disconnect["code"] == 1005


@pytest.mark.parametrize("how", ["fin", "reset"])
async def test_dropped_connection_is_1006(how: str, server_log: list[Any]) -> None:
    probe = Probe()
    with trio.fail_after(TIMEOUT):
        async with serve(echo_app(probe)) as srv:
            stream, head, rest = await raw_handshake(srv.port)
            assert head.startswith(b"HTTP/1.1 101 ")
            await probe.accepted.wait()
            # a masked text frame "hi", echoed unmasked
            await stream.send_all(b"\x81\x82" + b"\x00\x00\x00\x00" + b"hi")
            assert await read_exactly(stream, 4, rest) == b"\x81\x02hi"
            if how == "reset":
                stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                         struct.pack("ii", 1, 0))
            await stream.aclose()
            await probe.done.wait()
    assert probe.disconnect is not None
    assert probe.disconnect["type"] == "websocket.disconnect"
    assert probe.disconnect["code"] == 1006
    assert isinstance(probe.send_error, OSError), probe.send_error
    assert [r for r in server_log if r.levelno >= logging.ERROR] == []


async def test_send_after_disconnect_in_starlette(server_log: list[Any]) -> None:
    """Starlette turns the server's OSError from a send after the disconnect into its own
    ``WebSocketDisconnect`` (it only does so for an ``OSError``)."""
    outcome: list[Any] = []
    done = trio.Event()

    async def endpoint(websocket: WebSocket) -> None:
        try:
            await websocket.accept()
            await websocket.send_text("hi")
            message = await websocket.receive()
            assert message["type"] == "websocket.disconnect"
            try:
                await websocket.send({"type": "websocket.send", "text": "late"})
            except WebSocketDisconnect as exc:
                outcome.append((exc.code, type(exc.__context__).__name__,
                                isinstance(exc.__context__, OSError)))
        finally:
            done.set()

    app = Starlette(routes=[WebSocketRoute("/", endpoint)])
    with trio.fail_after(TIMEOUT):
        async with serve(app) as srv:
            async with ws_connect(srv.url()) as ws:
                assert await ws.recv() == "hi"
            await done.wait()
    assert outcome == [(1006, "WebSocketDisconnected", True)]
    assert problems(server_log) == []


async def test_shutdown_closes_open_websockets_with_1001() -> None:
    probe = Probe()
    with trio.fail_after(TIMEOUT):
        async with serve(echo_app(probe)) as srv:
            async with ws_connect(srv.url()) as ws:
                await ws.send("x")
                assert await ws.recv() == "x"
                srv.shutdown.set()
                with pytest.raises(websockets.exceptions.ConnectionClosedOK) as ok:
                    await ws.recv()
            assert ok.value.rcvd is not None and ok.value.rcvd.code == 1001
            await probe.done.wait()
    assert probe.disconnect is not None and probe.disconnect["code"] == 1001


# ----------------------------------------------------------------------------- timeouts, limits


async def test_close_timeout_drops_a_client_that_does_not_answer() -> None:
    """The app closes; the client never answers: the server closes the TCP connection after
    ``close_timeout``."""
    done = trio.Event()

    async def script(receive: Receive, send: Send) -> None:
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4000, "reason": "bye"})

    config = WebSocketConfig(ping_interval=None, close_timeout=0.5)
    with trio.fail_after(TIMEOUT):
        async with serve(scripted_app(script, done), websocket=config) as srv:
            stream, head, rest = await raw_handshake(srv.port)
            async with stream:
                assert head.startswith(b"HTTP/1.1 101 ")
                assert rest + await read_to_eof(stream) == b"\x88\x05" + struct.pack(
                    "!H", 4000) + b"bye"
            await done.wait()


async def test_idle_timeout_closes_1001() -> None:
    probe = Probe()
    config = WebSocketConfig(ping_interval=None, idle_timeout=0.3)
    with trio.fail_after(TIMEOUT):
        async with serve(echo_app(probe), websocket=config) as srv:
            async with ws_connect(srv.url()) as ws:
                await ws.send("one")
                assert await ws.recv() == "one"
                with pytest.raises(websockets.exceptions.ConnectionClosedOK) as ok:
                    await ws.recv()
            rcvd = ok.value.rcvd
            assert rcvd is not None and (rcvd.code, rcvd.reason) == (1001, "idle timeout")
            await probe.done.wait()


async def test_idle_timeout_waits_for_the_close_reply(server_log: list[logging.LogRecord]
                                                       ) -> None:
    """After its idle close the server reads the client's reply: the app's disconnect has
    the code the client answered with (1001), not 1006."""
    probe = Probe()
    config = WebSocketConfig(ping_interval=None, idle_timeout=0.3, close_timeout=5)
    with trio.fail_after(TIMEOUT):
        async with serve(echo_app(probe), websocket=config) as srv:
            async with ws_connect(srv.url()) as ws:
                with pytest.raises(websockets.exceptions.ConnectionClosedOK):
                    await ws.recv()
            assert ws.protocol.close_sent is not None  # the client did answer
            assert ws.protocol.close_sent.code == 1001
            await probe.done.wait()
    dropped = [r.getMessage() for r in server_log if "did not answer" in r.getMessage()]
    assert dropped == []
    assert probe.disconnect is not None and probe.disconnect["code"] == 1001


async def test_pings_keep_answering_clients_and_drop_silent_ones() -> None:
    probes = [Probe(), Probe()]
    apps = iter([echo_app(p) for p in probes])

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await next(apps)(scope, receive, send)

    config = WebSocketConfig(ping_interval=0.1, ping_timeout=0.5)
    with trio.fail_after(TIMEOUT):
        async with serve(app, websocket=config) as srv:
            # websockets answers pings by itself
            async with ws_connect(srv.url()) as ws:
                await trio.sleep(1.0)
                await ws.send("still here")
                assert await ws.recv() == "still here"
            await probes[0].done.wait()
            # a raw client that never answers is dropped once a ping goes unanswered
            stream, head, rest = await raw_handshake(srv.port)
            async with stream:
                assert head.startswith(b"HTTP/1.1 101 ")
                received = rest + await read_to_eof(stream)
            assert received[:2] == b"\x89\x04"  # a ping with a 4-byte payload
            await probes[1].done.wait()
    assert probes[0].disconnect is not None and probes[0].disconnect["code"] == 1000
    assert probes[1].disconnect is not None and probes[1].disconnect["code"] == 1006


async def test_upgraded_connection_limit_answers_503() -> None:
    probe = Probe()
    with trio.fail_after(TIMEOUT):
        async with serve(echo_app(probe),
                         limits={"max_concurrent_upgraded_connections": 1}) as srv:
            async with ws_connect(srv.url()) as ws:
                with pytest.raises(websockets.exceptions.InvalidStatus) as invalid:
                    async with ws_connect(srv.url()):
                        pass  # pragma: no cover
                assert invalid.value.response.status_code == 503
                assert invalid.value.response.headers["Retry-After"] == "5"
                await ws.send("the first one still works")
                assert await ws.recv() == "the first one still works"
            await probe.done.wait()


# ----------------------------------------------------------------------------- handshake, frames


async def test_fragmented_messages_and_pings_from_the_client() -> None:
    probe = Probe()
    with trio.fail_after(TIMEOUT):
        async with serve(echo_app(probe)) as srv:
            async with ws_connect(srv.url()) as ws:
                await ws.send(["frag1 ", "frag2 ", "ü" * 10])  # one message, three frames
                assert await ws.recv() == "frag1 frag2 " + "ü" * 10
                await ws.send([b"a", b"", b"b"])
                assert await ws.recv() == b"ab"
                pong = await ws.ping(b"abc")
                await pong.wait()
            await probe.done.wait()
    assert probe.received == [{"type": "websocket.receive", "text": "frag1 frag2 " + "ü" * 10},
                              {"type": "websocket.receive", "bytes": b"ab"}]


async def test_handshake_variants_and_early_frames() -> None:
    """``Connection: keep-alive, Upgrade`` (Firefox), ``Upgrade: WebSocket``, subprotocols
    over two fields, and a frame sent right behind the request before the 101 came."""
    probe = Probe()
    with trio.fail_after(TIMEOUT):
        async with serve(echo_app(probe)) as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            async with stream:
                await stream.send_all(
                    b"GET /x HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\n"
                    b"Connection: keep-alive, Upgrade\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: a\r\n"
                    b"Sec-WebSocket-Protocol: b, c\r\n\r\n"
                    b"\x81\x82\x00\x00\x00\x00hi")  # masked "hi"
                received = b""
                while not received.endswith(b"\r\n\r\n\x81\x02hi"):  # the echo
                    chunk = await stream.receive_some(4096)
                    assert chunk, received
                    received += chunk
                await stream.send_all(b"\x88\x82\x00\x00\x00\x00\x03\xe8")  # close 1000
                received += await read_to_eof(stream)
            await probe.done.wait()
    head, _, frames = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    # RFC 6455 §1.3's example key and its accept value
    fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    assert {n.lower(): v for n, v in fields.items()}[b"sec-websocket-accept"] == \
        b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert frames == b"\x81\x02hi" + b"\x88\x02\x03\xe8"
    assert probe.scopes[0]["subprotocols"] == ["a", "b", "c"]
    assert probe.disconnect == {"type": "websocket.disconnect", "code": 1000, "reason": ""}


async def test_close_reason_longer_than_a_control_frame_is_truncated() -> None:
    """A close frame's reason has room for 123 bytes: a longer one is cut on a character
    boundary, not sent as an invalid frame."""

    async def script(receive: Receive, send: Send) -> None:
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4002, "reason": "é" * 100})

    with trio.fail_after(TIMEOUT):
        async with serve(scripted_app(script, trio.Event())) as srv:
            async with ws_connect(srv.url()) as ws:
                with pytest.raises(websockets.exceptions.ConnectionClosedError) as info:
                    await ws.recv()
    rcvd = info.value.rcvd
    assert rcvd is not None and rcvd.code == 4002
    assert rcvd.reason == "é" * 61  # 122 bytes


async def test_subprotocol_not_offered_is_http_500(server_log: list[logging.LogRecord]
                                                   ) -> None:
    async def script(receive: Receive, send: Send) -> None:
        await send({"type": "websocket.accept", "subprotocol": "nope"})

    with trio.fail_after(TIMEOUT):
        async with serve(scripted_app(script, trio.Event())) as srv:
            with pytest.raises(websockets.exceptions.InvalidStatus) as invalid:
                async with ws_connect(srv.url(), subprotocols=["yes"]):
                    pass  # pragma: no cover
    assert invalid.value.response.status_code == 500
    errors = [r for r in server_log if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert errors[0].exc_info[0] is ValueError


async def test_handshake_response_fields_from_accept_headers() -> None:
    """``websocket.accept`` headers are added; the fields the handshake owns are not
    overridden by the app's copies."""

    async def script(receive: Receive, send: Send) -> None:
        await send({"type": "websocket.accept",
                    "headers": [(b"x-accepted", b"yes"), (b"sec-websocket-accept", b"bogus"),
                                (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")]})
        await receive()

    with trio.fail_after(TIMEOUT):
        async with serve(scripted_app(script, trio.Event())) as srv:
            async with ws_connect(srv.url()) as ws:  # the handshake check would fail on bogus
                assert ws.response is not None
                assert ws.response.headers["X-Accepted"] == "yes"
                assert ws.response.headers.get_all("Set-Cookie") == ["a=1", "b=2"]
                assert ws.response.headers.get_all("Sec-WebSocket-Accept") != ["bogus"]


async def test_streamed_denial_response_body() -> None:
    """``websocket.http.response.body`` in several parts."""

    async def script(receive: Receive, send: Send) -> None:
        await send({"type": "websocket.http.response.start", "status": 418,
                    "headers": [(b"content-type", b"text/plain")]})
        for part in (b"I'm ", b"a ", b"teapot"):
            await send({"type": "websocket.http.response.body", "body": part,
                        "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b""})

    with trio.fail_after(TIMEOUT):
        async with serve(scripted_app(script, trio.Event())) as srv:
            with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
                async with tws_connect(srv.url()):
                    pass  # pragma: no cover
    assert rejected.value.status_code == 418
    assert rejected.value.body == b"I'm a teapot"


# ----------------------------------------------------------------------------- large messages


LARGE_BINARY = pattern(5 * MiB)
LARGE_TEXT = multibyte_text(MiB)  # a million characters, about 2.6 MiB of UTF-8


@pytest.mark.parametrize("client", ["websockets", "websockets-no-deflate", "trio-websocket",
                                    "httpx-ws"])
async def test_large_messages_round_trip(client: str, server_log: list[Any]) -> None:
    probe = Probe()
    assert len(LARGE_TEXT.encode()) > 2 * MiB
    with trio.fail_after(60):
        async with serve(echo_app(probe)) as srv:
            if client.startswith("websockets"):
                compression = None if client.endswith("no-deflate") else "deflate"
                async with ws_connect(srv.url(), max_size=16 * MiB,
                                      compression=compression) as ws:
                    await ws.send(LARGE_BINARY)
                    got_binary = await ws.recv()
                    await ws.send(LARGE_TEXT)
                    got_text = await ws.recv()
            elif client == "trio-websocket":
                async with tws_connect(srv.url(), max_message_size=16 * MiB) as tws:
                    await tws.send_message(LARGE_BINARY)
                    got_binary = await tws.get_message()
                    await tws.send_message(LARGE_TEXT)
                    got_text = await tws.get_message()
            else:
                async with httpx_ws_connect(srv.http_url(),
                                            max_message_size_bytes=16 * MiB) as hws:
                    await hws.send_bytes(LARGE_BINARY)
                    got_binary = await hws.receive_bytes()
                    await hws.send_text(LARGE_TEXT)
                    got_text = await hws.receive_text()
            await probe.done.wait()
    assert isinstance(got_binary, bytes) and sha(got_binary) == sha(LARGE_BINARY)
    assert isinstance(got_text, str) and sha(got_text) == sha(LARGE_TEXT)
    received = probe.received
    assert [sha(m.get("bytes") or m.get("text") or b"") for m in received] == [
        sha(LARGE_BINARY), sha(LARGE_TEXT)]
    assert type(received[0]["bytes"]) is bytes and type(received[1]["text"]) is str
    assert problems(server_log) == []


async def test_message_over_max_message_size_closes_1009() -> None:
    probe = Probe()
    config = WebSocketConfig(ping_interval=None, max_message_size=64 * KiB)
    with trio.fail_after(TIMEOUT):
        async with serve(echo_app(probe), websocket=config) as srv:
            async with ws_connect(srv.url(), compression=None) as ws:
                await ws.send(b"x" * (64 * KiB))  # at the limit: fine
                assert len(await ws.recv()) == 64 * KiB
                await ws.send(b"x" * (64 * KiB + 1))
                with pytest.raises(websockets.exceptions.ConnectionClosedError) as info:
                    await ws.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009
            await probe.done.wait()
    assert probe.disconnect is not None and probe.disconnect["code"] == 1009


# ----------------------------------------------------------------------------- permessage-deflate


COMPRESSIBLE = "trioserve speaks WebSocket. " * 40_000  # 1.1 MB of text that deflates well


async def test_permessage_deflate_negotiated_and_used(server_log: list[Any]) -> None:
    probe = Probe()
    with trio.fail_after(TIMEOUT):
        async with serve(echo_app(probe)) as srv:
            counting = CountingStream(await trio.open_tcp_stream("127.0.0.1", srv.port))
            async with ws_connect(srv.url(), stream=counting, max_size=4 * MiB) as ws:
                assert ws.response is not None
                negotiated = ws.response.headers["Sec-WebSocket-Extensions"]
                assert negotiated.startswith("permessage-deflate")
                for _ in range(3):  # context takeover across messages
                    await ws.send(COMPRESSIBLE)
                    assert await ws.recv() == COMPRESSIBLE
                await ws.send(LARGE_BINARY[:MiB])
                assert await ws.recv() == LARGE_BINARY[:MiB]
            await probe.done.wait()
    offered = [v for n, v in probe.scopes[0]["headers"] if n == b"sec-websocket-extensions"]
    assert offered and offered[0].startswith(b"permessage-deflate")
    # 3 x 1.1 MB of text and 1 MiB of incompressible bytes each way
    assert counting.sent < MiB + 256 * KiB, counting.sent
    assert counting.received < MiB + 256 * KiB, counting.received
    assert problems(server_log) == []


async def test_permessage_deflate_off() -> None:
    probe = Probe()
    config = WebSocketConfig(ping_interval=None, per_message_deflate=False)
    with trio.fail_after(TIMEOUT):
        async with serve(echo_app(probe), websocket=config) as srv:
            counting = CountingStream(await trio.open_tcp_stream("127.0.0.1", srv.port))
            async with ws_connect(srv.url(), stream=counting, max_size=4 * MiB) as ws:
                assert ws.response is not None
                assert "Sec-WebSocket-Extensions" not in ws.response.headers
                await ws.send(COMPRESSIBLE)
                assert await ws.recv() == COMPRESSIBLE
            await probe.done.wait()
    # the client offered it all the same
    assert any(n == b"sec-websocket-extensions" for n, _ in probe.scopes[0]["headers"])
    assert counting.received > len(COMPRESSIBLE)
    assert counting.sent > len(COMPRESSIBLE)


async def test_permessage_deflate_smaller_server_window() -> None:
    probe = Probe()
    config = WebSocketConfig(ping_interval=None, deflate_max_window_bits=10)
    with trio.fail_after(TIMEOUT):
        async with serve(echo_app(probe), websocket=config) as srv:
            async with ws_connect(srv.url(), max_size=4 * MiB) as ws:
                assert ws.response is not None
                negotiated = ws.response.headers["Sec-WebSocket-Extensions"]
                assert "server_max_window_bits=10" in negotiated
                for _ in range(2):
                    await ws.send(COMPRESSIBLE)
                    assert await ws.recv() == COMPRESSIBLE
                await ws.send(LARGE_TEXT)
                assert await ws.recv() == LARGE_TEXT
            await probe.done.wait()


@pytest.mark.parametrize("offer", [
    {"server_no_context_takeover": True, "client_no_context_takeover": True},
    {"server_max_window_bits": 9},
    {"server_max_window_bits": 10, "client_max_window_bits": 9},
], ids=["no-context-takeover", "server-window-9", "both-windows"])
async def test_permessage_deflate_offers_with_parameters(offer: dict[str, Any]) -> None:
    """The client's parameters are honoured (RFC 7692 §7) and traffic still round-trips."""
    probe = Probe()
    with trio.fail_after(TIMEOUT):
        async with serve(echo_app(probe)) as srv:
            async with ws_connect(srv.url(), compression=None, max_size=4 * MiB,
                                  extensions=[ClientPerMessageDeflateFactory(**offer)]) as ws:
                assert ws.response is not None
                agreed = ws.response.headers["Sec-WebSocket-Extensions"]
                if offer.get("server_no_context_takeover"):
                    assert "server_no_context_takeover" in agreed
                if "server_max_window_bits" in offer:
                    assert f"server_max_window_bits={offer['server_max_window_bits']}" in agreed
                for _ in range(2):
                    await ws.send(COMPRESSIBLE)
                    assert await ws.recv() == COMPRESSIBLE
                    await ws.send(LARGE_BINARY[:300 * KiB])
                    assert await ws.recv() == LARGE_BINARY[:300 * KiB]
            await probe.done.wait()


# ----------------------------------------------------------------------------- HTTP/2 (RFC 8441)


ENABLE_CONNECT_PROTOCOL = h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL
NO_ERROR = 0
CANCEL = 8


class WsClosed(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


@dataclass
class H2Stream:
    sid: int
    inbox: trio.MemorySendChannel[Any]
    events: trio.MemoryReceiveChannel[Any]
    websocket: bool = False  # an extended CONNECT
    deflate: PerMessageDeflate | None = None  # offered
    ws: WsConnection | None = None  # from a 200 on: before any DATA of the stream is read
    headers: list[tuple[bytes, bytes]] | None = None
    body: bytearray = field(default_factory=bytearray)
    response: trio.Event = field(default_factory=trio.Event)
    ended: trio.Event = field(default_factory=trio.Event)
    end_stream_received: bool = False
    reset_code: int | None = None

    @property
    def status(self) -> int:
        assert self.headers is not None
        return int(dict(self.headers)[b":status"])


class _GracefulH2Connection(h2.connection.H2Connection):
    """``h2`` takes a GOAWAY for the end of the connection (any frame after it is a protocol
    error, and what we had queued is dropped); RFC 9113 §6.8 lets the streams up to its
    last-stream-id run to completion, which is what a graceful shutdown relies on."""

    def _receive_goaway_frame(self, frame: Any) -> Any:
        pending = bytes(self._data_to_send)
        result = super()._receive_goaway_frame(frame)
        self._data_to_send += pending
        self.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
        return result


class H2WebSocketClient:
    """HTTP/2 client for WebSockets over extended CONNECT: one reader task handles the
    connection; each WebSocket stream has a wsproto client frame connection. DATA is
    acknowledged as it is read; DATA is sent within the server's flow-control windows."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = _GracefulH2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.streams: dict[int, H2Stream] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.server_settings: dict[int, int] = {}
        self.settings_received = trio.Event()
        self.window_changed = trio.Event()
        self.write_lock = trio.Lock()
        self.eof = False

    @classmethod
    @asynccontextmanager
    async def connect(cls, port: int, *, ssl_context: ssl.SSLContext | None = None
                      ) -> AsyncIterator[H2WebSocketClient]:
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream: trio.abc.Stream = tcp
        if ssl_context is not None:
            tls = trio.SSLStream(tcp, ssl_context, server_hostname="localhost")
            await tls.do_handshake()
            assert tls.selected_alpn_protocol() == "h2"
            stream = tls
        async with stream, trio.open_nursery() as nursery:
            client = cls(stream)
            client.conn.initiate_connection()
            await client.flush()
            nursery.start_soon(client._read_loop)
            await client.settings_received.wait()
            yield client
            nursery.cancel_scope.cancel()

    async def flush(self) -> None:
        async with self.write_lock:
            data = self.conn.data_to_send()
            if data:
                await self.stream.send_all(data)

    def _new_stream(self, sid: int) -> H2Stream:
        send, receive = trio.open_memory_channel[Any](1000)
        st = H2Stream(sid, send, receive)
        self.streams[sid] = st
        return st

    async def open_websocket(self, path: str, headers: list[tuple[str, str]] | None = None,
                             *, deflate: bool = False, scheme: str = "http") -> H2WebSocket:
        """Extended CONNECT for ``path``; with ``deflate``, offer permessage-deflate and use
        it if the server agrees."""
        sid = self.conn.get_next_available_stream_id()
        fields = [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", scheme),
                  (":path", path), (":authority", "127.0.0.1"),
                  ("sec-websocket-version", "13"), *(headers or [])]
        st = self._new_stream(sid)
        st.websocket = True
        if deflate:
            st.deflate = extension = PerMessageDeflate()
            offer = extension.offer()
            fields.append(("sec-websocket-extensions",
                           f"{extension.name}; {offer}" if isinstance(offer, str)
                           else extension.name))
        self.conn.send_headers(sid, [(n.encode(), v.encode()) for n, v in fields],
                               end_stream=False)
        await self.flush()
        await st.response.wait()
        return H2WebSocket(self, st)

    async def get(self, path: str) -> H2Stream:
        sid = self.conn.get_next_available_stream_id()
        st = self._new_stream(sid)
        self.conn.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"),
                                     (b":path", path.encode()), (b":authority", b"127.0.0.1")],
                               end_stream=True)
        await self.flush()
        await st.ended.wait()
        return st

    async def send_data(self, sid: int, data: bytes) -> None:
        view = memoryview(data)
        offset = 0
        while offset < len(view):
            changed = self.window_changed
            window = min(self.conn.local_flow_control_window(sid),
                         self.conn.max_outbound_frame_size)
            if window <= 0:
                await changed.wait()
                continue
            n = min(window, len(view) - offset)
            self.conn.send_data(sid, view[offset:offset + n].tobytes())
            offset += n
            await self.flush()

    async def end_stream(self, sid: int) -> None:
        """END_STREAM on our side, unless the stream is closed already (a server that ended
        its side may also reset the stream with NO_ERROR, RFC 9113 §8.1)."""
        try:
            self.conn.end_stream(sid)
        except h2.exceptions.StreamClosedError:
            return
        await self.flush()

    async def reset_stream(self, sid: int, code: int = 8) -> None:
        self.conn.reset_stream(sid, code)
        await self.flush()

    async def _read_loop(self) -> None:
        while True:
            try:
                data = await self.stream.receive_some(256 * KiB)
            except trio.BrokenResourceError:
                data = b""
            if not data:
                self.eof = True
                for st in self.streams.values():
                    st.ended.set()
                    st.inbox.close()
                return
            for ev in self.conn.receive_data(data):
                self._handle(ev)
            await self.flush()

    def _handle(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.RemoteSettingsChanged):
            for code, change in ev.changed_settings.items():
                self.server_settings[int(code)] = change.new_value
            self.settings_received.set()
            self._wake_writers()
        elif isinstance(ev, h2.events.ResponseReceived):
            st = self.streams[ev.stream_id]
            st.headers = list(ev.headers)
            if st.websocket and st.status == 200:
                # now: DATA right behind the HEADERS (in this very read) is WebSocket frames
                agreed = dict(st.headers).get(b"sec-websocket-extensions")
                extensions = []
                if agreed is not None:
                    extension = st.deflate
                    assert extension is not None, agreed
                    assert agreed.decode().partition(";")[0].strip() == extension.name
                    extension.finalize(agreed.decode())  # the whole field, name first
                    extensions.append(extension)
                st.ws = WsConnection(ConnectionType.CLIENT, extensions)
            st.response.set()
        elif isinstance(ev, h2.events.DataReceived):
            st = self.streams[ev.stream_id]
            self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            if st.ws is None:
                st.body += ev.data
                return
            if not ev.data:  # an empty DATA frame (END_STREAM): nothing for wsproto
                return
            st.ws.receive_data(ev.data)
            for wev in st.ws.events():
                if isinstance(wev, Ping):
                    self.conn.send_data(ev.stream_id, st.ws.send(wev.response()))
                else:
                    st.inbox.send_nowait(wev)
        elif isinstance(ev, h2.events.StreamEnded):
            st = self.streams[ev.stream_id]
            st.end_stream_received = True
            st.ended.set()
            st.inbox.close()
        elif isinstance(ev, h2.events.StreamReset):
            st = self.streams[ev.stream_id]
            st.reset_code = int(ev.error_code)
            st.response.set()
            st.ended.set()
            st.inbox.close()
        elif isinstance(ev, h2.events.WindowUpdated):
            self._wake_writers()
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = ev

    def _wake_writers(self) -> None:
        self.window_changed.set()
        self.window_changed = trio.Event()


class H2WebSocket:
    def __init__(self, client: H2WebSocketClient, st: H2Stream) -> None:
        self.client = client
        self.st = st
        self.sid = st.sid

    @property
    def ws(self) -> WsConnection:
        assert self.st.ws is not None, self.st.headers
        return self.st.ws

    async def send(self, data: str | bytes) -> None:
        await self.client.send_data(self.sid, self.ws.send(WsMessage(data=data)))

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        await self.client.send_data(self.sid, self.ws.send(CloseConnection(code, reason)))

    async def receive(self) -> str | bytes:
        """The next whole message; :class:`WsClosed` for the server's close frame (answered
        unless we closed first)."""
        parts: list[Any] = []
        while True:
            ev = await self.st.events.receive()
            if isinstance(ev, CloseConnection):
                if self.ws.state.name == "REMOTE_CLOSING":
                    await self.client.send_data(self.sid, self.ws.send(ev.response()))
                raise WsClosed(int(ev.code), ev.reason or "")
            assert isinstance(ev, TextMessage | BytesMessage), ev
            parts.append(ev.data)
            if ev.message_finished:
                if isinstance(ev, TextMessage):
                    return "".join(parts)
                return b"".join(parts)

    async def until_ended(self) -> None:
        await self.st.ended.wait()


def h2_echo_app(probes: dict[str, Probe]) -> ASGIApp:
    """WebSockets on ``/ws/NAME`` echo (with a probe per name); the text "close:CODE:REASON"
    makes the app close; ``/ws/raise`` raises after accepting; ``/ws/refuse`` closes before
    accepting; ``/ws/deny`` answers 401; HTTP requests get their path back."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body",
                        "body": f"http {scope['http_version']} {scope['path']}".encode()})
            return
        name = scope["path"].rpartition("/")[2]
        if name == "refuse":
            await receive()
            await send({"type": "websocket.close"})
            return
        if name == "deny":
            await receive()
            await send({"type": "websocket.http.response.start", "status": 401,
                        "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "websocket.http.response.body", "body": b"no entry"})
            return
        if name == "raise":
            await receive()
            await send({"type": "websocket.accept"})
            raise RuntimeError("the app broke over HTTP/2")
        if name == "ignore":  # returns without accepting: 500
            await receive()
            return
        probe = probes.setdefault(name, Probe())
        probe.scopes.append(scope)
        try:
            assert (await receive())["type"] == "websocket.connect"
            offered = scope["subprotocols"]
            await send({"type": "websocket.accept",
                        "subprotocol": offered[-1] if offered else None})
            probe.accepted.set()
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    probe.disconnect = message
                    return
                probe.received.append(message)
                text = message.get("text")
                if text is not None and text.startswith("close:"):
                    _, code, reason = text.split(":", 2)
                    await send({"type": "websocket.close", "code": int(code), "reason": reason})
                    return
                if text is not None:
                    await send({"type": "websocket.send", "text": f"{name}:{text}"})
                else:
                    await send({"type": "websocket.send", "bytes": message["bytes"]})
        finally:
            probe.done.set()

    return app


async def test_h2_extended_connect_websocket(server_log: list[Any]) -> None:
    probes: dict[str, Probe] = {}
    with trio.fail_after(TIMEOUT):
        async with serve(h2_echo_app(probes)) as srv, \
                H2WebSocketClient.connect(srv.port) as client:
            assert client.server_settings.get(ENABLE_CONNECT_PROTOCOL) == 1
            ws = await client.open_websocket("/ws/one?q=1",
                                             [("sec-websocket-protocol", "a, b")])
            assert ws.st.status == 200
            fields = dict(ws.st.headers or [])
            assert fields[b"sec-websocket-protocol"] == b"b"
            for name in (b"sec-websocket-accept", b"sec-websocket-extensions", b"upgrade",
                         b"connection"):
                assert name not in fields
            await ws.send("hello")
            assert await ws.receive() == "one:hello"
            big = pattern(300 * KiB)  # beyond the 64 KiB default windows, both ways
            await ws.send(big)
            assert await ws.receive() == big
            await ws.close(1000, "done")
            with pytest.raises(WsClosed) as closed:
                await ws.receive()
            assert (closed.value.code, closed.value.reason) == (1000, "done")
            await ws.until_ended()  # the server ends its side after the close handshake
            assert ws.st.end_stream_received
            assert ws.st.reset_code in (None, NO_ERROR)
            await client.end_stream(ws.sid)
            await probes["one"].done.wait()
    probe = probes["one"]
    (scope,) = probe.scopes
    assert scope["http_version"] == "2"
    assert scope["scheme"] == "ws"
    assert scope["path"] == "/ws/one"
    assert scope["raw_path"] == b"/ws/one"
    assert scope["query_string"] == b"q=1"
    assert scope["subprotocols"] == ["a", "b"]
    headers = scope["headers"]
    assert not any(n.startswith(b":") for n, _ in headers), headers
    assert (b"host", b"127.0.0.1") in headers
    assert (b"sec-websocket-version", b"13") in headers
    assert tuple(scope["server"]) == ("127.0.0.1", srv.port)
    assert scope["client"][0] == "127.0.0.1"
    assert "websocket.http.response" in scope["extensions"]
    assert probe.disconnect == {"type": "websocket.disconnect", "code": 1000, "reason": "done"}
    assert problems(server_log) == []


async def test_h2_several_websockets_and_a_request_on_one_connection(
        server_log: list[Any]) -> None:
    probes: dict[str, Probe] = {}
    with trio.fail_after(TIMEOUT):
        async with serve(h2_echo_app(probes)) as srv, \
                H2WebSocketClient.connect(srv.port) as client:
            sockets: dict[str, H2WebSocket] = {}

            async def open_one(name: str) -> None:
                sockets[name] = await client.open_websocket(f"/ws/{name}",
                                                            deflate=name == "b")

            async with trio.open_nursery() as nursery:
                for name in "abc":
                    nursery.start_soon(open_one, name)
            a, b, c = sockets["a"], sockets["b"], sockets["c"]
            assert len({a.sid, b.sid, c.sid}) == 3
            assert all(ws.st.status == 200 for ws in (a, b, c))
            assert b"permessage-deflate" in dict(b.st.headers or [])[b"sec-websocket-extensions"]
            assert b"sec-websocket-extensions" not in dict(a.st.headers or [])

            # interleaved, then all at once
            for i in range(3):
                for ws in sockets.values():
                    await ws.send(f"m{i}")
                for name, ws in sockets.items():
                    assert await ws.receive() == f"{name}:m{i}"
            async with trio.open_nursery() as nursery:
                for name, ws in sockets.items():
                    async def chat(name: str = name, ws: H2WebSocket = ws) -> None:
                        payload = COMPRESSIBLE if name == "b" else pattern(100 * KiB)
                        await ws.send(payload)
                        got = await ws.receive()
                        assert got == (f"b:{payload}" if name == "b" else payload)
                    nursery.start_soon(chat)

                # an ordinary request on the same connection meanwhile
                plain = await client.get("/plain?x=1")
            assert plain.status == 200 and bytes(plain.body) == b"http 2 /plain"

            await a.close(1000, "bye a")  # the client closes
            with pytest.raises(WsClosed) as closed_a:
                await a.receive()
            await b.send("close:4000:bye b")  # the app closes
            with pytest.raises(WsClosed) as closed_b:
                await b.receive()
            await c.close(4001, "x")
            with pytest.raises(WsClosed) as closed_c:
                await c.receive()
            assert (closed_a.value.code, closed_a.value.reason) == (1000, "bye a")
            assert (closed_b.value.code, closed_b.value.reason) == (4000, "bye b")
            assert (closed_c.value.code, closed_c.value.reason) == (4001, "x")
            for ws in (a, b, c):
                await ws.until_ended()
                assert ws.st.end_stream_received, ws.sid
                assert ws.st.reset_code in (None, NO_ERROR)
                await client.end_stream(ws.sid)
            for name in "abc":
                await probes[name].done.wait()
            # the connection is still good
            again = await client.get("/again")
            assert again.status == 200 and bytes(again.body) == b"http 2 /again"
            assert not client.eof
    assert all(p.scopes[0]["http_version"] == "2" for p in probes.values())
    assert probes["a"].disconnect == {"type": "websocket.disconnect", "code": 1000,
                                      "reason": "bye a"}
    assert probes["c"].disconnect == {"type": "websocket.disconnect", "code": 4001,
                                      "reason": "x"}
    assert problems(server_log) == []


async def test_h2_refusals_are_http_responses() -> None:
    with trio.fail_after(TIMEOUT):
        async with serve(h2_echo_app({})) as srv, \
                H2WebSocketClient.connect(srv.port) as client:
            refused = await client.open_websocket("/ws/refuse")
            await refused.until_ended()
            assert refused.st.status == 403
            assert refused.st.end_stream_received
            denied = await client.open_websocket("/ws/deny")
            await denied.until_ended()
            assert denied.st.status == 401
            assert bytes(denied.st.body) == b"no entry"
            assert dict(denied.st.headers or [])[b"content-type"] == b"text/plain"
            ignored = await client.open_websocket("/ws/ignore")
            await ignored.until_ended()
            assert ignored.st.status == 500
            ok = await client.get("/still-here")
            assert ok.status == 200


async def test_h2_exception_after_accept_closes_1011(server_log: list[logging.LogRecord]
                                                     ) -> None:
    with trio.fail_after(TIMEOUT):
        async with serve(h2_echo_app({})) as srv, \
                H2WebSocketClient.connect(srv.port) as client:
            ws = await client.open_websocket("/ws/raise")
            assert ws.st.status == 200
            with pytest.raises(WsClosed) as closed:
                await ws.receive()  # answered by receive()
            assert closed.value.code == 1011
            await ws.until_ended()
            assert ws.st.end_stream_received
            await client.end_stream(ws.sid)
    errors = [r for r in server_log if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None, problems(server_log)


@pytest.mark.parametrize("how", ["reset", "end_stream"])
async def test_h2_stream_ending_without_close_is_1006(how: str, server_log: list[Any]) -> None:
    probes: dict[str, Probe] = {}
    with trio.fail_after(TIMEOUT):
        async with serve(h2_echo_app(probes)) as srv, \
                H2WebSocketClient.connect(srv.port) as client:
            ws = await client.open_websocket("/ws/gone")
            await ws.send(b"\x00\x01")
            assert await ws.receive() == b"\x00\x01"
            if how == "reset":
                await client.reset_stream(ws.sid, CANCEL)
            else:
                await client.end_stream(ws.sid)
            await probes["gone"].done.wait()
            if how == "end_stream":
                await ws.until_ended()  # the server ends or resets its side too
            ok = await client.get("/after")  # the connection is unharmed
            assert ok.status == 200
    assert probes["gone"].disconnect is not None
    assert probes["gone"].disconnect["code"] == 1006
    assert [r for r in server_log if r.levelno >= logging.ERROR] == []


async def test_h2_large_messages(server_log: list[Any]) -> None:
    """5 MiB binary and a million multibyte characters through HTTP/2 flow control both ways
    (and once more with permessage-deflate)."""
    probes: dict[str, Probe] = {}
    with trio.fail_after(60):
        async with serve(h2_echo_app(probes)) as srv, \
                H2WebSocketClient.connect(srv.port) as client:
            ws = await client.open_websocket("/ws/big")
            await ws.send(LARGE_BINARY)
            got = await ws.receive()
            assert isinstance(got, bytes) and sha(got) == sha(LARGE_BINARY)
            await ws.send(LARGE_TEXT)
            assert sha(await ws.receive()) == sha("big:" + LARGE_TEXT)
            deflated = await client.open_websocket("/ws/deflated", deflate=True)
            assert b"sec-websocket-extensions" in dict(deflated.st.headers or [])
            await deflated.send(LARGE_TEXT)
            assert sha(await deflated.receive()) == sha("deflated:" + LARGE_TEXT)
            for sock in (ws, deflated):
                await sock.close()
                with pytest.raises(WsClosed):
                    await sock.receive()
                await sock.until_ended()
                await client.end_stream(sock.sid)
            await probes["big"].done.wait()
            await probes["deflated"].done.wait()
    assert [sha(m.get("bytes") or m.get("text") or b"") for m in probes["big"].received] == [
        sha(LARGE_BINARY), sha(LARGE_TEXT)]
    assert problems(server_log) == []


async def test_h2_shutdown_closes_websockets_with_1001() -> None:
    probes: dict[str, Probe] = {}
    with trio.fail_after(TIMEOUT):
        async with serve(h2_echo_app(probes)) as srv, \
                H2WebSocketClient.connect(srv.port) as client:
            ws = await client.open_websocket("/ws/s")
            await ws.send("x")
            assert await ws.receive() == "s:x"
            srv.shutdown.set()
            with pytest.raises(WsClosed) as closed:
                await ws.receive()  # answered
            assert closed.value.code == 1001
            await ws.until_ended()
            assert ws.st.end_stream_received
            await client.end_stream(ws.sid)
            await probes["s"].done.wait()
            assert client.goaway is not None
    assert probes["s"].disconnect is not None and probes["s"].disconnect["code"] == 1001


# ----------------------------------------------------------------------------- TLS


@pytest.mark.parametrize("client", ["websockets", "trio-websocket"])
async def test_wss_over_http1(client: str, certs: Certs, server_log: list[Any]) -> None:
    probe = Probe()
    with trio.fail_after(TIMEOUT):
        async with serve(echo_app(probe), tls=certs.tls()) as srv:
            url = srv.url("/secure?t=1").replace("127.0.0.1", "localhost")
            if client == "websockets":
                async with ws_connect(url, ssl=certs.client_context(), max_size=4 * MiB) as ws:
                    await ws.send("over tls")
                    assert await ws.recv() == "over tls"
                    await ws.send(LARGE_BINARY[:MiB])
                    assert await ws.recv() == LARGE_BINARY[:MiB]
            else:
                async with tws_connect(url, ssl_context=certs.client_context(),
                                       max_message_size=4 * MiB) as tws:
                    await tws.send_message("over tls")
                    assert await tws.get_message() == "over tls"
                    await tws.send_message(LARGE_BINARY[:MiB])
                    assert await tws.get_message() == LARGE_BINARY[:MiB]
            await probe.done.wait()
    (scope,) = probe.scopes
    assert scope["scheme"] == "wss"
    assert scope["http_version"] == "1.1"
    assert scope["path"] == "/secure" and scope["query_string"] == b"t=1"
    tls = scope["extensions"]["tls"]
    assert tls["server_cert"] == certs.leaf_pem
    assert tls["client_cert_chain"] == []
    assert tls["client_cert_name"] is None
    assert tls["tls_version"] in (0x0303, 0x0304)
    assert isinstance(tls["cipher_suite"], int)
    assert "websocket.http.response" in scope["extensions"]
    assert probe.disconnect is not None and probe.disconnect["code"] == 1000
    assert problems(server_log) == []


async def test_wss_over_http2(certs: Certs, server_log: list[Any]) -> None:
    probes: dict[str, Probe] = {}
    with trio.fail_after(TIMEOUT):
        async with serve(h2_echo_app(probes), tls=certs.tls()) as srv, \
                H2WebSocketClient.connect(srv.port,
                                          ssl_context=certs.client_context(["h2"])) as client:
            assert client.server_settings.get(ENABLE_CONNECT_PROTOCOL) == 1
            ws = await client.open_websocket("/ws/tls", scheme="https", deflate=True)
            assert ws.st.status == 200
            await ws.send("secure h2")
            assert await ws.receive() == "tls:secure h2"
            await ws.close()
            with pytest.raises(WsClosed) as closed:
                await ws.receive()
            assert closed.value.code == 1000
            await ws.until_ended()
            await client.end_stream(ws.sid)
            await probes["tls"].done.wait()
    (scope,) = probes["tls"].scopes
    assert scope["scheme"] == "wss"
    assert scope["http_version"] == "2"
    tls = scope["extensions"]["tls"]
    assert tls["server_cert"] == certs.leaf_pem
    assert tls["tls_version"] == 0x0304
    assert problems(server_log) == []
