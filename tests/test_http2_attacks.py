"""HTTP/2 attacks of issue 6 over real loopback sockets, with the raw client of
``test_http2_bad_input`` (frames built by hand, sent as fast as the socket takes them).

- Control-frame floods (CVE-2019-9512 PING, -9515 SETTINGS, -9513 PRIORITY, -9518 empty
  frames, WINDOW_UPDATE, RST_STREAM, unknown types): past ``max_control_frames_per_second``
  (1000 a second, bursts of 2000) the connection ends with GOAWAY ``ENHANCE_YOUR_CALM``, while a
  normal client on another connection is served during and after.
- What must not be taken for a flood: a download acknowledged frame by frame, thousands of
  sequential streams, cancelling streams already answered.
- The limits are configurable (``Http2Limits``), and the holds (streams without bodies, a
  zero window on many streams) cost only the attacker's own connection.

The rapid reset, CONTINUATION flood, HPACK bombs, endless header block, 1000-PING burst,
stream-limit refusal, zero-window and window-trickle cases live in ``test_http2_bad_input``.
"""

from __future__ import annotations

import logging
import struct
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from test_http2_bad_input import (
    CANCEL,
    DATA,
    ENHANCE_YOUR_CALM,
    INITIAL_WINDOW_SIZE,
    PING,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    TIMEOUT,
    WINDOW_UPDATE,
    RawH2,
    StreamState,
    assert_goaway,
    assert_serving,
    continuation_flood,
    h2_client,
    raw_frame,
    serve,
    wait_started,
)

from trioserve import Http2Limits, MinDataRate

PRIORITY = 0x2
UNKNOWN_TYPE = 0xFA  # RFC 9113 §5.5: to be ignored (each one still costs the server a parse)
FLOOD = 20_000  # frames per flood: ten times the default burst (2000)
SLOWEST_ANSWER = 3.0  # seconds a bystander's request may take while a flood runs


# ------------------------------------------------------------------------------ helpers


@asynccontextmanager
async def bystander(port: int) -> AsyncIterator[list[tuple[int | None, float]]]:
    """A well-behaved HTTP/2 client on its own connection, one GET after another (10 ms apart)
    for as long as the block runs. Yields its ``(status, seconds)`` list; on exit asserts that
    it was answered at least twice, every time 200 and within ``SLOWEST_ANSWER``."""
    results: list[tuple[int | None, float]] = []
    answered = [trio.Event()]  # set at the next answer

    async def loop() -> None:
        async with h2_client(port) as c:
            sid = 1
            while True:
                start = trio.current_time()
                await c.send(c.get(sid))
                st = await c.response(sid)
                results.append((st.status, trio.current_time() - start))
                answered[0].set()
                answered[0] = trio.Event()
                sid += 2
                await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(loop)
        await answered[0].wait()
        yield results
        await answered[0].wait()  # one more answer after the block: served after it too
        nursery.cancel_scope.cancel()
    assert len(results) >= 2, results
    assert all(status == 200 for status, _ in results), results
    assert max(t for _, t in results) < SLOWEST_ANSWER, max(t for _, t in results)


async def run_flood(c: RawH2, frames: list[bytes], count: int = FLOOD, *,
                    batch: int = 200, settle: float = 3.0) -> int:
    """Send ``count`` frames (cycling through ``frames``) in writes of ``batch``, as fast as
    the socket takes them, while another task reads what the server sends (so the server's
    output backpressure is never what stops the flood). Returns how many frames went out;
    returns once the server closed, or ``settle`` seconds after the last frame."""
    sent = 0
    wire = [frames[i % len(frames)] for i in range(count)]

    async def sender(cancel: trio.CancelScope) -> None:
        nonlocal sent
        while sent < count:
            if not await c.try_send(b"".join(wire[sent:sent + batch])):
                return
            sent = min(count, sent + batch)
        await trio.sleep(settle)
        cancel.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender, nursery.cancel_scope)
        await c.read_until_closed()
        nursery.cancel_scope.cancel()
    return sent


def assert_flood_refused(c: RawH2, last_stream_id: int = 0) -> None:
    assert c.goaway is not None, f"no GOAWAY: {len(c.frames)} frames received, none a GOAWAY"
    assert_goaway(c.goaway, ENHANCE_YOUR_CALM, last_stream_id)
    assert c.closed, "GOAWAY but the connection stayed open"


