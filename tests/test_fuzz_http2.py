"""Property tests for the HTTP/2 protocol, driven by ``trioserve.fuzz.http2``.

Bounded like ``test_fuzz_http1``: a fixed example budget per property, no deadline, no example
database written into the checkout. Known attacks (CONTINUATION flood, HPACK bomb, SETTINGS and
WINDOW_UPDATE overflows, RST_STREAM on an idle stream, PUSH_PROMISE from a client, frames on
closed streams, rapid reset, floods, streams over the limit) are explicit examples of the
properties, and each is also checked for the answer RFC 9113 asks for.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
import trio
from conftest import make_config, raw_exchange, read_until_closed, run_server

hypothesis = pytest.importorskip("hypothesis")

from hyperframe.frame import GoAwayFrame, RstStreamFrame  # noqa: E402
from hypothesis import HealthCheck, Phase, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from trioserve.fuzz.http1 import InvariantViolation, feed_splits  # noqa: E402
from trioserve.fuzz.http2 import (  # noqa: E402
    GeneratedConnection,
    _fail,
    check_h2_parse,
    check_h2_server_output,
    check_h2_valid,
    client_connections,
    frame_offsets,
    known_attacks,
    mutated_connections,
    raw_frame,
    run_h2,
    valid_connections,
)

from trioserve import MinDataRate  # noqa: E402
from trioserve.protocols.http2 import (  # noqa: E402
    PREFACE,
    StreamData,
    StreamEnded,
    StreamRefused,
    StreamRequest,
    StreamReset,
)

FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# Each example of the damaged-input properties is a dozen runs of the protocol: shrinking a
# failure can take minutes, so these report it as generated (the campaign runner minimizes).
FUZZ_NO_SHRINK = settings(FUZZ, phases=[Phase.explicit, Phase.reuse, Phase.generate])
ATTACKS = known_attacks()
_cut_points = st.lists(st.integers(1, 1 << 20), max_size=8)

# RFC 9113 §7 error codes
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, STREAM_CLOSED, FRAME_SIZE_ERROR = 0, 1, 3, 5, 6
REFUSED_STREAM, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 7, 9, 11


def cuts_for(raw: bytes, points: list[int]) -> list[int]:
    return sorted({1 + p % (len(raw) - 1) for p in points}) if len(raw) > 1 else []


def by_frame(raw: bytes) -> list[bytes]:
    """``raw`` one frame per piece (the preface alone first)."""
    return feed_splits(raw, [start for start, _ in frame_offsets(raw)])


@FUZZ
@given(valid_connections(), _cut_points)
def test_valid_connections_reach_the_application_exactly(conn: GeneratedConnection,
                                                         points: list[int]) -> None:
    """Valid connections (interleaved streams, CONTINUATION, padding, priorities, trailers,
    control and extension frames) are accepted whole, split and byte by byte, and every request
    reaches the application as sent: head, body, trailers."""
    check_h2_valid(conn, cuts_for(conn.raw, points))


@FUZZ_NO_SHRINK
@given(client_connections(), _cut_points)
@example(ATTACKS["continuation-flood"], [])
@example(ATTACKS["hpack-bomb"], [30, 40])
@example(ATTACKS["hpack-bomb-small"], [])
@example(ATTACKS["settings-initial-window-overflow"], [40])
@example(ATTACKS["settings-window-overflows-stream-window"], [])
@example(ATTACKS["window-update-overflow"], [])
@example(ATTACKS["window-update-stream-overflow"], [])
@example(ATTACKS["rst-stream-idle"], [])
@example(ATTACKS["push-promise-from-client"], [])
@example(ATTACKS["data-on-reset-stream"], [])
@example(ATTACKS["data-after-end-stream"], [])
@example(ATTACKS["headers-on-closed-stream"], [])
@example(ATTACKS["rapid-reset"], [1000, 5000])
@example(PREFACE + raw_frame(4, 0, 0) + raw_frame(1, 5, 1, b"\x82\x86\x84\x41\x01a")
         + raw_frame(1, 5, 3, b"\x82\x86\x84\xbe") + raw_frame(1, 5, 1, b""), [])
# trailers with a pseudo-header reset the stream; DATA after them drew a second StreamReset
@example(PREFACE + raw_frame(4, 0, 0) + raw_frame(1, 4, 1, b"\x83\x86\x84\x41\x01a")
         + raw_frame(0, 0, 1, b"x") + raw_frame(1, 5, 1, b"\x82") + raw_frame(0, 1, 1, b"y"),
         [])
def test_client_connections_parse_or_connection_error(raw: bytes, points: list[int]) -> None:
    """Connections mixing valid and damaged frames: events or a ProtocolError (GOAWAY queued)
    and nothing else, consistent events, well-formed output, bounded output, and the same
    verdict and events whole, split, frame by frame and byte by byte."""
    check_h2_parse(raw, cuts_for(raw, points))


@FUZZ_NO_SHRINK
@given(mutated_connections(), _cut_points)
@example(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00", [])
@example(b"PRI *HTTP/2.0\r\n\r\nSM\r\n\r\x04\x00\x00\x00\x00\x00\x00\x00\x04\x01\x00\x00\x00"
         b"\x00", [3])
def test_mutated_connections_parse_or_connection_error(raw: bytes, points: list[int]) -> None:
    """The same properties on connections damaged in their bytes (flips, insertions,
    deletions, truncation, frame length, type, flags and stream id rewritten)."""
    check_h2_parse(raw, cuts_for(raw, points))


@settings(max_examples=100, deadline=None, database=None)
@given(st.binary(max_size=200))
def test_preface_then_arbitrary_bytes(tail: bytes) -> None:
    """The preface then any bytes: events or a connection error, nothing else."""
    check_h2_parse(PREFACE + tail)


# ---------------------------------------------------------------- known attacks, answered


def connection_error(name: str, *codes: int) -> None:
    """``name`` fed whole and frame by frame ends the connection with GOAWAY(one of
    ``codes``), and no request of it reaches the application."""
    for pieces in (None, by_frame(ATTACKS[name])):
        outcome = run_h2(ATTACKS[name], pieces)
        assert outcome.error is not None, outcome.events[-5:]
        assert outcome.goaway_code in codes, (outcome.goaway_code, outcome.error)


@pytest.mark.parametrize(("name", "codes"), [
    ("continuation-flood", (PROTOCOL_ERROR, ENHANCE_YOUR_CALM)),
    ("continuation-flood-16k", (PROTOCOL_ERROR, ENHANCE_YOUR_CALM)),
    ("hpack-bomb", (COMPRESSION_ERROR, ENHANCE_YOUR_CALM)),
    ("settings-initial-window-overflow", (FLOW_CONTROL_ERROR,)),
    ("settings-window-overflows-stream-window", (FLOW_CONTROL_ERROR,)),
    ("window-update-overflow", (FLOW_CONTROL_ERROR,)),
    ("window-update-zero", (PROTOCOL_ERROR,)),
    ("rst-stream-idle", (PROTOCOL_ERROR,)),
    ("push-promise-from-client", (PROTOCOL_ERROR,)),
])
def test_attack_is_a_connection_error(name: str, codes: tuple[int, ...]) -> None:
    """RFC 9113 §4.3, §5.1, §6.5.2, §6.6, §6.9, §6.10 and the CONTINUATION / HPACK limits:
    a connection error with the error code the RFC names."""
    connection_error(name, *codes)
    check_h2_parse(ATTACKS[name], byte_by_byte=False)


def test_hpack_bomb_under_the_hard_limit_gets_431() -> None:
    """A header block decoding past the header list limit but under HPACK's hard limit: 431
    on that stream, the bomb never reaches the application, the connection goes on."""
    outcome = run_h2(ATTACKS["hpack-bomb-small"])
    assert outcome.error is None
    refused = [e for e in outcome.events if isinstance(e, StreamRefused)]
    requests = [e for e in outcome.events if isinstance(e, StreamRequest)]
    assert [(e.stream_id, e.status) for e in refused] == [(3, 431)]
    assert [e.stream_id for e in requests] == [1]


@pytest.mark.parametrize("name", ["window-update-stream-overflow",
                                  "window-update-zero-on-stream", "data-on-reset-stream",
                                  "data-after-end-stream"])
def test_attack_on_one_stream_is_a_stream_error(name: str) -> None:
    """RFC 9113 §5.1 (frames on a reset or half-closed stream: STREAM_CLOSED), §6.9 (a stream
    window overflow or a zero increment on a stream): that stream is reset or the connection
    ends; nothing of the bad frame reaches the application."""
    for pieces in (None, by_frame(ATTACKS[name])):
        outcome = run_h2(ATTACKS[name], pieces)
        if outcome.error is None:
            resets = [f for f in outcome.frames if isinstance(f, RstStreamFrame)]
            assert [f.stream_id for f in resets] == [1], outcome.frames
            assert resets[0].error_code in (PROTOCOL_ERROR, FLOW_CONTROL_ERROR, STREAM_CLOSED)
        assert not [e for e in outcome.events if isinstance(e, StreamData)], outcome.events


def test_headers_on_a_closed_stream_is_refused() -> None:
    """HEADERS on stream 1 after stream 3 opened (RFC 9113 §5.1.1: a stream id lower than one
    already used): never a second request on stream 1."""
    for pieces in (None, by_frame(ATTACKS["headers-on-closed-stream"])):
        outcome = run_h2(ATTACKS["headers-on-closed-stream"], pieces)
        assert [e.stream_id for e in outcome.events if isinstance(e, StreamRequest)] in \
            ([1, 3], [])


def test_rapid_reset_streams_never_run_past_the_limit() -> None:
    """CVE-2023-44487: 500 requests each reset at once. At most 100 are handed to the
    application while it has not finished any (the rest refused); each handed over is reset."""
    outcome = run_h2(ATTACKS["rapid-reset"])
    requests = [e.stream_id for e in outcome.events if isinstance(e, StreamRequest)]
    resets = [e.stream_id for e in outcome.events if isinstance(e, StreamReset)]
    assert len(requests) <= 100
    assert resets == requests
    assert outcome.refused == 500 - len(requests)


@pytest.mark.parametrize("name", ["ping-flood", "settings-flood"])
def test_control_frame_flood_output_is_bounded(name: str) -> None:
    """PING and SETTINGS floods are answered, but never with more bytes than came in."""
    outcome = run_h2(ATTACKS[name])
    assert len(outcome.output) <= len(ATTACKS[name]) + 200


@pytest.mark.parametrize("name", ["streams-over-the-limit", "request-flood"])
def test_streams_over_the_limit_refused_however_they_arrive(name: str) -> None:
    """SETTINGS_MAX_CONCURRENT_STREAMS (100): streams past it get REFUSED_STREAM (RFC 9113
    §5.1.2) when they arrive one at a time. Arriving in one read, more than twice the limit is
    the documented connection error instead (h2 counts the streams of a read before the
    protocol can refuse any; its count is bounded at twice the limit so that a read of
    thousands of tiny HEADERS frames does not cost quadratic time): never anything else."""
    outcome = run_h2(ATTACKS[name], by_frame(ATTACKS[name]))
    assert outcome.error is None, outcome.error
    assert [f for f in outcome.frames if isinstance(f, RstStreamFrame)
            and f.error_code == REFUSED_STREAM]
    outcome = run_h2(ATTACKS[name])
    if outcome.error is not None:
        assert "PROTOCOL_ERROR" in outcome.error.message, outcome.error
        assert "Max inbound streams" in outcome.error.message, outcome.error


def test_trailers_cannot_end_a_body_shorter_than_its_content_length() -> None:
    """RFC 9113 §8.1.1: a content-length that differs from the DATA received makes the request
    malformed, also when a trailer section ends the stream: never a complete body of 1 byte
    for ``content-length: 3``."""
    head = b"\x83\x86\x84\x41\x01a\x0f\x0d\x013"  # POST / (authority a), content-length: 3
    raw = PREFACE + raw_frame(4, 0, 0) + raw_frame(1, 4, 1, head) + raw_frame(0, 0, 1, b"x") \
        + raw_frame(1, 5, 1, b"\x00\x01t\x01v")  # trailers t: v, END_STREAM
    outcome = run_h2(raw)
    assert not [e for e in outcome.events if isinstance(e, StreamEnded)], outcome.events
    assert outcome.error is not None or [
        f for f in outcome.frames if isinstance(f, RstStreamFrame) and f.stream_id == 1
        and f.error_code == PROTOCOL_ERROR], outcome.frames


def test_graceful_goaway_then_connection_error_keeps_the_last_stream_id() -> None:
    """RFC 9113 §6.8: after a graceful GOAWAY naming stream 1 (a shutdown began), a stream the
    client opens is refused and a connection error that follows must not name a higher last
    stream id (the client may already have retried the refused stream elsewhere)."""
    get = b"\x82\x86\x84\x41\x01a"
    raw = PREFACE + raw_frame(4, 0, 0) + raw_frame(1, 5, 1, get) \
        + raw_frame(1, 5, 3, b"\x82\x86\x84\xbe") + raw_frame(8, 0, 0, b"\0\0\0\0")
    pieces = feed_splits(raw, [len(PREFACE) + 9 + 9 + len(get)])
    outcome = run_h2(raw, pieces, drain_at=1)  # (checks the GOAWAYs itself)
    assert outcome.error is not None  # the WINDOW_UPDATE of 0
    assert [f.last_stream_id for f in outcome.frames if isinstance(f, GoAwayFrame)] == [1, 1]
    # Stream 3 came in the read that failed: refused, or never processed (the GOAWAY names 1).
    assert [(f.stream_id, f.error_code) for f in outcome.frames
            if isinstance(f, RstStreamFrame)] in ([], [(3, REFUSED_STREAM)])


def test_empty_trailer_block_ends_the_stream_once() -> None:
    """A HEADERS frame with END_STREAM and an empty header block after the request head (an
    empty trailer section): one StreamEnded for the stream."""
    raw = PREFACE + raw_frame(4, 0, 0) + raw_frame(1, 4, 1, b"\x83\x86\x84\x41\x01a") \
        + raw_frame(1, 5, 1, b"")
    outcome = run_h2(raw)
    assert [e for e in outcome.events if isinstance(e, StreamEnded)] == [StreamEnded(1, [])]


# ---------------------------------------------------------------- the output checker


def test_server_output_checker_accepts_what_the_protocol_writes() -> None:
    """check_h2_server_output (used on live targets) passes trioserve's own answers."""
    for raw in (ATTACKS["hpack-bomb-small"], ATTACKS["ping-flood"], ATTACKS["rapid-reset"]):
        check_h2_server_output(raw, run_h2(raw).output)


