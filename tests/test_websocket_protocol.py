"""Sans-IO tests of ``trioserve.protocols.websocket``: request heads in, handshake answers out;
bytes in, events out; messages out as bytes.

No Trio, no sockets. Client frames come from wsproto acting as the client (masked, optionally
compressed with a negotiated permessage-deflate) or are built by hand with ``struct`` when they
must be malformed. What the server sends is parsed back by hand (:func:`parse_frames`) or by a
wsproto client. References are to RFC 6455 (WebSocket), RFC 7692 (permessage-deflate),
RFC 8441 (WebSocket over HTTP/2) and RFC 9110 (HTTP semantics).
"""

from __future__ import annotations

import base64
import struct
import time
import tracemalloc
import zlib

import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Ping,
    TextMessage,
)
from wsproto.events import Pong as WsprotoPong
from wsproto.extensions import PerMessageDeflate

from trioserve.protocols.events import RequestHead
from trioserve.protocols.websocket import (
    Closed,
    DeflateOptions,
    HandshakeError,
    Message,
    Offer,
    Pong,
    WebSocketProtocol,
    accept_headers,
    check_handshake,
    is_websocket_upgrade,
)

# --------------------------------------------------------------------------------- helpers

RFC_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3
RFC_ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA
RSV1, RSV2, RSV3 = 0x40, 0x20, 0x10
MASK_KEY = b"\x37\xfa\x21\x3d"
VERSION_HEADER = [(b"sec-websocket-version", b"13")]


def make_head(headers: list[tuple[bytes, bytes]], *, method: bytes = b"GET",
              version: bytes = b"1.1", upgrade: bytes | None = b"websocket") -> RequestHead:
    return RequestHead(method=method, target=b"/chat", http_version=version,
                       headers=list(headers), keep_alive=True, expects_continue=False,
                       content_length=None, chunked=False, upgrade=upgrade)


def ws_head(*extra: tuple[bytes, bytes], key: bytes | None = RFC_KEY,
            version_field: bytes | None = b"13", method: bytes = b"GET",
            version: bytes = b"1.1") -> RequestHead:
    """An HTTP/1.1 upgrade request: Host, Upgrade, Connection, the key and version, ``extra``."""
    headers = [(b"host", b"server.example.com"), (b"upgrade", b"websocket"),
               (b"connection", b"Upgrade")]
    if key is not None:
        headers.append((b"sec-websocket-key", key))
    if version_field is not None:
        headers.append((b"sec-websocket-version", version_field))
    return make_head([*headers, *extra], method=method, version=version)


def h2_head(*extra: tuple[bytes, bytes], method: bytes = b"CONNECT",
            version_field: bytes | None = b"13") -> RequestHead:
    """An HTTP/2 extended CONNECT (RFC 8441 §5): ``:protocol`` is ``head.upgrade``."""
    headers = [] if version_field is None else [(b"sec-websocket-version", version_field)]
    return make_head([*headers, *extra], method=method, version=b"2")


def offer_of(*extensions: str) -> Offer:
    """A valid HTTP/1.1 offer with these ``Sec-WebSocket-Extensions`` values, one field each."""
    return check_handshake(ws_head(*((b"sec-websocket-extensions", e.encode("latin-1"))
                                     for e in extensions)))