def flood_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "trioserve"
            and r.levelno == logging.WARNING and "too many control frames (flood)" in
            r.getMessage()]


def header_frames(stream_id: int, block: bytes, *, end_stream: bool = True,
                  size: int = 16384) -> list[bytes]:
    """A header block as HEADERS plus as many CONTINUATION frames as ``size`` requires."""
    pieces = [block[i:i + size] for i in range(0, len(block), size)] or [b""]
    out = []
    for i, piece in enumerate(pieces):
        flags = {"END_HEADERS"} if i == len(pieces) - 1 else set()
        if i == 0:
            if end_stream:
                flags.add("END_STREAM")
            out.append(HeadersFrame(stream_id, piece, flags=flags).serialize())
        else:
            out.append(ContinuationFrame(stream_id, piece, flags=flags).serialize())
    return out


# ====================================================================== control floods


async def test_ping_flood_far_past_the_burst(caplog: pytest.LogCaptureFixture) -> None:
    """20 000 PINGs, every ack read as it comes: the server answers the burst and then ends
    the connection (GOAWAY ENHANCE_YOUR_CALM, one WARNING naming the flood) instead of acking
    without end (CVE-2019-9512); a normal client is served during and after."""
    caplog.set_level(logging.WARNING, logger="trioserve")
    async with serve() as (port, _):
        with trio.fail_after(TIMEOUT):
            async with bystander(port):
                async with h2_client(port) as c:
                    pings = [raw_frame(PING, 0, 0, struct.pack(">Q", i)) for i in range(1000)]
                    await run_flood(c, pings)
                    assert_flood_refused(c)
                    assert c.ping_acks < FLOOD, c.ping_acks
        await assert_serving(port)
    assert len(flood_warnings(caplog)) == 1, [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize("kind", ["empty", "values"])
async def test_settings_flood(kind: str) -> None:
    """SETTINGS frames (each one acknowledged by the server, CVE-2019-9515), empty or changing
    the window, frame size and HPACK table size each time: GOAWAY ENHANCE_YOUR_CALM."""
    async with serve() as (port, _):
        with trio.fail_after(TIMEOUT):
            async with bystander(port):
                async with h2_client(port) as c:
                    if kind == "empty":
                        frames = [raw_frame(SETTINGS, 0, 0)]
                    else:
                        frames = [SettingsFrame(0, settings={
                            INITIAL_WINDOW_SIZE: 65535 + i,
                            SettingsFrame.MAX_FRAME_SIZE: 16384 + i,
                            SettingsFrame.HEADER_TABLE_SIZE: 4096 - i}).serialize()
                            for i in range(2)]
                    await run_flood(c, frames)
                    assert_flood_refused(c)
                    assert c.settings_acks < FLOOD, c.settings_acks
        await assert_serving(port)


async def test_priority_flood() -> None:
    """PRIORITY frames on idle streams (legal, and ignored by the server: CVE-2019-9513's
    shape): GOAWAY ENHANCE_YOUR_CALM."""
    async with serve() as (port, _):
        with trio.fail_after(TIMEOUT):
            async with bystander(port):
                async with h2_client(port) as c:
                    frames = [raw_frame(PRIORITY, 0, 1 + 2 * i, struct.pack(">IB", 0, 15))
                              for i in range(100)]
                    await run_flood(c, frames)
                    assert_flood_refused(c)
        await assert_serving(port)


async def test_window_update_flood() -> None:
    """WINDOW_UPDATE of 1 byte on the connection, 20 000 times (the window stays far below its
    2^31-1 maximum, so nothing but the rate ends it): GOAWAY ENHANCE_YOUR_CALM."""
    async with serve() as (port, _):
        with trio.fail_after(TIMEOUT):
            async with bystander(port):
                async with h2_client(port) as c:
                    await run_flood(c, [raw_frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1))])
                    assert_flood_refused(c)
        await assert_serving(port)


