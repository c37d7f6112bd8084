"""Forwarding headers (``ProxyConfig.headers``): the resolution rules as pure functions
(trust, right-most untrusted hop, list alignment, RFC 7239 parsing, validation), then real
servers and clients: ASGI scope and WSGI environ over HTTP/1.1, HTTP/2 and WebSocket, trusted
and untrusted peers, spoofing attempts, keep-alive connections carrying several clients."""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import struct
import urllib.parse
import wsgiref.util
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import hypothesis.strategies as st
import pytest
import trio
import websockets.trio.client
from conftest import make_config, parse_responses, read_until_closed, run_server
from hypothesis import given, settings
from trioserve.bridges.wsgi import WSGIBridge

from trioserve import Bind
from trioserve.config import ProxyConfig
from trioserve.features import ConnectionFeature, RequestContext, RequestFeature
from trioserve.proxy import (
    MAX_HOPS,
    ForwardedHeaders,
    Resolved,
    parse_forwarded,
    parse_node,
)

TIMEOUT = 10.0
Scope = dict[str, Any]
Headers = list[tuple[bytes, bytes]]


def fh(fmt: str = "x-forwarded", trusted: tuple[str, ...] = ("127.0.0.1",)) -> ForwardedHeaders:
    return ForwardedHeaders(ProxyConfig(headers=fmt, trusted=trusted))  # type: ignore[arg-type]


def hdrs(*pairs: tuple[str, str]) -> Headers:
    return [(n.lower().encode(), v.encode()) for n, v in pairs]


def xff(value: str, trusted: tuple[str, ...] = ("127.0.0.1",), **more: str) -> Resolved | None:
    pairs = [("x-forwarded-for", value)] + [
        ("x-forwarded-" + k.replace("_", "-"), v) for k, v in more.items()]
    return fh(trusted=trusted).resolve(hdrs(*pairs))


# ------------------------------------------------------------------------------------ trust


def test_trust_entries_networks_and_mapped() -> None:
    f = fh(trusted=("127.0.0.1", "10.0.0.0/8", "2001:db8::/32", "::1"))
    # a peer whose address is not known (a TCP client that reset before accept) never is
    # (the server trusts a Unix socket peer by the socket's family: see the server tests)
    assert not f.is_trusted(None)
    assert f.is_trusted(("127.0.0.1", 1))
    assert f.is_trusted(("10.200.3.4", 1))
    assert f.is_trusted(("::ffff:10.1.1.1", 1))  # IPv4-mapped (a dual-stack socket)
    assert f.is_trusted(("::ffff:127.0.0.1", 1))
    assert f.is_trusted(("2001:db8:1::5", 1))
    assert f.is_trusted(("::1", 1))
    for host in ("127.0.0.2", "11.0.0.1", "::ffff:11.0.0.1", "2001:db9::1", "::2", "",
                 "localhost", "not an address"):
        assert not f.is_trusted((host, 1)), host
        assert not f.is_trusted((host, 1)), host  # (cached)
    assert fh(trusted=("*",)).is_trusted(("198.51.100.1", 1))
    assert not fh(trusted=("*",)).is_trusted(None)
    # "*" trusts connection peers, never the hops a header names
    assert not fh(trusted=("*",)).is_trusted_ip(ipaddress.ip_address("2001:db8::1"))
    assert fh(trusted=("*", "2001:db8::/32")).is_trusted_ip(ipaddress.ip_address("2001:db8::1"))
    assert not fh(trusted=()).is_trusted(("127.0.0.1", 1))
    assert not fh(trusted=()).is_trusted(None)
    # an address another proxy names (a PROXY header's source): the explicit entries only
    assert f.is_trusted_hop(("10.1.2.3", 1)) and f.is_trusted_hop(("::ffff:10.1.2.3", 1))
    assert not f.is_trusted_hop(("11.0.0.1", 1))
    assert not f.is_trusted_hop(("fe80::1%eth0", 1)) and not f.is_trusted_hop(("x", 1))
    assert not fh(trusted=("*",)).is_trusted_hop(("198.51.100.1", 1))


# ----------------------------------------------------------------------- X-Forwarded-For


@pytest.mark.parametrize(("value", "client"), [
    ("203.0.113.7", ("203.0.113.7", 0)),
    ("203.0.113.7:4711", ("203.0.113.7", 4711)),
    (" 203.0.113.7 ", ("203.0.113.7", 0)),
    ("2001:db8::7", ("2001:db8::7", 0)),  # bare IPv6, as nginx writes it
    ("[2001:db8::7]", ("2001:db8::7", 0)),
    ("[2001:db8::7]:443", ("2001:db8::7", 443)),
    ("[2001:DB8:0::7]:443", ("2001:db8::7", 443)),  # normalised
    ("::ffff:203.0.113.7", ("::ffff:cb00:7107", 0)),
])
def test_xff_entry_forms(value: str, client: tuple[str, int]) -> None:
    assert xff(value) == Resolved(client=client)


