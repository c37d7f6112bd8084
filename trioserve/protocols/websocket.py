"""The WebSocket protocol, sans-IO: the opening handshake (RFC 6455 §4 over HTTP/1.1, RFC 8441
over HTTP/2), permessage-deflate (RFC 7692) and frames in, whole messages out.

Framing, masking rules, UTF-8 validation and close-frame checks are wsproto's frame layer
(``wsproto.connection.Connection``); the handshake is done here because the server has already
parsed the request (HTTP/1.1 or HTTP/2) and must not parse it again.

- :func:`check_handshake` validates an upgrade request's head and returns an :class:`Offer`, or
  raises :class:`HandshakeError` with the status and reason to answer with.
- :func:`accept_headers` builds the response fields and negotiates permessage-deflate.
- :class:`WebSocketProtocol` turns received bytes into :class:`Message`, :class:`Pong` and
  :class:`Closed` events (pings are answered by itself), and messages to send into bytes.

No I/O and no Trio here: bytes in, events out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Ping,
    TextMessage,
)
from wsproto.events import Pong as WsprotoPong
from wsproto.extensions import Extension, PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits
from wsproto.utilities import LocalProtocolError

from .events import RequestHead

__all__ = [
    "Closed",
    "DeflateOptions",
    "HandshakeError",
    "Message",
    "Offer",
    "Pong",
    "WebSocketProtocol",
    "accept_headers",
    "check_handshake",
    "is_websocket_upgrade",
]

Headers = list[tuple[bytes, bytes]]

_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_TOKEN_RE: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Fields the server owns in a handshake response: an app's own copies are dropped.
_SERVER_FIELDS: Final = frozenset({b"sec-websocket-accept", b"sec-websocket-extensions",
                                   b"upgrade", b"connection", b"content-length",
                                   b"transfer-encoding"})


class HandshakeError(Exception):
    """The request asked for a WebSocket but the handshake is invalid. ``status`` (400) and
    ``message`` are the answer; ``headers`` go with it (``Sec-WebSocket-Version: 13`` when the
    version is not one the server speaks, as RFC 6455 §4.4 asks)."""

    def __init__(self, message: str, status: int = 400, headers: Headers | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.headers = headers or []


@dataclass(frozen=True, slots=True)
class Offer:
    """A valid opening handshake. ``key`` is ``Sec-WebSocket-Key`` (``None`` over HTTP/2,
    which has none); ``subprotocols`` and ``extensions`` are what the client offered, in order."""

    key: bytes | None
    subprotocols: tuple[str, ...]
    extensions: tuple[str, ...]

    @property
    def http2(self) -> bool:
        return self.key is None


@dataclass(frozen=True, slots=True)
class DeflateOptions:
    """permessage-deflate as the server accepts it: ``enabled``; ``max_window_bits`` (9-15) caps
    the server's compression window (smaller: less memory per connection, worse ratio);
    ``level`` is zlib's compression level (1 fastest - 9 smallest)."""

    enabled: bool = True
    max_window_bits: int = 15
    level: int = 6


def _tokens(values: list[bytes]) -> list[bytes]:
    return [t.strip().lower() for v in values for t in v.split(b",") if t.strip()]


def is_websocket_upgrade(upgrade: bytes) -> bool:
    """Whether an ``Upgrade`` value (or HTTP/2 ``:protocol``) names ``websocket``."""
    return b"websocket" in _tokens([upgrade])


