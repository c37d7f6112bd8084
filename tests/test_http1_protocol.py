"""Sans-IO tests of ``trioserve.protocols.http1``: bytes in, events out; responses out as bytes.

No Trio, no mocks. Requests are fed whole and byte by byte; responses are parsed back with h11
acting as a client, so framing is checked by a real parser rather than by string comparison.
References are to RFC 9112 (HTTP/1.1) and RFC 9110 (HTTP semantics).
"""

from __future__ import annotations

import email.utils
import functools
from dataclasses import dataclass, field

import h11
import pytest
from trioserve.fuzz.http1 import available_parsers

from trioserve.protocols.events import (
    NEED_DATA,
    PAUSED,
    BodyData,
    ConnectionClosed,
    EndOfBody,
    ProtocolError,
    RequestHead,
    ResponseError,
)
from trioserve.protocols.http1 import HTTP1Protocol, status_line


@pytest.fixture(autouse=True, params=available_parsers())
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs once per installed request parser (h11, httptools): the module's
    ``HTTP1Protocol`` becomes one that uses that parser."""
    monkeypatch.setitem(globals(), "HTTP1Protocol",
                        functools.partial(_HTTP1Protocol, parser=request.param))
    return str(request.param)


_HTTP1Protocol = HTTP1Protocol
# --------------------------------------------------------------------------------- helpers


@dataclass
class Parsed:
    head: RequestHead
    body: bytes = b""
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    complete: bool = False


def drain(proto: HTTP1Protocol) -> list[object]:
    """Events until NEED_DATA / PAUSED / ConnectionClosed (the sentinel is included last)."""
    out: list[object] = []
    for _ in range(10_000):
        ev = proto.next_event()
        out.append(ev)
        if ev is NEED_DATA or ev is PAUSED or isinstance(ev, ConnectionClosed):
            return out
    raise AssertionError("next_event does not make progress")


def feed(proto: HTTP1Protocol, data: bytes, *, byte_by_byte: bool = False,
         eof: bool = False) -> list[object]:
    pieces = [data[i:i + 1] for i in range(len(data))] if byte_by_byte else [data]
    if eof:
        pieces.append(b"")
    events: list[object] = []
    for piece in pieces:
        proto.receive_data(piece)
        events.extend(drain(proto))
    return events


def parse_one(data: bytes, *, byte_by_byte: bool = False, eof: bool = False,
              **limits: int) -> tuple[Parsed, HTTP1Protocol]:
    """Parse one request; merge body pieces. Raises ProtocolError like the protocol does."""
    proto = HTTP1Protocol(**limits)  # type: ignore[arg-type]
    parsed: Parsed | None = None
    for ev in feed(proto, data, byte_by_byte=byte_by_byte, eof=eof):
        if isinstance(ev, RequestHead):
            assert parsed is None
            parsed = Parsed(ev)
        elif isinstance(ev, BodyData):
            assert parsed is not None and not parsed.complete
            parsed.body += ev.data
        elif isinstance(ev, EndOfBody):
            assert parsed is not None
            parsed.trailers = ev.trailers
            parsed.complete = True
    assert parsed is not None, "no request head"
    return parsed, proto


def parse_both(data: bytes, **kw: object) -> Parsed:
    """Parse whole and byte by byte; both must agree."""
    whole, _ = parse_one(data, **kw)  # type: ignore[arg-type]
    split, _ = parse_one(data, byte_by_byte=True, **kw)  # type: ignore[arg-type]
    assert whole == split
    return whole


def error_of(data: bytes, *, byte_by_byte: bool = False, eof: bool = True,
             **limits: int) -> ProtocolError:
    proto = HTTP1Protocol(**limits)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError) as info:
        events = feed(proto, data, byte_by_byte=byte_by_byte, eof=eof)
        # a valid prefix followed by PAUSED must not hide the error: finish the cycle
        if events and events[-1] is PAUSED and proto.keep_alive:
            proto.response_head(204, [])
            proto.response_end()
            proto.start_next_cycle()
            drain(proto)
    return info.value


def assert_rejected(data: bytes, status: int = 400, *, eof: bool = True, **limits: int) -> None:
    """Refused with ``status``, whether the bytes arrive at once or one at a time."""
    for bbb in (False, True):
        err = error_of(data, byte_by_byte=bbb, eof=eof, **limits)
        assert err.status_hint == status, (bbb, err.message)


def req(head: str, body: bytes = b"") -> bytes:
    """A request from a head written with ``|`` for CRLF (no trailing blank line needed)."""
    return head.replace("|", "\r\n").encode("latin-1") + b"\r\n\r\n" + body


GET = req("GET / HTTP/1.1|Host: example.com")


def request_cycle(data: bytes, **kw: object) -> HTTP1Protocol:
    """A protocol that has parsed one complete request from ``data``."""
    proto = HTTP1Protocol(**kw)  # type: ignore[arg-type]
    events = feed(proto, data)
    assert events[-1] is PAUSED, events
    return proto


@dataclass
class ClientView:
    response: h11.Response
    body: bytes
    trailers: list[tuple[bytes, bytes]]
    informational: list[h11.InformationalResponse]
    must_close: bool
    complete: bool

    def header(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.response.headers if n == name]


def client_parse(data: bytes, *, method: bytes = b"GET", eof: bool = False) -> ClientView:
    """Read a response the way an HTTP/1.1 client would (h11, client side)."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    if eof:
        conn.receive_data(b"")
    info: list[h11.InformationalResponse] = []
    response: h11.Response | None = None
    body = b""
    trailers: list[tuple[bytes, bytes]] = []
    complete = False
    while True:
        ev = conn.next_event()
        if isinstance(ev, h11.InformationalResponse):
            info.append(ev)
        elif isinstance(ev, h11.Response):
            response = ev
        elif isinstance(ev, h11.Data):
            body += bytes(ev.data)
        elif isinstance(ev, h11.EndOfMessage):
            trailers = list(ev.headers.raw_items())
            complete = True
            break
        else:
            break
    assert response is not None, data
    return ClientView(response, body, trailers, info,
                      conn.their_state is h11.MUST_CLOSE, complete)


def respond(proto: HTTP1Protocol, status: int = 200,
            headers: list[tuple[bytes, bytes]] | None = None,
            chunks: tuple[bytes, ...] = (), **kw: object) -> bytes:
    out = proto.response_head(status, headers or [], **kw)  # type: ignore[arg-type]
    for c in chunks:
        out += proto.response_body(c)
    return out + proto.response_end()


# ------------------------------------------------------------------- request line and target


