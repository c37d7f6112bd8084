"""Hypothesis strategies and properties for the HTTP/1.1 protocol (``trioserve.protocols.http1``).

Two kinds of input:

- :func:`valid_requests` builds requests that RFC 9112 and RFC 9110 allow (method, request-target in
  the form the method permits, HTTP/1.0 or 1.1, Host, header fields, a body framed by
  Content-Length or, on HTTP/1.1, chunked with random chunk sizes, extensions and trailers). Each
  comes with what the server must see: :class:`GeneratedRequest`.
- :func:`mutated_requests` damages valid ones (byte flips, insertions of CR, LF, NUL, SP, HTAB,
  colons or commas, deletions, truncation, duplicated or conflicting framing fields, obs-fold,
  whitespace before a colon ...). They may or may not still be valid.

Invariants, checked by :func:`check_parse` on any bytes:

1. The protocol either parses or raises :class:`ProtocolError` whose ``status_hint`` is 4xx/5xx;
   any other exception is a bug.
2. It never hangs: every ``next_event`` call returns, the driving loop is bounded, and once EOF has
   been fed ``NEED_DATA`` is never returned (the outcome is an event, an error, or a stop because
   the connection is not kept alive).
3. Events come in order: per request one ``RequestHead``, then ``BodyData``, then one
   ``EndOfBody``; a Content-Length body delivers exactly that many bytes;
   ``ConnectionClosed`` only between requests.

:func:`check_valid` adds, for generated valid requests: the parse succeeds and method, target,
version, headers (names lower-cased), body and trailers equal what was generated, whether the bytes
arrive whole, one at a time, or split at random points. :func:`check_same_whole_and_split` asserts
that splitting never changes whether the input is accepted, nor the requests completed before an
error.

Hypothesis is a test extra; this module needs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import NoReturn, TypedDict, Unpack

try:
    from hypothesis import strategies as st
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "trioserve.fuzz.http1 needs hypothesis; install the test extra: "
        "pip install 'trioserve[test]'"
    ) from exc

from trioserve.protocols.events import (
    NEED_DATA,
    PAUSED,
    BodyData,
    ConnectionClosed,
    EndOfBody,
    ProtocolError,
    RequestHead,
)
from trioserve.protocols.http1 import HTTP1Protocol, resolve_parser

__all__ = [
    "GeneratedRequest",
    "InvariantViolation",
    "ParseOutcome",
    "ParsedRequest",
    "ProtocolLimits",
    "available_parsers",
    "check_parse",
    "check_same_parsers",
    "check_same_whole_and_split",
    "check_valid",
    "feed_splits",
    "mutated_requests",
    "split_points",
    "valid_requests",
]

Header = tuple[bytes, bytes]


class ProtocolLimits(TypedDict, total=False):
    """Keyword arguments of :class:`HTTP1Protocol` that the properties may vary."""

    max_request_line_size: int
    max_request_headers_count: int
    max_request_headers_total_size: int
    parser: str  # "h11" (default), "httptools" or "auto"

# ----------------------------------------------------------------------------- grammar pieces

_ALPHA = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_DIGIT = b"0123456789"
_TCHAR = _ALPHA + _DIGIT + b"!#$%&'*+-.^_`|~"
_UNRESERVED = _ALPHA + _DIGIT + b"-._~"
_PCHAR = _UNRESERVED + b"!$&'()*+,;=" + b":@"
_QUERY_CHAR = _PCHAR + b"/?"
_LABEL_CHAR = _ALPHA + _DIGIT + b"-"
_QDTEXT = _TCHAR + b" ;=,/:@[]"
# field-vchar: VCHAR / obs-text (RFC 9110 §5.5)
_FIELD_VCHAR = bytes(range(0x21, 0x7F)) + bytes(range(0x80, 0x100))
# fields whose meaning the generator controls itself
_RESERVED_FIELDS = frozenset({
    b"host", b"content-length", b"transfer-encoding", b"connection", b"upgrade", b"expect",
    b"te", b"trailer", b"keep-alive", b"proxy-connection",
})
_MAX_EXAMPLE_BODY = 600

# Strategies are built once, here: building them inside each draw costs more than the draw.
# Most are one ``st.binary`` draw mapped onto an alphabet, which keeps generation fast.


def _over(alphabet: bytes, min_size: int, max_size: int) -> st.SearchStrategy[bytes]:
    n = len(alphabet)
    return st.binary(min_size=min_size, max_size=max_size).map(
        lambda raw: bytes(alphabet[c % n] for c in raw))


def _to_path(raw: bytes, alphabet: bytes = _PCHAR) -> bytes:
    """Bytes < 16 become a pct-encoded triplet, the rest characters of ``alphabet``."""
    return b"".join(b"%%%02X" % (c * 17) if c < 16 else alphabet[c % len(alphabet):][:1]
                    for c in raw)


def _to_field_value(raw: bytes) -> bytes:
    """field-value: field-vchars with single or repeated SP/HTAB inside, none at either end."""
    out = bytes(b" \t"[c % 2] if c < 24 else _FIELD_VCHAR[c % len(_FIELD_VCHAR)] for c in raw)
    return out.strip(b" \t")


tokens: st.SearchStrategy[bytes] = _over(_TCHAR, 1, 12)
"""RFC 9110 §5.6.2 token."""

methods: st.SearchStrategy[bytes] = st.one_of(
    st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"HEAD", b"OPTIONS"]),
    tokens.filter(lambda t: t != b"CONNECT"),
)

field_values: st.SearchStrategy[bytes] = st.binary(max_size=24).map(_to_field_value)
"""A field-value without leading or trailing whitespace (which a recipient strips)."""

field_names: st.SearchStrategy[bytes] = tokens.filter(
    lambda t: t.lower() not in _RESERVED_FIELDS)
"""Tokens other than the fields that change framing, Host, connection management or Expect."""

_fields = st.lists(st.tuples(field_names, field_values), max_size=12)
_trailer_fields = st.lists(st.tuples(field_names, field_values), max_size=3)
_segments = st.lists(st.binary(max_size=10).map(_to_path), min_size=1, max_size=5)
_query = st.one_of(st.none(), st.binary(max_size=16).map(lambda r: _to_path(r, _QUERY_CHAR)))
_labels = st.lists(_over(_LABEL_CHAR, 1, 10), min_size=1, max_size=4)
_ipv4 = st.lists(st.integers(0, 255), min_size=4, max_size=4)
_ipv6 = st.lists(st.integers(0, 0xFFFF), min_size=8, max_size=8)
_port = st.one_of(st.none(), st.integers(0, 65535))
_host_kind = st.sampled_from(["name", "name", "ipv4", "ipv6"])
_case_mask = st.integers(0, (1 << 16) - 1)
_ows = st.sampled_from([b"", b" ", b"  ", b"\t"])
_trailing_ows = st.sampled_from([b"", b"", b" ", b"\t"])
_cuts = st.lists(st.integers(1, _MAX_EXAMPLE_BODY), max_size=6)
_zeros = st.integers(0, 3)
_booleans = st.booleans()
_ext_count = st.integers(0, 2)
_ext_kind = st.sampled_from(["none", "token", "quoted"])
_quoted = _over(_QDTEXT, 0, 10)
_version = st.sampled_from([b"1.1", b"1.1", b"1.0"])
_form = st.sampled_from(["origin", "origin", "origin", "absolute", "asterisk", "authority"])
_scheme = st.sampled_from([b"http", b"https", b"HTTP"])
_framing = st.sampled_from(["length", "chunked", "none"])
_bodies = st.binary(max_size=_MAX_EXAMPLE_BODY)
_leading_crlf = st.integers(0, 2)


@st.composite
def origin_forms(draw: st.DrawFn) -> bytes:
    """absolute-path [ "?" query ] (RFC 9112 §3.2.1)."""
    target = b"/" + b"/".join(draw(_segments))
    query = draw(_query)
    return target if query is None else target + b"?" + query


@st.composite
def hosts(draw: st.DrawFn) -> bytes:
    """uri-host [ ":" port ]: reg-name, IPv4address or IP-literal (RFC 3986 §3.2.2)."""
    kind = draw(_host_kind)
    if kind == "name":
        host = b".".join(draw(_labels))
    elif kind == "ipv4":
        host = b".".join(b"%d" % n for n in draw(_ipv4))
    else:
        host = b"[" + b":".join(b"%x" % g for g in draw(_ipv6)) + b"]"
    port = draw(_port)
    return host if port is None else host + b":%d" % port


def _random_case(name: bytes, mask: int) -> bytes:
    return bytes(c ^ 0x20 if (mask >> (i % 16)) & 1 and chr(c).isalpha() else c
                 for i, c in enumerate(name))


@dataclass(frozen=True)
class GeneratedRequest:
    """A valid request and what a conforming parser must report for it."""

    raw: bytes
    method: bytes
    target: bytes
    http_version: bytes
    headers: tuple[Header, ...]
    """As the server must see them: names lower-cased, in order, framing fields included."""
    body: bytes
    trailers: tuple[Header, ...] = ()
    chunked: bool = False

    @property
    def keep_alive(self) -> bool:
        return self.http_version == b"1.1"  # no Connection field is generated


@st.composite
def chunk_extensions(draw: st.DrawFn) -> bytes:
    """*( ";" chunk-ext-name [ "=" ( token / quoted-string ) ] ) (RFC 9112 §7.1.1)."""
    out = b""
    for _ in range(draw(_ext_count)):
        out += b";" + draw(tokens)
        kind = draw(_ext_kind)
        if kind == "token":
            out += b"=" + draw(tokens)
        elif kind == "quoted":
            out += b'="' + draw(_quoted) + b'"'
    return out


@st.composite
def chunked_encodings(draw: st.DrawFn, body: bytes) -> tuple[bytes, tuple[Header, ...]]:
    """``body`` cut at random points into chunks, hex sizes in either case with optional leading
    zeros, optional chunk extensions; optional trailer fields. Returns the encoded body and the
    trailers as the server must see them."""
    cuts = sorted({c for c in draw(_cuts) if c < len(body)})
    bounds = [0, *cuts, len(body)]
    pieces = [body[a:b] for a, b in pairwise(bounds) if b > a]
    out = b""
    for piece in [*pieces, b""]:
        size = b"%x" % len(piece)
        if draw(_booleans):
            size = size.upper()
        out += b"0" * draw(_zeros) + size + draw(chunk_extensions()) + b"\r\n"
        if piece:
            out += piece + b"\r\n"
    trailers = draw(_trailer_fields)
    for name, value in trailers:
        out += name + b":" + draw(_ows) + value + draw(_trailing_ows) + b"\r\n"
    out += b"\r\n"
    return out, tuple((n.lower(), v) for n, v in trailers)


@st.composite
def valid_requests(draw: st.DrawFn) -> GeneratedRequest:
    """A request every conforming HTTP/1.1 server must accept."""
    version = draw(_version)
    form = draw(_form)
    host = draw(hosts())
    if form == "asterisk":
        method, target = b"OPTIONS", b"*"
    elif form == "authority":
        method = b"CONNECT"
        has_port = b"]:" in host or (b":" in host and b"[" not in host)
        target = host if has_port else host + b":443"
    elif form == "absolute":
        method = draw(methods)
        path = draw(origin_forms()) if draw(_booleans) else b""
        target = draw(_scheme) + b"://" + host + path
    else:
        method, target = draw(methods), draw(origin_forms())

    fields: list[Header] = list(draw(_fields))
    mask = draw(_case_mask)
    if version == b"1.1" or draw(_booleans):
        fields.insert(mask % (len(fields) + 1), (b"Host", host))

    body = draw(_bodies) if method != b"CONNECT" else b""
    framing = draw(_framing)
    if framing == "chunked" and version == b"1.0":
        framing = "length"
    if framing == "none" and body:
        framing = "length"
    trailers: tuple[Header, ...] = ()
    encoded = body
    if framing == "length":
        fields.insert((mask >> 4) % (len(fields) + 1), (b"Content-Length", b"%d" % len(body)))
    elif framing == "chunked":
        fields.insert((mask >> 4) % (len(fields) + 1), (b"Transfer-Encoding", b"chunked"))
        encoded, trailers = draw(chunked_encodings(body))

    raw = b"\r\n" * draw(_leading_crlf)
    raw += method + b" " + target + b" HTTP/" + version + b"\r\n"
    for i, (name, value) in enumerate(fields):
        raw += _random_case(name, mask >> i) + b":" + draw(_ows) + value
        raw += draw(_trailing_ows) + b"\r\n"
    raw += b"\r\n" + encoded
    return GeneratedRequest(
        raw=raw, method=method, target=target, http_version=version,
        headers=tuple((n.lower(), v) for n, v in fields), body=body, trailers=trailers,
        chunked=framing == "chunked",
    )


_INSERTIONS: Sequence[bytes] = (
    b"\r", b"\n", b"\r\n", b"\x00", b" ", b"\t", b":", b",", b"\x7f", b"\x0b", b"\x80", b";",
    b"\r\n ", b"\r\n\r\n", b"0", b"f", b"-", b'"', b"\xff",
)
_FRAMING_LINES: Sequence[bytes] = (
    b"Content-Length: 0", b"Content-Length: 5", b"Content-Length: 1, 2", b"Content-Length: -1",
    b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip", b"Transfer-Encoding : chunked",
    b"Transfer-Encoding: chunked, identity", b" Transfer-Encoding: chunked",
    b"Transfer-Encoding:\x0bchunked", b"Host: other", b"Host: a b", b"Connection: close",
    b"Expect: 100-continue", b"X: y\r\n z", b"X-Null: \x00", b"Content-Length:\t7 ",
    # zero-padded lengths around h11's 20-digit bound (llhttp alone would take any length)
    b"Content-Length: " + b"0" * 19 + b"5", b"Content-Length: " + b"0" * 20 + b"5",
    b"Content-Length: 00000000000000000000000000000000000000000000000000",
)


_mutation_count = st.integers(1, 3)
_mutation_kind = st.sampled_from(["flip", "insert", "delete", "truncate", "framing",
                                  "duplicate-line", "replace-crlf", "append"])
_position = st.integers(0, 1 << 16)
_bit = st.integers(0, 7)
_delete_len = st.integers(1, 3)
_insertion = st.sampled_from(_INSERTIONS)
_framing_line = st.sampled_from(_FRAMING_LINES)
_crlf_replacement = st.sampled_from([b"\n", b"\r", b"\n\r", b"\r\r\n", b""])
_appendix = st.sampled_from([b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"\r\n", b"0\r\n\r\n",
                             b"garbage", b"\x00" * 3])
_cut_positions = st.lists(st.integers(1, 1 << 16), max_size=12)


@st.composite
def mutated_requests(draw: st.DrawFn) -> bytes:
    """Valid requests damaged one to three times; the result may or may not be valid."""
    data = bytearray(draw(valid_requests()).raw)
    for _ in range(draw(_mutation_count)):
        kind = draw(_mutation_kind)
        pos = draw(_position) % (len(data) + 1)
        if kind == "flip" and data:
            i = min(pos, len(data) - 1)
            data[i] ^= 1 << draw(_bit)
        elif kind == "insert":
            data[pos:pos] = draw(_insertion)
        elif kind == "delete" and data:
            del data[pos:pos + draw(_delete_len)]
        elif kind == "truncate":
            del data[pos:]
        elif kind == "framing":
            line_end = data.find(b"\r\n")
            if line_end >= 0:
                data[line_end + 2:line_end + 2] = draw(_framing_line) + b"\r\n"
        elif kind == "duplicate-line":
            lines = bytes(data).split(b"\r\n")
            if len(lines) > 2:
                i = 1 + pos % (len(lines) - 2)
                lines.insert(i, lines[i])
                data = bytearray(b"\r\n".join(lines))
        elif kind == "replace-crlf":
            i = data.find(b"\r\n", pos)
            if i >= 0:
                data[i:i + 2] = draw(_crlf_replacement)
        elif kind == "append":
            data += draw(_appendix)
    return bytes(data)


@st.composite
def split_points(draw: st.DrawFn, data: bytes) -> list[int]:
    """Sorted, distinct cut positions inside ``data`` for :func:`feed_splits`."""
    if len(data) < 2:
        return []
    return sorted({1 + c % (len(data) - 1) for c in draw(_cut_positions)})


def feed_splits(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in pairwise(bounds) if b > a]


# ------------------------------------------------------------------------------ properties


@dataclass
class ParsedRequest:
    head: RequestHead
    body: bytes = b""
    trailers: list[Header] = field(default_factory=list)
    complete: bool = False


@dataclass
class ParseOutcome:
    """What the protocol made of some bytes: requests (the last one possibly incomplete), and
    the ProtocolError that ended parsing, if any. ``closed``: a clean ConnectionClosed was seen;
    ``stopped``: parsing ended because the connection is not kept alive."""

    requests: list[ParsedRequest] = field(default_factory=list)
    error: ProtocolError | None = None
    closed: bool = False
    stopped: bool = False

    @property
    def completed(self) -> list[ParsedRequest]:
        return [r for r in self.requests if r.complete]


class InvariantViolation(AssertionError):
    """A property of the protocol does not hold for some input."""


def _fail(message: str) -> NoReturn:
    raise InvariantViolation(message)


def check_parse(data: bytes, *, byte_by_byte: bool = False,
                pieces: Sequence[bytes] | None = None,
                **limits: Unpack[ProtocolLimits]) -> ParseOutcome:
    """Feed ``data`` (whole, one byte at a time, or as ``pieces``), then EOF, answering each
    complete request with an empty 200 so pipelined requests are parsed too.

    Checks invariants 1-3 of the module docstring, raising :class:`InvariantViolation` (an
    ``AssertionError``, not an ``assert``: the checks hold under ``python -O``), and returns the
    outcome. ``limits`` go to :class:`HTTP1Protocol`.
    """
    if pieces is None:
        pieces = [data[i:i + 1] for i in range(len(data))] if byte_by_byte else [data]
    if b"".join(pieces) != data:
        raise ValueError("pieces do not add up to data")
    proto = HTTP1Protocol(**limits)
    out = ParseOutcome()
    budget = 8 * len(data) + 64  # events + sentinels: each request consumes at least 16 bytes

    def step(eof_fed: bool) -> bool:
        """Drain events; False once parsing is over."""
        nonlocal budget
        while True:
            budget -= 1
            if budget <= 0:
                _fail("the protocol does not make progress (possible hang)")
            try:
                ev = proto.next_event()
            except ProtocolError as exc:
                if not 400 <= exc.status_hint <= 599:
                    _fail(f"status hint {exc.status_hint} is not 4xx/5xx ({exc.message})")
                out.error = exc
                return False
            except Exception as exc:  # invariant 1: nothing else may escape
                raise InvariantViolation(
                    f"next_event raised {type(exc).__name__}: {exc}") from exc
            current = out.requests[-1] if out.requests else None
            if ev is NEED_DATA:
                if eof_fed:
                    _fail("NEED_DATA after EOF")
                return True
            if ev is PAUSED:
                if current is None or not current.complete:
                    _fail("PAUSED before a request ended")
                proto.response_head(200, [], body_length=0)
                proto.response_end()
                if not proto.keep_alive:
                    out.stopped = True
                    return False
                proto.start_next_cycle()
            elif isinstance(ev, RequestHead):
                if current is not None and not current.complete:
                    _fail("RequestHead inside a request")
                out.requests.append(ParsedRequest(ev))
            elif isinstance(ev, BodyData):
                if current is None or current.complete:
                    _fail("BodyData outside a body")
                if not ev.data:
                    _fail("empty BodyData")
                current.body += ev.data
            elif isinstance(ev, EndOfBody):
                if current is None or current.complete:
                    _fail("EndOfBody outside a body")
                length = current.head.content_length
                if length is not None and len(current.body) != length:
                    _fail(f"{len(current.body)} body bytes for Content-Length {length}")
                current.trailers = ev.trailers
                current.complete = True
            elif isinstance(ev, ConnectionClosed):
                if not eof_fed:
                    _fail("ConnectionClosed before EOF")
                if current is not None and not current.complete:
                    _fail("ConnectionClosed inside a request")
                out.closed = True
                return False
            else:  # pragma: no cover
                _fail(f"unknown event {ev!r}")

    for piece in pieces:
        if not piece:
            continue
        proto.receive_data(piece)
        if not step(False):
            return out
    proto.receive_data(b"")
    step(True)
    return out


def _request_view(r: ParsedRequest) -> tuple[object, ...]:
    return (r.head, r.body, r.trailers, r.complete)


def check_same_whole_and_split(data: bytes, cuts: Sequence[int] = (),
                               **limits: Unpack[ProtocolLimits]) -> None:
    """Whole, byte by byte and at ``cuts``: accepted or refused alike, with the same request heads
    and the same completed requests. (Which 4xx may differ: with bytes trickling in, the first
    violation seen wins.)"""
    whole = check_parse(data, **limits)
    others = {"byte by byte": check_parse(data, byte_by_byte=True, **limits)}
    if cuts:
        others[f"cut at {list(cuts)}"] = check_parse(data, pieces=feed_splits(data, cuts),
                                                      **limits)
    for how, other in others.items():
        if (whole.error is None) != (other.error is None):
            _fail(f"whole: {whole.error!r}, {how}: {other.error!r}")
        got = [_request_view(r) for r in other.completed]
        want = [_request_view(r) for r in whole.completed]
        if got != want:
            _fail(f"completed requests differ, whole: {want!r}, {how}: {got!r}")
        if [r.head for r in whole.requests] != [r.head for r in other.requests]:
            _fail(f"request heads differ between whole and {how}")


def available_parsers() -> list[str]:
    """The HTTP/1.1 parsers installed here: ``h11`` always, ``httptools`` with the fast extra."""
    return ["h11"] if resolve_parser("auto") == "h11" else ["h11", "httptools"]


def check_same_parsers(data: bytes, cuts: Sequence[int] = (),
                       **limits: Unpack[ProtocolLimits]) -> None:
    """Every installed parser, whole, byte by byte and at ``cuts``
    (:func:`check_same_whole_and_split`), and the parsers against each other: the same
    acceptance, the same error status, the same requests (heads, bodies, trailers) and the same
    end (closed or stopped). This is the differential property that makes the httptools parser
    safe to use in place of h11: a request one accepts and the other refuses would be a
    smuggling risk behind a proxy that parses like the other."""
    outcomes: dict[str, ParseOutcome] = {}
    for parser in available_parsers():
        run_limits: ProtocolLimits = {**limits, "parser": parser}
        check_same_whole_and_split(data, cuts, **run_limits)
        outcomes[parser] = check_parse(data, **run_limits)
    ref = outcomes.pop("h11")
    for parser, other in outcomes.items():
        ref_status = ref.error.status_hint if ref.error is not None else None
        status = other.error.status_hint if other.error is not None else None
        if ref_status != status:
            _fail(f"h11: {ref.error!r}, {parser}: {other.error!r}")
        if [_request_view(r) for r in ref.requests] != \
                [_request_view(r) for r in other.requests]:
            _fail(f"requests differ, h11: {ref.requests!r}, {parser}: {other.requests!r}")
        if (ref.closed, ref.stopped) != (other.closed, other.stopped):
            _fail(f"the end differs, h11: closed={ref.closed} stopped={ref.stopped}, {parser}: "
                  f"closed={other.closed} stopped={other.stopped}")


def check_valid(req: GeneratedRequest, cuts: Sequence[int] = (), parser: str = "h11") -> None:
    """A generated valid request parses, whole, byte by byte and at ``cuts``, to exactly what was
    generated, with ``parser``."""
    has_length = any(n == b"content-length" for n, _ in req.headers)
    want = {
        "method": req.method, "target": req.target, "http_version": req.http_version,
        "headers": list(req.headers), "keep_alive": req.keep_alive, "chunked": req.chunked,
        "content_length": len(req.body) if has_length else None,
        "body": req.body, "trailers": list(req.trailers), "complete": True,
    }
    runs = {"whole": check_parse(req.raw, parser=parser),
            "byte by byte": check_parse(req.raw, byte_by_byte=True, parser=parser)}
    if cuts:
        runs[f"cut at {list(cuts)}"] = check_parse(req.raw, pieces=feed_splits(req.raw, cuts),
                                                    parser=parser)
    for how, outcome in runs.items():
        if outcome.error is not None:
            _fail(f"valid request refused ({how}): {outcome.error!r}")
        if len(outcome.requests) != 1:
            _fail(f"{len(outcome.requests)} requests parsed ({how})")
        parsed = outcome.requests[0]
        head = parsed.head
        got = {
            "method": head.method, "target": head.target, "http_version": head.http_version,
            "headers": head.headers, "keep_alive": head.keep_alive, "chunked": head.chunked,
            "content_length": head.content_length, "body": parsed.body,
            "trailers": parsed.trailers, "complete": parsed.complete,
        }
        diff = {k: (want[k], got[k]) for k in want if want[k] != got[k]}
        if diff:
            _fail(f"parsed ({how}) differs from generated, (want, got): {diff!r}")