def check_handshake(head: RequestHead) -> Offer:
    """Validate a WebSocket opening handshake: an HTTP/1.1 ``GET`` with ``Upgrade: websocket``
    (RFC 6455 §4.2.1), or an HTTP/2 extended ``CONNECT`` with ``:protocol websocket``
    (RFC 8441 §5; ``head.upgrade`` is the ``:protocol`` then).

    Raises :class:`HandshakeError` naming what is wrong: the method or version, a missing or
    invalid ``Sec-WebSocket-Key``, a ``Sec-WebSocket-Version`` other than 13, an invalid
    ``Sec-WebSocket-Protocol``."""
    http2 = head.http_version == b"2"
    if http2:
        if head.method != b"CONNECT":
            raise HandshakeError("a WebSocket over HTTP/2 is an extended CONNECT request")
    elif head.method != b"GET":
        raise HandshakeError(f"a WebSocket handshake must be a GET request, not "
                             f"{head.method.decode('ascii', 'replace')}")
    elif head.http_version != b"1.1":
        raise HandshakeError("a WebSocket handshake needs HTTP/1.1")
    elif head.has_body:
        raise HandshakeError("a WebSocket handshake has no body")
    keys: list[bytes] = []
    versions: list[bytes] = []
    protocols: list[bytes] = []
    extensions: list[bytes] = []
    for name, value in head.headers:
        if name[:14] != b"sec-websocket-":
            continue
        if name == b"sec-websocket-key":
            keys.append(value)
        elif name == b"sec-websocket-version":
            versions.append(value)
        elif name == b"sec-websocket-protocol":
            protocols.append(value)
        elif name == b"sec-websocket-extensions":
            extensions.append(value)
    if len(versions) != 1 or versions[0].strip() != b"13":
        shown = b", ".join(versions).decode("latin-1") or "none"
        raise HandshakeError(f"unsupported Sec-WebSocket-Version ({shown}): this server speaks "
                             "version 13", 400, [(b"sec-websocket-version", b"13")])
    key: bytes | None = None
    if not http2:
        if len(keys) != 1:
            raise HandshakeError("missing Sec-WebSocket-Key" if not keys
                                 else "more than one Sec-WebSocket-Key")
        key = keys[0].strip()
        try:
            valid = len(base64.b64decode(key, validate=True)) == 16
        except (binascii.Error, ValueError):
            valid = False
        if not valid:
            raise HandshakeError("invalid Sec-WebSocket-Key (must be 16 bytes, base64-encoded)")
    subprotocols = []
    for token in (t.strip() for v in protocols for t in v.split(b",") if t.strip()):
        text = token.decode("latin-1")
        if not _TOKEN_RE.fullmatch(text):
            raise HandshakeError(f"invalid Sec-WebSocket-Protocol value {text[:100]!r}")
        subprotocols.append(text)
    offers = tuple(o.strip().decode("latin-1") for v in extensions for o in v.split(b",")
                   if o.strip())
    return Offer(key, tuple(subprotocols), offers)


class _BoundedDeflate(PerMessageDeflate):
    """wsproto's permessage-deflate with a bound on what one message inflates to, so a small
    compressed frame cannot expand into gigabytes before the message size check sees it."""

    def __init__(self, max_message_size: int | None, max_window_bits: int,
                 level: int = 6) -> None:
        super().__init__(server_max_window_bits=max_window_bits)
        self.max_message_size = max_message_size
        self.level = level
        self.inflated = 0  # bytes of the current message so far

    def frame_outbound(self, proto: FrameDecoder | FrameProtocol, opcode: Opcode,
                       rsv: RsvBits, data: bytes, fin: bool) -> tuple[RsvBits, bytes]:
        if self._compressor is None and self._compressible_opcode(opcode):
            # zlib's memLevel 8 is the faster with a large window and up to twice slower with a
            # small one, where 5 is (measured on Autobahn's data, 128 KiB messages).
            bits = self.server_max_window_bits
            self._compressor = zlib.compressobj(
                self.level, zlib.DEFLATED, -int(bits), memLevel=8 if bits >= 12 else 5)
        return super().frame_outbound(proto, opcode, rsv, data, fin)

    def frame_inbound_payload_data(self, proto: FrameDecoder | FrameProtocol,
                                   data: bytes) -> bytes | CloseReason:
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        assert self._decompressor is not None
        limit = self.max_message_size
        try:
            if limit is None:
                out = self._decompressor.decompress(bytes(data))
            else:
                budget = max(limit - self.inflated, 0)
                out = self._decompressor.decompress(bytes(data), budget + 1)
                if len(out) > budget:
                    return CloseReason.MESSAGE_TOO_BIG
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self.inflated += len(out)
        return out

    def frame_inbound_header(self, proto: FrameDecoder | FrameProtocol, opcode: Opcode,
                             rsv: RsvBits, payload_length: int) -> CloseReason | RsvBits:
        if opcode.iscontrol():
            # A control frame may sit between a message's fragments (RFC 6455 §5.4); wsproto
            # would take its end for the message's and stop inflating the rest.
            if rsv.rsv1:
                return CloseReason.PROTOCOL_ERROR
            self._inbound_is_compressible = False
            return RsvBits(True, False, False)
        return super().frame_inbound_header(proto, opcode, rsv, payload_length)

    def frame_inbound_complete(self, proto: FrameDecoder | FrameProtocol,
                               fin: bool) -> bytes | CloseReason | None:
        if not self._inbound_is_compressible:
            return None  # a control frame: the message's state stays as it is
        if fin:
            self.inflated = 0
        return super().frame_inbound_complete(proto, fin)


