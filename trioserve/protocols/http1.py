"""HTTP/1.1 server protocol, sans-IO: bytes in, events out; responses in, bytes out.

Parsing is h11's (request line, header fields, Content-Length and chunked framing), wrapped with
the stricter checks an edge server needs and h11 leaves to its caller:

- limits: request line (414), header count and header section size (431);
- line endings: a bare CR or LF anywhere in the head, and obs-fold, are refused (400) rather than
  tolerated, since a proxy in front might read them differently (RFC 9112 §2.2, §5.2); so are
  control bytes other than HTAB in field values (RFC 9110 §5.5), and the same faults in a chunked
  body's chunk-size lines and trailer section (``_ChunkedGuard``);
- framing: ``Transfer-Encoding`` with ``Content-Length``, repeated ``Content-Length`` fields and
  ``Transfer-Encoding`` on HTTP/1.0 are refused (RFC 9112 §6.1, §6.3); codings other than
  ``chunked`` get 501 (h11);
- exactly one valid ``Host`` (RFC 9112 §3.2), a request-target of the form the method allows
  (§3.2.1-§3.2.4), versions other than 1.0/1.1 get 505.

The response side is written here rather than through ``h11.Connection.send``: the app's headers
are validated with one regex each, framing (Content-Length, chunked, or close-delimited) is chosen
per RFC 9112 §6, and the status line, ``Date`` and ``Server`` bytes are cached. A new
``h11.Connection`` parses each request cycle, so h11's state machine never waits on a response it
did not write.

No I/O and no Trio here: feed ``receive_data`` and call ``next_event``; send the bytes the
``response_*`` methods return.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Final, TypeVar

import h11

# h11's request-head reader and its buffer: what h11.Connection.next_event runs for a request
# head (see HTTP1Protocol._parse_bodyless_head). Private to h11 but unchanged since h11 0.10; the
# parser tests and the fuzz comparison of both parsers would show a change.
from h11._readers import maybe_read_from_IDLE_client as _read_request_head
from h11._receivebuffer import ReceiveBuffer as _ReceiveBuffer

try:
    import httptools
except ImportError:  # pragma: no cover - depends on the environment (the "fast" extra)
    httptools = None  # type: ignore[assignment]

from .events import (
    NEED_DATA,
    PAUSED,
    BodyData,
    ConnectionClosed,
    EndOfBody,
    Headers,
    ProtocolError,
    RequestHead,
    ResponseError,
    Sentinel,
)

__all__ = [
    "PARSERS",
    "HTTP1Protocol",
    "check_response_field",
    "checked_response_field",
    "date_header_value",
    "resolve_parser",
    "response_content_length",
    "status_line",
]

PARSERS: Final = ("auto", "h11", "httptools")

_T = TypeVar("_T")

Event = RequestHead | BodyData | EndOfBody | ConnectionClosed | Sentinel

_TOKEN_RE: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE_RE: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# One pass over a complete head: a control byte, a bare CR or LF, or obs-fold (a line that
# starts with SP/HTAB, which also catches whitespace between the request line and the first
# field).
_HEAD_BAD_RE: Final = re.compile(
    rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)|(?<!\r)\n|\n[ \t]"
)
# A chunk-size line (RFC 9112 §7.1, §7.1.1): the size, then extensions that are tokens with
# optional token or quoted-string values; whitespace around ";" and "=" is BWS (h11 refuses it
# before the first ";", which then decides), trailing whitespace is accepted as h11 does.
_QUOTED: Final = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_TOKEN: Final = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_CHUNK_LINE_RE: Final = re.compile(
    rb"([0-9A-Fa-f]{1,20})[ \t]*(?:;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN
    + rb"|" + _QUOTED + rb"))?[ \t]*)*\r\n")
# a CR not followed by LF (once the next byte is there), or an LF not preceded by CR
_BARE_CR_LF_RE: Final = re.compile(rb"\r(?=[^\n])|(?<!\r)\n")
_CONTENT_LENGTH_RE: Final = re.compile(rb"[0-9]{1,18}")
# uri-host [ ":" port ]: IP-literal, or reg-name / IPv4address (RFC 3986 §3.2.2).
_HOST_RE: Final = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+(?:%25[A-Za-z0-9\-._~]+)?\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?"
)
# absolute-form with a non-empty authority (RFC 9110 §4.2.1: an empty host is invalid)
# and no userinfo (RFC 9110 §4.2.4: a recipient ought to treat it as an error)
_ABSOLUTE_FORM_RE: Final = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*://[^/?#@]+(?:[/?].*)?", re.S)
_VERSION_RE: Final = re.compile(rb"HTTP/[0-9]\.[0-9]\Z")
_CL_LIST_RE: Final = re.compile(rb"\r\ncontent-length:[^\r]*,", re.I)
_MAX_LEADING_EMPTY_LINES: Final = 8
_MAX_CHUNK_SIZE: Final = 2**63 - 1
# The value of each Transfer-Encoding line of a raw head (untrimmed): h11 lower-cases the
# value, the app gets it as sent; and a refused value is told malformed from unknown.
_TE_LINE_RE: Final = re.compile(rb"\ntransfer-encoding:([^\r]*)(?=\r)", re.I)

# The gates a head must pass before httptools' parse of it is used (see _parse_with_httptools):
# the request line exactly as h11 accepts it (token method, visible-ASCII target, HTTP/1.0 or
# 1.1, single spaces), and every field line starting with a token and a colon (no whitespace
# before the colon).
_REQUEST_LINE_RE: Final = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) HTTP/(1\.[01])\r\n")
_FIELD_LINE_BAD_RE: Final = re.compile(
    rb"\r\n(?!\r\n|\Z)(?![!#$%&'*+\-.^_`|~0-9A-Za-z]+:)")

# The request fields _validate looks at (every other field is passed through).
_REQUEST_FIELD_KINDS: Final = {
    b"host": 1, b"content-length": 2, b"transfer-encoding": 3, b"connection": 4, b"upgrade": 5,
    b"expect": 6,
}
# Host values found valid: a server sees the same few again and again.
_VALID_HOSTS: set[bytes] = set()
_VALID_HOSTS_MAX: Final = 1024  # emptied when full: a bound, not an LRU
_VALID_HOST_MAX: Final = 255  # longer values are checked every time, never remembered

# The end of every request without a body, shared (nothing reads an HTTP/1.1 request's
# trailers but the protocol's own tests).
_END_OF_EMPTY_BODY: Final = EndOfBody([])

_NO_BODY_STATUSES: Final = frozenset({204, 304})
# Response fields the protocol handles itself: 1 content-length, 2 transfer-encoding,
# 3 connection, 4 date, 5 server.
_SPECIAL_RESPONSE_FIELDS: Final = {
    b"content-length": 1, b"transfer-encoding": 2, b"connection": 3, b"date": 4, b"server": 5,
}


def status_line(status: int, reason: bytes | None = None) -> bytes:
    """``HTTP/1.1 <status> <reason>\\r\\n``; the standard phrase when ``reason`` is ``None``."""
    if reason is None:
        cached = _STATUS_LINES.get(status)
        if cached is not None:
            return cached
        try:
            reason = HTTPStatus(status).phrase.encode("ascii")
        except ValueError:
            reason = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, reason)


_STATUS_LINES: Final[dict[int, bytes]] = {}
for _s in HTTPStatus:
    _STATUS_LINES[int(_s)] = b"HTTP/1.1 %d %s\r\n" % (int(_s), _s.phrase.encode("ascii"))

_date_cache: list[object] = [0, b"", b""]


def date_header_value() -> bytes:
    """The current IMF-fixdate, recomputed at most once per second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _set_date(now)
    return _date_cache[1]  # type: ignore[return-value]


