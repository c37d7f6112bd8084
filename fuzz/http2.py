"""Hypothesis strategies and properties for the HTTP/2 server protocol
(``trioserve.protocols.http2``).

Inputs are whole client connections as bytes (the preface, a SETTINGS frame, then frames built
with hyperframe and hpack, or by hand where hyperframe refuses to build them):

- :func:`valid_connections` writes connections RFC 9113 allows: requests whose header blocks
  may be split into CONTINUATION frames, padded, prioritised, with bodies in padded or plain
  DATA frames, trailers, interleaved streams, PING, PRIORITY, WINDOW_UPDATE, SETTINGS and
  unknown frames between them. Each comes with what the server must report for every stream
  (:class:`GeneratedConnection`).
- :func:`client_connections` mixes valid and damaged frames: malformed request field lists
  (pseudo-header faults, connection-specific fields, bad names and values, conflicting
  ``content-length`` …), broken HPACK, unfinished or interleaved header blocks, frames on
  stream 0, on even, idle, closed and reserved-bit stream ids, wrong lengths for fixed-size
  frames, bad padding, invalid SETTINGS values, WINDOW_UPDATE of 0 or overflowing,
  PUSH_PROMISE from a client, unknown frame types, oversize frames and floods (PING, SETTINGS,
  rapid reset, CONTINUATION, empty DATA, streams over the concurrency limit, HPACK bombs).
- :func:`mutated_connections` damages those bytes again: bit flips, insertions, deletions,
  truncation, and a frame's length, type, flags or stream id rewritten, frames duplicated,
  dropped or swapped.
- :func:`frame_sequences` is any of the three (the campaign strategy).

Invariants, checked by :func:`check_h2_parse` on any bytes, fed to :class:`HTTP2Protocol`
(by :func:`run_h2`, which drives it as ``trioserve.server._H2Connection`` does) whole, split at
given cuts, one frame per call and (short inputs) byte by byte, with the server's answers to
requests written the way ``trioserve.server`` writes them (``send_headers``, ``send_data``,
``end_stream``, ``finish_unread``, ``stream_finished``, ``reset``, ``consumed``, ``goaway``),
either after each ``receive_data`` call (as the server does) or once all the input is in, and
once with a graceful shutdown (GOAWAY) half way:

1. ``receive_data`` returns events or raises :class:`ProtocolError`, nothing else; a response
   written to a stream the protocol still has never raises :class:`ResponseError`.
2. After a ProtocolError the output ends with a GOAWAY carrying an error code (unless the
   preface itself was wrong, RFC 9113 §3.4), and the protocol ignores any further input.
3. Events are consistent: a stream's ``StreamRequest`` (or ``StreamRefused``) comes first, once,
   with an odd id above every earlier one; ``StreamData`` and ``StreamEnded`` only for a
   stream with a request, never after its end or its reset; at most one end and one reset per
   stream; a body never exceeds its ``content-length`` and ends with exactly that many bytes;
   request heads hold no pseudo-header, upper-case, connection-specific or CR/LF/NUL field.
4. Everything the protocol writes is well-formed HTTP/2 (:func:`check_h2_output`): SETTINGS
   first, every frame valid for hyperframe and within the client's frame size, header blocks
   contiguous and decodable, responses only on streams the client opened, no frame after the
   end of a stream, GOAWAY codes RFC 9113 defines and last stream ids that never grow.
5. Whole and split feeding give the same verdict (accepted, or the same GOAWAY error code) and
   the same events (up to the call that raised, whose events are dropped; leaving out streams
   that only one run refused over the concurrency limit, and what follows the client's
   GOAWAY: matters of timing). One known exception: when the protocol itself reset a stream
   (a malformed request, a stream over the concurrency limit), the reset takes effect once h2
   has parsed the whole ``receive_data`` input, so the stream's later frames in the same
   input meet an open stream there and a closed one when they come in a later call; the
   verdicts may then differ (h2 may make a connection error of what is a stream error on a
   closed stream). The verdicts are not compared in that case.
6. Bounded work: one ``receive_data`` call per piece, a bounded responder loop, and output at
   most :data:`AMPLIFICATION` times the input plus :data:`OUTPUT_BASE` bytes.

:func:`check_h2_valid` adds, for generated valid connections: no error, and every request
reaches the application exactly as sent (head, body, trailers). :func:`check_h2_server_output`
applies invariant 4 to what a live server sent back on an h2c prior-knowledge connection.
:func:`known_attacks` names attack connections (CONTINUATION flood, HPACK bomb, SETTINGS and
WINDOW_UPDATE overflows, rapid reset, floods …) for examples and regression tests.

A violation raises :class:`~trioserve.fuzz.http1.InvariantViolation` whose first line has
numbers and byte strings blanked out (so that a campaign counts one bug once, whatever the
stream ids), the second line the details.

Hypothesis is an extra; this module needs it.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise, permutations
from typing import Final, Literal, NoReturn, TypeVar

try:
    from hypothesis import strategies as st
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "trioserve.fuzz.http2 needs hypothesis; install the fuzz extra: "
        "pip install 'trioserve[fuzz]'"
    ) from exc

import hpack
import hpack.exceptions
import hyperframe.exceptions
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from trioserve.context import MAX_DRAIN_BYTES
from trioserve.protocols.events import ProtocolError, RequestHead, ResponseError
from trioserve.protocols.http2 import (
    INTERNAL_ERROR,
    PREFACE,
    ConnectionEnded,
    H2Event,
    HTTP2Protocol,
    StreamData,
    StreamEnded,
    StreamRefused,
    StreamRequest,
    StreamReset,
    WindowOpened,
)

from .http1 import InvariantViolation, elide_bytes, feed_splits

__all__ = [
    "AMPLIFICATION",
    "OUTPUT_BASE",
    "ExpectedRequest",
    "GeneratedConnection",
    "H2Outcome",
    "check_h2_output",
    "check_h2_parse",
    "check_h2_server_output",
    "check_h2_valid",
    "client_connections",
    "continuation_flood",
    "frame_offsets",
    "frame_sequences",
    "hpack_bomb",
    "known_attacks",
    "mutated_connections",
    "raw_frame",
    "run_h2",
    "valid_connections",
]

Header = tuple[bytes, bytes]
Respond = Literal["deferred", "eager"]

# Frame types, flags, settings and error codes (RFC 9113 §6, §7).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, \
    MAX_HEADER_LIST_SIZE = range(1, 7)
ENABLE_CONNECT_PROTOCOL = 8
MAX_ERROR_CODE: Final = 0xD  # HTTP_1_1_REQUIRED, the last code RFC 9113 §7 defines
MAX_WINDOW: Final = 2**31 - 1
DEFAULT_FRAME_SIZE: Final = 16384

AMPLIFICATION: Final = 6
"""Output bytes allowed per input byte. Measured: 3.2 for the worst case found, a flood of
13-byte requests (HEADERS of four indexed HPACK bytes) each refused with a 400 and its text
body; a PING flood is 1.0, a SETTINGS flood 0.6."""
OUTPUT_BASE: Final = 2048
"""Output bytes allowed whatever the input: the server preface, a GOAWAY, a first response
head whose fields are not in the HPACK table yet."""

_MAX_BODY = 300
_BYTE_BY_BYTE_MAX = 1024  # inputs up to this size are also fed one byte at a time


_NUMBER: Final = re.compile(r"(?<!RFC )(?<![§.\d])\b\d+\b")


def _fail(message: str) -> NoReturn:
    """Raise :class:`InvariantViolation`. Its first line is ``message`` with numbers and byte
    strings blanked out (what a campaign groups findings by: one bug, one line, whatever the
    stream ids), the second the message itself."""
    summary = _NUMBER.sub("N", elide_bytes(message, "b'…'"))
    raise InvariantViolation(summary if summary == message else f"{summary}\n{message}")


# ------------------------------------------------------------------------------ frames


def raw_frame(frame_type: int, flags: int, stream_id: int, payload: bytes = b"", *,
              length: int | None = None) -> bytes:
    """A frame as bytes, whatever its content (``length`` overrides the length field)."""
    n = len(payload) if length is None else length
    return n.to_bytes(3, "big") + bytes((frame_type & 0xFF, flags & 0xFF)) \
        + (stream_id & 0xFFFFFFFF).to_bytes(4, "big") + payload


def _settings_payload(settings: Sequence[tuple[int, int]]) -> bytes:
    return b"".join(struct.pack("!HI", i, v) for i, v in settings)


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """An HPACK integer (RFC 7541 §5.1) with ``first`` in the bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes, first: int = 0x00, prefix_bits: int = 4) -> bytes:
    """A literal field with a new name, not Huffman-coded: without indexing (0x00), never
    indexed (0x10) or with incremental indexing (0x40, prefix 6)."""
    return _hpack_int(0, prefix_bits, first) + _hpack_int(len(name), 7) + name \
        + _hpack_int(len(value), 7) + value


def _headers_frames(stream_id: int, block: bytes, *, end_stream: bool, cuts: Sequence[int] = (),
                    pad_length: int | None = None, priority: tuple[int, int, bool] | None = None,
                    continuation_ids: Sequence[int] = (), end_headers: bool = True,
                    bad_padding: bool = False) -> bytes:
    """HEADERS (padded and/or with priority if asked) then one CONTINUATION per cut, the last
    frame with END_HEADERS unless ``end_headers`` is false. ``continuation_ids`` overrides the
    stream id of the CONTINUATION frames (a fault); ``bad_padding`` announces more padding than
    the frame holds."""
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(block)}), len(block)]
    pieces = [block[a:b] for a, b in pairwise(bounds)] or [b""]
    flags = END_STREAM if end_stream else 0
    payload = b""
    if pad_length is not None:
        flags |= PADDED
        announced = pad_length + len(pieces[0]) + 1 + 5 * (priority is not None) \
            if bad_padding else pad_length
        payload += bytes((min(announced, 255),))
    if priority is not None:
        flags |= PRIORITY_FLAG
        dep, weight, exclusive = priority
        payload += struct.pack("!LB", (dep & MAX_WINDOW) | (exclusive << 31), weight)
    payload += pieces[0] + b"\0" * (pad_length or 0)
    if len(pieces) == 1 and end_headers:
        flags |= END_HEADERS
    out = raw_frame(HEADERS, flags, stream_id, payload)
    for i, piece in enumerate(pieces[1:], 1):
        last = i == len(pieces) - 1
        sid = continuation_ids[i - 1] if i - 1 < len(continuation_ids) else stream_id
        out += raw_frame(CONTINUATION, END_HEADERS if last and end_headers else 0, sid, piece)
    return out


def _data_frame(stream_id: int, data: bytes, *, end_stream: bool,
                pad_length: int | None = None) -> bytes:
    if stream_id > 0 and pad_length is None:
        return DataFrame(stream_id, data, flags=["END_STREAM"] if end_stream else []).serialize()
    flags = END_STREAM if end_stream else 0
    payload = data
    if pad_length is not None:
        flags |= PADDED
        payload = bytes((pad_length,)) + data + b"\0" * pad_length
    return raw_frame(DATA, flags, stream_id, payload)