def test_simple_get_events_in_order() -> None:
    proto = HTTP1Protocol()
    proto.receive_data(GET)
    head = proto.next_event()
    assert head == RequestHead(method=b"GET", target=b"/", http_version=b"1.1",
                               headers=[(b"host", b"example.com")], keep_alive=True,
                               expects_continue=False, content_length=None, chunked=False)
    assert proto.request is head
    assert proto.next_event() == EndOfBody([])
    assert proto.request_complete
    assert proto.next_event() is PAUSED
    assert proto.next_event() is PAUSED


def test_need_data_until_head_complete() -> None:
    proto = HTTP1Protocol()
    assert proto.next_event() is NEED_DATA
    proto.receive_data(GET[:-1])
    assert proto.next_event() is NEED_DATA
    assert proto.has_partial_request
    proto.receive_data(GET[-1:])
    assert isinstance(proto.next_event(), RequestHead)


@pytest.mark.parametrize(("method", "target"), [
    (b"GET", b"/"),
    (b"GET", b"/a/b%20c?x=1&y=%2F;z@:"),
    (b"GET", b"//double/slash"),
    (b"POST", b"/upload?"),
    (b"GET", b"http://example.com/path?q=1"),          # absolute-form (RFC 9112 §3.2.2)
    (b"GET", b"https://example.com:8443"),
    (b"GET", b"http://[::1]:80/"),
    (b"CONNECT", b"example.com:443"),                   # authority-form (§3.2.3)
    (b"CONNECT", b"[2001:db8::1]:443"),
    (b"CONNECT", b"10.0.0.1:8080"),
    (b"OPTIONS", b"*"),                                 # asterisk-form (§3.2.4)
    (b"OPTIONS", b"/"),
    (b"PURGE", b"/cache"),                              # any token is a method
    (b"M-SEARCH", b"/"),
])
def test_request_target_forms_accepted(method: bytes, target: bytes) -> None:
    parsed = parse_both(method + b" " + target + b" HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert parsed.head.method == method
    assert parsed.head.target == target
    assert parsed.complete


@pytest.mark.parametrize("line", [
    b"GET * HTTP/1.1",                 # asterisk-form is for OPTIONS only
    b"OPTIONS ** HTTP/1.1",
    b"GET example.com HTTP/1.1",       # not origin-form, not absolute-form
    b"GET ?x=1 HTTP/1.1",
    b"GET http:/x HTTP/1.1",
    b"GET /a#frag HTTP/1.1",           # no fragment in a request-target
    b"CONNECT example.com HTTP/1.1",   # authority-form needs a port
    b"CONNECT / HTTP/1.1",             # CONNECT is authority-form only (§3.2.3)
    b"CONNECT http://example.com:443/ HTTP/1.1",
    b"GET  / HTTP/1.1",                # one SP exactly (§3)
    b"GET /  HTTP/1.1",
    b"GET / HTTP/1.1 ",
    b" GET / HTTP/1.1",
    b"GET\t/ HTTP/1.1",
    b"GET /a b HTTP/1.1",
    b"GET / ",
    b"GET /",
    b"GET",
    b"G(T / HTTP/1.1",                 # method is a token
    b"GET /\x7f HTTP/1.1",
    b"GET /\x80 HTTP/1.1",
    b"GET /\x00 HTTP/1.1",
    b"GET /\x01 HTTP/1.1",
])
def test_bad_request_line_is_400(line: bytes) -> None:
    assert_rejected(line + b"\r\nHost: example.com\r\n\r\n")


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/0.9", b"HTTP/3.0", b"HTTP/9.9"])
def test_unsupported_version_is_505(version: bytes) -> None:
    assert_rejected(b"GET / " + version + b"\r\nHost: example.com\r\n\r\n", 505)


@pytest.mark.parametrize("version", [
    b"HTTP/1", b"HTTP/11", b"HTTP/1.1.1", b"http/1.1", b"HTTP 1.1", b"HTTPS/1.1", b"FOO/1.1",
    b"HTTP/1.x", b"HTTP/2",
])
def test_garbage_version_is_400(version: bytes) -> None:
    assert_rejected(b"GET / " + version + b"\r\nHost: example.com\r\n\r\n", 400)


def test_http10_request() -> None:
    parsed = parse_both(b"GET /x HTTP/1.0\r\n\r\n")
    assert parsed.head.http_version == b"1.0"
    assert parsed.head.headers == []
    assert parsed.complete


# ---------------------------------------------------------------------------- keep-alive


@pytest.mark.parametrize(("head", "keep_alive"), [
    ("GET / HTTP/1.1|Host: a", True),
    ("GET / HTTP/1.1|Host: a|Connection: close", False),
    ("GET / HTTP/1.1|Host: a|Connection: Close", False),
    ("GET / HTTP/1.1|Host: a|Connection: keep-alive, close", False),
    ("GET / HTTP/1.1|Host: a|Connection: foo|Connection: close", False),
    ("GET / HTTP/1.1|Host: a|Connection: closed", True),        # a token, not a substring
    ("GET / HTTP/1.1|Host: a|Connection: keep-alive", True),
    ("GET / HTTP/1.0", False),
    ("GET / HTTP/1.0|Connection: keep-alive", True),
    ("GET / HTTP/1.0|Connection: Keep-Alive", True),
    ("GET / HTTP/1.0|Connection: te, keep-alive", True),
    ("GET / HTTP/1.0|Connection: keep-alive, close", False),
    ("GET / HTTP/1.0|Connection: foo", False),
])
def test_keep_alive_rules(head: str, keep_alive: bool) -> None:
    """RFC 9112 §9.3: 1.1 persists unless "close"; 1.0 only with "keep-alive"."""
    parsed = parse_both(req(head))
    assert parsed.head.keep_alive is keep_alive


# ----------------------------------------------------------------------------------- Host


def test_missing_host_on_http11_is_400() -> None:
    assert_rejected(b"GET / HTTP/1.1\r\nX: y\r\n\r\n")


def test_missing_host_on_http10_is_fine() -> None:
    assert parse_both(b"GET / HTTP/1.0\r\nX: y\r\n\r\n").complete


@pytest.mark.parametrize("hosts", [
    ["a.example", "a.example"],
    ["a.example", "b.example"],
])
def test_duplicate_host_is_400(hosts: list[str]) -> None:
    lines = "|".join(f"Host: {h}" for h in hosts)
    assert_rejected(req("GET / HTTP/1.1|" + lines))
    assert_rejected(req("GET / HTTP/1.0|" + lines))


@pytest.mark.parametrize("host", [
    "a b", "a/b", "a@b", "a:b", "a:80:80", "[::1", "::1", "a?b", "a#b", "a\\b", '"a"', "[::1]x",
])
def test_invalid_host_is_400(host: str) -> None:
    assert_rejected(req(f"GET / HTTP/1.1|Host: {host}"))


@pytest.mark.parametrize("host", [
    "example.com", "example.com:8080", "127.0.0.1", "127.0.0.1:80", "[::1]", "[::1]:443",
    "[fe80::1%25eth0]", "xn--bcher-kva.example", "localhost:", "",
])
def test_valid_host(host: str) -> None:
    parsed = parse_both(req(f"GET / HTTP/1.1|Host: {host}"))
    assert parsed.head.headers == [(b"host", host.encode())]


# ------------------------------------------------------------------------ headers generally


def test_header_names_lowercased_values_kept_and_order_preserved() -> None:
    parsed = parse_both(req("GET / HTTP/1.1|Host: a|X-Foo:   bar baz  |x-foo: 2|Empty:|"
                            "Tab: a\tb|Obs: \xe9t\xe9"))
    assert parsed.head.headers == [
        (b"host", b"a"), (b"x-foo", b"bar baz"), (b"x-foo", b"2"), (b"empty", b""),
        (b"tab", b"a\tb"), (b"obs", b"\xe9t\xe9"),
    ]


@pytest.mark.parametrize("head", [
    b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n",            # bare LF (RFC 9112 §2.2)
    b"GET / HTTP/1.1\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: y\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n",            # bare CR
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
    b"GET /\r HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n z\r\n\r\n",   # obs-fold (§5.2)
    b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n\tz\r\n\r\n",
    b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX : y\r\n\r\n",         # whitespace before colon (§5.1)
    b"GET / HTTP/1.1\r\nHost: a\r\nX\t: y\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: y\x00z\r\n\r\n",     # NUL
    b"GET / HTTP/1.1\r\nHost: a\r\nX\x00: y\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n\x00X: y\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: y\x01z\r\n\r\n",     # other CTLs (RFC 9110 §5.5)
    b"GET / HTTP/1.1\r\nHost: a\r\nX: y\x1b[0m\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: y\x7f\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: \x0bz\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: \x0cz\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n: y\r\n\r\n",           # empty name
    b"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX(y): z\r\n\r\n",       # name is a token
    b"GET / HTTP/1.1\r\nHost: a\r\nX\xff: z\r\n\r\n",
])
def test_malformed_head_is_400(head: bytes) -> None:
    assert_rejected(head)


@pytest.mark.parametrize("head", [
    b"GET / HTTP/1.1\r\nHost: a\nX: y\n",
    b"GET / HTTP/1.1\nHost: a\n\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb",
])
def test_bare_cr_or_lf_refused_before_head_completes(head: bytes) -> None:
    """No CRLF CRLF ever comes: the 400 must not wait for EOF (or a timeout)."""
    assert_rejected(head, eof=False)


@pytest.mark.parametrize("n", [1, 2, 8])
def test_a_few_leading_empty_lines_tolerated(n: int) -> None:
    """RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request-line."""
    assert parse_both(b"\r\n" * n + GET).complete


def test_many_leading_empty_lines_refused_however_split() -> None:
    assert_rejected(b"\r\n" * 9 + GET)
    assert_rejected(b"\r\n" * 100, eof=False)


def test_leading_bare_lf_refused() -> None:
    assert_rejected(b"\n" + GET)


# --------------------------------------------------------------------------------- limits


def test_request_line_at_limit_accepted_over_limit_414() -> None:
    line = b"GET /" + b"a" * 45 + b" HTTP/1.1"
    assert len(line) == 59
    parse_both(line + b"\r\nHost: a\r\n\r\n", max_request_line_size=59)
    assert_rejected(line + b"\r\nHost: a\r\n\r\n", 414, max_request_line_size=58)


def test_long_request_line_refused_before_it_ends() -> None:
    assert_rejected(b"GET /" + b"a" * 100, 414, eof=False, max_request_line_size=64)


def test_default_request_line_limit_is_8k() -> None:
    target = b"/" + b"a" * 8200
    assert_rejected(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414)


def test_header_count_limit_431() -> None:
    lines = "".join(f"|X-{i}: v" for i in range(99))
    assert parse_both(req("GET / HTTP/1.1|Host: a" + lines)).complete  # 100 fields
    lines = "".join(f"|X-{i}: v" for i in range(100))
    assert_rejected(req("GET / HTTP/1.1|Host: a" + lines), 431)


def test_header_count_limit_configurable() -> None:
    data = req("GET / HTTP/1.1|Host: a|A: 1|B: 2")
    parse_both(data, max_request_headers_count=3)
    assert_rejected(data, 431, max_request_headers_count=2)


def test_header_section_size_limit_exact_boundary() -> None:
    """The limit counts the field lines with their CRLFs."""
    line = b"GET / HTTP/1.1\r\n"
    fields = b"Host: a\r\nX: " + b"v" * 50 + b"\r\n"
    data = line + fields + b"\r\n"
    parse_both(data, max_request_headers_total_size=len(fields))
    assert_rejected(data, 431, max_request_headers_total_size=len(fields) - 1)


def test_header_section_too_large_refused_while_it_never_completes() -> None:
    """A client trickling header bytes gets 431 as soon as the section passes the limit."""
    proto = HTTP1Protocol(max_request_headers_total_size=1000)
    proto.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n")
    assert proto.next_event() is NEED_DATA
    sent = 0
    with pytest.raises(ProtocolError) as info:
        for _ in range(200):
            proto.receive_data(b"X-Long: " + b"v" * 40 + b"\r\n")
            sent += 50
            assert proto.next_event() is NEED_DATA
    assert info.value.status_hint == 431
    assert sent <= 1100


def test_many_small_headers_refused_while_never_completing() -> None:
    proto = HTTP1Protocol()
    proto.receive_data(b"GET / HTTP/1.1\r\n")
    with pytest.raises(ProtocolError) as info:
        for i in range(100_000):
            proto.receive_data(b"X%d: 1\r\n" % i)
            proto.next_event()
    assert info.value.status_hint == 431


def test_huge_head_in_one_piece_431() -> None:
    assert_rejected(b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 40_000 + b"\r\n\r\n", 431)


# --------------------------------------------------------------------- Content-Length body


@pytest.mark.parametrize("body", [b"", b"x", b"hello world", bytes(range(256)) * 4])
def test_content_length_body(body: bytes) -> None:
    data = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    parsed = parse_both(data)
    assert parsed.head.content_length == len(body)
    assert not parsed.head.chunked
    assert parsed.body == body
    assert parsed.complete
    assert parsed.head.has_body is bool(body)


def test_content_length_body_in_two_receives() -> None:
    proto = HTTP1Protocol()
    proto.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nabc")
    assert isinstance(proto.next_event(), RequestHead)
    assert proto.next_event() == BodyData(b"abc")
    assert proto.next_event() is NEED_DATA
    assert not proto.request_complete
    proto.receive_data(b"def")
    assert proto.next_event() == BodyData(b"def")
    assert proto.next_event() == EndOfBody([])


def test_request_without_framing_has_no_body() -> None:
    """RFC 9112 §6.3 rule 7: a request without CL or TE has a zero-length body."""
    proto = request_cycle(b"POST / HTTP/1.0\r\n\r\nleftover")
    assert proto.request is not None and proto.request.content_length is None


@pytest.mark.parametrize("value", [
    "+3", "-3", "0x3", "3.0", "1e3", "", "three", "3 3", "3;", "99999999999999999999999",
])
def test_invalid_content_length_is_400(value: str) -> None:
    assert_rejected(req(f"POST / HTTP/1.1|Host: a|Content-Length: {value}", b"abc"))


def test_content_length_leading_zeros_accepted() -> None:
    assert parse_both(req("POST / HTTP/1.1|Host: a|Content-Length: 003", b"abc")).body == b"abc"


# ------------------------------------------------------------------------------- chunked


def chunked(body_part: bytes) -> bytes:
    return b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + body_part


@pytest.mark.parametrize(("encoded", "body"), [
    (b"0\r\n\r\n", b""),
    (b"3\r\nabc\r\n0\r\n\r\n", b"abc"),
    (b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", b"abcde"),
    (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
    (b"a\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
    (b"0003\r\nabc\r\n000\r\n\r\n", b"abc"),
    (b"3;ext\r\nabc\r\n0;last=yes\r\n\r\n", b"abc"),                     # chunk extensions
    (b'3;a=1;b="q;\\"x"\r\nabc\r\n0\r\n\r\n', b"abc"),
    (b"3\r\na\r\n\r\n0\r\n\r\n", b"a\r\n"),                               # CRLF inside data
])
def test_chunked_body(encoded: bytes, body: bytes) -> None:
    parsed = parse_both(chunked(encoded))
    assert parsed.head.chunked and parsed.head.content_length is None and parsed.head.has_body
    assert parsed.body == body
    assert parsed.trailers == []
    assert parsed.complete


def test_chunked_trailers() -> None:
    parsed = parse_both(chunked(b"3\r\nabc\r\n0\r\nX-Checksum: 123\r\nX-Other: a b\r\n\r\n"))
    assert parsed.body == b"abc"
    assert parsed.trailers == [(b"x-checksum", b"123"), (b"x-other", b"a b")]


def test_chunked_te_value_case_and_whitespace() -> None:
    parsed = parse_both(req("POST / HTTP/1.1|Host: a|Transfer-Encoding:  Chunked ", b"0\r\n\r\n"))
    assert parsed.head.chunked


@pytest.mark.parametrize("encoded", [
    b"3\nabc\r\n0\r\n\r\n",            # bare LF ends a chunk-size line
    b"3\r\nabc\n0\r\n\r\n",            # chunk data not followed by CRLF
    b"3\r\nabcX\r\n0\r\n\r\n",
    b"3;a\nb\r\nabc\r\n0\r\n\r\n",     # LF inside a chunk extension (CVE-2025-55315 style)
    b"3;a\rb\r\nabc\r\n0\r\n\r\n",     # bare CR in a chunk extension
    b"3;a\x00\r\nabc\r\n0\r\n\r\n",
    b"0\r\n\n",                         # last chunk, trailer section ended by a bare LF
    b"0\r\nX: y\n\r\n",                # trailer field ended by a bare LF
    b"0\r\nX: y\r\n z\r\n\r\n",        # obs-fold in the trailer section
    b"0\r\nX: \x01\r\n\r\n",           # CTL in a trailer field
    b"0\r\nX : y\r\n\r\n",
    b"-3\r\nabc\r\n0\r\n\r\n",
    b"0x3\r\nabc\r\n0\r\n\r\n",
    b"+3\r\nabc\r\n0\r\n\r\n",
    b"\r\n3\r\nabc\r\n0\r\n\r\n",
    b"g\r\n",
    b"1" * 21 + b"\r\n",
    b"3\r\nabc\r\n0\n\r\n",
])
def test_malformed_chunked_body_is_400(encoded: bytes) -> None:
    assert_rejected(chunked(encoded))


def test_overlong_chunk_line_refused() -> None:
    assert_rejected(chunked(b"3;" + b"x" * 5000), eof=False, max_request_headers_total_size=4096)


def test_overlong_trailer_section_431() -> None:
    trailer = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 100) for i in range(50))
    assert_rejected(chunked(b"0\r\n" + trailer), 431, eof=False,
                    max_request_headers_total_size=4096)


def test_chunked_huge_chunk_size_then_eof() -> None:
    assert_rejected(chunked(b"fffffffffffffffffff\r\nabc"))


# --------------------------------------------------------------------- smuggling refusals


@pytest.mark.parametrize("head", [
    # Transfer-Encoding with Content-Length (RFC 9112 §6.1, §6.3): refused, both orders
    "POST / HTTP/1.1|Host: a|Content-Length: 5|Transfer-Encoding: chunked",
    "POST / HTTP/1.1|Host: a|Transfer-Encoding: chunked|Content-Length: 5",
    "POST / HTTP/1.1|Host: a|Transfer-Encoding: chunked|Content-Length: 0",
    # more than one Content-Length field, equal or not
    "POST / HTTP/1.1|Host: a|Content-Length: 3|Content-Length: 3",
    "POST / HTTP/1.1|Host: a|Content-Length: 3|content-length: 3",
    "POST / HTTP/1.1|Host: a|Content-Length: 3|Content-Length: 4",
    "POST / HTTP/1.1|Host: a|Content-Length: 3, 4",
    # Transfer-Encoding in HTTP/1.0 (§6.1)
    "POST / HTTP/1.0|Transfer-Encoding: chunked",
    # obfuscated field names / values
    "POST / HTTP/1.1|Host: a|Transfer-Encoding : chunked",
    "POST / HTTP/1.1|Host: a|Transfer-Encoding\t: chunked",
    "POST / HTTP/1.1|Host: a| Transfer-Encoding: chunked",
    "POST / HTTP/1.1|Host: a|X: y| Transfer-Encoding: chunked",
    "POST / HTTP/1.1|Host: a|Content-Length : 3",
    "POST / HTTP/1.1|Host: a|Transfer-Encoding: \x0bchunked",
    "POST / HTTP/1.1|Host: a|Transfer-Encoding: chunked\x00",
])
def test_ambiguous_framing_is_400(head: str) -> None:
    assert_rejected(req(head, b"0\r\n\r\n"))


@pytest.mark.parametrize("value", [
    "gzip", "identity", "gzip, chunked", "xchunked", "chunked-false", "chunked;q=1",
    "x, chunked",
])
def test_transfer_coding_other_than_chunked_is_501(value: str) -> None:
    """RFC 9112 §6.1: a server that receives a transfer coding it does not understand SHOULD
    respond with 501."""
    assert_rejected(req(f"POST / HTTP/1.1|Host: a|Transfer-Encoding: {value}", b"0\r\n\r\n"), 501)


def test_two_transfer_encoding_fields_refused() -> None:
    err = error_of(req("POST / HTTP/1.1|Host: a|Transfer-Encoding: chunked|"
                       "Transfer-Encoding: chunked", b"0\r\n\r\n"))
    assert err.status_hint in (400, 501)


def test_transfer_encoding_in_trailers_refused() -> None:
    err = error_of(chunked(b"0\r\nTransfer-Encoding: gzip\r\n\r\n"))
    assert 400 <= err.status_hint <= 599


def test_underscore_header_is_just_another_field() -> None:
    """``Transfer_Encoding`` is a valid, unrelated field name: it must not frame the body."""
    parsed = parse_both(req("POST / HTTP/1.1|Host: a|Transfer_Encoding: chunked"))
    assert not parsed.head.chunked and parsed.head.content_length is None


# ------------------------------------------------------------------------- truncation / EOF


def test_eof_before_anything_is_connection_closed() -> None:
    proto = HTTP1Protocol()
    proto.receive_data(b"")
    assert drain(proto) == [ConnectionClosed()]
    assert proto.next_event() is PAUSED
    proto = HTTP1Protocol()
    proto.receive_data(b"\r\n")  # an empty line before EOF is not a request
    proto.receive_data(b"")
    assert drain(proto) == [ConnectionClosed()]


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: a\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n\r",
    b"G",
    b"\r\n\r",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n",
    chunked(b""),
    chunked(b"5\r\nab"),
    chunked(b"5\r\nabcde"),
    chunked(b"5\r\nabcde\r\n"),
    chunked(b"5\r\nabcde\r\n0\r\n"),
    chunked(b"5\r\nabcde\r\n0\r\nX: y\r\n"),
])
def test_truncated_request_at_eof_is_protocol_error(data: bytes) -> None:
    for bbb in (False, True):
        err = error_of(data, byte_by_byte=bbb, eof=True)
        assert err.status_hint == 400