@pytest.mark.parametrize("value", [
    "unknown", "_hidden", "203.0.113.7:", "203.0.113.7:99999", "203.0.113.7:x",
    "[2001:db8::7", "[2001:db8::7]x", "[203.0.113.7]", "2001:db8::7:443:x", "300.1.1.1",
    "example.com", "203.0.113.7 :80", "٣.٣.٣.٣",
    # IPv6 zone ids: meaningless beyond the proxy, and a way to smuggle text into the address
    "fe80::1%eth0", "[fe80::1%eth0]:80", '::1%evil"<> x', "[::1%25eth0]", "1.2.3.4%x",
])
def test_xff_unparsable_client_keeps_the_real_peer(value: str) -> None:
    assert xff(value) == Resolved()
    # ... but what the trusted proxy says about scheme and host still applies
    assert xff(value, proto="https", host="example.com") == Resolved(
        None, "https", "example.com")


def test_right_most_untrusted_hop_is_the_client() -> None:
    # the client's own (spoofed) entries are on the left: the proxy appended the real one
    assert xff("6.6.6.6, 203.0.113.7") == Resolved(client=("203.0.113.7", 0))
    assert xff("127.0.0.1, 203.0.113.7") == Resolved(client=("203.0.113.7", 0))
    trusted = ("127.0.0.1", "10.0.0.0/8")
    # through two trusted proxies: skip them from the right
    assert xff("6.6.6.6, 203.0.113.7, 10.0.0.2, 10.0.0.3", trusted) == Resolved(
        client=("203.0.113.7", 0))
    # every hop trusted: the left-most
    assert xff("10.0.0.1, 10.0.0.2", trusted) == Resolved(client=("10.0.0.1", 0))
    # an unparsable entry stops the walk: the client is not known
    assert xff("203.0.113.7, garbage, 10.0.0.3", trusted) == Resolved()
    # several header lines are one list, in order
    r = fh(trusted=trusted).resolve(hdrs(("x-forwarded-for", "6.6.6.6, 203.0.113.7"),
                                         ("x-forwarded-for", "10.0.0.9")))
    assert r == Resolved(client=("203.0.113.7", 0))
    # empty list elements are ignored
    assert xff("203.0.113.7, , 10.0.0.9,", trusted) == Resolved(client=("203.0.113.7", 0))


def test_trust_all_trusts_the_peer_not_the_hops() -> None:
    """``*`` trusts any connection peer, but the entries of the header are checked against
    the explicit entries only: the client's own left-most entry never wins."""
    assert xff("6.6.6.6, 203.0.113.7", ("*",)) == Resolved(client=("203.0.113.7", 0))
    assert xff("6.6.6.6, 203.0.113.7, 10.0.0.2", ("*",)) == Resolved(client=("10.0.0.2", 0))
    assert xff("6.6.6.6, 203.0.113.7, 10.0.0.2", ("*", "10.0.0.0/8")) == Resolved(
        client=("203.0.113.7", 0))
    assert fwd("for=6.6.6.6, for=203.0.113.7", trusted=("*",)) == Resolved(
        ("203.0.113.7", 0))


def test_hop_bound() -> None:
    trusted = ("10.0.0.0/8",)
    proxies = [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(200)]
    # the client beyond MAX_HOPS entries is not looked at: the left-most one read is taken
    r = xff(", ".join(["203.0.113.7", *proxies]), trusted)
    assert r == Resolved(client=(proxies[-MAX_HOPS], 0))
    r = xff(", ".join(["203.0.113.7", *proxies[:MAX_HOPS - 1]]), trusted)
    assert r == Resolved(client=("203.0.113.7", 0))


def test_proto_host_prefix_align_with_the_hops() -> None:
    trusted = ("127.0.0.1", "10.0.0.0/8")
    # hop 1 (the client's) has https: the proxies in between spoke http
    r = xff("203.0.113.7, 10.0.0.2", trusted, proto="https, http", host="a.example, b.internal",
            prefix="/outer, /inner")
    assert r == Resolved(("203.0.113.7", 0), "https", "a.example", "/outer")
    # a longer list: the client's extra entries on the left are ignored
    r = xff("203.0.113.7", trusted, proto="https, http", host="evil.example, good.example")
    assert r == Resolved(("203.0.113.7", 0), "http", "good.example")
    # a shorter list (the proxy sets rather than appends): its left-most value
    r = xff("203.0.113.7, 10.0.0.2, 10.0.0.3", trusted, proto="https", host="a.example")
    assert r == Resolved(("203.0.113.7", 0), "https", "a.example")
    r = xff("203.0.113.7, 10.0.0.2, 10.0.0.3", trusted, proto="wss, http")
    assert r == Resolved(("203.0.113.7", 0), "https")
    # an invalid value at the client's hop: the nearest valid one of the hops walked
    r = xff("203.0.113.7, 10.0.0.2", trusted, proto="gopher, https", host="a b, b.example")
    assert r == Resolved(("203.0.113.7", 0), "https", "b.example")
    # no X-Forwarded-For: hop 0 only
    r = fh().resolve(hdrs(("x-forwarded-proto", "https, http")))
    assert r == Resolved(scheme="http")


