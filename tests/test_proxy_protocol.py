"""PROXY protocol v1/v2: the sans-IO parser (valid, invalid, byte by byte, a property test) and
the real server behind it (``ProxyConfig.proxy_protocol``): raw sockets send a header and then
HTTP/1.1, HTTP/2 (prior knowledge) or TLS, and the app sees the client the header names."""

from __future__ import annotations

import json
import logging
import socket
import ssl
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import hypothesis.strategies as st
import pytest
import trio
import trustme
from conftest import make_config, parse_responses, read_until_closed, run_server
from hypothesis import example, given, settings

from trioserve import Tls
from trioserve.config import ProxyConfig
from trioserve.protocols.proxy_protocol import (
    V1_MAX_SIZE,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    header_size,
    parse_proxy_header,
)

TIMEOUT = 10.0
Scope = dict[str, Any]


# ------------------------------------------------------------------------- header builders


def v2(command: int = 1, family: int = 1, transport: int = 1, body: bytes = b"",
       version: int = 2, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return (V2_SIGNATURE + bytes([version << 4 | command, family << 4 | transport])
            + struct.pack("!H", size) + body)


def v2_inet(src: str, sport: int, dst: str, dport: int, tlvs: bytes = b"") -> bytes:
    body = socket.inet_pton(socket.AF_INET, src) + socket.inet_pton(socket.AF_INET, dst)
    return v2(body=body + struct.pack("!HH", sport, dport) + tlvs)


def v2_inet6(src: str, sport: int, dst: str, dport: int, tlvs: bytes = b"") -> bytes:
    body = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
    return v2(family=2, body=body + struct.pack("!HH", sport, dport) + tlvs)


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def fed_byte_by_byte(data: bytes) -> ProxyHeader | None:
    """What a reader that feeds growing prefixes gets: the first non-None result."""
    for i in range(1, len(data) + 1):
        header = parse_proxy_header(data[:i])
        if header is not None:
            return header
    return None


def assert_valid(data: bytes, expected: ProxyHeader, *followers: bytes) -> None:
    """``data`` parses as ``expected``, whole and byte by byte, followed by any of
    ``followers`` (what follows the header is not looked at, and is left to the caller); every
    proper prefix asks for more bytes."""
    assert len(data) == expected.length
    assert parse_proxy_header(data) == expected
    for follower in followers:
        assert parse_proxy_header(data + follower) == expected
    assert fed_byte_by_byte(data + followers[-1]) == expected
    for i in range(len(data)):
        assert parse_proxy_header(data[:i]) is None


def assert_invalid(data: bytes, message: str) -> None:
    """``data`` is refused with an error matching ``message``, whole and fed byte by byte."""
    with pytest.raises(ProxyProtocolError, match=message):
        parse_proxy_header(data)
    with pytest.raises(ProxyProtocolError, match=message):
        fed_byte_by_byte(data)


# ------------------------------------------------------------------------------ parser: v1

V1_CASES = [
    (b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n",
     ProxyHeader(1, False, ("192.0.2.1", 56324), ("198.51.100.2", 443), 45)),
    (b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n",
     ProxyHeader(1, False, ("2001:db8::1", 1), ("2001:db8::2", 65535), 44)),
    (b"PROXY TCP6 ::ffff:192.0.2.1 ::1 0 80\r\n",
     ProxyHeader(1, False, ("::ffff:c000:201", 0), ("::1", 80), 38)),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(1, False, None, None, 15)),
    (b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
     ProxyHeader(1, False, None, None, 59)),
]


@pytest.mark.parametrize(("data", "expected"), V1_CASES)
def test_v1_valid(data: bytes, expected: ProxyHeader) -> None:
    assert_valid(data, expected, b"GET / HTTP/1.1\r\n\r\n", b"\r\x00\n", b"GET /")