# ---------------------------------------------------------------------- choices

T = TypeVar("T")


class _Dice:
    """Many small choices read from one drawn integer: one Hypothesis draw instead of dozens (a
    connection holds hundreds of choices, and a draw each made generation the slowest part of a
    campaign). Zero, where shrinking heads, is the plain case: no option, the first pick."""

    __slots__ = ("value",)

    def __init__(self, value: int) -> None:
        self.value = value

    def take(self, bits: int) -> int:
        v = self.value & ((1 << bits) - 1)
        self.value >>= bits
        return v

    def chance(self, sixteenths: int) -> bool:
        """True with probability ``sixteenths`` / 16."""
        return self.take(4) >= 16 - sixteenths

    def pick(self, n: int) -> int:
        """An index below ``n`` (at most 256)."""
        return self.take(8) % n

    def choice(self, items: Sequence[T]) -> T:
        return items[self.pick(len(items))]


_dice = st.binary(min_size=48, max_size=48).map(lambda b: _Dice(int.from_bytes(b, "little")))
"""384 bits (from bytes: Hypothesis draws large integers mostly small), enough for the choices
of one request, one frame, or one settings list (past them every choice is the plain one)."""

# ---------------------------------------------------------------------- field lists

# Field lists, hosts and paths are each one ``st.binary`` draw mapped onto the grammar.
_LOWER_TCHAR = b"abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~"
_PCHAR = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@"
_LABEL = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"
_VCHAR = bytes(range(0x21, 0x7F)) + bytes(range(0x80, 0x100))
_NAMES = (b"accept", b"user-agent", b"x-a", b"accept-encoding", b"accept-language",
          b"cache-control", b"x-forwarded-for", b"if-none-match")
_METHODS = (b"GET", b"GET", b"GET", b"POST", b"POST", b"PUT", b"DELETE", b"PATCH", b"HEAD",
            b"OPTIONS", b"PROPFIND", b"X-CUSTOM", b"m")
# names the request model handles itself
_SPECIAL_NAMES: Final = frozenset({
    b"host", b"content-length", b"te", b"cookie", b"connection", b"keep-alive",
    b"proxy-connection", b"transfer-encoding", b"upgrade", b"expect", b"http2-settings"})


def _to_value(raw: bytes) -> bytes:
    """field-value (RFC 9110 §5.5): field-vchars, SP/HTAB inside only."""
    return bytes(b" \t"[c % 2] if c < 20 else _VCHAR[c % len(_VCHAR)] for c in raw).strip(b" \t")


def _to_fields(raw: bytes) -> list[Header]:
    """Records split at bytes 0xF0: the first byte picks a common name or starts a token,
    the rest is the value."""
    out: list[Header] = []
    for record in raw.split(b"\xf0")[:8]:
        if not record:
            continue
        head, rest = record[0], record[1:]
        if head < 0x80:
            name = _NAMES[head % len(_NAMES)]
        else:
            n = 1 + head % 8
            name = bytes(_LOWER_TCHAR[c % len(_LOWER_TCHAR)] for c in rest[:n]) or b"x"
            rest = rest[n:]
        if name not in _SPECIAL_NAMES:
            out.append((name, _to_value(rest)))
    return out


def _to_host(raw: bytes) -> bytes:
    """uri-host [":" port]: a reg-name, an IPv4 address or an IP-literal (RFC 3986 §3.2.2)."""
    kind, body = (raw[0] % 4, raw[1:]) if raw else (0, b"")
    if kind == 2:
        host = b".".join(b"%d" % c for c in (body + b"\0\0\0\0")[:4])
    elif kind == 3:
        words = (body + b"\0" * 16)[:16]
        host = b"[" + b":".join(b"%x" % int.from_bytes(words[i:i + 2], "big")
                                for i in range(0, 16, 2)) + b"]"
    else:
        labels = bytes(0x2E if c < 24 else _LABEL[c % len(_LABEL)] for c in body[:20])
        host = b".".join(label for label in labels.split(b".") if label) or b"localhost"
    if raw and raw[-1] & 1:
        host += b":%d" % int.from_bytes(raw[-2:], "big")
    return host


def _to_path(raw: bytes) -> bytes:
    """absolute-path [ "?" query ] (RFC 9112 §3.2.1), pct-encoded triplets included."""
    out = bytearray(b"/")
    query = False
    for c in raw:
        if c < 24:
            out += b"/"
        elif c < 32:
            out += b"%%%02X" % (c * 7)
        elif c < 36 and not query:
            out += b"?"
            query = True
        else:
            out.append(_PCHAR[c % len(_PCHAR)])
    return bytes(out)


def _to_crumbs(raw: bytes) -> list[bytes]:
    return [bytes(0x21 + c % 0x5D for c in part).replace(b";", b"=")
            for part in raw.split(b"\xff")[:3] if part]


_regular = st.binary(max_size=60).map(_to_fields)
_hosts = st.binary(min_size=1, max_size=24).map(_to_host)
_paths = st.binary(max_size=24).map(_to_path)
_cookie_crumbs = st.binary(max_size=30).map(_to_crumbs)


@dataclass(frozen=True)
class _Request:
    """A valid request field list and what the server must make of it."""

    fields: list[Header]
    head: RequestHead


@st.composite
def _valid_requests(draw: st.DrawFn, body_length: int | None) -> _Request:
    """A request field list RFC 9113 §8.3 allows, pseudo-header fields in any order, cookie
    crumbs, ``host``, ``te: trailers``; ``body_length`` (``None``: no body) may be announced
    with ``content-length``. The head is what the server must report: pseudo-header fields
    taken out, crumbs joined at the end, ``:authority`` as ``host`` when there is none."""
    d = draw(_dice)
    authority: bytes | None = draw(_hosts)
    assert authority is not None
    if d.chance(1):  # CONNECT (RFC 9113 §8.5)
        if b":" not in authority.rsplit(b"]", 1)[-1]:
            authority += b":443"
        method, target = b"CONNECT", authority
        pseudo: list[Header] = [(b":method", method), (b":authority", authority)]
    else:
        method = d.choice(_METHODS)
        target = b"*" if method == b"OPTIONS" and d.chance(4) else draw(_paths)
        pseudo = [(b":method", method), (b":scheme", d.choice((b"http", b"https"))),
                  (b":path", target)]
        if d.chance(2):
            authority = None
        else:
            pseudo.append((b":authority", authority))
    pseudo = list(d.choice(list(permutations(pseudo))))
    regular: list[Header] = draw(_regular)
    extra: list[Header] = []
    host = None
    if d.chance(2):
        host = authority if authority is not None else draw(_hosts)
        extra.append((b"host", host))
    content_length = None
    if body_length is not None and d.chance(8):
        content_length = body_length
        extra.append((b"content-length", b"%d" % body_length))
    if d.chance(2):
        extra.append((b"te", b"trailers"))
    crumbs = draw(_cookie_crumbs) if d.chance(4) else []
    extra += [(b"cookie", c) for c in crumbs]
    for item in extra:
        regular.insert(d.pick(len(regular) + 1), item)
    fields = [f for f in regular if f[0] != b"cookie"]
    if crumbs:
        fields.append((b"cookie", b"; ".join(v for n, v in regular if n == b"cookie")))
    if host is None and authority:
        fields.insert(0, (b"host", authority))
    head = RequestHead(method=method, target=target, http_version=b"2", headers=fields,
                       keep_alive=True, expects_continue=False, content_length=content_length,
                       chunked=False)
    return _Request(pseudo + regular, head)


_FIELD_FAULTS: Final = (
    "drop-method", "drop-scheme", "drop-path", "dup-pseudo", "pseudo-after", "unknown-pseudo",
    "status-pseudo", "upper-name", "connection-field", "te-gzip", "empty-path",
    "relative-path", "absolute-path", "bad-value", "leading-space", "bad-name", "empty-name",
    "host-differs", "two-hosts", "bad-content-length", "two-content-lengths",
    "protocol-no-connect", "connect-with-path", "bad-method", "userinfo", "many-fields",
    "huge-field", "asterisk-get", "empty-method", "empty-authority", "trailer-pseudo",
)


def _fault_fields(fields: list[Header], fault: str, pos: int) -> list[Header]:
    """``fields`` (a valid request) made malformed by ``fault``."""
    out = list(fields)
    pseudo = [i for i, (n, _) in enumerate(out) if n[:1] == b":"]

    def set_pseudo(name: bytes, value: bytes) -> None:
        for i, (n, _) in enumerate(out):
            if n == name:
                out[i] = (name, value)
                return
        out.insert(0, (name, value))

    def drop(name: bytes) -> None:
        out[:] = [f for f in out if f[0] != name]

    if fault == "drop-method":
        drop(b":method")
    elif fault == "drop-scheme":
        drop(b":scheme")
    elif fault == "drop-path":
        drop(b":path")
    elif fault == "dup-pseudo" and pseudo:
        out.insert(0, out[pseudo[pos % len(pseudo)]])
    elif fault == "pseudo-after":
        out.append((b":path", b"/again") if pos % 2 else (b":method", b"GET"))
    elif fault == "unknown-pseudo":
        out.insert(0, (b":foo", b"bar"))
    elif fault == "status-pseudo":
        out.insert(0, (b":status", b"200"))
    elif fault == "upper-name":
        out.append((b"X-Upper", b"1"))
    elif fault == "connection-field":
        out.append([(b"connection", b"keep-alive"), (b"transfer-encoding", b"chunked"),
                    (b"upgrade", b"h2c"), (b"keep-alive", b"5"),
                    (b"proxy-connection", b"close")][pos % 5])
    elif fault == "te-gzip":
        out.append((b"te", b"gzip"))
    elif fault == "empty-path":
        set_pseudo(b":path", b"")
    elif fault == "relative-path":
        set_pseudo(b":path", b"abc")
    elif fault == "absolute-path":
        set_pseudo(b":path", b"http://a/b")
    elif fault == "asterisk-get":
        set_pseudo(b":path", b"*")
    elif fault == "bad-value":
        out.append((b"x-bad", [b"a\rb", b"a\nb", b"a\x00b", b"\x7f", b"a\x01"][pos % 5]))
    elif fault == "leading-space":
        out.append((b"x-sp", b" a" if pos % 2 else b"a\t"))
    elif fault == "bad-name":
        out.append(([b"a b", b"a:b", b"a\x00", b"\xff", b"(x)", b"a\r\nb"][pos % 6], b"v"))
    elif fault == "empty-name":
        out.append((b"", b"v"))
    elif fault == "host-differs":
        set_pseudo(b":authority", b"a.example")
        out.append((b"host", b"b.example"))
    elif fault == "two-hosts":
        out += [(b"host", b"a.example"), (b"host", b"a.example")]
    elif fault == "bad-content-length":
        out.append((b"content-length", [b"abc", b"-1", b"1,2", b"0x1", b"+5", b"1" * 25,
                                        b""][pos % 7]))
    elif fault == "two-content-lengths":
        out += [(b"content-length", b"1"), (b"content-length", b"2")]
    elif fault == "protocol-no-connect":
        out.insert(0, (b":protocol", b"websocket"))
    elif fault == "connect-with-path":
        set_pseudo(b":method", b"CONNECT")
    elif fault == "bad-method":
        set_pseudo(b":method", [b"G ET", b"GET\r\n", b"\x00", b"(GET)"][pos % 4])
    elif fault == "empty-method":
        set_pseudo(b":method", b"")
    elif fault == "userinfo":
        set_pseudo(b":authority", b"user@a.example")
    elif fault == "empty-authority":
        set_pseudo(b":authority", b"")
    elif fault == "many-fields":
        out += [(b"x-%d" % i, b"v") for i in range(101 + pos % 20)]
    elif fault == "huge-field":
        out.append((b"x-huge", b"a" * (16000 + 8000 * (pos % 3))))
    elif fault == "trailer-pseudo":
        out = [(b":path", b"/")]
    return out