async def test_empty_data_flood() -> None:
    """Empty DATA frames without END_STREAM on an open stream whose app waits for the body
    (CVE-2019-9518): each wakes the stream for nothing; GOAWAY ENHANCE_YOUR_CALM naming the
    stream as processed."""
    async with serve() as (port, _):
        with trio.fail_after(TIMEOUT):
            async with bystander(port):
                async with h2_client(port) as c:
                    await c.send(c.get(1, "/echo", end_stream=False))
                    await trio.sleep(0.05)  # the app is waiting for the body
                    await run_flood(c, [raw_frame(DATA, 0, 1)])
                    assert_flood_refused(c, 1)
                    assert c.streams.get(1, StreamState()).status is None  # no answer came
        await assert_serving(port)


@pytest.mark.parametrize("target", ["answered", "reset-by-client", "idle"])
async def test_rst_stream_flood(target: str) -> None:
    """RST_STREAM, again and again, on streams with no app running: streams already answered
    (the client may reset them just after the server's END_STREAM, RFC 9113 §5.1), a stream
    the client already reset, or streams never opened (ignored by h2 once a stream was
    opened). None of them is rapid reset (no app is cancelled), all of them are control
    frames: GOAWAY ENHANCE_YOUR_CALM."""
    async with serve() as (port, state):
        with trio.fail_after(TIMEOUT):
            async with bystander(port):
                async with h2_client(port) as c:
                    for i in range(10):  # streams 1 … 19: answered
                        await c.send(c.get(1 + 2 * i))
                        assert (await c.response(1 + 2 * i)).status == 200
                    last = 19
                    if target == "answered":
                        ids = [1 + 2 * i for i in range(10)]
                    elif target == "reset-by-client":
                        await c.send(c.get(21, "/block"))
                        await wait_started(state, 1)
                        await c.send(RstStreamFrame(21, error_code=CANCEL))
                        ids, last = [21], 21
                    else:
                        ids = [101 + 2 * i for i in range(100)]
                    frames = [raw_frame(RST_STREAM, 0, sid, struct.pack(">I", CANCEL))
                              for sid in ids]
                    await run_flood(c, frames)
                    assert c.goaway is not None, "no GOAWAY"
                    if target == "idle" and c.goaway.error_code == PROTOCOL_ERROR:
                        # RFC 9113 §6.4 makes RST_STREAM on an idle stream a connection error:
                        # a server that says so at the first one ends the flood as well.
                        assert_goaway(c.goaway, PROTOCOL_ERROR, last)
                    else:
                        assert_flood_refused(c, last)
        await assert_serving(port)


async def test_unknown_frame_type_flood() -> None:
    """Frames of an unknown type (RFC 9113 §5.5 says to ignore them, not to take them
    without end): GOAWAY ENHANCE_YOUR_CALM."""
    async with serve() as (port, _):
        with trio.fail_after(TIMEOUT):
            async with bystander(port):
                async with h2_client(port) as c:
                    await run_flood(c, [raw_frame(UNKNOWN_TYPE, 0, 0, b"12345678")])
                    assert_flood_refused(c)
        await assert_serving(port)


# ==================================================================== not false positives


async def test_download_acknowledged_frame_by_frame_completes() -> None:
    """8 MiB sent by the app in 1 KiB writes (8192 DATA frames) to a client that answers every
    DATA frame with two WINDOW_UPDATEs (stream and connection), as some clients do: 16 384
    control frames at several thousand a second, far past the burst, and the download still
    completes (every DATA frame the server sends pays for one control frame)."""
    total = 8 * 1024 * 1024
    async with serve() as (port, state):
        with trio.fail_after(TIMEOUT):
            async with h2_client(port) as c:
                await c.send(c.get(1, f"/big?{total},1024"))
                st = c.streams.setdefault(1, StreamState())
                updates = 0
                while not st.ended and st.reset is None:
                    frame = await c.read_frame()
                    assert frame is not None, f"closed after {len(st.data)} bytes: {c.goaway!r}"
                    if isinstance(frame, DataFrame) and frame.flow_controlled_length:
                        n = frame.flow_controlled_length
                        if not st.ended:
                            await c.send(WindowUpdateFrame(1, window_increment=n),
                                         WindowUpdateFrame(0, window_increment=n))
                            updates += 2
                assert (st.status, len(st.data), st.reset, c.goaway) == (200, total, None, None)
                assert updates > 4 * 2000  # well past the default burst
                await c.send(c.get(3))
                assert (await c.response(3)).status == 200
            await state.wait_for(lambda: bool(state.outcomes))
            assert state.outcomes == ["complete"]


