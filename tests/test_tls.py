"""HTTPS: ``Config.tls`` served over real loopback sockets to real clients (httpx, and Debian's
``curl`` when installed), with certificates from ``trustme``.

What an application sees (the ASGI ``tls`` extension, ``TlsFeature``, the WSGI ``HTTPS``
environ), bodies and files intact over TLS (where ``sendfile`` is impossible), client
certificates, what the server refuses (plain HTTP, TLS 1.1, garbage, a silent client) without
stopping serving others, configuration errors, and ``trioserve dev-cert``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import ssl
import stat
import subprocess
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trustme
from conftest import make_config, parse_responses, raw_exchange, read_until_closed, run_server
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from procs import child_env, module_command
from trioserve.bridges.wsgi import WSGIBridge

from trioserve.cli import build_config, build_parser, main
from trioserve.config import ClientCertMode, ConfigError, Tls
from trioserve.features import (
    RequestContext,
    RequestFeature,
    ResponseBodyFeature,
    ResponseFeature,
    ServerAddressesFeature,
    TlsFeature,
    UpgradeFeature,
)
from trioserve.tls import server_context

TIMEOUT = 10
MiB = 1024 * 1024

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
StartResponse = Callable[..., Any]

TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


# ----------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Certs:
    """A server certificate for localhost/127.0.0.1 issued by an intermediate CA (the certfile
    holds leaf then intermediate), clients trusting the root; client certificates from a
    separate client CA, and one from the server's CA (valid, but not for client auth here)."""

    dir: Path
    root: trustme.CA
    ca_pem: Path  # the root: what clients trust
    certfile: Path  # leaf + intermediate
    keyfile: Path
    combined: Path  # key + leaf + intermediate in one file
    leaf_pem: str
    client_ca_pem: Path  # Tls.ca_certs
    client_cert: Path
    client_key: Path
    client_pem: str
    client_name: str  # RFC 4514 subject of the client certificate
    rogue_cert: Path  # issued by the server's root, not by the client CA
    rogue_key: Path
    other_key: Path  # the key of some other certificate

    def tls(self, **kw: Any) -> Tls:
        return Tls(certfile=str(self.certfile), keyfile=str(self.keyfile), **kw)

    def mtls(self, mode: ClientCertMode = "required", **kw: Any) -> Tls:
        return self.tls(ca_certs=str(self.client_ca_pem), client_cert=mode, **kw)

    def client_context(self, *, cert: tuple[Path, Path] | None = None,
                       maximum_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_pem))
        if maximum_version is not None:
            ctx.maximum_version = maximum_version
        if cert is not None:
            ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        return ctx


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d = tmp_path_factory.mktemp("certs")
    root = trustme.CA()
    intermediate = root.create_child_ca()
    server = intermediate.issue_cert("localhost", "127.0.0.1")
    assert len(server.cert_chain_pems) == 2  # leaf, intermediate
    root.cert_pem.write_to_path(str(d / "ca.pem"))
    for blob in server.cert_chain_pems:
        blob.write_to_path(str(d / "server.pem"), append=True)
    server.private_key_pem.write_to_path(str(d / "server-key.pem"))
    server.private_key_and_cert_chain_pem.write_to_path(str(d / "combined.pem"))
    client_ca = trustme.CA()
    client_ca.cert_pem.write_to_path(str(d / "client-ca.pem"))
    client = client_ca.issue_cert("client@example.org", common_name="test client")
    client.cert_chain_pems[0].write_to_path(str(d / "client.pem"))
    client.private_key_pem.write_to_path(str(d / "client-key.pem"))
    rogue = root.issue_cert("rogue@example.org", common_name="rogue client")
    rogue.cert_chain_pems[0].write_to_path(str(d / "rogue.pem"))
    rogue.private_key_pem.write_to_path(str(d / "rogue-key.pem"))
    other = root.issue_cert("other.example")
    other.private_key_pem.write_to_path(str(d / "other-key.pem"))
    client_pem = client.cert_chain_pems[0].bytes().decode("ascii")
    name = x509.load_pem_x509_certificate(client_pem.encode()).subject.rfc4514_string()
    return Certs(
        dir=d, root=root, ca_pem=d / "ca.pem", certfile=d / "server.pem",
        keyfile=d / "server-key.pem", combined=d / "combined.pem",
        leaf_pem=server.cert_chain_pems[0].bytes().decode("ascii"),
        client_ca_pem=d / "client-ca.pem", client_cert=d / "client.pem",
        client_key=d / "client-key.pem", client_pem=client_pem, client_name=name,
        rogue_cert=d / "rogue.pem", rogue_key=d / "rogue-key.pem",
        other_key=d / "other-key.pem",
    )


def same_certificate(pem_a: str, pem_b: str) -> bool:
    """The same certificate, whatever the PEM line wrapping."""
    return ssl.PEM_cert_to_DER_cert(pem_a) == ssl.PEM_cert_to_DER_cert(pem_b)


# ----------------------------------------------------------------------------- helpers


@dataclass
class HttpsServer:
    url: str  # https://127.0.0.1:PORT
    port: int
    addresses: list[str]
    shutdown: trio.Event