def test_v1_longest_header_fits() -> None:
    src = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    data = f"PROXY TCP6 {src} {src} 65535 65535\r\n".encode()
    assert len(data) == 104 <= V1_MAX_SIZE
    header = parse_proxy_header(data)
    assert header is not None and header.source == (src, 65535)
    unknown = b"PROXY UNKNOWN " + b"x" * (V1_MAX_SIZE - 16) + b"\r\n"
    assert len(unknown) == V1_MAX_SIZE
    assert parse_proxy_header(unknown) == ProxyHeader(1, False, None, None, V1_MAX_SIZE)


@pytest.mark.parametrize(("data", "message"), [
    (b"GET / HTTP/1.1\r\n\r\n", "not a PROXY protocol header"),
    (b"PROXZ", "not a PROXY protocol header"),
    (b"proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n", "not a PROXY protocol header"),
    (b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n", "unknown protocol"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n", "expected"),
    (b"PROXY TCP4  1.2.3.4 1.2.3.4 1 2\r\n", "expected"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 \r\n", "expected"),
    (b"PROXY TCP4 1.2.3.256 1.2.3.4 1 2\r\n", "invalid address"),
    (b"PROXY TCP4 01.2.3.4 1.2.3.4 1 2\r\n", "invalid address"),
    (b"PROXY TCP4 ::1 1.2.3.4 1 2\r\n", "not an IPv4 address"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "not an IPv6 address"),
    (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "zone id"),
    (b"PROXY TCP6 ::1 fe80::1%1 1 2\r\n", "zone id"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n", "invalid port"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 -1 2\r\n", "invalid port"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 x\r\n", "invalid port"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 \xd9\xa1\r\n", "invalid port"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n", "must end with CRLF"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\rX", "CR not followed by LF"),
    (b"PROXY TCP4 1.2.3.4\r\r\n", "CR not followed by LF"),
    (b"PROXY UNKNOWN " + b"x" * 200, "no CRLF within 107 bytes"),
    (b"PROXY UNKNOWN " + b"x" * (V1_MAX_SIZE - 15) + b"\r\n", "no CRLF within 107 bytes"),
])
def test_v1_invalid(data: bytes, message: str) -> None:
    assert_invalid(data, message)


def test_not_a_header_fails_at_the_first_byte() -> None:
    for first in (b"G", b"\x16", b"\x00", b"p", b" "):  # HTTP, TLS, binary, lower case, space
        with pytest.raises(ProxyProtocolError):
            parse_proxy_header(first)
    assert parse_proxy_header(b"") is None
    assert parse_proxy_header(b"P") is None
    assert parse_proxy_header(b"\r") is None
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(b"\r\n\r\n\x00\r\nQUIX")


# ------------------------------------------------------------------------------ parser: v2

V2_CASES = [
    (v2_inet("192.0.2.1", 56324, "198.51.100.2", 443),
     ProxyHeader(2, False, ("192.0.2.1", 56324), ("198.51.100.2", 443), 28)),
    (v2_inet6("2001:db8::1", 4711, "2001:db8::2", 8443),
     ProxyHeader(2, False, ("2001:db8::1", 4711), ("2001:db8::2", 8443), 52)),
    # TLVs (ALPN, authority, a unique id) follow the addresses and are skipped
    (v2_inet("10.1.2.3", 1, "10.0.0.1", 80, tlv(0x01, b"h2") + tlv(0x02, b"example.com")
             + tlv(0x05, b"\x00" * 32)),
     ProxyHeader(2, False, ("10.1.2.3", 1), ("10.0.0.1", 80), 28 + 5 + 14 + 35)),
    # LOCAL (a health check from the proxy itself): addresses ignored, whatever they say
    (v2(command=0, family=0, transport=0), ProxyHeader(2, True, None, None, 16)),
    (v2(command=0, family=1, body=b"\x01" * 12), ProxyHeader(2, True, None, None, 28)),
    (v2(command=0, family=1, body=b"\x01" * 3), ProxyHeader(2, True, None, None, 19)),
    # UNSPEC and UNIX: no TCP addresses
    (v2(family=0, transport=0), ProxyHeader(2, False, None, None, 16)),
    (v2(family=0, transport=0, body=b"junk"), ProxyHeader(2, False, None, None, 20)),
    (v2(family=3, body=b"/run/a.sock".ljust(108, b"\0") + b"/run/b".ljust(108, b"\0")),
     ProxyHeader(2, False, None, None, 16 + 216)),
]


@pytest.mark.parametrize(("data", "expected"), V2_CASES)
def test_v2_valid(data: bytes, expected: ProxyHeader) -> None:
    assert_valid(data, expected, b"\x16\x03\x01", b"PRI * HTTP/2.0")


@pytest.mark.parametrize(("data", "message"), [
    (v2(version=1), "unsupported version 1"),
    (v2(version=3), "unsupported version 3"),
    (v2(command=2), "unknown command 2"),
    (v2(command=0xF), "unknown command 15"),
    (v2(family=4), "unknown address family 4"),
    (v2(transport=3), "unknown transport protocol 3"),
    (v2(family=1, body=b"\x00" * 11), "11 bytes cannot hold the addresses"),
    (v2(family=2, body=b"\x00" * 12), "12 bytes cannot hold the addresses"),
    (v2(family=3, body=b"\x00" * 215), "215 bytes cannot hold the addresses"),
    (v2(family=1, transport=2, body=b"\x00" * 12), "datagram"),
])
def test_v2_invalid(data: bytes, message: str) -> None:
    assert_invalid(data, message)


def test_v2_length_is_read_before_the_body_arrives() -> None:
    # a declared length too small for the addresses fails on the 16 fixed bytes alone
    with pytest.raises(ProxyProtocolError, match="cannot hold"):
        parse_proxy_header(v2(family=2, length=4))
    # a large one waits for every byte of it (all of which belong to the header)
    head = v2(family=1, length=0xFFFF)
    assert parse_proxy_header(head + b"\x00" * 1000) is None
    whole = head + socket.inet_aton("1.2.3.4") * 2 + b"\x00\x01\x00\x02" + b"\x00" * (0xFFFF - 12)
    header = parse_proxy_header(whole + b"GET")
    assert header == ProxyHeader(2, False, ("1.2.3.4", 1), ("1.2.3.4", 2), 16 + 0xFFFF)


def test_header_size_once_the_v2_fixed_part_is_in() -> None:
    data = v2_inet("1.2.3.4", 1, "5.6.7.8", 2, tlv(0x04, b"noop"))
    for i in range(16):
        assert header_size(data[:i]) is None
    for i in range(16, len(data) + 3):
        assert header_size((data + b"GET")[:i]) == len(data) == 16 + 12 + 7
    assert header_size(v2(family=1, length=0xFFFF)) == 16 + 0xFFFF
    assert header_size(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n") is None  # v1: its CRLF


# ------------------------------------------------------------------ parser: property test


def _outcome(fn: Any, data: bytes) -> tuple[str, ProxyHeader | None]:
    try:
        return "ok", fn(data)
    except ProxyProtocolError:
        return "error", None


_valid_headers = st.sampled_from([d for d, _ in V1_CASES + V2_CASES])


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(_valid_headers))
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) + draw(st.binary(max_size=40))


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=120), _mutated(),
                 st.binary(max_size=30).map(lambda b: b"PROXY " + b),
                 st.binary(max_size=60).map(lambda b: V2_SIGNATURE + b)))
