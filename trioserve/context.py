"""One HTTP/1.1 request's features, built from a :class:`RequestHead`.

The objects here implement the protocols of :mod:`trioserve.features` on top of the sans-IO
:class:`~trioserve.protocols.http1.HTTP1Protocol` and an :class:`Exchange`'s connection, which
does the I/O (and owns every deadline; see :mod:`trioserve.server`).

- :class:`H1Request`: ``RequestFeature``, ``UpgradeFeature``, ``RequestLifetimeFeature``
- :class:`H1RequestBody`: ``RequestBodyFeature``
- :class:`H1Response`: ``ResponseFeature`` and ``ResponseBodyFeature``
"""

from __future__ import annotations

import os
import re
import time
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote_to_bytes

import trio

from .features import (
    Callback,
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
    UpgradeFeature,
)
from .protocols.events import (
    NEED_DATA,
    BodyData,
    EndOfBody,
    ProtocolError,
    RequestHead,
    ResponseError,
)

if TYPE_CHECKING:
    from .metrics import Metrics
    from .protocols.http1 import HTTP1Protocol

__all__ = [
    "BadRequestBody",
    "Connection",
    "Exchange",
    "H1Request",
    "H1RequestBody",
    "H1Response",
    "PrefixedStream",
    "ResponseState",
    "decode_path",
]


MAX_DRAIN_BYTES = 256 * 1024
"""An unread request body up to this size is read and discarded after the response so the
connection can be kept alive; a larger one ends keep-alive (``Connection: close``)."""


class BadRequestBody(RequestBodyTooLarge):
    """The request body broke the protocol (bad chunk framing) or arrived too slowly.
    ``status_code`` is 400 or 408; the server has answered it if the response had not started."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class Connection(Protocol):
    """What an exchange needs from its connection (implemented in :mod:`trioserve.server`)."""

    proto: HTTP1Protocol
    features: FeatureCollection
    root_path: str
    scheme: str

    @property
    def draining(self) -> bool: ...
    @property
    def metrics(self) -> Metrics | None:
        """The server's metrics (``None``: nothing is counted)."""
        ...
    @property
    def stream(self) -> trio.abc.Stream: ...
    async def send_all(self, data: bytes, *, last: bool = False) -> None:
        """Write response bytes; ``last``: the response's last write (the connection yields to
        the scheduler before the next request instead of after it)."""
        ...
    async def receive_body_event(self, exchange: Exchange) -> BodyData | EndOfBody: ...
    async def wait_for_disconnect(self, exchange: Exchange) -> None: ...
    async def send_file(self, path: str | os.PathLike[str] | int, offset: int, count: int,
                        prefix: bytes, suffix: bytes) -> int: ...


def decode_path(raw_path: bytes) -> str:
    """Percent-decode a path and decode it as UTF-8 (invalid sequences become U+FFFD)."""
    if b"%" not in raw_path:
        try:
            return raw_path.decode("ascii")
        except UnicodeDecodeError:
            return raw_path.decode("utf-8", "replace")
    return unquote_to_bytes(raw_path).decode("utf-8", "replace")


def _split_target(method: bytes, target: bytes) -> tuple[bytes, bytes]:
    """``(raw_path, query_string)`` of a request-target. An absolute-form target's scheme is
    not returned: the connection decides the scheme."""
    if target[:1] == b"/":
        path, _, query = target.partition(b"?")
        return path, query
    if target == b"*" or method == b"CONNECT":
        return target, b""
    # absolute-form, validated by the protocol: scheme "://" authority [path-abempty] ["?" query]
    _scheme, _, rest = target.partition(b"://")
    slash = len(rest)
    for sep in (b"/", b"?"):
        i = rest.find(sep)
        if 0 <= i < slash:
            slash = i
    path, _, query = rest[slash:].partition(b"?")
    return path or b"/", query