def accept_headers(offer: Offer, subprotocol: str | None, headers: Headers | None,
                   deflate: DeflateOptions, max_message_size: int | None
                   ) -> tuple[Headers, list[PerMessageDeflate]]:
    """The fields of the response that accepts ``offer`` (101 over HTTP/1.1 — the caller adds
    ``Upgrade``/``Connection`` — or 200 over HTTP/2), and the extensions now in force.

    ``subprotocol`` must be one the client offered (else :class:`ValueError`). The first
    permessage-deflate offer the server can honour is accepted when ``deflate.enabled``, with
    the server's window at most ``deflate.max_window_bits``; offers with parameters it does not
    understand are declined (RFC 7692 §5). The app's
    ``headers`` are added, except the fields the handshake owns."""
    out: Headers = []
    if offer.key is not None:
        accept = base64.b64encode(hashlib.sha1(offer.key + _GUID).digest())
        out.append((b"sec-websocket-accept", accept))
    if subprotocol is not None:
        if subprotocol not in offer.subprotocols:
            offered = ", ".join(offer.subprotocols) or "none"
            raise ValueError(f"WebSocket subprotocol {subprotocol!r} was not offered by the "
                             f"client (offered: {offered})")
        out.append((b"sec-websocket-protocol", subprotocol.encode("latin-1")))
    extensions: list[PerMessageDeflate] = []
    if deflate.enabled:
        for text in offer.extensions:
            name, _, params = text.partition(";")
            if name.strip().lower() != "permessage-deflate":
                continue
            normalised = _deflate_offer(params, deflate.max_window_bits)
            if normalised is None:
                continue
            ext = _BoundedDeflate(max_message_size, deflate.max_window_bits, deflate.level)
            try:
                reply = ext.accept(normalised)
            except ValueError:
                reply = None
            if reply is None or reply is False:
                continue
            value = "permessage-deflate" + (f"; {reply}" if isinstance(reply, str) and reply
                                            else "")
            if deflate.max_window_bits < 15 and "server_max_window_bits" not in value:
                ext.server_max_window_bits = deflate.max_window_bits
                value += f"; server_max_window_bits={deflate.max_window_bits}"
            out.append((b"sec-websocket-extensions", value.encode("latin-1")))
            extensions.append(ext)
            break
    for field_name, field_value in headers or ():
        if field_name.lower() not in _SERVER_FIELDS:
            out.append((field_name, field_value))
    return out, extensions


_DEFLATE_PARAMS: Final = {"server_no_context_takeover", "client_no_context_takeover",
                          "server_max_window_bits", "client_max_window_bits"}


def _deflate_offer(params: str, max_window_bits: int) -> str | None:
    """A permessage-deflate offer's parameters, normalised for wsproto (quotes removed, the
    server window lowered to ``max_window_bits`` when the client allows more), or ``None`` to
    decline it. RFC 7692 §7: only the four defined parameters, each at most once, window
    bits 9-15 (zlib has no raw 8-bit window; a bare ``client_max_window_bits`` is allowed)."""
    seen = set()
    out = ["permessage-deflate"]
    for part in params.split(";"):
        part = part.strip()
        if not part:
            continue
        name, eq, value = part.partition("=")
        name = name.strip().lower()
        if name not in _DEFLATE_PARAMS or name in seen:
            return None
        seen.add(name)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if name.endswith("no_context_takeover"):
            if eq:
                return None
            out.append(name)
        elif eq or name == "server_max_window_bits":
            if not (value.isascii() and value.isdigit()) or value != str(int(value)) \
                    or not 9 <= int(value) <= 15:
                return None
            bits = int(value)
            if name == "server_max_window_bits":
                bits = min(bits, max_window_bits)
            out.append(f"{name}={bits}")
        else:
            out.append(name)
    return "; ".join(out)


