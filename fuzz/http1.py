"""Hypothesis strategies and properties for the HTTP/1.1 protocol (``trioserve.protocols.http1``).

Two kinds of input:

- :func:`valid_requests` builds requests that RFC 9112 and RFC 9110 allow (method, request-target in
  the form the method permits, HTTP/1.0 or 1.1, Host, header fields, a body framed by
  Content-Length or, on HTTP/1.1, chunked with random chunk sizes, extensions and trailers). Each
  comes with what the server must see: :class:`GeneratedRequest`.
- :func:`mutated_requests` damages valid ones (byte flips, insertions of CR, LF, NUL, SP, HTAB,
  colons or commas, deletions, truncation, duplicated or conflicting framing fields, obs-fold,
  whitespace before a colon, CL/TE permutations, chunk-size spellings, line endings ...). They
  may or may not still be valid.

Each strategy has a ``*_cases`` form giving an :class:`Http1Case`: the bytes of one connection
plus what the generator knows of them, above all how many requests they were built from (a
server that hands its application more has been smuggled a request) and whether RFC 9112
requires refusing them. :func:`valid_cases` (pipelined valid requests), :func:`mutated_cases`
and :func:`framing_cases` (request-smuggling attacks, each with the outcome RFC 9112 allows) feed
both the in-process campaigns (:func:`check_case`) and the live ones (``trioserve.fuzz.target``).

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

Hypothesis is in the ``fuzz`` and ``test`` extras; this module needs it.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise
from typing import Any, NoReturn, TypedDict, Unpack

try:
    from hypothesis import strategies as st
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "trioserve.fuzz.http1 needs hypothesis; install the fuzz extra: "
        "pip install 'trioserve[fuzz]'"
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
    "SMUGGLED_REQUEST",
    "GeneratedRequest",
    "Http1Case",
    "InvariantViolation",
    "ParseOutcome",
    "ParsedRequest",
    "ProtocolLimits",
    "available_parsers",
    "check_case",
    "check_parse",
    "check_same_parsers",
    "check_same_whole_and_split",
    "check_valid",
    "elide_bytes",
    "feed_splits",
    "framing_cases",
    "mutated_cases",
    "mutated_requests",
    "outcome_label",
    "split_points",
    "valid_cases",
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
        """Whether a next request may follow on the connection: HTTP/1.1 (no Connection field
        is generated), and not CONNECT, after which the connection is a tunnel or closes."""
        return self.http_version == b"1.1" and self.method != b"CONNECT"


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


_any_valid_request = valid_requests()
_valid_no_connect = _any_valid_request.filter(lambda r: r.method != b"CONNECT")


@dataclass(frozen=True)
class Http1Case:
    """The bytes of one connection and what the generator knows about them.

    - ``requests``: the most requests a conforming server may hand its application for these
      bytes (``None``: unknown, as for arbitrary bytes). More is the request-smuggling signal:
      the server framed the bytes in a way they do not say.
    - ``methods``: the methods of the requests the bytes were built from, in order (a reader of
      the responses needs them: the response to HEAD has no body).
    - ``expected``: when the bytes are exactly valid requests, what the application must see,
      in order, up to the first one that closes the connection.
    - ``must_reject``: RFC 9112 / RFC 9110 require refusing the bytes (400, or 501 for an
      unknown transfer coding): nothing of them may reach the application.
    - ``label``: how the bytes were made, ``family/variant`` or ``family: details``.
    """

    raw: bytes
    requests: int | None
    methods: tuple[bytes, ...] = ()
    expected: tuple[GeneratedRequest, ...] = ()
    must_reject: bool = False
    label: str = ""

    @property
    def family(self) -> str:
        """The first word of the label (``valid``, ``mutated``, ``cl-te`` ...)."""
        return self.label.split(":", 1)[0].split("/", 1)[0] or "bytes"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready description (bytes as latin-1 text or base64) for reports."""
        return {
            "raw_base64": _b64(self.raw), "requests": self.requests,
            "methods": [m.decode("latin-1") for m in self.methods],
            "expected": [_request_to_json(r) for r in self.expected],
            "must_reject": self.must_reject, "label": self.label,
        }

    @classmethod
    def from_json(cls, doc: Any) -> Http1Case:
        """The case :meth:`to_json` described. Raises :class:`ValueError` when ``doc`` is not
        such a description."""
        try:
            requests = doc["requests"]
            if requests is not None and not isinstance(requests, int):
                raise TypeError("requests")
            return cls(
                raw=_unb64(doc["raw_base64"]), requests=requests,
                methods=tuple(str(m).encode("latin-1") for m in doc.get("methods", ())),
                expected=tuple(_request_from_json(r) for r in doc.get("expected", ())),
                must_reject=bool(doc.get("must_reject", False)), label=str(doc.get("label", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as exc:
            raise ValueError(f"not an HTTP/1.1 case description: {exc!r}") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise TypeError("base64 text expected")
    return base64.b64decode(text.encode("ascii"), validate=True)


def _headers_to_json(headers: Sequence[Header]) -> list[list[str]]:
    return [[n.decode("latin-1"), v.decode("latin-1")] for n, v in headers]


def _headers_from_json(items: Any) -> tuple[Header, ...]:
    return tuple((str(n).encode("latin-1"), str(v).encode("latin-1")) for n, v in items)


def _request_to_json(req: GeneratedRequest) -> dict[str, Any]:
    return {
        "raw_base64": _b64(req.raw), "method": req.method.decode("latin-1"),
        "target": req.target.decode("latin-1"), "http_version": req.http_version.decode(),
        "headers": _headers_to_json(req.headers), "body_base64": _b64(req.body),
        "trailers": _headers_to_json(req.trailers), "chunked": req.chunked,
    }


def _request_from_json(doc: Any) -> GeneratedRequest:
    return GeneratedRequest(
        raw=_unb64(doc["raw_base64"]), method=str(doc["method"]).encode("latin-1"),
        target=str(doc["target"]).encode("latin-1"),
        http_version=str(doc["http_version"]).encode("latin-1"),
        headers=_headers_from_json(doc["headers"]), body=_unb64(doc["body_base64"]),
        trailers=_headers_from_json(doc.get("trailers", ())), chunked=bool(doc["chunked"]),
    )


_request_counts = {n: st.integers(1, n) for n in range(1, 9)}


@st.composite
def valid_cases(draw: st.DrawFn, max_requests: int = 3, connect: bool = True,
                max_leading_crlf: int = 2) -> Http1Case:
    """One to ``max_requests`` (at most 8) pipelined :func:`valid_requests`; without
    ``connect``, no CONNECT request (a 2xx answer to one opens a tunnel, so what follows could
    not be read as HTTP); at most ``max_leading_crlf`` empty lines before each request line
    (RFC 9112 §2.2: a server SHOULD ignore at least one). ``expected`` holds the requests up to
    the first HTTP/1.0 one (which closes the connection); ``requests`` counts them all."""
    one = _any_valid_request if connect else _valid_no_connect
    reqs = [draw(one) for _ in range(draw(_request_counts[max_requests]))]
    extra = b"\r\n" * (max_leading_crlf + 1)
    reqs = [replace(r, raw=r.raw[2:]) if r.raw.startswith(extra) else r for r in reqs]
    answered: list[GeneratedRequest] = []
    for r in reqs:
        answered.append(r)
        if not r.keep_alive:
            break
    return Http1Case(raw=b"".join(r.raw for r in reqs), requests=len(reqs),
                     methods=tuple(r.method for r in reqs), expected=tuple(answered),
                     label="valid")


@functools.cache
def _valid_cases(max_requests: int, connect: bool,
                 max_leading_crlf: int = 2) -> st.SearchStrategy[Http1Case]:
    return valid_cases(max_requests, connect, max_leading_crlf)


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
_MUTATION_KINDS: Sequence[str] = (
    "flip", "insert", "delete", "truncate", "framing", "duplicate-line", "replace-crlf",
    "append", "header-case", "header-ws", "line-endings", "cl-te", "chunk-size",
)
_mutation_kind = st.sampled_from(_MUTATION_KINDS)
_position = st.integers(0, 1 << 16)
_bit = st.integers(0, 7)
_delete_len = st.integers(1, 3)
_insertion = st.sampled_from(_INSERTIONS)
_framing_line = st.sampled_from(_FRAMING_LINES)
_crlf_replacement = st.sampled_from([b"\n", b"\r", b"\n\r", b"\r\r\n", b""])
_APPENDED_REQUEST = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
_appendix = st.sampled_from([_APPENDED_REQUEST, b"\r\n", b"0\r\n\r\n", b"garbage", b"\x00" * 3])
_cut_positions = st.lists(st.integers(1, 1 << 16), max_size=12)
# whitespace a header line may gain: legal OWS, and the look-alikes a lax parser strips
_header_ws = st.sampled_from([b" ", b"\t", b"  ", b" \t", b"\x0b", b"\x0c", b"\xa0"])
_header_ws_place = st.sampled_from(["before-colon", "after-colon", "end", "start"])
_line_ending_mode = st.sampled_from(["all-head-lf", "all-lf", "one"])
_line_ending = st.sampled_from([b"\n", b"\r", b"\n\r", b"\r\r\n", b"\r \n"])
# Content-Length / Transfer-Encoding lines, valid and not, placed anywhere in the head
_CL_TE_LINES: Sequence[bytes] = (
    b"Content-Length: 0", b"Content-Length: 3", b"content-length: 0", b"Content-Length: 1, 1",
    b"Content-Length: +3", b"Content-Length: 0x3", b"Content-Length: 3 3",
    b"Transfer-Encoding: chunked", b"transfer-encoding: CHUNKED", b"Transfer-Encoding: xchunked",
    b"Transfer-Encoding: chunked, chunked", b"Transfer-Encoding: , chunked",
    b"Transfer-Encoding: identity", b"Transfer-Encoding: gzip, chunked",
    b"Transfer-Encoding: \"chunked\"", b"Transfer-Encoding: chunked\x0b",
    b"Transfer-Encoding\t: chunked", b"Transfer_Encoding: chunked", b"Transfer-Encoding:",
)
_cl_te_line = st.sampled_from(_CL_TE_LINES)
# spellings of a chunk size (``%d``/``%x`` is the real size), valid and not
_CHUNK_SIZE_SPELLINGS: Sequence[bytes] = (
    b"%x", b"%X", b"000%x", b"0x%x", b"+%x", b"-%x", b" %x", b"%x ", b"%x\t", b"%x;", b"%x;a",
    b"%x ;a=b", b'%x;a="b', b"%x_", b"1%016x", b"ffffffffffffffffff", b"%d%d", b"g",
)
_chunk_size_spelling = st.sampled_from(_CHUNK_SIZE_SPELLINGS)


def _head_lines(data: bytes | bytearray) -> tuple[int, list[tuple[int, int]]]:
    """End of the first head in ``data`` and the (start, end) of each field line in it, CRLF
    excluded; the head ends at the first empty line (or the end of the data)."""
    end = data.find(b"\r\n\r\n")
    head_end = len(data) if end < 0 else end + 2
    first = data.find(b"\r\n")
    spans: list[tuple[int, int]] = []
    pos = first + 2 if 0 <= first < head_end else head_end
    while pos < head_end:
        nxt = data.find(b"\r\n", pos, head_end)
        if nxt < 0:
            break
        if nxt > pos:
            spans.append((pos, nxt))
        pos = nxt + 2
    return head_end, spans


_REQUEST_LINE = re.compile(rb"[!-~]+ [!-~]+ HTTP/[0-9.]+")


@st.composite
def _mutate_once(draw: st.DrawFn, data: bytes) -> tuple[bytes, str, int]:
    """One mutation of ``data``: (new bytes, kind, requests added: appended whole, or a
    request line duplicated)."""
    buf = bytearray(data)
    kind = draw(_mutation_kind)
    pos = draw(_position) % (len(buf) + 1)
    added = 0
    if kind == "flip" and buf:
        i = min(pos, len(buf) - 1)
        buf[i] ^= 1 << draw(_bit)
    elif kind == "insert":
        buf[pos:pos] = draw(_insertion)
    elif kind == "delete" and buf:
        del buf[pos:pos + draw(_delete_len)]
    elif kind == "truncate":
        del buf[pos:]
    elif kind == "framing":
        line_end = buf.find(b"\r\n")
        if line_end >= 0:
            buf[line_end + 2:line_end + 2] = draw(_framing_line) + b"\r\n"
    elif kind == "duplicate-line":
        lines = bytes(buf).split(b"\r\n")
        if len(lines) > 2:
            i = 1 + pos % (len(lines) - 2)
            lines.insert(i, lines[i])
            buf = bytearray(b"\r\n".join(lines))
            # a copy of a request line starts a real request once an empty line comes
            # before it (another mutation may insert one): count it
            added = int(_REQUEST_LINE.fullmatch(lines[i]) is not None)
    elif kind == "replace-crlf":
        i = buf.find(b"\r\n", pos)
        if i >= 0:
            buf[i:i + 2] = draw(_crlf_replacement)
    elif kind == "append":
        appendix = draw(_appendix)
        buf += appendix
        added = int(appendix == _APPENDED_REQUEST)
    elif kind == "header-case":
        _, spans = _head_lines(buf)
        if spans:
            a, b = spans[pos % len(spans)]
            colon = buf.find(b":", a, b)
            name = bytes(buf[a:colon if colon >= 0 else b])
            buf[a:a + len(name)] = _random_case(name, draw(_case_mask))
    elif kind == "header-ws":
        _, spans = _head_lines(buf)
        if spans:
            a, b = spans[pos % len(spans)]
            colon = buf.find(b":", a, b)
            place = draw(_header_ws_place)
            at = {"before-colon": colon, "after-colon": colon + 1, "end": b, "start": a}[place]
            if at >= a:
                buf[at:at] = draw(_header_ws)
    elif kind == "line-endings":
        mode = draw(_line_ending_mode)
        head_end, _ = _head_lines(buf)
        if mode == "all-head-lf":
            buf[:head_end + 2] = bytes(buf[:head_end + 2]).replace(b"\r\n", b"\n")
        elif mode == "all-lf":
            buf = bytearray(bytes(buf).replace(b"\r\n", b"\n"))
        else:
            i = buf.find(b"\r\n", pos)
            if i >= 0:
                buf[i:i + 2] = draw(_line_ending)
    elif kind == "cl-te":
        _, spans = _head_lines(buf)
        at = spans[pos % len(spans)][0] if spans else buf.find(b"\r\n") + 2
        if at >= 2:
            buf[at:at] = draw(_cl_te_line) + b"\r\n"
    elif kind == "chunk-size":
        head_end, _ = _head_lines(buf)
        body = head_end + 2
        line_end = buf.find(b"\r\n", body)
        if b"chunked" in bytes(buf[:head_end]).lower() and line_end > body:
            line = bytes(buf[body:line_end])
            size_text = line.split(b";", 1)[0]
            try:
                size = int(size_text, 16)
            except ValueError:
                size = 0
            spelling = draw(_chunk_size_spelling)
            new = spelling % ((size,) * spelling.count(b"%")) if b"%" in spelling else spelling
            buf[body:body + len(size_text)] = new
    return bytes(buf), kind, added


@st.composite
def mutated_cases(draw: st.DrawFn, max_requests: int = 1, connect: bool = True) -> Http1Case:
    """One to ``max_requests`` pipelined valid requests (:func:`valid_cases`) damaged one to
    three times: bit flips, insertions of CR, LF, NUL, SP, HTAB, colons or commas, deletions,
    truncation, added or conflicting framing fields (CL/TE permutations, obfuscated
    Transfer-Encoding), chunk-size spellings (``0x``, signs, whitespace, ``_``, overflow),
    header-name case and whitespace (before the colon, obs-fold, VT/FF/NBSP look-alikes), line
    endings (LF alone, CR alone, LF CR) and appended requests or garbage.

    The case's ``requests`` is the number of requests the bytes were built from (every source
    request, plus each request appended whole or request line duplicated, which another
    mutation may turn into a request of its own): random damage never turns body bytes into a
    request, so a server that passes more to its application has framed the bytes in a way
    they do not say. The result may or may not still be valid, so ``must_reject`` is False.
    Without ``connect`` (live targets) the sources have no CONNECT request and at most one
    empty line before each request line (see :func:`valid_cases`)."""
    source = draw(_valid_cases(max_requests, connect, 2 if connect else 1))
    data = source.raw
    kinds: list[str] = []
    added = 0
    for _ in range(draw(_mutation_count)):
        data, kind, n = draw(_mutate_once(data))
        kinds.append(kind)
        added += n
    methods = source.methods + (b"GET",) * added
    return Http1Case(raw=data, requests=len(source.methods) + added, methods=methods,
                     label="mutated: " + ", ".join(kinds))


@st.composite
def mutated_requests(draw: st.DrawFn) -> bytes:
    """Valid requests damaged one to three times (see :func:`mutated_cases`); the result may or
    may not be valid."""
    return draw(_mutated_single).raw


_mutated_single = mutated_cases()


# ------------------------------------------------------------------- framing attacks (RFC 9112)

SMUGGLED_REQUEST: bytes = b"GET /smuggled HTTP/1.1\r\nHost: smuggled.example\r\n\r\n"
"""The request hidden in the bodies of :func:`framing_cases`: it reaches an application only
when a server frames the carrying request differently from what RFC 9112 says."""

_FRAMING_FAMILIES: Sequence[str] = (
    "cl-te", "cl-te-hidden", "te-invalid", "cl-invalid", "chunk-size", "host",
    "space-before-colon", "te-only", "cl-only",
)
_framing_family = st.sampled_from(_FRAMING_FAMILIES)
_cl_te_layout = st.sampled_from(["cl-short", "cl-long", "te-long"])
_te_name = st.sampled_from([b"Transfer-Encoding", b"transfer-encoding", b"TRANSFER-ENCODING",
                            b"Transfer-encoding"])
# values RFC 9112 reads as "chunked": any case, OWS, empty list elements (RFC 9110 §5.6.1)
_te_chunked = st.sampled_from([b"chunked", b"Chunked", b"CHUNKED", b" chunked", b"chunked ",
                               b"\tchunked", b", chunked", b"chunked,"])
# a Transfer-Encoding line RFC 9112 says is not one: it must not frame the body
_te_hidden = st.sampled_from([
    b"X-Fuzz: a\rTransfer-Encoding: chunked",  # bare CR: invalid, or read as SP (§2.2)
    b"X-Fuzz: a\r\n Transfer-Encoding: chunked",  # obs-fold: rejected, or read as SP (§5.2)
    b"X-Fuzz: a\r\n\tTransfer-Encoding: chunked",
    b"X-Fuzz: a\x00Transfer-Encoding: chunked",  # NUL: rejected, or read as SP (RFC 9110 §5.5)
    b"X-Fuzz: a\nTransfer-Encoding: chunked",  # a bare LF may end a line: then CL+TE, close
    b" Transfer-Encoding: chunked",  # whitespace before the first field: ignored or rejected
])
# Transfer-Encoding values whose final coding is not "chunked": 400 (§6.3 rule 4) or 501
_te_invalid_value = st.sampled_from([
    b"xchunked", b"chunkedx", b"chunked, identity", b"identity", b"chunked, gzip", b"gzip",
    b'"chunked"', b"chunk", b"chunked\x0b", b"\x0bchunked", b"\x0cchunked", b"chunked\x0c",
    b"ch unked", b"chunked\xa0", b"\xa0chunked",
])
# whitespace between a field name and its colon: 400 (§5.1)
_bad_colon = st.sampled_from([b" :", b"\t:", b"  :"])
# Content-Length values that are not 1*DIGIT (or two different values): 400 (§6.3 rule 5). The
# body holds "hello" then the smuggled request: a lax reading as 5 lets it through.
_cl_invalid = st.sampled_from([
    (b"+5",), (b"-5",), (b"5 5",), (b"0x5",), (b"5.0",), (b"5e0",), (b"",), (b"5, 6",),
    (b"6, 5",), (b"0_5",), ("\u0665".encode(),), ("\uff15".encode(),),
    (b"18446744073709551621",), (b"5\x0b",), (b"\x0b5",), (b"5\xa0",), (b"5", b"6"),
    (b"6", b"5"), (b"5", b""),
])
# chunk sizes that are not 1*HEXDIG (or overflow 64 bits) for a 5-byte chunk (RFC 9112 §7.1)
_chunk_size_invalid = st.sampled_from([
    b"0x5", b"+5", b"-5", b" 5", b"5_", b"0_5", b"g", b"10000000000000005",
    b"fffffffffffffffffffffff5", b"5\x00", b"5\x0b", "\u0665".encode(), b"5\xa0",
])
_chunk_data = st.sampled_from([b"hello", b"helloXX"])  # the second overruns its size
_host_fault = st.sampled_from(["missing", "duplicate", "same-twice", "a b", "a@b", "a/b",
                               "[::1", "a:b"])
_bad_colon_field = st.sampled_from([b"Host", b"X-Fuzz", b"Content-Length"])
_extra_fields = st.lists(st.tuples(field_names, field_values), max_size=2)


def _request(method: bytes, fields: Sequence[bytes], body: bytes) -> bytes:
    return (method + b" /framing HTTP/1.1\r\n" + b"".join(f + b"\r\n" for f in fields)
            + b"\r\n" + body)


@st.composite
def framing_cases(draw: st.DrawFn) -> Http1Case:
    """Request-smuggling and malformed-framing attacks, each with the outcome RFC 9112 allows.

    Families (the case's label starts with one):

    - ``cl-te``: Content-Length and a Transfer-Encoding RFC 9112 reads as chunked (any case,
      OWS, empty list elements), in either order, with three body layouts around
      :data:`SMUGGLED_REQUEST`. A server may refuse, or frame by Transfer-Encoding and then
      close (§6.1): at most one request reaches the application.
    - ``cl-te-hidden``: Content-Length covering the whole body, plus a Transfer-Encoding line
      hidden behind a bare CR, obs-fold, NUL, bare LF or leading whitespace: at most one request.
    - ``te-invalid``: a Transfer-Encoding whose final coding is not chunked, or whitespace
      before its colon, with or without Content-Length: must be refused (§6.3, §5.1).
    - ``cl-invalid``: a Content-Length that is not one decimal number (signs, hex, spaces,
      lists of different values, non-ASCII digits, VT or NBSP around it, 64-bit overflow, two
      different fields): must be refused (§6.3).
    - ``chunk-size``: a chunk size that is not hex digits (``0x``, signs, ``_``, spaces,
      NUL, non-ASCII digits, 64-bit overflow) or chunk data longer than its size: must be
      refused (§7.1).
    - ``host``: HTTP/1.1 without Host, two Host fields, an invalid Host: must be refused
      (§3.2).
    - ``space-before-colon``: whitespace between a field name and its colon: must be refused
      (§5.1).
    - ``te-only`` and ``cl-only``: controls: valid framing followed by the smuggled request,
      which is then a second, legitimate request (two may reach the application).
    """
    family = draw(_framing_family)
    extra = [n + b": " + v for n, v in draw(_extra_fields)]
    host = [b"Host: fuzz.example"]
    smuggled = SMUGGLED_REQUEST
    cl = b"Content-Length: "
    if family == "cl-te":
        layout = draw(_cl_te_layout)
        te = draw(_te_name) + b":" + draw(_te_chunked)
        if layout == "te-long":
            size_line = b"%x\r\n" % len(smuggled)
            body = size_line + smuggled + b"\r\n0\r\n\r\n"
            length = len(size_line)
        else:
            body = b"0\r\n\r\n" + smuggled
            length = 5 if layout == "cl-short" else len(body)
        framing = [cl + b"%d" % length, te]
        fields = host + extra + (framing if draw(_booleans) else framing[::-1])
        return Http1Case(_request(b"POST", fields, body), 1, (b"POST",),
                         label=f"cl-te/{layout}: {te!r}")
    if family == "cl-te-hidden":
        hidden = draw(_te_hidden)
        body = b"0\r\n\r\n" + smuggled
        cl_line = cl + b"%d" % len(body)
        if hidden.startswith(b" "):  # it must be the first field line
            fields = [hidden, *host, *extra, cl_line]
        else:
            pair = [cl_line, hidden] if draw(_booleans) else [hidden, cl_line]
            fields = [*host, *extra, *pair]
        return Http1Case(_request(b"POST", fields, body), 1, (b"POST",),
                         label=f"cl-te-hidden: {hidden!r}")
    if family == "te-invalid":
        if draw(_booleans):
            te = draw(_te_name) + b":" + draw(_te_invalid_value)
        else:
            te = b"Transfer-Encoding" + draw(_bad_colon) + b" chunked"
        body = b"0\r\n\r\n" + smuggled
        framing = [te, cl + b"5"] if draw(_booleans) else [te]
        return Http1Case(_request(b"POST", host + extra + framing, body), 0, (b"POST",),
                         must_reject=True, label=f"te-invalid: {te!r}")
    if family == "cl-invalid":
        values = draw(_cl_invalid)
        fields = host + extra + [cl.rstrip() + (b" " + v if v else b"") for v in values]
        return Http1Case(_request(b"POST", fields, b"hello" + smuggled), 0, (b"POST",),
                         must_reject=True, label=f"cl-invalid: {values!r}")
    if family == "chunk-size":
        if draw(_booleans):
            size, data = draw(_chunk_size_invalid), b"hello"
        else:
            size, data = b"5", b"helloXX"
        body = size + b"\r\n" + data + b"\r\n0\r\n\r\n" + smuggled
        fields = [*host, *extra, b"Transfer-Encoding: chunked"]
        return Http1Case(_request(b"POST", fields, body), 0, (b"POST",), must_reject=True,
                         label=f"chunk-size: {size + b'/' + data!r}")
    if family == "host":
        fault = draw(_host_fault)
        if fault == "missing":
            hosts_ = []
        elif fault == "duplicate":
            hosts_ = [b"Host: a.example", b"Host: b.example"]
        elif fault == "same-twice":
            hosts_ = [b"Host: a.example", b"Host: a.example"]
        else:
            hosts_ = [b"Host: " + fault.encode()]
        fields = extra[:1] + hosts_ + extra[1:]
        return Http1Case(_request(b"GET", fields, b""), 0, (b"GET",), must_reject=True,
                         label=f"host/{fault}")
    if family == "space-before-colon":
        name = draw(_bad_colon_field)
        bad = name + draw(_bad_colon) + (b" 5" if name == b"Content-Length" else b" a")
        fields = ([bad, *extra] if name == b"Host" else [*host, *extra, bad])
        body = b"hello" + smuggled if name == b"Content-Length" else b""
        return Http1Case(_request(b"POST", fields, body), 0, (b"POST",), must_reject=True,
                         label=f"space-before-colon: {bad!r}")
    if family == "te-only":
        te = draw(_te_name) + b":" + draw(_te_chunked)
        return Http1Case(_request(b"POST", [*host, *extra, te], b"0\r\n\r\n" + smuggled), 2,
                         (b"POST", b"GET"), label=f"te-only: {te!r}")
    return Http1Case(_request(b"POST", [*host, *extra, cl + b"5"], b"hello" + smuggled), 2,
                     (b"POST", b"GET"), label="cl-only")


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


# A bytes literal as repr() writes it: each character is either an escape (backslash and one
# more) or anything but a backslash and the closing quote, so the pattern can match a given
# text in one way only (linear time); a literal cut short by a length limit runs to the end.
_BYTES_REPR_RE = re.compile(
    r"(?<!\w)(bytearray\()?b(['\"])"  # an opening: b' or b" (in bytearray( ... ))
    r"(?:\\.|(?!\2)[^\\])*"  # escapes, or characters other than a backslash and the quote
    r"(?:\2(?(1)\))|\\?\Z)")  # the closing quote (and parenthesis), or the end of a cut text
STABLE_LIMIT = 200
"""Characters of a message that :func:`elide_bytes` keeps (before eliding)."""


def elide_bytes(text: str, replacement: str = "…", limit: int = STABLE_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, with every bytes or bytearray repr in it (also
    one the cut left open) replaced by ``replacement``: what campaigns key findings by, so
    that messages of one fault read alike whatever bytes they quote. The one helper for the
    HTTP/1.1 and HTTP/2 checks, the live-target reader and the campaign runner."""
    return _BYTES_REPR_RE.sub(replacement, text[:limit])


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


def outcome_label(outcome: ParseOutcome) -> str:
    """``accepted``, ``refused 4xx`` or ``refused 5xx``: a summary for campaign statistics."""
    if outcome.error is None:
        return "accepted"
    return f"refused {outcome.error.status_hint // 100}xx"


def check_case(case: Http1Case, cuts: Sequence[int] = (),
               **limits: Unpack[ProtocolLimits]) -> str:
    """Every property this module knows for ``case``, with every installed parser:

    - :func:`check_same_parsers` (whole, byte by byte, at ``cuts``; the parsers agree);
    - a one-request valid case parses exactly (:func:`check_valid`), pipelined valid requests
      parse to what was generated, in order;
    - ``must_reject``: a :class:`ProtocolError` and no complete request;
    - never more complete requests than ``case.requests``.

    Returns :func:`outcome_label` of the h11 parse. Raises :class:`InvariantViolation` (first
    line: what broke and the case's family; details on the following lines)."""
    parsers = [p for p in available_parsers() if limits.get("parser") in (None, p)]
    single = len(case.expected) == 1 and case.expected[0].raw == case.raw
    if single:
        for parser in parsers:
            check_valid(case.expected[0], cuts, parser)
    check_same_parsers(case.raw, cuts, **limits)
    first = ""
    for parser in parsers:
        run_limits: ProtocolLimits = {**limits, "parser": parser}
        out = check_parse(case.raw, **run_limits)
        first = first or outcome_label(out)
        done = out.completed
        if case.must_reject and (out.error is None or done):
            _fail(f"bytes RFC 9112 requires refusing were accepted ({case.family})\n"
                  f"parser {parser}, case {case.label}: error {out.error!r}, "
                  f"{len(done)} complete request(s)")
        if case.requests is not None and len(done) > case.requests:
            _fail(f"more requests parsed than the bytes were built from ({case.family})\n"
                  f"parser {parser}, case {case.label}: {len(done)} > {case.requests}: "
                  f"{[(r.head.method, r.head.target) for r in done]!r}")
        if case.expected and not single:
            if out.error is not None:
                _fail(f"valid pipelined requests refused\nparser {parser}: {out.error!r}")
            got = [(r.head.method, r.head.target, r.head.http_version, r.head.headers, r.body,
                    r.trailers) for r in done]
            want = [(r.method, r.target, r.http_version, list(r.headers), r.body,
                     list(r.trailers)) for r in case.expected]
            if got != want:
                _fail(f"pipelined requests parsed differently from what was generated\n"
                      f"parser {parser}: want {want!r}\ngot {got!r}")
    return first