def date_line() -> bytes:
    """``date: <IMF-fixdate>\\r\\n``, recomputed at most once per second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _set_date(now)
    return _date_cache[2]  # type: ignore[return-value]


def _set_date(now: int) -> None:
    value = formatdate(now, usegmt=True).encode("ascii")
    _date_cache[1:] = [value, b"date: %s\r\n" % value]
    _date_cache[0] = now


# Every byte a valid head may hold (see _next_head): field-vchar, obs-text, SP, HTAB, CR, LF.
_HEAD_OK_BYTES: Final = bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100)) + b"\t\r\n"


def _raise_bad_head(head: bytes) -> None:
    """Raise the :class:`ProtocolError` for the first fault :data:`_HEAD_BAD_RE` finds in
    ``head``: obs-fold, a bare CR or LF, or a control byte."""
    bad = _HEAD_BAD_RE.search(head)
    if bad is None:  # pragma: no cover - the scans in _next_head find what the regex finds
        raise ProtocolError("malformed request head")
    c = bad.group()
    if len(c) == 2:  # "\n" then SP or HTAB
        raise ProtocolError("obsolete line folding (obs-fold) is not accepted")
    if c in (b"\r", b"\n"):
        raise ProtocolError("bare CR or LF in request head")
    raise ProtocolError("control character in request head")


def _comma_tokens(value: bytes) -> list[bytes]:
    return [t.strip().lower() for t in value.split(b",") if t.strip()]


def resolve_parser(name: str) -> str:
    """The request parser to use for ``name`` (one of :data:`PARSERS`): ``auto`` is
    ``httptools`` when it is installed, else ``h11``. Raises :class:`ValueError` for an unknown
    name or for ``httptools`` when it is not installed."""
    if name == "auto":
        return "h11" if httptools is None else "httptools"
    if name not in PARSERS:
        raise ValueError(f"unknown HTTP/1.1 parser {name!r}; expected one of "
                         f"{', '.join(PARSERS)}")
    if name == "httptools" and httptools is None:
        raise ValueError("the httptools parser is not installed; install it with "
                         "pip install 'trioserve[fast]' (or choose --http h11)")
    return name


class _HeadFields:
    """httptools callbacks: collect the target and the header fields of one head."""

    __slots__ = ("headers", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: Headers = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp drops the whitespace before a value but keeps what follows it; h11 strips both
        # (RFC 9112 §5.1: OWS around the value is not part of it).
        if value[-1:] in (b" ", b"\t"):
            value = value.rstrip(b" \t")
        self.headers.append((name.lower(), value))


def _parse_with_httptools(head: bytes) -> tuple[bytes, bytes, bytes, Headers] | None:
    """Method, target, version and header fields of a complete head (already past the raw-byte
    checks of ``_next_head``) parsed by httptools (llhttp); ``None`` when the head is not one
    this fast path takes: a request line or field line that h11 would judge differently,
    anything llhttp refuses, or a ``Transfer-Encoding`` (chunked bodies stay with h11). h11,
    the reference parser, then parses the head and gives the verdict, so both parsers accept and
    refuse exactly the same requests (``trioserve.fuzz.http1.check_same_parsers``)."""
    m = _REQUEST_LINE_RE.match(head)
    if m is None or _FIELD_LINE_BAD_RE.search(head, m.end() - 2) is not None:
        return None
    fields = _HeadFields()
    parser = httptools.HttpRequestParser(fields)
    try:
        parser.feed_data(head)
    except httptools.HttpParserUpgrade:
        pass  # Upgrade or CONNECT: the head is complete all the same
    except httptools.HttpParserError:
        return None
    method, target, version = m.groups()
    if fields.url != target:
        return None
    for name, _ in fields.headers:
        if name == b"transfer-encoding":
            return None
    return method, target, version, fields.headers


class HTTP1Protocol:
    """One HTTP/1.1 server connection's protocol state.

    Receive side: :meth:`receive_data` (``b""`` for EOF), then :meth:`next_event` until it returns
    ``NEED_DATA`` or ``PAUSED``. Events per request: one :class:`RequestHead`, any number of
    :class:`BodyData`, one :class:`EndOfBody`; then ``PAUSED`` until :meth:`start_next_cycle`.
    Between requests an EOF yields :class:`ConnectionClosed`. A malformed request raises
    :class:`ProtocolError`; afterwards the connection must be closed.

    ``parser``: ``"h11"`` (the reference), ``"httptools"`` or ``"auto"`` (see
    :func:`resolve_parser`; raises :class:`ValueError` for an unknown or missing parser). Both
    accept and refuse the same requests and produce the same events.

    Send side, once per request: :meth:`response_head` (optionally after
    :meth:`informational` responses), :meth:`response_body` per chunk, :meth:`response_end`.
    They raise :class:`ResponseError` for responses that cannot be sent; the connection must then
    be closed. :attr:`keep_alive` tells whether another request may follow.
    """

    __slots__ = (
        "_body_allowed",
        "_bodyless",
        "_buf",
        "_chunked_out",
        "_content_length_out",
        "_empty_lines",
        "_eof",
        "_fast",
        "_guard",
        "_h11",
        "_head",
        "_length_left",
        "_max_head",
        "_max_headers_count",
        "_max_headers_size",
        "_max_line",
        "_recv_state",
        "_scan_from",
        "_send_state",
        "_sent_body",
        "_server_header",
        "_server_line",
        "keep_alive",
        "response_status",
    )

    def __init__(
        self,
        *,
        max_request_line_size: int = 8192,
        max_request_headers_count: int = 100,
        max_request_headers_total_size: int = 32768,
        server_header: bytes | None = b"trioserve",
        parser: str = "h11",
    ) -> None:
        self._fast = resolve_parser(parser) == "httptools"
        self._length_left = 0
        self._max_line = max_request_line_size
        self._max_headers_count = max_request_headers_count
        self._max_headers_size = max_request_headers_total_size
        # request line + CRLF + header section + final CRLF
        self._max_head = max_request_line_size + max_request_headers_total_size + 4
        self._server_header = server_header
        self._server_line = (b"server: %s\r\n" % server_header
                             if server_header is not None else None)
        self._buf = bytearray()
        self._scan_from = 0
        self._empty_lines = 0
        self._eof = False
        self._guard: _ChunkedGuard | None = None
        self._h11: h11.Connection | None = None
        self._head: RequestHead | None = None
        self._recv_state = "head"  # head | body | done | closed | switched
        self._bodyless = False
        self._send_state = "idle"  # idle | body | done
        self.keep_alive = True
        self.response_status = 0
        self._body_allowed = True
        self._content_length_out: int | None = None
        self._chunked_out = False
        self._sent_body = 0

    # ------------------------------------------------------------------ receive side

    @property
    def request(self) -> RequestHead | None:
        """The current request's head, once received."""
        return self._head

    @property
    def has_partial_request(self) -> bool:
        """Bytes of a next request are buffered but its head is not complete yet."""
        return self._recv_state == "head" and bool(self._buf)

    @property
    def request_complete(self) -> bool:
        """The current request's body has been fully received."""
        return self._recv_state in ("done", "switched")

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the peer; ``b""`` means the peer closed its sending side."""
        if not data:
            self._eof = True
        if self._h11 is not None:
            self._h11.receive_data(data)
            if self._guard is not None and data:
                self._guard.feed(data)
        elif data:
            self._buf += data

    def next_event(self) -> Event:
        """The next event, ``NEED_DATA`` or ``PAUSED``.

        Raises :class:`ProtocolError` (with a status hint) for a malformed request.
        """
        state = self._recv_state
        if state == "body":
            if self._bodyless:
                # No Content-Length body and not chunked: the body is empty by definition
                # (RFC 9112 §6.3 rule 7), so h11 need not be asked; its buffer keeps any
                # pipelined bytes for start_next_cycle.
                self._recv_state = "done"
                return _END_OF_EMPTY_BODY
            return self._next_body_event()
        if state == "head":
            return self._next_head()
        return PAUSED

    def _next_head(self) -> Event:
        buf = self._buf
        while buf[:2] == b"\r\n":
            del buf[:2]
            # counted across calls, so the limit holds however the bytes are split
            self._empty_lines += 1
            if self._empty_lines > _MAX_LEADING_EMPTY_LINES:
                raise ProtocolError("too many empty lines before the request line")
            self._scan_from = 0
        end = buf.find(b"\r\n\r\n", self._scan_from)
        if end < 0:
            size = len(buf)
            if size:
                line_end = buf.find(b"\r\n")
                # a request line of exactly the maximum may be waiting for the LF of its CRLF
                if (line_end < 0 and size - buf.endswith(b"\r") > self._max_line) \
                        or line_end > self._max_line:
                    raise ProtocolError("request line too long", 414)
                # same bound as for a complete head: a header section already longer than the
                # limit cannot end within it
                if size > self._max_head or (
                    line_end >= 0 and size - line_end > self._max_headers_size + 3
                ):
                    raise ProtocolError("request header section too large", 431)
                # refuse a bare CR or LF now rather than wait for a CRLF CRLF that may never come
                if _BARE_CR_LF_RE.search(buf, self._scan_from) is not None:
                    raise ProtocolError("bare CR or LF in request head")
                if self._eof:
                    raise ProtocolError("connection closed in the middle of a request head")
            elif self._eof:
                self._recv_state = "closed"
                return ConnectionClosed()
            self._scan_from = max(0, size - 3)
            return NEED_DATA
        head_end = end + 4
        line_end = buf.find(b"\r\n")
        if line_end > self._max_line:
            raise ProtocolError("request line too long", 414)
        if end - line_end > self._max_headers_size:
            raise ProtocolError("request header section too large", 431)
        head = bytes(buf[:head_end])
        # What _HEAD_BAD_RE finds, tested first with a few whole-buffer scans in C (the regex
        # costs several times more on a browser's head), which every good head passes: no byte
        # outside visible ASCII, obs-text, SP, HTAB, CR, LF; every CR and LF in a CRLF; no line
        # starting with SP or HTAB.
        crlf = head.count(b"\r\n")
        if (head.translate(None, _HEAD_OK_BYTES) or head.count(b"\r") != crlf
                or head.count(b"\n") != crlf or b"\n " in head or b"\n\t" in head):
            _raise_bad_head(head)
        if self._fast:
            fast = _parse_with_httptools(head)
            if fast is not None:
                method, target, version, fields = fast
                head_ev = self._validate(method, target, version, fields, head)
                del buf[:head_end]
                self._scan_from = 0
                # The body (Content-Length or none) is counted off the buffer here; h11 only
                # ever sees chunked requests on this path.
                self._length_left = head_ev.content_length or 0
                return self._begin(head_ev)
        lower = head.lower()
        if b"\ncontent-length:" not in lower and b"\ntransfer-encoding:" not in lower:
            # No body (RFC 9112 §6.3 rule 7): h11's request reader alone parses the head, as
            # its connection would, without building the connection and its state machine
            # (half of h11's cost for such a request), and the body is known to be empty.
            head_ev = self._parse_bodyless_head(head)
            del buf[:head_end]
            self._scan_from = 0
            self._length_left = 0
            return self._begin(head_ev)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_head + 1024)
        conn.receive_data(bytes(buf))
        if self._eof:
            conn.receive_data(b"")
        buf.clear()
        self._scan_from = 0
        try:
            ev = conn.next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            if status == 501:
                status = _transfer_coding_status(head)
            raise ProtocolError(str(exc) or "malformed request", status) from None
        if type(ev) is not h11.Request:  # pragma: no cover - h11 gave us a full head
            raise ProtocolError("malformed request")
        self._h11 = conn
        head_ev = self._validate_h11(ev, head)
        if head_ev.chunked:
            self._guard = _ChunkedGuard(self._max_headers_size)
            self._guard.feed(conn.trailing_data[0])  # body bytes that came with the head
        return self._begin(head_ev)

    def _parse_bodyless_head(self, head: bytes) -> RequestHead:
        """A complete head without ``Content-Length`` or ``Transfer-Encoding`` (already past
        the raw-byte checks of ``_next_head``) parsed by h11's request reader, then validated.
        ``h11.Connection.next_event`` runs this same reader on the same bytes; for a request
        without a body the rest of what it does (its state machine, choosing the body's
        framing) can refuse nothing, so both ways accept and refuse the same heads with the
        same messages. Raises :class:`ProtocolError`."""
        receive_buffer = _ReceiveBuffer()
        receive_buffer += head
        try:
            ev = _read_request_head(receive_buffer)
        except h11.ProtocolError as exc:  # the reader raises LocalProtocolError: same words
            raise ProtocolError(str(exc) or "malformed request", exc.error_status_hint) \
                from None
        if ev is None:  # pragma: no cover - the head is complete
            raise ProtocolError("malformed request")
        return self._validate_h11(ev, head)

    def _validate_h11(self, ev: h11.Request, head: bytes) -> RequestHead:
        """:meth:`_validate` on the request h11 parsed from ``head``."""
        return self._validate(ev.method, ev.target, ev.http_version,
                              [(n.lower(), v) for n, v in ev.headers.raw_items()], head)

    def _begin(self, head_ev: RequestHead) -> RequestHead:
        """Enter a request's body state once its head is accepted (either parser)."""
        self._head = head_ev
        self._recv_state = "body"
        self._bodyless = not head_ev.has_body
        self._send_state = "idle"
        self.keep_alive = head_ev.keep_alive
        self.response_status = 0
        return head_ev

    def _validate(self, method: bytes, target: bytes, version: bytes, headers: Headers,
                  raw_head: bytes) -> RequestHead:
        """The checks h11 leaves to its caller, on a parsed head (``headers`` with lower-case
        names); raises :class:`ProtocolError`."""
        if version not in (b"1.1", b"1.0"):
            line = raw_head[: raw_head.find(b"\r\n")]
            if _VERSION_RE.search(line) is None:
                raise ProtocolError("malformed request line")
            if version[:2] != b"1." or version == b"1.0":
                raise ProtocolError(f"HTTP version {version.decode()} is not supported", 505)
            # A higher minor version of HTTP/1 is processed as the highest we implement, 1.1
            # (RFC 9110 §2.5).
            version = b"1.1"
        if len(headers) > self._max_headers_count:
            raise ProtocolError("too many request header fields", 431)
        host_count = 0
        host = b""
        content_length: int | None = None
        chunked = False
        connection_tokens: list[bytes] = []
        upgrade: bytes | None = None
        expects_continue = False
        waits_for_continue = False  # h11's rule: "100-continue" among any Expect's tokens
        kind_of = _REQUEST_FIELD_KINDS.get
        for name, value in headers:
            kind = kind_of(name)
            if kind is None:
                continue
            if kind == 1:  # host
                host_count += 1
                host = value
            elif kind == 2:  # content-length
                # h11's rule (at most 20 digits), so both parsers judge alike: llhttp would
                # take "000…0005" of any length.
                if len(value) > 20 or not value.isdigit():
                    raise ProtocolError("bad Content-Length")
                content_length = int(value)
            elif kind == 3:  # transfer-encoding
                chunked = True
            elif kind == 4:  # connection
                connection_tokens.extend(_comma_tokens(value))
            elif kind == 5:  # upgrade
                upgrade = value
            else:  # expect
                expects_continue = value.lower() == b"100-continue"
                waits_for_continue = waits_for_continue or b"100-continue" in _comma_tokens(value)
        if chunked:
            if content_length is not None:
                raise ProtocolError("both Transfer-Encoding and Content-Length")
            if version == b"1.0":
                raise ProtocolError("Transfer-Encoding in an HTTP/1.0 request")
            m = _TE_LINE_RE.search(raw_head)
            sent = m.group(1).strip(b" \t") if m is not None else b"chunked"
            if sent != b"chunked":
                headers = [(n, sent if n == b"transfer-encoding" else v) for n, v in headers]
        elif content_length is not None and (
            raw_head.lower().count(b"\r\ncontent-length:") > 1
            or _CL_LIST_RE.search(raw_head) is not None  # "5, 5": a repeated field on one line
        ):
            raise ProtocolError("more than one Content-Length field")
        if host_count > 1:
            raise ProtocolError("Found multiple Host: headers")  # h11's words: one verdict
        if host_count == 0 and version == b"1.1":
            raise ProtocolError("Missing mandatory Host: header")
        if host and host not in _VALID_HOSTS:
            if _HOST_RE.fullmatch(host) is None:
                raise ProtocolError("invalid Host field")
            if len(host) <= _VALID_HOST_MAX:
                if len(_VALID_HOSTS) >= _VALID_HOSTS_MAX:
                    _VALID_HOSTS.clear()
                _VALID_HOSTS.add(host)
        if b"#" in target:
            raise ProtocolError("a request-target cannot contain a fragment ('#')")
        if method == b"CONNECT":  # authority-form only, never origin-form (RFC 9112 §3.2.3)
            if _HOST_RE.fullmatch(target) is None or b":" not in target:
                raise ProtocolError("CONNECT needs an authority-form target")
        elif target[:1] == b"/":
            pass
        elif target == b"*":
            if method != b"OPTIONS":
                raise ProtocolError("asterisk-form target is only allowed for OPTIONS")
        elif _ABSOLUTE_FORM_RE.fullmatch(target) is None:
            raise ProtocolError("invalid request-target")
        if method == b"CONNECT":
            # After a 2xx the client's bytes belong to a tunnel (RFC 9110 §9.3.6), which
            # trioserve does not run: never read them as requests.
            keep_alive = False
        elif version == b"1.1":
            keep_alive = b"close" not in connection_tokens
        else:
            keep_alive = b"keep-alive" in connection_tokens and b"close" not in connection_tokens
        if upgrade is not None and b"upgrade" not in connection_tokens:
            upgrade = None
        if expects_continue and version == b"1.0":
            expects_continue = False  # RFC 9110 §10.1.1: ignore for HTTP/1.0
        return RequestHead(
            method=method,
            target=target,
            http_version=version,
            headers=headers,
            keep_alive=keep_alive,
            expects_continue=expects_continue and waits_for_continue,
            content_length=content_length,
            chunked=chunked,
            upgrade=upgrade,
        )

    def _next_body_event(self) -> Event:
        conn = self._h11
        if conn is None:
            return self._next_counted_body_event()
        if self._guard is not None and self._guard.error is not None:
            raise self._guard.error
        try:
            ev = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise ProtocolError(str(exc) or "malformed request body", exc.error_status_hint) \
                from None
        if type(ev) is h11.Data:
            return BodyData(bytes(ev.data))
        if type(ev) is h11.EndOfMessage:
            self._recv_state = "done"
            return EndOfBody([(n.lower(), v) for n, v in ev.headers.raw_items()])
        if ev is h11.NEED_DATA:
            return NEED_DATA
        if type(ev) is h11.ConnectionClosed:  # pragma: no cover - h11 raises for a truncated body
            raise ProtocolError("connection closed in the middle of a request body")
        return PAUSED  # pragma: no cover

    def _next_counted_body_event(self) -> Event:
        """A Content-Length body, counted off the buffer (the httptools path)."""
        left = self._length_left
        if not left:
            self._recv_state = "done"
            return EndOfBody([])
        buf = self._buf
        if buf:
            data = bytes(buf[:left])
            del buf[:left]
            self._length_left = left - len(data)
            return BodyData(data)
        if self._eof:
            assert self._head is not None and self._head.content_length is not None
            expected = self._head.content_length
            raise ProtocolError(
                f"peer closed connection without sending complete message body (received "
                f"{expected - left} bytes, expected {expected})")
        return NEED_DATA

    def start_next_cycle(self) -> None:
        """Prepare for the next request on this connection.

        Post-condition: bytes already received after the previous request are kept.
        Raises :class:`RuntimeError` if the request or response is not complete or the connection
        cannot be kept alive.
        """
        if self._recv_state != "done" or self._send_state != "done" or not self.keep_alive:
            raise RuntimeError("cannot start a new request cycle on this connection now")
        if self._h11 is not None:
            data, closed = self._h11.trailing_data
            self._buf = bytearray(data)
            self._eof = self._eof or closed
        self._h11 = None
        self._guard = None
        self._head = None
        self._scan_from = 0
        self._empty_lines = 0
        self._recv_state = "head"
        self._send_state = "idle"

    def switch_protocol(self) -> bytes:
        """Hand the connection over to another protocol after a 101 response; returns the bytes
        already received that belong to it. Only valid when the request body is complete."""
        if self._recv_state != "done":
            raise RuntimeError("the request body has not been fully received")
        if self._h11 is not None:
            data = bytes(self._h11.trailing_data[0])
        else:
            data = bytes(self._buf)
            self._buf.clear()
        self._recv_state = "switched"
        self._send_state = "done"
        self.keep_alive = False
        return bytes(data)

    # --------------------------------------------------------------------- send side

    def informational(self, status: int, headers: Headers = ()) -> bytes:  # type: ignore[assignment]
        """Bytes for a 1xx response (``100 Continue``, ``103 Early Hints``).

        Raises :class:`ResponseError` after the final response has started or for 101 (use
        :meth:`response_head`) and invalid headers.
        """
        if self._send_state != "idle":
            raise ResponseError("informational response after the final response started")
        if not 100 <= status <= 199 or status == 101:
            raise ResponseError(f"{status} is not an informational status")
        if self._head is not None and self._head.http_version == b"1.0":
            return b""  # HTTP/1.0 clients don't understand 1xx (RFC 9110 §15.2)
        out = [status_line(status)]
        for name, value in headers:
            check_response_field(name, value)
            out.append(b"%s: %s\r\n" % (name, value))
        out.append(b"\r\n")
        return b"".join(out)

    def response_head(
        self,
        status: int,
        headers: Headers,
        *,
        reason: bytes | None = None,
        body_length: int | None = None,
        switching_protocols: bool = False,
    ) -> bytes:
        """Bytes of the status line and header section, with framing chosen.

        ``body_length``: when the whole body is already known, its size (used as Content-Length
        if the app gave none). ``Transfer-Encoding`` from the app is dropped: framing is ours.
        ``Connection: close`` from the app ends keep-alive. A 101 switches protocols: call
        :meth:`switch_protocol` next.

        Raises :class:`ResponseError` for a status outside 101/200-999, a header with an invalid
        name or value, conflicting Content-Length values, or a second response.
        """
        if self._send_state != "idle":
            raise ResponseError("a response was already started")
        if not (200 <= status <= 999 or (status == 101 and switching_protocols)):
            raise ResponseError(
                f"invalid final status code {status!r}" if status != 101 else
                "101 Switching Protocols is sent only when switching (the upgrade feature)")
        if switching_protocols and (status != 101 or self._head is None
                                    or self._head.upgrade is None):
            raise ResponseError("switching protocols needs status 101 and an Upgrade request")
        if reason is not None and _BAD_VALUE_RE.search(reason) is not None:
            raise ResponseError(f"invalid reason phrase {reason!r}")
        req = self._head
        keep_alive = self.keep_alive
        content_length: int | None = None
        has_date = has_server = False
        out = [status_line(status, reason)]
        append = out.append
        cache = _OUT_LINES
        for field in headers:
            entry = cache.get(field) if type(field) is tuple else None
            if entry is None:
                entry = _out_line(field)
            kind, line = entry
            if not kind:
                append(line)
            elif kind == 1:  # content-length: re-emitted below once framing is decided
                content_length = response_content_length(field[1], content_length)
            elif kind == 3:  # connection
                if b"close" in _comma_tokens(field[1]):
                    keep_alive = False
            elif kind == 2:  # transfer-encoding: framing is ours
                pass
            else:
                if kind == 4:
                    has_date = True
                else:
                    has_server = True
                append(line)
        if not has_date:
            append(date_line())
        if not has_server and self._server_line is not None:
            append(self._server_line)
        is_head = req is not None and req.method == b"HEAD"
        if status == 101:
            self._body_allowed = False
            self._content_length_out = 0
            self._chunked_out = False
            append(b"connection: upgrade\r\n")
        elif status in _NO_BODY_STATUSES:
            if status == 304 and content_length is not None:
                append(b"content-length: %d\r\n" % content_length)
            self._body_allowed = False
            self._content_length_out = 0
            self._chunked_out = False
        else:
            # A HEAD response's body is dropped, so an empty one says nothing about its size.
            if content_length is None and body_length is not None and (
                    not is_head or body_length > 0):
                content_length = body_length
            if content_length is not None:
                append(b"content-length: %d\r\n" % content_length)
                self._chunked_out = False
            elif is_head:
                self._chunked_out = False
            elif req is not None and req.http_version == b"1.1":
                append(b"transfer-encoding: chunked\r\n")
                self._chunked_out = True
            else:
                keep_alive = False  # close-delimited body (RFC 9112 §6.3 rule 8)
                self._chunked_out = False
            self._body_allowed = not is_head
            self._content_length_out = 0 if is_head else content_length
        if status != 101:
            if not keep_alive:
                append(b"connection: close\r\n")
            elif req is not None and req.http_version == b"1.0":
                append(b"connection: keep-alive\r\n")
        append(b"\r\n")
        self.keep_alive = keep_alive
        self.response_status = status
        self._sent_body = 0
        self._send_state = "body"
        return b"".join(out)

    def response_body(self, data: bytes) -> bytes:
        """Framed bytes for one piece of response body (``b""`` for HEAD, 204 and 304).

        Raises :class:`ResponseError` if the body would exceed the declared Content-Length or no
        response has started.
        """
        if self._send_state != "body":
            raise ResponseError("response body sent before the response started or after it ended")
        if not data:
            return b""
        if not self._body_allowed:
            return b""
        limit = self._content_length_out
        self._sent_body += len(data)
        if limit is not None and self._sent_body > limit:
            self.keep_alive = False
            raise ResponseError(
                f"response body longer than its Content-Length ({self._sent_body} > {limit})"
            )
        if self._chunked_out:
            return b"%x\r\n%s\r\n" % (len(data), data)
        return data

    def file_frame(self, count: int) -> tuple[bytes, bytes]:
        """Framing around ``count`` body bytes sent out of band (``sendfile``): the bytes to
        send before and after them. Raises like :meth:`response_body`."""
        if self._send_state != "body":
            raise ResponseError("response body sent before the response started or after it ended")
        if not count or not self._body_allowed:
            return b"", b""
        limit = self._content_length_out
        self._sent_body += count
        if limit is not None and self._sent_body > limit:
            self.keep_alive = False
            raise ResponseError(
                f"response body longer than its Content-Length ({self._sent_body} > {limit})"
            )
        if self._chunked_out:
            return b"%x\r\n" % count, b"\r\n"
        return b"", b""

    @property
    def body_allowed(self) -> bool:
        """False for HEAD requests and 204/304 responses: body bytes are dropped."""
        return self._body_allowed

    def response_end(self, trailers: Headers = ()) -> bytes:  # type: ignore[assignment]
        """The bytes that end the response (chunked terminator and trailers, else ``b""``).

        Raises :class:`ResponseError` when fewer bytes were sent than the declared
        Content-Length; the connection must then be closed, which tells the client the response
        was truncated.
        """
        if self._send_state != "body":
            raise ResponseError("response ended before it started or twice")
        self._send_state = "done"
        limit = self._content_length_out
        if self._body_allowed and limit is not None and self._sent_body < limit:
            self.keep_alive = False
            raise ResponseError(
                f"response body shorter than its Content-Length ({self._sent_body} < {limit})"
            )
        if self._chunked_out:
            if not trailers:
                return b"0\r\n\r\n"
            out = [b"0\r\n"]
            for name, value in trailers:
                check_response_field(name, value)
                out.append(b"%s: %s\r\n" % (name, value))
            out.append(b"\r\n")
            return b"".join(out)
        if self._body_allowed and limit is None:
            self.keep_alive = False  # close-delimited
        return b""

    @property
    def response_started(self) -> bool:
        return self._send_state != "idle"

    @property
    def response_complete(self) -> bool:
        return self._send_state == "done"

    def error_response(self, status: int, message: str) -> bytes:
        """A complete plain-text error response with ``Connection: close``; ends keep-alive."""
        body = (message + "\n").encode("utf-8", "replace")
        self.keep_alive = False
        self._send_state = "done"
        parts = [
            status_line(status),
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n",
            b"date: %s\r\n" % date_header_value(),
        ]
        if self._server_header is not None:
            parts.append(b"server: %s\r\n" % self._server_header)
        parts.append(b"\r\n")
        if self._head is None or self._head.method != b"HEAD":
            parts.append(body)
        return b"".join(parts)