@pytest.mark.parametrize(("proto", "scheme"), [
    ("https", "https"), ("HTTPS", "https"), ("http", "http"), ("ws", "http"),
    ("wss", "https"), (" https ", "https"), ("ftp", None), ("https:", None), ("", None),
    ("h\u00e9ttps", None),
])
def test_schemes(proto: str, scheme: str | None) -> None:
    r = fh().resolve(hdrs(("x-forwarded-proto", proto)))
    assert r == Resolved(scheme=scheme)


@pytest.mark.parametrize(("host", "valid"), [
    ("example.com", True), ("example.com:8443", True), ("EXAMPLE.com", True),
    ("192.0.2.1:80", True), ("[2001:db8::1]", True), ("[2001:db8::1]:443", True),
    ("xn--caf-dma.example", True), ("a%41b.example", True), ("a_b-c~d.example", True),
    ("example.com:", False), ("example.com:99999", False), ("example.com:12a", False),
    ("[2001:db8::zz]", False), ("[2001:db8::1", False), ("a b", False), ("a/b", False),
    ("user@example.com", False), ("a%4", False), ("caf\u00e9.example", False), ("", False),
    ("example.com;x=1", False), ("a\tb", False), ("[v1.x]", False),
])
def test_hosts(host: str, valid: bool) -> None:
    r = fh().resolve(hdrs(("x-forwarded-host", host)))
    assert r == Resolved(host=host.strip() if valid else None)


@pytest.mark.parametrize(("prefix", "root"), [
    ("/api", "/api"), ("/api/", "/api"), ("/a/b//", "/a/b"), ("/", ""), ("//", ""),
    ("/caf%C3%A9", "/caf\u00e9"), ("/a;b=c:d@e", "/a;b=c:d@e"),
    ("api", None), ("", None), ("/a/../b", None), ("/a/./b", None), ("/%2e%2e/x", None),
    ("/a b", None), ("/a?b", None), ("/a#b", None), ("/%ff", None), ("/%00", None),
    ("/a%zz", None), ("http://x/a", None),
    # empty segments: "//evil.com" would read as a network-path reference (another host)
    ("//evil.com", None), ("//evil.com/", None), ("/a//b", None), ("/%2F%2Fevil.com", None),
    ("/a/%2F/b", None),
])
def test_prefixes(prefix: str, root: str | None) -> None:
    r = fh().resolve(hdrs(("x-forwarded-prefix", prefix)))
    assert r == Resolved(prefix=root)


def test_other_format_and_unrelated_headers_are_ignored() -> None:
    assert fh().resolve(hdrs(("forwarded", "for=1.2.3.4;proto=https"))) is None
    assert fh().resolve(hdrs(("x-forwarded-port", "443"), ("x-real-ip", "1.2.3.4"))) is None
    assert fh("forwarded").resolve(hdrs(("x-forwarded-for", "1.2.3.4"))) is None
    assert fh("off").resolve(hdrs(("x-forwarded-for", "1.2.3.4"))) is None


# ------------------------------------------------------------------------------ Forwarded


def fwd(*values: str, trusted: tuple[str, ...] = ("127.0.0.1",)) -> Resolved | None:
    return fh("forwarded", trusted).resolve(hdrs(*(("forwarded", v) for v in values)))


@pytest.mark.parametrize(("value", "elements"), [
    ("for=192.0.2.60;proto=http;by=203.0.113.43",
     [{"for": "192.0.2.60", "proto": "http", "by": "203.0.113.43"}]),
    ('For="[2001:db8:cafe::17]:4711"', [{"for": "[2001:db8:cafe::17]:4711"}]),
    ("for=192.0.2.43, for=198.51.100.17", [{"for": "192.0.2.43"}, {"for": "198.51.100.17"}]),
    ('for=192.0.2.43,for="[2001:db8:cafe::17]";PROTO=https',
     [{"for": "192.0.2.43"}, {"for": "[2001:db8:cafe::17]", "proto": "https"}]),
    ('for="_gazonk"', [{"for": "_gazonk"}]),
    ("for=unknown ; proto=https , ,for=1.2.3.4;",
     [{"for": "unknown", "proto": "https"}, {"for": "1.2.3.4"}]),
    (r'host="a\"b\\c"', [{"host": 'a"b\\c'}]),
    ('host="a,b;c"', [{"host": "a,b;c"}]),
    ("", []), (" , ,", []),
])
def test_parse_forwarded(value: str, elements: list[dict[str, str]]) -> None:
    assert parse_forwarded(value) == elements


@pytest.mark.parametrize("value", [
    "for", "for=", "for=1.2.3.4;for=5.6.7.8", 'for="1.2.3.4', "for=[::1]", "for = 1.2.3.4",
    "for=1.2.3.4 proto=http", 'for="a\x00b"', "=x", "for=1.2.3.4;;proto=http;proto=https",
    'for="1.2.3.4"x',
])
def test_malformed_forwarded(value: str) -> None:
    assert parse_forwarded(value) is None
    assert fwd(value + ";proto=https") in (None, Resolved())  # ignored as a whole