@pytest.mark.parametrize(("n", "budget"), [(5000, None), (1000, 10)],
                         ids=["5000-default", "1000-control-budget-10"])
async def test_sequential_streams_on_one_connection(n: int, budget: int | None) -> None:
    """A client opening and finishing thousands of streams one after another at full speed on
    one connection (no control frame at all): every one answered, no GOAWAY. With a control
    budget of 10 a second (bursts of 20) as well: nothing a stream's life brings (HEADERS, the
    END_STREAMs, the stream closing) is counted as a control frame."""
    limits = {} if budget is None else {
        "http2": Http2Limits(max_control_frames_per_second=budget)}
    async with serve({"limits": limits}) as (port, state):
        with trio.fail_after(3 * TIMEOUT):
            async with h2_client(port) as c:
                for i in range(n):
                    sid = 1 + 2 * i
                    await c.send(c.get(sid))
                    st = await c.response(sid)
                    assert (st.status, st.reset) == (200, None), (sid, st, c.goaway)
                    del c.streams[sid]
                    if len(c.frames) > 1000:
                        del c.frames[:]
                assert c.goaway is None
        assert state.hits == n


async def test_cancelling_answered_streams_is_not_rapid_reset() -> None:
    """500 uploads answered before their body (the app does not read it), each then cancelled
    by the client with RST_STREAM CANCEL (it no longer needs to send the body): more than twice
    the reset budget (200) in well under a second, but no app was cut short, so the connection
    goes on."""
    async with serve() as (port, state):
        with trio.fail_after(TIMEOUT):
            async with h2_client(port) as c:
                sid = 1
                for _ in range(10):
                    ids = [sid + 2 * i for i in range(50)]
                    sid += 100
                    await c.send(*[c.get(s, "/", end_stream=False) for s in ids])
                    for s in ids:
                        st = await c.response(s)
                        assert (st.status, bytes(st.data)) == (200, b"ok"), (s, st)
                    assert await c.try_send(*[RstStreamFrame(s, error_code=CANCEL)
                                              for s in ids]), c.goaway
                await c.send(c.get(sid))
                st = await c.response(sid)
                assert (st.status, st.reset, c.goaway) == (200, None, None)
        assert state.hits == 501


# ========================================================================= configurable


async def test_control_frame_limit_is_configurable() -> None:
    """``max_control_frames_per_second=50`` (bursts of 100): 200 PINGs at once end the
    connection with GOAWAY ENHANCE_YOUR_CALM (the default's burst, 2000, answers them all:
    ``test_ping_flood`` in ``test_http2_bad_input``)."""
    limits = {"http2": Http2Limits(max_control_frames_per_second=50)}
    async with serve({"limits": limits}) as (port, _):
        with trio.fail_after(TIMEOUT):
            async with h2_client(port) as c:
                await c.send(*[raw_frame(PING, 0, 0, struct.pack(">Q", i)) for i in range(200)])
                with trio.move_on_after(3):
                    await c.read_until_closed()
                assert_flood_refused(c)
        await assert_serving(port)


@pytest.mark.parametrize(("rate", "cut"), [(10, True), (None, False)],
                         ids=["max_resets_per_second=10", "default"])
async def test_reset_limit_is_configurable(rate: int | None, cut: bool) -> None:
    """30 streams reset (CANCEL) while their apps run, in one write: within the default budget
    (100 a second, bursts of 200) the connection goes on and serves the next request; with
    ``max_resets_per_second=10`` (bursts of 20) it ends with GOAWAY ENHANCE_YOUR_CALM."""
    h2l = Http2Limits() if rate is None else Http2Limits(max_resets_per_second=rate)
    async with serve({"limits": {"http2": h2l}}) as (port, state):
        with trio.fail_after(TIMEOUT):
            async with h2_client(port) as c:
                ids = [1 + 2 * i for i in range(30)]
                await c.send(*[c.get(s, "/block") for s in ids])
                await wait_started(state, 30)
                await c.send(*[RstStreamFrame(s, error_code=CANCEL) for s in ids])
                if cut:
                    assert_goaway(await c.expect_goaway(), ENHANCE_YOUR_CALM, 59)
                else:
                    await c.send(c.get(61))
                    st = await c.response(61)
                    assert (st.status, bytes(st.data), c.goaway) == (200, b"ok", None)
        await assert_serving(port)