def test_truncated_body_yields_received_data_first() -> None:
    proto = HTTP1Protocol()
    proto.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    assert isinstance(proto.next_event(), RequestHead)
    assert proto.next_event() == BodyData(b"abc")
    proto.receive_data(b"")
    with pytest.raises(ProtocolError):
        proto.next_event()


# ----------------------------------------------------------------------------- pipelining


def finish(proto: HTTP1Protocol) -> None:
    proto.response_head(200, [], body_length=0)
    proto.response_end()
    proto.start_next_cycle()


def test_two_pipelined_requests_in_one_buffer() -> None:
    first = b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
    second = b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
    proto = HTTP1Protocol()
    events = feed(proto, first + second)
    assert [type(e) for e in events[:-1]] == [RequestHead, BodyData, EndOfBody]
    assert events[-1] is PAUSED
    assert proto.next_event() is PAUSED  # the second request waits for start_next_cycle
    finish(proto)
    head = proto.next_event()
    assert isinstance(head, RequestHead) and head.target == b"/2"
    assert proto.next_event() == EndOfBody([])


def test_pipelined_after_chunked_body_and_leading_crlf() -> None:
    data = chunked(b"1\r\nx\r\n0\r\n\r\n") + b"\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
    for bbb in (False, True):
        proto = HTTP1Protocol()
        events = feed(proto, data, byte_by_byte=bbb)
        assert events[-1] is PAUSED
        finish(proto)
        ev = proto.next_event()
        assert isinstance(ev, RequestHead) and ev.target == b"/2"