class Exchange:
    """One request/response exchange on an HTTP/1.1 connection: holds the three feature
    objects, the request's :class:`~trioserve.features.RequestContext`, and what the access log
    needs."""

    __slots__ = (
        "_done",
        "_reader_changed",
        "aborted",
        "body",
        "conn",
        "context",
        "disconnect_scope",
        "head",
        "read_ahead",
        "reading",
        "rejected",
        "request",
        "response",
        "start_time",
        "upgraded",
    )

    def __init__(self, conn: Connection, head: RequestHead, max_body_size: int | None) -> None:
        self.conn = conn
        self.head = head
        self.start_time = time.perf_counter()
        self.aborted = False
        self.rejected = False  # answered with an error by the server (413, 400, 408)
        self.upgraded = False
        self.disconnect_scope: trio.CancelScope | None = None
        self._done: trio.Event | None = None  # created only if someone waits for it
        self._reader_changed: trio.Event | None = None
        self.read_ahead = 0  # bytes of later requests read while waiting for a disconnect
        self.reading = False  # a task is reading the socket for a disconnect
        self.request = req = H1Request(self)
        self.body = body = H1RequestBody(self, max_body_size)
        self.response = resp = H1Response(self)
        items: dict[type, object] = {
            RequestFeature: req,
            UpgradeFeature: req,
            RequestLifetimeFeature: req,
            RequestBodyFeature: body,
            ResponseFeature: resp,
            ResponseBodyFeature: resp,
            EarlyHintsFeature: resp,
        }
        self.context = RequestContext(FeatureCollection(items, conn.features))

    def unread_body_ends_connection(self) -> bool:
        """Whether what is left of the request body rules out keep-alive: the client still
        waits for 100-continue (it may never send the body), or more than
        :data:`MAX_DRAIN_BYTES` of a Content-Length body is left to discard."""
        body = self.body
        if body.is_complete:
            return False
        head = self.head
        if head.expects_continue and not body.started:
            return True
        return (head.content_length is not None
                and head.content_length - body.received > MAX_DRAIN_BYTES)

    def done_event(self) -> trio.Event:
        """Set once the client disconnected, the request was aborted or the response
        completed."""
        if self._done is None:
            self._done = trio.Event()
        return self._done

    def reader_changed(self) -> trio.Event:
        """Set when the task reading the socket for a disconnect stops (or all is done)."""
        if self._reader_changed is None:
            self._reader_changed = trio.Event()
        return self._reader_changed

    def reader_left(self) -> None:
        if self._reader_changed is not None:
            self._reader_changed.set()
            self._reader_changed = None

    def signal_done(self) -> None:
        if self._done is not None:
            self._done.set()
        self.reader_left()
        if self.disconnect_scope is not None:
            self.disconnect_scope.cancel()

    def mark_aborted(self) -> None:
        self.aborted = True
        self.conn.proto.keep_alive = False
        self.signal_done()

    async def reject(self, status: int, message: str) -> None:
        """Answer ``status`` (413/400/408 for a body, 500 for a failed app) and end keep-alive
        if no response has started (the connection then closes in an orderly way, lingering so
        the client can read the answer); otherwise abort, since the response already under way
        cannot be finished honestly."""
        proto = self.conn.proto
        proto.keep_alive = False
        if proto.response_started or self.aborted:
            self.mark_aborted()
            return
        self.rejected = True
        response = self.response
        response._status = status
        response.mark_done()
        data = proto.error_response(status, message)
        response.bytes_sent += len(data)
        try:
            await self.conn.send_all(data)
        except ClientDisconnected:
            pass


