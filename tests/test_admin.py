"""The admin endpoint (``Config.admin_bind``) and the server's metrics, over real loopback
sockets: real traffic (httpx over HTTP/1.1 and HTTP/2 with prior knowledge, trio-websocket,
raw sockets, the raw HTTP/2 frame client of ``test_http2_bad_input``) and then a scrape of
``/metrics``, parsed by ``prometheus_client``'s own parser so the exposition format is proven;
every limit's rejection counted (also when the client is gone before the answer, or the
response had begun); responses cut short (the application failing mid-response, clients
resetting, the graceful shutdown's deadline) counted as aborted, not under a status;
``/readyz`` 503 from the moment a drain begins while ``/livez`` and ``/metrics`` go on, the
admin endpoint closing last; the admin listener apart from the public ones; ``sd_notify``
(``READY=1``, ``WATCHDOG=1``, ``STOPPING=1``) received on a real datagram socket when asked for
(``systemd_notify=True``) and only then; and :mod:`trioserve.metrics` itself (merge, retire,
rendering).

The admin endpoint is bound to ``127.0.0.1:0`` next to the public ``127.0.0.1:0`` (two port-0
binds are two listeners; Config refuses an ``admin_bind`` equal to a public bind otherwise).
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
import trustme
from conftest import make_config, raw_exchange, run_server
from hyperframe.frame import RstStreamFrame
from procs import module_command, server_process
from prometheus_client.parser import text_string_to_metric_families
from test_http2_bad_input import (
    CANCEL,
    DATA,
    INITIAL_WINDOW_SIZE,
    INTERNAL_ERROR,
    PING,
    PROTOCOL_ERROR,
    h2_client,
    raw_frame,
)
from trio_websocket import ConnectionRejected, open_websocket_url

import trioserve.server as server_module
from trioserve import Bind, Config, Http2Limits, MinDataRate, Tls, serve
from trioserve.admin import AdminApp
from trioserve.config import ProxyConfig
from trioserve.features import (
    RequestBodyFeature,
    RequestContext,
    RequestFeature,
    ResponseBodyFeature,
    WebSocketDisconnected,
    WebSocketFeature,
)
from trioserve.listeners import ListenError
from trioserve.metrics import LIMITS, Metrics, merge, render_prometheus, retire
from trioserve.server import ListeningAddresses

TIMEOUT = 20
ADMIN = Bind.tcp("127.0.0.1", 0)
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# ------------------------------------------------------------------------------ the app


class App:
    """A features app: ``/echo`` returns the request body (``/stream`` too, as it arrives,
    after starting the response), ``/wait`` waits for :attr:`gate`, ``/big`` sends :attr:`big`
    bytes (``/pieces`` in 128-byte writes), ``/boom`` raises after 64 KiB of its response, a
    WebSocket echoes one message and waits for the close; anything else answers
    ``hello <path>``. :attr:`started` counts the calls in progress."""

    def __init__(self, big: int = 0) -> None:
        self.gate = trio.Event()
        self.started = 0
        self.big = big

    async def __call__(self, ctx: RequestContext) -> None:
        features = ctx.features
        body = features[ResponseBodyFeature]
        ws = features.get(WebSocketFeature)
        self.started += 1
        try:
            if ws is not None:
                await ws.accept()
                await ws.send(await ws.receive())
                try:
                    await ws.receive()
                except WebSocketDisconnected:
                    pass
                return
            path = features[RequestFeature].path
            if path == "/echo":
                data = b""
                while chunk := await features[RequestBodyFeature].receive():
                    data += chunk
                await body.complete(data)
            elif path == "/stream":
                await body.start()
                while chunk := await features[RequestBodyFeature].receive():
                    await body.send(chunk)
                await body.complete()
            elif path == "/boom":
                await body.send(b"x" * 65536)
                raise RuntimeError("the application fails in the middle of its response")
            elif path == "/wait":
                await self.gate.wait()
                await body.complete(b"done")
            elif path == "/big":
                await body.complete(b"x" * self.big)
            elif path == "/pieces":
                for _ in range(self.big // 128):
                    await body.send(b"x" * 128)
                await body.complete()
            else:
                await body.complete(b"hello " + path.encode())
        finally:
            self.started -= 1


async def wait_for(condition: Any) -> None:
    while not condition():  # noqa: ASYNC110 - conditions of the server's state, no event
        await trio.sleep(0.01)


# ------------------------------------------------------------------------------ scraping


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, parsed by ``prometheus_client``."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def scrape(admin_url: str) -> Samples:
    async with httpx.AsyncClient() as c:
        r = await c.get(admin_url + "/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(r.text)


async def scrape_until(admin_url: str, check: Any) -> Samples:
    """Scrape until ``check(samples)`` holds (counting points after the response was sent,
    and gauges of connections being closed, may trail the client by a moment)."""
    while True:
        samples = await scrape(admin_url)
        if check(samples):
            return samples
        await trio.sleep(0.02)


@asynccontextmanager
async def admin_server(app: App, **kw: Any) -> AsyncIterator[tuple[str, str]]:
    """``app`` served on 127.0.0.1:0 with the admin endpoint on :data:`ADMIN`; yields the
    public and the admin URL."""
    kw.setdefault("admin_bind", ADMIN)
    async with run_server(app, make_config(**kw), asgi=False) as srv:
        admin = srv.addresses.admin  # type: ignore[attr-defined]
        assert len(admin) == 1
        yield srv.url, admin[0]


def port_of(url: str) -> int:
    return int(url.rpartition(":")[2])


@asynccontextmanager
async def serving(app: Any, config: Config, **kw: Any) -> AsyncIterator[ListeningAddresses]:
    """``serve(app, config, **kw)`` in the background (no signal handlers), shut down
    gracefully on exit; yields what it passed to ``task_status.started()``."""
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(lambda task_status: serve(
            app, config, shutdown=shutdown, install_signal_handlers=False,
            task_status=task_status, **kw))
        try:
            yield addresses
        finally:
            shutdown.set()


# ------------------------------------------------------------------------------ traffic


async def test_traffic_over_http1_http2_and_websocket_is_counted() -> None:
    """Requests by protocol and status, the duration histogram, body bytes, connections,
    HTTP/2 streams and WebSockets, a 413 (body_size), all as the scrape shows them."""
    app = App()
    async with admin_server(app, limits={"max_request_body_size": 1000}) as (url, admin):
        with trio.fail_after(TIMEOUT):
            assert port_of(admin) != port_of(url)
            async with httpx.AsyncClient() as h1:
                for _ in range(3):
                    assert (await h1.get(url + "/hello")).status_code == 200
                r = await h1.post(url + "/echo", content=b"a" * 500)
                assert (r.status_code, r.content) == (200, b"a" * 500)
                assert (await h1.post(url + "/echo", content=b"b" * 2000)).status_code == 413
            async with httpx.AsyncClient(http1=False, http2=True) as h2:
                for _ in range(2):
                    r = await h2.get(url + "/hello")
                    assert (r.status_code, r.http_version) == (200, "HTTP/2")
                r = await h2.post(url + "/echo", content=b"c" * 300)
                assert (r.status_code, r.content) == (200, b"c" * 300)
                # While this connection is open and a stream waits: the gauges.
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(h2.get, url + "/wait")
                    await wait_for(lambda: app.started == 1)
                    live = await scrape(admin)
                    assert value(live, "trioserve_connections_active", protocol="http2") == 1
                    assert value(live, "trioserve_http2_streams_active") == 1
                    await trio.sleep(0.05)
                    app.gate.set()
            ws_url = url.replace("http://", "ws://") + "/ws"
            async with open_websocket_url(ws_url) as ws:
                await ws.send_message("ping")
                assert await ws.get_message() == "ping"
                live = await scrape(admin)
                assert value(live, "trioserve_websockets_active") == 1

            m = await scrape_until(admin, lambda s: (
                value(s, "trioserve_websockets_active") == 0
                and value(s, "trioserve_connections_active", protocol="http1") == 0
                and value(s, "trioserve_connections_active", protocol="http2") == 0))
            assert value(m, "trioserve_requests_total", protocol="1.1", status="200") == 4
            assert value(m, "trioserve_requests_total", protocol="1.1", status="413") == 1
            assert value(m, "trioserve_requests_total", protocol="1.1", status="101") == 1
            assert value(m, "trioserve_requests_total", protocol="2", status="200") == 4
            assert value(m, "trioserve_rejected_total", limit="body_size") == 1
            assert value(m, "trioserve_request_body_bytes_total") == 500 + 300
            assert value(m, "trioserve_response_bytes_total") > 500 + 300 + 4 * len("hello /hello")
            assert value(m, "trioserve_websockets_total") == 1
            assert value(m, "trioserve_http2_streams_active") == 0
            # HTTP/1.1 (kept alive until the 413 closed it), HTTP/2, the WebSocket's
            assert value(m, "trioserve_connections_accepted_total") == 3
            assert value(m, "trioserve_ready") == 1
            for protocol, count in (("1.1", 6), ("2", 4)):
                assert value(m, "trioserve_request_duration_seconds_count",
                             protocol=protocol) == count
                buckets = [v for (name, labels), v in m.items()
                           if name == "trioserve_request_duration_seconds_bucket"
                           and ("protocol", protocol) in labels]
                assert buckets == sorted(buckets) and buckets[-1] == count
                assert value(m, "trioserve_request_duration_seconds_bucket", protocol=protocol,
                             le="+Inf") == count
                assert 0 < value(m, "trioserve_request_duration_seconds_sum",
                                 protocol=protocol) < 60
            # The waiting request took 50 ms at least.
            assert value(m, "trioserve_request_duration_seconds_bucket", protocol="2",
                         le="0.025") < 4
            for limit in LIMITS:
                if limit != "body_size":
                    assert value(m, "trioserve_rejected_total", limit=limit) == 0


async def test_family_types_and_help() -> None:
    """Every family has HELP and the right TYPE, counters end in ``_total``."""
    async with admin_server(App()) as (url, admin), httpx.AsyncClient() as c:
        with trio.fail_after(TIMEOUT):
            await c.get(url + "/")
            text = (await c.get(admin + "/metrics")).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    kinds = {name: f.type for name, f in families.items()}
    assert kinds["trioserve_requests"] == "counter"
    assert kinds["trioserve_request_duration_seconds"] == "histogram"
    assert kinds["trioserve_connections_active"] == "gauge"
    assert kinds["trioserve_rejected"] == "counter"
    assert all(f.documentation for f in families.values())
    assert all(name.startswith("trioserve_") for name in families)
    for line in text.splitlines():
        if line.startswith("# TYPE ") and line.endswith(" counter"):
            assert line.split()[2].endswith("_total"), line


# ------------------------------------------------------------------------------ limits


async def test_http1_head_and_body_limits_are_counted() -> None:
    """414 (request_line), 431 (headers), 408 waiting for the head (headers_timeout), 408 for
    a body that stops (body_rate) and a malformed head (400, not a limit)."""
    app = App()
    async with admin_server(app, limits={
            "max_request_line_size": 100, "max_request_headers_count": 5,
            "min_request_body_data_rate": MinDataRate(bytes_per_second=1000, grace_period=0.5)},
            timeouts={"request_headers": 1.0}) as (url, admin):
        port = port_of(url)
        answers: dict[str, bytes] = {}

        async def send(name: str, data: bytes) -> None:
            answers[name] = await raw_exchange(port, data, timeout=TIMEOUT)

        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send, "line", b"GET /" + b"a" * 200 + b" HTTP/1.1\r\n\r\n")
                nursery.start_soon(send, "headers", b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(
                    b"x-%d: y\r\n" % i for i in range(10)) + b"\r\n")
                nursery.start_soon(send, "head_timeout", b"GET / HTTP/1.1\r\nHost: x\r\n")
                nursery.start_soon(send, "body_rate", b"POST /echo HTTP/1.1\r\nHost: x\r\n"
                                   b"Content-Length: 100\r\n\r\n0123456789")
                nursery.start_soon(send, "malformed", b"GET / HTTP/1.1\r\nHost: x\r\n"
                                   b"bad header\r\n\r\n")
            expected = {"line": b" 414 ", "headers": b" 431 ", "head_timeout": b" 408 ",
                        "body_rate": b" 408 ", "malformed": b" 400 "}
            for name, status in expected.items():
                assert answers[name].startswith(b"HTTP/1.1" + status), (name, answers[name])
            m = await scrape_until(admin, lambda s: value(
                s, "trioserve_rejected_total", limit="body_rate") == 1)
        for limit in ("request_line", "headers", "headers_timeout", "body_rate"):
            assert value(m, "trioserve_rejected_total", limit=limit) == 1, limit
        for status in ("400", "408", "414", "431"):
            assert value(m, "trioserve_bad_requests_total", protocol="http1", status=status) == 1
        # The body refused after the app began is an answered request; heads are not.
        assert value(m, "trioserve_requests_total", protocol="1.1", status="408") == 1
        assert ("trioserve_requests_total", (("protocol", "1.1"), ("status", "414"))) not in m


async def test_concurrency_and_websocket_limits_are_counted() -> None:
    """503 for a request over ``max_concurrent_requests`` (concurrency) and for a WebSocket
    over ``max_concurrent_upgraded_connections`` (websockets)."""
    app = App()
    async with admin_server(app, limits={"max_concurrent_requests": 2,
                                         "max_concurrent_upgraded_connections": 1}) \
            as (url, admin):
        ws_url = url.replace("http://", "ws://") + "/ws"
        with trio.fail_after(TIMEOUT):
            async with open_websocket_url(ws_url) as ws, httpx.AsyncClient() as c, \
                    trio.open_nursery() as nursery:
                await ws.send_message("x")
                assert await ws.get_message() == "x"
                with pytest.raises(ConnectionRejected) as rejected:
                    async with open_websocket_url(ws_url):
                        pass
                assert rejected.value.status_code == 503
                nursery.start_soon(c.get, url + "/wait")
                await wait_for(lambda: app.started == 2)
                r = await c.get(url + "/hello")
                assert (r.status_code, r.headers["retry-after"]) == (503, "1")
                app.gate.set()
            m = await scrape_until(admin, lambda s: value(s, "trioserve_websockets_active") == 0)
        assert value(m, "trioserve_rejected_total", limit="concurrency") == 1
        assert value(m, "trioserve_rejected_total", limit="websockets") == 1
        assert value(m, "trioserve_requests_total", protocol="1.1", status="503") == 2
        assert value(m, "trioserve_websockets_total") == 1


async def test_http2_limits_are_counted() -> None:
    """A stream over ``max_streams_per_connection`` (h2_streams), a header list over the count
    (431: headers), a PING flood (h2_control_frames) and a rapid reset (h2_resets)."""
    app = App()
    limits = {"max_request_headers_count": 5,
              "http2": Http2Limits(max_streams_per_connection=2,
                                   max_control_frames_per_second=50)}
    async with admin_server(app, limits=limits) as (url, admin):
        port = port_of(url)
        with trio.fail_after(TIMEOUT):
            async with h2_client(port) as c:
                await c.send(c.get(1, "/wait"), c.get(3, "/wait"), c.get(5, "/wait"))
                assert await c.expect_reset(5) == 7  # REFUSED_STREAM
                await wait_for(lambda: app.started == 2)
                app.gate.set()
                assert (await c.response(1)).status == 200
                assert (await c.response(3)).status == 200
                extra = [(f"x-{i}", "y") for i in range(10)]
                await c.send(c.get(7, "/hello", extra=extra))
                assert (await c.response(7)).status == 431
            async with h2_client(port) as c:
                await c.send(*[raw_frame(PING, 0, 0, struct.pack(">Q", i)) for i in range(200)])
                with trio.move_on_after(5):
                    await c.read_until_closed()
                assert c.goaway is not None
            m = await scrape_until(admin, lambda s: value(
                s, "trioserve_connections_active", protocol="http2") == 0)
        assert value(m, "trioserve_rejected_total", limit="h2_streams") == 1
        assert value(m, "trioserve_rejected_total", limit="headers") == 1
        assert value(m, "trioserve_rejected_total", limit="h2_control_frames") == 1
        assert value(m, "trioserve_bad_requests_total", protocol="http2", status="431") == 1
        assert value(m, "trioserve_requests_total", protocol="2", status="200") == 2

    app = App()
    async with admin_server(app, limits={"http2": Http2Limits(max_resets_per_second=10)}) \
            as (url, admin):
        with trio.fail_after(TIMEOUT):
            async with h2_client(port_of(url)) as c:
                ids = [1 + 2 * i for i in range(30)]
                await c.send(*[c.get(s, "/wait") for s in ids])
                await wait_for(lambda: app.started == 30)
                await c.send(*[RstStreamFrame(s, error_code=CANCEL) for s in ids])
                await c.read_until_closed()
                assert c.goaway is not None
            app.gate.set()  # the apps of the reset streams return
            m = await scrape_until(admin, lambda s: value(
                s, "trioserve_http2_streams_active") == 0)
        assert value(m, "trioserve_rejected_total", limit="h2_resets") == 1


async def test_slow_reader_is_counted_as_response_rate() -> None:
    """A client that stops reading a large response is dropped at the minimum response data
    rate (response_rate)."""
    app = App(big=32 * 1024 * 1024)
    async with admin_server(app, limits={"min_response_data_rate": MinDataRate(
            bytes_per_second=10**9, grace_period=0.5)}) as (url, admin):
        with trio.fail_after(TIMEOUT):
            sock = trio.socket.socket()
            with sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                await sock.connect(("127.0.0.1", port_of(url)))
                await sock.send(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
                await scrape_until(admin, lambda s: value(
                    s, "trioserve_rejected_total", limit="response_rate") == 1)


async def test_http2_zero_window_is_counted_as_response_rate() -> None:
    """An HTTP/2 client that never opens its flow-control window: the stream is reset at the
    minimum response data rate, counted once as response_rate."""
    app = App(big=64 * 1024)
    async with admin_server(app, limits={"min_response_data_rate": MinDataRate(
            bytes_per_second=240, grace_period=0.3)}) as (url, admin):
        with trio.fail_after(TIMEOUT):
            async with h2_client(port_of(url), {INITIAL_WINDOW_SIZE: 0}) as c:
                await c.send(c.get(1, "/pieces"))
                assert await c.expect_reset(1) == CANCEL
                m = await scrape_until(admin, lambda s: value(
                    s, "trioserve_rejected_total", limit="response_rate") == 1)
        assert value(m, "trioserve_rejected_total", limit="h2_streams") == 0


async def test_proxy_protocol_failures_are_counted() -> None:
    """Connections closed for want of a valid PROXY header (none, an invalid one, from an
    untrusted peer) count as proxy_protocol; a good one does not."""
    good = b"PROXY TCP4 203.0.113.7 192.0.2.1 1 2\r\nGET / HTTP/1.1\r\nhost: x\r\n" \
           b"connection: close\r\n\r\n"
    async with admin_server(App(), proxy=ProxyConfig(proxy_protocol=True)) as (url, admin):
        port = port_of(url)
        with trio.fail_after(TIMEOUT):
            assert await raw_exchange(port, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n") == b""
            assert await raw_exchange(port, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n") == b""
            assert b" 200 " in await raw_exchange(port, good)
            m = await scrape_until(admin, lambda s: value(
                s, "trioserve_rejected_total", limit="proxy_protocol") >= 2)
        assert value(m, "trioserve_rejected_total", limit="proxy_protocol") == 2
    async with admin_server(App(), proxy=ProxyConfig(proxy_protocol=True,
                                                     trusted=("10.0.0.0/8",))) as (url, admin):
        with trio.fail_after(TIMEOUT):
            assert await raw_exchange(port_of(url), good) == b""
            m = await scrape_until(admin, lambda s: value(
                s, "trioserve_rejected_total", limit="proxy_protocol") == 1)


def send_and_reset(port: int, data: bytes) -> None:
    """A client that sends ``data`` and is gone at once: a reset (``SO_LINGER`` 0) right
    behind the request, before the server reads it (blocking calls: the server's task cannot
    run in between)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.sendall(data)