# ------------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Message:
    """A whole data message: ``str`` for a text message, ``bytes`` for a binary one."""

    data: str | bytes


@dataclass(frozen=True, slots=True)
class Pong:
    """The peer answered a ping (or sent an unsolicited pong)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Closed:
    """The WebSocket is closed for receiving: the peer sent a close frame (``code``, ``reason``
    as sent; 1005 for none), the connection ended without one (1006), or the peer broke the
    protocol (``failed``: the server's close frame with ``code`` is already queued)."""

    code: int
    reason: str
    failed: bool = False


WsEvent = Message | Pong | Closed


class _SizeGuard(Extension):
    """Not negotiated, always on: refuses (1009) an uncompressed data frame as soon as its
    header declares more than the message may hold, instead of waiting for the bytes.
    Compressed messages are bounded by :class:`_BoundedDeflate` as they inflate."""

    name = "trioserve-size-guard"

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._declared = 0  # the message's finished frames
        self._frame = 0  # the frame being read (its header may be parsed more than once)
        self._compressed = False

    def enabled(self) -> bool:
        return True

    def offer(self) -> bool:  # never offered: servers do not offer extensions
        return False

    def frame_inbound_header(self, proto: FrameDecoder | FrameProtocol, opcode: Opcode,
                             rsv: RsvBits, payload_length: int) -> CloseReason | RsvBits:
        self._frame = 0
        if not opcode.iscontrol():
            if opcode is not Opcode.CONTINUATION:
                self._declared = 0
                self._compressed = rsv.rsv1
            if not self._compressed:
                if self._declared + payload_length > self.limit:
                    return CloseReason.MESSAGE_TOO_BIG
                self._frame = payload_length
        return RsvBits(False, False, False)

    def frame_inbound_complete(self, proto: FrameDecoder | FrameProtocol,
                               fin: bool) -> bytes | CloseReason | None:
        self._declared += self._frame
        self._frame = 0
        return None


class WebSocketProtocol:
    """One WebSocket connection's frames, server side, after the opening handshake.

    :meth:`feed` takes bytes (``b""`` for the end of the connection); :meth:`events` then
    yields what they hold, parsing lazily — one message at a time, so a consumer that stops
    between events holds at most one message, whatever arrived. Pongs for pings and the reply
    to the peer's close are queued by the protocol itself. :meth:`receive_data` is both at once.
    :meth:`send_message`, :meth:`send_ping` and :meth:`send_close` queue frames;
    :meth:`data_to_send` takes them.

    Messages larger than ``max_message_size`` (bytes, or characters' UTF-8 bytes; after
    decompression) fail the connection with close code 1009, from the frame header when it
    declares too much. Errors from the peer (an unmasked frame 1002, invalid UTF-8 1007 …) fail
    it with wsproto's code. After :class:`Closed`, no more events come.
    """

    __slots__ = ("_eof", "_out", "_parts", "_size", "_ws", "close_received", "close_sent",
                 "finished", "max_message_size")

    def __init__(self, extensions: list[PerMessageDeflate], max_message_size: int | None
                 ) -> None:
        exts: list[Extension] = list(extensions)
        if max_message_size is not None:
            exts.append(_SizeGuard(max_message_size))
        self._ws = Connection(ConnectionType.SERVER, exts)
        self.max_message_size = max_message_size
        self._parts: bytearray | None = None  # the message so far (text as UTF-8)
        self._size = 0
        self._out = bytearray()
        self._eof = False
        self.close_sent = False
        self.close_received = False
        self.finished = False  # a Closed event was returned: nothing more is received

    @property
    def can_send(self) -> bool:
        """Data messages may be sent: no close frame sent yet, and the peer's close not yet
        answered."""
        return not self.close_sent and self._ws.state is ConnectionState.OPEN

    def receive_data(self, data: bytes) -> list[WsEvent]:
        """Every event for ``data`` from the peer (``b""``: the connection ended)."""
        self.feed(data)
        return list(self.events())

    def feed(self, data: bytes) -> None:
        """Bytes from the peer (``b""``: the connection ended); :meth:`events` parses them."""
        if self.finished:
            return
        if not data:
            self._eof = True
        else:
            self._ws.receive_data(data)

    def events(self) -> Iterator[WsEvent]:
        """The events of the bytes fed so far, parsed as they are taken."""
        if self.finished:
            return
        limit = self.max_message_size
        for ev in self._ws.events():
            if isinstance(ev, TextMessage | BytesMessage):
                payload: str | bytes = (ev.data if isinstance(ev.data, str)
                                        else bytes(ev.data))
                self._size += (len(payload) if isinstance(payload, bytes)
                               else len(payload.encode("utf-8")))
                if limit is not None and self._size > limit:
                    yield self._fail(CloseReason.MESSAGE_TOO_BIG,
                                     f"message larger than {limit} bytes")
                    return
                if ev.message_finished:
                    buf = self._parts
                    if buf is not None:
                        # One buffer per message: many tiny fragments cost their bytes, not
                        # an object each.
                        joined: str | bytes
                        if isinstance(payload, str):
                            joined = buf.decode("utf-8") + payload
                        else:
                            buf += payload
                            joined = bytes(buf)
                        self._parts = None
                    else:
                        joined = payload
                    self._size = 0
                    yield Message(joined)
                elif payload:
                    if self._parts is None:
                        self._parts = bytearray()
                    self._parts += (payload.encode("utf-8") if isinstance(payload, str)
                                    else payload)
            elif isinstance(ev, Ping):
                if self._ws.state is ConnectionState.OPEN:
                    self._out += self._ws.send(ev.response())
            elif isinstance(ev, WsprotoPong):
                yield Pong(bytes(ev.payload))
            elif isinstance(ev, CloseConnection):
                state = self._ws.state
                if state is ConnectionState.REMOTE_CLOSING:
                    # The peer closes first: echo its code (RFC 6455 §5.5.1).
                    self._out += self._ws.send(CloseConnection(ev.code, ev.reason or None))
                    self.close_sent = True
                elif state is not ConnectionState.CLOSED:
                    # wsproto reports a frame it could not parse as a close it did not receive.
                    yield self._fail(ev.code, ev.reason or "")
                    return
                self.close_received = True
                self.finished = True
                yield Closed(int(ev.code), ev.reason or "")
                return
        if self._eof and not self.finished:
            self.finished = True
            yield Closed(1006, "the connection ended without a close frame")

    def _fail(self, code: int, reason: str) -> Closed:
        """Fail the connection (RFC 6455 §7.1.7): queue our close frame unless one was sent."""
        if not self.close_sent and self._ws.state is ConnectionState.OPEN:
            self._out += self._ws.send(CloseConnection(code, reason[:120] or None))
            self.close_sent = True
        self.finished = True
        return Closed(code, reason, failed=True)

    def send_message(self, data: str | bytes) -> None:
        """Queue a whole message. Raises :class:`RuntimeError` once a close frame was sent or
        received (the caller reports the disconnect)."""
        if not self.can_send:
            raise RuntimeError("the WebSocket is closing")
        if isinstance(data, str):
            self._out += self._ws.send(TextMessage(data=data))
        else:
            self._out += self._ws.send(BytesMessage(data=data))

    def send_ping(self, payload: bytes = b"") -> None:
        """Queue a ping (ignored once closing)."""
        if self.can_send:
            self._out += self._ws.send(Ping(payload))

    def send_close(self, code: int = 1000, reason: str = "") -> None:
        """Queue a close frame (once; later calls do nothing). ``code`` 1000-4999 except the
        local-only ones; ``reason`` at most 123 UTF-8 bytes (longer is truncated). Raises
        :class:`ValueError` for an invalid code."""
        if not (code == 1000 or 1001 <= code <= 1003 or 1007 <= code <= 1014
                or 3000 <= code <= 4999):
            raise ValueError(f"invalid WebSocket close code {code!r} (1000-1003, 1007-1014 or "
                             "3000-4999)")
        if self.close_sent or self._ws.state not in (ConnectionState.OPEN,
                                                     ConnectionState.REMOTE_CLOSING):
            return
        try:
            self._out += self._ws.send(CloseConnection(code, reason or None))
        except LocalProtocolError:  # pragma: no cover - guarded by the state check
            return
        self.close_sent = True

    @property
    def has_output(self) -> bool:
        """Frames are queued (:meth:`data_to_send` would return bytes)."""
        return bool(self._out)

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out
