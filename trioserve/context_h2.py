"""One HTTP/2 stream's features: the same feature protocols HTTP/1.1 requests have.

The objects here implement :mod:`trioserve.features` on top of the sans-IO
:class:`~trioserve.protocols.http2.HTTP2Protocol` and a :class:`H2Connection` (implemented in
:mod:`trioserve.server`, which owns the tasks and deadlines):

- :class:`H2Stream`: the stream's state, events from the connection's reader, the send path
  (flow control windows, the output backpressure, the minimum response data rate);
- :class:`H2Request`: ``RequestFeature`` and ``RequestLifetimeFeature``;
- :class:`H2RequestBody`: ``RequestBodyFeature``; body bytes are acknowledged to the peer (its
  flow-control window) only as the application reads them;
- :class:`H2Response`: ``ResponseFeature``, ``ResponseBodyFeature`` and ``EarlyHintsFeature``.

There is no ``UpgradeFeature``: HTTP/2 has no ``Upgrade`` (WebSockets over HTTP/2 use extended
CONNECT, RFC 8441).
"""

from __future__ import annotations

import collections
import os
import time
from typing import TYPE_CHECKING, Protocol

import trio

from .config import MinDataRate
from .context import BadRequestBody, ResponseState, _split_target, decode_path
from .features import (
    ClientDisconnected,
    EarlyHintsFeature,
    FeatureCollection,
    FeatureStateError,
    Headers,
    RequestBodyFeature,
    RequestBodyTooLarge,
    RequestContext,
    RequestFeature,
    RequestLifetimeFeature,
    ResponseBodyFeature,
    ResponseFeature,
)
from .protocols.events import RequestHead, ResponseError
from .protocols.http2 import CANCEL, INTERNAL_ERROR, NO_ERROR

if TYPE_CHECKING:
    from .metrics import Metrics
    from .protocols.http2 import HTTP2Protocol

__all__ = ["H2Connection", "H2Request", "H2RequestBody", "H2Response", "H2Stream"]

FILE_PIECE = 256 * 1024  # bytes of a file read (in a thread) per DATA write


class H2Connection(Protocol):
    """What a stream needs from its connection (implemented in :mod:`trioserve.server`)."""

    proto: HTTP2Protocol
    features: FeatureCollection
    root_path: str
    scheme: str
    response_rate: MinDataRate | None
    body_rate: MinDataRate | None
    metrics: Metrics | None
    """The server's metrics (``None``: nothing is counted)."""

    def kick(self) -> None:
        """Output was queued in the protocol: have it written."""
        ...

    async def wait_drained(self) -> None:
        """Return once the queued output is small again (raises ``ClientDisconnected`` when the
        connection is broken)."""
        ...


