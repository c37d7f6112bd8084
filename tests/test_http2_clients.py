"""HTTP/2 end to end with real clients over loopback sockets: curl (ALPN h2 over TLS, h2c by
prior knowledge and by Upgrade), httpx (multiplexed requests over TLS and cleartext), h2load
(100 concurrent streams on one connection), a raw ``h2`` client (small flow-control windows,
50 MiB transfers with SHA-256, backpressure, trailers, 103 Early Hints, stream reset) and a raw
frame client built on hyperframe/hpack (graceful shutdown: GOAWAY, REFUSED_STREAM, the open
stream finishing). The WSGI bridge, Starlette and FastAPI over HTTP/2 give what they give over
HTTP/1.1.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import httpx
import hyperframe.frame as hf
import pytest
import trio
import trustme
from conftest import make_config, read_until_closed, run_server
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from trioserve.bridges.asgi import ASGIBridge
from trioserve.bridges.wsgi import WSGIBridge

from trioserve import Http2Limits, Tls
from trioserve.features import RequestContext, RequestFeature, TlsFeature

TIMEOUT = 20
KiB = 1024
MiB = 1024 * KiB
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
NO_ERROR = 0
CANCEL = 8
REFUSED_STREAM = 7

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
StartResponse = Callable[..., Any]


# ----------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Certs:
    ca_pem: Path  # what clients trust
    certfile: Path
    keyfile: Path

    def tls(self) -> Tls:
        return Tls(certfile=str(self.certfile), keyfile=str(self.keyfile))

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_pem))


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d = tmp_path_factory.mktemp("h2certs")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    for blob in server.cert_chain_pems:
        blob.write_to_path(str(d / "server.pem"), append=True)
    server.private_key_pem.write_to_path(str(d / "server-key.pem"))
    return Certs(d / "ca.pem", d / "server.pem", d / "server-key.pem")


# ----------------------------------------------------------------------------- servers


@dataclass
class Served:
    url: str  # http(s)://127.0.0.1:PORT
    port: int
    shutdown: trio.Event


@asynccontextmanager
async def serve(app: Any, *, tls: Tls | None = None, asgi: bool = True, http2: bool = True,
                h2limits: Http2Limits | None = None, limits: dict[str, Any] | None = None,
                **config: Any) -> AsyncIterator[Served]:
    """Serve ``app`` (ASGI when ``asgi``, else a features app) on 127.0.0.1 port 0."""
    config.setdefault("timeouts", {"graceful": 5})
    limits = dict(limits or {})
    if h2limits is not None:
        limits["http2"] = h2limits
    cfg = make_config(tls=tls, http2=http2, limits=limits, **config)
    async with run_server(app, cfg, asgi=asgi, lifespan="off") as srv:
        url = srv.addresses[0]
        assert url.startswith("https://127.0.0.1:" if tls else "http://127.0.0.1:"), url
        yield Served(url, int(url.rpartition(":")[2]), srv.shutdown)


async def respond(send: Send, body: bytes, status: int = 200,
                  headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers or []})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        assert message["type"] == "http.request", message
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def pattern(n: int, seed: int = 2) -> bytes:
    """``n`` deterministic bytes without short periods (a dropped, repeated or reordered
    chunk changes the digest)."""
    return random.Random(seed).randbytes(n)


# ----------------------------------------------------------------------------- curl, h2load


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


@dataclass
class CurlResult:
    returncode: int
    body: bytes
    http_version: str  # curl's %{http_version}: "2", "1.1"
    status: int
    stderr: str


async def run_curl(tmp_path: Path, *args: str) -> CurlResult:
    out = tmp_path / f"curl-body-{time.monotonic_ns()}"
    proc = await trio.run_process(
        [tool("curl"), "-sS", "--max-time", str(TIMEOUT), "-o", str(out),
         "-w", "%{http_version} %{http_code}", *args],
        capture_stdout=True, capture_stderr=True, check=False)
    version, _, code = proc.stdout.decode().partition(" ")
    return CurlResult(proc.returncode, out.read_bytes() if out.exists() else b"", version,
                      int(code or 0), proc.stderr.decode(errors="replace"))


H2LOAD_REQUESTS_RE = re.compile(
    r"requests: (?P<total>\d+) total, (?P<started>\d+) started, (?P<done>\d+) done, "
    r"(?P<succeeded>\d+) succeeded, (?P<failed>\d+) failed, (?P<errored>\d+) errored, "
    r"(?P<timeout>\d+) timeout")
H2LOAD_STATUS_RE = re.compile(r"status codes: (?P<s2xx>\d+) 2xx, (?P<s3xx>\d+) 3xx, "
                              r"(?P<s4xx>\d+) 4xx, (?P<s5xx>\d+) 5xx")


async def run_h2load(*args: str) -> tuple[dict[str, int], str]:
    proc = await trio.run_process([tool("h2load"), *args], capture_stdout=True,
                                  capture_stderr=True, check=False)
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, out + proc.stderr.decode(errors="replace")
    requests = H2LOAD_REQUESTS_RE.search(out)
    statuses = H2LOAD_STATUS_RE.search(out)
    assert requests is not None and statuses is not None, out
    counts = {k: int(v) for k, v in requests.groupdict().items()}
    counts.update({k: int(v) for k, v in statuses.groupdict().items()})
    return counts, out


# ----------------------------------------------------------------------------- raw h2 client


def _b(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _headers(items: Iterable[tuple[bytes | str, bytes | str]]) -> list[tuple[bytes, bytes]]:
    return [(_b(n), _b(v)) for n, v in items]


@dataclass
class StreamState:
    keep_body: bool = True
    informational: list[list[tuple[bytes, bytes]]] = field(default_factory=list)
    headers: list[tuple[bytes, bytes]] | None = None
    body: bytearray = field(default_factory=bytearray)
    length: int = 0
    sha256: Any = field(default_factory=hashlib.sha256)
    trailers: list[tuple[bytes, bytes]] | None = None
    ended: bool = False
    reset_code: int | None = None
    order: list[str] = field(default_factory=list)  # "informational", "response", "data", ...

    @property
    def status(self) -> int:
        assert self.headers is not None
        return int(dict(self.headers)[b":status"])

    @property
    def done(self) -> bool:
        return self.ended or self.reset_code is not None


class H2Client:
    """An ``h2`` client over one trio stream. It acknowledges DATA as it reads it (so its
    receive window is what it advertised: ``window``), and sends request bodies within the
    server's flow-control windows, reading while a window is shut."""

    def __init__(self, stream: trio.abc.Stream, *, window: int | None = None) -> None:
        self.stream = stream
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None))
        if window is not None:
            # In the preface SETTINGS, in force for every stream from the start.
            self.conn.local_settings = h2.settings.Settings(client=True, initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100,
            })
        self.streams: dict[int, StreamState] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = False
        self.window_updates: list[tuple[int, int]] = []  # (stream id, delta)

    @classmethod
    @asynccontextmanager
    async def connect(cls, port: int, *, window: int | None = None) -> AsyncIterator[H2Client]:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            client = cls(stream, window=window)
            client.conn.initiate_connection()
            await client.flush()
            yield client

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            await self.stream.send_all(data)

    def request(self, method: str, path: str, headers: Sequence[tuple[str, str]] = (), *,
                end_stream: bool = True, keep_body: bool = True) -> int:
        sid = self.conn.get_next_available_stream_id()
        fields = [(":method", method), (":scheme", "http"), (":authority", "example.test"),
                  (":path", path), *headers]
        self.conn.send_headers(sid, _headers(fields), end_stream=end_stream)
        self.streams[sid] = StreamState(keep_body=keep_body)
        return sid

    async def send_body(self, sid: int, data: bytes, *, end_stream: bool = True) -> None:
        view = memoryview(data)
        offset = 0
        while offset < len(view):
            window = min(self.conn.local_flow_control_window(sid),
                         self.conn.max_outbound_frame_size)
            if window <= 0:
                await self.pump()
                continue
            n = min(window, len(view) - offset)
            self.conn.send_data(sid, view[offset:offset + n].tobytes())
            offset += n
            await self.flush()
        if end_stream:
            self.conn.end_stream(sid)
            await self.flush()

    async def pump(self) -> None:
        """Read once, handle the events, send what they call for."""
        data = await self.stream.receive_some(256 * KiB)
        if not data:
            self.closed = True
            raise EOFError("the server closed the connection")
        self.handle(self.conn.receive_data(data))
        await self.flush()

    def handle(self, events: list[h2.events.Event]) -> None:
        for ev in events:
            if isinstance(ev, h2.events.InformationalResponseReceived):
                st = self.streams[ev.stream_id]
                st.informational.append(_headers(ev.headers))
                st.order.append("informational")
            elif isinstance(ev, h2.events.ResponseReceived):
                st = self.streams[ev.stream_id]
                st.headers = _headers(ev.headers)
                st.order.append("response")
            elif isinstance(ev, h2.events.DataReceived):
                st = self.streams[ev.stream_id]
                st.length += len(ev.data)
                st.sha256.update(ev.data)
                if st.keep_body:
                    st.body += ev.data
                if "data" not in st.order:
                    st.order.append("data")
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.TrailersReceived):
                st = self.streams[ev.stream_id]
                st.trailers = _headers(ev.headers)
                st.order.append("trailers")
            elif isinstance(ev, h2.events.StreamEnded):
                self.streams[ev.stream_id].ended = True
            elif isinstance(ev, h2.events.StreamReset):
                if ev.stream_id in self.streams:
                    self.streams[ev.stream_id].reset_code = int(ev.error_code)
            elif isinstance(ev, h2.events.WindowUpdated):
                self.window_updates.append((ev.stream_id, ev.delta))
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.goaway = ev

    async def until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self.pump()

    async def response(self, sid: int) -> StreamState:
        st = self.streams[sid]
        await self.until(lambda: st.done)
        return st