@pytest.mark.parametrize(("value_size", "field_size", "total", "status"), [
    (16384 - len("x-big"), None, None, 200),
    (16385 - len("x-big"), None, None, 431),
    (20 * 1024, None, None, 431),
    (20 * 1024, 32 * 1024, None, 200),
    (40 * 1024, 64 * 1024, 64 * 1024, 200),
], ids=["16384-default", "16385-default", "20KiB-default", "20KiB-raised",
        "40KiB-raised-with-max-header-bytes"])
async def test_max_header_field_size(value_size: int, field_size: int | None,
                                     total: int | None, status: int) -> None:
    """One request field (name + value) over ``max_header_field_size`` (16384 by default)
    gets 431 on its stream without reaching the app, and the connection goes on; raising the
    limit (and ``max_request_headers_total_size`` when the field passes it too) lets it
    through. Sent uncompressed, across HEADERS and CONTINUATION frames."""
    limits: dict[str, object] = {}
    if field_size is not None:
        limits["http2"] = Http2Limits(max_header_field_size=field_size)
    if total is not None:
        limits["max_request_headers_total_size"] = total
    async with serve({"limits": limits}) as (port, state):
        with trio.fail_after(TIMEOUT):
            async with h2_client(port) as c:
                block = c.encoder.encode([*c.request_headers(), (b"x-big", b"a" * value_size)],
                                         huffman=False)
                await c.send(*header_frames(1, block))
                st = await c.response(1)
                assert st.status == status, (st.status, bytes(st.data))
                if status == 431:
                    assert state.hits == 0
                    assert b"x-big" in st.data, bytes(st.data)  # names the field
                await c.send(c.get(3))
                st = await c.response(3)
                assert (st.status, bytes(st.data), c.goaway) == (200, b"ok", None)
        await assert_serving(port)


async def test_continuation_flood_with_a_raised_frame_size() -> None:
    """``max_frame_size`` raised to 256 KiB, then HEADERS and up to 100 CONTINUATION frames of
    256 KiB without END_HEADERS: the block can never be accepted once it is past the header
    limits (HPACK stops at twice ``max_request_headers_total_size``, 64 KiB), so the server
    ends the connection (GOAWAY ENHANCE_YOUR_CALM) once the unfinished block holds four times
    that, without holding more than a few frames of it. (h2 alone stops only at
    its 64th CONTINUATION: 16 MiB held here, 1 GiB with the largest frame size.)"""
    size = 256 * 1024
    async with serve({"limits": {"http2": Http2Limits(max_frame_size=size)}}) as (port, _):
        with trio.fail_after(TIMEOUT):
            async with h2_client(port) as c:
                sent, peak = await continuation_flood(c, size, 100)
                assert c.goaway is not None
                assert c.goaway.error_code == ENHANCE_YOUR_CALM, c.goaway
                await c.read_until_closed()
                assert peak < 4 * 1024 * 1024, f"{peak} bytes at peak, {sent} frames sent"
        await assert_serving(port)


# ==================================================================== holds and windows


async def test_streams_without_bodies_hold_only_their_connection() -> None:
    """Three connections each open 100 uploads (the stream limit) and never send a body byte:
    a fourth stream on them is refused, yet fresh connections are served meanwhile; once the
    minimum request body rate's grace period (1 s here) has passed every held stream is
    answered 408 and the abusing connection serves a new stream again."""
    limits = {"min_request_body_data_rate": MinDataRate(240, grace_period=1)}
    async with serve({"limits": limits}) as (port, _):
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                clients: list[RawH2] = []
                for _ in range(3):
                    clients.append(await nursery.start(hold_streams, port))
                start = trio.current_time()
                for c in clients:
                    await c.send(c.get(201))
                    assert await c.expect_reset(201) == REFUSED_STREAM
                await assert_serving(port)
                assert trio.current_time() - start < 1, "served only once the holds ended"
                for c in clients:
                    for i in range(100):
                        st = await c.response(1 + 2 * i)
                        assert st.status == 408, (1 + 2 * i, st)
                    await c.send(c.get(203))
                    st = await c.response(203)
                    assert (st.status, c.goaway) == (200, None)
                nursery.cancel_scope.cancel()
        await assert_serving(port)