class H2Stream:
    """One request/response exchange on stream ``stream_id``."""

    __slots__ = (
        "_done",
        "_window",
        "aborted",
        "body",
        "closed",
        "conn",
        "context",
        "head",
        "rejected",
        "request",
        "response",
        "start_time",
        "stream_id",
        "tunnel",
        "window_waited",
    )

    def __init__(self, conn: H2Connection, stream_id: int, head: RequestHead, end_stream: bool,
                 max_body_size: int | None) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.head = head
        self.start_time = time.perf_counter()
        self.aborted = False
        self.closed = False  # RST_STREAM sent or received (or the connection is gone)
        self.rejected = False
        self._done: trio.Event | None = None
        self._window: trio.Event | None = None
        self.window_waited = 0.0  # seconds spent waiting for the peer's window
        # Extended CONNECT (a WebSocket): the body is a long-lived byte stream, so the minimum
        # request body data rate does not apply to it.
        self.tunnel = False
        self.request = req = H2Request(self)
        self.body = body = H2RequestBody(self, max_body_size, end_stream)
        self.response = resp = H2Response(self)
        items: dict[type, object] = {
            RequestFeature: req,
            RequestLifetimeFeature: req,
            RequestBodyFeature: body,
            ResponseFeature: resp,
            ResponseBodyFeature: resp,
            EarlyHintsFeature: resp,
        }
        self.context = RequestContext(FeatureCollection(items, conn.features))

    # ------------------------------------------------------------ from the reader

    def on_data(self, data: bytes, flow_length: int) -> None:
        self.body.add(data, flow_length)

    def on_end(self, trailers: Headers) -> None:
        self.body.end(trailers)

    def on_window(self) -> None:
        if self._window is not None:
            self._window.set()
            self._window = None

    def abort(self) -> None:
        """The peer reset the stream or the connection is gone: nothing more can be sent or
        received; every waiter wakes."""
        if self.aborted:
            return
        self.aborted = True
        self.body.wake()
        self.on_window()
        self.signal_done()

    # ------------------------------------------------------------------ state

    def done_event(self) -> trio.Event:
        if self._done is None:
            self._done = trio.Event()
        return self._done

    def signal_done(self) -> None:
        if self._done is not None:
            self._done.set()

    def reset(self, error_code: int) -> None:
        """Reset the stream from our side (a response cut short, a body no longer wanted)."""
        self.conn.proto.reset(self.stream_id, error_code)
        self.closed = True
        self.conn.kick()
        if error_code != NO_ERROR:
            self.abort()

    async def reject(self, status: int, message: str) -> None:
        """Answer ``status`` (413/408 for a body, 500 for a failed app) if the response has not
        started, else reset the stream: the response under way cannot be finished honestly."""
        resp = self.response
        if resp.has_started or self.aborted or resp.is_complete:
            if not resp.is_complete:
                resp.mark_done()
                self.reset(INTERNAL_ERROR)
            return
        self.rejected = True
        await send_error(self, status, message)

    # ------------------------------------------------------------------ sending

    async def send_body(self, data: bytes | memoryview, end: bool) -> None:
        """Send ``data`` (and end the stream if ``end``), waiting for window as needed. A wait
        for window or for the connection's output is bounded by the minimum response data rate:
        past it the stream is reset. Raises ``ClientDisconnected`` when the stream or the
        connection is gone, ``ResponseError`` for a body the protocol refuses."""
        conn = self.conn
        proto = conn.proto
        sid = self.stream_id
        view = memoryview(data) if len(data) else data
        while True:
            if self.aborted:
                raise ClientDisconnected("the client reset the stream or disconnected")
            n = proto.send_data(sid, view, end)
            conn.kick()
            if proto.pending_output > HIGH_WATER:
                await conn.wait_drained()
            if n == len(view):
                return
            view = view[n:]
            await self._wait_window()

    async def _wait_window(self) -> None:
        """Wait until the peer grants window. The minimum response data rate bounds the time
        spent waiting over the whole response (not per wait, which a client granting one byte
        at a time would defeat): the grace period plus the body bytes sent so far at the
        minimum rate. Past it the stream is reset (``CANCEL``), counted as the
        ``response_rate`` rejection, and ``ClientDisconnected`` is raised."""
        if self.conn.proto.send_window(self.stream_id) > 0:
            return
        rate = self.conn.response_rate
        if rate is None:
            budget = float("inf")
        else:
            allowed = rate.grace_period + self.response.bytes_sent / rate.bytes_per_second
            budget = max(allowed - self.window_waited, 0.0)
        started = trio.current_time()
        with trio.move_on_after(budget) as scope:
            while not self.aborted and self.conn.proto.send_window(self.stream_id) <= 0:
                if self._window is None:
                    self._window = trio.Event()
                await self._window.wait()
        self.window_waited += trio.current_time() - started
        if scope.cancelled_caught:
            self.response.mark_done()
            self.reset(CANCEL)
            metrics = self.conn.metrics
            if metrics is not None:
                metrics.reject("response_rate")
            raise ClientDisconnected("the client did not open its flow-control window in time "
                                     "(minimum response data rate)")