def extensions_field(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    values = [v for n, v in headers if n == b"sec-websocket-extensions"]
    assert len(values) <= 1
    return values[0] if values else None


def _mask(data: bytes, key: bytes) -> bytes:
    if not data:
        return b""
    stream = (key * (len(data) // 4 + 1))[:len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(len(data),
                                                                                  "big")


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0,
          mask: bool = True, length: int | None = None, key: bytes = MASK_KEY) -> bytes:
    """One client frame built by hand. ``length`` overrides the declared payload length (the
    payload given may then be only the start of it)."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | rsv | opcode
    mask_bit = 0x80 if mask else 0
    if n < 126:
        header = struct.pack("!BB", first, mask_bit | n)
    elif n < 65536:
        header = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, n)
    if not mask:
        return header + payload
    return header + key + _mask(payload, key)


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


def parse_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The server's frames as (first byte: FIN|RSV|opcode, payload). Server frames must never
    be masked (RFC 6455 §5.1)."""
    out = []
    pos = 0
    while pos < len(data):
        first, second = data[pos], data[pos + 1]
        assert not second & 0x80, "a server frame is masked"
        n = second & 0x7F
        pos += 2
        if n == 126:
            (n,) = struct.unpack_from("!H", data, pos)
            pos += 2
        elif n == 127:
            (n,) = struct.unpack_from("!Q", data, pos)
            pos += 8
        out.append((first, data[pos:pos + n]))
        pos += n
    assert pos == len(data), "truncated frame"
    return out


def close_code_of(payload: bytes) -> int:
    assert len(payload) >= 2
    return int(struct.unpack("!H", payload[:2])[0])


def assert_failed(events: list[object], code: int) -> Closed:
    """The last event fails the connection with ``code``."""
    assert events, "no event"
    closed = events[-1]
    assert isinstance(closed, Closed)
    assert closed.code == code
    assert closed.failed is True
    return closed


def assert_close_sent(proto: WebSocketProtocol, code: int) -> None:
    """Exactly one frame queued: a close frame carrying ``code``."""
    frames = parse_frames(proto.data_to_send())
    assert len(frames) == 1
    first, payload = frames[0]
    assert first == 0x80 | CLOSE
    assert close_code_of(payload) == code
    assert proto.close_sent is True
    assert proto.can_send is False


def client() -> Connection:
    return Connection(ConnectionType.CLIENT)


def server(max_message_size: int | None = None) -> WebSocketProtocol:
    return WebSocketProtocol([], max_message_size)


def deflate_pair(offer: str = "permessage-deflate", *, max_message_size: int | None = None,
                 deflate: DeflateOptions | None = None
                 ) -> tuple[Connection, WebSocketProtocol, str]:
    """Negotiate permessage-deflate through check_handshake/accept_headers; return a wsproto
    client configured from the server's answer, the server protocol and the answer."""
    headers, exts = accept_headers(offer_of(offer), None, None, deflate or DeflateOptions(),
                                   max_message_size)
    answer = extensions_field(headers)
    assert answer is not None, "permessage-deflate was declined"
    client_ext = PerMessageDeflate()
    client_ext.finalize(answer.decode("latin-1"))
    return (Connection(ConnectionType.CLIENT, extensions=[client_ext]),
            WebSocketProtocol(exts, max_message_size), answer.decode("latin-1"))


def feed_bytewise(proto: WebSocketProtocol, data: bytes) -> list[object]:
    events: list[object] = []
    for i in range(len(data)):
        events += proto.receive_data(data[i:i + 1])
    return events


def client_events(conn: Connection, data: bytes) -> list[object]:
    conn.receive_data(data)
    return list(conn.events())


# ------------------------------------------------------------------ check_handshake: valid


def test_valid_http11_handshake() -> None:
    offer = check_handshake(ws_head())
    assert offer == Offer(RFC_KEY, (), ())
    assert offer.http2 is False


def test_subprotocols_across_fields_and_commas_in_order() -> None:
    offer = check_handshake(ws_head((b"sec-websocket-protocol", b"chat, superchat"),
                                    (b"x-other", b"ignored"),
                                    (b"sec-websocket-protocol", b"v2.json.example")))
    assert offer.subprotocols == ("chat", "superchat", "v2.json.example")


def test_extension_offers_across_fields_and_commas() -> None:
    offer = check_handshake(ws_head(
        (b"sec-websocket-extensions", b"permessage-deflate; client_max_window_bits, foo"),
        (b"sec-websocket-extensions", b" permessage-deflate ")))
    assert offer.extensions == ("permessage-deflate; client_max_window_bits", "foo",
                                "permessage-deflate")


def test_version_and_key_whitespace_is_tolerated() -> None:
    offer = check_handshake(ws_head(key=b" " + RFC_KEY + b" ", version_field=b" 13 "))
    assert offer.key == RFC_KEY


@pytest.mark.parametrize(("value", "expected"), [
    (b"websocket", True), (b"WebSocket", True), (b"h2c, websocket", True),
    (b" websocket ,", True), (b"websockets", False), (b"h2c", False), (b"", False),
])
def test_is_websocket_upgrade(value: bytes, expected: bool) -> None:
    assert is_websocket_upgrade(value) is expected


# ---------------------------------------------------------------- check_handshake: invalid


def _handshake_error(head: RequestHead) -> HandshakeError:
    with pytest.raises(HandshakeError) as info:
        check_handshake(head)
    return info.value


def test_post_is_refused() -> None:
    err = _handshake_error(ws_head(method=b"POST"))
    assert err.status == 400
    assert err.headers == []
    assert "GET" in err.message and "POST" in err.message


def test_http10_is_refused() -> None:
    err = _handshake_error(ws_head(version=b"1.0"))
    assert err.status == 400
    assert err.headers == []
    assert "HTTP/1.1" in err.message


def test_missing_key() -> None:
    err = _handshake_error(ws_head(key=None))
    assert (err.status, err.headers, err.message) == (400, [], "missing Sec-WebSocket-Key")


def test_two_keys() -> None:
    err = _handshake_error(ws_head((b"sec-websocket-key", b"AAAAAAAAAAAAAAAAAAAAAA==")))
    assert (err.status, err.headers) == (400, [])
    assert err.message == "more than one Sec-WebSocket-Key"


@pytest.mark.parametrize("key", [
    b"not base64 at all!!",
    b"dGhlIHNhbXBsZSBub25jZQ",                      # padding missing
    base64.b64encode(b"x" * 15),                    # 15 bytes
    base64.b64encode(b"x" * 17),                    # 17 bytes
    b"",
    b"dGhlIHNhbXBsZS*ub25jZQ==",
])
def test_invalid_key(key: bytes) -> None:
    err = _handshake_error(ws_head(key=key))
    assert (err.status, err.headers) == (400, [])
    assert "invalid Sec-WebSocket-Key" in err.message


@pytest.mark.parametrize("fields", [
    [],
    [b"8"],
    [b"13, 8"],
    [b"13", b"13"],
    [b"13", b"8"],
    [b""],
], ids=["missing", "8", "13-comma-8", "two-13", "13-and-8", "empty"])
def test_unsupported_version(fields: list[bytes]) -> None:
    extra = [(b"sec-websocket-version", v) for v in fields]
    err = _handshake_error(ws_head(*extra, version_field=None))
    assert err.status == 400
    assert err.headers == [(b"sec-websocket-version", b"13")]  # RFC 6455 §4.4
    assert "Sec-WebSocket-Version" in err.message


@pytest.mark.parametrize("value", [b"chat, bad proto", b"ch@t", b"\"chat\"", b"chat;v=1",
                                   b"caf\xe9"])
def test_invalid_subprotocol_token(value: bytes) -> None:
    err = _handshake_error(ws_head((b"sec-websocket-protocol", value)))
    assert (err.status, err.headers) == (400, [])
    assert "invalid Sec-WebSocket-Protocol" in err.message


def test_empty_subprotocol_list_elements_are_ignored() -> None:
    offer = check_handshake(ws_head((b"sec-websocket-protocol", b"chat, , superchat,"),
                                    (b"sec-websocket-protocol", b",v2")))
    assert offer.subprotocols == ("chat", "superchat", "v2")


# ------------------------------------------------------------------- check_handshake: HTTP/2


def test_http2_extended_connect() -> None:
    offer = check_handshake(h2_head((b"sec-websocket-protocol", b"chat"),
                                    (b"sec-websocket-extensions", b"permessage-deflate")))
    assert offer == Offer(None, ("chat",), ("permessage-deflate",))
    assert offer.http2 is True


def test_http2_ignores_a_key() -> None:
    offer = check_handshake(h2_head((b"sec-websocket-key", b"garbage")))
    assert offer.key is None


@pytest.mark.parametrize("method", [b"GET", b"POST"])
def test_http2_request_that_is_not_connect(method: bytes) -> None:
    err = _handshake_error(h2_head(method=method))
    assert (err.status, err.headers) == (400, [])
    assert "CONNECT" in err.message


def test_http2_still_needs_version_13() -> None:  # RFC 8441 §5: the version field is kept
    err = _handshake_error(h2_head(version_field=None))
    assert (err.status, err.headers) == (400, VERSION_HEADER)


# ------------------------------------------------------------------- accept_headers: fields


def test_accept_value_for_rfc_example_key() -> None:
    headers, exts = accept_headers(check_handshake(ws_head()), None, None, DeflateOptions(),
                                   None)
    assert headers == [(b"sec-websocket-accept", RFC_ACCEPT)]
    assert exts == []


def test_no_accept_field_over_http2() -> None:
    headers, exts = accept_headers(check_handshake(h2_head()), None, None, DeflateOptions(),
                                   None)
    assert headers == []
    assert exts == []


def test_subprotocol_echoed() -> None:
    offer = check_handshake(ws_head((b"sec-websocket-protocol", b"chat, superchat")))
    headers, _ = accept_headers(offer, "superchat", None, DeflateOptions(), None)
    assert headers == [(b"sec-websocket-accept", RFC_ACCEPT),
                       (b"sec-websocket-protocol", b"superchat")]


@pytest.mark.parametrize("protocols", [[(b"sec-websocket-protocol", b"chat")], []])
def test_subprotocol_not_offered_raises(protocols: list[tuple[bytes, bytes]]) -> None:
    offer = check_handshake(ws_head(*protocols))
    with pytest.raises(ValueError, match="'superchat' was not offered"):
        accept_headers(offer, "superchat", None, DeflateOptions(), None)


def test_app_headers_kept_except_server_fields() -> None:
    app = [(b"X-Custom", b"1"), (b"Sec-WebSocket-Accept", b"forged"), (b"Upgrade", b"h2c"),
           (b"connection", b"close"), (b"Content-Length", b"5"),
           (b"transfer-encoding", b"chunked"), (b"Sec-WebSocket-Extensions", b"x-evil"),
           (b"set-cookie", b"a=b")]
    headers, exts = accept_headers(check_handshake(ws_head()), None, app, DeflateOptions(), None)
    assert headers == [(b"sec-websocket-accept", RFC_ACCEPT), (b"X-Custom", b"1"),
                       (b"set-cookie", b"a=b")]
    assert exts == []


# ------------------------------------------------------------ accept_headers: deflate offers


@pytest.mark.parametrize(("offer", "answer", "client_bits", "server_bits"), [
    ("permessage-deflate", b"permessage-deflate", 15, 15),
    ("permessage-deflate; client_max_window_bits",
     b"permessage-deflate; client_max_window_bits=15", 15, 15),
    ("permessage-deflate; client_max_window_bits=10",
     b"permessage-deflate; client_max_window_bits=10", 10, 15),
    ("permessage-deflate; server_max_window_bits=10",
     b"permessage-deflate; server_max_window_bits=10", 15, 10),
    ("PerMessage-Deflate", b"permessage-deflate", 15, 15),
])
def test_deflate_accepted(offer: str, answer: bytes, client_bits: int,
                          server_bits: int) -> None:
    headers, exts = accept_headers(offer_of(offer), None, None, DeflateOptions(), None)
    assert headers == [(b"sec-websocket-accept", RFC_ACCEPT),
                       (b"sec-websocket-extensions", answer)]
    assert len(exts) == 1
    ext = exts[0]
    assert isinstance(ext, PerMessageDeflate)
    assert ext.enabled()
    assert (ext.client_max_window_bits, ext.server_max_window_bits) == (client_bits,
                                                                          server_bits)


def test_deflate_no_context_takeover_accepted() -> None:
    headers, exts = accept_headers(
        offer_of("permessage-deflate; client_no_context_takeover; server_no_context_takeover"),
        None, None, DeflateOptions(), None)
    assert extensions_field(headers) == (b"permessage-deflate; client_no_context_takeover; "
                                         b"server_no_context_takeover")
    assert exts[0].client_no_context_takeover and exts[0].server_no_context_takeover


@pytest.mark.parametrize("offer", [
    "permessage-deflate; foo",
    "permessage-deflate; foo=1",
    "permessage-deflate; client_max_window_bits=10; client_max_window_bits=11",
    "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
    "permessage-deflate; client_max_window_bits=7",
    "permessage-deflate; client_max_window_bits=16",
    "permessage-deflate; server_max_window_bits=7",
    "permessage-deflate; server_max_window_bits=16",
    "permessage-deflate; server_max_window_bits",          # a value is required
    "permessage-deflate; server_max_window_bits=010",      # leading zero
    "permessage-deflate; client_max_window_bits=x",
    "permessage-deflate; server_no_context_takeover=1",    # takes no value
    # 8 is in RFC 7692's range but zlib cannot compress with a 256-byte window: declining is
    # an answer RFC 7692 §7.1.2.1/§7.1.2.2 allows.
    "permessage-deflate; server_max_window_bits=8",
    "permessage-deflate; client_max_window_bits=8",
    "x-webkit-deflate-frame",
])
def test_deflate_declined(offer: str) -> None:
    headers, exts = accept_headers(offer_of(offer), None, None, DeflateOptions(), None)
    assert headers == [(b"sec-websocket-accept", RFC_ACCEPT)]
    assert exts == []


def test_deflate_offer_with_non_ascii_digit_is_declined() -> None:
    offer = check_handshake(ws_head(
        (b"sec-websocket-extensions", b"permessage-deflate; client_max_window_bits=\xb2")))
    headers, exts = accept_headers(offer, None, None, DeflateOptions(), None)
    assert headers == [(b"sec-websocket-accept", RFC_ACCEPT)]
    assert exts == []


def test_deflate_disabled() -> None:
    headers, exts = accept_headers(offer_of("permessage-deflate"), None, None,
                                   DeflateOptions(enabled=False), None)
    assert headers == [(b"sec-websocket-accept", RFC_ACCEPT)]
    assert exts == []


def test_first_acceptable_offer_wins() -> None:
    offer = offer_of("x-webkit-deflate-frame, permessage-deflate; foo=1",
                     "permessage-deflate; client_max_window_bits=8",
                     "permessage-deflate; client_max_window_bits=12",
                     "permessage-deflate")
    headers, exts = accept_headers(offer, None, None, DeflateOptions(), None)
    assert extensions_field(headers) == b"permessage-deflate; client_max_window_bits=12"
    assert len(exts) == 1
    assert exts[0].client_max_window_bits == 12


def test_deflate_answer_sits_between_accept_and_app_headers() -> None:
    offer = check_handshake(ws_head((b"sec-websocket-protocol", b"chat"),
                                    (b"sec-websocket-extensions", b"permessage-deflate")))
    headers, _ = accept_headers(offer, "chat", [(b"x-a", b"1")], DeflateOptions(), None)
    assert headers == [(b"sec-websocket-accept", RFC_ACCEPT),
                       (b"sec-websocket-protocol", b"chat"),
                       (b"sec-websocket-extensions", b"permessage-deflate"),
                       (b"x-a", b"1")]


def test_deflate_over_http2() -> None:
    offer = check_handshake(h2_head((b"sec-websocket-extensions", b"permessage-deflate")))
    headers, exts = accept_headers(offer, None, None, DeflateOptions(), None)
    assert headers == [(b"sec-websocket-extensions", b"permessage-deflate")]
    assert len(exts) == 1


@pytest.mark.parametrize(("offer", "answer", "bits"), [
    ("permessage-deflate", b"permessage-deflate; server_max_window_bits=10", 10),
    ("permessage-deflate; server_max_window_bits=10",
     b"permessage-deflate; server_max_window_bits=10", 10),
    ("permessage-deflate; server_max_window_bits=9",
     b"permessage-deflate; server_max_window_bits=9", 9),
    ("permessage-deflate; client_max_window_bits",
     b"permessage-deflate; client_max_window_bits=15; server_max_window_bits=10", 10),
])
def test_configured_window_is_advertised(offer: str, answer: bytes, bits: int) -> None:
    headers, exts = accept_headers(offer_of(offer), None, None,
                                   DeflateOptions(max_window_bits=10), None)
    assert extensions_field(headers) == answer
    assert exts[0].server_max_window_bits == bits


def test_configured_window_is_obeyed() -> None:
    """With a 10-bit window the server never refers back more than 1024 bytes: a raw inflater
    with a 10-bit window, handing out 64 bytes at a time (so its only history is its window),
    decodes what it sends. The same data from a 15-bit compressor does not decode that way,
    which shows the test can fail."""
    block = bytes((i * 7919 + i // 3) % 251 for i in range(2000))
    data = block * 3  # repeats 2000 bytes back: out of a 1024-byte window's reach

    def inflate_10_bits(payload: bytes) -> bytes:
        inflater = zlib.decompressobj(-10)
        out, pending = b"", payload + b"\x00\x00\xff\xff"
        while pending:
            out += inflater.decompress(pending, 64)
            pending = inflater.unconsumed_tail
        return out

    def sent_payload(deflate: DeflateOptions) -> bytes:
        _, proto, _ = deflate_pair(deflate=deflate)
        proto.send_message(data)
        [(first, payload)] = parse_frames(proto.data_to_send())
        assert first == 0x80 | RSV1 | BINARY
        return payload

    small = sent_payload(DeflateOptions(max_window_bits=10))
    assert inflate_10_bits(small) == data
    large = sent_payload(DeflateOptions())
    with pytest.raises(zlib.error, match="too far back"):
        inflate_10_bits(large)


def test_client_window_bits_used_for_inflating() -> None:
    conn, proto, answer = deflate_pair("permessage-deflate; client_max_window_bits=10")
    assert answer == "permessage-deflate; client_max_window_bits=10"
    data = bytes(range(256)) * 40
    assert proto.receive_data(conn.send(BytesMessage(data))) == [Message(data)]


# --------------------------------------------------------------- WebSocketProtocol: messages


def test_text_message() -> None:
    proto = server()
    assert proto.receive_data(client().send(TextMessage("héllo ✓"))) == [Message("héllo ✓")]
    assert proto.data_to_send() == b""
    assert proto.can_send is True


def test_binary_message() -> None:
    proto = server()
    assert proto.receive_data(client().send(BytesMessage(b"\x00\xff\x01"))) == [
        Message(b"\x00\xff\x01")]


def test_several_messages_in_one_chunk_and_bytewise() -> None:
    conn = client()
    data = (conn.send(TextMessage("one")) + conn.send(BytesMessage(b"two"))
            + conn.send(TextMessage("x" * 70_000)))
    assert server().receive_data(data) == [Message("one"), Message(b"two"), Message("x" * 70_000)]
    small = data[:-70_010]
    assert feed_bytewise(server(), small) == [Message("one"), Message(b"two")]


def test_fragmented_text_message() -> None:
    conn = client()
    proto = server()
    assert proto.receive_data(conn.send(TextMessage("Hel", message_finished=False))) == []
    assert proto.receive_data(conn.send(TextMessage("lo, ", message_finished=False))) == []
    assert proto.receive_data(conn.send(TextMessage("world", message_finished=True))) == [
        Message("Hello, world")]


def test_fragmented_binary_message_by_hand_bytewise() -> None:
    data = (frame(BINARY, b"ab", fin=False) + frame(CONT, b"", fin=False)
            + frame(CONT, b"cd", fin=False) + frame(CONT, b"e"))
    assert feed_bytewise(server(), data) == [Message(b"abcde")]


def test_ping_answered_with_pong() -> None:
    proto = server()
    assert proto.receive_data(client().send(Ping(b"are you there"))) == []
    assert parse_frames(proto.data_to_send()) == [(0x80 | PONG, b"are you there")]


def test_ping_inside_fragmented_message() -> None:
    conn = client()
    data = (conn.send(TextMessage("hello ", message_finished=False)) + conn.send(Ping(b"p"))
            + conn.send(TextMessage("world")))
    proto = server()
    assert proto.receive_data(data) == [Message("hello world")]
    assert parse_frames(proto.data_to_send()) == [(0x80 | PONG, b"p")]


def test_ping_inside_fragmented_message_bytewise() -> None:
    data = (frame(BINARY, b"ab", fin=False) + frame(PING, b"1") + frame(CONT, b"cd", fin=False)
            + frame(PONG, b"2") + frame(CONT, b"ef"))
    proto = server()
    assert feed_bytewise(proto, data) == [Pong(b"2"), Message(b"abcdef")]
    assert parse_frames(proto.data_to_send()) == [(0x80 | PONG, b"1")]


def test_pong_event() -> None:
    proto = server()
    assert proto.receive_data(client().send(WsprotoPong(b"beat"))) == [Pong(b"beat")]
    assert proto.data_to_send() == b""


def test_send_ping() -> None:
    proto = server()
    proto.send_ping(b"keepalive")
    assert parse_frames(proto.data_to_send()) == [(0x80 | PING, b"keepalive")]


@pytest.mark.parametrize(("data", "expected"), [
    (frame(TEXT), Message("")),
    (frame(BINARY), Message(b"")),
    (frame(TEXT, fin=False) + frame(CONT, fin=False) + frame(CONT), Message("")),
    (frame(BINARY, fin=False) + frame(CONT), Message(b"")),
])
def test_empty_messages(data: bytes, expected: Message) -> None:
    events = server().receive_data(data)
    assert events == [expected]
    assert type(events[0].data) is type(expected.data)  # type: ignore[union-attr]


def test_utf8_split_across_fragments() -> None:
    euro = "€".encode()  # 3 bytes
    data = (frame(TEXT, b"caf\xc3", fin=False) + frame(CONT, b"\xa9 " + euro[:1], fin=False)
            + frame(CONT, euro[1:2], fin=False) + frame(CONT, euro[2:] + b"!"))
    assert server().receive_data(data) == [Message("café €!")]
    assert feed_bytewise(server(), data) == [Message("café €!")]


@pytest.mark.parametrize("data", [
    frame(TEXT, b"\xff"),
    frame(TEXT, b"caf\xc3"),                                   # truncated at the end
    frame(TEXT, b"caf\xc3", fin=False) + frame(CONT, b"("),    # bad continuation byte
    frame(TEXT, b"\xed\xa0\x80"),                              # a surrogate
    frame(TEXT, b"ok", fin=False) + frame(CONT, b"\xc0\xaf"),  # overlong
])
def test_invalid_utf8_fails_with_1007(data: bytes) -> None:
    proto = server()
    events = proto.receive_data(data)
    assert len(events) == 1
    assert_failed(events, 1007)
    assert_close_sent(proto, 1007)


def test_events_before_a_protocol_error_are_kept() -> None:
    proto = server()
    events = proto.receive_data(frame(TEXT, b"fine") + frame(TEXT, b"x", mask=False))
    assert events[0] == Message("fine")
    assert len(events) == 2
    assert_failed(events, 1002)


# --------------------------------------------------------- WebSocketProtocol: framing errors


@pytest.mark.parametrize("data", [
    pytest.param(frame(TEXT, b"hi", mask=False), id="unmasked"),
    pytest.param(frame(PING, b"hi", mask=False), id="unmasked-ping"),
    pytest.param(frame(TEXT, b"hi", rsv=RSV1), id="rsv1-without-deflate"),
    pytest.param(frame(TEXT, b"hi", rsv=RSV2), id="rsv2"),
    pytest.param(frame(BINARY, b"hi", rsv=RSV3), id="rsv3"),
    pytest.param(frame(0x3, b"hi"), id="opcode-3"),
    pytest.param(frame(0x7, b"hi"), id="opcode-7"),
    pytest.param(frame(0xB, b"hi"), id="opcode-B"),
    pytest.param(frame(0xF), id="opcode-F"),
    pytest.param(frame(PING, b"x" * 126), id="ping-126-bytes"),
    pytest.param(frame(PONG, b"x" * 126), id="pong-126-bytes"),
    pytest.param(frame(CLOSE, close_payload(1000, b"x" * 124)), id="close-126-bytes"),
    pytest.param(frame(PING, b"x", fin=False), id="fragmented-ping"),
    pytest.param(frame(CLOSE, close_payload(1000), fin=False), id="fragmented-close"),
    pytest.param(frame(CONT, b"x"), id="continuation-first"),
    pytest.param(frame(TEXT, b"a") + frame(CONT, b"b"), id="continuation-after-final"),
    pytest.param(frame(TEXT, b"a", fin=False) + frame(TEXT, b"b"), id="new-message-in-message"),
    pytest.param(frame(TEXT, b"a", fin=False) + frame(BINARY, b"b"), id="binary-in-text"),
    pytest.param(bytes([0x80 | TEXT, 0x80 | 126]) + b"\x00\x0a" + MASK_KEY + b"x" * 10,
                 id="non-minimal-length"),
])
def test_protocol_errors_fail_with_1002(data: bytes) -> None:
    proto = server()
    events = proto.receive_data(data)
    assert_failed(events, 1002)
    assert_close_sent(proto, 1002)
    assert proto.receive_data(frame(TEXT, b"later")) == []


# ------------------------------------------------------------- WebSocketProtocol: size limits


def test_message_at_the_limit_passes() -> None:
    proto = server(max_message_size=100)
    assert proto.receive_data(frame(BINARY, b"x" * 100)) == [Message(b"x" * 100)]
    assert proto.receive_data(frame(TEXT, b"y" * 100)) == [Message("y" * 100)]


def test_single_frame_over_limit() -> None:
    proto = server(max_message_size=100)
    events = proto.receive_data(frame(BINARY, b"x" * 101))
    assert len(events) == 1
    assert_failed(events, 1009)
    assert_close_sent(proto, 1009)


def test_over_limit_detected_before_the_frame_is_complete() -> None:
    """A frame announcing 10 MB fails as soon as more than the limit has arrived."""
    proto = server(max_message_size=1000)
    start = frame(BINARY, b"x" * 2000, length=10_000_000, key=b"\0\0\0\0")
    assert_failed(proto.receive_data(start), 1009)
    assert_close_sent(proto, 1009)


def test_text_limit_counts_utf8_bytes() -> None:
    proto = server(max_message_size=100)
    events = proto.receive_data(frame(TEXT, "é".encode() * 51))  # 51 characters, 102 bytes
    assert_failed(events, 1009)


def test_fragments_over_limit() -> None:
    proto = server(max_message_size=100)
    assert proto.receive_data(frame(BINARY, b"x" * 60, fin=False)) == []
    events = proto.receive_data(frame(CONT, b"x" * 41))
    assert len(events) == 1
    assert_failed(events, 1009)
    assert_close_sent(proto, 1009)


def test_limit_is_per_message() -> None:
    proto = server(max_message_size=100)
    data = b"".join(frame(BINARY, b"x" * 50, fin=False) + frame(CONT, b"x" * 50)
                    for _ in range(5))
    assert proto.receive_data(data) == [Message(b"x" * 100)] * 5


def test_no_limit() -> None:
    proto = server(max_message_size=None)
    assert proto.receive_data(frame(BINARY, b"x" * 300_000, key=b"\0\0\0\0")) == [
        Message(b"x" * 300_000)]


# --------------------------------------------------------- WebSocketProtocol: permessage-deflate


def test_compressed_messages_round_trip() -> None:
    conn, proto, _ = deflate_pair()
    texts = ["hello " * 100, "héllo ✓ " * 50, ""]
    data = b"".join(conn.send(TextMessage(t)) for t in texts)
    data += conn.send(BytesMessage(b"\0" * 5000))
    assert data[0] & RSV1  # the client really compressed
    assert proto.receive_data(data) == [*map(Message, texts), Message(b"\0" * 5000)]
    for t in texts:
        proto.send_message(t)
    proto.send_message(b"\1" * 5000)
    out = proto.data_to_send()
    assert all(first & RSV1 for first, _ in parse_frames(out))
    received = client_events(conn, out)
    assert [e.data for e in received] == [*texts, b"\1" * 5000]  # type: ignore[attr-defined]


def test_compressed_fragmented_message() -> None:
    conn, proto, _ = deflate_pair()
    data = (conn.send(TextMessage("abc" * 100, message_finished=False))
            + conn.send(TextMessage("def" * 100, message_finished=False))
            + conn.send(TextMessage("ghi" * 100)))
    assert proto.receive_data(data) == [Message("abc" * 100 + "def" * 100 + "ghi" * 100)]
    conn, proto, _ = deflate_pair()
    data = (conn.send(TextMessage("z" * 500, message_finished=False))
            + conn.send(TextMessage("y" * 500)))
    assert feed_bytewise(proto, data) == [Message("z" * 500 + "y" * 500)]


def test_ping_inside_compressed_fragmented_message() -> None:
    conn, proto, _ = deflate_pair()
    data = (conn.send(TextMessage("hello ", message_finished=False)) + conn.send(Ping(b"p"))
            + conn.send(TextMessage("world")) + conn.send(TextMessage("again")))
    assert proto.receive_data(data) == [Message("hello world"), Message("again")]
    assert parse_frames(proto.data_to_send()) == [(0x80 | PONG, b"p")]


def test_ping_between_compressed_messages() -> None:
    conn, proto, _ = deflate_pair()
    data = (conn.send(Ping(b"a")) + conn.send(TextMessage("one" * 10)) + conn.send(Ping(b"b"))
            + conn.send(TextMessage("two" * 10)))
    assert proto.receive_data(data) == [Message("one" * 10), Message("two" * 10)]
    assert parse_frames(proto.data_to_send()) == [(0x80 | PONG, b"a"), (0x80 | PONG, b"b")]


def test_uncompressed_message_with_deflate_negotiated() -> None:
    _, proto, _ = deflate_pair()
    assert proto.receive_data(frame(TEXT, b"plain")) == [Message("plain")]


@pytest.mark.parametrize("data", [
    pytest.param(frame(PING, b"x", rsv=RSV1), id="rsv1-on-ping"),
    pytest.param(frame(TEXT, b"", rsv=0, fin=False) + frame(CONT, b"", rsv=RSV1),
                 id="rsv1-on-continuation"),
    pytest.param(frame(TEXT, b"x", rsv=RSV2), id="rsv2"),
])
def test_deflate_protocol_errors(data: bytes) -> None:
    _, proto, _ = deflate_pair()
    assert_failed(proto.receive_data(data), 1002)


def test_corrupt_compressed_data_fails() -> None:
    _, proto, _ = deflate_pair()
    events = proto.receive_data(frame(BINARY, b"\xff\xff\xff\xff", rsv=RSV1))
    assert_failed(events, 1007)


def test_server_no_context_takeover_is_obeyed() -> None:
    """With server_no_context_takeover each message is compressed afresh: the same message
    compresses to the same bytes; without it the second refers back to the first."""
    def two_payloads(offer: str) -> list[bytes]:
        _, proto, _ = deflate_pair(offer)
        proto.send_message("the same message " * 20)
        proto.send_message("the same message " * 20)
        return [p for _, p in parse_frames(proto.data_to_send())]

    first, second = two_payloads("permessage-deflate; server_no_context_takeover")
    assert first == second
    first, second = two_payloads("permessage-deflate")
    assert len(second) < len(first)


def test_client_no_context_takeover_is_honoured() -> None:
    conn, proto, answer = deflate_pair("permessage-deflate; client_no_context_takeover")
    assert answer == "permessage-deflate; client_no_context_takeover"
    data = conn.send(TextMessage("repeat " * 30)) + conn.send(TextMessage("repeat " * 30))
    assert proto.receive_data(data) == [Message("repeat " * 30)] * 2


def test_compressed_message_at_the_limit_passes() -> None:
    conn, proto, _ = deflate_pair(max_message_size=50_000)
    assert proto.receive_data(conn.send(BytesMessage(b"\0" * 50_000))) == [
        Message(b"\0" * 50_000)]


def test_compressed_message_over_the_limit() -> None:
    conn, proto, _ = deflate_pair(max_message_size=50_000)
    events = proto.receive_data(conn.send(BytesMessage(b"\0" * 50_001)))
    assert_failed(events, 1009)
    assert_close_sent(proto, 1009)


def test_compressed_fragments_over_the_limit() -> None:
    conn, proto, _ = deflate_pair(max_message_size=100_000)
    events: list[object] = []
    for i in range(3):
        events += proto.receive_data(conn.send(BytesMessage(b"\0" * 40_000,
                                                            message_finished=i == 2)))
    assert_failed(events, 1009)


def _zeros_compressed(megabytes: int) -> bytes:
    """``megabytes`` MiB of zeros as one raw-deflate message payload (RFC 7692 §7.2.1: the
    trailing 00 00 ff ff removed). Blocks ending in a sync flush can be concatenated."""
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = co.compress(bytes(1 << 20)) + co.flush(zlib.Z_SYNC_FLUSH)
    return (segment * megabytes)[:-4]


def test_deflate_bomb_fails_without_inflating_everything() -> None:
    payload = _zeros_compressed(50)  # 50 MiB of zeros in about 50 kB
    assert len(payload) < 100_000
    _, proto, _ = deflate_pair(max_message_size=1 << 20)
    data = frame(BINARY, payload, rsv=RSV1)
    tracemalloc.start()
    try:
        started = time.perf_counter()
        events = proto.receive_data(data)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(events) == 1
    assert_failed(events, 1009)
    assert_close_sent(proto, 1009)
    assert peak < 8 * (1 << 20), f"{peak} bytes allocated: the bomb was inflated"
    assert elapsed < 1.0


def test_deflate_bomb_in_fragments() -> None:
    payload = _zeros_compressed(20)
    _, proto, _ = deflate_pair(max_message_size=1 << 20)
    half = len(payload) // 2
    data = frame(BINARY, payload[:half], rsv=RSV1, fin=False) + frame(CONT, payload[half:])
    tracemalloc.start()
    try:
        events = proto.receive_data(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_failed(events, 1009)
    assert peak < 8 * (1 << 20)


# ----------------------------------------------------------------- WebSocketProtocol: closing


@pytest.mark.parametrize(("code", "reason"), [(1000, "bye"), (1001, ""), (3000, "app"),
                                              (4999, "é ✓"), (1011, "oops")])
def test_peer_close_is_echoed(code: int, reason: str) -> None:
    conn = client()
    proto = server()
    events = proto.receive_data(conn.send(CloseConnection(code, reason or None)))
    assert events == [Closed(code, reason)]
    assert events[0].failed is False  # type: ignore[union-attr]
    out = proto.data_to_send()
    [(first, payload)] = parse_frames(out)
    assert first == 0x80 | CLOSE
    assert close_code_of(payload) == code
    [echo] = client_events(conn, out)
    assert isinstance(echo, CloseConnection)
    assert echo.code == code
    assert proto.close_received and proto.close_sent and proto.finished
    assert proto.can_send is False


def test_peer_close_without_payload() -> None:
    proto = server()
    assert proto.receive_data(frame(CLOSE)) == [Closed(1005, "")]
    assert proto.data_to_send() == b"\x88\x00"  # RFC 6455 §5.5.1: an empty close back


def test_peer_close_after_a_message_in_the_same_chunk() -> None:
    proto = server()
    data = frame(TEXT, b"last") + frame(CLOSE, close_payload(1000)) + frame(TEXT, b"ignored")
    assert proto.receive_data(data) == [Message("last"), Closed(1000, "")]
    assert proto.receive_data(frame(TEXT, b"more")) == []
    assert proto.receive_data(b"") == []


@pytest.mark.parametrize("payload", [
    close_payload(999), close_payload(0), close_payload(1004), close_payload(1005),
    close_payload(1006), close_payload(1015), close_payload(1016), close_payload(2000),
    close_payload(2999), close_payload(5000), close_payload(65535), b"\x03",
], ids=["999", "0", "1004", "1005", "1006", "1015", "1016", "2000", "2999", "5000", "65535",
        "1-byte"])
def test_invalid_peer_close_fails_with_1002(payload: bytes) -> None:
    proto = server()
    events = proto.receive_data(frame(CLOSE, payload))
    assert len(events) == 1
    assert_failed(events, 1002)
    assert_close_sent(proto, 1002)
    assert proto.receive_data(frame(CLOSE, close_payload(1000))) == []


def test_peer_close_with_invalid_utf8_reason_fails_with_1007() -> None:
    proto = server()
    assert_failed(proto.receive_data(frame(CLOSE, close_payload(1000, b"\xff"))), 1007)
    assert_close_sent(proto, 1007)


def test_server_initiated_close_then_peer_reply() -> None:
    conn = client()
    proto = server()
    proto.send_close(1000, "done")
    assert proto.can_send is False
    assert proto.close_sent is True
    out = proto.data_to_send()
    assert parse_frames(out) == [(0x80 | CLOSE, close_payload(1000, b"done"))]
    [ev] = client_events(conn, out)
    assert isinstance(ev, CloseConnection)
    # The peer may still send data before its close (RFC 6455 §1.4): it is delivered.
    assert proto.receive_data(frame(TEXT, b"in flight")) == [Message("in flight")]
    events = proto.receive_data(frame(CLOSE, close_payload(1001, b"going")))
    assert events == [Closed(1001, "going")]
    assert events[0].failed is False  # type: ignore[union-attr]
    assert proto.data_to_send() == b""  # no second close frame
    assert proto.can_send is False
    assert proto.close_received is True
    assert proto.receive_data(frame(TEXT, b"x")) == []


def test_no_pong_after_server_close() -> None:
    proto = server()
    proto.send_close()
    proto.data_to_send()
    assert proto.receive_data(frame(PING, b"x")) == []
    assert proto.data_to_send() == b""


def test_protocol_error_after_server_close_queues_nothing_more() -> None:
    proto = server()
    proto.send_close(1001)
    proto.data_to_send()
    assert_failed(proto.receive_data(frame(TEXT, b"x", mask=False)), 1002)
    assert proto.data_to_send() == b""


def test_send_message_after_close_raises() -> None:
    proto = server()
    proto.send_close()
    with pytest.raises(RuntimeError):
        proto.send_message("x")
    with pytest.raises(RuntimeError):
        proto.send_message(b"x")
    proto = server()
    proto.receive_data(frame(CLOSE, close_payload(1000)))
    with pytest.raises(RuntimeError):
        proto.send_message("x")
    proto = server()
    proto.receive_data(frame(TEXT, b"x", mask=False))
    with pytest.raises(RuntimeError):
        proto.send_message("x")


def test_send_ping_ignored_once_closing() -> None:
    proto = server()
    proto.send_close()
    proto.data_to_send()
    proto.send_ping(b"x")
    assert proto.data_to_send() == b""


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 2000, 2999, 5000])
def test_send_close_rejects_invalid_codes(code: int) -> None:
    proto = server()
    with pytest.raises(ValueError, match="invalid WebSocket close code"):
        proto.send_close(code)
    assert proto.data_to_send() == b""
    assert proto.can_send is True


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4999])
def test_send_close_valid_codes(code: int) -> None:
    proto = server()
    proto.send_close(code)
    assert parse_frames(proto.data_to_send()) == [(0x80 | CLOSE, close_payload(code))]