def _transfer_coding_status(head: bytes) -> int:
    """The status for a Transfer-Encoding h11 refused: 501 when the list is well formed but
    names a coding we do not implement (RFC 9112 §6.1), 400 when it is malformed: chunked
    applied twice or not last, an empty element, a value that is not a token list."""
    codings = []
    for value in _TE_LINE_RE.findall(head):
        for item in value.split(b","):
            coding = item.split(b";", 1)[0].strip().lower()
            if not coding or _TOKEN_RE.fullmatch(coding) is None:
                return 400
            codings.append(coding)
    if not codings:
        return 400
    if codings.count(b"chunked") > 1 or (b"chunked" in codings and codings[-1] != b"chunked"):
        return 400
    return 501


# Response fields already found valid, with their _SPECIAL_RESPONSE_FIELDS kind (0: none).
_CHECKED_HEADERS: dict[tuple[bytes, bytes], int] = {}
_CHECKED_HEADERS_MAX: Final = 4096  # emptied when full: a bound, not an LRU
_CHECKED_FIELD_MAX: Final = 256  # longer fields (reflected cookies, tokens) are not remembered


# Response fields already checked: field -> (its kind for check_response_field, its line as
# sent). Bounded like _CHECKED_HEADERS.
_OUT_LINES: Final[dict[object, tuple[int, bytes]]] = {}