HIGH_WATER = 256 * 1024
"""Queued output (bytes) past which a stream's writes wait for the connection to send."""


async def send_error(stream: H2Stream, status: int, message: str) -> None:
    """A plain-text error response on ``stream`` (the request refused or failed before its
    response started); the stream's unread body is refused with ``RST_STREAM(NO_ERROR)``."""
    body = (message + "\n").encode("utf-8", "replace")
    resp = stream.response
    resp._status = status
    resp._started = True
    resp.mark_done()
    proto = stream.conn.proto
    try:
        ended = proto.send_headers(
            stream.stream_id, status,
            [(b"content-type", b"text/plain; charset=utf-8")],
            method=stream.head.method, body_length=len(body))
        if not ended:
            resp.bytes_sent += len(body)
            await stream.send_body(body, True)
    except (ResponseError, ClientDisconnected):
        pass
    stream.conn.kick()
    stream.signal_done()


class H2Request:
    """``RequestFeature`` and ``RequestLifetimeFeature`` of one stream."""

    __slots__ = (
        "_s",
        "headers",
        "http_version",
        "method",
        "path",
        "query_string",
        "raw_path",
        "raw_target",
        "root_path",
        "scheme",
    )

    def __init__(self, s: H2Stream) -> None:
        self._s = s
        head = s.head
        raw_path, query = _split_target(head.method, head.target)
        self.method = head.method.decode("ascii", "replace")
        self.raw_target = head.target
        self.raw_path = raw_path
        self.query_string = query
        self.path = decode_path(raw_path)
        self.scheme = s.conn.scheme  # the connection's, not the client's :scheme claim
        self.root_path = s.conn.root_path
        self.http_version = "2"
        self.headers = head.headers

    @property
    def aborted(self) -> bool:
        return self._s.aborted

    def abort(self) -> None:
        s = self._s
        if not s.response.is_complete:
            s.response.mark_done()
            s.reset(CANCEL)
        s.abort()

    async def wait_done(self) -> None:
        s = self._s
        if not s.body.is_complete and not s.tunnel:
            # (A tunnel's body is its byte stream: the connection's reader sees a reset anyway.)
            raise FeatureStateError("wait_done() needs the request body to be fully read first")
        if s.aborted or s.response.is_complete:
            await trio.lowlevel.checkpoint()
            return
        await s.done_event().wait()


