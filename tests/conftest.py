"""Shared helpers: start a real server on 127.0.0.1 port 0 inside the test's nursery, talk to it
over real sockets."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import h11
import pytest
import trio
from trioserve.bridges.asgi import ASGIBridge

from trioserve import Bind, Config, Limits, Timeouts, serve
from trioserve.features import Application


@dataclasses.dataclass
class RunningServer:
    addresses: list[str]
    shutdown: trio.Event
    host: str = "127.0.0.1"
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def make_config(*, limits: dict[str, Any] | None = None, timeouts: dict[str, Any] | None = None,
                **kw: Any) -> Config:
    kw.setdefault("binds", (Bind.tcp("127.0.0.1", 0),))
    kw.setdefault("access_log", False)
    return Config(limits=Limits(**(limits or {})), timeouts=Timeouts(**(timeouts or {})), **kw)


@asynccontextmanager
async def run_server(app: Any, config: Config | None = None, *, asgi: bool = True,
                     lifespan: str = "auto") -> AsyncIterator[RunningServer]:
    """Serve ``app`` (an ASGI app when ``asgi``, else a features app) on port 0; shut it down
    gracefully on exit."""
    config = config or make_config()
    wrapped: Application = ASGIBridge(app, lifespan=lifespan) if asgi else app  # type: ignore
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(
            lambda task_status: serve(wrapped, config, shutdown=shutdown,
                                      install_signal_handlers=False, task_status=task_status))
        srv = RunningServer(addresses, shutdown)
        first = addresses[0]
        if first.startswith("http://"):
            hostport = first[len("http://"):]
            host, _, port = hostport.rpartition(":")
            srv.host = host.strip("[]")
            srv.port = int(port)
        try:
            yield srv
        finally:
            shutdown.set()


async def read_until_closed(stream: trio.abc.Stream) -> bytes:
    """Everything the peer sends until it closes (a reset counts as closing)."""
    chunks = []
    while True:
        try:
            chunk = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


async def raw_exchange(port: int, data: bytes, *, host: str = "127.0.0.1",
                       timeout: float = 10.0) -> bytes:  # noqa: ASYNC109
    """Send ``data``, half-close nothing, and read until the server closes (or ``timeout``)."""
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(data)
            return await read_until_closed(stream)


def parse_responses(data: bytes, methods: list[bytes] | None = None) -> list[
        tuple[h11.Response, bytes]]:
    """Parse every response in ``data`` with h11 (client side)."""
    methods = methods or []
    conn = h11.Connection(h11.CLIENT)
    out: list[tuple[h11.Response, bytes]] = []
    conn.receive_data(data)
    conn.receive_data(b"")
    i = 0
    while True:
        method = methods[i] if i < len(methods) else b"GET"
        conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
        conn.send(h11.EndOfMessage())
        resp: h11.Response | None = None
        body = b""
        while True:
            ev = conn.next_event()
            if isinstance(ev, h11.InformationalResponse):
                continue
            if isinstance(ev, h11.Response):
                resp = ev
            elif isinstance(ev, h11.Data):
                body += bytes(ev.data)
            elif isinstance(ev, h11.EndOfMessage):
                break
            elif ev is h11.NEED_DATA or isinstance(ev, h11.ConnectionClosed):
                return out
            elif ev is h11.PAUSED:  # a 2xx to CONNECT: what follows is a tunnel's
                if resp is not None:
                    out.append((resp, body))
                return out
        assert resp is not None
        out.append((resp, body))
        i += 1
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            return out
        try:
            conn.start_next_cycle()
        except h11.LocalProtocolError:
            return out


def assert_incomplete(data: bytes) -> None:
    """``data`` (everything received until the server closed) is a truncated response: an
    HTTP client reading it must fail instead of seeing a complete message."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    conn.receive_data(b"")
    with pytest.raises(h11.RemoteProtocolError, match="without sending complete message"):
        while True:
            ev = conn.next_event()
            assert not isinstance(ev, h11.EndOfMessage | h11.ConnectionClosed)
            assert ev is not h11.NEED_DATA


@pytest.fixture
def server_factory() -> Callable[..., Any]:
    return run_server