def test_forwarded_resolution() -> None:
    assert fwd('for="[2001:db8:cafe::17]:4711";proto=https;host=example.com') == Resolved(
        ("2001:db8:cafe::17", 4711), "https", "example.com")
    # right-most untrusted element; the client's own elements on the left lose
    assert fwd("for=6.6.6.6;proto=https", "for=203.0.113.7;proto=http") == Resolved(
        ("203.0.113.7", 0), "http")
    trusted = ("127.0.0.1", "10.0.0.0/8")
    assert fwd("for=203.0.113.7;host=a.example;proto=https, for=10.0.0.2;proto=http",
               trusted=trusted) == Resolved(("203.0.113.7", 0), "https", "a.example")
    # an element without a valid proto: the nearer proxy's
    assert fwd("for=203.0.113.7;proto=gopher, for=10.0.0.2;proto=http",
               trusted=trusted) == Resolved(("203.0.113.7", 0), "http")
    # obfuscated or unknown client, or an element without "for": address not known,
    # scheme and host of that element still apply (a trusted proxy wrote them)
    for node in ("_hidden", "unknown", '"_x:_y"'):
        assert fwd(f"for={node};proto=https;host=a.example") == Resolved(
            None, "https", "a.example")
    assert fwd("proto=https") == Resolved(None, "https")
    assert fwd('for="1.2.3.4:_port"') == Resolved(("1.2.3.4", 0))
    # "by" is never applied; a malformed right-most element: nothing is known
    assert fwd("by=1.2.3.4") == Resolved()
    assert fwd("for=1.2.3.4", "for=") is None
    # a zone id in a quoted node cannot be checked
    assert fwd('for="[::1%eth0 <x>]:80";proto=https') == Resolved(None, "https")


PROXY_ELEMENT = "for=203.0.113.7;proto=https"


@pytest.mark.parametrize("client_part", [
    "for=6.6.6.6;for=1.1.1.1",  # a parameter twice
    'for="6.6.6.6',  # an unterminated quoted-string: it must not swallow the proxy's element
    "for=[::1]",  # an unquoted IPv6 address
    "for",
    'for="x\\',  # a trailing backslash in an unterminated string
    'a="\\"',  # an escaped quote: still unterminated
    "for=6.6.6.6 proto=http",
])
def test_malformed_client_element_keeps_the_proxy_element(client_part: str) -> None:
    """Elements are read from the right up to the first malformed one: the client's garbage
    on the left voids nothing the proxy appended (on the same line or on its own)."""
    expected = Resolved(("203.0.113.7", 0), "https")
    assert fwd(f"{client_part}, {PROXY_ELEMENT}") == expected  # nginx-style: one line
    assert fwd(client_part, PROXY_ELEMENT) == expected  # HAProxy-style: a line of its own
    # the proxy's quoted IPv6 address is found too
    assert fwd(f'{client_part}, for="[2001:db8::7]:4711";proto=https') == Resolved(
        ("2001:db8::7", 4711), "https")


def test_malformed_element_stops_the_walk() -> None:
    trusted = ("127.0.0.1", "10.0.0.0/8")
    # the hop left of a trusted proxy cannot be checked: the client is not known, but what
    # the trusted proxy wrote applies
    assert fwd("for=6.6.6.6;for=1.1.1.1, for=10.0.0.2;proto=https;host=a.example",
               trusted=trusted) == Resolved(None, "https", "a.example")
    # commas inside quoted-strings do not split elements
    assert fwd('for=6.6.6.6;host="a,b", for=10.0.0.2;proto=https',
               trusted=trusted) == Resolved(("6.6.6.6", 0), "https")
    # escaped quotes inside a quoted-string
    assert fwd(r'for="_a\"b,c";proto=http, for=10.0.0.2', trusted=trusted) == Resolved(
        None, "http")


def test_forwarded_splitting_is_linear() -> None:
    """Quote and comma patterns that a naive rescan would make quadratic (a 64 KiB header
    each) resolve, to the proxy's element."""
    for garbage in ('"\\' * 20000, ",\"" * 20000, '""' * 30000 + '"', "," * 60000 + '"'):
        assert fwd(garbage + ", " + PROXY_ELEMENT) == Resolved(("203.0.113.7", 0), "https")


def test_parse_node() -> None:
    assert parse_node("1.2.3.4") == (ipaddress.IPv4Address("1.2.3.4"), 0)
    assert parse_node("[::1]:_obf") == (ipaddress.IPv6Address("::1"), 0)
    assert parse_node("1.2.3.4:000080") is None  # more than 5 digits
    assert parse_node("[::1]:0") == (ipaddress.IPv6Address("::1"), 0)
    assert parse_node("") is None


header_names = st.sampled_from(["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
                                "x-forwarded-prefix", "forwarded", "host"])