def test_bytes_received_while_paused_are_kept() -> None:
    proto = request_cycle(GET)
    proto.receive_data(b"GET /next HTTP/1.1\r\n")
    assert proto.next_event() is PAUSED
    proto.receive_data(b"Host: a\r\n\r\n")
    assert proto.next_event() is PAUSED
    finish(proto)
    ev = proto.next_event()
    assert isinstance(ev, RequestHead) and ev.target == b"/next"


def test_eof_while_paused_closes_after_next_cycle() -> None:
    proto = request_cycle(GET)
    proto.receive_data(b"")
    assert proto.next_event() is PAUSED
    finish(proto)
    assert proto.next_event() == ConnectionClosed()


def test_partial_next_request_then_eof_is_error() -> None:
    proto = request_cycle(GET + b"GET /x HT")
    proto.receive_data(b"")
    finish(proto)
    assert proto.has_partial_request
    with pytest.raises(ProtocolError):
        proto.next_event()


def test_empty_line_budget_resets_per_request() -> None:
    proto = HTTP1Protocol()
    proto.receive_data((b"\r\n" * 8 + GET) * 3)
    for _ in range(3):
        events = drain(proto)
        assert isinstance(events[0], RequestHead)
        finish(proto)
    assert drain(proto) == [NEED_DATA]