# ------------------------------------------------------------------- connection writer


class _Writer:
    """What the generator knows of the connection it writes: the HPACK encoder (the server's
    decoder follows it), the next stream id, the streams still open and the ended ones."""

    def __init__(self) -> None:
        self.encoder = hpack.Encoder()
        self.next_id = 1
        self.open: list[int] = []
        self.ended: list[int] = []

    def new_id(self) -> int:
        sid = self.next_id
        self.next_id += 2
        return sid

    def end(self, sid: int) -> None:
        if sid in self.open:
            self.open.remove(sid)
        if sid not in self.ended:
            self.ended.append(sid)

    def stream_id(self, d: _Dice) -> int:
        """A stream id for a frame: mostly an open stream, else a new, ended, zero, even, idle
        (far ahead), reserved-bit or random one."""
        kind = d.choice(_STREAM_KINDS)
        i = d.take(16)
        if kind == "open" and self.open:
            return self.open[i % len(self.open)]
        if kind == "ended" and self.ended:
            return self.ended[i % len(self.ended)]
        if kind == "zero":
            return 0
        if kind == "even":
            return 2 * (1 + i % 50)
        if kind == "idle":
            return self.next_id + 2 * (1 + i % 50)
        if kind == "reserved":
            return (1 << 31) | (self.open[i % len(self.open)] if self.open else 1)
        if kind == "random":
            return 1 + d.take(31)
        return self.next_id


_STREAM_KINDS: Final = ("open",) * 5 + ("new", "new", "ended", "ended", "zero", "even", "idle",
                                        "reserved", "random")
_SETTING_VALUES: Final[dict[int, tuple[int, ...]]] = {
    HEADER_TABLE_SIZE: (0, 1, 256, 4096, 65536, 2**32 - 1),
    ENABLE_PUSH: (0, 1),
    MAX_CONCURRENT_STREAMS: (0, 1, 100, 2**32 - 1),
    INITIAL_WINDOW_SIZE: (0, 1, 100, 65535, 65536, MAX_WINDOW),
    MAX_FRAME_SIZE: (16384, 16385, 65536, 2**24 - 1),
    MAX_HEADER_LIST_SIZE: (0, 100, 65536, 2**32 - 1),
    ENABLE_CONNECT_PROTOCOL: (0, 1),
}
_SETTING_IDS: Final = (*_SETTING_VALUES, 0, 7, 0x10, 0xFFFF)  # the last ones: unknown, ignored
_INVALID_SETTINGS: Final = (
    (ENABLE_PUSH, 2), (ENABLE_PUSH, 2**32 - 1), (INITIAL_WINDOW_SIZE, 2**31),
    (INITIAL_WINDOW_SIZE, 2**32 - 1), (MAX_FRAME_SIZE, 0), (MAX_FRAME_SIZE, 16383),
    (MAX_FRAME_SIZE, 2**24), (MAX_FRAME_SIZE, 2**32 - 1), (ENABLE_CONNECT_PROTOCOL, 2),
)


def _settings(d: _Dice, valid_only: bool = False) -> list[tuple[int, int]]:
    """Up to six settings, values at the edges of what RFC 9113 §6.5.2 allows, unknown
    identifiers; unless ``valid_only``, one invalid value among them."""
    out = []
    for _ in range(d.pick(7)):
        ident = d.choice(_SETTING_IDS)
        values = _SETTING_VALUES.get(ident)
        out.append((ident, d.choice(values) if values else d.take(32)))
    if not valid_only:
        out.insert(d.pick(len(out) + 1), d.choice(_INVALID_SETTINGS))
    return out


_HPACK_KINDS: Final = ("encode",) * 12 + ("plain", "literal", "junk", "bad-index",
                                          "table-size", "truncated")


def _header_block(d: _Dice, w: _Writer, fields: list[Header], valid: bool = False) -> bytes:
    """``fields`` HPACK-coded with the connection's encoder (Huffman or not), or (when not
    ``valid``) sometimes as plain literals, junk, an index past the table, an oversize table
    size update, or a block cut short."""
    kind = "encode" if valid else d.choice(_HPACK_KINDS)
    if kind == "literal":
        return b"".join(_literal(n, v, first=0x10 * d.take(1)) for n, v in fields)
    if kind == "junk":
        return d.take(8 * (1 + d.pick(24))).to_bytes(24, "big").lstrip(b"\0")
    if kind == "bad-index":
        return _hpack_int(62 + len(w.encoder.header_table.dynamic_entries) + d.pick(4), 7,
                          0x80)
    if kind == "table-size":
        return _hpack_int(4097 + d.take(16), 5, 0x20) + w.encoder.encode(fields)
    block = bytes(w.encoder.encode(fields, huffman=kind != "plain" and bool(d.take(1))))
    if kind == "truncated" and block:
        return block[:d.take(16) % len(block)]
    return block


def _cuts(d: _Dice, length: int, most: int = 3) -> list[int]:
    return sorted({d.take(16) % (length + 1) for _ in range(d.pick(most + 1))})


def _header_frames(d: _Dice, w: _Writer, sid: int, block: bytes, end_stream: bool,
                   valid: bool = False) -> bytes:
    """A header block on ``sid`` as HEADERS (+ CONTINUATION) frames, sometimes padded or with
    a priority; when not ``valid``, sometimes with bad padding, a self-dependency, an
    unfinished block or CONTINUATION frames on another stream."""
    cuts = _cuts(d, len(block)) if d.chance(5) else []
    # (hyperframe refuses padding that fills all of a HEADERS frame after its pad length
    # field, which RFC 9113 §6.2 allows; valid connections leave that case out)
    pad = d.take(6) if d.chance(3) and (block or not valid) else None
    priority = None
    if d.chance(3):
        others = [e for e in w.ended if e != sid]
        if valid:
            dep = d.choice(others) if others and d.take(1) else 0
        else:
            dep = sid if d.chance(3) else w.stream_id(d)
        priority = (dep, d.take(8), bool(d.take(1)))
    fault = None if valid or not d.chance(2) else d.choice(
        ("bad-padding", "no-end-headers", "continuation-elsewhere"))
    return _headers_frames(
        sid, block, end_stream=end_stream, cuts=cuts, pad_length=pad, priority=priority,
        end_headers=fault != "no-end-headers", bad_padding=fault == "bad-padding",
        continuation_ids=[sid + 2] * 3 if fault == "continuation-elsewhere" else (),
    )


_bodies = st.binary(max_size=_MAX_BODY)
_BODY_KINDS: Final = ("none", "none", "data", "data", "trailers", "open")
_REQUEST_IDS: Final = ("new",) * 12 + ("skip", "reuse", "even", "zero")


@st.composite
def _request_action(draw: st.DrawFn, w: _Writer, keep_open: bool = False,
                    faulty: bool = False) -> bytes:
    """A request: HEADERS (+ CONTINUATION), maybe a body in DATA frames, maybe trailers, maybe
    left open for later frames; its field list valid or given one fault (a stream error). When
    ``faulty``, also connection errors: a stream id reused, even or 0, broken HPACK or
    framing, a body that does not match its content-length."""
    d = draw(_dice)
    how = d.choice(_REQUEST_IDS) if faulty else d.choice(("new",) * 7 + ("skip",))
    if how == "reuse" and w.ended:
        sid = d.choice(w.ended)
    elif how == "even":
        sid = 2 * (1 + d.pick(4))
    elif how == "zero":
        sid = 0
    else:
        if how == "skip":
            w.next_id += 2 * (1 + d.pick(4))
        sid = w.new_id()
    body_kind = "open" if keep_open else d.choice(_BODY_KINDS)
    body = draw(_bodies) if body_kind in ("data", "trailers") else b""
    req = draw(_valid_requests(len(body) if body_kind in ("data", "trailers") else None))
    fields = req.fields
    if d.chance(5):
        fields = _fault_fields(fields, d.choice(_FIELD_FAULTS), d.take(16))
    if faulty and d.chance(3):  # a content-length the body does not match
        fields.append((b"content-length", b"%d" % (len(body) + 1 + d.pick(4))))
    out = _header_frames(d, w, sid, _header_block(d, w, fields, not faulty),
                         body_kind == "none", not faulty)
    if sid not in w.open and sid not in w.ended and sid % 2:
        w.open.append(sid)
    if body_kind in ("none", "open"):
        if body_kind == "none":
            w.end(sid)
        return out
    bounds = [0, *_cuts(d, len(body)), len(body)]
    pieces = [body[a:b] for a, b in pairwise(bounds)]
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1 and body_kind == "data"
        out += _data_frame(sid, piece, end_stream=last,
                           pad_length=d.take(6) if d.chance(3) else None)
    if body_kind == "trailers":
        trailers = draw(_regular)
        if d.chance(2):
            trailers = _fault_fields(trailers, d.choice(_FIELD_FAULTS), d.take(16))
        out += _header_frames(d, w, sid, _header_block(d, w, trailers, not faulty), True,
                              not faulty)
    w.end(sid)
    return out


_ACTIONS: Final = (
    ("request",) * 8 + ("open",) * 2 + ("data",) * 3
    + ("trailers", "priority", "rst", "rst", "settings", "settings-ack", "ping", "goaway",
       "window-update", "window-update", "push-promise", "unknown", "continuation-stray",
       "oversize", "garbage", "flood")
)
_LENGTH_FAULTS: Final = (None,) * 8 + (0, 1, 3, 7, 9, 13)
_INCREMENTS: Final = (0, 1, 1, 1000, 65535, MAX_WINDOW, MAX_WINDOW, 2**31, 2**32 - 1)
_DATA_SIZES: Final = (0, 0, 1, 10, 100, 1000, DEFAULT_FRAME_SIZE)
_OVERSIZES: Final = (DEFAULT_FRAME_SIZE + 1, DEFAULT_FRAME_SIZE + 100, 2**24 - 1)
_FLOODS: Final = ("ping", "settings", "rapid-reset", "continuation", "empty-data",
                  "window-update", "priority", "streams", "hpack-bomb", "settings-ack")
_payload = st.binary(max_size=60)
# Frame types no HTTP/2 library here knows start at 0xB (0xA is ALTSVC, which hyperframe
# parses, and refuses when malformed): a receiver must ignore them (RFC 9113 §4.1, §5.5).
_EXTENSION_TYPE: Final = 0xB