@pytest.mark.parametrize(("received", "fault"), [
    (raw_frame(6, 0, 0, b"12345678"), "not SETTINGS"),
    (raw_frame(4, 0, 0) + raw_frame(1, 5, 1, b"\x8e"), "500"),  # :status 500 (index 14)
    (raw_frame(4, 0, 0) + raw_frame(0, 1, 1, b"x"), "DATA on stream 1 in state idle"),
    (raw_frame(4, 0, 0) + raw_frame(7, 0, 0, struct.pack("!LL", 1, 0x99)), "not defined"),
    (raw_frame(4, 0, 0) + raw_frame(7, 0, 0, struct.pack("!LL", 1, 0))
     + raw_frame(7, 0, 0, struct.pack("!LL", 3, 0)), "grew"),
    (raw_frame(4, 0, 0) + raw_frame(7, 0, 0, struct.pack("!LL", 1, 1))
     + raw_frame(6, 1, 0, b"12345678"), "after a GOAWAY with an error"),
    (raw_frame(4, 0, 0) + raw_frame(1, 1, 1, b"\x88"), "inside a header block"),
    (raw_frame(4, 0, 0) + raw_frame(1, 5, 1, b"\x88\x40\x02Ab\x01c"), "field name"),
    (raw_frame(4, 0, 0) + raw_frame(1, 5, 1, b"\x88\x40\x0aconnection\x05close"),
     "connection-specific"),
    (raw_frame(4, 0, 0) + raw_frame(1, 5, 3, b"\x88"), "not one the client opened"),
    (raw_frame(4, 0, 0) + raw_frame(6, 1, 0, b"12345678") * 2, "PING ACKs"),
])
def test_server_output_checker_catches(received: bytes, fault: str) -> None:
    """Each kind of malformed server output is reported (so a live campaign can fail)."""
    sent = PREFACE + raw_frame(4, 0, 0) + raw_frame(1, 5, 1, b"\x82\x86\x84\x41\x01a") \
        + raw_frame(6, 0, 0, b"12345678")
    if fault == "inside a header block":
        received += raw_frame(6, 1, 0, b"12345678")
    with pytest.raises(InvariantViolation, match=fault):
        check_h2_server_output(sent, received)