async def hold_streams(port: int, task_status: trio.TaskStatus[RawH2]) -> None:
    """Open a connection with 100 uploads that never send their body; hand it over, keep it
    open until cancelled."""
    async with h2_client(port) as c:
        await c.send(*[c.get(1 + 2 * i, "/echo", end_stream=False) for i in range(100)])
        task_status.started(c)
        await trio.sleep_forever()


@pytest.mark.parametrize("chunk", [240, 16384], ids=["240B-writes", "16KiB-writes"])
async def test_zero_window_on_many_streams(chunk: int) -> None:
    """SETTINGS_INITIAL_WINDOW_SIZE 0 and 100 streams asking for 1 MiB each, which the app
    writes in ``chunk``-byte pieces: nothing can be sent, and the server neither buffers the
    bodies (its memory stays within a few MiB) nor holds the streams past the minimum response
    rate's deadline for the first write (Kestrel's rule: the grace period, 1 s here, plus the
    write's size at the minimum rate, set to ``chunk`` bytes per second so that it is 1 s more):
    every stream is reset (CANCEL) and every app sees the disconnect; other clients are served
    during the hold and after."""
    limits = {"min_response_data_rate": MinDataRate(chunk, grace_period=1)}
    async with serve({"limits": limits}) as (port, state):
        with trio.fail_after(TIMEOUT):
            tracemalloc.start()
            try:
                async with h2_client(port, {INITIAL_WINDOW_SIZE: 0}) as c:
                    start = trio.current_time()
                    ids = [1 + 2 * i for i in range(100)]
                    await c.send(*[c.get(s, f"/big?1048576,{chunk}") for s in ids])
                    await c.read_until(lambda: all(  # every app started its response
                        c.streams.get(s, StreamState()).status == 200 for s in ids))
                    await assert_serving(port)
                    with trio.move_on_after(5):
                        await c.read_until(lambda: all(
                            c.streams.get(s, StreamState()).reset is not None for s in ids))
                    elapsed = trio.current_time() - start
                    peak = tracemalloc.get_traced_memory()[1]
                    held = [s for s in ids if c.streams.get(s, StreamState()).reset is None]
                    assert not held, f"{len(held)} streams still held after {elapsed:.1f} s"
                    assert {c.streams[s].reset for s in ids} == {CANCEL}
                    assert all(c.streams[s].data == b"" for s in ids)
                    assert 0.9 < elapsed < 4, elapsed
                    assert c.goaway is None
            finally:
                tracemalloc.stop()
            await state.wait_for(lambda: len(state.outcomes) == 100)
            assert state.outcomes == ["ClientDisconnected"] * 100
            assert peak < 12 * 1024 * 1024, peak  # the bodies would be 100 MiB
        await assert_serving(port)


# ========================================================== regressions from review


class _GoInflow:
    """Go's ``inflow.add`` (x/net/http2): flow-control credit is returned once at least 4 KiB
    is unsent (``inflowMinRefresh``) or the window is nearly empty."""

    def __init__(self, avail: int) -> None:
        self.avail, self.unsent = avail, 0

    def take(self, n: int) -> None:
        self.avail -= n

    def add(self, n: int) -> int:
        unsent = self.unsent + n
        if unsent < 4096 and unsent < self.avail:
            self.unsent = unsent
            return 0
        self.avail += unsent
        self.unsent = 0
        return unsent