@example(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")
@example(V2_SIGNATURE + b"\x21\x11\x00\x00")
def test_parse_or_error_and_byte_by_byte_equals_whole(data: bytes) -> None:
    """Any input: a header, None or ProxyProtocolError (never another exception), and the same
    whether fed whole or byte by byte; a header never claims more bytes than it was given."""
    whole = _outcome(parse_proxy_header, data)
    assert whole == _outcome(fed_byte_by_byte, data)
    header = whole[1]
    if header is not None:
        assert 0 < header.length <= len(data)
        assert parse_proxy_header(data[:header.length]) == header


# --------------------------------------------------------------------------- real server


async def scope_app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = json.dumps({"client": scope["client"], "server": scope["server"],
                       "scheme": scope["scheme"],
                       "http_version": scope["http_version"]}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def proxied_config(**kw: Any) -> Any:
    proxy = ProxyConfig(proxy_protocol=True, trusted=kw.pop("trusted", ("127.0.0.1",)))
    kw.setdefault("timeouts", {"graceful": 5})
    return make_config(proxy=proxy, **kw)


@asynccontextmanager
async def proxied_server(**kw: Any) -> AsyncIterator[int]:
    async with run_server(scope_app, proxied_config(**kw), lifespan="off") as srv:
        yield srv.port


GET = b"GET /x HTTP/1.1\r\nhost: example\r\nconnection: close\r\n\r\n"


async def exchange(port: int, data: bytes) -> bytes:
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(data)
            return await read_until_closed(stream)


def scope_of(data: bytes) -> dict[str, Any]:
    responses = parse_responses(data)
    assert len(responses) == 1, data
    response, body = responses[0]
    assert response.status_code == 200
    result: dict[str, Any] = json.loads(body)
    return result


async def test_v1_then_http11_gives_the_client_address() -> None:
    async with proxied_server() as port:
        header = b"PROXY TCP4 203.0.113.7 198.51.100.1 41234 443\r\n"
        scope = scope_of(await exchange(port, header + GET))
        assert scope["client"] == ["203.0.113.7", 41234]
        assert scope["server"] == ["198.51.100.1", 443]
        assert scope["scheme"] == "http"


async def test_v2_ipv6_split_in_pieces_and_keep_alive() -> None:
    """A header that arrives in pieces (and the request in the same segment as its end) is
    read exactly: the request after it parses, and every request on the connection has the
    header's client."""
    async with proxied_server() as port:
        header = v2_inet6("2001:db8::7", 5555, "2001:db8::1", 8080, tlv(0x04, b"noop"))
        request = b"GET /a HTTP/1.1\r\nhost: example\r\n\r\n"
        with trio.fail_after(TIMEOUT):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                for piece in (header[:5], header[5:14], header[14:20]):
                    await stream.send_all(piece)
                    await trio.sleep(0.05)
                await stream.send_all(header[20:] + request + request[:10])
                await trio.sleep(0.05)
                await stream.send_all(request[10:] + GET)
                data = await read_until_closed(stream)
        responses = parse_responses(data)
        assert len(responses) == 3
        for response, body in responses:
            assert response.status_code == 200
            assert json.loads(body)["client"] == ["2001:db8::7", 5555]
            assert json.loads(body)["server"] == ["2001:db8::1", 8080]


async def test_local_command_and_unknown_keep_the_real_peer() -> None:
    async with proxied_server() as port:
        for header in (v2(command=0, family=0, transport=0), b"PROXY UNKNOWN\r\n",
                       v2(family=0, transport=0)):
            scope = scope_of(await exchange(port, header + GET))
            assert scope["client"][0] == "127.0.0.1"
            assert scope["client"][1] > 0
            assert scope["server"] == ["127.0.0.1", port]


class H2Client:
    """Just enough of an HTTP/2 client (prior knowledge) to make one GET."""

    @staticmethod
    async def get(stream: trio.abc.Stream, path: str = "/") -> tuple[int, bytes]:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.send_headers(1, [(":method", "GET"), (":scheme", "http"),
                              (":authority", "example"), (":path", path)], end_stream=True)
        await stream.send_all(conn.data_to_send())
        status, body = 0, b""
        while True:
            data = await stream.receive_some(65536)
            assert data, "closed before the response"
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    status = int(dict(ev.headers)[b":status"])
                elif isinstance(ev, h2.events.DataReceived):
                    body += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    return status, body
            await stream.send_all(conn.data_to_send())


async def test_v2_then_http2_prior_knowledge() -> None:
    async with proxied_server() as port:
        with trio.fail_after(TIMEOUT):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(v2_inet("192.0.2.9", 7, "192.0.2.1", 80))
                status, body = await H2Client.get(stream)
        assert status == 200
        scope = json.loads(body)
        assert scope["http_version"] == "2"
        assert scope["client"] == ["192.0.2.9", 7]
        assert scope["server"] == ["192.0.2.1", 80]


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Tls, Path]:
    d = tmp_path_factory.mktemp("proxy-tls")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(d / "server.pem"))
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    return Tls(certfile=str(d / "server.pem")), d / "ca.pem"