header_text = st.text(st.characters(min_codepoint=0, max_codepoint=255), max_size=60) | \
    st.sampled_from(["for=1.2.3.4", '"', "[::1]:", "_x", "10.0.0.1, ", ";", ",", "=", "%",
                     "/a/..", "[", "https"]).flatmap(
        lambda s: st.lists(st.just(s), max_size=5).map("".join))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(header_names, header_text), max_size=6),
       st.sampled_from(["x-forwarded", "forwarded"]))
def test_resolution_never_raises(pairs: list[tuple[str, str]], fmt: str) -> None:
    f = fh(fmt, ("127.0.0.1", "10.0.0.0/8", "::1"))
    r = f.resolve(hdrs(*pairs))
    if r is not None:
        assert r.scheme in (None, "http", "https")
        if r.host is not None:
            r.host.encode("ascii")
        if r.prefix is not None:
            assert r.prefix == "" or (r.prefix.startswith("/") and not r.prefix.endswith("/"))


# ------------------------------------------------------------------- apply on features


class _Req:
    def __init__(self, headers: Headers) -> None:
        self.method = "GET"
        self.scheme = "http"
        self.path = "/p"
        self.raw_path = b"/p"
        self.raw_target = b"/p"
        self.query_string = b""
        self.root_path = "/configured"
        self.http_version = "1.1"
        self.headers = headers


class _Conn:
    connection_id = "c1"
    peer = ("127.0.0.1", 5000)
    local = ("127.0.0.1", 8000)


def test_apply_sets_request_level_features_only() -> None:
    from trioserve.features import FeatureCollection

    conn_features = FeatureCollection({ConnectionFeature: _Conn()})
    original = hdrs(("host", "internal:8000"), ("x-forwarded-for", "203.0.113.7:1234"),
                    ("x-forwarded-proto", "https"), ("x-forwarded-host", "www.example"),
                    ("x-forwarded-prefix", "/app/"))
    req = _Req(list(original))
    ctx = RequestContext(FeatureCollection({RequestFeature: req}, conn_features))
    fh().apply(ctx)
    info = ctx.features[ConnectionFeature]
    assert (info.connection_id, info.peer, info.local) == ("c1", ("203.0.113.7", 1234),
                                                           ("127.0.0.1", 8000))
    assert conn_features[ConnectionFeature].peer == ("127.0.0.1", 5000)  # the connection's
    assert req.scheme == "https"
    assert req.root_path == "/app/configured"
    assert req.headers == [(b"host", b"www.example"), *original[1:]]
    assert original[0] == (b"host", b"internal:8000")  # a new list: the parser's is intact
    # format "off": nothing changes
    req2 = _Req(list(original))
    ctx2 = RequestContext(FeatureCollection({RequestFeature: req2}, conn_features))
    fh("off").apply(ctx2)
    assert ctx2.features[ConnectionFeature] is conn_features[ConnectionFeature]
    assert (req2.scheme, req2.root_path, req2.headers) == ("http", "/configured", original)
    # a request without a Host header gets one
    req3 = _Req(hdrs(("x-forwarded-host", "www.example")))
    fh().apply(RequestContext(FeatureCollection({RequestFeature: req3}, conn_features)))
    assert req3.headers[-1] == (b"host", b"www.example")


# ----------------------------------------------------------------------- real servers


async def scope_app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": json.dumps(_summary(scope))})
        await send({"type": "websocket.close", "code": 1000})
        return
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(_summary(scope)).encode()})


def _summary(scope: Scope) -> dict[str, Any]:
    headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in scope["headers"]]
    return {"client": scope["client"], "server": scope["server"], "scheme": scope["scheme"],
            "root_path": scope["root_path"], "path": scope["path"],
            "raw_path": scope["raw_path"].decode("latin-1"),
            "http_version": scope["http_version"],
            "host": [v for n, v in headers if n == "host"],
            "forwarding": [[n, v] for n, v in headers if n.startswith("x-forwarded-")
                           or n == "forwarded"]}


def proxy_config(fmt: str = "x-forwarded", trusted: tuple[str, ...] = ("127.0.0.1",),
                 **kw: Any) -> Any:
    kw.setdefault("timeouts", {"graceful": 5})
    return make_config(proxy=ProxyConfig(headers=fmt, trusted=trusted),  # type: ignore[arg-type]
                       **kw)


XF = {"x-forwarded-for": "6.6.6.6, 203.0.113.7:4711", "x-forwarded-proto": "https",
      "x-forwarded-host": "www.example:8443", "x-forwarded-prefix": "/shop/"}


def client(url: str, **kw: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=TIMEOUT, trust_env=False, **kw)