def _fixed(frame_type: int, flags: int, sid: int, payload: bytes, bad_length: int | None
           ) -> bytes:
    """A fixed-size frame, its payload cut or padded to ``bad_length`` when given."""
    if bad_length is not None:
        payload = (payload + b"\0" * bad_length)[:bad_length]
    return raw_frame(frame_type, flags, sid, payload)


def _error_code(d: _Dice) -> int:
    return d.pick(MAX_ERROR_CODE + 1) if d.chance(12) else d.take(32)


def _flood(d: _Dice, w: _Writer, kinds: Sequence[str] = _FLOODS) -> bytes:
    """Ten to 160 small frames of one kind (a few KiB at most)."""
    kind = d.choice(kinds)
    n = 10 + d.pick(151)
    if kind == "ping":
        return PingFrame(0, opaque_data=b"floodpng").serialize() * n
    if kind == "settings":
        return SettingsFrame(0, settings={INITIAL_WINDOW_SIZE: 65535}).serialize() * n
    if kind == "settings-ack":
        return SettingsFrame(0, flags=["ACK"]).serialize() * n
    if kind == "priority":
        return b"".join(PriorityFrame(1 + 2 * i, depends_on=0).serialize() for i in range(n))
    if kind == "window-update":
        sid = w.open[0] if w.open and d.take(1) else 0
        return raw_frame(WINDOW_UPDATE, 0, sid, struct.pack("!L", 1)) * n
    if kind in ("rapid-reset", "streams"):
        fields = [(b":method", b"GET" if kind == "rapid-reset" else b"POST"), *_GET[1:]]
        out = b""
        for _ in range(n):
            sid = w.new_id()
            if kind == "rapid-reset":
                out += raw_frame(HEADERS, END_HEADERS | END_STREAM, sid,
                                 w.encoder.encode(fields))
                out += RstStreamFrame(sid, error_code=8).serialize()
                w.end(sid)
            else:
                out += raw_frame(HEADERS, END_HEADERS, sid, w.encoder.encode(fields))
                w.open.append(sid)
        return out
    if kind == "empty-data":
        return raw_frame(DATA, 0, w.open[0] if w.open else w.new_id()) * n
    if kind == "hpack-bomb":
        return hpack_bomb(n * 4, first_stream=w.new_id(), encoder=w.encoder)
    # CONTINUATION flood: a header block that never ends
    sid = w.new_id()
    return raw_frame(HEADERS, 0, sid, w.encoder.encode([(b":method", b"GET")])) \
        + raw_frame(CONTINUATION, 0, sid, b"\0" * d.pick(4)) * n


_VALID_ACTIONS: Final = (
    ("request",) * 8 + ("open",) * 3 + ("data",) * 4
    + ("trailers", "priority", "rst", "settings", "ping", "ping", "window-update",
       "window-update", "unknown", "flood")
)
_VALID_FLOODS: Final = ("ping", "settings", "rapid-reset", "empty-data", "window-update",
                        "priority", "streams", "hpack-bomb")


@st.composite
def _action_bytes(draw: st.DrawFn, w: _Writer, faulty: bool = False) -> bytes:
    """One step of a client connection: a request or a frame, valid (as a well-behaved client
    would send it, stream errors aside) or ``faulty``."""
    d = draw(_dice)
    if faulty:
        return draw(_faulty_action(w, d))
    action = d.choice(_VALID_ACTIONS)
    if action in ("data", "trailers", "rst") and not w.open:
        action = "request"
    if action == "request":
        return draw(_request_action(w))
    if action == "open":
        return draw(_request_action(w, keep_open=True))
    if action == "data":
        sid = d.choice(w.open)
        size = d.choice(_DATA_SIZES)
        data = d.take(8 * size).to_bytes(size, "big") if size <= 10 else b"d" * size
        end = d.chance(6)
        if end:
            w.end(sid)
        return _data_frame(sid, data, end_stream=end, pad_length=d.take(6) if d.chance(3)
                           else None)
    if action == "trailers":
        sid = d.choice(w.open)
        w.end(sid)
        return _header_frames(d, w, sid, _header_block(d, w, draw(_regular), True), True, True)
    if action == "priority":
        sid = 1 + 2 * d.pick(64)
        dep = 0 if d.take(1) else 1 + 2 * d.pick(64)
        return PriorityFrame(sid, depends_on=dep if dep != sid else 0,
                             stream_weight=d.take(8)).serialize()
    if action == "rst":
        sid = d.choice(w.open)
        w.end(sid)
        return RstStreamFrame(sid, error_code=d.pick(MAX_ERROR_CODE + 1)).serialize()
    if action == "settings":
        return SettingsFrame(0, settings=dict(_settings(d, valid_only=True))).serialize()
    if action == "ping":
        return PingFrame(0, opaque_data=d.take(64).to_bytes(8, "big")).serialize()
    if action == "window-update":
        sid = d.choice(w.open) if w.open and d.take(1) else 0
        return WindowUpdateFrame(sid, window_increment=1 + d.take(16)).serialize()
    if action == "unknown":
        return raw_frame(_EXTENSION_TYPE + d.pick(245), d.take(8), w.stream_id(d),
                         draw(_payload))
    return _flood(d, w, _VALID_FLOODS)


@st.composite
def _faulty_action(draw: st.DrawFn, w: _Writer, d: _Dice) -> bytes:
    """A step a client must not take: frames on the wrong stream, of the wrong length, with
    invalid values, or not HTTP/2 at all."""
    action = d.choice(_ACTIONS)
    bad = d.choice(_LENGTH_FAULTS)
    if action == "request":
        return draw(_request_action(w, faulty=True))
    if action == "open":
        return draw(_request_action(w, keep_open=True, faulty=True))
    if action == "data":
        sid = w.stream_id(d)
        size = d.choice(_DATA_SIZES)
        data = d.take(8 * size).to_bytes(size, "big") if size <= 10 else b"d" * size
        end = bool(d.take(1))
        pad = d.take(6) if d.chance(3) else None
        if pad is not None and d.chance(2):  # padding longer than the frame
            return raw_frame(DATA, PADDED, sid, bytes((min(pad + len(data) + 1, 255),)) + data)
        if end:
            w.end(sid)
        return _data_frame(sid, data, end_stream=end, pad_length=pad)
    if action == "trailers":
        sid = w.stream_id(d)
        fields = draw(_regular)
        if d.chance(3):
            fields = _fault_fields(fields, d.choice(_FIELD_FAULTS), d.take(16))
        out = _header_frames(d, w, sid, _header_block(d, w, fields), True)
        w.end(sid)
        return out
    if action == "priority":
        sid = w.stream_id(d)
        dep = sid if d.chance(2) else w.stream_id(d)
        return _fixed(PRIORITY, 0, sid, struct.pack("!LB", dep & MAX_WINDOW, d.take(8)), bad)
    if action == "rst":
        sid = w.stream_id(d)
        w.end(sid)
        return _fixed(RST_STREAM, 0, sid, struct.pack("!L", _error_code(d)), bad)
    if action == "settings":
        payload = _settings_payload(_settings(d))
        if bad is not None:
            payload += b"\0" * (1 + bad % 5)
        return raw_frame(SETTINGS, 0, 0 if d.chance(15) else 1, payload)
    if action == "settings-ack":
        return raw_frame(SETTINGS, ACK, 0, b"" if bad is None else b"\0" * bad)
    if action == "ping":
        sid = 0 if d.chance(15) else w.stream_id(d)
        return _fixed(PING, ACK if d.chance(2) else 0, sid, d.take(64).to_bytes(8, "big"), bad)
    if action == "goaway":
        last = w.stream_id(d) & MAX_WINDOW
        payload = struct.pack("!LL", last, _error_code(d)) + b"debug"[:d.pick(6)]
        sid = 0 if d.chance(15) else 1
        return raw_frame(GOAWAY, 0, sid, payload if bad is None else payload[:bad % 8])
    if action == "window-update":
        sid = 0 if d.take(1) else w.stream_id(d)
        return _fixed(WINDOW_UPDATE, 0, sid, struct.pack("!L", d.choice(_INCREMENTS)), bad)
    if action == "push-promise":
        sid = w.stream_id(d)
        block = _header_block(d, w, [*_GET[:2], (b":path", b"/pushed"), _GET[3]])
        return raw_frame(PUSH_PROMISE, END_HEADERS, sid,
                         struct.pack("!L", 2 * (1 + d.pick(4))) + block)
    if action == "unknown":
        return raw_frame(10 + d.pick(246), d.take(8), w.stream_id(d), draw(_payload))
    if action == "continuation-stray":
        sid = w.stream_id(d)
        return raw_frame(CONTINUATION, END_HEADERS * d.take(1), sid,
                         _header_block(d, w, [(b"x-a", b"b")]))
    if action == "oversize":
        length = d.choice(_OVERSIZES)
        frame_type = d.choice((DATA, HEADERS, PING, 0x42))
        sid = w.stream_id(d)
        if length <= DEFAULT_FRAME_SIZE + 100 and d.take(1):
            return raw_frame(frame_type, 0, sid, b"\0" * length)
        return raw_frame(frame_type, 0, sid, b"\0" * 20, length=length)
    if action == "garbage":
        return draw(_payload)
    return _flood(d, w)


@st.composite
def client_connections(draw: st.DrawFn) -> bytes:
    """A client connection: the preface, a SETTINGS frame, then up to 12 steps: requests and
    frames a client may send (malformed requests included: stream errors), and in three
    connections out of four one step that is a connection error (an invalid SETTINGS value
    first, or a damaged frame anywhere) — the steps after it probe what the server does
    with input past an error."""
    w = _Writer()
    d = draw(_dice)
    steps = d.pick(13)
    fault = d.pick(steps + 2) - 1 if d.chance(12) else None  # -1: the first SETTINGS
    out = PREFACE + raw_frame(SETTINGS, 0, 0, _settings_payload(_settings(d, fault != -1)))
    if d.take(1):
        out += SettingsFrame(0, flags=["ACK"]).serialize()
    for i in range(steps):
        out += draw(_action_bytes(w, i == fault))
    if d.chance(1):  # a goodbye: the streams in flight finish
        out += GoAwayFrame(0, last_stream_id=0, error_code=0).serialize()
    return out


# --------------------------------------------------------------------------- mutations

_MUTATIONS: Final = ("flip", "insert", "delete", "truncate", "length", "length", "type", "flags",
                     "stream", "duplicate", "drop", "swap")
_NEW_LENGTHS: Final = (0, 1, 4, 5, 8, 9, DEFAULT_FRAME_SIZE, DEFAULT_FRAME_SIZE + 1, 2**24 - 1)
_NEW_IDS: Final = (0, 1, 2, 3, 5, 0x7FFFFFFF, 0x80000001, 0xFFFFFFFF)