class FirstWritePrefixed(trio.abc.Stream):
    """A stream whose first write is preceded by ``prefix`` (in the same ``send_all``)."""

    def __init__(self, stream: trio.SocketStream, prefix: bytes) -> None:
        self.stream = stream
        self.prefix = prefix

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        data, self.prefix = self.prefix + bytes(data), b""
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.stream.aclose()


@pytest.mark.parametrize("alpn", ["http/1.1", "h2"])
async def test_header_before_the_tls_handshake(tls_files: tuple[Tls, Path], alpn: str) -> None:
    tls, ca = tls_files
    async with run_server(scope_app, proxied_config(tls=tls), lifespan="off") as srv:
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.set_alpn_protocols([alpn])
        with trio.fail_after(TIMEOUT):
            port = int(srv.addresses[0].rpartition(":")[2])  # https://127.0.0.1:PORT
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            # The header and the ClientHello in one write: the handshake gets only its bytes.
            header = b"PROXY TCP4 198.51.100.20 192.0.2.1 1000 443\r\n"
            stream = trio.SSLStream(FirstWritePrefixed(tcp, header), ctx,
                                    server_hostname="localhost")
            await stream.do_handshake()
            async with stream:
                if alpn == "h2":
                    status, body = await H2Client.get(stream)
                    assert status == 200
                    scope = json.loads(body)
                else:
                    await stream.send_all(GET)
                    scope = scope_of(await read_until_closed(stream))
        assert scope["scheme"] == "https"
        assert scope["client"] == ["198.51.100.20", 1000]
        assert scope["server"] == ["192.0.2.1", 443]