def checked_response_field(field: object, cache: dict[object, tuple[int, _T]],
                           render: Callable[[int, bytes, bytes], _T]) -> tuple[int, _T]:
    """Check one response field ``(name, value)`` (raises :class:`ResponseError`) and give
    its kind (see :func:`check_response_field`) with ``render(kind, name, value)``, the form a
    protocol sends it in; remembered in ``cache`` (bounded like ``_CHECKED_HEADERS``) for a
    field seen again, keyed by the field itself, when it is a short tuple of bytes."""
    name: bytes
    value: bytes
    try:
        name, value = field  # type: ignore[misc]
    except (TypeError, ValueError):
        raise ResponseError(f"a response header must be a (name, value) pair, got "
                            f"{field!r}") from None
    kind = check_response_field(name, value)
    entry = (kind, render(kind, name, value))
    if type(field) is tuple and type(name) is bytes and type(value) is bytes \
            and len(name) + len(value) <= _CHECKED_FIELD_MAX:
        if len(cache) >= _CHECKED_HEADERS_MAX:
            cache.clear()
        cache[field] = entry
    return entry


def response_content_length(value: bytes, known: int | None) -> int:
    """The size an app's ``Content-Length`` field gives (digits, surrounding whitespace
    ignored). Raises :class:`ResponseError` for another value or one that differs from
    ``known``, the size an earlier such field gave."""
    value = value.strip()
    if _CONTENT_LENGTH_RE.fullmatch(value) is None:
        raise ResponseError(f"invalid Content-Length {value!r}")
    n = int(value)
    if known is not None and n != known:
        raise ResponseError("conflicting Content-Length headers")
    return n