@pytest.mark.parametrize("quoted", [b"a", bytearray(b"b'c\\"), b"\x00" * 150, b'"' + b"x" * 300])
def test_failure_first_line_elides_any_bytes(quoted: bytes) -> None:
    """The first line of an HTTP/2 failure (what a campaign keys findings by) is the same
    whatever bytes the message quotes: bytes or bytearray, escaped quotes, a repr so long that
    the 200-character cut leaves it open (the shared ``elide_bytes``)."""
    with pytest.raises(InvariantViolation) as exc:
        _fail(f"frame N: {quoted!r} refused")
    first = str(exc.value).partition("\n")[0]
    assert first.startswith("frame N: b'…'") and len(first) <= 200, first


def test_server_output_checker_http1_answer_to_a_bad_preface() -> None:
    """Without the preface a server may answer HTTP/1.1, but not with a 5xx."""
    check_h2_server_output(b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 400 Bad Request\r\n\r\n")
    with pytest.raises(InvariantViolation):
        check_h2_server_output(b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 502 Bad Gateway\r\n\r\n")


# ---------------------------------------------------------------- a live server


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the whole body, answers it back."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/octet-stream")]})
    await send({"type": "http.response.body", "body": body})


async def test_live_server_answers_every_attack_with_well_formed_http2() -> None:
    """Every known attack sent to a running trioserve (h2c prior knowledge, loopback, all at
    once, each connection half-closed after its bytes): the server closes each, what came back
    passes check_h2_server_output, and the server then still answers a plain request."""
    config = make_config(limits={"min_request_body_data_rate": MinDataRate(grace_period=0.5)})
    received: dict[str, bytes] = {}
    async with run_server(echo_app, config) as srv:
        async def attack(name: str) -> None:
            """Send, half-close (as ``trioserve fuzz target`` does), read until closed."""
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            async with stream:
                await stream.send_all(ATTACKS[name])
                await stream.send_eof()
                received[name] = await read_until_closed(stream)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for name in ATTACKS:
                    nursery.start_soon(attack, name)
            plain = await raw_exchange(srv.port, b"GET / HTTP/1.1\r\nHost: a\r\n"
                                       b"Connection: close\r\n\r\n")
    assert plain.startswith(b"HTTP/1.1 200 "), plain[:100]
    for name, data in received.items():
        assert data, name
        try:
            check_h2_server_output(ATTACKS[name], data)
        except InvariantViolation as exc:
            raise AssertionError(f"{name}: {exc}") from None