@asynccontextmanager
async def https_server(app: Any, tls: Tls, *, asgi: bool = True,
                       **config: Any) -> AsyncIterator[HttpsServer]:
    """Serve ``app`` (ASGI when ``asgi``, else a features app) with ``tls`` on 127.0.0.1:0."""
    config.setdefault("timeouts", {"graceful": 5})
    async with run_server(app, make_config(tls=tls, **config), asgi=asgi,
                          lifespan="off") as srv:
        first = srv.addresses[0]
        assert first.startswith("https://127.0.0.1:"), srv.addresses
        port = int(first.rpartition(":")[2])
        yield HttpsServer(f"https://127.0.0.1:{port}", port, srv.addresses, srv.shutdown)


def client(certs: Certs, url: str, **kw: Any) -> httpx.AsyncClient:
    ctx = certs.client_context(cert=kw.pop("cert", None),
                               maximum_version=kw.pop("maximum_version", None))
    return httpx.AsyncClient(base_url=url, verify=ctx, timeout=TIMEOUT, **kw)


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


async def ok_app(scope: Scope, receive: Receive, send: Send) -> None:
    await respond(send, b"ok")


async def assert_https_works(certs: Certs, url: str) -> None:
    async with client(certs, url) as c:
        r = await c.get("/after")
        assert (r.status_code, r.content) == (200, b"ok")


def handshake_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "trioserve" and "TLS handshake with" in r.getMessage()]


def curl() -> str:
    path = shutil.which("curl")
    if path is None:
        pytest.skip("curl is not installed")
    return path


async def run_curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process([curl(), "-sS", "--max-time", str(TIMEOUT), *args],
                                  capture_stdout=True, capture_stderr=True, check=False)


# ------------------------------------------------------------------- what the app sees


@pytest.mark.parametrize("maximum_version", [ssl.TLSVersion.TLSv1_2, None],
                         ids=["TLSv1.2", "TLSv1.3"])
async def test_asgi_scope_has_the_tls_extension(certs: Certs,
                                                maximum_version: ssl.TLSVersion | None) -> None:
    scopes: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scopes.append(scope)
        await respond(send, b"ok")

    with trio.fail_after(TIMEOUT):
        async with https_server(app, certs.tls()) as srv, \
                client(certs, srv.url, maximum_version=maximum_version) as c:
            r = await c.get("/path?q=1")
            ssl_object = r.extensions["network_stream"].get_extra_info("ssl_object")
            client_version = ssl_object.version()
            client_cipher = ssl_object.cipher()[0]
    assert (r.status_code, r.content) == (200, b"ok")
    assert client_version == ("TLSv1.2" if maximum_version else "TLSv1.3")
    (scope,) = scopes
    assert scope["scheme"] == "https"
    assert scope["path"] == "/path"
    tls = scope["extensions"]["tls"]
    assert tls["tls_version"] == TLS_VERSIONS[client_version]
    assert isinstance(tls["cipher_suite"], int)
    # The IANA number of the suite the client negotiated (OpenSSL's id carries 0x0300 above).
    suites = {c["name"]: c["id"] & 0xFFFF for c in ssl.create_default_context().get_ciphers()}
    assert tls["cipher_suite"] == suites[client_cipher]
    assert isinstance(tls["server_cert"], str)
    assert tls["server_cert"] == certs.leaf_pem  # the leaf only, not the intermediate
    assert tls["client_cert_chain"] == []
    assert tls["client_cert_name"] is None
    assert tls["client_cert_error"] is None
    # the rest of the scope is as over plain HTTP
    assert "http.response.pathsend" in scope["extensions"]
    assert scope["server"] == ("127.0.0.1", srv.port)