def _render_line(kind: int, name: bytes, value: bytes) -> bytes:
    return b"%s: %s\r\n" % (name, value)


def _out_line(field: object) -> tuple[int, bytes]:
    """HTTP/1.1's :func:`checked_response_field`: the field's ``name: value\\r\\n`` line."""
    return checked_response_field(field, _OUT_LINES, _render_line)


def check_response_field(name: bytes, value: bytes) -> int:
    """The field's kind in ``_SPECIAL_RESPONSE_FIELDS`` (0 for an ordinary field). Raises
    :class:`ResponseError` for an invalid response field name or value. Apps send the same few
    fields again and again, so fields found valid are remembered."""
    hashable = type(name) is bytes and type(value) is bytes
    if hashable:
        kind = _CHECKED_HEADERS.get((name, value))
        if kind is not None:
            return kind
    if _TOKEN_RE.fullmatch(name) is None:
        raise ResponseError(f"invalid header name {name!r}")
    if _BAD_VALUE_RE.search(value) is not None:
        raise ResponseError(f"invalid value for header {name!r}: {value!r}")
    kind = _SPECIAL_RESPONSE_FIELDS.get(name.lower(), 0)
    if hashable and len(name) + len(value) <= _CHECKED_FIELD_MAX:
        if len(_CHECKED_HEADERS) >= _CHECKED_HEADERS_MAX:
            _CHECKED_HEADERS.clear()
        _CHECKED_HEADERS[(name, value)] = kind
    return kind