def test_send_close_is_idempotent() -> None:
    proto = server()
    proto.send_close(1000, "first")
    proto.send_close(1001, "second")
    assert parse_frames(proto.data_to_send()) == [(0x80 | CLOSE, close_payload(1000, b"first"))]
    proto.send_close(1002)
    assert proto.data_to_send() == b""


def test_send_close_after_peer_close_does_nothing() -> None:
    proto = server()
    proto.receive_data(frame(CLOSE, close_payload(1000)))
    proto.data_to_send()
    proto.send_close(1001)
    assert proto.data_to_send() == b""


def test_send_close_truncates_long_reason_to_valid_utf8() -> None:
    proto = server()
    proto.send_close(1000, "é" * 100)  # 200 bytes
    [(_, payload)] = parse_frames(proto.data_to_send())
    assert len(payload) <= 125
    assert payload[2:].decode("utf-8") == "é" * 61


def test_connection_end_without_close() -> None:
    proto = server()
    events = proto.receive_data(b"")
    assert len(events) == 1
    closed = events[0]
    assert isinstance(closed, Closed)
    assert (closed.code, closed.failed) == (1006, False)
    assert proto.data_to_send() == b""
    assert proto.receive_data(frame(TEXT, b"x")) == []
    assert proto.receive_data(b"") == []