def test_pipelined_many_byte_by_byte() -> None:
    data = b"".join(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(5))
    proto = HTTP1Protocol()
    targets = []
    for i in range(len(data)):
        proto.receive_data(data[i:i + 1])
        for ev in drain(proto):
            if isinstance(ev, RequestHead):
                targets.append(ev.target)
    while len(targets) < 5:
        finish(proto)
        for ev in drain(proto):
            if isinstance(ev, RequestHead):
                targets.append(ev.target)
    assert targets == [b"/%d" % i for i in range(5)]


def test_start_next_cycle_refused_when_not_ready() -> None:
    proto = HTTP1Protocol()
    proto.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n")
    drain(proto)
    with pytest.raises(RuntimeError):
        proto.start_next_cycle()  # body not received, no response
    proto.receive_data(b"abc")
    drain(proto)
    with pytest.raises(RuntimeError):
        proto.start_next_cycle()  # no response yet
    proto.response_head(200, [(b"connection", b"close")], body_length=0)
    proto.response_end()
    with pytest.raises(RuntimeError):
        proto.start_next_cycle()  # not keep-alive


def test_keep_alive_false_for_connection_close_request() -> None:
    proto = request_cycle(req("GET / HTTP/1.1|Host: a|Connection: close"))
    out = respond(proto, 200, [], (b"hi",), body_length=2)
    assert not proto.keep_alive
    view = client_parse(out)
    assert view.header(b"connection") == [b"close"]
    assert view.must_close


# --------------------------------------------------------------------- Expect and Upgrade


@pytest.mark.parametrize(("head", "expects"), [
    ("POST / HTTP/1.1|Host: a|Content-Length: 3|Expect: 100-continue", True),
    ("POST / HTTP/1.1|Host: a|Content-Length: 3|Expect: 100-Continue", True),
    ("POST / HTTP/1.1|Host: a|Content-Length: 3", False),
    ("POST / HTTP/1.1|Host: a|Content-Length: 3|Expect: something-else", False),
    ("POST / HTTP/1.0|Content-Length: 3|Expect: 100-continue", False),   # RFC 9110 §10.1.1
])
def test_expect_100_continue_flag(head: str, expects: bool) -> None:
    proto = HTTP1Protocol()
    proto.receive_data(req(head))
    ev = proto.next_event()
    assert isinstance(ev, RequestHead) and ev.expects_continue is expects
    assert proto.next_event() is NEED_DATA  # the body waits for the client