@pytest.mark.parametrize("http2", [False, True])
async def test_asgi_trusted_proxy(http2: bool) -> None:
    async with run_server(scope_app, proxy_config(root_path="/mnt"), lifespan="off") as srv:
        async with client(srv.url, http1=not http2, http2=http2) as c:
            r = await c.get("/items?q=1", headers=XF)
            plain = await c.get("/items")  # the same connection, no forwarding headers
    s = r.json()
    assert s["http_version"] == ("2" if http2 else "1.1")
    assert s["client"] == ["203.0.113.7", 4711]
    assert s["server"] == ["127.0.0.1", srv.port]
    assert s["scheme"] == "https"
    assert s["host"] == ["www.example:8443"]
    assert s["root_path"] == "/shop/mnt"
    assert s["path"] == "/shop/mnt/items"
    assert s["raw_path"] == "/shop/mnt/items"
    # the original headers stay
    assert sorted(tuple(p) for p in s["forwarding"]) == sorted(XF.items())
    p = plain.json()
    assert p["client"][0] == "127.0.0.1" and p["client"][1] > 0
    assert (p["scheme"], p["root_path"], p["host"]) == ("http", "/mnt", [f"127.0.0.1:{srv.port}"])


@pytest.mark.parametrize("http2", [False, True])
async def test_asgi_untrusted_peer_is_ignored(http2: bool) -> None:
    cfg = proxy_config(trusted=("10.0.0.0/8",))
    async with run_server(scope_app, cfg, lifespan="off") as srv, \
            client(srv.url, http1=not http2, http2=http2) as c:
        s = (await c.get("/", headers=XF)).json()
        f = (await c.get("/", headers={"forwarded": "for=1.2.3.4;proto=https"})).json()
    for got in (s, f):
        assert got["client"][0] == "127.0.0.1"
        assert got["scheme"] == "http"
        assert got["host"] == [f"127.0.0.1:{srv.port}"]
        assert got["root_path"] == ""


async def test_forwarded_format_server() -> None:
    async with run_server(scope_app, proxy_config("forwarded"), lifespan="off") as srv, \
            client(srv.url) as c:
        s = (await c.get("/", headers={
            "forwarded": 'for=6.6.6.6;proto=http, For="[2001:db8::9]:4711";Proto=https;'
                         'host="api.example"'})).json()
        # the X-Forwarded-* headers a client could slip through are not believed
        x = (await c.get("/", headers=XF)).json()
        bad = (await c.get("/", headers={"forwarded": 'for="1.2.3.4'})).json()
    assert s["client"] == ["2001:db8::9", 4711]
    assert (s["scheme"], s["host"]) == ("https", ["api.example"])
    for got in (x, bad):
        assert got["client"][0] == "127.0.0.1"
        assert (got["scheme"], got["host"]) == ("http", [f"127.0.0.1:{srv.port}"])


async def test_keep_alive_connection_carries_several_clients() -> None:
    """A proxy sends many clients' requests over one connection: each request gets its own
    client, and one without headers the connection's peer (nothing leaks between them)."""
    async with run_server(scope_app, proxy_config(), lifespan="off") as srv:
        requests = b"".join(
            b"GET / HTTP/1.1\r\nhost: h\r\n" + extra + b"\r\n"
            for extra in (b"x-forwarded-for: 198.51.100.1\r\nx-forwarded-proto: https\r\n",
                          b"x-forwarded-for: 198.51.100.2\r\n", b"",
                          b"x-forwarded-for: 198.51.100.3\r\nconnection: close\r\n"))
        with trio.fail_after(TIMEOUT):
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            async with stream:
                await stream.send_all(requests)
                data = await read_until_closed(stream)
    got = [json.loads(body) for _, body in parse_responses(data)]
    assert [g["client"][0] for g in got] == ["198.51.100.1", "198.51.100.2", "127.0.0.1",
                                            "198.51.100.3"]
    assert [g["scheme"] for g in got] == ["https", "http", "http", "http"]
    assert got[2]["client"][1] > 0


async def test_garbage_headers_never_fail_the_request() -> None:
    async with run_server(scope_app, proxy_config(trusted=("*",)), lifespan="off") as srv:
        raw = (b"GET / HTTP/1.1\r\nhost: h\r\nx-forwarded-for: \xff\xfe, [::1\r\n"
               b"x-forwarded-proto: \x80https\r\nx-forwarded-host: a\xe9b\r\n"
               b"x-forwarded-prefix: /\xc3\r\nconnection: close\r\n\r\n")
        with trio.fail_after(TIMEOUT):
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            async with stream:
                await stream.send_all(raw)
                data = await read_until_closed(stream)
    [(response, body)] = parse_responses(data)
    assert response.status_code == 200
    s = json.loads(body)
    assert (s["client"][0], s["scheme"], s["host"], s["root_path"]) == (
        "127.0.0.1", "http", ["h"], "")