WS_HANDSHAKE = (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n")


async def test_limits_count_refusals_of_clients_already_gone() -> None:
    """A request over ``max_concurrent_requests`` and a WebSocket over
    ``max_concurrent_upgraded_connections`` from clients that reset right behind their
    request: the 503 cannot be sent, the refusal is counted all the same (and the request as
    aborted, not as a 503)."""
    app = App()
    async with admin_server(app, limits={"max_concurrent_requests": 2,
                                         "max_concurrent_upgraded_connections": 1}) \
            as (url, admin):
        port = port_of(url)
        with trio.fail_after(TIMEOUT):
            async with open_websocket_url(url.replace("http://", "ws://") + "/ws") as ws, \
                    httpx.AsyncClient() as c, trio.open_nursery() as nursery:
                await ws.send_message("x")
                assert await ws.get_message() == "x"
                for _ in range(3):
                    send_and_reset(port, WS_HANDSHAKE)  # 1 request of 2: the WebSocket limit
                await scrape_until(admin, lambda s: value(
                    s, "trioserve_requests_aborted_total", protocol="1.1") == 3)
                nursery.start_soon(c.get, url + "/wait")
                await wait_for(lambda: app.started == 2)
                for _ in range(3):
                    send_and_reset(port, b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
                m = await scrape_until(admin, lambda s: value(
                    s, "trioserve_requests_aborted_total", protocol="1.1") == 6)
                app.gate.set()
        assert value(m, "trioserve_rejected_total", limit="websockets") == 3
        assert value(m, "trioserve_rejected_total", limit="concurrency") == 3
        assert ("trioserve_requests_total", (("protocol", "1.1"), ("status", "503"))) not in m


def answered(m: Samples, protocol: str) -> float:
    """The requests of ``trioserve_requests_total`` over ``protocol``, all statuses."""
    return sum(v for (name, labels), v in m.items()
               if name == "trioserve_requests_total" and ("protocol", protocol) in labels)


async def test_responses_cut_short_are_counted_as_aborted() -> None:
    """Requests whose response never completed, counted in
    ``trioserve_requests_aborted_total`` and not under the status they would have had (nor in
    the duration histogram): an application that fails in the middle of its response (HTTP/1.1
    and HTTP/2), a client that resets its connection while the application works (HTTP/1.1),
    an HTTP/2 client that cancels its stream (RST_STREAM CANCEL). Their bytes still count."""
    app = App()
    async with admin_server(app) as (url, admin):
        port = port_of(url)
        with trio.fail_after(TIMEOUT):
            for kw in ({}, {"http1": False, "http2": True}):
                async with httpx.AsyncClient(**kw) as c:
                    with pytest.raises(httpx.TransportError):
                        await c.get(url + "/boom")
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
                await wait_for(lambda: app.started == 1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await trio.sleep(0.1)  # (the reset reaches the server before the response)
            app.gate.set()
            await wait_for(lambda: app.started == 0)
            app.gate = trio.Event()
            async with h2_client(port) as h2:
                await h2.send(h2.get(1, "/wait"))
                await wait_for(lambda: app.started == 1)
                await h2.send(RstStreamFrame(1, error_code=CANCEL))
                await trio.sleep(0.1)
                app.gate.set()
                await wait_for(lambda: app.started == 0)
            m = await scrape_until(admin, lambda s: value(
                s, "trioserve_http2_streams_active") == 0 and value(
                s, "trioserve_connections_active", protocol="http1") == 0)
            # one that completes, for contrast
            async with httpx.AsyncClient() as c:
                assert (await c.get(url + "/wait")).status_code == 200
            done = await scrape_until(admin, lambda s: answered(s, "1.1") == 1)
    for protocol in ("1.1", "2"):
        assert value(m, "trioserve_requests_aborted_total", protocol=protocol) == 2
        assert answered(m, protocol) == 0
        assert ("trioserve_request_duration_seconds_count", (("protocol", protocol),)) not in m
    assert value(m, "trioserve_response_bytes_total") >= 2 * 65536
    assert value(done, "trioserve_requests_total", protocol="1.1", status="200") == 1
    assert value(done, "trioserve_request_duration_seconds_count", protocol="1.1") == 1
    assert value(done, "trioserve_requests_aborted_total", protocol="1.1") == 2


async def test_body_limits_firing_after_the_response_began_are_counted_once() -> None:
    """``max_request_body_size`` and the minimum request body data rate firing while the
    response is already under way (no 413 or 408 can be sent: the exchange is cut short),
    over HTTP/1.1 and HTTP/2: each counted once by its limit, the request as aborted. A 413
    answered before any response is counted once too, under its status."""
    app = App()
    async with admin_server(app, limits={
            "max_request_body_size": 1000,
            "min_request_body_data_rate": MinDataRate(bytes_per_second=1000,
                                                      grace_period=0.5)}) as (url, admin):
        port = port_of(url)
        with trio.fail_after(TIMEOUT):
            for kw in ({}, {"http1": False, "http2": True}):
                async with httpx.AsyncClient(**kw) as c:
                    with pytest.raises(httpx.TransportError):
                        await c.post(url + "/stream", content=b"a" * 5000)
            async with httpx.AsyncClient() as c:
                r = await c.post(url + "/echo", content=b"b" * 2000)
                assert r.status_code == 413
            # a body that stops arriving, its response begun
            stalled = await trio.open_tcp_stream("127.0.0.1", port)
            async with stalled, h2_client(port) as h2:
                await stalled.send_all(b"POST /stream HTTP/1.1\r\nHost: x\r\n"
                                       b"Content-Length: 100\r\n\r\n0123456789")
                await h2.send(h2.get(1, "/stream", end_stream=False),
                              raw_frame(DATA, 0, 1, b"0123456789"))
                assert await h2.expect_reset(1) == INTERNAL_ERROR
                m = await scrape_until(admin, lambda s: value(
                    s, "trioserve_rejected_total", limit="body_rate") == 2 and value(
                    s, "trioserve_requests_aborted_total", protocol="1.1") == 2)
    assert value(m, "trioserve_rejected_total", limit="body_size") == 3
    assert value(m, "trioserve_rejected_total", limit="body_rate") == 2
    assert value(m, "trioserve_requests_total", protocol="1.1", status="413") == 1
    assert value(m, "trioserve_requests_aborted_total", protocol="2") == 2
    assert answered(m, "2") == 0


async def test_requests_cancelled_at_the_graceful_deadline_are_counted_as_aborted() -> None:
    """Requests still running when the graceful shutdown's deadline cancels them (HTTP/1.1,
    HTTP/2, a WebSocket whose client never answers the close): counted as aborted, once, in
    the ``Metrics`` the embedding program passed (read after ``serve()`` returned)."""
    metrics = Metrics()
    config = make_config(timeouts={"graceful": 0.5})
    app = App()
    with trio.fail_after(TIMEOUT):
        async with AsyncExitStack() as clients:  # (closed once serve() has returned)
            async with serving(app, config, metrics=metrics) as addresses:
                port = port_of(addresses[0])
                h1 = await clients.enter_async_context(
                    await trio.open_tcp_stream("127.0.0.1", port))
                ws = await clients.enter_async_context(
                    await trio.open_tcp_stream("127.0.0.1", port))
                h2 = await clients.enter_async_context(h2_client(port))
                await h1.send_all(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
                await h2.send(h2.get(1, "/wait"))
                await ws.send_all(WS_HANDSHAKE)
                assert (await ws.receive_some(4096)).startswith(b"HTTP/1.1 101 ")
                await wait_for(lambda: app.started == 3)
                assert metrics.snapshot()["counters"]["requests_aborted"] == {}
                # serve() shuts down: the apps never return, the clients never answer
    counters = metrics.snapshot()["counters"]
    assert counters["requests_aborted"] == {"1.1": 2, "2": 1}
    assert counters["requests"] == {}
    assert metrics.requests == 3


async def test_malformed_requests_are_bad_requests(tmp_path: Path) -> None:
    """Plain HTTP sent to a TLS port (answered 400 in words) and a malformed HTTP/2 request
    (reset with PROTOCOL_ERROR) are counted in ``trioserve_bad_requests_total`` as 400."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile = tmp_path / "server.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    config = make_config(tls=Tls(certfile=str(certfile)), admin_bind=ADMIN)
    async with serving(App(), config) as addresses:
        url, admin = addresses[0], addresses.admin[0]
        assert url.startswith("https://")
        with trio.fail_after(TIMEOUT):
            answer = await raw_exchange(port_of(url), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 400 ")
            m = await scrape_until(admin, lambda s: (
                "trioserve_bad_requests_total", (("protocol", "http1"), ("status", "400"))) in s)
        assert value(m, "trioserve_bad_requests_total", protocol="http1", status="400") == 1
    async with admin_server(App()) as (url, admin):
        with trio.fail_after(TIMEOUT):
            async with h2_client(port_of(url)) as h2:
                fields = [*h2.request_headers(), (b"connection", b"keep-alive")]
                await h2.send(h2.headers_frame(1, fields))
                assert await h2.expect_reset(1) == PROTOCOL_ERROR
                await h2.send(h2.get(3, "/"))
                assert (await h2.response(3)).status == 200
            m = await scrape_until(admin, lambda s: answered(s, "2") == 1)
        assert value(m, "trioserve_bad_requests_total", protocol="http2", status="400") == 1
        assert ("trioserve_requests_aborted_total", (("protocol", "2"),)) not in m


# ------------------------------------------------------------------------------ endpoints


async def test_admin_routes_and_public_listener_apart() -> None:
    """The admin port is not the public one; ``/metrics`` on the public listener is the app's
    path; HEAD, 404 and 405 (with Allow) on the admin endpoint."""
    async with admin_server(App()) as (url, admin), httpx.AsyncClient() as c:
        with trio.fail_after(TIMEOUT):
            assert port_of(admin) != port_of(url)
            r = await c.get(url + "/metrics")
            assert (r.status_code, r.text) == (200, "hello /metrics")
            r = await c.get(admin + "/livez")
            assert (r.status_code, r.text) == (200, "ok\n")
            r = await c.get(admin + "/readyz")
            assert (r.status_code, r.text) == (200, "ready\n")
            r = await c.head(admin + "/metrics")
            assert r.status_code == 200 and r.content == b""
            assert int(r.headers["content-length"]) > 100
            r = await c.get(admin + "/")
            assert r.status_code == 404
            r = await c.post(admin + "/readyz", content=b"x")
            assert (r.status_code, r.headers["allow"]) == (405, "GET, HEAD")
            # The admin endpoint's own traffic is not counted.
            m = await scrape(admin)
            assert value(m, "trioserve_requests_total", protocol="1.1", status="200") == 1


async def test_admin_bind_failure_is_a_listen_error() -> None:
    """An admin address in use: ``ListenError`` naming it, before anything is served."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = make_config(admin_bind=Bind.tcp("127.0.0.1", port))
        with trio.fail_after(TIMEOUT), pytest.raises(ListenError, match=f"127.0.0.1:{port}"):
            await serve(App(), config, install_signal_handlers=False)


async def wait_refused(port: int) -> None:
    """Wait until connecting to ``port`` is refused (its listener closed)."""
    while True:
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError:
            return
        await stream.aclose()
        await trio.sleep(0.01)


class StartingApp(App):
    """An app whose start-up (the lifespan) waits for :attr:`startup`."""

    def __init__(self) -> None:
        super().__init__()
        self.startup = trio.Event()

    async def run_lifespan(self, stop: trio.Event, *,
                           task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.startup.wait()
        task_status.started()
        await stop.wait()


async def test_readiness_through_start_up_and_drain(tmp_path: Path) -> None:
    """The admin endpoint is up during the app's start-up (``/readyz`` 503 "not ready",
    ``/livez`` 200), ready once listening, 503 "draining" as soon as a graceful shutdown begins
    while a slow request keeps the server draining (``/livez`` and ``/metrics`` still answer,
    the public listener is closed), and closes last."""
    sock_path = str(tmp_path / "admin.sock")
    app = StartingApp()
    config = make_config(admin_bind=Bind.unix(sock_path))
    shutdown = trio.Event()
    transport = httpx.AsyncHTTPTransport(uds=sock_path)
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as admin:
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                started: list[list[str]] = []

                async def run() -> None:
                    started.append(await nursery.start(lambda task_status: serve(
                        app, config, shutdown=shutdown, install_signal_handlers=False,
                        task_status=task_status)))

                nursery.start_soon(run)
                await wait_for(lambda: os.path.exists(sock_path))
                r = await admin.get("/readyz")
                assert (r.status_code, r.text) == (503, "not ready\n")
                assert (await admin.get("/livez")).status_code == 200
                app.startup.set()
                await wait_for(lambda: bool(started))
                addresses = started[0]
                assert addresses.admin == [f"unix:{sock_path}"]  # type: ignore[attr-defined]
                assert (await admin.get("/readyz")).status_code == 200
                url = addresses[0]
                port = port_of(url)
                async with httpx.AsyncClient() as public:
                    slow = trio.Event()

                    async def slow_request() -> None:
                        r = await public.get(url + "/wait")
                        assert (r.status_code, r.text) == (200, "done")
                        slow.set()

                    nursery.start_soon(slow_request)
                    await wait_for(lambda: app.started == 1)
                    shutdown.set()
                    while (r := await admin.get("/readyz")).status_code == 200:  # noqa: ASYNC110
                        await trio.sleep(0.01)
                    assert (r.status_code, r.text) == (503, "draining\n")
                    assert (await admin.get("/livez")).status_code == 200
                    m = parse((await admin.get("/metrics")).text)
                    assert value(m, "trioserve_ready") == 0
                    await wait_refused(port)
                    assert not slow.is_set()
                    app.gate.set()
                    await slow.wait()
        # serve() returned: the admin endpoint is gone too.
        assert not await trio.Path(sock_path).exists()
        with pytest.raises(httpx.TransportError):
            await admin.get("/livez")


# ------------------------------------------------------------------------------ systemd


def notify_socket(path: Path, monkeypatch: pytest.MonkeyPatch,
                  watchdog_usec: int) -> socket.socket:
    """systemd's end of ``NOTIFY_SOCKET`` (a non-blocking datagram socket bound at ``path``),
    with the watchdog on for this process."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", str(watchdog_usec))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    return sock


def notifications(sock: socket.socket) -> list[str]:
    """The lines of every message waiting on ``sock``."""
    lines = []
    while True:
        try:
            lines.extend(sock.recv(4096).decode().split("\n"))
        except BlockingIOError:
            return lines


async def test_sd_notify_ready_watchdog_stopping(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``serve(..., systemd_notify=True)`` (what the command line passes) with
    ``NOTIFY_SOCKET`` (a real datagram socket) and ``WATCHDOG_USEC=200000``: READY=1 with a
    STATUS naming the address once listening, WATCHDOG=1 about every 0.1 s, STOPPING=1 when the
    graceful shutdown begins."""
    received: list[str] = []
    with notify_socket(tmp_path / "notify", monkeypatch, 200_000) as sock:

        async def states() -> list[str]:
            received.extend(notifications(sock))
            await trio.sleep(0.01)
            return received

        with trio.fail_after(TIMEOUT):
            async with serving(App(), make_config(), systemd_notify=True) as addresses:
                while "READY=1" not in await states():
                    pass
                assert f"STATUS=listening on {addresses[0]}" in received
                while (await states()).count("WATCHDOG=1") < 3:
                    pass
                assert "STOPPING=1" not in received
            while "STOPPING=1" not in await states():
                pass
    assert received.index("READY=1") < received.index("STOPPING=1")


async def test_embedded_serve_does_not_notify_systemd(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A program embedding ``serve()`` (without ``systemd_notify``) under a systemd unit with
    the watchdog on: it may run several servers one after another, so none of them speaks for
    the service: no READY=1, WATCHDOG=1 or STOPPING=1."""
    with notify_socket(tmp_path / "notify", monkeypatch, 20_000) as sock:
        with trio.fail_after(TIMEOUT):
            for _ in range(2):
                async with serving(App(), make_config()) as addresses, \
                        httpx.AsyncClient() as c:
                    assert (await c.get(addresses[0] + "/")).status_code == 200
                    await trio.sleep(0.1)  # five watchdog periods
        # (serve() sends synchronously: anything sent is waiting by now)
        assert notifications(sock) == []


async def test_stop_at_the_end_of_start_up_is_never_ready(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop requested when start-up can no longer be cancelled (the listeners are open, the
    server has not reported them yet): ``task_status.started()`` is not called and READY=1 is
    not sent, only STOPPING=1; ``serve()`` returns."""
    shutdown = trio.Event()
    open_listeners = server_module.open_listeners

    async def open_then_stop(*args: Any) -> Any:
        listeners = await open_listeners(*args)
        shutdown.set()
        with trio.CancelScope(shield=True):  # the stop arrives while nothing can cancel
            await trio.testing.wait_all_tasks_blocked()
        return listeners

    monkeypatch.setattr(server_module, "open_listeners", open_then_stop)
    started: list[object] = []

    class Status:
        def started(self, value: object = None) -> None:
            started.append(value)

    with notify_socket(tmp_path / "notify", monkeypatch, 0) as sock:
        with trio.fail_after(TIMEOUT):
            await serve(App(), make_config(), shutdown=shutdown, install_signal_handlers=False,
                        systemd_notify=True, task_status=Status())  # type: ignore[arg-type]
        assert started == []
        states = notifications(sock)
    assert "STOPPING=1" in states
    assert "READY=1" not in states


# ------------------------------------------------------------------------------ embedding


async def test_metrics_without_admin_endpoint() -> None:
    """``serve(metrics=...)`` counts without an admin endpoint (a worker reports its counts to
    its supervisor); ``requests`` is the number of completed requests."""
    metrics = Metrics()
    config = make_config()
    shutdown = trio.Event()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(lambda task_status: serve(
                App(), config, shutdown=shutdown, install_signal_handlers=False,
                metrics=metrics, task_status=task_status))
            assert addresses.admin == []
            async with httpx.AsyncClient() as c:
                for _ in range(5):
                    await c.get(addresses[0] + "/")
            await wait_for(lambda: metrics.requests == 5)
            snap = json.loads(json.dumps(metrics.snapshot()))
            assert snap["counters"]["requests"] == {"1.1": {"200": 5}}
            shutdown.set()


async def test_admin_app_for_a_supervisor() -> None:
    """``AdminApp`` over merged snapshots with extra gauges, served as any features app."""
    worker = Metrics()
    worker.request("1.1", 200, 0.01, 10, 20)
    snap = worker.snapshot()
    app = AdminApp(lambda: merge([snap, snap]), lambda: True,
                   lambda: {"trioserve_workers": 2})
    async with run_server(app, make_config(), asgi=False) as srv, httpx.AsyncClient() as c:
        with trio.fail_after(TIMEOUT):
            m = parse((await c.get(srv.url + "/metrics")).text)
    assert value(m, "trioserve_workers") == 2
    assert value(m, "trioserve_requests_total", protocol="1.1", status="200") == 2


@pytest.mark.slow
def test_cli_admin_bind(tmp_path: Path) -> None:
    """``--admin-bind unix:PATH`` on the command line: the admin endpoint answers, SIGTERM
    still exits 0."""
    sock_path = str(tmp_path / "admin.sock")
    with server_process(module_command("trioserve.demo:app", "--port", "0",
                                       "--admin-bind", f"unix:{sock_path}")) as sp:
        sp.wait_port()
        sp.wait_for_line(r"admin endpoint on unix:")
        with httpx.Client(transport=httpx.HTTPTransport(uds=sock_path)) as c:
            r = c.get("http://admin/readyz", timeout=TIMEOUT)
            assert (r.status_code, r.text) == (200, "ready\n")
            assert "trioserve_requests_total" in c.get("http://admin/metrics",
                                                       timeout=TIMEOUT).text
        sp.signal()
        assert sp.wait() == 0


# ------------------------------------------------------------------------------ the module


def test_histogram_bucket_edges() -> None:
    """A duration equal to a bound is counted in that bound's bucket (``le``); one beyond the
    last bound only in ``+Inf``."""
    m = Metrics(buckets=(0.1, 1.0))
    for d in (0.1, 0.5, 1.0, 7.0):
        m.request("2", 200, d, 0, 0)
    s = parse(render_prometheus(m.snapshot()))
    name = "trioserve_request_duration_seconds"
    assert value(s, f"{name}_bucket", protocol="2", le="0.1") == 1
    assert value(s, f"{name}_bucket", protocol="2", le="1.0") == 3
    assert value(s, f"{name}_bucket", protocol="2", le="+Inf") == 4
    assert value(s, f"{name}_count", protocol="2") == 4
    assert math.isclose(value(s, f"{name}_sum", protocol="2"), 8.6)
    with pytest.raises(ValueError, match="increasing"):
        Metrics(buckets=(1.0, 0.5))


def test_merge_and_retire() -> None:
    """Counters, gauges and buckets add up across snapshots (after a JSON round trip); a
    retired snapshot keeps its counters but not its gauges; bad shapes are refused."""
    a, b = Metrics(), Metrics()
    a.request("1.1", 200, 0.01, 5, 50)
    b.request("1.1", 200, 0.2, 0, 60)
    b.request("2", 404, 3.0, 0, 10)
    a.request_aborted("2", 7, 5)
    b.request_aborted("2", 0, 0)
    b.request_aborted("1.1", 0, 0)
    a.connection_opened("http1")
    b.connection_opened("http2")
    b.reject("concurrency")
    b.reject("custom_limit")
    snaps = [json.loads(json.dumps(x.snapshot())) for x in (a, b)]
    total = merge(snaps)
    s = parse(render_prometheus(total))
    assert value(s, "trioserve_requests_total", protocol="1.1", status="200") == 2
    assert value(s, "trioserve_requests_total", protocol="2", status="404") == 1
    assert value(s, "trioserve_response_bytes_total") == 125
    assert value(s, "trioserve_request_body_bytes_total") == 12
    assert value(s, "trioserve_requests_aborted_total", protocol="2") == 2
    assert value(s, "trioserve_requests_aborted_total", protocol="1.1") == 1
    assert (a.requests, b.requests) == (2, 4)  # answered and aborted alike (--max-requests)
    assert value(s, "trioserve_connections_active", protocol="http1") == 1
    assert value(s, "trioserve_connections_active", protocol="http2") == 1
    assert value(s, "trioserve_rejected_total", limit="concurrency") == 1
    assert value(s, "trioserve_rejected_total", limit="custom_limit") == 1
    assert value(s, "trioserve_request_duration_seconds_count", protocol="1.1") == 2

    kept = merge([retire(snaps[1]), snaps[0]])
    s = parse(render_prometheus(kept))
    assert value(s, "trioserve_requests_total", protocol="1.1", status="200") == 2
    assert value(s, "trioserve_connections_active", protocol="http2") == 0
    assert value(s, "trioserve_connections_active", protocol="http1") == 1

    assert merge([]) == Metrics().snapshot()
    other = Metrics(buckets=(1.0,))
    other.request("1.1", 200, 0.5, 0, 0)
    with pytest.raises(ValueError, match="bounds"):
        merge([snaps[0], other.snapshot()])
    with pytest.raises(ValueError, match="version"):
        merge([{**snaps[0], "version": 99}])


def test_rendering_escapes_and_extra_gauges() -> None:
    """Label values with backslashes, quotes and newlines are escaped (the parser reads them
    back); extra gauges are validated."""
    m = Metrics()
    m.reject('odd "limit"\\\nname')
    text = render_prometheus(m.snapshot(), {"trioserve_workers": 3,
                                            "trioserve_worker_restarts_total": 1})
    s = parse(text)
    assert value(s, "trioserve_rejected_total", limit='odd "limit"\\\nname') == 1
    assert value(s, "trioserve_workers") == 3
    assert "# TYPE trioserve_worker_restarts_total counter" in text
    assert text.endswith("\n")
    with pytest.raises(ValueError, match="invalid metric name"):
        render_prometheus(m.snapshot(), {"bad name": 1})
    for clash in ({"trioserve_requests_total": 1},
                  {"trioserve_requests": 1},  # the counter trioserve_requests_total's family
                  {"trioserve_ready_total": 1, "trioserve_ready": 1},
                  {"trioserve_request_duration_seconds_count": 1}):
        with pytest.raises(ValueError, match="clashes"):
            render_prometheus(m.snapshot(), clash)
    text = render_prometheus(m.snapshot(), {"trioserve_workers": 2, "trioserve_workers_ready": 1})
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["trioserve_workers_ready"].documentation == \
        "Worker processes ready and serving (not starting, not leaving)."
    assert "NaN" in render_prometheus(m.snapshot(), {"x_nan": math.nan})