class H2RequestBody:
    """``RequestBodyFeature`` of one stream: chunks the reader delivered, acknowledged to the
    peer (window granted again) as they are read."""

    __slots__ = ("_chunks", "_done", "_ended", "_max_size", "_s", "_started", "_wake",
                 "received", "trailers", "waited")

    def __init__(self, s: H2Stream, max_size: int | None, ended: bool) -> None:
        self._s = s
        self._max_size = max_size
        self._chunks: collections.deque[tuple[bytes, int]] = collections.deque()
        self._ended = ended  # END_STREAM seen
        self._done = ended  # END_STREAM seen and every chunk read
        self._started = False
        self._wake: trio.Event | None = None
        self.received = 0
        self.waited = 0.0
        self.trailers: Headers = []

    # from the reader
    def add(self, data: bytes, flow_length: int) -> None:
        if self._ended:
            return
        if not data:
            # An empty DATA frame (maybe padded) is not the end of the body: there is nothing
            # for the app, only window (the padding) to give back.
            if flow_length:
                s = self._s
                s.conn.proto.consumed(s.stream_id, flow_length)
            return
        self._chunks.append((data, flow_length))
        self.wake()

    def end(self, trailers: Headers) -> None:
        if trailers:
            self.trailers = trailers
        self._ended = True
        if not self._chunks:
            self._done = True
        self.wake()

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()
            self._wake = None

    def discard(self) -> int:
        """Forget unread chunks; returns their flow-controlled size (to give back)."""
        n = sum(f for _, f in self._chunks)
        self._chunks.clear()
        return n

    @property
    def peer_ended(self) -> bool:
        """The client has sent the whole body (END_STREAM), read or not."""
        return self._ended

    @property
    def max_size(self) -> int | None:
        return self._max_size

    @max_size.setter
    def max_size(self, value: int | None) -> None:
        if self._started:
            raise FeatureStateError("max_size cannot change after the request body was read")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 0):
            raise ValueError(f"max_size must be a non-negative integer or None, got {value!r}")
        self._max_size = value

    @property
    def expected_length(self) -> int | None:
        return self._s.head.content_length

    @property
    def is_complete(self) -> bool:
        return self._done

    async def receive(self) -> bytes:
        s = self._s
        if s.rejected:
            raise ClientDisconnected("the request was already answered with an error")
        if self._done:
            await trio.lowlevel.checkpoint()
            return b""
        conn = s.conn
        if not self._started:
            self._started = True
            length = s.head.content_length
            limit = self._max_size
            if limit is not None and length is not None and length > limit:
                await self._too_large(limit)
            if s.head.expects_continue and not s.response.has_started and not s.aborted:
                try:
                    conn.proto.send_informational(s.stream_id, 100, [])
                except ResponseError:
                    pass
                conn.kick()
        while not self._chunks:
            if s.aborted:
                raise ClientDisconnected("the client reset the stream or disconnected")
            if self._ended:
                self._done = True
                await trio.lowlevel.checkpoint()
                return b""
            await self._wait()
        data, flow = self._chunks.popleft()
        if self._ended and not self._chunks:
            self._done = True
        conn.proto.consumed(s.stream_id, flow)
        conn.kick()
        self.received += len(data)
        if self._max_size is not None and self.received > self._max_size:
            await self._too_large(self._max_size)
        await trio.lowlevel.checkpoint()
        return data

    async def _wait(self) -> None:
        rate = None if self._s.tunnel else self._s.conn.body_rate
        self._wake = event = trio.Event()
        if rate is None:
            await event.wait()
            return
        allowed = max(rate.grace_period, self.received / rate.bytes_per_second)
        budget = max(allowed - self.waited, 0.0)
        started = trio.current_time()
        with trio.move_on_after(budget) as scope:
            await event.wait()
        self.waited += trio.current_time() - started
        if scope.cancelled_caught:
            metrics = self._s.conn.metrics
            if metrics is not None:  # once: every later read raises ClientDisconnected
                metrics.reject("body_rate")
            msg = (f"request body arrived more slowly than {rate.bytes_per_second:g} bytes per "
                   "second")
            await self._s.reject(408, msg)
            raise BadRequestBody(msg, 408)

    async def _too_large(self, limit: int) -> None:
        # Counted here, even when the response has begun and the stream is reset instead of
        # answered 413; once: a reset stream's buffered chunks can still be read (and go
        # over the limit again), a stream answered 413 cannot be read.
        metrics = self._s.conn.metrics
        if metrics is not None and not self._s.aborted:
            metrics.reject("body_size")
        msg = f"request body larger than the limit of {limit} bytes"
        await self._s.reject(413, msg)
        raise RequestBodyTooLarge(msg)