class H1Request:
    """``RequestFeature``, ``UpgradeFeature`` and ``RequestLifetimeFeature`` of one request."""

    __slots__ = (
        "_ex",
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

    def __init__(self, ex: Exchange) -> None:
        self._ex = ex
        head = ex.head
        target = head.target
        if target[:1] == b"/":  # origin-form, nearly every request: _split_target inlined
            raw_path, _, query = target.partition(b"?")
        else:
            raw_path, query = _split_target(head.method, target)
        self.method = head.method.decode("ascii")
        self.raw_target = target
        self.raw_path = raw_path
        self.query_string = query
        self.path = decode_path(raw_path)
        # The connection decides the scheme: an absolute-form "https://" target sent over
        # plain TCP must not make the app believe the request was encrypted.
        self.scheme = ex.conn.scheme
        self.root_path = ex.conn.root_path
        self.http_version = "1.1" if head.http_version == b"1.1" else "1.0"
        self.headers = head.headers

    # RequestLifetimeFeature
    @property
    def aborted(self) -> bool:
        return self._ex.aborted

    def abort(self) -> None:
        self._ex.mark_aborted()

    async def wait_done(self) -> None:
        ex = self._ex
        if not ex.body.is_complete:
            raise FeatureStateError("wait_done() needs the request body to be fully read first")
        await ex.conn.wait_for_disconnect(ex)

    # UpgradeFeature
    @property
    def is_upgradable_request(self) -> bool:
        return self._ex.head.upgrade is not None

    @property
    def protocol(self) -> bytes | None:
        return self._ex.head.upgrade

    async def upgrade(self, headers: Headers | None = None) -> trio.abc.Stream:
        ex = self._ex
        proto = ex.conn.proto
        if ex.head.upgrade is None:
            raise FeatureStateError("the request did not ask to upgrade (no Connection: upgrade "
                                    "and Upgrade headers)")
        if proto.response_started:
            raise FeatureStateError("cannot upgrade: the response has already started")
        if not ex.body.is_complete:
            raise FeatureStateError("cannot upgrade before the request body was fully read")
        hdrs = list(headers or [])
        if not any(n.lower() == b"upgrade" for n, _ in hdrs):
            hdrs.append((b"upgrade", ex.head.upgrade))
        ex.response._status = 101
        data = proto.response_head(101, hdrs, switching_protocols=True)
        # A task waiting for a disconnect reads the socket: stop it and let it leave first,
        # so the new protocol alone reads the connection; what it read ahead is kept below.
        ex.signal_done()
        while ex.reading:
            await ex.reader_changed().wait()
        leftover = proto.switch_protocol()
        ex.upgraded = True
        ex.response.mark_done()
        await ex.conn.send_all(data)
        return PrefixedStream(ex.conn.stream, leftover)


class H1RequestBody:
    """``RequestBodyFeature``: streams the body from the connection, enforcing ``max_size``."""

    __slots__ = ("_done", "_error", "_ex", "_max_size", "_pending", "_started", "received",
                 "waited")

    def __init__(self, ex: Exchange, max_size: int | None) -> None:
        self._ex = ex
        self._max_size = max_size
        self._started = False
        self._done = not ex.head.has_body
        self._pending: bytes | None = None
        self._error: ProtocolError | None = None  # found while peeking, raised by the next read
        self.received = 0
        self.waited = 0.0  # seconds spent waiting for the client's body bytes

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
        return self._ex.head.content_length

    @property
    def is_complete(self) -> bool:
        return self._done and self._pending is None

    @property
    def started(self) -> bool:
        return self._started

    def mark_complete(self) -> None:
        self._done = True

    async def receive(self) -> bytes:
        ex = self._ex
        if self._pending is not None:
            data, self._pending = self._pending, None
            return data
        if ex.aborted or ex.rejected:
            raise ClientDisconnected("the request was aborted or already answered with an error")
        if self._done:
            return b""
        conn = ex.conn
        proto = conn.proto
        if not self._started:
            self._started = True
            length = ex.head.content_length
            limit = self._max_size
            if limit is not None and length is not None and length > limit:
                await self._too_large(limit)
            if ex.head.expects_continue and not proto.response_started:
                await conn.send_all(proto.informational(100))
        try:
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            ev = await conn.receive_body_event(ex)
            while type(ev) is BodyData and not ev.data:
                ev = await conn.receive_body_event(ex)
        except ProtocolError as exc:
            metrics = conn.metrics
            if metrics is not None:  # (431: trailers over the limit; 400 is no limit)
                metrics.body_rejected(exc.status_hint)
            await ex.reject(exc.status_hint, exc.message)
            raise BadRequestBody(exc.message, exc.status_hint) from None
        if type(ev) is EndOfBody:
            self._done = True
            return b""
        assert type(ev) is BodyData
        data = ev.data
        await self._count(data)
        # Peek without blocking so the caller learns the body ended with its last chunk.
        try:
            nxt = proto.next_event()
        except ProtocolError as exc:
            self._error = exc  # raised by the next receive(), with the parser's own message
            return data
        if type(nxt) is EndOfBody:
            self._done = True
        elif type(nxt) is BodyData:
            await self._count(nxt.data)
            self._pending = nxt.data
        else:
            assert nxt is NEED_DATA
        return data

    async def _count(self, data: bytes) -> None:
        """Count received body bytes against ``max_size``; past it answer 413 and raise
        :class:`RequestBodyTooLarge`."""
        self.received += len(data)
        if self._max_size is not None and self.received > self._max_size:
            await self._too_large(self._max_size)

    async def _too_large(self, limit: int) -> None:
        # Counted here, once (every later read raises ClientDisconnected), even when the
        # response has begun and the 413 cannot be sent (the exchange is aborted instead).
        metrics = self._ex.conn.metrics
        if metrics is not None:
            metrics.reject("body_size")
        msg = f"request body larger than the limit of {limit} bytes"
        await self._ex.reject(413, msg)
        raise RequestBodyTooLarge(msg)


_REASON_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class ResponseState:
    """What every protocol's ``ResponseFeature`` shares: the status, reason and headers that may
    change until the response starts, and the ``on_starting``/``on_completed`` callbacks.
    Subclasses say when the response has started (:attr:`has_started`)."""

    __slots__ = ("_completed_cbs", "_done", "_headers", "_reason", "_starting_cbs", "_status",
                 "bytes_sent", "delivered")

    def __init__(self) -> None:
        self._done = False
        # The whole response went to the connection (HTTP/2: queued), as complete() does it;
        # the metrics count a request without this (nor a server's error answer) as aborted.
        self.delivered = False
        self._starting_cbs: list[Callback] | None = None
        self._completed_cbs: list[Callback] | None = None
        self._status = 200
        self._reason: str | None = None
        self._headers: Headers = []
        self.bytes_sent = 0

    @property
    def has_started(self) -> bool:
        raise NotImplementedError

    @property
    def status(self) -> int:
        return self._status

    @status.setter
    def status(self, value: int) -> None:
        if self.has_started:
            raise FeatureStateError("cannot set the response status: the response has started")
        if isinstance(value, bool) or not isinstance(value, int) or not 200 <= value <= 999:
            raise ValueError(f"response status must be an integer 200-999 (1xx responses go "
                             f"through their own features), got {value!r}")
        self._status = int(value)

    @property
    def headers(self) -> Headers:
        """The response headers: a list to change freely until the response starts; after that
        a read-only view (changing it raises :class:`FeatureStateError`)."""
        if self.has_started:
            return _SentHeaders(self._headers)
        return self._headers

    @headers.setter
    def headers(self, value: Headers) -> None:
        if self.has_started:
            raise FeatureStateError("cannot replace the response headers: the response has "
                                    "started")
        self._headers = value

    @property
    def reason(self) -> str | None:
        return self._reason

    @reason.setter
    def reason(self, value: str | None) -> None:
        if self.has_started:
            raise FeatureStateError("cannot set the reason phrase: the response has started")
        if value is not None:
            try:
                encoded = value.encode("latin-1")
            except (AttributeError, UnicodeEncodeError):
                raise ValueError(f"reason phrase must be latin-1 text, got {value!r}") from None
            if _REASON_CONTROL.search(encoded):
                raise ValueError(f"reason phrase contains a control character: {value!r}")
        self._reason = value

    def on_starting(self, callback: Callback) -> None:
        if self.has_started:
            raise FeatureStateError("on_starting: the response has already started")
        if self._starting_cbs is None:
            self._starting_cbs = []
        self._starting_cbs.append(callback)

    def on_completed(self, callback: Callback) -> None:
        if self._completed_cbs is None:
            self._completed_cbs = []
        self._completed_cbs.append(callback)

    @property
    def has_completed_callbacks(self) -> bool:
        return bool(self._completed_cbs)

    def take_completed_callbacks(self) -> list[Callback]:
        cbs, self._completed_cbs = self._completed_cbs or [], None
        return cbs

    async def run_starting_callbacks(self) -> None:
        """Run the ``on_starting`` callbacks (last registered first), once."""
        cbs = self._starting_cbs
        if cbs:
            self._starting_cbs = None
            for cb in reversed(cbs):
                await cb()

    def mark_done(self) -> None:
        self._done = True

    @property
    def is_complete(self) -> bool:
        return self._done


class H1Response(ResponseState):
    """``ResponseFeature`` and ``ResponseBodyFeature`` of one HTTP/1.1 response."""

    __slots__ = ("_ex",)

    def __init__(self, ex: Exchange) -> None:
        super().__init__()
        self._ex = ex

    @property
    def has_started(self) -> bool:
        return self._ex.conn.proto.response_started

    def _check_writable(self) -> None:
        ex = self._ex
        if ex.aborted or ex.rejected:
            raise ClientDisconnected("the client disconnected, or the request was aborted or "
                                     "answered with an error by the server")
        if self._done:
            raise FeatureStateError("the response is already complete")

    async def _head(self, body_length: int | None) -> bytes:
        ex = self._ex
        if self._starting_cbs:
            await self.run_starting_callbacks()
        conn = ex.conn
        proto = conn.proto
        if conn.draining:
            proto.keep_alive = False
        elif proto.keep_alive and not ex.body.is_complete and ex.unread_body_ends_connection():
            # Answering before the body was read: say now that the connection will close.
            proto.keep_alive = False
        reason = self._reason.encode("latin-1") if self._reason is not None else None
        return proto.response_head(self._status, self._headers, reason=reason,
                                   body_length=body_length)

    async def _send(self, data: bytes, last: bool = False) -> None:
        await self._ex.conn.send_all(data, last=last)
        self.bytes_sent += len(data)

    # EarlyHintsFeature
    async def send_early_hints(self, headers: Headers) -> None:
        proto = self._ex.conn.proto
        if proto.response_started or self._done:
            raise FeatureStateError("cannot send early hints: the final response has started")
        try:
            data = proto.informational(103, headers)
        except ResponseError as exc:
            raise ValueError(str(exc)) from None
        if data:
            await self._ex.conn.send_all(data)

    async def start(self) -> None:
        self._check_writable()
        if not self.has_started:
            await self._send(await self._head(None))

    async def send(self, data: bytes) -> None:
        self._check_writable()
        proto = self._ex.conn.proto
        if not proto.response_started:
            head = await self._head(None)
            await self._send(head + proto.response_body(data))
        elif data:
            await self._send(proto.response_body(data))

    async def complete(self, data: bytes = b"", *, trailers: Headers | None = None) -> None:
        self._check_writable()
        proto = self._ex.conn.proto
        if not proto.response_started:
            out = await self._head(len(data))
            out += proto.response_body(data) + proto.response_end(trailers or [])
        else:
            out = proto.response_body(data) + proto.response_end(trailers or [])
        self._done = True
        if out:
            await self._send(out, last=True)
        self.delivered = True
        self._ex.signal_done()

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
        proto = self._ex.conn.proto
        if not proto.response_started:
            await self._send(await self._head(None))
        if not proto.body_allowed or count == 0:
            return
        prefix, suffix = proto.file_frame(count)
        sent = await self._ex.conn.send_file(path, offset, count, prefix, suffix)
        self.bytes_sent += sent


class _SentHeaders(list[tuple[bytes, bytes]]):
    """The headers of a response already sent: reading works, changing raises."""

    def _refuse(self, *args: object, **kwargs: object) -> None:
        raise FeatureStateError("cannot change the response headers: the response has started")

    append = extend = insert = remove = clear = sort = reverse = _refuse
    pop = __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse  # type: ignore[assignment]


class PrefixedStream(trio.abc.Stream):
    """A stream that first yields ``prefix`` (bytes already read past an upgrade request)."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            await trio.lowlevel.checkpoint()
            if max_bytes is None or max_bytes >= len(self._prefix):
                data, self._prefix = self._prefix, b""
            else:
                data, self._prefix = self._prefix[:max_bytes], self._prefix[max_bytes:]
            return data
        return await self._stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self._stream.aclose()