async def test_features_app_and_access_log(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[tuple[str, Any, Any]] = []

    async def app(ctx: RequestContext) -> None:
        info = ctx.features[ConnectionFeature]
        seen.append((info.connection_id, info.peer, info.local))
        from trioserve.features import ResponseBodyFeature
        await ctx.features[ResponseBodyFeature].complete(b"ok")

    caplog.set_level(logging.INFO, "trioserve.access")
    async with run_server(app, proxy_config(access_log=True), asgi=False) as srv:
        for http2 in (False, True):
            async with client(srv.url, http1=not http2, http2=http2) as c:
                await c.get("/a", headers={"x-forwarded-for": "203.0.113.7"})
                await c.get("/b")
    assert [s[1][0] for s in seen] == ["203.0.113.7", "127.0.0.1"] * 2
    assert seen[0][0] == seen[1][0] != seen[2][0] == seen[3][0]  # the connection's id
    assert all(s[2] == ("127.0.0.1", srv.port) for s in seen)
    lines = [r.getMessage() for r in caplog.records if r.name == "trioserve.access"]
    assert [line.split(" ")[0].rpartition(":")[0] for line in lines] == [
        "203.0.113.7", "127.0.0.1"] * 2
    assert lines[0].startswith('203.0.113.7:0 - "GET /a HTTP/1.1" 200')
    assert lines[2].startswith('203.0.113.7:0 - "GET /a HTTP/2" 200')


def wsgi_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    keys = ("REMOTE_ADDR", "REMOTE_PORT", "wsgi.url_scheme", "HTTPS", "HTTP_HOST", "SCRIPT_NAME",
            "PATH_INFO", "SERVER_NAME", "SERVER_PORT")
    body = json.dumps({k: environ.get(k) for k in keys}).encode()
    start_response("200 OK", [("content-type", "application/json"),
                              ("content-length", str(len(body)))])
    return [body]


async def test_wsgi_environ() -> None:
    cfg = proxy_config(root_path="/mnt")
    async with run_server(WSGIBridge(wsgi_app, threads=2), cfg, asgi=False) as srv, \
            client(srv.url) as c:
        e = (await c.get("/items", headers=XF)).json()
        plain = (await c.get("/items")).json()
    assert e == {"REMOTE_ADDR": "203.0.113.7", "REMOTE_PORT": "4711",
                 "wsgi.url_scheme": "https", "HTTPS": "on", "HTTP_HOST": "www.example:8443",
                 "SCRIPT_NAME": "/shop/mnt", "PATH_INFO": "/items", "SERVER_NAME": "127.0.0.1",
                 "SERVER_PORT": str(srv.port)}
    assert plain["REMOTE_ADDR"] == "127.0.0.1"
    assert (plain["wsgi.url_scheme"], plain["HTTPS"], plain["SCRIPT_NAME"]) == ("http", None,
                                                                                 "/mnt")


@pytest.mark.parametrize(("proto", "scheme"), [("https", "wss"), ("wss", "wss"),
                                               ("http", "ws"), (None, "ws")])
async def test_websocket_scope(proto: str | None, scheme: str) -> None:
    async with run_server(scope_app, proxy_config(), lifespan="off") as srv:
        headers = {"x-forwarded-for": "203.0.113.7"}
        if proto is not None:
            headers["x-forwarded-proto"] = proto
        with trio.fail_after(TIMEOUT):
            async with websockets.trio.client.connect(
                    f"ws://127.0.0.1:{srv.port}/ws", additional_headers=headers, proxy=None,
                    ping_interval=None) as ws:
                s = json.loads(await ws.recv())
    assert s["scheme"] == scheme
    assert s["client"] == ["203.0.113.7", 0]


# ------------------------------------------------------- who is trusted, on real sockets


def _reset_after_send(port: int, data: bytes) -> None:
    """Connect, send ``data`` and reset the connection (SO_LINGER 0), blocking."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(data)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def test_client_reset_before_accept_is_not_a_trusted_peer() -> None:
    """A TCP client that resets before the server accepts it has no peer address any more
    (getpeername fails), but its request is still read: it must not pass for a trusted (Unix
    socket) peer, whose forged headers would be believed. With one connection slot taken,
    the reset lands while the connection waits in the backlog."""
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        seen.append(_summary(scope))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    forged = (b"POST /admin HTTP/1.1\r\nhost: h\r\nx-forwarded-for: 10.0.0.1\r\n"
              b"x-forwarded-proto: https\r\nx-forwarded-host: internal.example\r\n"
              b"content-length: 0\r\n\r\n")
    cfg = proxy_config(trusted=("10.9.9.9",), limits={"max_concurrent_connections": 1})
    async with run_server(app, cfg, lifespan="off") as srv:
        with trio.fail_after(TIMEOUT):
            holder = await trio.open_tcp_stream("127.0.0.1", srv.port)  # the only slot
            await trio.sleep(0.2)
            await trio.to_thread.run_sync(_reset_after_send, srv.port, forged)
            await trio.sleep(0.2)
            await holder.aclose()  # now the reset connection is accepted
            while not seen:  # noqa: ASYNC110 - the app's record, no event to wait on
                await trio.sleep(0.02)
    [s] = seen
    assert s["client"] is None  # the address is not known; it is not 10.0.0.1
    assert (s["scheme"], s["host"]) == ("http", ["h"])


async def test_unix_socket_peer_is_trusted(tmp_path: Path) -> None:
    """A Unix socket peer (no address) is trusted whatever ``trusted`` says."""
    path = str(tmp_path / "s.sock")
    cfg = proxy_config(trusted=("10.9.9.9",), binds=(Bind.unix(path),))
    async with run_server(scope_app, cfg, lifespan="off"), httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=path), timeout=TIMEOUT) as c:
        s = (await c.get("http://app/", headers=XF)).json()
    assert s["client"] == ["203.0.113.7", 4711]
    assert (s["scheme"], s["host"], s["root_path"]) == ("https", ["www.example:8443"], "/shop")


async def test_trust_all_server_takes_the_right_most_entry() -> None:
    async with run_server(scope_app, proxy_config(trusted=("*",)), lifespan="off") as srv, \
            client(srv.url) as c:
        s = (await c.get("/", headers={"x-forwarded-for": "6.6.6.6, 203.0.113.7"})).json()
    assert s["client"] == ["203.0.113.7", 0]


async def test_forwarded_malformed_client_part_server() -> None:
    """nginx-style (one line) and HAProxy-style (a line of its own) appends after a client's
    malformed ``Forwarded``: the proxy's element is applied."""
    async with run_server(scope_app, proxy_config("forwarded"), lifespan="off") as srv:
        for lines in ([b'for="6.6.6.6, for=203.0.113.7;proto=https'],
                      [b"for=[::1]", b"for=203.0.113.7;proto=https"]):
            raw = (b"GET / HTTP/1.1\r\nhost: h\r\n"
                   + b"".join(b"forwarded: " + line + b"\r\n" for line in lines)
                   + b"connection: close\r\n\r\n")
            with trio.fail_after(TIMEOUT):
                stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
                async with stream:
                    await stream.send_all(raw)
                    data = await read_until_closed(stream)
            [(_, body)] = parse_responses(data)
            s = json.loads(body)
            assert (s["client"], s["scheme"]) == (["203.0.113.7", 0], "https"), lines


async def test_zone_id_never_reaches_the_app() -> None:
    async with run_server(scope_app, proxy_config(), lifespan="off") as srv, \
            client(srv.url) as c:
        for value in ('::1%evil"<> x', "fe80::1%eth0", "203.0.113.7, fe80::1%eth0"):
            s = (await c.get("/", headers={"x-forwarded-for": value})).json()
            assert s["client"][0] == "127.0.0.1", value


NON_ASCII_PREFIXES = [  # X-Forwarded-Prefix, the decoded root path, SCRIPT_NAME, raw_path
    ("/shop", "/shop", "/shop", "/shop"),
    ("/%E2%82%AC", "/\u20ac", "/\u00e2\u0082\u00ac", "/%E2%82%AC"),
    ("/caf%C3%A9", "/caf\u00e9", "/caf\u00c3\u00a9", "/caf%C3%A9"),
    ("/100%25", "/100%", "/100%", "/100%25"),
    ("/a%3Fb", "/a?b", "/a?b", "/a%3Fb"),
    ("/a%20b;c=d", "/a b;c=d", "/a b;c=d", "/a%20b;c=d"),
]


def wsgi_uri_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """SCRIPT_NAME, PATH_INFO and the URL wsgiref rebuilds from them (which re-encodes them
    as latin-1, as PEP 3333 frameworks do)."""
    body = json.dumps({"SCRIPT_NAME": environ["SCRIPT_NAME"], "PATH_INFO": environ["PATH_INFO"],
                       "uri": wsgiref.util.request_uri(environ)}).encode()
    start_response("200 OK", [("content-type", "application/json")])
    return [body]


@pytest.mark.parametrize(("prefix", "root", "script_name", "raw_prefix"), NON_ASCII_PREFIXES)
async def test_forwarded_prefix_in_wsgi_and_asgi(prefix: str, root: str, script_name: str,
                                                 raw_prefix: str) -> None:
    """WSGI: SCRIPT_NAME is the prefix's bytes as latin-1, like PATH_INFO (PEP 3333). ASGI:
    raw_path stays a valid encoded path (the prefix percent-encoded)."""
    headers = {"x-forwarded-prefix": prefix}
    async with run_server(WSGIBridge(wsgi_uri_app, threads=2), proxy_config(),
                          asgi=False) as srv, client(srv.url) as c:
        r = await c.get("/caf%C3%A9", headers=headers)
    assert r.status_code == 200, r.text
    e = r.json()
    assert (e["SCRIPT_NAME"], e["PATH_INFO"]) == (script_name, "/caf\u00c3\u00a9")
    assert e["SCRIPT_NAME"].encode("latin-1").decode("utf-8") == root
    uri = urllib.parse.urlsplit(e["uri"])  # (wsgiref failed on a non-latin-1 SCRIPT_NAME)
    assert urllib.parse.unquote(uri.path) == root + "/caf\u00e9"
    async with run_server(scope_app, proxy_config(), lifespan="off") as srv, \
            client(srv.url) as c:
        s = (await c.get("/x%2Fy", headers=headers)).json()
    assert (s["root_path"], s["path"]) == (root, root + "/x/y")
    assert s["raw_path"] == raw_prefix + "/x%2Fy"
    assert urllib.parse.unquote(s["raw_path"]) == s["path"]