def test_connection_end_in_a_fragmented_message() -> None:
    proto = server()
    assert proto.receive_data(frame(TEXT, b"part", fin=False) + frame(TEXT, b"y")[:3]) == []
    [closed] = proto.receive_data(b"")
    assert isinstance(closed, Closed)
    assert closed.code == 1006


def test_nothing_after_failure() -> None:
    proto = server(max_message_size=10)
    assert_failed(proto.receive_data(frame(BINARY, b"x" * 11)), 1009)
    proto.data_to_send()
    assert proto.receive_data(frame(TEXT, b"x")) == []
    assert proto.receive_data(frame(CLOSE, close_payload(1000))) == []
    assert proto.receive_data(b"") == []
    assert proto.data_to_send() == b""


def test_deflate_offer_with_quoted_bits_is_accepted() -> None:
    """RFC 7692 §7.1: parameter values may be quoted strings."""
    headers, extensions = accept_headers(
        Offer(None, (), ('permessage-deflate; client_max_window_bits="10"',)), None, None,
        DeflateOptions(), None)
    assert headers == [(b"sec-websocket-extensions",
                        b"permessage-deflate; client_max_window_bits=10")]
    assert len(extensions) == 1


def test_server_window_is_lowered_to_the_configured_bits() -> None:
    """A client allowing a 12-bit server window gets the configured 10 (RFC 7692 §7.1.2.1:
    the server may use a smaller window than the client allows)."""
    headers, extensions = accept_headers(
        Offer(None, (), ("permessage-deflate; server_max_window_bits=12",)), None, None,
        DeflateOptions(max_window_bits=10), None)
    assert headers == [(b"sec-websocket-extensions",
                        b"permessage-deflate; server_max_window_bits=10")]
    assert extensions[0].server_max_window_bits == 10