async def test_go_client_acknowledging_every_4kib_downloads_in_full() -> None:
    """A client returning window the way Go's net/http does while its app reads the body 4 KiB
    at a time (a connection and a stream WINDOW_UPDATE per 4 KiB: eight per 16 KiB DATA frame)
    downloads 20 MiB without being taken for a WINDOW_UPDATE flood (it once was, after
    6.5 MB: the server paid back only two tokens per DATA frame)."""
    total, stream_window, conn_window = 20 << 20, 4 << 20, 1 << 30
    async with serve() as (port, _):
        with trio.fail_after(60):
            async with h2_client(port, {INITIAL_WINDOW_SIZE: stream_window}) as c:
                await c.send(WindowUpdateFrame(0, window_increment=conn_window - 65535))
                conn, stream = _GoInflow(conn_window), _GoInflow(stream_window)
                await c.send(c.get(1, f"/big?{total},{64 << 10}"))
                received = updates = 0
                while c.goaway is None:
                    f = await c.read_frame()
                    if f is None:
                        break
                    if not (isinstance(f, DataFrame) and f.stream_id == 1):
                        continue
                    n = len(f.data)
                    conn.take(n)
                    stream.take(n)
                    received += n
                    out: list[WindowUpdateFrame] = []
                    while n:
                        step = min(4096, n)
                        n -= step
                        a, b = conn.add(step), stream.add(step)
                        if a:
                            out.append(WindowUpdateFrame(0, window_increment=a))
                        if b:
                            out.append(WindowUpdateFrame(1, window_increment=b))
                    updates += len(out)
                    if out and not await c.try_send(*out):
                        break
                    if "END_STREAM" in f.flags:
                        break
                assert c.goaway is None, c.goaway
                assert received == total
                assert updates > 8000  # the test really sent a WINDOW_UPDATE per 4 KiB


@pytest.mark.parametrize("kind", ["empty-data-end-stream", "one-byte-data", "headers"])
async def test_frames_on_a_reset_stream_are_a_flood(kind: str) -> None:
    """DATA or HEADERS frames on a stream the client itself reset: h2 answers each with
    RST_STREAM, work for nothing, so they count as control frames: GOAWAY ENHANCE_YOUR_CALM
    (they were once not counted at all: 20,000 such frames, 20,000 RST_STREAMs back)."""
    async with serve() as (port, _):
        with trio.fail_after(TIMEOUT * 3):
            async with h2_client(port) as c:
                await c.send(c.get(1, "/block", end_stream=False))
                await trio.sleep(0.05)
                await c.send(raw_frame(RST_STREAM, 0, 1, struct.pack(">I", CANCEL)))
                await trio.sleep(0.05)
                block = c.encoder.encode(c.request_headers("/"))
                frame = {"empty-data-end-stream": raw_frame(DATA, 0x1, 1),
                         "one-byte-data": raw_frame(DATA, 0, 1, b"x"),
                         "headers": raw_frame(0x1, 0x1 | 0x4, 1, block)}[kind]
                sent = await run_flood(c, [frame], FLOOD, settle=2.0)
                assert sent < FLOOD, "the whole flood went out: nothing stopped it"
                assert_flood_refused(c, 1)
        await assert_serving(port)


async def test_unknown_settings_identifiers_do_not_stall_the_server() -> None:
    """65,280 distinct unknown SETTINGS identifiers (24 frames), then 1,500 small SETTINGS frames
    (inside the control-frame burst): unknown identifiers are ignored (RFC 9113 §6.5.2), not
    stored, so later SETTINGS stay cheap. h2 alone keeps one entry per identifier and walks
    them all on every SETTINGS frame: the server's event loop once stalled for 10 s here."""

    def settings(ids: list[int]) -> bytes:
        return raw_frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", i, 1) for i in ids))

    async with serve() as (port, _):
        with trio.fail_after(60):
            async with h2_client(port) as c:
                ids = list(range(0x100, 0x10000))
                await c.send(*[settings(ids[i:i + 2730]) for i in range(0, len(ids), 2730)])
                await c.read_until(lambda: c.settings_acks >= 25 or c.goaway is not None)
                gaps: list[float] = []

                async def ticker() -> None:
                    last = trio.current_time()
                    while True:
                        await trio.sleep(0.01)
                        now = trio.current_time()
                        gaps.append(now - last)
                        last = now

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(ticker)
                    await trio.sleep(0.05)
                    await c.send(*[settings([0x100])] * 1500)
                    await c.read_until(lambda: c.settings_acks >= 1525 or c.goaway is not None)
                    await trio.sleep(0.05)
                    nursery.cancel_scope.cancel()
                assert c.goaway is None
                assert max(gaps) < 1.0, f"the event loop stalled {max(gaps):.2f} s"
        await assert_serving(port)