def test_100_continue_bytes_then_body() -> None:
    proto = HTTP1Protocol()
    proto.receive_data(req("POST / HTTP/1.1|Host: a|Content-Length: 3|Expect: 100-continue"))
    drain(proto)
    cont = proto.informational(100)
    assert cont == b"HTTP/1.1 100 Continue\r\n\r\n"
    proto.receive_data(b"abc")
    assert [e for e in drain(proto)][:2] == [BodyData(b"abc"), EndOfBody([])]
    out = cont + respond(proto, 200, [], (b"ok",), body_length=2)
    view = client_parse(out, method=b"POST")
    assert [i.status_code for i in view.informational] == [100]
    assert view.response.status_code == 200 and view.body == b"ok"


def test_informational_not_sent_to_http10() -> None:
    proto = request_cycle(b"GET / HTTP/1.0\r\n\r\n")
    assert proto.informational(100) == b""


def test_early_hints_parsed_by_client() -> None:
    proto = request_cycle(GET)
    out = proto.informational(103, [(b"link", b"</s.css>; rel=preload")])
    out += respond(proto, 200, [], (b"x",), body_length=1)
    view = client_parse(out)
    assert view.informational[0].status_code == 103
    assert (b"link", b"</s.css>; rel=preload") in view.informational[0].headers.raw_items()


@pytest.mark.parametrize("status", [99, 101, 200, 0])
def test_informational_rejects_non_1xx_and_101(status: int) -> None:
    proto = request_cycle(GET)
    with pytest.raises(ResponseError):
        proto.informational(status)


def test_informational_after_final_response_refused() -> None:
    proto = request_cycle(GET)
    proto.response_head(200, [], body_length=0)
    with pytest.raises(ResponseError):
        proto.informational(100)


def test_informational_bad_header_refused() -> None:
    proto = request_cycle(GET)
    with pytest.raises(ResponseError):
        proto.informational(103, [(b"link", b"a\r\nSet-Cookie: x")])


@pytest.mark.parametrize(("head", "upgrade"), [
    ("GET / HTTP/1.1|Host: a|Upgrade: websocket|Connection: Upgrade", b"websocket"),
    ("GET / HTTP/1.1|Host: a|Upgrade: websocket|Connection: keep-alive, upgrade", b"websocket"),
    ("GET / HTTP/1.1|Host: a|Connection: upgrade|Upgrade: h2c", b"h2c"),
    ("GET / HTTP/1.1|Host: a|Upgrade: websocket", None),                 # no Connection: upgrade
    ("GET / HTTP/1.1|Host: a|Upgrade: websocket|Connection: keep-alive", None),
    ("GET / HTTP/1.1|Host: a|Connection: upgrade", None),
])
def test_upgrade_detection(head: str, upgrade: bytes | None) -> None:
    assert parse_both(req(head)).head.upgrade == upgrade


def test_switch_protocol_returns_bytes_after_request() -> None:
    proto = request_cycle(req("GET /ws HTTP/1.1|Host: a|Upgrade: websocket|Connection: Upgrade")
                          + b"\x81\x05hello")
    proto.receive_data(b"more")
    out = proto.response_head(101, [(b"upgrade", b"websocket")], switching_protocols=True)
    assert b"content-length" not in out.lower() and b"transfer-encoding" not in out.lower()
    assert b"connection: upgrade\r\n" in out.lower()
    assert out.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert proto.switch_protocol() == b"\x81\x05hellomore"
    assert not proto.keep_alive
    assert proto.next_event() is PAUSED


def test_switch_protocol_before_body_refused() -> None:
    proto = HTTP1Protocol()
    proto.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n")
    drain(proto)
    with pytest.raises(RuntimeError):
        proto.switch_protocol()


# ============================================================================ response side


def test_response_with_content_length_from_app() -> None:
    proto = request_cycle(GET)
    out = respond(proto, 200, [(b"Content-Type", b"text/plain"), (b"Content-Length", b"5")],
                  (b"hel", b"lo"))
    view = client_parse(out)
    assert view.response.status_code == 200 and view.response.reason == b"OK"
    assert view.response.http_version == b"1.1"
    assert view.header(b"content-length") == [b"5"]
    assert view.header(b"content-type") == [b"text/plain"]
    assert view.body == b"hello" and view.complete and not view.must_close
    assert proto.keep_alive and proto.response_complete


def test_response_chunked_when_length_unknown_on_http11() -> None:
    proto = request_cycle(GET)
    head = proto.response_head(200, [])
    parts = [proto.response_body(b"abc"), proto.response_body(b""), proto.response_body(b"de")]
    end = proto.response_end()
    assert end == b"0\r\n\r\n"
    assert parts[0] == b"3\r\nabc\r\n" and parts[1] == b""
    view = client_parse(head + b"".join(parts) + end)
    assert view.header(b"transfer-encoding") == [b"chunked"]
    assert view.header(b"content-length") == []
    assert view.body == b"abcde" and view.complete and not view.must_close
    assert proto.keep_alive