class _ChunkedGuard:
    """Follows a chunked request body's framing alongside h11, to refuse what h11 tolerates there
    but the request head may not contain: a bare CR or other control byte in a chunk-size line or
    chunk extension, and in the trailer section a line not ended by CRLF (``0\\r\\n\\n``), obs-fold
    or a control byte (RFC 9112 §2.2, §5.2, §7.1.1, §7.1.2). h11 still does the parsing; the first
    problem found is kept in :attr:`error` and raised by the next ``next_event``. Memory is bounded:
    at most one line of ``max_line`` bytes is held."""

    __slots__ = ("_ext_size", "_line", "_max_line", "_remaining", "_state", "_trailer_size",
                 "error")

    def __init__(self, max_line: int) -> None:
        self._state = 0  # 0: chunk-size line, 1: chunk data and its CRLF, 2: trailer, 3: done
        self._line = bytearray()
        self._remaining = 0
        self._trailer_size = 0
        self._ext_size = 0  # bytes of chunk extensions so far, bounded like a trailer section
        self._max_line = max_line
        self.error: ProtocolError | None = None

    def feed(self, data: bytes) -> None:
        pos, size = 0, len(data)
        while pos < size and self.error is None and self._state != 3:
            if self._state == 1:
                take = min(self._remaining, size - pos)
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._state = 0
                continue
            nl = data.find(b"\n", pos)
            end = size if nl < 0 else nl + 1
            self._line += data[pos:end]
            pos = end
            if len(self._line) > self._max_line:
                self.error = (ProtocolError("chunked trailer section too large", 431)
                              if self._state == 2 else ProtocolError("chunk-size line too long"))
                return
            if nl < 0:
                return
            line = bytes(self._line)
            self._line.clear()
            if line[-2:] != b"\r\n" or _BAD_VALUE_RE.search(line, 0, len(line) - 2) is not None:
                self.error = ProtocolError("bare CR or LF, or a control byte, in chunked framing")
                return
            if self._state == 0:
                m = _CHUNK_LINE_RE.fullmatch(line)
                if m is None:
                    self.error = ProtocolError("invalid chunk-size line")
                    return
                ext = len(line) - m.end(1) - 2
                if ext:
                    # Extensions carry nothing the app sees: a body sent as tiny chunks with
                    # long extensions must not stream them without bound (RFC 9112 §7.1.1).
                    self._ext_size += ext
                    if self._ext_size > self._max_line:
                        self.error = ProtocolError("chunk extensions too large")
                        return
                chunk_size = int(m.group(1), 16)
                if chunk_size > _MAX_CHUNK_SIZE:
                    # RFC 9112 §7.1: guard against overflow in whoever parses this next.
                    self.error = ProtocolError("chunk size too large")
                    return
                self._remaining = chunk_size + 2  # the data and its CRLF
                self._state = 1 if chunk_size else 2
            elif line == b"\r\n":
                self._state = 3
            elif line[:1] in (b" ", b"\t"):
                self.error = ProtocolError("obsolete line folding (obs-fold) in trailer section")
                return
            else:
                self._trailer_size += len(line)
                if self._trailer_size > self._max_line:
                    self.error = ProtocolError("chunked trailer section too large", 431)
                    return