def closing_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "trioserve" and r.levelno == logging.WARNING
            and r.getMessage().startswith("PROXY protocol: closing")]


async def test_missing_or_invalid_header_closes_without_answer(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "trioserve")
    async with proxied_server() as port:
        assert await exchange(port, GET) == b""
        warnings = closing_warnings(caplog)
        assert len(warnings) == 1
        assert "from 127.0.0.1:" in warnings[0]
        assert "not a PROXY protocol header" in warnings[0]
        # at most one WARNING a second: more failures at once are not logged again
        assert await exchange(port, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n" + GET) == b""
        assert await exchange(port, v2(version=1) + GET) == b""
        assert len(closing_warnings(caplog)) == 1
        # ... and the server goes on
        scope = scope_of(await exchange(port, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n" + GET))
        assert scope["client"] == ["1.2.3.4", 1]


async def test_untrusted_peer_is_closed_even_with_a_valid_header(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "trioserve")
    async with proxied_server(trusted=("10.0.0.0/8", "::1")) as port:
        header = b"PROXY TCP4 203.0.113.7 198.51.100.1 41234 443\r\n"
        assert await exchange(port, header + GET) == b""
    [warning] = closing_warnings(caplog)
    assert "not a trusted proxy" in warning


async def test_slow_header_is_closed_at_the_deadline(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "trioserve")
    async with proxied_server(timeouts={"request_headers": 0.5, "graceful": 5}) as port:
        with trio.fail_after(TIMEOUT):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(b"PROXY TCP4 1.2.3.4 ")  # ... and nothing more
                start = trio.current_time()
                assert await read_until_closed(stream) == b""
                assert trio.current_time() - start >= 0.3
        # a silent connection too
        with trio.fail_after(TIMEOUT):
            assert await exchange(port, b"") == b""
    assert any("timed out waiting for the PROXY protocol header" in w
               for w in closing_warnings(caplog))


async def test_peer_that_closes_mid_header() -> None:
    async with proxied_server() as port:
        with trio.fail_after(TIMEOUT):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(v2_inet("1.2.3.4", 1, "5.6.7.8", 2)[:20])
            await stream.send_eof()
            assert await read_until_closed(stream) == b""
            await stream.aclose()
        scope = scope_of(await exchange(port, v2_inet("1.2.3.4", 1, "5.6.7.8", 2) + GET))
        assert scope["client"] == ["1.2.3.4", 1]


async def test_access_log_names_the_proxied_client(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "trioserve.access")
    async with proxied_server(access_log=True) as port:
        await exchange(port, b"PROXY TCP4 203.0.113.7 198.51.100.1 41234 443\r\n" + GET)
    lines = [r.getMessage() for r in caplog.records if r.name == "trioserve.access"]
    assert lines and lines[0].startswith('203.0.113.7:41234 - "GET /x HTTP/1.1" 200')


async def test_forwarding_headers_are_judged_by_the_proxy_protocol_source() -> None:
    """Behind a TCP-mode proxy the HTTP headers come from the client the PROXY header names:
    believed only when that source is trusted, never because the proxy itself is."""
    proxy = ProxyConfig(headers="x-forwarded", proxy_protocol=True)
    cfg = make_config(proxy=proxy, timeouts={"graceful": 5})
    request = (b"GET / HTTP/1.1\r\nhost: h\r\nx-forwarded-for: 6.6.6.6\r\n"
               b"x-forwarded-proto: https\r\nconnection: close\r\n\r\n")
    async with run_server(scope_app, cfg, lifespan="off") as srv:
        spoofed = scope_of(await exchange(
            srv.port, b"PROXY TCP4 203.0.113.7 192.0.2.1 1 2\r\n" + request))
        relayed = scope_of(await exchange(
            srv.port, b"PROXY TCP4 127.0.0.1 192.0.2.1 1 2\r\n" + request))
    assert (spoofed["client"], spoofed["scheme"]) == (["203.0.113.7", 1], "http")
    assert (relayed["client"], relayed["scheme"]) == (["6.6.6.6", 0], "https")
    # "*" trusts the connection's peer (the proxy), not the source its header names
    proxy = ProxyConfig(headers="x-forwarded", proxy_protocol=True, trusted=("*",))
    cfg = make_config(proxy=proxy, timeouts={"graceful": 5})
    async with run_server(scope_app, cfg, lifespan="off") as srv:
        spoofed = scope_of(await exchange(
            srv.port, b"PROXY TCP4 203.0.113.7 192.0.2.1 1 2\r\n" + request))
    assert (spoofed["client"], spoofed["scheme"]) == (["203.0.113.7", 1], "http")


FORGED = (b"GET /x HTTP/1.1\r\nhost: real.example\r\nx-forwarded-for: 6.6.6.6\r\n"
          b"x-forwarded-proto: https\r\nx-forwarded-host: evil.example\r\n"
          b"x-forwarded-prefix: /admin\r\nconnection: close\r\n\r\n")


@pytest.mark.parametrize("header", [
    b"PROXY UNKNOWN\r\n", v2(command=0, family=0, transport=0), v2(family=0, transport=0),
    v2(family=3, body=b"\0" * 216),
], ids=["v1-unknown", "v2-local", "v2-unspec", "v2-unix"])
async def test_header_without_a_source_believes_no_forwarding_header(header: bytes) -> None:
    """Without a source the client is not known: the real peer (the trusted proxy itself)
    must not vouch for the client's own forwarding headers."""
    cfg = make_config(proxy=ProxyConfig(headers="x-forwarded", proxy_protocol=True),
                      timeouts={"graceful": 5})
    async with run_server(scope_app, cfg, lifespan="off") as srv:
        scope = scope_of(await exchange(srv.port, header + FORGED))
    assert scope["client"][0] == "127.0.0.1" and scope["client"][1] > 0
    assert scope["scheme"] == "http"


async def test_v2_header_in_many_pieces_is_parsed_once_complete(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a v2 header's fixed part is in, the server reads exactly the rest, whatever the
    pieces it arrives in, and parses it once (not the growing buffer on every arrival, which
    costs quadratic time for a 64 KiB header sent a byte at a time)."""
    import trioserve.server

    calls: list[int] = []

    def counting(data: bytes) -> ProxyHeader | None:
        calls.append(len(data))
        return parse_proxy_header(data)

    monkeypatch.setattr(trioserve.server, "parse_proxy_header", counting)
    header = v2_inet("192.0.2.9", 7, "192.0.2.1", 80, tlv(0x04, b"\0" * 2000))
    async with proxied_server() as port:
        with trio.fail_after(TIMEOUT):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(header[:16])
                await trio.sleep(0.05)
                for i in range(16, len(header), 100):
                    await stream.send_all(header[i:i + 100])
                    await trio.sleep(0.005)
                await stream.send_all(GET)
                scope = scope_of(await read_until_closed(stream))
    assert scope["client"] == ["192.0.2.9", 7]
    assert calls[-1] == len(header)
    assert len(calls) <= 3, calls  # the fixed part (perhaps in two peeks), then the whole


def _reset_after_send(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(data)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def test_client_reset_before_accept_is_not_trusted(
        caplog: pytest.LogCaptureFixture) -> None:
    """An untrusted TCP client that resets before it is accepted has no peer address: it is
    closed like any untrusted peer, never taken for a (trusted) Unix socket peer whose PROXY
    header names the client. A trusted proxy connecting from 127.0.0.2 holds the only
    connection slot, so the reset lands while the connection waits in the backlog."""
    caplog.set_level(logging.WARNING, "trioserve")
    seen: list[Any] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append(scope["client"])
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

    cfg = proxied_config(trusted=("127.0.0.2",), limits={"max_concurrent_connections": 1})
    async with run_server(app, cfg, lifespan="off") as srv:
        with trio.fail_after(TIMEOUT):
            holder = trio.socket.socket()
            with holder:
                await holder.bind(("127.0.0.2", 0))
                await holder.connect(("127.0.0.1", srv.port))
                await holder.send(b"PROXY TCP4 192.0.2.5 192.0.2.1 5 80\r\n"
                                  b"GET / HTTP/1.1\r\nhost: h\r\n\r\n")
                while not seen:  # noqa: ASYNC110 - the app's record, no event to wait on
                    await trio.sleep(0.02)
                await trio.to_thread.run_sync(
                    _reset_after_send, srv.port,
                    b"PROXY TCP4 10.0.0.1 10.0.0.2 1111 443\r\n" + GET)
                await trio.sleep(0.2)
            # the slot is free: the reset connection is accepted now
            while not closing_warnings(caplog):  # noqa: ASYNC110 - a log record
                await trio.sleep(0.02)
    assert seen == [("192.0.2.5", 5)]  # the holder's request only
    [warning] = closing_warnings(caplog)
    assert warning == ("PROXY protocol: closing the connection from a peer whose address is "
                       "not known: the peer is not a trusted proxy (--forwarded-allow-ips)")


async def test_unix_socket_peer_is_trusted(tmp_path: Path) -> None:
    path = str(tmp_path / "pp.sock")
    from trioserve import Bind

    cfg = proxied_config(trusted=("10.9.9.9",), binds=(Bind.unix(path),))
    async with run_server(scope_app, cfg, lifespan="off"):
        with trio.fail_after(TIMEOUT):
            stream = await trio.open_unix_socket(path)
            async with stream:
                await stream.send_all(b"PROXY TCP4 203.0.113.7 192.0.2.1 41234 443\r\n" + GET)
                scope = scope_of(await read_until_closed(stream))
    assert scope["client"] == ["203.0.113.7", 41234]