def test_response_close_delimited_for_http10_without_length() -> None:
    """RFC 9112 §6.3: a 1.0 client cannot read chunked; the body ends with the connection."""
    proto = request_cycle(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert proto.keep_alive
    out = respond(proto, 200, [], (b"abc", b"def"))
    assert not proto.keep_alive
    assert b"transfer-encoding" not in out.lower()
    view = client_parse(out, eof=True)
    assert view.header(b"connection") == [b"close"]
    assert view.body == b"abcdef" and view.complete


def test_http10_keep_alive_with_length_says_keep_alive() -> None:
    proto = request_cycle(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    out = respond(proto, 200, [], (b"abc",), body_length=3)
    assert proto.keep_alive
    view = client_parse(out)
    assert view.header(b"connection") == [b"keep-alive"]
    assert view.body == b"abc"
    proto.start_next_cycle()


def test_http10_without_keep_alive_gets_close() -> None:
    proto = request_cycle(b"GET / HTTP/1.0\r\n\r\n")
    out = respond(proto, 200, [], (b"abc",), body_length=3)
    assert not proto.keep_alive
    assert client_parse(out).header(b"connection") == [b"close"]


def test_body_length_hint_becomes_content_length() -> None:
    proto = request_cycle(GET)
    out = respond(proto, 200, [], (b"0123456789",), body_length=10)
    view = client_parse(out)
    assert view.header(b"content-length") == [b"10"]
    assert view.header(b"transfer-encoding") == []
    assert view.body == b"0123456789"


def test_app_content_length_wins_over_hint() -> None:
    proto = request_cycle(GET)
    out = respond(proto, 200, [(b"content-length", b"2")], (b"ab",), body_length=99)
    assert client_parse(out).header(b"content-length") == [b"2"]


def test_duplicate_equal_content_length_emitted_once() -> None:
    proto = request_cycle(GET)
    out = respond(proto, 200, [(b"content-length", b"2"), (b"Content-Length", b"2")], (b"ab",))
    assert out.lower().count(b"content-length") == 1


@pytest.mark.parametrize("values", [[b"2", b"3"], [b"abc"], [b"-1"], [b"1e3"], [b""]])
def test_bad_content_length_from_app(values: list[bytes]) -> None:
    proto = request_cycle(GET)
    with pytest.raises(ResponseError):
        proto.response_head(200, [(b"content-length", v) for v in values])


def test_head_response_keeps_headers_sends_no_body() -> None:
    proto = request_cycle(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
    head = proto.response_head(200, [(b"content-length", b"1000"), (b"etag", b'"x"')])
    assert not proto.body_allowed
    assert proto.response_body(b"x" * 1000) == b""
    assert proto.response_end() == b""
    view = client_parse(head, method=b"HEAD")
    assert view.header(b"content-length") == [b"1000"]
    assert view.header(b"etag") == [b'"x"']
    assert view.body == b"" and view.complete and not view.must_close
    assert proto.keep_alive


def test_head_response_without_length_is_not_chunked_and_keeps_alive() -> None:
    proto = request_cycle(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
    out = respond(proto, 200, [], (b"body",), body_length=4)
    assert b"transfer-encoding" not in out.lower()
    assert out.endswith(b"\r\n\r\n")
    view = client_parse(out, method=b"HEAD")
    assert view.body == b"" and view.complete
    assert proto.keep_alive


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(status: int) -> None:
    proto = request_cycle(GET)
    head = proto.response_head(status, [(b"content-length", b"5")])
    assert proto.response_body(b"hello") == b""
    out = head + proto.response_end()
    assert b"transfer-encoding" not in out.lower()
    view = client_parse(out)
    assert view.response.status_code == status
    assert view.body == b"" and view.complete and not view.must_close
    # RFC 9110 §8.6: never Content-Length in a 204; a 304 may repeat the GET's length
    assert view.header(b"content-length") == ([] if status == 204 else [b"5"])
    assert proto.keep_alive


def test_app_transfer_encoding_dropped() -> None:
    proto = request_cycle(GET)
    out = respond(proto, 200, [(b"Transfer-Encoding", b"gzip")], (b"abc",))
    view = client_parse(out)
    assert view.header(b"transfer-encoding") == [b"chunked"]
    assert view.body == b"abc"
    proto2 = request_cycle(GET)
    out = respond(proto2, 200, [(b"Transfer-Encoding", b"chunked"), (b"content-length", b"3")],
                  (b"abc",))
    view = client_parse(out)
    assert view.header(b"transfer-encoding") == [] and view.header(b"content-length") == [b"3"]


@pytest.mark.parametrize("value", [b"close", b"Close", b"keep-alive, close"])
def test_connection_close_from_app_ends_keep_alive(value: bytes) -> None:
    proto = request_cycle(GET)
    out = respond(proto, 200, [(b"connection", value)], (b"ab",), body_length=2)
    assert not proto.keep_alive
    view = client_parse(out)
    assert view.header(b"connection") == [b"close"]
    assert view.must_close


def test_app_connection_keep_alive_does_not_revive_closed_connection() -> None:
    proto = request_cycle(req("GET / HTTP/1.1|Host: a|Connection: close"))
    respond(proto, 200, [(b"connection", b"keep-alive")], body_length=0)
    assert not proto.keep_alive


def test_date_and_server_headers() -> None:
    proto = request_cycle(GET)
    view = client_parse(respond(proto, 200, [], body_length=0))
    [date] = view.header(b"date")
    parsed = email.utils.parsedate_to_datetime(date.decode())
    assert parsed.tzinfo is not None and date.endswith(b" GMT")
    assert view.header(b"server") == [b"trioserve"]


def test_server_header_configurable_and_off() -> None:
    proto = request_cycle(GET, server_header=b"edge/1")
    assert client_parse(respond(proto, 200, body_length=0)).header(b"server") == [b"edge/1"]
    proto = request_cycle(GET, server_header=None)
    view = client_parse(respond(proto, 200, body_length=0))
    assert view.header(b"server") == []
    assert len(view.header(b"date")) == 1


def test_app_date_and_server_not_duplicated() -> None:
    proto = request_cycle(GET)
    date = b"Sun, 06 Nov 1994 08:49:37 GMT"
    view = client_parse(respond(proto, 200, [(b"Date", date), (b"Server", b"app")],
                                body_length=0))
    assert view.header(b"date") == [date]
    assert view.header(b"server") == [b"app"]


@pytest.mark.parametrize("name", [
    b"", b"X Foo", b"X:Foo", b"X\r\nY", b"X\nY", b"X\x00", b"\xff", b"(x)", b"X\t",
])
def test_invalid_response_header_name(name: bytes) -> None:
    proto = request_cycle(GET)
    with pytest.raises(ResponseError):
        proto.response_head(200, [(name, b"v")])


@pytest.mark.parametrize("value", [
    b"a\r\nSet-Cookie: evil=1", b"a\nb", b"a\rb", b"a\x00b", b"\x01", b"a\x7f",
])
def test_header_injection_refused(value: bytes) -> None:
    proto = request_cycle(GET)
    with pytest.raises(ResponseError):
        proto.response_head(200, [(b"x-value", value)])
    assert not proto.response_started


def test_tab_and_obs_text_values_allowed() -> None:
    proto = request_cycle(GET)
    view = client_parse(respond(proto, 200, [(b"x-a", b"a\tb"), (b"x-b", b"caf\xe9")],
                                body_length=0))
    assert view.header(b"x-a") == [b"a\tb"] and view.header(b"x-b") == [b"caf\xe9"]


@pytest.mark.parametrize("reason", [b"OK\r\nX: y", b"a\nb", b"\x00"])
def test_reason_phrase_injection_refused(reason: bytes) -> None:
    proto = request_cycle(GET)
    with pytest.raises(ResponseError):
        proto.response_head(200, [], reason=reason)


def test_custom_reason_and_unknown_status() -> None:
    proto = request_cycle(GET)
    view = client_parse(respond(proto, 299, [], reason=b"Fine Thanks", body_length=0))
    assert view.response.status_code == 299 and view.response.reason == b"Fine Thanks"
    assert status_line(599) == b"HTTP/1.1 599 \r\n"
    assert status_line(404) == b"HTTP/1.1 404 Not Found\r\n"


@pytest.mark.parametrize("status", [0, 99, 100, 102, 199, 1000, -200])
def test_invalid_final_status(status: int) -> None:
    proto = request_cycle(GET)
    with pytest.raises(ResponseError):
        proto.response_head(status, [])


def test_second_response_refused() -> None:
    proto = request_cycle(GET)
    proto.response_head(200, [], body_length=0)
    with pytest.raises(ResponseError):
        proto.response_head(200, [], body_length=0)


def test_body_before_head_and_after_end_refused() -> None:
    proto = request_cycle(GET)
    with pytest.raises(ResponseError):
        proto.response_body(b"x")
    with pytest.raises(ResponseError):
        proto.response_end()
    respond(proto, 200, body_length=0)
    with pytest.raises(ResponseError):
        proto.response_body(b"x")
    with pytest.raises(ResponseError):
        proto.response_end()


def test_body_longer_than_content_length() -> None:
    proto = request_cycle(GET)
    proto.response_head(200, [(b"content-length", b"3")])
    assert proto.response_body(b"ab") == b"ab"
    with pytest.raises(ResponseError):
        proto.response_body(b"cd")
    assert not proto.keep_alive


def test_body_shorter_than_content_length() -> None:
    proto = request_cycle(GET)
    proto.response_head(200, [], body_length=5)
    proto.response_body(b"abc")
    with pytest.raises(ResponseError):
        proto.response_end()
    assert not proto.keep_alive


def test_file_frame_chunked_and_length_checked() -> None:
    proto = request_cycle(GET)
    head = proto.response_head(200, [])
    before, after = proto.file_frame(5)
    assert (before, after) == (b"5\r\n", b"\r\n")
    assert proto.file_frame(0) == (b"", b"")
    view = client_parse(head + before + b"hello" + after + proto.response_end())
    assert view.body == b"hello"
    proto = request_cycle(GET)
    proto.response_head(200, [], body_length=4)
    assert proto.file_frame(4) == (b"", b"")
    with pytest.raises(ResponseError):
        proto.file_frame(1)
    assert not proto.keep_alive


def test_chunked_trailers_parsed_by_client() -> None:
    proto = request_cycle(GET)
    head = proto.response_head(200, [(b"trailer", b"x-checksum")])
    body = proto.response_body(b"data")
    end = proto.response_end([(b"X-Checksum", b"abc123")])
    view = client_parse(head + body + end)
    assert view.body == b"data"
    assert view.trailers == [(b"X-Checksum", b"abc123")]


def test_invalid_trailer_refused() -> None:
    proto = request_cycle(GET)
    proto.response_head(200, [])
    with pytest.raises(ResponseError):
        proto.response_end([(b"x", b"a\r\nb")])


def test_error_response() -> None:
    proto = HTTP1Protocol()
    proto.receive_data(b"GET / HTTP/9.9\r\nHost: a\r\n\r\n")
    with pytest.raises(ProtocolError) as info:
        proto.next_event()
    out = proto.error_response(info.value.status_hint, "HTTP version not supported")
    assert not proto.keep_alive
    view = client_parse(out)
    assert view.response.status_code == 505
    assert view.header(b"connection") == [b"close"]
    assert view.header(b"content-length") == [str(len(view.body)).encode()]
    assert view.body == b"HTTP version not supported\n"
    assert view.must_close and view.complete


def test_error_response_to_head_has_no_body() -> None:
    proto = request_cycle(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
    out = proto.error_response(500, "boom")
    view = client_parse(out, method=b"HEAD")
    assert view.body == b"" and out.endswith(b"\r\n\r\n")
    assert view.header(b"connection") == [b"close"]


def test_error_response_server_header_off() -> None:
    proto = HTTP1Protocol(server_header=None)
    assert b"server:" not in proto.error_response(400, "bad").lower()


def test_full_keep_alive_exchange_parsed_by_client() -> None:
    """Two requests on one connection; both responses read back-to-back by one h11 client."""
    proto = HTTP1Protocol()
    proto.receive_data(GET + b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
    wire = b""
    drain(proto)
    wire += respond(proto, 200, [], (b"one",))
    proto.start_next_cycle()
    events = drain(proto)
    assert isinstance(events[0], RequestHead) and events[1] == BodyData(b"hi")
    wire += respond(proto, 201, [], (b"two",), body_length=3)
    proto.start_next_cycle()
    client = h11.Connection(h11.CLIENT)
    client.receive_data(wire)
    bodies = []
    for _ in range(2):
        client.send(h11.Request(method="GET", target="/", headers=[("Host", "a")]))
        client.send(h11.EndOfMessage())
        body = b""
        while True:
            ev = client.next_event()
            if isinstance(ev, h11.Data):
                body += bytes(ev.data)
            elif isinstance(ev, h11.EndOfMessage):
                break
        bodies.append(body)
        client.start_next_cycle()
    assert bodies == [b"one", b"two"]


def test_transfer_encoding_value_reaches_the_app_as_sent() -> None:
    p = HTTP1Protocol()
    p.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n"
                   b"3\r\nabc\r\n0\r\n\r\n")
    head = p.next_event()
    assert isinstance(head, RequestHead) and head.chunked
    assert (b"transfer-encoding", b"Chunked") in head.headers


def test_chunk_size_beyond_63_bits_is_refused() -> None:
    p = HTTP1Protocol()
    p.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"8000000000000000\r\nabc")
    assert isinstance(p.next_event(), RequestHead)
    with pytest.raises(ProtocolError) as info:
        for _ in range(5):
            p.next_event()
    assert info.value.status_hint == 400


def test_101_only_when_switching_protocols() -> None:
    proto = request_cycle(req("GET / HTTP/1.1|Host: a"))
    with pytest.raises(ResponseError):
        proto.response_head(101, [])
    with pytest.raises(ResponseError):  # no Upgrade in the request
        proto.response_head(101, [], switching_protocols=True)
    assert proto.response_head(200, []).startswith(b"HTTP/1.1 200 OK\r\n")


@pytest.mark.parametrize(("te_lines", "status"), [
    ([b"gzip, chunked"], 501),          # an unknown coding: not implemented
    ([b"gzip", b"chunked"], 501),
    ([b"chunked, chunked"], 400),       # chunked applied twice (RFC 9112 \u00a77.1)
    ([b"chunked", b"chunked"], 400),
    ([b"chunked, gzip"], 400),          # chunked not last
    ([b"chunked,"], 400),               # an empty list element
    ([b"chu\"nked"], 400),              # not a token
])
def test_transfer_encoding_refusals(te_lines: list[bytes], status: int) -> None:
    p = HTTP1Protocol()
    p.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\n"
                   + b"".join(b"Transfer-Encoding: " + v + b"\r\n" for v in te_lines)
                   + b"\r\n0\r\n\r\n")
    with pytest.raises(ProtocolError) as info:
        p.next_event()
    assert info.value.status_hint == status