@asynccontextmanager
async def h2_client(port: int, *, window: int | None = None) -> AsyncIterator[H2Client]:
    async with H2Client.connect(port, window=window) as client:
        yield client


# ----------------------------------------------------------------------------- 1. curl, TLS


def recording_app(seen: list[dict[str, Any]], app: ASGIApp) -> Callable[
        [RequestContext], Awaitable[None]]:
    """A features app: records what the connection negotiated (``TlsFeature.alpn_protocol``,
    ``RequestFeature.http_version``) and hands the request to ``app`` through the ASGI
    bridge, which records its scope."""
    bridge = ASGIBridge(app, lifespan="off")

    async def features_app(ctx: RequestContext) -> None:
        tls = ctx.features.get(TlsFeature)
        seen.append({"alpn": tls.alpn_protocol if tls is not None else None,
                     "http_version": ctx.features[RequestFeature].http_version})
        await bridge(ctx)

    return features_app


def scope_app(scopes: list[Scope]) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scopes.append(scope)
        body = await read_body(receive)
        await respond(send, b"hello " + scope["path"].encode() + b" " + body)

    return app


async def test_curl_http2_over_tls_alpn(certs: Certs, tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []
    scopes: list[Scope] = []
    with trio.fail_after(TIMEOUT):
        async with serve(recording_app(seen, scope_app(scopes)), tls=certs.tls(),
                         asgi=False) as srv:
            r2 = await run_curl(tmp_path, "--http2", "--cacert", str(certs.ca_pem),
                                f"{srv.url}/h2")
            r1 = await run_curl(tmp_path, "--http1.1", "--cacert", str(certs.ca_pem),
                                f"{srv.url}/h1")
            # a POST body over h2 too
            rp = await run_curl(tmp_path, "--http2", "--cacert", str(certs.ca_pem),
                                "--data-binary", "payload", f"{srv.url}/post")
    assert (r2.returncode, r2.status, r2.http_version, r2.body) == (
        0, 200, "2", b"hello /h2 "), r2.stderr
    assert (r1.returncode, r1.status, r1.http_version, r1.body) == (
        0, 200, "1.1", b"hello /h1 "), r1.stderr
    assert (rp.returncode, rp.status, rp.http_version, rp.body) == (
        0, 200, "2", b"hello /post payload"), rp.stderr
    assert [s["alpn"] for s in seen] == ["h2", "http/1.1", "h2"]
    assert [s["http_version"] for s in seen] == ["2", "1.1", "2"]
    assert [s["http_version"] for s in scopes] == ["2", "1.1", "2"]
    assert all(s["scheme"] == "https" for s in scopes)
    assert all("tls" in s["extensions"] for s in scopes)
    assert scopes[0]["method"] == "GET" and scopes[2]["method"] == "POST"
    # :authority reaches the app as the host header
    assert (b"host", f"127.0.0.1:{srv.port}".encode()) in scopes[0]["headers"]


async def test_curl_http2_over_tls_with_http2_off_gets_http1(certs: Certs,
                                                             tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []
    scopes: list[Scope] = []
    with trio.fail_after(TIMEOUT):
        async with serve(recording_app(seen, scope_app(scopes)), tls=certs.tls(), asgi=False,
                         http2=False) as srv:
            r = await run_curl(tmp_path, "--http2", "--cacert", str(certs.ca_pem),
                               f"{srv.url}/x")
    assert (r.returncode, r.status, r.http_version, r.body) == (
        0, 200, "1.1", b"hello /x "), r.stderr
    assert seen == [{"alpn": "http/1.1", "http_version": "1.1"}]
    assert scopes[0]["http_version"] == "1.1"


# ----------------------------------------------------------------------------- 2. curl, h2c


async def test_curl_prior_knowledge_and_h2c_upgrade(tmp_path: Path) -> None:
    scopes: list[Scope] = []
    body = pattern(100 * KiB, seed=7)
    upload = tmp_path / "upload.bin"
    upload.write_bytes(body)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scopes.append(scope)
        data = await read_body(receive)
        await respond(send, b"%d %s" % (len(data), hashlib.sha256(data).hexdigest().encode()))

    expected = b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode())
    with trio.fail_after(TIMEOUT):
        async with serve(app) as srv:
            prior = await run_curl(tmp_path, "--http2-prior-knowledge", f"{srv.url}/prior")
            prior_post = await run_curl(tmp_path, "--http2-prior-knowledge", "--data-binary",
                                        f"@{upload}", f"{srv.url}/prior-post")
            upgraded = await run_curl(tmp_path, "--http2", f"{srv.url}/upgrade")
            plain = await run_curl(tmp_path, "--http1.1", f"{srv.url}/plain")
    assert (prior.returncode, prior.status, prior.http_version, prior.body) == (
        0, 200, "2", b"0 " + hashlib.sha256(b"").hexdigest().encode()), prior.stderr
    assert (prior_post.returncode, prior_post.status, prior_post.http_version,
            prior_post.body) == (0, 200, "2", expected), prior_post.stderr
    assert (upgraded.returncode, upgraded.status, upgraded.http_version) == (
        0, 200, "2"), upgraded.stderr
    assert (plain.returncode, plain.status, plain.http_version) == (0, 200, "1.1")
    paths = [(s["path"], s["http_version"], s["scheme"]) for s in scopes]
    assert paths == [("/prior", "2", "http"), ("/prior-post", "2", "http"),
                     ("/upgrade", "2", "http"), ("/plain", "1.1", "http")]
    # The upgraded request (stream 1) carries no HTTP/1.1 connection fields into HTTP/2.
    names = {n for n, _ in scopes[2]["headers"]}
    assert not names & {b"upgrade", b"connection", b"http2-settings"}, names


async def test_curl_h2c_upgrade_with_post_body(tmp_path: Path) -> None:
    """curl's ``--http2`` on cleartext with a 100 KB POST: curl sends the body with the
    ``Upgrade: h2c`` request; the server reads it before the 101, the app gets it intact as
    stream 1's body and the response comes over HTTP/2."""
    body = pattern(100 * KiB, seed=8)
    upload = tmp_path / "upload.bin"
    upload.write_bytes(body)
    got: list[tuple[str, bytes]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        data = await read_body(receive)
        got.append((scope["http_version"], data))
        await respond(send, hashlib.sha256(data).hexdigest().encode())

    with trio.fail_after(TIMEOUT):
        async with serve(app) as srv:
            r = await run_curl(tmp_path, "--http2", "--data-binary", f"@{upload}",
                               f"{srv.url}/up")
    assert (r.returncode, r.status, r.http_version, r.body) == (
        0, 200, "2", hashlib.sha256(body).hexdigest().encode()), r.stderr
    ((version, data),) = got
    assert data == body
    assert version == "2"


async def raw_h2c_upgrade(port: int, body: bytes, path: str = "/up") -> tuple[bytes, H2Client]:
    """An HTTP/1.1 request with ``Upgrade: h2c`` and a body; returns the HTTP/1.1 head the
    server answered and a client speaking HTTP/2 on the same connection (stream 1 is the
    upgrade request)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    client = H2Client(stream)
    settings = client.conn.initiate_upgrade_connection()
    assert settings is not None
    request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
               f"HTTP2-Settings: {_b(settings).decode()}\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode()
    await stream.send_all(request + body)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = await stream.receive_some(65536)
        assert chunk, buf
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    client.streams[1] = StreamState()
    await client.flush()  # our preface
    if rest:
        client.handle(client.conn.receive_data(rest))
        await client.flush()
    return head, client


async def test_h2c_upgrade_request_body_reaches_the_app() -> None:
    """The upgrade request's 100 KB body (read by the server in HTTP/1.1 before the 101) is
    stream 1's body in HTTP/2; the response comes on stream 1; the connection goes on."""
    body = pattern(100 * KiB, seed=9)
    got: list[tuple[str, str, bytes]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        data = await read_body(receive)
        got.append((scope["http_version"], scope["path"], data))
        await respond(send, hashlib.sha256(data).hexdigest().encode())

    with trio.fail_after(TIMEOUT):
        async with serve(app) as srv:
            head, client = await raw_h2c_upgrade(srv.port, body)
            async with client.stream:
                st = await client.response(1)
                sid = client.request("GET", "/second")
                await client.flush()
                second = await client.response(sid)
    status_line, *fields = head.split(b"\r\n")
    assert status_line == b"HTTP/1.1 101 Switching Protocols"
    lowered = {f.partition(b":")[0].strip().lower(): f.partition(b":")[2].strip().lower()
               for f in fields}
    assert lowered[b"upgrade"] == b"h2c"
    assert st.ended and st.status == 200
    assert bytes(st.body) == hashlib.sha256(body).hexdigest().encode()
    assert second.ended and second.status == 200
    assert got[0] == ("2", "/up", body)
    assert got[1] == ("2", "/second", b"")


async def test_prior_knowledge_with_http2_off_fails_cleanly(tmp_path: Path) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, b"still here")

    with trio.fail_after(TIMEOUT):
        async with serve(app, http2=False) as srv:
            r = await run_curl(tmp_path, "--http2-prior-knowledge", f"{srv.url}/")
            # the same over a raw socket: the preface and a SETTINGS frame
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            async with stream:
                await stream.send_all(PREFACE + hf.SettingsFrame(0).serialize())
                answer = await read_until_closed(stream)
            after = await run_curl(tmp_path, "--http1.1", f"{srv.url}/")
            upgrade = await run_curl(tmp_path, "--http2", f"{srv.url}/")
    assert r.returncode != 0 and r.body == b"", r
    # An HTTP/1.1 error response, then the close (read_until_closed returned).
    assert re.match(rb"HTTP/1\.1 (400|505) ", answer), answer[:200]
    assert (after.returncode, after.status, after.body) == (0, 200, b"still here")
    # With HTTP/2 off the h2c Upgrade is ignored: HTTP/1.1 answers.
    assert (upgrade.returncode, upgrade.status, upgrade.http_version, upgrade.body) == (
        0, 200, "1.1", b"still here")


# ----------------------------------------------------------------------------- 3. httpx


def barrier_app(n: int, ports: list[int], versions: list[str]) -> ASGIApp:
    """Each request waits until ``n`` requests are in the app at once: only multiplexing on
    one connection (or ``n`` connections) gets them all there."""
    state = {"in": 0}
    all_in = trio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        if scope["path"].startswith("/wait/"):
            state["in"] += 1
            if state["in"] == n:
                all_in.set()
            with trio.fail_after(TIMEOUT / 2):
                await all_in.wait()
        ports.append(scope["client"][1])
        versions.append(scope["http_version"])
        await respond(send, scope["path"].encode())

    return app


async def concurrent_gets(c: httpx.AsyncClient, n: int) -> list[httpx.Response]:
    results: list[httpx.Response | None] = [None] * n

    async def one(i: int) -> None:
        results[i] = await c.get(f"/wait/{i}")

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    return [r for r in results if r is not None]


@pytest.mark.parametrize("transport", ["tls", "cleartext"])
async def test_httpx_multiplexes_on_one_connection(certs: Certs, transport: str) -> None:
    n = 40
    ports: list[int] = []
    versions: list[str] = []
    tls = certs.tls() if transport == "tls" else None
    with trio.fail_after(TIMEOUT):
        async with serve(barrier_app(n, ports, versions), tls=tls) as srv:
            kw: dict[str, Any] = ({"verify": certs.client_context(), "http2": True}
                                  if tls else {"http1": False, "http2": True})
            async with httpx.AsyncClient(base_url=srv.url, timeout=TIMEOUT, **kw) as c:
                first = await c.get("/first")
                responses = await concurrent_gets(c, n)
                post = await c.post("/post", content=b"x" * 300_000)
    assert (first.status_code, first.http_version, first.content) == (200, "HTTP/2", b"/first")
    assert len(responses) == n
    for i, r in enumerate(responses):
        assert (r.status_code, r.http_version, r.content) == (200, "HTTP/2", b"/wait/%d" % i)
    assert (post.status_code, post.http_version) == (200, "HTTP/2")
    assert len(set(ports)) == 1, ports  # one connection for all
    assert set(versions) == {"2"}


# ----------------------------------------------------------------------------- 4. h2load


def counting_app(stats: dict[str, int]) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        stats["in_flight"] += 1
        stats["max"] = max(stats["max"], stats["in_flight"])
        stats["requests"] += 1
        if scope["http_version"] == "2":
            stats["h2"] += 1
        try:
            await trio.sleep(0.001)
            await respond(send, b"hello from trioserve")
        finally:
            stats["in_flight"] -= 1

    return app


@pytest.mark.parametrize("transport", ["cleartext", "tls"])
async def test_h2load_100_concurrent_streams(certs: Certs, transport: str) -> None:
    stats = {"in_flight": 0, "max": 0, "requests": 0, "h2": 0}
    tls = certs.tls() if transport == "tls" else None
    n = 1000 if tls is None else 500
    with trio.fail_after(TIMEOUT * 2):
        async with serve(counting_app(stats), tls=tls) as srv:
            counts, out = await run_h2load("-n", str(n), "-c", "1", "-m", "100",
                                           f"{srv.url}/")
    assert counts["total"] == n, out
    assert counts["succeeded"] == n, out
    assert (counts["failed"], counts["errored"], counts["timeout"]) == (0, 0, 0), out
    assert counts["s2xx"] == n, out
    assert "Application protocol: h2" in out or "Application protocol: h2c" in out, out
    assert stats["requests"] == stats["h2"] == n
    assert stats["max"] >= 10, stats  # streams really ran concurrently


# ------------------------------------------------------- 5. large transfers, small windows

SMALL_WINDOWS = Http2Limits(initial_stream_window_size=16 * KiB,
                            initial_connection_window_size=65535)
BIG = 50 * MiB


def hashing_app(may_read: trio.Event | None = None) -> ASGIApp:
    """Hashes the streamed request body (after ``may_read`` is set) and answers with its
    length and hex digest; ``/download/N`` streams ``pattern(N)`` in 64 KiB chunks."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if path.startswith("/download/"):
            data = pattern(int(path.rpartition("/")[2]))
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for i in range(0, len(data), 64 * KiB):
                await send({"type": "http.response.body", "body": data[i:i + 64 * KiB],
                            "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        if may_read is not None:
            await may_read.wait()
        digest = hashlib.sha256()
        n = 0
        while True:
            message = await receive()
            assert message["type"] == "http.request"
            chunk = message.get("body", b"")
            digest.update(chunk)
            n += len(chunk)
            if not message.get("more_body", False):
                break
        await respond(send, b"%d %s" % (n, digest.hexdigest().encode()))

    return app


async def test_50_mib_upload_with_small_windows() -> None:
    body = pattern(BIG, seed=11)
    expected = b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode())
    with trio.fail_after(TIMEOUT * 2):
        async with serve(hashing_app(), h2limits=SMALL_WINDOWS,
                         limits={"max_request_body_size": None}) as srv, \
                h2_client(srv.port, window=16 * KiB) as client:
            # Learn the server's 16 KiB window before sending (see the next test for why).
            await client.until(lambda: client.conn.remote_settings.initial_window_size
                               == 16 * KiB)
            started = time.monotonic()
            sid = client.request("POST", "/upload", end_stream=False)
            await client.send_body(sid, body)
            st = await client.response(sid)
            elapsed = time.monotonic() - started
    assert st.ended and st.status == 200
    assert bytes(st.body) == expected
    # The server's windows are what it advertised: no grant ever exceeded 16 KiB per stream.
    assert client.conn.remote_settings.initial_window_size == 16 * KiB
    assert max(d for s, d in client.window_updates if s == sid) <= 16 * KiB
    assert elapsed < TIMEOUT, elapsed


# A stream window below 65535 applies only once the client acknowledged the SETTINGS
# (RFC 9113 §6.5.3, §6.9.2): until then the client may use the default 65535 bytes, as curl
# --http2-prior-knowledge --data-binary @100k does by sending its body right after the preface.
async def test_body_sent_before_the_server_settings_arrive() -> None:
    body = pattern(100 * KiB, seed=15)
    expected = b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode())
    with trio.fail_after(TIMEOUT):
        async with serve(hashing_app(), h2limits=SMALL_WINDOWS) as srv, \
                h2_client(srv.port) as client:
            # At once, as a client may: 65535 bytes (the default window) before reading.
            sid = client.request("POST", "/upload", end_stream=False)
            await client.send_body(sid, body)
            st = await client.response(sid)
    assert client.goaway is None
    assert st.ended and st.status == 200
    assert bytes(st.body) == expected


async def test_50_mib_download_with_small_client_window() -> None:
    expected = hashlib.sha256(pattern(BIG)).hexdigest()
    with trio.fail_after(TIMEOUT * 2):
        async with serve(hashing_app(), h2limits=SMALL_WINDOWS) as srv, \
                h2_client(srv.port, window=16 * KiB) as client:
            started = time.monotonic()
            sid = client.request("GET", f"/download/{BIG}", keep_body=False)
            await client.flush()
            st = await client.response(sid)
            elapsed = time.monotonic() - started
    assert st.ended and st.status == 200
    assert st.length == BIG
    assert st.sha256.hexdigest() == expected
    assert elapsed < TIMEOUT, elapsed


async def test_server_applies_backpressure_on_request_body() -> None:
    """An app that does not read: the client's stream window drains to 0 and the server
    grants nothing more (it does not buffer past the window); once the app reads, the upload
    completes intact."""
    may_read = trio.Event()
    body = pattern(MiB, seed=12)
    expected = b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode())
    with trio.fail_after(TIMEOUT):
        async with serve(hashing_app(may_read), h2limits=SMALL_WINDOWS) as srv, \
                h2_client(srv.port) as client:
            await client.until(lambda: client.conn.remote_settings.initial_window_size
                               == 16 * KiB)
            sid = client.request("POST", "/upload", end_stream=False)
            await client.flush()
            sent = 0
            while (window := client.conn.local_flow_control_window(sid)) > 0:
                n = min(window, client.conn.max_outbound_frame_size)
                client.conn.send_data(sid, body[sent:sent + n])
                sent += n
                await client.flush()
            assert sent == 16 * KiB
            # Wait: the app is not reading, so no stream window may reopen.
            with trio.move_on_after(0.5):
                while True:
                    await client.pump()
            assert client.conn.local_flow_control_window(sid) == 0
            assert not [d for s, d in client.window_updates if s == sid]
            assert not client.streams[sid].done
            may_read.set()
            await client.send_body(sid, body[sent:])
            st = await client.response(sid)
    assert st.ended and st.status == 200
    assert bytes(st.body) == expected


# ----------------------------------------------------------------------------- 6. bridges


# httpx clients: HTTP/1.1, and HTTP/2 by prior knowledge on cleartext
CLIENT_KINDS: list[tuple[str, dict[str, Any]]] = [("h1", {}),
                                                  ("h2", {"http1": False, "http2": True})]


def wsgi_app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    body = environ["wsgi.input"].read()
    info = {k: environ.get(k) for k in ("SERVER_PROTOCOL", "HTTP_HOST", "REQUEST_METHOD",
                                        "PATH_INFO", "QUERY_STRING", "CONTENT_LENGTH",
                                        "wsgi.url_scheme", "HTTP_X_TEST")}
    info["body_sha256"] = hashlib.sha256(body).hexdigest()
    info["body_length"] = len(body)
    start_response("200 OK", [("Content-Type", "application/json"), ("X-Wsgi", "yes")])
    return [json.dumps(info).encode()]


async def test_wsgi_bridge_over_h2c() -> None:
    upload = pattern(200 * KiB, seed=13)
    with trio.fail_after(TIMEOUT):
        async with serve(WSGIBridge(wsgi_app, threads=4), asgi=False) as srv:
            results = {}
            for label, kw in CLIENT_KINDS:
                async with httpx.AsyncClient(base_url=srv.url, timeout=TIMEOUT, **kw) as c:
                    get = await c.get("/w/path?x=1", headers={"X-Test": "t"})
                    post = await c.post("/w/post", content=upload)
                    results[label] = (get, post)
    h1_get, h1_post = results["h1"]
    h2_get, h2_post = results["h2"]
    assert (h1_get.http_version, h2_get.http_version) == ("HTTP/1.1", "HTTP/2")
    assert h2_post.http_version == "HTTP/2"
    for r in (h1_get, h1_post, h2_get, h2_post):
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        assert r.headers["x-wsgi"] == "yes"
    g1, g2 = h1_get.json(), h2_get.json()
    assert g1["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert g2["SERVER_PROTOCOL"] == "HTTP/2"
    assert g2["HTTP_HOST"] == f"127.0.0.1:{srv.port}"  # from :authority (httpx sends no host)
    assert g1["HTTP_HOST"] == g2["HTTP_HOST"]
    for key in ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "wsgi.url_scheme",
                "HTTP_X_TEST", "body_length"):
        assert g1[key] == g2[key], key
    assert (g2["PATH_INFO"], g2["QUERY_STRING"], g2["HTTP_X_TEST"]) == ("/w/path", "x=1", "t")
    p1, p2 = h1_post.json(), h2_post.json()
    expected = hashlib.sha256(upload).hexdigest()
    assert p1["body_sha256"] == p2["body_sha256"] == expected
    assert p1["body_length"] == p2["body_length"] == len(upload)
    assert p2["CONTENT_LENGTH"] == str(len(upload))


def starlette_and_fastapi_app() -> Any:
    api = FastAPI()

    @api.get("/items/{item_id}")
    async def item(item_id: int, q: str | None = None) -> dict[str, Any]:
        return {"item_id": item_id, "q": q}

    @api.post("/echo")
    async def echo(request: Request) -> Response:
        body = await request.body()
        return Response(body, media_type="application/octet-stream",
                        headers={"x-length": str(len(body))})

    @api.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(50):
                yield b"chunk %d;" % i

        return StreamingResponse(chunks(), media_type="text/plain")

    @api.get("/version")
    async def version(request: Request) -> dict[str, Any]:
        return {"http_version": request.scope["http_version"],
                "host": request.headers.get("host")}

    return api


async def test_starlette_fastapi_over_h2c_same_as_http1() -> None:
    upload = pattern(300 * KiB, seed=14)
    app = starlette_and_fastapi_app()
    with trio.fail_after(TIMEOUT):
        async with serve(app) as srv:
            results: dict[str, list[httpx.Response]] = {}
            for label, kw in CLIENT_KINDS:
                async with httpx.AsyncClient(base_url=srv.url, timeout=TIMEOUT, **kw) as c:
                    results[label] = [await c.get("/items/42?q=abc"),
                                      await c.post("/echo", content=upload),
                                      await c.get("/stream"),
                                      await c.get("/version"),
                                      await c.get("/missing")]
    for r in results["h1"]:
        assert r.http_version == "HTTP/1.1"
    for r in results["h2"]:
        assert r.http_version == "HTTP/2"
    for r1, r2 in zip(results["h1"][:3], results["h2"][:3], strict=True):
        assert (r1.status_code, r1.content) == (r2.status_code, r2.content)
        assert r1.headers["content-type"] == r2.headers["content-type"]
    items, echo, stream, version, missing = results["h2"]
    assert items.json() == {"item_id": 42, "q": "abc"}
    assert echo.content == upload and echo.headers["x-length"] == str(len(upload))
    assert stream.content == b"".join(b"chunk %d;" % i for i in range(50))
    assert version.json() == {"http_version": "2", "host": f"127.0.0.1:{srv.port}"}
    assert results["h1"][3].json()["http_version"] == "1.1"
    assert missing.status_code == results["h1"][4].status_code == 404


async def test_asgi_trailers_and_early_hints_over_h2() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        if scope["path"] == "/hints":
            await send({"type": "http.response.early_hint",
                        "links": [b"</style.css>; rel=preload; as=style"]})
            await respond(send, b"with hints")
        else:
            await send({"type": "http.response.start", "status": 200, "trailers": True,
                        "headers": [(b"trailer", b"x-checksum")]})
            await send({"type": "http.response.body", "body": b"part1 ", "more_body": True})
            await send({"type": "http.response.body", "body": b"part2", "more_body": False})
            await send({"type": "http.response.trailers",
                        "headers": [(b"x-checksum", b"abc123")], "more_trailers": False})

    with trio.fail_after(TIMEOUT):
        async with serve(app) as srv, h2_client(srv.port) as client:
            trailers_sid = client.request("GET", "/trailers", [("te", "trailers")])
            hints_sid = client.request("GET", "/hints")
            await client.flush()
            tr = await client.response(trailers_sid)
            hints = await client.response(hints_sid)
    assert tr.ended and tr.status == 200
    assert bytes(tr.body) == b"part1 part2"
    assert tr.trailers == [(b"x-checksum", b"abc123")]
    assert tr.order == ["response", "data", "trailers"]
    assert hints.ended and hints.status == 200 and bytes(hints.body) == b"with hints"
    assert hints.order[:2] == ["informational", "response"]
    ((status, *fields),) = hints.informational
    assert status == (b":status", b"103")
    assert (b"link", b"</style.css>; rel=preload; as=style") in fields


# ----------------------------------------------------------------------------- 7. shutdown


class FrameClient:
    """A client at the frame level (hyperframe + hpack), for what ``h2`` itself refuses to
    do: keep reading a connection after GOAWAY and open a stream after it."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.eof = False
        self.header_blocks: list[tuple[int, list[tuple[bytes, bytes]]]] = []  # (stream, fields)

    async def start(self) -> None:
        await self.stream.send_all(PREFACE + hf.SettingsFrame(0).serialize())

    async def request(self, sid: int, path: str) -> None:
        block = self.encoder.encode([(b":method", b"GET"), (b":scheme", b"http"),
                                     (b":authority", b"example.test"),
                                     (b":path", path.encode())])
        frame = hf.HeadersFrame(sid, data=block, flags=["END_HEADERS", "END_STREAM"])
        await self.stream.send_all(frame.serialize())

    async def next_frame(self) -> hf.Frame | None:
        """The next frame, ``None`` at EOF. Answers SETTINGS with an ACK, decodes header
        blocks in order (into ``header_blocks``)."""
        while True:
            if len(self.buf) >= 9:
                frame, length = hf.Frame.parse_frame_header(memoryview(bytes(self.buf[:9])))
                if len(self.buf) >= 9 + length:
                    frame.parse_body(memoryview(bytes(self.buf[9:9 + length])))
                    del self.buf[:9 + length]
                    if isinstance(frame, hf.SettingsFrame) and "ACK" not in frame.flags:
                        await self.stream.send_all(hf.SettingsFrame(0, flags=["ACK"]).serialize())
                    if isinstance(frame, hf.HeadersFrame):
                        assert "END_HEADERS" in frame.flags  # no CONTINUATION here
                        fields = self.decoder.decode(frame.data, raw=True)
                        self.header_blocks.append((frame.stream_id, _headers(fields)))
                    return frame
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                data = b""
            if not data:
                self.eof = True
                return None
            self.buf += data


async def test_graceful_shutdown_goaway_refuses_new_streams_and_finishes_open_one() -> None:
    proceed = trio.Event()
    calls: list[str] = []
    parts = [b"part%d;" % i for i in range(6)]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": parts[0], "more_body": True})
        await proceed.wait()
        for part in parts[1:]:
            await trio.sleep(0.05)
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    frames: list[hf.Frame] = []
    with trio.fail_after(TIMEOUT):
        async with serve(app) as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            async with stream:
                fc = FrameClient(stream)
                await fc.start()
                await fc.request(1, "/slow")
                body = b""
                while body != parts[0]:
                    frame = await fc.next_frame()
                    assert frame is not None
                    frames.append(frame)
                    if isinstance(frame, hf.DataFrame) and frame.stream_id == 1:
                        body += frame.data
                srv.shutdown.set()
                goaway = None
                while goaway is None:
                    frame = await fc.next_frame()
                    assert frame is not None, "closed before GOAWAY"
                    frames.append(frame)
                    if isinstance(frame, hf.GoAwayFrame):
                        goaway = frame
                    elif isinstance(frame, hf.DataFrame) and frame.stream_id == 1:
                        body += frame.data
                assert (goaway.error_code, goaway.last_stream_id) == (NO_ERROR, 1)
                # A stream opened after the GOAWAY is refused; the open one goes on.
                await fc.request(3, "/late")
                refused = None
                while refused is None:
                    frame = await fc.next_frame()
                    assert frame is not None, "closed before refusing stream 3"
                    frames.append(frame)
                    if isinstance(frame, hf.RstStreamFrame) and frame.stream_id == 3:
                        refused = frame
                    elif isinstance(frame, hf.DataFrame) and frame.stream_id == 1:
                        body += frame.data
                assert refused.error_code == REFUSED_STREAM
                assert not proceed.is_set()
                proceed.set()
                ended = False
                while True:
                    frame = await fc.next_frame()
                    if frame is None:
                        break
                    frames.append(frame)
                    if isinstance(frame, hf.DataFrame) and frame.stream_id == 1:
                        assert not ended
                        body += frame.data
                        ended = "END_STREAM" in frame.flags
    assert fc.eof
    assert ended
    assert body == b"".join(parts)
    assert calls == ["/slow"]  # the refused stream never reached the app
    assert not [f for f in frames if f.stream_id == 3 and not isinstance(f, hf.RstStreamFrame)]
    assert not [f for f in frames if isinstance(f, hf.RstStreamFrame) and f.stream_id == 1]
    ((head_sid, head),) = fc.header_blocks
    assert head_sid == 1 and (b":status", b"200") in head
    assert len([f for f in frames if isinstance(f, hf.GoAwayFrame)]) == 1


async def test_client_reset_disconnects_only_that_stream() -> None:
    held_done = trio.Event()
    held_messages: list[Message] = []
    other_finished: list[bool] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/hold":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
            while True:
                message = await receive()
                held_messages.append(message)
                if message["type"] != "http.request":
                    break
            held_done.set()
            return
        await read_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        with trio.fail_after(TIMEOUT / 2):
            await held_done.wait()
        for i in range(5):
            await send({"type": "http.response.body", "body": b"other%d;" % i,
                        "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        other_finished.append(True)

    with trio.fail_after(TIMEOUT):
        async with serve(app) as srv, h2_client(srv.port) as client:
            held = client.request("GET", "/hold")
            other = client.request("GET", "/other")
            await client.flush()
            await client.until(lambda: bytes(client.streams[held].body) == b"first")
            client.conn.reset_stream(held, CANCEL)
            await client.flush()
            st = await client.response(other)
            # the connection is still good for more
            again = client.request("GET", "/other")
            await client.flush()
            st_again = await client.response(again)
    assert held_messages[-1] == {"type": "http.disconnect"}
    assert [m["type"] for m in held_messages[:-1]] == ["http.request"]
    assert st.ended and st.reset_code is None and st.status == 200
    assert bytes(st.body) == b"".join(b"other%d;" % i for i in range(5))
    assert st_again.ended and bytes(st_again.body) == bytes(st.body)
    assert other_finished == [True, True]