def frame_offsets(data: bytes | bytearray) -> list[tuple[int, int]]:
    """(start, end) of each whole frame in ``data``, after the preface when it starts with
    one: where a server reading it finds its frames."""
    pos = len(PREFACE) if bytes(data[:len(PREFACE)]) == PREFACE else 0
    out = []
    while pos + 9 <= len(data):
        end = pos + 9 + int.from_bytes(data[pos:pos + 3], "big")
        if end > len(data):
            break
        out.append((pos, end))
        pos = end
    return out


@st.composite
def mutated_connections(draw: st.DrawFn) -> bytes:
    """Client connections damaged one to three times in their bytes: bit flips, insertions,
    deletions, truncation, or one frame's length, type, flags or stream id rewritten, a frame
    duplicated, dropped or swapped with the next."""
    data = bytearray(draw(client_connections()))
    d = draw(_dice)
    for _ in range(1 + d.pick(3)):
        kind = d.choice(_MUTATIONS)
        pos = d.take(20) % (len(data) + 1)
        frames = frame_offsets(data)
        start, end = frames[d.take(16) % len(frames)] if frames else (0, 0)
        if kind == "flip" and data:
            data[min(pos, len(data) - 1)] ^= 1 << d.pick(8)
        elif kind == "insert":
            data[pos:pos] = d.take(72).to_bytes(9, "big")[:1 + d.pick(9)]
        elif kind == "delete":
            del data[pos:pos + 1 + d.pick(9)]
        elif kind == "truncate":
            del data[pos:]
        elif not frames:
            continue
        elif kind == "length":
            data[start:start + 3] = d.choice(_NEW_LENGTHS).to_bytes(3, "big")
        elif kind == "type":
            data[start + 3] = d.pick(13)
        elif kind == "flags":
            data[start + 4] ^= d.take(8)
        elif kind == "stream":
            data[start + 5:start + 9] = d.choice(_NEW_IDS).to_bytes(4, "big")
        elif kind == "duplicate":
            data[end:end] = data[start:end]
        elif kind == "drop":
            del data[start:end]
        elif kind == "swap":
            following = [f for f in frames if f[0] == end]
            if following:
                nxt = following[0][1]
                data[start:nxt] = data[end:nxt] + data[start:end]
    return bytes(data)


# ------------------------------------------------------------------- valid connections


@dataclass(frozen=True)
class ExpectedRequest:
    """A request of a generated valid connection and what the server must report for it."""

    stream_id: int
    head: RequestHead
    end_stream: bool  # with its HEADERS: no body
    body: bytes
    trailers: tuple[Header, ...]


@dataclass(frozen=True)
class GeneratedConnection:
    """A valid client connection and its requests, in the order their streams opened."""

    raw: bytes
    requests: tuple[ExpectedRequest, ...]


@dataclass
class _Plan:
    req: _Request
    body: bytes
    ending: str  # "headers", "data", "empty-data", "trailers"
    pieces: list[tuple[bytes, int | None]]  # DATA frames: data, pad length
    trailers: list[Header]
    sid: int = 0
    units: int = 0  # frames written so far (the header block counting as one)

    @property
    def done(self) -> bool:
        return self.units >= 1 + len(self.pieces) + (self.ending == "trailers")


_ENDINGS: Final = ("headers", "headers", "data", "data", "empty-data", "trailers")
_EXTRAS: Final = ("ping", "priority", "window-update", "settings", "unknown")
_request_count = st.integers(1, 6)


@st.composite
def _plans(draw: st.DrawFn) -> _Plan:
    d = draw(_dice)
    ending = d.choice(_ENDINGS)
    body = draw(_bodies) if ending in ("data", "trailers") else b""
    req = draw(_valid_requests(None if ending == "headers" else len(body)))
    bounds = [0, *_cuts(d, len(body)), len(body)]
    pieces = [(body[a:b], d.take(6) if d.chance(3) else None)
              for a, b in pairwise(bounds) if b > a]
    if ending == "empty-data" or (ending == "data" and not pieces):
        pieces.append((b"", d.take(6) if d.chance(3) else None))
    trailers = draw(_regular) if ending == "trailers" else []
    return _Plan(req, body, ending, pieces, trailers)


@st.composite
def valid_connections(draw: st.DrawFn) -> GeneratedConnection:
    """A connection RFC 9113 allows: valid settings, one to six requests on interleaved
    streams (blocks split into CONTINUATION frames, padding, priorities, DATA bodies,
    trailers), PING, PRIORITY, WINDOW_UPDATE, SETTINGS and unknown frames between them."""
    w = _Writer()
    plans = [draw(_plans()) for _ in range(draw(_request_count))]
    d = draw(_dice)
    out = PREFACE + SettingsFrame(0, settings=dict(_settings(d, valid_only=True))).serialize()
    acked = False
    order: list[_Plan] = []
    while pending := [p for p in plans if not p.done]:
        if d.value == 0:
            d = draw(_dice)  # used up: a fresh one
        if not acked and d.chance(2):
            acked = True
            out += SettingsFrame(0, flags=["ACK"]).serialize()
        if d.chance(2):
            extra = d.choice(_EXTRAS)
            if extra == "ping":
                out += PingFrame(0, opaque_data=d.take(64).to_bytes(8, "big")).serialize()
            elif extra == "priority":
                sid = 1 + 2 * d.pick(4) + 2 * len(order)
                out += PriorityFrame(sid, depends_on=0, stream_weight=d.take(8)).serialize()
            elif extra == "window-update":
                out += WindowUpdateFrame(0, window_increment=1 + d.take(16)).serialize()
            elif extra == "settings":
                out += SettingsFrame(0, settings=dict(_settings(d, True))).serialize()
            else:  # an extension frame, to be ignored
                out += raw_frame(_EXTENSION_TYPE + d.pick(245), d.take(8), 0, b"x" * d.pick(9))
        p = d.choice(pending)
        if p.units == 0:
            if d.chance(2):
                w.next_id += 2 * (1 + d.pick(4))
            p.sid = w.new_id()
            order.append(p)
            block = _header_block(d, w, p.req.fields, valid=True)
            out += _header_frames(d, w, p.sid, block, p.ending == "headers", valid=True)
            w.ended.append(p.sid)  # a valid dependency for later priorities
        elif p.units <= len(p.pieces):
            data, pad = p.pieces[p.units - 1]
            last = p.units == len(p.pieces) and p.ending != "trailers"
            out += _data_frame(p.sid, data, end_stream=last, pad_length=pad)
        else:
            block = _header_block(d, w, p.trailers, valid=True)
            out += _header_frames(d, w, p.sid, block, True, valid=True)
        p.units += 1
    return GeneratedConnection(out, tuple(
        ExpectedRequest(p.sid, p.req.head, p.ending == "headers", p.body, tuple(p.trailers))
        for p in order))


_sequence_kind = st.sampled_from(["valid", "mixed", "mixed", "mutated", "mutated"])


@st.composite
def frame_sequences(draw: st.DrawFn) -> bytes:
    """A whole client connection: valid, mixed valid and damaged frames, or damaged bytes."""
    kind = draw(_sequence_kind)
    if kind == "valid":
        return draw(valid_connections()).raw
    if kind == "mixed":
        return draw(client_connections())
    return draw(mutated_connections())


# ---------------------------------------------------------------------- known attacks

_GET: Final = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
               (b":authority", b"a")]


def _opening(settings: dict[int, int] | None = None) -> bytes:
    return PREFACE + SettingsFrame(0, settings=settings or {}).serialize()


def continuation_flood(frames: int = 2000, fragment: bytes = b"") -> bytes:
    """CVE-2024-27316 class: a HEADERS frame then CONTINUATION frames, none with END_HEADERS."""
    block = hpack.Encoder().encode(_GET)
    return _opening() + raw_frame(HEADERS, 0, 1, block) \
        + raw_frame(CONTINUATION, 0, 1, fragment) * frames


def hpack_bomb(refs: int = 2000, value_size: int = 4000, *, first_stream: int = 1,
               encoder: hpack.Encoder | None = None) -> bytes:
    """One request adding a ``value_size`` field to the HPACK dynamic table, then a second
    referring to it ``refs`` times, one byte each (without the preface: a fragment)."""
    # :method GET, :scheme http, :path / from the static table, :authority as a literal
    # without indexing: the bomb is the only entry the dynamic table gets.
    get = b"\x82\x86\x84" + _literal(b":authority", b"a")
    block = get + _literal(b"x-bomb", b"a" * value_size, 0x40, 6)
    if encoder is not None:  # keep the writer's table in step with the server's
        encoder.header_table.add(b"x-bomb", b"a" * value_size)
    second = get + b"\xbe" * refs
    return raw_frame(HEADERS, END_HEADERS | END_STREAM, first_stream, block) \
        + raw_frame(HEADERS, END_HEADERS | END_STREAM, first_stream + 2, second)


def _requests(count: int, fields: list[Header] = _GET, *, end_stream: bool = True,
              reset: bool = False) -> bytes:
    """``count`` requests on streams 1, 3 …, one HPACK encoder for all (after the first, each
    header block is a few indexed bytes), each reset at once if ``reset``."""
    enc = hpack.Encoder()
    out = b""
    for sid in range(1, 2 * count, 2):
        out += raw_frame(HEADERS, END_HEADERS | (END_STREAM if end_stream else 0), sid,
                         enc.encode(fields))
        if reset:
            out += RstStreamFrame(sid, error_code=8).serialize()
    return out


def known_attacks() -> dict[str, bytes]:
    """Named attack connections (preface included), for examples and regression tests."""
    get = hpack.Encoder().encode(_GET)
    post = hpack.Encoder().encode([(b":method", b"POST"), *_GET[1:]])
    return {
        "continuation-flood": continuation_flood(),
        "continuation-flood-16k": continuation_flood(40, b"\0" * DEFAULT_FRAME_SIZE),
        "hpack-bomb": _opening() + hpack_bomb(),
        "hpack-bomb-small": _opening() + hpack_bomb(10),
        "settings-initial-window-overflow": _opening() + raw_frame(
            SETTINGS, 0, 0, _settings_payload([(INITIAL_WINDOW_SIZE, 2**31)])),
        "settings-window-overflows-stream-window": _opening()
        + raw_frame(HEADERS, END_HEADERS | END_STREAM, 1, get)
        + WindowUpdateFrame(1, window_increment=MAX_WINDOW - 65535).serialize()
        + SettingsFrame(0, settings={INITIAL_WINDOW_SIZE: MAX_WINDOW}).serialize(),
        "window-update-overflow": _opening()
        + WindowUpdateFrame(0, window_increment=MAX_WINDOW).serialize() * 2,
        "window-update-stream-overflow": _opening() + raw_frame(HEADERS, END_HEADERS, 1, post)
        + WindowUpdateFrame(1, window_increment=MAX_WINDOW).serialize() * 2,
        "window-update-zero": _opening() + raw_frame(WINDOW_UPDATE, 0, 0, struct.pack("!L", 0)),
        "window-update-zero-on-stream": _opening() + raw_frame(HEADERS, END_HEADERS, 1, post)
        + raw_frame(WINDOW_UPDATE, 0, 1, struct.pack("!L", 0)),
        "rst-stream-idle": _opening() + RstStreamFrame(1, error_code=8).serialize(),
        "push-promise-from-client": _opening() + raw_frame(HEADERS, END_HEADERS, 1, post)
        + raw_frame(PUSH_PROMISE, END_HEADERS, 1, struct.pack("!L", 2)
                    + hpack.Encoder().encode(_GET)),
        "data-on-reset-stream": _opening() + raw_frame(HEADERS, END_HEADERS, 1, post)
        + RstStreamFrame(1, error_code=8).serialize() + raw_frame(DATA, 0, 1, b"late"),
        "data-after-end-stream": _opening()
        + raw_frame(HEADERS, END_HEADERS | END_STREAM, 1, get)
        + raw_frame(DATA, END_STREAM, 1, b"after the end"),
        "headers-on-closed-stream": _opening() + _requests(2)
        + raw_frame(HEADERS, END_HEADERS | END_STREAM, 1, b"\x82\x86\x84\xbe"),
        "rapid-reset": _opening() + _requests(500, reset=True),
        "ping-flood": _opening() + PingFrame(0, opaque_data=b"12345678").serialize() * 2000,
        "settings-flood": _opening() + SettingsFrame(0, settings={
            MAX_CONCURRENT_STREAMS: 10}).serialize() * 1000,
        "streams-over-the-limit": _opening() + _requests(201, end_stream=False),
        "request-flood": _opening() + _requests(1000),
        "bad-request-flood": _opening() + _requests(
            1000, [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"x"),
                   (b":authority", b"a")]),
    }