async def test_features_app_sees_tls_feature_and_https_addresses(
        certs: Certs, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trioserve")
    seen: list[tuple[Any, list[str], str]] = []

    async def app(ctx: RequestContext) -> None:
        tls = ctx.features.get(TlsFeature)
        addresses = ctx.features[ServerAddressesFeature].addresses
        seen.append((tls, list(addresses), ctx.features[RequestFeature].scheme))
        ctx.features[ResponseFeature].status = 200
        await ctx.features[ResponseBodyFeature].complete(b"ok")

    with trio.fail_after(TIMEOUT):
        async with https_server(app, certs.tls(), asgi=False) as srv:
            async with client(certs, srv.url) as c:
                assert (await c.get("/")).status_code == 200
            # A client offering h2 first gets HTTP/2 (ALPN offers h2, then http/1.1).
            async with client(certs, srv.url, http2=True) as c:
                r = await c.get("/")
                assert (r.status_code, r.http_version) == (200, "HTTP/2")
    assert srv.addresses == [srv.url]
    assert [tls.alpn_protocol for tls, _, _ in seen] == ["http/1.1", "h2"]
    for tls, addresses, scheme in seen:
        assert isinstance(tls, TlsFeature)
        assert tls.version == "TLSv1.3"
        assert tls.tls_version == 0x0304
        assert isinstance(tls.cipher, str) and tls.cipher.startswith("TLS_")
        assert tls.peer_certificate is None
        assert tls.peer_certificate_pem is None
        assert tls.peer_certificate_name is None
        assert tls.server_certificate_pem == certs.leaf_pem
        assert addresses == [srv.url]
        assert scheme == "https"
    assert len(seen) == 2
    messages = [r.getMessage() for r in caplog.records if r.name == "trioserve"]
    assert f"trioserve listening on {srv.url}" in messages, messages
    assert not any("http://" in m for m in messages), messages


async def test_key_in_the_certificate_file(certs: Certs) -> None:
    """``keyfile=None``: the key is in ``certfile`` (before the chain); the app still gets the
    leaf certificate as ``server_cert``."""
    scopes: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scopes.append(scope)
        await respond(send, b"ok")

    with trio.fail_after(TIMEOUT):
        async with https_server(app, Tls(certfile=str(certs.combined))) as srv, \
                client(certs, srv.url) as c:
            assert (await c.get("/")).status_code == 200
    assert scopes[0]["extensions"]["tls"]["server_cert"] == certs.leaf_pem


async def test_wsgi_environ_over_https(certs: Certs) -> None:
    environs: list[dict[str, Any]] = []

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        environs.append({k: v for k, v in environ.items() if isinstance(v, str)})
        environs[-1]["wsgi.url_scheme"] = environ["wsgi.url_scheme"]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    with trio.fail_after(TIMEOUT):
        async with https_server(WSGIBridge(app, threads=2), certs.tls(), asgi=False) as srv, \
                client(certs, srv.url) as c:
            r = await c.get("/w?x=1")
    assert (r.status_code, r.content) == (200, b"ok")
    (env,) = environs
    assert env["wsgi.url_scheme"] == "https"
    assert env["HTTPS"] == "on"
    assert env["SERVER_PORT"] == str(srv.port)
    assert (env["PATH_INFO"], env["QUERY_STRING"]) == ("/w", "x=1")


async def test_plain_http_has_no_tls_marks() -> None:
    """The contrast: without ``Config.tls`` nothing says https."""
    scopes: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scopes.append(scope)
        await respond(send, b"ok")

    with trio.fail_after(TIMEOUT):
        async with run_server(app, lifespan="off") as srv, \
                httpx.AsyncClient(base_url=srv.url, timeout=TIMEOUT) as c:
            assert (await c.get("/")).status_code == 200
    assert srv.addresses[0].startswith("http://")
    assert scopes[0]["scheme"] == "http"
    assert "tls" not in scopes[0]["extensions"]


# ------------------------------------------------------------------ bodies and files


def pattern(n: int) -> bytes:
    block = hashlib.sha256(b"trioserve").digest() * 2048  # 64 KiB, not compressible by chance
    return (block * (n // len(block) + 1))[:n]


async def test_keep_alive_large_bodies_and_streaming(certs: Certs) -> None:
    upload = os.urandom(5 * MiB)
    streamed = pattern(3 * MiB + 12345)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if path == "/echo":
            body = await read_body(receive)
            digest = hashlib.sha256(body).hexdigest().encode()
            await respond(send, body, headers=[(b"x-sha256", digest),
                                               (b"content-length", b"%d" % len(body))])
        elif path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for i in range(0, len(streamed), 100_000):
                await send({"type": "http.response.body", "body": streamed[i:i + 100_000],
                            "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        else:
            await respond(send, str(scope["client"][1]).encode())

    with trio.fail_after(TIMEOUT):
        async with https_server(app, certs.tls()) as srv, client(certs, srv.url) as c:
            port = (await c.get("/peer")).content
            assert (await c.get("/peer")).content == port  # one connection, kept alive
            r = await c.post("/echo", content=upload)
            assert r.status_code == 200
            assert r.headers["x-sha256"] == hashlib.sha256(upload).hexdigest()
            assert len(r.content) == len(upload)
            assert hashlib.sha256(r.content).digest() == hashlib.sha256(upload).digest()
            r = await c.get("/stream")
            assert r.status_code == 200
            assert r.headers.get("transfer-encoding") == "chunked"
            assert "content-length" not in r.headers
            assert r.content == streamed
            # a chunked upload too
            chunks = [upload[i:i + MiB] for i in range(0, len(upload), MiB)]

            async def gen() -> AsyncIterator[bytes]:
                for chunk in chunks:
                    yield chunk

            r = await c.post("/echo", content=gen())
            assert r.headers["x-sha256"] == hashlib.sha256(upload).hexdigest()
            assert (await c.get("/peer")).content == port  # still the same connection


@pytest.fixture
def big_file(tmp_path: Path) -> tuple[Path, bytes]:
    content = os.urandom(3 * MiB + 4321)
    path = tmp_path / "big.bin"
    path.write_bytes(content)
    return path, content


@pytest.mark.parametrize("with_length", [True, False], ids=["content-length", "chunked"])
async def test_asgi_pathsend_over_tls(certs: Certs, big_file: tuple[Path, bytes],
                                      with_length: bool) -> None:
    path, content = big_file

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"application/octet-stream")]
        if with_length:
            headers.append((b"content-length", str(len(content)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.pathsend", "path": str(path)})

    with trio.fail_after(TIMEOUT):
        async with https_server(app, certs.tls()) as srv, client(certs, srv.url) as c:
            for _ in range(2):  # the connection is reusable after a file response
                r = await c.get("/file")
                assert r.status_code == 200
                assert len(r.content) == len(content)
                assert r.content == content
                if with_length:
                    assert r.headers["content-length"] == str(len(content))
                else:
                    assert r.headers["transfer-encoding"] == "chunked"


async def test_wsgi_file_wrapper_over_tls(certs: Certs, big_file: tuple[Path, bytes]) -> None:
    path, content = big_file
    files: list[io.BufferedReader] = []

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        f = open(path, "rb")  # the file wrapper closes it
        files.append(f)
        if environ["PATH_INFO"] == "/seeked":
            f.seek(1000)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        result: Iterable[bytes] = environ["wsgi.file_wrapper"](f, 64 * 1024)
        return result

    with trio.fail_after(TIMEOUT):
        async with https_server(WSGIBridge(app, threads=2), certs.tls(), asgi=False) as srv, \
                client(certs, srv.url) as c:
            r = await c.get("/whole")
            assert (r.status_code, len(r.content)) == (200, len(content))
            assert r.content == content
            r = await c.get("/seeked")
            assert r.content == content[1000:]
    assert all(f.closed for f in files)


async def test_features_send_file_range_over_tls(certs: Certs,
                                                 big_file: tuple[Path, bytes]) -> None:
    path, content = big_file
    offset, count = 12345, 2 * MiB + 7

    async def app(ctx: RequestContext) -> None:
        ctx.features[ResponseFeature].headers = [(b"content-length", b"%d" % count)]
        out = ctx.features[ResponseBodyFeature]
        await out.send_file(path, offset, count)
        await out.complete()

    with trio.fail_after(TIMEOUT):
        async with https_server(app, certs.tls(), asgi=False) as srv, \
                client(certs, srv.url) as c:
            r = await c.get("/")
    assert r.content == content[offset:offset + count]


async def tls_connect(certs: Certs, port: int) -> trio.SSLStream[trio.SocketStream]:
    """A raw TLS connection (the server sends no close_notify: https_compatible)."""
    stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port),
                            certs.client_context(), server_hostname="localhost",
                            https_compatible=True)
    await stream.do_handshake()
    return stream


async def test_pipelining_and_disconnect_over_tls(certs: Certs) -> None:
    disconnected = trio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        if scope["path"] == "/wait":
            assert (await receive())["type"] == "http.disconnect"
            disconnected.set()
            return
        await respond(send, b"%s:%d" % (scope["path"].encode(), len(body)))

    with trio.fail_after(TIMEOUT):
        async with https_server(app, certs.tls()) as srv:
            stream = await tls_connect(certs, srv.port)
            await stream.send_all(
                b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
                b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = await read_until_closed(stream)
            responses = parse_responses(data, [b"GET", b"POST", b"GET"])
            assert [(r.status_code, b) for r, b in responses] == [
                (200, b"/a:0"), (200, b"/b:3"), (200, b"/c:0")]
            # the app waiting for http.disconnect learns that the client left
            for abrupt in (False, True):
                disconnected = trio.Event()
                stream = await tls_connect(certs, srv.port)
                await stream.send_all(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
                await trio.sleep(0.05)
                if abrupt:  # no close_notify
                    await stream.transport_stream.aclose()
                else:
                    await stream.aclose()
                with trio.fail_after(3):
                    await disconnected.wait()


async def test_orderly_close_sends_close_notify(certs: Certs) -> None:
    """A strict TLS client (``https_compatible=False``: a close without ``close_notify`` is an
    error) sees a clean end after a complete response, also a close-delimited HTTP/1.0 body;
    a response cut short ends without ``close_notify``, so it cannot pass for a complete one."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part one, ", "more_body": True})
        if scope["path"] == "/cut":
            raise RuntimeError("the app fails mid-response")
        await send({"type": "http.response.body", "body": b"part two"})

    async def strict_exchange(port: int, request: bytes) -> tuple[bytes, bool]:
        stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port),
                                certs.client_context(), server_hostname="localhost")
        await stream.send_all(request)
        data = b""
        try:
            while chunk := await stream.receive_some(65536):
                data += chunk
        except trio.BrokenResourceError:
            return data, False
        finally:
            await stream.transport_stream.aclose()
        return data, True

    with trio.fail_after(TIMEOUT):
        async with https_server(app, certs.tls()) as srv:
            data, clean = await strict_exchange(
                srv.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert clean and data.endswith(b"part one, \r\n8\r\npart two\r\n0\r\n\r\n"), data
            data, clean = await strict_exchange(srv.port, b"GET / HTTP/1.0\r\n\r\n")
            assert b"transfer-encoding" not in data.lower()
            assert clean and data.endswith(b"\r\n\r\npart one, part two"), data
            data, clean = await strict_exchange(srv.port, b"GET /cut HTTP/1.0\r\n\r\n")
            assert data.endswith(b"part one, ") and not clean


async def test_upgrade_speaks_inside_tls(certs: Certs) -> None:
    async def app(ctx: RequestContext) -> None:
        up = ctx.features[UpgradeFeature]
        stream = await up.upgrade([(b"upgrade", b"echo/1")])
        async with stream:
            buf = b""
            while not buf.endswith(b"bye"):
                data = await stream.receive_some(1024)
                if not data:
                    break
                buf += data
                await stream.send_all(data.upper())

    with trio.fail_after(TIMEOUT):
        async with https_server(app, certs.tls(), asgi=False) as srv:
            stream = await tls_connect(certs, srv.port)
            # the first protocol bytes travel with the request
            await stream.send_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                                  b"Upgrade: echo/1\r\n\r\nearly;")
            buf = b""
            while b"\r\n\r\n" not in buf or not buf.endswith(b"EARLY;"):
                data = await stream.receive_some(1024)
                assert data, buf
                buf += data
            head, _, rest = buf.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 ")
            assert rest == b"EARLY;"
            await stream.send_all(b"bye")
            assert await read_until_closed(stream) == b"BYE"


# ------------------------------------------------------------------ client certificates


async def cert_app(scope: Scope, receive: Receive, send: Send) -> None:
    tls = scope["extensions"]["tls"]
    await respond(send, json.dumps([tls["client_cert_name"], tls["client_cert_chain"]]).encode())


def client_seen(r: httpx.Response) -> tuple[str | None, list[str]]:
    name, chain = json.loads(r.content)
    return name, chain


async def test_client_certificate_required(certs: Certs,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="trioserve")
    with trio.fail_after(TIMEOUT):
        async with https_server(cert_app, certs.mtls("required")) as srv:
            async with client(certs, srv.url, cert=(certs.client_cert, certs.client_key)) as c:
                r = await c.get("/")
                assert r.status_code == 200
                name, chain = client_seen(r)
                assert name == certs.client_name
                assert name is not None and "CN=test client" in name
                assert len(chain) == 1
                assert chain[0].startswith("-----BEGIN CERTIFICATE-----")
                assert same_certificate(chain[0], certs.client_pem)
            # without a certificate: the handshake fails (with TLS 1.3 the client learns
            # it on its first read)
            async with client(certs, srv.url) as c:
                with pytest.raises(httpx.TransportError):
                    await c.get("/")
            # a certificate the client CA did not issue
            async with client(certs, srv.url, cert=(certs.rogue_cert, certs.rogue_key)) as c:
                with pytest.raises(httpx.TransportError):
                    await c.get("/")
            # the same refusals with TLS 1.2, where the handshake itself fails
            async with client(certs, srv.url, maximum_version=ssl.TLSVersion.TLSv1_2) as c:
                with pytest.raises(httpx.TransportError):
                    await c.get("/")
            # and the server goes on serving
            async with client(certs, srv.url, cert=(certs.client_cert, certs.client_key),
                              maximum_version=ssl.TLSVersion.TLSv1_2) as c:
                r = await c.get("/")
                assert r.status_code == 200
                assert client_seen(r)[0] == certs.client_name
    failures = handshake_failures(caplog)
    assert len(failures) == 3, failures
    assert all(r.levelno == logging.DEBUG for r in caplog.records
               if "TLS handshake with" in r.getMessage())


async def test_client_certificate_optional(certs: Certs) -> None:
    with trio.fail_after(TIMEOUT):
        async with https_server(cert_app, certs.mtls("optional")) as srv:
            async with client(certs, srv.url, cert=(certs.client_cert, certs.client_key)) as c:
                r = await c.get("/")
                assert r.status_code == 200
                name, chain = client_seen(r)
                assert name == certs.client_name
                assert len(chain) == 1 and same_certificate(chain[0], certs.client_pem)
            async with client(certs, srv.url) as c:
                r = await c.get("/")
                assert r.status_code == 200
                assert client_seen(r) == (None, [])
            # "optional" still verifies a certificate that is sent
            async with client(certs, srv.url, cert=(certs.rogue_cert, certs.rogue_key)) as c:
                with pytest.raises(httpx.TransportError):
                    await c.get("/")


async def test_client_certificate_not_asked_for_by_default(certs: Certs) -> None:
    """``client_cert="none"``: a client that has a certificate is not asked for it."""
    with trio.fail_after(TIMEOUT):
        async with https_server(cert_app, certs.tls()) as srv, \
                client(certs, srv.url, cert=(certs.client_cert, certs.client_key)) as c:
            r = await c.get("/")
    assert client_seen(r) == (None, [])


# ------------------------------------------------------------------------------ refusals


async def test_plain_http_to_the_tls_port_gets_a_readable_400(certs: Certs) -> None:
    with trio.fail_after(TIMEOUT):
        async with https_server(ok_app, certs.tls(handshake_timeout=30)) as srv:
            for request in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                            b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
                            b"DELETE /x HTTP/1.1\r\nHost: x\r\n\r\n",
                            b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"):
                with trio.fail_after(5):  # closed at once, not at the handshake deadline
                    data = await raw_exchange(srv.port, request)
                ((resp, body),) = parse_responses(data)
                assert resp.status_code == 400
                assert b"HTTPS" in body
                assert (b"connection", b"close") in resp.headers
            await assert_https_works(certs, srv.url)


async def test_garbage_instead_of_a_client_hello_is_closed(
        certs: Certs, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="trioserve")
    with trio.fail_after(TIMEOUT):
        async with https_server(ok_app, certs.tls(handshake_timeout=30)) as srv:
            for garbage in (b"\x00\x01\x02garbage" * 20, b"\x00" + os.urandom(63) + b"\r\n\r\n",
                            b"\x16\x03\x01\x00\x05hello"):  # a record that is no ClientHello
                with trio.fail_after(5):
                    data = await raw_exchange(srv.port, garbage)
                assert b"HTTP/" not in data
            await assert_https_works(certs, srv.url)
    assert len(handshake_failures(caplog)) == 3


async def test_tls_1_1_client_is_refused(certs: Certs,
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="trioserve")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSVersion.TLSv1_1 is deprecated
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 needs it for TLS < 1.2
        except (ValueError, ssl.SSLError) as exc:
            pytest.skip(f"this OpenSSL cannot be made to offer TLS 1.1: {exc}")
    ctx.load_verify_locations(cafile=str(certs.ca_pem))
    with trio.fail_after(TIMEOUT):
        async with https_server(ok_app, certs.tls(handshake_timeout=30)) as srv:
            stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", srv.port), ctx,
                                    server_hostname="localhost")
            with trio.fail_after(5), pytest.raises(trio.BrokenResourceError) as info:
                await stream.do_handshake()
            await stream.transport_stream.aclose()
            cause = str(info.value.__cause__)
            if "NO_PROTOCOLS_AVAILABLE" in cause or "no protocols available" in cause:
                pytest.skip(f"this OpenSSL refuses to offer TLS 1.1: {cause}")
            await assert_https_works(certs, srv.url)
    failures = handshake_failures(caplog)
    assert len(failures) == 1, failures
    assert "UNSUPPORTED_PROTOCOL" in failures[0] or "version" in failures[0].lower(), failures


@pytest.mark.parametrize("sent", [b"", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"],
                         ids=["silent", "partial-client-hello"])
async def test_handshake_deadline(certs: Certs, caplog: pytest.LogCaptureFixture,
                                  sent: bytes) -> None:
    caplog.set_level(logging.DEBUG, logger="trioserve")
    with trio.fail_after(TIMEOUT):
        async with https_server(ok_app, certs.tls(handshake_timeout=0.5)) as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            async with stream:
                start = trio.current_time()
                if sent:
                    await stream.send_all(sent)
                with trio.fail_after(4):
                    data = await read_until_closed(stream)
                elapsed = trio.current_time() - start
            assert data == b""
            assert elapsed >= 0.3, elapsed  # the deadline, not an immediate refusal
            # a client that is quick enough is unaffected
            await assert_https_works(certs, srv.url)
    assert any("handshake timed out" in m for m in handshake_failures(caplog)), \
        handshake_failures(caplog)


async def test_shutdown_does_not_wait_for_a_pending_handshake(certs: Certs) -> None:
    """A client that connected but has not started the handshake (a browser's spare
    connection) is like an idle keep-alive connection: a graceful shutdown closes it at once,
    as it does over plain HTTP, instead of waiting for the handshake deadline."""
    with trio.fail_after(TIMEOUT):
        with trio.CancelScope() as bound:
            async with https_server(ok_app, certs.tls(handshake_timeout=8),
                                    timeouts={"graceful": 8}) as srv:
                stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
                await assert_https_works(certs, srv.url)  # the server accepted by now
                await trio.sleep(0.1)
                bound.deadline = trio.current_time() + 2
        await stream.aclose()
    assert not bound.cancelled_caught, \
        "the server's shutdown waited for the pending TLS handshake"


# ---------------------------------------------------------------------- curl, a real client


async def test_curl_https_and_client_certificates(certs: Certs) -> None:
    curl()
    with trio.fail_after(TIMEOUT * 2):
        async with https_server(ok_app, certs.tls()) as srv:
            r = await run_curl("--cacert", str(certs.ca_pem), "-w", " %{http_version}",
                               f"{srv.url}/")
            assert r.returncode == 0, r.stderr
            assert r.stdout == b"ok 2"  # curl offers h2 first; ALPN settles on it
            r = await run_curl("--cacert", str(certs.ca_pem),
                               f"https://localhost:{srv.port}/")
            assert (r.returncode, r.stdout) == (0, b"ok"), r.stderr
            r = await run_curl(f"{srv.url}/")  # not trusting the CA
            assert r.returncode == 60, r.stderr
        async with https_server(cert_app, certs.mtls("required")) as srv:
            r = await run_curl("--cacert", str(certs.ca_pem), "--cert", str(certs.client_cert),
                               "--key", str(certs.client_key), f"{srv.url}/")
            assert r.returncode == 0, r.stderr
            name, chain = json.loads(r.stdout)
            assert name == certs.client_name
            assert same_certificate(chain[0], certs.client_pem)
            r = await run_curl("--cacert", str(certs.ca_pem), f"{srv.url}/")
            assert r.returncode != 0 and r.stdout == b"", (r.returncode, r.stderr)


async def test_curl_tls_1_1_is_refused(certs: Certs, caplog: pytest.LogCaptureFixture) -> None:
    curl()
    caplog.set_level(logging.DEBUG, logger="trioserve")
    with trio.fail_after(TIMEOUT):
        async with https_server(ok_app, certs.tls()) as srv:
            r = await run_curl("--cacert", str(certs.ca_pem), "--tlsv1.0", "--tls-max", "1.1",
                               "--ciphers", "DEFAULT@SECLEVEL=0", f"{srv.url}/")
            err = r.stderr.decode(errors="replace")
            if not handshake_failures(caplog) and "no protocols available" in err:
                pytest.skip(f"this curl refuses to offer TLS 1.1: {err.strip()}")
            assert r.returncode == 35, err  # SSL connect error
            assert r.stdout == b""
            r = await run_curl("--cacert", str(certs.ca_pem), "--tlsv1.2", f"{srv.url}/")
            assert (r.returncode, r.stdout) == (0, b"ok"), r.stderr
    failures = handshake_failures(caplog)
    assert len(failures) == 1, failures
    assert "UNSUPPORTED_PROTOCOL" in failures[0], failures


# ------------------------------------------------------------------ configuration errors


def test_client_cert_without_ca_certs_is_a_config_error(certs: Certs) -> None:
    modes: list[ClientCertMode] = ["required", "optional"]
    for mode in modes:
        with pytest.raises(ConfigError, match="ca_certs"):
            Tls(certfile=str(certs.certfile), client_cert=mode)
    with pytest.raises(ConfigError, match="client_cert"):
        Tls(certfile=str(certs.certfile), client_cert="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="handshake_timeout"):
        Tls(certfile=str(certs.certfile), handshake_timeout=0)
    with pytest.raises(ConfigError, match="certfile"):
        Tls(certfile="")


def test_server_context_missing_files(certs: Certs, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match="no such file") as info:
        server_context(Tls(certfile=missing, keyfile=str(certs.keyfile)))
    assert "certfile" in str(info.value) and missing in str(info.value)
    with pytest.raises(ConfigError, match=r"keyfile.*no such file"):
        server_context(Tls(certfile=str(certs.certfile), keyfile=missing))
    with pytest.raises(ConfigError, match=r"ca_certs.*no such file"):
        server_context(certs.tls(ca_certs=missing, client_cert="required"))


def test_server_context_bad_files(certs: Certs, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not match the certificate"):
        server_context(Tls(certfile=str(certs.certfile), keyfile=str(certs.other_key)))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="not a PEM"):
        server_context(Tls(certfile=str(junk), keyfile=str(certs.keyfile)))
    with pytest.raises(ConfigError, match="not a PEM"):
        server_context(Tls(certfile=str(certs.certfile), keyfile=str(junk)))
    with pytest.raises(ConfigError, match="ca_certs"):
        server_context(certs.tls(ca_certs=str(junk), client_cert="required"))
    with pytest.raises(ConfigError, match="ciphers"):
        server_context(certs.tls(ciphers="NO-SUCH-CIPHER"))
    ctx = server_context(certs.tls(ciphers="ECDHE+AESGCM"))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_NONE
    assert server_context(certs.mtls("optional")).verify_mode == ssl.CERT_OPTIONAL
    assert server_context(certs.mtls("required")).verify_mode == ssl.CERT_REQUIRED


@pytest.fixture(scope="module")
def encrypted_key(certs: Certs) -> Path:
    key = serialization.load_pem_private_key(certs.keyfile.read_bytes(), password=None)
    path = certs.dir / "server-key-encrypted.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(b"s3cret")))
    return path


async def test_encrypted_key_with_its_password_serves(certs: Certs,
                                                      encrypted_key: Path) -> None:
    tls = Tls(certfile=str(certs.certfile), keyfile=str(encrypted_key),
              keyfile_password="s3cret")
    server_context(tls)
    with trio.fail_after(TIMEOUT):
        async with https_server(ok_app, tls) as srv:
            await assert_https_works(certs, srv.url)


def test_wrong_key_password_is_a_config_error(certs: Certs, encrypted_key: Path) -> None:
    with pytest.raises(ConfigError) as info:
        server_context(Tls(certfile=str(certs.certfile), keyfile=str(encrypted_key),
                           keyfile_password="wrong"))
    assert str(encrypted_key) in str(info.value)


def test_wrong_key_password_is_named(certs: Certs, encrypted_key: Path) -> None:
    with pytest.raises(ConfigError) as info:
        server_context(Tls(certfile=str(certs.certfile), keyfile=str(encrypted_key),
                           keyfile_password="wrong"))
    assert "keyfile_password" in str(info.value), str(info.value)


def test_missing_key_password_is_a_clean_error(certs: Certs, encrypted_key: Path) -> None:
    # A new session has no controlling terminal, so a prompt cannot block the test.
    res = subprocess.run(
        module_command("trioserve.demo:app", "--port", "0", "--certfile", str(certs.certfile),
                       "--keyfile", str(encrypted_key)),
        env=child_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=30, start_new_session=True, check=False)
    assert res.returncode == 2, res.stderr
    assert "pass phrase" not in res.stderr, res.stderr
    assert_one_error_line(res.stderr, "password")


# ------------------------------------------------------------------------------- the CLI


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``main`` installs its stderr handler on the ``trioserve`` logger; put things back."""
    parent = logging.getLogger("trioserve")
    saved = (parent.handlers[:], parent.level, parent.propagate)
    yield
    parent.handlers[:], parent.level, parent.propagate = saved


def assert_one_error_line(stderr: str, *needles: str) -> None:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("trioserve: error:")]
    assert len(errors) == 1, stderr
    for needle in needles:
        assert needle in errors[0], stderr


@pytest.mark.parametrize(("args", "needles"), [
    (["--certfile", "{missing}"], ["no such file", "{missing}"]),
    (["--certfile", "{cert}", "--keyfile", "{other_key}"], ["does not match"]),
    (["--ca-certs", "{ca}"], ["--ca-certs needs --certfile"]),
    (["--keyfile", "{key}"], ["--keyfile needs --certfile"]),
    (["--client-cert", "required"], ["--client-cert needs --certfile"]),
    (["--certfile", "{cert}", "--keyfile", "{key}", "--client-cert", "required"],
     ["--client-cert required", "--ca-certs"]),
], ids=["missing-cert", "key-mismatch", "ca-certs-alone", "keyfile-alone", "client-cert-alone",
        "required-without-ca"])
def test_cli_tls_errors_exit_2(certs: Certs, tmp_path: Path, restore_logging: None,
                               capsys: pytest.CaptureFixture[str], args: list[str],
                               needles: list[str]) -> None:
    values = {"missing": str(tmp_path / "missing.pem"), "cert": str(certs.certfile),
              "key": str(certs.keyfile), "other_key": str(certs.other_key),
              "ca": str(certs.client_ca_pem)}
    argv = ["trioserve.demo:app", "--port", "0", *(a.format(**values) for a in args)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert_one_error_line(err, *(n.format(**values) for n in needles))
    assert "listening on" not in err


def test_cli_builds_the_tls_config(certs: Certs, encrypted_key: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    parser = build_parser()
    config = build_config(parser.parse_args([
        "x:app", "--certfile", str(certs.certfile), "--keyfile", str(certs.keyfile),
        "--ca-certs", str(certs.client_ca_pem), "--client-cert", "optional",
        "--ciphers", "ECDHE+AESGCM", "--tls-handshake-timeout", "2.5"]))
    assert config.tls == Tls(certfile=str(certs.certfile), keyfile=str(certs.keyfile),
                             ca_certs=str(certs.client_ca_pem), client_cert="optional",
                             ciphers="ECDHE+AESGCM", handshake_timeout=2.5)
    assert build_config(parser.parse_args(["x:app"])).tls is None
    monkeypatch.setenv("TRIOSERVE_KEYFILE_PASSWORD", "s3cret")
    config = build_config(parser.parse_args([
        "x:app", "--certfile", str(certs.certfile), "--keyfile", str(encrypted_key)]))
    assert config.tls is not None and config.tls.keyfile_password == "s3cret"


async def test_dev_cert_writes_a_working_certificate(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "certs"
    assert main(["dev-cert", "--dir", str(out)]) == 0
    cert_path, key_path = out / "localhost.pem", out / "localhost-key.pem"
    assert cert_path.is_file() and key_path.is_file()
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    stdout = capsys.readouterr().out
    assert str(cert_path) in stdout and str(key_path) in stdout
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    tls = Tls(certfile=str(cert_path), keyfile=str(key_path))
    ctx = ssl.create_default_context(cafile=str(cert_path))
    with trio.fail_after(TIMEOUT):
        async with https_server(ok_app, tls) as srv:
            for host in ("localhost", "127.0.0.1"):
                async with httpx.AsyncClient(verify=ctx, timeout=TIMEOUT) as c:
                    r = await c.get(f"https://{host}:{srv.port}/")
                    assert (r.status_code, r.content) == (200, b"ok")


async def test_dev_cert_keeps_existing_files_and_force_makes_a_private_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_path = tmp_path / "localhost-key.pem"
    key_path.write_text("old")
    key_path.chmod(0o644)
    assert main(["dev-cert", "--dir", str(tmp_path)]) == 1
    assert "--force" in capsys.readouterr().err
    assert key_path.read_text() == "old"
    assert main(["dev-cert", "--dir", str(tmp_path), "--force"]) == 0
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600  # a new file, not the old mode
    assert "PRIVATE KEY" in key_path.read_text()


async def test_polling_for_a_disconnect_sees_a_client_that_left(certs: Certs) -> None:
    """Starlette's ``request.is_disconnected()``: ``receive()`` inside an already-cancelled
    scope must report a client that closed (here without ``close_notify``)."""
    body_read = trio.Event()
    client_gone = trio.Event()
    done = trio.Event()
    polled: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        body_read.set()
        await client_gone.wait()
        await trio.sleep(0.1)  # the FIN has reached the server's socket
        message: dict[str, Any] = {"type": "none"}
        with trio.CancelScope() as cs:
            cs.cancel()
            message = await receive()
        polled.append(message["type"])
        done.set()

    with trio.fail_after(TIMEOUT):
        async with https_server(app, certs.tls()) as srv:
            stream = await tls_connect(certs, srv.port)
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await body_read.wait()
            await stream.transport_stream.aclose()  # no close_notify
            client_gone.set()
            await done.wait()
    assert polled == ["http.disconnect"]


async def test_upgraded_stream_ends_quietly_when_the_client_just_closes(
        certs: Certs, caplog: pytest.LogCaptureFixture) -> None:
    """After an upgrade, a client closing without ``close_notify`` reads as an ordinary end,
    as on plain TCP, not as an application error."""
    ended = trio.Event()

    async def app(ctx: RequestContext) -> None:
        stream = await ctx.features[UpgradeFeature].upgrade([(b"upgrade", b"echo/1")])
        async with stream:
            while data := await stream.receive_some(1024):
                await stream.send_all(data)
        ended.set()

    with trio.fail_after(TIMEOUT):
        async with https_server(app, certs.tls(), asgi=False) as srv:
            stream = await tls_connect(certs, srv.port)
            await stream.send_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                                  b"Upgrade: echo/1\r\n\r\nhi")
            buf = b""
            while not buf.endswith(b"hi"):
                buf += await stream.receive_some(1024)
            await stream.transport_stream.aclose()
            await ended.wait()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