class H2Response(ResponseState):
    """``ResponseFeature``, ``ResponseBodyFeature`` and ``EarlyHintsFeature`` of one stream.
    HTTP/2 has no reason phrase: ``reason`` is kept (and checked) but not sent."""

    __slots__ = ("_no_body", "_s", "_started")

    def __init__(self, s: H2Stream) -> None:
        super().__init__()
        self._s = s
        self._started = False
        self._no_body = False  # the head ended the stream (HEAD, 204, 304): bodies are dropped

    @property
    def has_started(self) -> bool:
        return self._started

    def _check_writable(self) -> None:
        s = self._s
        if s.aborted or s.rejected:
            raise ClientDisconnected("the client reset the stream or disconnected, or the "
                                     "request was answered with an error by the server")
        if self._done:
            raise FeatureStateError("the response is already complete")

    async def _head(self, body_length: int | None) -> bool:
        """Run ``on_starting`` callbacks and send the head; returns whether it ended the
        stream."""
        if self._starting_cbs:
            await self.run_starting_callbacks()
            self._check_writable()
        s = self._s
        ended = s.conn.proto.send_headers(s.stream_id, self._status, self._headers,
                                          method=s.head.method, body_length=body_length)
        self._started = True
        self._no_body = ended
        s.conn.kick()
        return ended

    async def send_early_hints(self, headers: Headers) -> None:
        if self._started or self._done:
            raise FeatureStateError("cannot send early hints: the final response has started")
        s = self._s
        if s.aborted:
            raise ClientDisconnected("the client reset the stream or disconnected")
        try:
            s.conn.proto.send_informational(s.stream_id, 103, headers)
        except ResponseError as exc:
            raise ValueError(str(exc)) from None
        s.conn.kick()

    async def start(self) -> None:
        self._check_writable()
        if not self._started:
            await self._head(None)

    async def send(self, data: bytes) -> None:
        self._check_writable()
        if not self._started:
            await self._head(None)
        if data:
            self.bytes_sent += len(data)
            await self._send(data, False)

    async def _send(self, data: bytes | memoryview, end: bool) -> None:
        if self._no_body:
            await trio.lowlevel.checkpoint()
            return
        try:
            await self._s.send_body(data, end)
        except BaseException:
            # Interrupted (cancelled, client gone, body refused): the response can no longer
            # be finished honestly.
            if not self._done:
                self._done = True
                self._s.reset(INTERNAL_ERROR)
            raise

    async def complete(self, data: bytes = b"", *, trailers: Headers | None = None) -> None:
        self._check_writable()
        s = self._s
        if not self._started:
            await self._head(len(data) if not trailers else None)
        if self._no_body:
            self._done = True
            self.delivered = True
            s.signal_done()
            await trio.lowlevel.checkpoint()
            return
        if trailers:
            if data:
                self.bytes_sent += len(data)
                await self._send(data, False)
            self._done = True
            try:
                s.conn.proto.end_stream(s.stream_id, trailers)
            except ResponseError:
                s.reset(INTERNAL_ERROR)
                raise
            s.conn.kick()
        else:
            self.bytes_sent += len(data)
            self._done = True
            try:
                await s.send_body(data, True)
            except BaseException:
                s.reset(INTERNAL_ERROR)
                raise
        self.delivered = True
        s.signal_done()

    async def send_file(
        self, path: str | os.PathLike[str] | int, offset: int = 0, count: int | None = None
    ) -> None:
        self._check_writable()
        size = os.stat(path).st_size
        if offset < 0 or offset > size:
            raise ValueError(f"offset {offset} outside the file (size {size})")
        if count is None:
            count = size - offset
        if count < 0 or offset + count > size:
            raise ValueError(f"count {count} from offset {offset} exceeds the file size {size}")
        if not self._started:
            await self._head(None)
        if count == 0 or self._no_body:
            return
        f = None if isinstance(path, int) else await trio.to_thread.run_sync(open, path, "rb")
        try:
            fd = f.fileno() if f is not None else path
            assert isinstance(fd, int)
            sent = 0
            while sent < count:
                piece = await trio.to_thread.run_sync(os.pread, fd,
                                                      min(count - sent, FILE_PIECE),
                                                      offset + sent)
                if not piece:
                    name = path if isinstance(path, int) else os.fspath(path)
                    self._done = True
                    self._s.reset(INTERNAL_ERROR)
                    raise ResponseError(f"file {name!r} shrank while being sent")
                self.bytes_sent += len(piece)
                await self._send(piece, False)
                sent += len(piece)
        finally:
            if f is not None:
                f.close()