# ---------------------------------------------------------------------- the responder


@dataclass
class _Exchange:
    """One stream as the server's stream task sees it (``trioserve.server._H2Connection`` and
    ``context_h2.H2Stream``): an app answering at once without reading the body
    (``early``), an app echoing the whole body (``echo``, with trailers on some streams), or
    the protocol's refusal (``refused``, answered like ``send_error``)."""

    sid: int
    method: bytes
    policy: str
    status: int = 200
    message: bytes = b""
    peer_ended: bool = False
    closed: bool = False
    received: int = 0
    unread: int = 0
    echo: bytearray = field(default_factory=bytearray)
    started: bool = False
    pending: bytes | None = None
    trailers: list[Header] | None = None
    complete: bool = False


_ECHO_MAX = 4096


class _Responder:
    """Answers requests through the protocol's send side, as ``trioserve.server`` does."""

    def __init__(self, proto: HTTP2Protocol) -> None:
        self.proto = proto
        self.streams: dict[int, _Exchange] = {}
        self.closing = False
        self.steps = 0

    def handle(self, events: list[H2Event], *, deferred: bool) -> bool:
        """``_H2Connection._feed``'s dispatch; False when the connection must end."""
        proto = self.proto
        streams = self.streams
        for ev in events:
            if isinstance(ev, StreamData):
                ex = streams.get(ev.stream_id)
                if ex is None:
                    proto.consumed(ev.stream_id, ev.flow_length)
                elif ex.peer_ended:
                    pass  # H2RequestBody.add ignores it
                elif not ev.data:
                    proto.consumed(ev.stream_id, ev.flow_length)
                elif ex.policy == "echo":
                    proto.consumed(ev.stream_id, ev.flow_length)
                    ex.received += len(ev.data)
                    ex.echo += ev.data[:_ECHO_MAX - len(ex.echo)]
                else:
                    ex.unread += ev.flow_length
            elif isinstance(ev, StreamRequest):
                policy = "echo" if ev.stream_id % 4 == 3 else "early"
                streams[ev.stream_id] = _Exchange(ev.stream_id, ev.head.method, policy,
                                                  peer_ended=ev.end_stream)
            elif isinstance(ev, StreamRefused):
                streams[ev.stream_id] = _Exchange(
                    ev.stream_id, ev.method, "refused", ev.status,
                    (ev.message + "\n").encode("utf-8", "replace"), peer_ended=ev.end_stream)
            elif isinstance(ev, StreamEnded):
                ex = streams.get(ev.stream_id)
                if ex is not None:
                    ex.peer_ended = True
            elif isinstance(ev, StreamReset):
                ex = streams.get(ev.stream_id)
                if ex is not None:
                    ex.closed = True
                    if deferred:
                        self.done(ex)
            elif isinstance(ev, ConnectionEnded):
                if ev.error_code != 0 or not streams:
                    return False
                self.closing = True
        return True

    def run(self) -> None:
        """One turn of every stream task: respond as far as the windows allow."""
        for ex in list(self.streams.values()):
            self.steps += 1
            if ex.closed:
                self.done(ex)
            else:
                self.progress(ex)

    def progress(self, ex: _Exchange) -> None:
        proto = self.proto
        sid = ex.sid
        try:
            if not ex.started:
                if ex.policy == "echo" and not ex.peer_ended:
                    return  # still reading the body
                length: int | None
                if ex.policy == "refused":
                    headers = [(b"content-type", b"text/plain; charset=utf-8")]
                    body, length = ex.message, len(ex.message)
                elif ex.policy == "echo":
                    headers = [(b"content-type", b"application/octet-stream")]
                    body = bytes(ex.echo)
                    with_trailers = sid % 8 == 7
                    length = None if with_trailers else len(body)
                    if with_trailers:
                        ex.trailers = [(b"x-echoed", b"%d" % ex.received)]
                else:
                    headers = [(b"content-type", b"text/plain"), (b"x-stream", b"%d" % sid)]
                    body = b"hello\n"
                    length = len(body)
                ex.started = True
                if proto.send_headers(sid, ex.status, headers, method=ex.method,
                                      body_length=length):
                    ex.complete = True
                    self.done(ex)
                    return
                ex.pending = body
            if ex.pending is not None:
                body = ex.pending
                n = proto.send_data(sid, body, ex.trailers is None)
                ex.pending = body[n:]
                if n < len(body):
                    return  # waiting for window
                if ex.trailers is not None:
                    proto.end_stream(sid, ex.trailers)
                ex.complete = True
                self.done(ex)
        except ResponseError as exc:
            if proto.closed:
                ex.closed = True
                return
            _fail(f"a response on stream {sid} was refused while the stream is open: {exc}")

    def done(self, ex: _Exchange) -> None:
        """``_H2Connection._stream_done``."""
        proto = self.proto
        sid = ex.sid
        if not ex.complete and not ex.closed:
            proto.reset(sid, INTERNAL_ERROR)
            ex.closed = True
        if ex.unread:
            proto.consumed(sid, ex.unread)
        if not ex.peer_ended and not ex.closed:
            proto.finish_unread(sid, MAX_DRAIN_BYTES - ex.received)
        else:
            proto.stream_finished(sid)
        self.streams.pop(sid, None)

    def end_of_input(self) -> None:
        """The client closed: every stream is aborted, then the graceful GOAWAY."""
        for ex in list(self.streams.values()):
            ex.closed = True
            self.done(ex)
        self.proto.goaway()


# ----------------------------------------------------------------------- event checks

_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
                   b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_LOWER_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")
_CONNECTION_FIELDS = frozenset({b"connection", b"keep-alive", b"proxy-connection",
                                b"transfer-encoding", b"upgrade"})


def _check_head(sid: int, head: RequestHead, end_stream: bool) -> None:
    where = f"stream {sid}"
    if head.http_version != b"2":
        _fail(f"{where}: http_version {head.http_version!r}")
    if not head.method or not set(head.method) <= _TOKEN:
        _fail(f"{where}: method {head.method!r} is not a token")
    for name, value in head.headers:
        if not name or not set(name) <= _LOWER_TOKEN:
            _fail(f"{where}: request field name {name!r} reached the application")
        if name in _CONNECTION_FIELDS or (name == b"te" and value.lower() != b"trailers"):
            _fail(f"{where}: connection-specific field {name!r} reached the application")
        if any(c in value for c in b"\x00\r\n"):
            _fail(f"{where}: NUL, CR or LF in the value of {name!r}")
    if sum(n == b"host" for n, _ in head.headers) > 1:
        _fail(f"{where}: several host fields")
    lengths = {v for n, v in head.headers if n == b"content-length"}
    if head.content_length is None:
        if lengths:
            _fail(f"{where}: content-length {lengths!r} but content_length None")
    elif lengths != {b"%d" % head.content_length}:
        _fail(f"{where}: content_length {head.content_length} but fields {lengths!r}")
    if end_stream and head.content_length:
        _fail(f"{where}: content-length {head.content_length} on a request without a body")
    target = head.target
    if head.method == b"CONNECT" and head.upgrade is None:
        if not target or target[:1] == b"/":
            _fail(f"{where}: CONNECT target {target!r}")
    elif not (target[:1] == b"/" or (target == b"*" and head.method == b"OPTIONS")):
        _fail(f"{where}: target {target!r} is neither origin-form nor *")
    if any(c <= 0x20 or c >= 0x7F for c in target):
        _fail(f"{where}: target {target!r} holds a control, space or non-ASCII byte")


@dataclass
class _StreamView:
    request: StreamRequest | None
    refused: bool = False
    ended: bool = False
    reset: bool = False
    body: int = 0


class _EventChecker:
    """Invariant 3 over the events of one connection."""

    def __init__(self) -> None:
        self.streams: dict[int, _StreamView] = {}
        self.highest = 0
        self.goaway_last: int | None = None
        self.ended = False  # the client's GOAWAY with an error code
        self.drained = False  # our graceful GOAWAY was sent

    def feed(self, events: list[H2Event]) -> None:
        if self.ended and events:
            _fail(f"{events[0]!r} after the client's GOAWAY ended the connection")
        for ev in events:
            if self.ended and not isinstance(ev, ConnectionEnded):
                # (more GOAWAYs in the same input may follow: the server stops at the first)
                _fail(f"{ev!r} after the client's GOAWAY ended the connection")
            if isinstance(ev, StreamRequest | StreamRefused):
                sid = ev.stream_id
                if sid in self.streams:
                    _fail(f"a second request on stream {sid}")
                if sid % 2 == 0 or sid <= self.highest:
                    _fail(f"request on stream {sid}: even, or not above {self.highest}")
                if self.goaway_last is not None and sid > self.goaway_last:
                    _fail(f"request on stream {sid} after the client's GOAWAY")
                if self.drained:
                    _fail(f"request on stream {sid} after the server's graceful GOAWAY")
                self.highest = sid
                if isinstance(ev, StreamRequest):
                    _check_head(sid, ev.head, ev.end_stream)
                    self.streams[sid] = _StreamView(ev)
                else:
                    if ev.status not in (400, 431):
                        _fail(f"stream {sid} refused with {ev.status}")
                    self.streams[sid] = _StreamView(None, refused=True)
            elif isinstance(ev, StreamData | StreamEnded):
                sid = ev.stream_id
                view = self.streams.get(sid)
                if view is None or view.request is None:
                    _fail(f"{type(ev).__name__} on stream {sid} without a request")
                if view.ended or view.reset:
                    _fail(f"{type(ev).__name__} on stream {sid} after its "
                          f"{'end' if view.ended else 'reset'}")
                length = view.request.head.content_length
                if isinstance(ev, StreamData):
                    if view.request.end_stream:
                        _fail(f"body data on stream {sid} whose request had END_STREAM")
                    if ev.flow_length < len(ev.data) or ev.flow_length > DEFAULT_FRAME_SIZE:
                        _fail(f"flow length {ev.flow_length} for {len(ev.data)} bytes")
                    view.body += len(ev.data)
                    if length is not None and view.body > length:
                        _fail(f"{view.body} body bytes on stream {sid}, content-length "
                              f"{length}")
                else:
                    view.ended = True
                    if length is not None and view.body != length:
                        _fail(f"stream {sid} ended after {view.body} body bytes, "
                              f"content-length {length}")
                    for name, value in ev.trailers:
                        if name[:1] == b":" or not set(name) <= _LOWER_TOKEN \
                                or name in _CONNECTION_FIELDS \
                                or any(c in value for c in b"\x00\r\n"):
                            _fail(f"trailer field {name!r}: {value!r} on stream {sid}")
            elif isinstance(ev, StreamReset):
                view = self.streams.get(ev.stream_id)
                if view is None:
                    _fail(f"StreamReset for stream {ev.stream_id} the application never had")
                if view.reset:
                    _fail(f"a second StreamReset for stream {ev.stream_id}")
                view.reset = True
            elif isinstance(ev, ConnectionEnded):
                if ev.error_code:
                    self.ended = True
                else:
                    self.goaway_last = self.highest
            elif not isinstance(ev, WindowOpened):  # pragma: no cover
                _fail(f"unknown event {ev!r}")