@pytest.mark.parametrize("level", [1, 9])
def test_compression_level_is_used_and_round_trips(level: int) -> None:
    """The configured zlib level compresses the server's messages (a smaller level gives a
    different, larger encoding of text) and the client inflates them intact."""
    text = " ".join(f"word{i % 97} {i * 7 % 13}" for i in range(20000))
    _, extensions = accept_headers(Offer(None, (), ("permessage-deflate",)), None, None,
                                   DeflateOptions(level=level), None)
    proto = WebSocketProtocol(extensions, None)
    proto.send_message(text)
    wire = proto.data_to_send()
    client = Connection(ConnectionType.CLIENT, extensions=[_client_deflate()])
    client.receive_data(wire)
    (ev,) = list(client.events())
    assert ev.data == text
    sizes = {}
    for lv in (1, 9):
        c = zlib.compressobj(lv, zlib.DEFLATED, -15, 8)
        sizes[lv] = len(c.compress(text.encode()) + c.flush(zlib.Z_SYNC_FLUSH))
    assert sizes[1] > sizes[9]
    assert abs(len(wire) - sizes[level]) < 64


def _client_deflate() -> PerMessageDeflate:
    ext = PerMessageDeflate()
    ext.finalize("permessage-deflate")
    return ext


def test_config_refuses_a_bad_deflate_level() -> None:
    from trioserve import ConfigError, WebSocketConfig
    with pytest.raises(ConfigError, match="deflate_level must be an integer 1-9, got 0"):
        WebSocketConfig(deflate_level=0)
