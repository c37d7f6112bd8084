"""``WebSocketFeature``: one WebSocket's I/O, the same over HTTP/1.1 and HTTP/2.

The transport comes from the request's own features: over HTTP/1.1 ``UpgradeFeature.upgrade``
answers 101 and hands over the connection (with any bytes the client sent early); over HTTP/2
(RFC 8441) the stream's request body is the incoming byte stream and its response body the
outgoing one, under HTTP/2 flow control. Frames are :mod:`trioserve.protocols.websocket`'s.

Once accepted, a reader task (in the nursery the server opened for this request) reads frames,
answers pings, replies to the peer's close, and hands whole messages to ``receive()`` through a
one-message queue — an app that stops reading stops the reading of the socket too (backpressure,
as trio-websocket does). A keep-alive task pings the peer every ``ping_interval`` and drops a
peer that does not answer within ``ping_timeout``. Each wait is a cancel scope: the idle timeout
and the wait for the peer's close reply bound the reads; the minimum response data rate bounds
each write.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable

import trio

from .config import WebSocketConfig
from .features import (
    ClientDisconnected,
    FeatureCollection,
    FeatureStateError,
    RequestBodyFeature,
    RequestLifetimeFeature,
    ResponseBodyFeature,
    ResponseFeature,
    UpgradeFeature,
    WebSocketDisconnected,
)
from .protocols.websocket import (
    Closed,
    DeflateOptions,
    Message,
    Offer,
    Pong,
    WebSocketProtocol,
    accept_headers,
)

__all__ = ["WebSocketSession"]

log = logging.getLogger("trioserve.websocket")

Headers = list[tuple[bytes, bytes]]
RECEIVE_SIZE = 64 * 1024
_TRANSPORT_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, ClientDisconnected)


class _Inbox:
    """The one-message hand-off from the reader to the app: the reader waits while a message is
    unread (backpressure). A memory channel of size one, without its two scheduler round trips
    per message: a hand-off that need not wait does not yield, except every ``FAIR`` operations
    so a busy WebSocket cannot starve the others."""

    FAIR = 16
    __slots__ = ("_full", "_item", "_ops", "_receiver", "_recv_closed", "_send_closed", "_sender")

    def __init__(self) -> None:
        self._item: str | bytes = b""
        self._full = False
        self._send_closed = False
        self._recv_closed = False
        self._sender: trio.Event | None = None  # the reader waits for room
        self._receiver: trio.Event | None = None  # the app waits for a message
        self._ops = 0

    async def put(self, item: str | bytes) -> None:
        """Raises ``trio.BrokenResourceError`` once the app stopped receiving."""
        while self._full and not self._recv_closed:
            self._sender = event = trio.Event()
            await event.wait()
        if self._recv_closed:
            raise trio.BrokenResourceError("nobody receives")
        self._item = item
        self._full = True
        if self._receiver is not None:
            self._receiver.set()
            self._receiver = None
        await self._fair()

    async def get(self) -> str | bytes:
        """Raises ``trio.EndOfChannel`` once the reader is done and nothing is left."""
        while not self._full:
            if self._send_closed:
                raise trio.EndOfChannel
            self._receiver = event = trio.Event()
            await event.wait()
        item = self._item
        self._item = b""
        self._full = False
        if self._sender is not None:
            self._sender.set()
            self._sender = None
        await self._fair()
        return item

    async def _fair(self) -> None:
        self._ops += 1
        if self._ops >= self.FAIR:
            self._ops = 0
            await trio.lowlevel.checkpoint()

    def close_sending(self) -> None:
        self._send_closed = True
        if self._receiver is not None:
            self._receiver.set()
            self._receiver = None

    def close_receiving(self) -> None:
        self._recv_closed = True
        self._item = b""
        self._full = False
        if self._sender is not None:
            self._sender.set()
            self._sender = None


class WebSocketSession:
    """The server's :class:`~trioserve.features.WebSocketFeature` (see that class for the
    contract). The server creates one per WebSocket handshake request, runs the app, then
    calls :meth:`finish`; :meth:`going_away` starts a close with 1001 on shutdown."""

    def __init__(self, features: FeatureCollection, offer: Offer, config: WebSocketConfig,
                 nursery: trio.Nursery) -> None:
        self._features = features
        self._offer = offer
        self._config = config
        self._nursery = nursery
        self._state = "connecting"
        self._proto: WebSocketProtocol | None = None
        self._receive: Callable[[], Awaitable[bytes | bytearray]] | None = None
        self._write: Callable[[bytes], Awaitable[None]] | None = None
        self._writing = False  # a write is under way: other flushes wait for it
        self._write_done: trio.Event | None = None
        self._inbox = _Inbox()
        self._closed = trio.Event()  # the reader is done: nothing more will be received
        self._close_code: int | None = None
        self._close_reason = ""
        self._close_deadline = float("inf")  # our close frame is out: the reply must come by
        self._proto_close_sent_at: float | None = None
        self._last_frame = 0.0
        self._read_scope: trio.CancelScope | None = None
        self._pong: trio.Event | None = None
        self._lost = False  # the transport broke or the peer was dropped: no orderly end
        self._app_done = False
        self._going_away = False
        self._delivering = False  # the reader waits for the app to take a message
        self._sent_code: int | None = None

    # ------------------------------------------------------------------ the feature

    @property
    def subprotocols(self) -> tuple[str, ...]:
        return self._offer.subprotocols

    @property
    def extensions(self) -> tuple[str, ...]:
        return self._offer.extensions

    @property
    def state(self) -> str:
        return self._state

    @property
    def close_code(self) -> int | None:
        return self._close_code

    @property
    def close_reason(self) -> str:
        return self._close_reason

    async def accept(self, subprotocol: str | None = None,
                     headers: Headers | None = None) -> None:
        if self._state != "connecting":
            raise FeatureStateError(f"accept(): the WebSocket is already {self._state}")
        features = self._features
        response = features[ResponseFeature]
        if response.has_started:
            raise FeatureStateError("accept(): a response was already sent instead")
        config = self._config
        fields, extensions = accept_headers(
            self._offer, subprotocol, headers,
            DeflateOptions(config.per_message_deflate, config.deflate_max_window_bits,
                           config.deflate_level),
            config.max_message_size)
        if self._offer.http2:
            body = features[RequestBodyFeature]
            body.max_size = None  # the body is the WebSocket: its messages have their own limit
            out = features[ResponseBodyFeature]
            response.status = 200
            response.headers = fields
            await out.start()
            self._receive = body.receive
            self._write = out.send
        else:
            # The protocol switched to, not the client's whole Upgrade list.
            stream = await features[UpgradeFeature].upgrade([(b"upgrade", b"websocket"),
                                                             *fields])

            async def receive() -> bytes | bytearray:
                return await stream.receive_some(RECEIVE_SIZE)

            # (The upgraded stream bounds each write by the minimum response data rate.)
            self._receive = receive
            self._write = stream.send_all
        self._proto = WebSocketProtocol(extensions, config.max_message_size)
        self._state = "open"
        self._last_frame = trio.current_time()
        self._nursery.start_soon(self._read_loop)
        if config.ping_interval is not None:
            self._nursery.start_soon(self._keepalive, config.ping_interval)
        if self._going_away:
            self._nursery.start_soon(self.close, 1001, "server shutting down")

    async def receive(self) -> str | bytes:
        if self._state == "connecting":
            raise FeatureStateError("receive(): the WebSocket was not accepted")
        try:
            return await self._inbox.get()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            await self._closed.wait()
            raise self._disconnected() from None

    async def send(self, data: str | bytes) -> None:
        if self._state == "connecting":
            raise FeatureStateError("send(): the WebSocket was not accepted")
        if type(data) is not str and type(data) is not bytes:
            if not isinstance(data, str | bytes | bytearray | memoryview):
                raise TypeError(f"WebSocket messages are str or bytes, got "
                                f"{type(data).__name__}")
            data = data if isinstance(data, str) else bytes(data)
        proto = self._proto
        assert proto is not None
        # Queue only once no other write is under way: a send cancelled while waiting sends
        # nothing, and many concurrent senders cannot pile up output behind a slow peer.
        await self._wait_writer()
        if self._lost or not proto.can_send:
            raise self._disconnected()
        proto.send_message(data)
        await self._flush()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._state == "connecting":
            raise FeatureStateError("close(): the WebSocket was not accepted; refuse it with "
                                    "an HTTP response instead")
        proto = self._proto
        assert proto is not None
        if self._lost or proto.close_sent:
            await trio.lowlevel.checkpoint()
            return
        proto.send_close(code, reason)
        self._sent_code = code
        self._closing()
        try:
            await self._flush()
        except WebSocketDisconnected:
            pass

    def _disconnected(self) -> WebSocketDisconnected:
        """What ``send``/``receive`` raise once the WebSocket is closed: the peer's code, or
        while our own close awaits its reply, ours."""
        if self._close_code is not None:
            return WebSocketDisconnected(self._close_code, self._close_reason)
        return WebSocketDisconnected(self._sent_code or 1006, "")

    # ------------------------------------------------------------------ server side

    def going_away(self) -> None:
        """The server is shutting down: close with 1001 (now, or as soon as accepted). The
        peer's reply ends ``receive()`` with :class:`WebSocketDisconnected`."""
        self._going_away = True
        if self._state == "open" and not self._app_done:
            self._nursery.start_soon(self.close, 1001, "server shutting down")

    async def finish(self, failed: bool) -> None:
        """After the app returned (``failed``: it raised): close with 1000 (1011 if it failed)
        unless closed already, wait up to ``close_timeout`` for the peer's reply, then end the
        transport (HTTP/2: end the stream, or reset it if the WebSocket was lost)."""
        self._app_done = True
        self._inbox.close_receiving()
        if self._state == "connecting":
            return
        proto = self._proto
        assert proto is not None
        try:
            if not self._lost and not proto.close_sent and proto.can_send:
                proto.send_close(1011 if failed else 1000,
                                 "internal error" if failed else "")
                self._closing()
                await self._flush()
            if not self._lost:
                await self._closed.wait()  # the reader stops by the close deadline at the latest
        except WebSocketDisconnected:
            pass
        finally:
            self._state = "closed"
            if self._offer.http2:
                out = self._features[ResponseBodyFeature]
                if self._lost or not proto.close_received:
                    self._features[RequestLifetimeFeature].abort()
                elif not out.is_complete:
                    try:
                        await out.complete()
                    except ClientDisconnected:
                        pass

    # ------------------------------------------------------------------ internals

    def _closing(self) -> None:
        """Our close frame is queued: the peer's reply must come within ``close_timeout``."""
        if self._state == "open":
            self._state = "closing"
        now = trio.current_time()
        self._proto_close_sent_at = now
        self._close_deadline = now + self._config.close_timeout
        scope = self._read_scope
        if scope is not None:
            scope.deadline = min(scope.deadline, self._close_deadline)

    async def _wait_writer(self) -> None:
        while self._writing:
            if self._write_done is None:
                self._write_done = trio.Event()
            await self._write_done.wait()

    async def _flush(self) -> None:
        """Write whatever the protocol queued (in order; one writer at a time, and whoever
        writes takes everything queued). A write that fails (the connection broke, or the peer
        reads too slowly) loses the WebSocket and raises :class:`WebSocketDisconnected`."""
        proto = self._proto
        write = self._write
        assert proto is not None and write is not None
        await self._wait_writer()
        if self._lost:
            raise self._disconnected()
        data = proto.data_to_send()
        if not data:
            return
        self._writing = True
        try:
            await write(data)
        except _TRANSPORT_ERRORS:
            # A frame may be cut short on the wire: nothing more can be sent.
            self._drop("the connection broke or the peer read too slowly")
            raise self._disconnected() from None
        except BaseException:
            # Cancelled mid-write (the app's own timeout, a forced shutdown): part of a frame
            # may be out, so the stream can no longer be trusted.
            self._drop("a write was interrupted")
            raise
        finally:
            self._writing = False
            if self._write_done is not None:
                self._write_done.set()
                self._write_done = None

    async def _read_loop(self) -> None:
        proto = self._proto
        receive = self._receive
        assert proto is not None and receive is not None
        idle = self._config.idle_timeout
        try:
            while True:
                deadline = self._close_deadline
                if idle is not None and not proto.close_sent:
                    deadline = min(deadline, self._last_frame + idle)
                with trio.CancelScope(deadline=deadline) as scope:
                    self._read_scope = scope
                    data = await receive()
                self._read_scope = None
                if scope.cancelled_caught:
                    if self._lost:  # dropped by the keep-alive
                        return
                    if proto.close_sent:
                        log.info("WebSocket peer did not answer the close frame within %gs; "
                                 "dropping it", self._config.close_timeout)
                        self._drop("no reply to the close frame")
                        return
                    # Idle: close with 1001 and keep reading for the reply.
                    proto.send_close(1001, "idle timeout")
                    self._sent_code = 1001
                    self._closing()
                    await self._flush()
                    continue
                self._last_frame = trio.current_time()
                proto.feed(bytes(data))
                for ev in proto.events():
                    if type(ev) is Message:
                        if proto.has_output:
                            await self._flush()  # pongs first: the app may take its time
                        if not self._app_done:
                            self._delivering = True
                            blocked = trio.current_time()
                            try:
                                await self._inbox.put(ev.data)
                            except trio.BrokenResourceError:
                                pass  # the app is done: the message has no reader
                            finally:
                                self._delivering = False
                                now = trio.current_time()
                                self._last_frame = now
                                # Waiting for the app is not the peer's delay.
                                sent_at = self._proto_close_sent_at
                                if sent_at is not None and not self._app_done:
                                    # only the part of the wait after our close frame went out
                                    self._close_deadline += now - max(blocked, sent_at)
                    elif type(ev) is Pong:
                        if self._pong is not None:
                            self._pong.set()
                    elif type(ev) is Closed:
                        self._close_code = ev.code
                        self._close_reason = ev.reason
                        if ev.failed:
                            log.debug("WebSocket closed for a protocol error (%d): %s",
                                     ev.code, ev.reason)
                        if proto.has_output:
                            await self._flush()  # the reply to the close, or ours for a failure
                        if ev.code == 1006:
                            self._lost = True
                        return
                if proto.has_output:
                    await self._flush()
        except (*_TRANSPORT_ERRORS, WebSocketDisconnected):
            self._drop("the connection broke")
        finally:
            self._read_scope = None
            self._state = "closed"
            self._inbox.close_sending()
            self._closed.set()

    def _drop(self, reason: str) -> None:
        """The WebSocket is lost (no orderly close possible): the app sees 1006."""
        self._lost = True
        self._state = "closed"
        if self._close_code is None:
            self._close_code = 1006
            self._close_reason = reason

    async def _keepalive(self, interval: float) -> None:
        """Ping every ``interval``; a peer that sends nothing (no pong, no frame) within
        ``ping_timeout`` is dropped. Time the reader spends waiting for the app to take a
        message does not count: the peer cannot be heard then."""
        proto = self._proto
        assert proto is not None
        timeout = self._config.ping_timeout
        try:
            while True:
                await trio.sleep(interval)
                if not proto.can_send or self._closed.is_set():
                    return
                self._pong = pong = trio.Event()
                proto.send_ping(os.urandom(4))
                await self._flush()
                deadline = trio.current_time() + timeout
                while not pong.is_set():
                    with trio.move_on_at(deadline):
                        await pong.wait()
                    if pong.is_set() or self._closed.is_set():
                        break
                    now = trio.current_time()
                    if self._delivering:  # not being read: the pong may be waiting unread
                        deadline = now + timeout
                        continue
                    if self._last_frame + timeout > now:  # heard from lately
                        deadline = self._last_frame + timeout
                        continue
                    log.info("WebSocket peer did not answer a ping within %gs; dropping it",
                             timeout)
                    self._drop("no reply to a ping")
                    self._closed.set()
                    self._inbox.close_sending()
                    if self._read_scope is not None:
                        self._read_scope.cancel()
                    return
        except WebSocketDisconnected:
            pass