# ---------------------------------------------------------------------- output checks


@dataclass
class _ClientView:
    """What a client's bytes announced: settings, PINGs, SETTINGS frames, streams opened."""

    max_frame: int = DEFAULT_FRAME_SIZE
    max_table: int = 4096
    pings: int = 0
    settings: int = 0
    header_streams: set[int] = field(default_factory=set)
    push: bool = True


def _client_view(sent: bytes) -> _ClientView:
    view = _ClientView()
    for start, end in frame_offsets(sent):
        ftype, flags = sent[start + 3], sent[start + 4]
        sid = int.from_bytes(sent[start + 5:start + 9], "big") & MAX_WINDOW
        payload = sent[start + 9:end]
        if ftype == PING and not flags & ACK:
            view.pings += 1
        elif ftype == SETTINGS and not flags & ACK:
            view.settings += 1
            for i in range(0, len(payload) - 5, 6):
                ident, value = struct.unpack("!HI", payload[i:i + 6])
                if ident == MAX_FRAME_SIZE and value < 2**24:
                    view.max_frame = max(view.max_frame, value)
                elif ident == HEADER_TABLE_SIZE:
                    view.max_table = max(view.max_table, value)
                elif ident == ENABLE_PUSH and value == 0:
                    view.push = False
        elif ftype == HEADERS:
            view.header_streams.add(sid)
    return view


@dataclass
class _OutStream:
    state: str = "idle"  # idle, informational, final, ended, reset
    content_length: int | None = None
    data: int = 0


def _response_block(sid: int, fields: list[Header], end_stream: bool, st_: _OutStream,
                    where: str) -> None:
    pseudo_done = False
    status = None
    length = None
    for name, value in fields:
        if name[:1] == b":":
            if pseudo_done:
                _fail(f"{where}: pseudo-header {name!r} after a regular field")
            if name != b":status" or status is not None:
                _fail(f"{where}: response pseudo-header {name!r}")
            status = value
        else:
            pseudo_done = True
            if not name or not set(name) <= _LOWER_TOKEN:
                _fail(f"{where}: response field name {name!r} (RFC 9113 §8.2)")
            if name in _CONNECTION_FIELDS or name == b"te":
                _fail(f"{where}: connection-specific response field {name!r}")
            if any(c in value for c in b"\x00\r\n"):
                _fail(f"{where}: NUL, CR or LF in response field {name!r}")
            if name == b"content-length":
                if not value.isdigit():
                    _fail(f"{where}: response content-length {value!r}")
                length = int(value)
    if st_.state in ("idle", "informational"):
        if status is None or len(status) != 3 or not status.isdigit() or status[:1] == b"0":
            _fail(f"{where}: response without a valid :status ({status!r})")
        if status[:1] == b"1":
            if end_stream:
                _fail(f"{where}: informational response with END_STREAM")
            st_.state = "informational"
        else:
            if status[:1] == b"5":
                _fail(f"{where}: {status.decode()} answered to client input")
            st_.state = "final"
            st_.content_length = length
    elif st_.state == "final":
        if status is not None or not end_stream:
            _fail(f"{where}: a second header block that is not trailers with END_STREAM")
    else:
        _fail(f"{where}: HEADERS after the stream's {st_.state}")
    if end_stream:
        st_.state = "ended"


def check_h2_output(received: bytes, sent: bytes, *, complete: bool = True) -> list[Frame]:
    """Everything a server wrote on a connection, given what the client sent, is well-formed
    HTTP/2 (invariant 4); returns the frames. ``complete``: the output must end on a frame
    boundary and with no header block open (in-process); a live peer may have been cut off."""
    client = _client_view(sent)
    pos = 0
    frames: list[Frame] = []
    decoder = hpack.Decoder(max_header_list_size=1 << 24)
    decoder.max_allowed_table_size = client.max_table
    streams: dict[int, _OutStream] = {}
    block: list[Frame] = []
    block_data = b""
    settings_acks = ping_acks = 0
    last_goaway: int | None = None
    error_goaway = False
    promised: set[int] = set()
    while pos < len(received):
        if len(received) - pos < 9:
            if complete:
                _fail(f"output ends inside a frame header: {received[pos:]!r}")
            break
        length = int.from_bytes(received[pos:pos + 3], "big")
        if length > client.max_frame:
            _fail(f"server frame {len(frames)} at byte {pos}: {length} bytes, over the "
                  f"client's frame size {client.max_frame} ({received[pos:pos + 9]!r})")
        if len(received) - pos - 9 < length:
            if complete:
                _fail(f"output ends inside a frame of {length} bytes")
            break
        where = f"server frame {len(frames)} at byte {pos}"
        try:
            frame, _ = Frame.parse_frame_header(memoryview(received[pos:pos + 9]))
            frame.parse_body(memoryview(received[pos + 9:pos + 9 + length]))
        except (hyperframe.exceptions.HyperframeError, ValueError) as exc:
            _fail(f"{where} is invalid: {exc} ({received[pos:pos + 9 + length][:64]!r})")
        pos += 9 + length
        if not frames and (not isinstance(frame, SettingsFrame) or "ACK" in frame.flags):
            _fail(f"the server's first frame is {frame!r}, not SETTINGS")
        frames.append(frame)
        if error_goaway and not isinstance(frame, GoAwayFrame):
            _fail(f"{where}: {frame!r} after a GOAWAY with an error code")
        if block and not isinstance(frame, ContinuationFrame):
            _fail(f"{where}: {frame!r} inside a header block")
        sid = frame.stream_id
        if isinstance(frame, SettingsFrame):
            if "ACK" in frame.flags:
                settings_acks += 1
                if settings_acks > client.settings:
                    _fail(f"{where}: {settings_acks} SETTINGS ACKs for {client.settings} "
                          "SETTINGS frames")
            for ident, value in frame.settings.items():
                if (ident == ENABLE_PUSH and value != 0) \
                        or (ident == INITIAL_WINDOW_SIZE and value > MAX_WINDOW) \
                        or (ident == MAX_FRAME_SIZE and not 16384 <= value < 2**24):
                    _fail(f"{where}: setting {ident} = {value}")
        elif isinstance(frame, PingFrame):
            if "ACK" in frame.flags:
                ping_acks += 1
                if ping_acks > client.pings:
                    _fail(f"{where}: {ping_acks} PING ACKs for {client.pings} PINGs")
        elif isinstance(frame, GoAwayFrame):
            if frame.error_code > MAX_ERROR_CODE:
                _fail(f"{where}: GOAWAY error code {frame.error_code:#x} is not defined")
            if last_goaway is not None and frame.last_stream_id > last_goaway:
                _fail(f"{where}: GOAWAY last stream id grew from {last_goaway} to "
                      f"{frame.last_stream_id} (RFC 9113 §6.8)")
            if frame.last_stream_id % 2 == 0 and frame.last_stream_id:
                _fail(f"{where}: GOAWAY names stream {frame.last_stream_id}, not the client's")
            last_goaway = frame.last_stream_id
            error_goaway = error_goaway or frame.error_code != 0
        elif isinstance(frame, RstStreamFrame):
            if frame.error_code > MAX_ERROR_CODE:
                _fail(f"{where}: RST_STREAM error code {frame.error_code:#x} is not defined")
            streams.setdefault(sid, _OutStream()).state = "reset"
        elif isinstance(frame, PushPromiseFrame):
            if not client.push:
                _fail(f"{where}: PUSH_PROMISE though the client disabled push")
            if frame.promised_stream_id % 2:
                _fail(f"{where}: promised stream {frame.promised_stream_id} is odd")
            promised.add(frame.promised_stream_id)
            block, block_data = [frame], frame.data
        elif isinstance(frame, HeadersFrame | ContinuationFrame | DataFrame):
            if (sid % 2 == 0 and sid not in promised) or (sid % 2 and
                                                         sid not in client.header_streams):
                _fail(f"{where}: {type(frame).__name__} on stream {sid}, not one the client "
                      "opened")
            out = streams.setdefault(sid, _OutStream())
            if isinstance(frame, DataFrame):
                if out.state != "final":
                    _fail(f"{where}: DATA on stream {sid} in state {out.state}")
                out.data += len(frame.data)
                if out.content_length is not None and out.data > out.content_length:
                    _fail(f"{where}: {out.data} DATA bytes on stream {sid}, content-length "
                          f"{out.content_length}")
                if "END_STREAM" in frame.flags:
                    out.state = "ended"
                continue
            if isinstance(frame, ContinuationFrame):
                if not block or block[0].stream_id != sid:
                    _fail(f"{where}: CONTINUATION outside a header block of stream {sid}")
            else:
                block, block_data = [], b""
            block.append(frame)
            block_data += frame.data
            if "END_HEADERS" in frame.flags:
                try:
                    fields = [(bytes(n), bytes(v)) for n, v in
                              decoder.decode(block_data, raw=True)]
                except hpack.exceptions.HPACKError as exc:
                    _fail(f"{where}: the server's header block does not decode: {exc!r}")
                first = block[0]
                if isinstance(first, PushPromiseFrame):
                    pass
                else:
                    _response_block(sid, fields, "END_STREAM" in first.flags, out, where)
                block, block_data = [], b""
    if complete and block:
        _fail("the server left a header block unfinished")
    return frames


def check_h2_server_output(sent: bytes, received: bytes) -> None:
    """What a live server sent back (``received``) on an h2c prior-knowledge connection where
    the client wrote ``sent``: well-formed HTTP/2 (SETTINGS first, valid frames, header blocks
    that decode, no 5xx :status on any stream, GOAWAY codes RFC 9113 defines, no frame after
    a GOAWAY with an error code). When ``sent`` does not start with the preface the server may
    also answer as HTTP/1.1, but not with a 5xx other than 505 (the answer to a request line
    such as ``PRI * HTTP/2.0``). A last frame cut short is tolerated (the reader may have
    stopped). Raises :class:`InvariantViolation`."""
    if not received:
        return
    if not sent.startswith(PREFACE) and received.startswith(b"HTTP/1."):
        status = received[9:12]
        if status[:1] == b"5" and status != b"505":
            _fail(f"HTTP/1.1 {status.decode('latin-1')} answered to client input")
        return
    check_h2_output(received, sent, complete=False)


# ---------------------------------------------------------------------- the driver


@dataclass
class H2Outcome:
    """What the protocol made of a connection: its events, the connection error if any, all it
    wrote, and whether the client's GOAWAY ended it (``stopped``)."""

    events: list[H2Event] = field(default_factory=list)
    error: ProtocolError | None = None
    output: bytes = b""
    stopped: bool = False
    frames: list[Frame] = field(default_factory=list)
    refused: int = 0  # streams refused over the concurrency limit
    malformed: int = 0  # malformed requests reset

    @property
    def goaway_code(self) -> int | None:
        """The error code of the server's last GOAWAY."""
        for frame in reversed(self.frames):
            if isinstance(frame, GoAwayFrame):
                return int(frame.error_code)
        return None

    @property
    def verdict(self) -> tuple[bool, int | None]:
        """(refused with a connection error, its GOAWAY code)."""
        return self.error is not None, self.goaway_code if self.error is not None else None


def run_h2(data: bytes, pieces: Sequence[bytes] | None = None, *,
           respond: Respond = "deferred", drain_at: int | None = None) -> H2Outcome:
    """Feed ``data`` (whole or as ``pieces``) to a fresh :class:`HTTP2Protocol` started like a
    prior-knowledge connection, answering requests after each piece (``eager``, as the server
    does) or once all the input is in (``deferred``), then close as on the client's EOF.
    ``drain_at``: before that piece, a graceful shutdown begins (GOAWAY, the streams in
    flight finish, new ones are refused). Checks invariants 1-4 and 6; returns the outcome."""
    if pieces is None:
        pieces = [data]
    if b"".join(pieces) != data:
        raise ValueError("pieces do not add up to data")
    proto = HTTP2Protocol()
    proto.initiate()
    output = bytearray(proto.data_to_send())
    responder = _Responder(proto)
    checker = _EventChecker()
    out = H2Outcome()
    fed = 0
    deferred = respond == "deferred"
    for i, piece in enumerate(pieces):
        if i == drain_at:  # _H2Connection._on_drain
            responder.closing = checker.drained = True
            proto.goaway()
            if not responder.streams:
                break
        if not piece:
            continue
        fed += len(piece)
        try:
            events = proto.receive_data(piece)
        except ProtocolError as exc:
            out.error = exc
            break
        except Exception as exc:  # invariant 1
            raise InvariantViolation(
                f"receive_data raised {type(exc).__name__}: {exc}") from exc
        checker.feed(events)
        out.events += events
        if not responder.handle(events, deferred=deferred):
            out.stopped = True
        elif not deferred:
            responder.run()
        if len(output) + proto.pending_output > AMPLIFICATION * fed + OUTPUT_BASE:
            _fail(f"{len(output) + proto.pending_output} bytes written or queued after {fed} "
                  "bytes of input")
        output += proto.data_to_send()
        if out.stopped or (responder.closing and not responder.streams):
            break
    if out.error is not None:
        output += proto.data_to_send()
        frames = check_h2_output(bytes(output), data)
        # (RFC 9113 §3.4: the GOAWAY may be omitted after an invalid preface)
        if data[:len(PREFACE)] == PREFACE and (
                not frames or not isinstance(frames[-1], GoAwayFrame)
                or not frames[-1].error_code):
            _fail(f"connection error ({out.error.message}) but the output does not end with "
                  f"a GOAWAY with an error code: {frames[-3:]!r}")
        if not proto.closed:
            _fail("connection error but the protocol is not closed")
        if proto.receive_data(PingFrame(0, opaque_data=b"after!!!").serialize()) \
                or proto.data_to_send():
            _fail("the protocol still answers after a connection error")
    else:
        if deferred and not out.stopped:
            responder.run()
        responder.end_of_input()
        output += proto.data_to_send()
    if responder.steps > 64 * (len(pieces) + 1) * (len(out.events) + 1):
        _fail(f"the responder took {responder.steps} steps")  # pragma: no cover
    if len(output) > AMPLIFICATION * len(data) + OUTPUT_BASE:
        _fail(f"{len(output)} bytes of output for {len(data)} bytes of input")
    out.output = bytes(output)
    out.refused = proto.refused
    out.malformed = proto.malformed
    out.frames = check_h2_output(out.output, data)
    return out


def _comparable(a: H2Outcome, b: H2Outcome) -> tuple[list[H2Event], list[H2Event]]:
    """The two runs' events, without what depends on when the protocol reset streams of its
    own (invariant 5): a stream over the concurrency limit is refused (no event) or not
    depending on whether the application had finished earlier streams when it arrived; the
    frames of a malformed request's stream that come in the same input (WINDOW_UPDATE …) are
    seen by h2 on an open stream."""
    if not (a.refused or b.refused or a.malformed or b.malformed):
        return a.events, b.events

    def opened(o: H2Outcome) -> set[int]:
        return {e.stream_id for e in o.events if isinstance(e, StreamRequest | StreamRefused)}

    both = opened(a) & opened(b)

    def kept(o: H2Outcome) -> list[H2Event]:
        return [e for e in o.events
                if isinstance(e, ConnectionEnded) or e.stream_id in both
                or (isinstance(e, WindowOpened) and e.stream_id == 0)]

    return kept(a), kept(b)


def _runs(data: bytes, cuts: Sequence[int], byte_by_byte: bool | None
          ) -> dict[str, list[bytes]]:
    runs = {"whole": [data]}
    if cuts:
        runs[f"cut at {list(cuts)}"] = feed_splits(data, cuts)
    frames = [start for start, _ in frame_offsets(data)]
    if len(frames) > 1:
        runs["frame by frame"] = feed_splits(data, frames)
    if byte_by_byte or (byte_by_byte is None and len(data) <= _BYTE_BY_BYTE_MAX):
        runs["byte by byte"] = [data[i:i + 1] for i in range(len(data))]
    return runs


def check_h2_parse(data: bytes, cuts: Sequence[int] = (), *,
                   byte_by_byte: bool | None = None) -> None:
    """Invariants 1-6 on ``data``: fed whole, at ``cuts``, one frame per call and
    (``byte_by_byte``; by default for inputs up to 1 KiB) one byte at a time; answered after
    all the input (the runs whose events and verdicts must agree) and, except byte by byte,
    after each piece (as the server does), once more frame by frame with a graceful shutdown
    half way. Raises :class:`InvariantViolation`."""
    runs = _runs(data, cuts, byte_by_byte)
    outcomes = {how: run_h2(data, pieces) for how, pieces in runs.items()}
    for how, pieces in runs.items():
        if how != "byte by byte":
            run_h2(data, pieces, respond="eager")
    if "frame by frame" in runs:  # a graceful shutdown half way
        pieces = runs["frame by frame"]
        run_h2(data, pieces, respond="eager", drain_at=len(pieces) // 2)
    goaway = next((end for start, end in frame_offsets(data) if data[start + 3] == GOAWAY),
                  None)
    if goaway is not None and goaway < len(data):
        # Once the client's GOAWAY ends the connection the server reads no more, but what
        # came with it in the same read is still parsed (and may be a connection error):
        # whole and split runs are compared on the input up to the GOAWAY.
        data = data[:goaway]
        runs = _runs(data, [c for c in cuts if c < len(data)], byte_by_byte)
        outcomes = {how: run_h2(data, pieces) for how, pieces in runs.items()}
    whole = outcomes.pop("whole")
    for how, other in outcomes.items():
        same = other.verdict == whole.verdict if data[:len(PREFACE)] == PREFACE \
            else (other.error is None) == (whole.error is None)  # a wrong preface: no GOAWAY
        if (not same or other.stopped != whole.stopped) and (
                whole.refused or whole.malformed or other.refused or other.malformed):
            continue  # (5, the exception; whether streams remain when the client's GOAWAY
            # comes, which decides whether the server reads on, depends on it too)
        if not same or other.stopped != whole.stopped:
            _fail(f"verdict differs, whole: {whole.error!r} code {whole.goaway_code} "
                  f"stopped={whole.stopped}; {how}: {other.error!r} code {other.goaway_code} "
                  f"stopped={other.stopped}")
        want, got = _comparable(whole, other)
        if whole.error is not None:
            # receive_data drops the events of the call that fails: each run has the events
            # up to the piece holding the error, one a prefix of the other
            n = min(len(want), len(got))
            want, got = want[:n], got[:n]
        if got != want:
            first = next((i for i, (x, y) in enumerate(zip(want, got, strict=False)) if x != y),
                         min(len(want), len(got)))
            _fail(f"events differ from event {first}, whole: {want[first:first + 3]!r}, "
                  f"{how}: {got[first:first + 3]!r}")


def check_h2_valid(conn: GeneratedConnection, cuts: Sequence[int] = ()) -> None:
    """A generated valid connection is accepted, whole, at ``cuts`` and byte by byte (short
    ones), and every request reaches the application exactly as sent: its head, its body, its
    trailers; nothing refused or reset."""
    for how, pieces in _runs(conn.raw, cuts, None).items():
        outcome = run_h2(conn.raw, pieces)
        if outcome.error is not None or outcome.stopped:
            _fail(f"valid connection refused ({how}): {outcome.error!r}")
        heads: dict[int, StreamRequest] = {}
        bodies: dict[int, bytes] = {}
        ends: dict[int, list[Header]] = {}
        for ev in outcome.events:
            if isinstance(ev, StreamRequest):
                heads[ev.stream_id] = ev
            elif isinstance(ev, StreamData):
                bodies[ev.stream_id] = bodies.get(ev.stream_id, b"") + ev.data
            elif isinstance(ev, StreamEnded):
                ends[ev.stream_id] = ev.trailers
            elif not isinstance(ev, WindowOpened):
                _fail(f"unexpected event for a valid connection ({how}): {ev!r}")
        if list(heads) != [r.stream_id for r in conn.requests]:
            _fail(f"streams {list(heads)} opened ({how}), sent "
                  f"{[r.stream_id for r in conn.requests]}")
        for r in conn.requests:
            ev = heads[r.stream_id]
            got = (ev.head, ev.end_stream, bodies.get(r.stream_id, b""),
                   ends.get(r.stream_id))
            want = (r.head, r.end_stream, r.body, list(r.trailers))
            if got != want:
                diff = [(w, g) for w, g in zip(want, got, strict=True) if w != g]
                _fail(f"stream {r.stream_id} ({how}) differs from what was sent, "
                      f"(sent, got): {diff!r}")
