"""The supervision tree: every nursery and every deadline of the server lives here.

::

    serve()                               root nursery
    ├── lifespan task                     app start-up before binding, shutdown after draining
    ├── shutdown watcher                  SIGINT/SIGTERM or the ``shutdown`` event
    └── connections nursery               cancelled at the graceful deadline
        ├── accept loop per listener      stops on shutdown; bounded by max_concurrent_connections
        └── connection task per socket    HTTP/1.1 requests run inline, one after another;
            │                             HTTP/2: a reader, a writer and a task per stream
            └── WebSocket nursery         per WebSocket request: its reader and keep-alive
                                          tasks, around the app

Deadlines, each one cancel scope around the wait it bounds: keep-alive idle
(``Timeouts.keep_alive``) and request headers (``Timeouts.request_headers``) on the connection's
timer scope, the minimum request body and response data rates
(``Limits.min_request_body_data_rate``, ``Limits.min_response_data_rate``) around reads and
writes that must wait, the graceful shutdown deadline (``Timeouts.graceful``, also bounding the
application's shutdown) and short clean-up deadlines for closing and lingering.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import itertools
import logging
import math
import os
import signal
import socket
import ssl
import struct
import threading
import time
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, TypeVar

import trio

from . import systemd
from .admin import AdminApp
from .config import Bind, Config, ConfigError, Limits, MinDataRate, Timeouts
from .context import MAX_DRAIN_BYTES, BadRequestBody, Exchange, ResponseState
from .context_h2 import HIGH_WATER, H2Stream, send_error
from .features import (
    Application,
    ClientDisconnected,
    ConnectionFeature,
    FeatureCollection,
    HostedApplication,
    LifespanFailure,
    RequestBodyTooLarge,
    RequestContext,
    ResponseBodyFeature,
    ResponseFeature,
    ServerAddressesFeature,
    ServerAddressesInfo,
    TlsFeature,
    WebSocketFeature,
)
from .listeners import BoundListener, ListenError, open_listeners
from .logs import fast_access_handler
from .metrics import Metrics
from .protocols.events import (
    NEED_DATA,
    BodyData,
    ConnectionClosed,
    EndOfBody,
    ProtocolError,
    RequestHead,
    ResponseError,
)
from .protocols.http1 import HTTP1Protocol, resolve_parser
from .protocols.http2 import (
    ENHANCE_YOUR_CALM,
    INTERNAL_ERROR,
    NO_ERROR,
    PREFACE,
    ConnectionEnded,
    HTTP2Protocol,
    StreamData,
    StreamEnded,
    StreamRefused,
    StreamRequest,
    StreamReset,
    WindowOpened,
    valid_h2c_settings,
)
from .protocols.proxy_protocol import (
    MAX_HEADER_SIZE,
    ProxyHeader,
    ProxyProtocolError,
    header_size,
    parse_proxy_header,
)
from .protocols.websocket import HandshakeError, check_handshake, is_websocket_upgrade
from .proxy import ForwardedHeaders, forwarded_peer_text
from .tls import TlsInfo, cipher_suites, leaf_certificate_pem, server_context
from .websocket import WebSocketSession

__all__ = ["ListeningAddresses", "run_admin_endpoint", "serve", "systemd_watchdog"]

log = logging.getLogger("trioserve")
access_log = logging.getLogger("trioserve.access")

RECEIVE_SIZE = 64 * 1024
CLOSE_TIMEOUT = 1.0  # bound on a socket's graceful close
LINGER_TIMEOUT = 2.0  # bound on discarding a request body the app did not read, before closing
MAX_LINGER_BYTES = 16 * 1024 * 1024
DRAIN_TIMEOUT = 2.0  # bound on reading an unread request body to keep the connection alive
MAX_PIPELINE_BUFFER = 64 * 1024  # bytes read ahead while waiting for a disconnect
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
ACCEPT_BACKOFF_MIN = 0.01  # seconds: the first retry of an accept out of descriptors
ACCEPT_BACKOFF_MAX = 1.0
# A drain does not close a connection waiting for a request at once (the request may be on its
# way: closing would lose it): the request gets this long to arrive, and is answered with
# "Connection: close".
DRAIN_GRACE = 1.0
_ids = itertools.count(1)


class ConnectionInfo:
    """``ConnectionFeature`` of one connection. ``trusted_proxy``: the connection comes from a
    trusted proxy, so its requests' forwarding headers are applied (decided once, when the
    connection is set up: :func:`_connection_task`)."""

    __slots__ = ("connection_id", "local", "peer", "trusted_proxy")

    def __init__(self, connection_id: str, peer: tuple[str, int] | None,
                 local: tuple[str, int] | None, trusted_proxy: bool = False) -> None:
        self.connection_id = connection_id
        self.peer = peer
        self.local = local
        self.trusted_proxy = trusted_proxy


def _address(sock: Any, peer: bool) -> tuple[str, int] | None:
    """The socket's peer (or local) ``(ip, port)``; ``None`` for a Unix socket, and when it
    cannot be had (a client that reset the connection before it was accepted)."""
    try:
        addr = sock.getpeername() if peer else sock.getsockname()
    except OSError:
        return None
    if isinstance(addr, tuple) and len(addr) >= 2:
        return (str(addr[0]), int(addr[1]))
    return None


class _Server:
    """State shared by the tree: config, draining flag, idle connections to close on drain."""

    def __init__(self, app: Application, config: Config, metrics: Metrics | None = None) -> None:
        self.app = app
        self.config = config
        self.metrics = metrics  # None: nothing is counted (one ``is None`` test per event)
        self.draining = False
        # waits for a request's first byte (and for a PROXY header or TLS handshake), whose
        # deadlines a drain shortens to DRAIN_GRACE
        self.request_waits: set[trio.CancelScope] = set()
        self.drain_callbacks: set[Callable[[], None]] = set()  # HTTP/2 connections' GOAWAY
        self.features = FeatureCollection()
        limit = config.limits.max_concurrent_connections
        self.connection_slots = trio.Semaphore(limit) if limit is not None else None
        self.server_header = (config.server_header.encode("ascii")
                              if config.server_header is not None else None)
        self.access_log = config.access_log
        self.ssl_context = (server_context(config.tls, http2=config.http2)
                            if config.tls is not None else None)
        self.cipher_suites = cipher_suites(self.ssl_context) if self.ssl_context else {}
        self.server_certificate_pem = (leaf_certificate_pem(config.tls.certfile)
                                       if config.tls is not None else None)
        try:
            self.http_parser = resolve_parser(config.http_parser)
        except ValueError as exc:  # httptools asked for but not installed
            raise ConfigError(f"Config.http_parser: {exc}") from None
        # Decided once the server starts, after the logging configuration is in place.
        self.fast_access = fast_access_handler() if config.access_log else None
        self.websockets = 0  # open WebSocket requests (Limits.max_concurrent_upgraded_connections)
        self.requests = 0  # requests whose app call is in progress (both protocols)
        self.request_limit = config.limits.max_concurrent_requests
        self._busy_logged = -math.inf
        # Behind a proxy; each None when off (one test per request, per connection).
        proxy = ForwardedHeaders(config.proxy)
        self.forwarded_headers = proxy if config.proxy.headers != "off" else None
        self.proxy_protocol = proxy if config.proxy.proxy_protocol else None  # trust check
        self.proxy_logged = -math.inf  # last PROXY protocol WARNING (one a second at most)

    async def run_upgrade(self, ctx: RequestContext, head: RequestHead) -> None:
        """Run the app for a request that asks to switch protocols (``head.upgrade``: the
        HTTP/1.1 ``Upgrade`` value or the HTTP/2 ``:protocol``). A WebSocket handshake is
        checked first (an invalid one is answered 400 with the reason, one over
        ``max_concurrent_upgraded_connections`` 503), then served under its own nursery with a
        :class:`WebSocketSession` as its ``WebSocketFeature``. Other upgrades go to the app
        as they are. The app's exceptions propagate as for any request, except after the
        WebSocket was accepted: then they are logged and the WebSocket closes with 1011."""
        assert head.upgrade is not None
        if not is_websocket_upgrade(head.upgrade):
            if head.http_version == b"2":
                await _plain_response(ctx, 501, f"extended CONNECT protocol "
                                      f"{head.upgrade[:100].decode('latin-1')!r} is not "
                                      "supported")
                return
            await self.app(ctx)
            return
        try:
            offer = check_handshake(head)
        except HandshakeError as exc:
            log.debug("invalid WebSocket handshake: %s", exc.message)
            await _plain_response(ctx, exc.status, exc.message, exc.headers)
            return
        limit = self.config.limits.max_concurrent_upgraded_connections
        if limit is not None and self.websockets >= limit:
            log.warning("WebSocket refused: %d open, the limit "
                        "(max_concurrent_upgraded_connections)", self.websockets)
            if self.metrics is not None:  # before the answer, which a gone client makes raise
                self.metrics.reject("websockets")
            await _plain_response(ctx, 503, "too many WebSocket connections; retry later",
                                  [(b"retry-after", b"5")])
            return
        self.websockets += 1
        metrics = self.metrics
        if metrics is not None:
            metrics.websockets_active += 1
            metrics.websockets_total += 1
        failure: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                session = WebSocketSession(ctx.features, offer, self.config.websocket, nursery)
                ctx.features.set(WebSocketFeature, session)
                self.drain_callbacks.add(session.going_away)
                if self.draining:
                    session.going_away()  # accepted during a shutdown: closed at once
                failed = False
                try:
                    await self.app(ctx)
                except ClientDisconnected as exc:
                    if session.state == "connecting":
                        failure = exc
                except (Exception, SystemExit) as exc:
                    if session.state == "connecting":
                        failure = exc  # the request's usual 500
                    else:
                        failed = True
                        log.error("exception in application for WebSocket %s",
                                  head.target.decode("latin-1"), exc_info=exc)
                finally:
                    self.drain_callbacks.discard(session.going_away)
                    try:
                        await session.finish(failed)
                    finally:
                        nursery.cancel_scope.cancel()
        finally:
            self.websockets -= 1
            if metrics is not None:
                metrics.websockets_active -= 1
        if failure is not None:
            raise failure

    async def call_app(self, ctx: RequestContext, head: RequestHead) -> None:
        """Run the app for a request (through :meth:`run_upgrade` for one that asks to switch
        protocols), counted against ``max_concurrent_requests``: over it, the request gets
        503 instead (:meth:`_refuse_busy`). Forwarding headers from a trusted proxy are
        applied first (:class:`~trioserve.proxy.ForwardedHeaders`) when the connection is
        from one (``ConnectionInfo.trusted_proxy``). The app's exceptions propagate."""
        forwarded = self.forwarded_headers
        if forwarded is not None:
            conn = ctx.features.get(ConnectionFeature)
            if type(conn) is ConnectionInfo and conn.trusted_proxy:
                forwarded.apply(ctx)
        limit = self.request_limit
        if limit is not None and self.requests >= limit:
            await self._refuse_busy(ctx)
            return
        self.requests += 1
        try:
            if head.upgrade is None:
                await self.app(ctx)
            else:
                await self.run_upgrade(ctx, head)
        finally:
            self.requests -= 1

    async def _refuse_busy(self, ctx: RequestContext) -> None:
        """Answer 503 with ``Retry-After`` (and end an HTTP/1.1 connection) for a request
        over ``max_concurrent_requests``; logged at WARNING at most once a second."""
        now = trio.current_time()
        if now - self._busy_logged >= 1.0:
            self._busy_logged = now
            log.warning("request refused with 503: %d requests in progress, the limit "
                        "(--limit-concurrency)", self.requests)
        if self.metrics is not None:  # before the answer, which a gone client makes raise
            self.metrics.reject("concurrency")
        await _plain_response(ctx, 503, f"server busy: {self.requests} requests in progress; "
                              "retry later", [(b"retry-after", b"1")])

    def begin_drain(self) -> None:
        self.draining = True
        grace = trio.current_time() + DRAIN_GRACE
        for scope in list(self.request_waits):
            scope.deadline = min(scope.deadline, grace)
        for callback in list(self.drain_callbacks):
            callback()

    def connection_features(self, io: _SocketIO | _TlsIO, tls: TlsInfo | None,
                            addresses: _Addresses | None) -> tuple[str, FeatureCollection]:
        """A new connection's peer text for the access log (``"ip:port"``, ``"-"`` when
        unknown) and its features (``ConnectionFeature``, ``TlsFeature`` with ``tls``).
        ``addresses``: the PROXY protocol's when it gave some, and whether the peer is a trusted
        proxy; ``None``: the socket's own addresses, not trusted."""
        sock = io.sock
        peer, local, trusted = addresses or (_address(sock, True), _address(sock, False), False)
        peer_text = f"{peer[0]}:{peer[1]}" if peer else "-"
        info = ConnectionInfo(f"{next(_ids):x}", peer, local, trusted)
        items: dict[type, object] = {ConnectionFeature: info}
        if tls is not None:
            items[TlsFeature] = tls
        return peer_text, FeatureCollection(items, self.features)

    async def run_connection(self, protocol: str, run: Callable[[], Awaitable[None]]) -> None:
        """Await ``run()`` (a connection's whole life), counted as an open ``protocol``
        (``"http1"``, ``"http2"``) connection in the metrics while it runs. ``run``'s
        exceptions propagate; the connection is counted closed all the same."""
        metrics = self.metrics
        if metrics is None:
            await run()
            return
        metrics.connection_opened(protocol)
        try:
            await run()
        finally:
            metrics.connection_closed(protocol)

    def count_request(self, http_version: str, answered: bool, response: ResponseState,
                      received: int, start_time: float) -> None:
        """Count a finished request in the metrics (nothing without them): ``answered`` (the
        protocol's own test: the response delivered, a server's error answer, an accepted
        upgrade …) under its status and duration, else as aborted. ``received``: request body
        bytes."""
        metrics = self.metrics
        if metrics is None:
            return
        if answered:
            metrics.request(http_version, response.status, time.perf_counter() - start_time,
                            received, response.bytes_sent)
        else:
            metrics.request_aborted(http_version, received, response.bytes_sent)

    def log_access(self, peer_text: str, ctx: RequestContext, method: str, target: bytes,
                   http_version: str, status: int, nbytes: int, start_time: float) -> None:
        """One access log line (both protocols). ``peer_text``: the connection's peer; the
        forwarded client (from ``ctx``) instead when forwarding headers were applied."""
        if self.forwarded_headers is not None:
            peer_text = forwarded_peer_text(ctx) or peer_text
        elapsed = time.perf_counter() - start_time
        fast = self.fast_access
        if fast is not None:
            fast.write_access(
                f'{peer_text} - "{method} {target.decode("latin-1")} HTTP/{http_version}" '
                f'{status} {nbytes} {elapsed:.6f}s')
            return
        if not access_log.isEnabledFor(logging.INFO):
            return
        access_log.info('%s - "%s %s HTTP/%s" %d %d %.6fs', peer_text, method,
                        target.decode("latin-1"), http_version, status, nbytes, elapsed)


async def _plain_response(ctx: RequestContext, status: int, message: str,
                          headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Answer ``status`` with ``message`` as text, and end the connection after it over
    HTTP/1.1 (the request may have been meant for another protocol)."""
    features = ctx.features
    response = features[ResponseFeature]
    response.status = status
    response.headers = [*(headers or []), (b"content-type", b"text/plain; charset=utf-8"),
                        (b"connection", b"close")]
    await features[ResponseBodyFeature].complete((message + "\n").encode("utf-8", "replace"))


def write_deadline(rate: MinDataRate | None, nbytes: int) -> float:
    """When a write of ``nbytes`` that has to wait must be done by: the grace period plus the
    time the bytes take at the minimum response rate (Kestrel's rule); never without a rate."""
    if rate is None:
        return math.inf
    return trio.current_time() + rate.grace_period + nbytes / rate.bytes_per_second


class _Fairness:
    """The scheduling point both connection I/O classes share."""

    __slots__ = ()

    async def fairness(self) -> None:
        """After an operation that did not wait, let the other tasks run (without raising
        ``Cancelled`` for an operation that already happened). Every time: with a client on
        another core answering faster than the server, a connection whose next request is
        always already there would otherwise serve many in a row while the others wait (a
        budget of 16 operations gave a p99 of 0.2-0.8 s under wrk's 50 connections, against
        about 20 ms now, for 4-6% of throughput; benchmarks/suite.py)."""
        await trio.lowlevel.cancel_shielded_checkpoint()


_T = TypeVar("_T")


@types.coroutine
def in_context(context: contextvars.Context,
               coro: Coroutine[Any, Any, _T]) -> Generator[Any, Any, _T]:
    """Await ``coro`` with each of its steps run in ``context``: the HTTP/1.1 requests of one
    connection run one after another in the connection's task, and each gets its own copy of
    the connection's context, as a task of its own would (HTTP/2 streams are tasks), so a
    context variable an app sets in one request is never seen by the next one, which behind a
    proxy may be another client's. Exceptions, cancellation and the return value pass through
    unchanged."""
    step: Any = coro.send
    arg: Any = None
    while True:
        try:
            yielded = context.run(step, arg)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        try:
            arg = yield yielded
            step = coro.send
        except BaseException as exc:  # thrown in by Trio (or a close): the coroutine's to handle
            arg = exc
            step = coro.throw


async def _awaited(awaitable: Awaitable[_T]) -> _T:
    """``awaitable`` as a coroutine (what :func:`in_context` steps)."""
    return await awaitable


class ResponseTooSlow(trio.BrokenResourceError):
    """A write waited longer than ``Limits.min_response_data_rate`` allows: the connection is
    broken off (counted as the ``response_rate`` limit)."""


def _reset_on_close(sock: socket.socket | trio.socket.SocketType) -> None:
    """Make the coming close of ``sock`` send RST instead of FIN, so that a client never takes
    a response cut short (one delimited by the close, say) for a complete one."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


class _SocketIO(_Fairness):
    """Plain-socket I/O for one connection: the stdlib socket, non-blocking, driven with
    ``trio.lowlevel.wait_readable``/``wait_writable``.

    Trio's socket contract, made cheaper: each operation first checks for cancellation
    (``checkpoint_if_cancelled``: raises before anything is sent or read), and one that then
    completes at once takes one cancel-shielded checkpoint (:meth:`_Fairness.fairness`), so a
    busy connection cannot starve the others and an operation that happened is never reported
    as cancelled. Waits are checkpoints, so cancel scopes around them work as usual. Errors from a
    broken connection become ``trio.BrokenResourceError``.
    """

    __slots__ = ("sock",)

    can_sendfile = True

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        sock.setblocking(False)
        self.sock = sock

    def try_receive(self, max_bytes: int = RECEIVE_SIZE) -> bytes | None:
        """Bytes available now (``b""`` at EOF), or ``None`` if reading would block."""
        try:
            return self.sock.recv(max_bytes)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc

    async def receive(self, max_bytes: int = RECEIVE_SIZE, *, known_empty: bool = False) -> bytes:
        """Read what is there, waiting for it if need be. ``known_empty``: the caller just found
        nothing to read, so go straight to waiting (saves a failing ``recv``)."""
        sock = self.sock
        await trio.lowlevel.checkpoint_if_cancelled()
        if not known_empty:
            data = self.try_receive(max_bytes)
            if data is not None:
                await self.fairness()
                return data
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                return sock.recv(max_bytes)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(str(exc)) from exc

    async def send_all(self, data: bytes, rate: MinDataRate | None, *,
                       last: bool = False) -> None:
        """Send everything. When the client does not take the bytes at once, the wait is bounded
        by ``rate`` (grace period plus the time the bytes take at the minimum rate); past it
        the connection is broken off (``trio.BrokenResourceError``). ``last``: a response's
        last write, after which the connection reads the next request, which yields (see
        ``_H1Connection._read_head``); so a write that completes at once does not yield too."""
        sock = self.sock
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc
        if sent == len(data):
            if not last:
                await self.fairness()
            return
        view = memoryview(data)[sent:]
        with trio.CancelScope(deadline=write_deadline(rate, len(view))) as scope:
            while view:
                await trio.lowlevel.wait_writable(sock)
                try:
                    n = sock.send(view)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    raise trio.BrokenResourceError(str(exc)) from exc
                view = view[n:]
        if scope.cancelled_caught:
            raise ResponseTooSlow("the client read the response too slowly")

    def shutdown_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def reset_on_close(self) -> None:
        _reset_on_close(self.sock)

    def peer_may_be_sending(self) -> bool:
        """Bytes (or the EOF) from the client are waiting: lingering before the close keeps a
        reset from destroying the answer."""
        return self.try_receive() is not None

    async def aclose(self, graceful: bool) -> None:
        """Close (``graceful`` matters only for TLS)."""
        self.close()

    def close(self) -> None:
        trio.lowlevel.notify_closing(self.sock)
        self.sock.close()


class _TlsIO(_Fairness):
    """The same operations as :class:`_SocketIO` over a ``trio.SSLStream`` (handshake done).

    Every read and write goes through the TLS layer, so nothing can be read without waiting
    (``try_receive`` reports "would block"), ``sendfile`` is not possible (the connection falls
    back to reads and writes), and a write is always bounded by the minimum response rate.
    Closing sends ``close_notify`` (but for responses cut short) and does not wait for the
    client's: HTTP/1.1 framing does not rely on it."""

    __slots__ = ("_raw", "sock", "ssl_stream")

    can_sendfile = False
    SEND_PIECE = 256 * 1024  # encrypted a piece at a time, so one big write does not hog the loop

    def __init__(self, ssl_stream: trio.SSLStream[trio.SocketStream]) -> None:
        super().__init__()
        self.ssl_stream = ssl_stream
        self.sock = ssl_stream.transport_stream.socket
        # A duplicate descriptor, to peek at the raw socket without going through TLS.
        self._raw = socket.socket(fileno=os.dup(self.sock.fileno()))
        self._raw.setblocking(False)

    def _peek(self) -> bytes | None:
        """A byte waiting on the raw socket, ``b""`` at its EOF, ``None`` if nothing is there.
        Raises ``OSError`` for a broken connection."""
        try:
            return self._raw.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return None

    def try_receive(self, max_bytes: int = RECEIVE_SIZE) -> bytes | None:
        """``b""`` when the client has closed (a FIN, without ``close_notify``), else ``None``:
        decrypted data is only ever read by waiting. So a client that left is seen without
        waiting (a poll for a disconnect); one that sent ``close_notify`` first is seen by the
        next read."""
        try:
            peeked = self._peek()
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc
        return b"" if peeked == b"" else None

    def peer_may_be_sending(self) -> bool:
        try:
            return self._peek() is not None
        except OSError:
            return False

    async def receive(self, max_bytes: int = RECEIVE_SIZE, *, known_empty: bool = False) -> bytes:
        try:
            return bytes(await self.ssl_stream.receive_some(max_bytes))
        except trio.BrokenResourceError as exc:
            # A client that closes without close_notify: an ordinary end, as on plain TCP.
            if isinstance(exc.__cause__, ssl.SSLEOFError) or "EOF" in str(exc.__cause__ or ""):
                return b""
            raise

    async def send_all(self, data: bytes, rate: MinDataRate | None, *,
                       last: bool = False) -> None:
        with trio.CancelScope(deadline=write_deadline(rate, len(data))) as scope:
            piece = self.SEND_PIECE
            if len(data) <= piece:
                await self.ssl_stream.send_all(data)
            else:
                view = memoryview(data)
                for start in range(0, len(data), piece):
                    await self.ssl_stream.send_all(view[start:start + piece])
        if scope.cancelled_caught:
            raise ResponseTooSlow("the client read the response too slowly")

    def shutdown_write(self) -> None:
        pass  # TLS has no half-close; the socket's close ends the connection

    def reset_on_close(self) -> None:
        _reset_on_close(self.sock)

    async def aclose(self, graceful: bool) -> None:
        """Close; ``graceful``: send ``close_notify`` first (never for a response cut short,
        which must not look complete), without waiting for the client's."""
        try:
            if graceful:
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await self.ssl_stream.aclose()
        finally:
            self.close()

    def close(self) -> None:
        self._raw.close()
        self.sock.close()


class _UpgradedStream(trio.abc.Stream):
    """The connection handed to a protocol that takes it over (an upgrade, a WebSocket), with
    the same fast paths as the server's own I/O (no scheduler round trip for a read or write
    that completes at once). Each write is bounded by the minimum response data rate: a peer
    that stops reading breaks the stream (``trio.BrokenResourceError``). Over TLS, a client
    that closes without ``close_notify`` reads as an ordinary end (``b""``)."""

    def __init__(self, io: _SocketIO | _TlsIO, rate: MinDataRate | None,
                 metrics: Metrics | None = None) -> None:
        self._io = io
        self._rate = rate
        self._metrics = metrics

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self._io.receive(max_bytes or RECEIVE_SIZE)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self._io.send_all(data if type(data) is bytes else bytes(data), self._rate)
        except ResponseTooSlow:
            if self._metrics is not None:
                self._metrics.reject("response_rate")
            raise

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self._io.sock)

    async def send_eof(self) -> None:
        if isinstance(self._io, _TlsIO):
            raise trio.BrokenResourceError("TLS has no half-close")
        self._io.shutdown_write()
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        self._io.close()
        await trio.lowlevel.checkpoint()


class _H1Connection:
    """One HTTP/1.1 connection: reads requests and runs the app inline for each, in turn.

    One cancel scope, :attr:`timer`, bounds every wait for a request head: its deadline is set
    only while waiting (keep-alive or request-headers timeout) and is infinite while the app
    runs. While idle it is registered with the server so a graceful shutdown closes the
    connection at once.
    """

    __slots__ = (
        "errored",
        "exchange",
        "features",
        "first",
        "h2_handover",
        "io",
        "peer_text",
        "proto",
        "response_rate",
        "root_path",
        "scheme",
        "server",
        "sniff",
        "timer",
    )

    def __init__(self, server: _Server, io: _SocketIO | _TlsIO, tls: TlsInfo | None = None,
                 addresses: _Addresses | None = None) -> None:
        self.server = server
        self.io = io
        config = server.config
        limits = config.limits
        self.proto = HTTP1Protocol(
            max_request_line_size=limits.max_request_line_size,
            max_request_headers_count=limits.max_request_headers_count,
            max_request_headers_total_size=limits.max_request_headers_total_size,
            server_header=server.server_header,
            parser=server.http_parser,
        )
        self.response_rate = limits.min_response_data_rate
        self.root_path = config.root_path
        self.scheme = "http" if tls is None else "https"
        self.first = True
        self.errored = False  # the server answered a bad request head
        self.exchange: Exchange | None = None
        # h2c: prior knowledge and Upgrade, on plain connections with HTTP/2 on
        self.sniff = config.http2 and tls is None
        self.h2_handover: _H2Handover | None = None  # set when the connection turns HTTP/2
        self.timer = trio.CancelScope()
        self.peer_text, self.features = server.connection_features(io, tls, addresses)

    @property
    def draining(self) -> bool:
        return self.server.draining

    @property
    def metrics(self) -> Metrics | None:
        return self.server.metrics

    @property
    def stream(self) -> trio.abc.Stream:
        return _UpgradedStream(self.io, self.response_rate, self.server.metrics)

    # ------------------------------------------------------------------ I/O primitives

    async def send_all(self, data: bytes, *, last: bool = False) -> None:
        """Write response bytes (``last``: the response's last write, see
        :meth:`_SocketIO.send_all`). If the write does not complete (client gone or too slow,
        or cancelled), the exchange is aborted: the protocol already counted these bytes, so
        the response can no longer be finished honestly, nor the connection reused."""
        try:
            await self.io.send_all(data, self.response_rate, last=last)
        except BaseException as exc:
            self._abort_exchange()
            if isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError)):
                if type(exc) is ResponseTooSlow and self.server.metrics is not None:
                    self.server.metrics.reject("response_rate")
                raise ClientDisconnected("the client disconnected") from exc
            raise

    def _abort_exchange(self) -> None:
        if self.exchange is not None:
            self.exchange.mark_aborted()

    async def receive_body_event(self, exchange: Exchange) -> BodyData | EndOfBody:
        proto = self.proto
        ev = proto.next_event()
        if ev is not NEED_DATA:
            assert type(ev) is BodyData or type(ev) is EndOfBody
            return ev
        rate = self.server.config.limits.min_request_body_data_rate
        body = exchange.body
        while True:
            await trio.lowlevel.checkpoint_if_cancelled()
            data = self._try_receive_body(exchange)
            if data is not None:
                await self.io.fairness()
            else:
                if rate is None:
                    data = await self._receive_body_bytes(exchange)
                else:
                    # Time waiting on the client counts; time the app spends between reads
                    # does not. No floor: a client trickling bytes just often enough must still
                    # be cut off once its average rate falls below the minimum.
                    allowed = max(rate.grace_period, body.received / rate.bytes_per_second)
                    budget = max(allowed - body.waited, 0.0)
                    started = trio.current_time()
                    with trio.move_on_after(budget) as scope:
                        data = await self._receive_body_bytes(exchange)
                    body.waited += trio.current_time() - started
                    if scope.cancelled_caught:
                        if self.server.metrics is not None:  # once: later reads raise
                            self.server.metrics.reject("body_rate")
                        msg = (f"request body arrived more slowly than "
                               f"{rate.bytes_per_second:g} bytes per second")
                        await exchange.reject(408, msg)
                        raise BadRequestBody(msg, 408)
                    assert data is not None
            proto.receive_data(data)
            ev = proto.next_event()  # may raise ProtocolError: a truncated or malformed body
            if ev is not NEED_DATA:
                assert type(ev) is BodyData or type(ev) is EndOfBody
                return ev

    def _try_receive_body(self, exchange: Exchange) -> bytes | None:
        try:
            return self.io.try_receive()
        except trio.BrokenResourceError as exc:
            exchange.mark_aborted()
            raise ClientDisconnected("the client disconnected") from exc

    async def _receive_body_bytes(self, exchange: Exchange) -> bytes:
        try:
            # b"" (EOF mid-body) goes to the protocol, which reports a truncated body (400).
            return await self.io.receive()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            exchange.mark_aborted()
            raise ClientDisconnected("the client disconnected") from exc

    async def wait_for_disconnect(self, exchange: Exchange) -> None:
        """Return once the client disconnects or the response completes (or the request is
        aborted). Bytes of pipelined requests read meanwhile are kept for the next cycle, at
        most ``MAX_PIPELINE_BUFFER`` per request; past that the socket is no longer read.

        One caller reads the socket; concurrent callers wait for the same outcome. A disconnect
        that already happened is seen without blocking, so this also works inside an
        already-cancelled scope (Starlette's ``request.is_disconnected()`` polls that way).
        """
        io = self.io
        while not (exchange.aborted or exchange.response.is_complete):
            if exchange.reading:
                # Someone else reads; wake when they stop (done, or cancelled: then take over).
                await exchange.reader_changed().wait()
                continue
            while exchange.read_ahead < MAX_PIPELINE_BUFFER:
                try:
                    data = io.try_receive()
                except trio.BrokenResourceError:
                    data = b""
                if data is None:
                    break
                if not self._keep_read_ahead(exchange, data):
                    return
            if exchange.read_ahead >= MAX_PIPELINE_BUFFER:
                await exchange.done_event().wait()  # the bound is reached: stop reading
                return
            exchange.reading = True
            try:
                with trio.CancelScope() as scope:
                    exchange.disconnect_scope = scope
                    while exchange.read_ahead < MAX_PIPELINE_BUFFER:
                        try:
                            data = await io.receive()
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            # (closed: by the connection's own end, while a task outside it
                            # waited, as asyncio-compat's receive() runs in the loop's task)
                            data = b""
                        if not self._keep_read_ahead(exchange, data):
                            return
            finally:
                exchange.reading = False
                exchange.disconnect_scope = None
                exchange.reader_left()

    def _keep_read_ahead(self, exchange: Exchange, data: bytes) -> bool:
        """Keep bytes read while waiting for a disconnect (they belong to the next request);
        at EOF abort the exchange and return False."""
        if not data:
            exchange.mark_aborted()
            return False
        exchange.read_ahead += len(data)
        self.proto.receive_data(data)
        return True

    async def send_file(self, path: str | os.PathLike[str] | int, offset: int, count: int,
                        prefix: bytes, suffix: bytes) -> int:
        f = None if isinstance(path, int) else await trio.to_thread.run_sync(open, path, "rb")
        try:
            fd = f.fileno() if f is not None else path
            assert isinstance(fd, int)
            return await self._send_file_framed(fd, path, offset, count, prefix, suffix)
        except BaseException:
            # Interrupted (cancelled, client gone, file shrank): the protocol already counted the
            # bytes, so this response can no longer be finished honestly.
            self._abort_exchange()
            raise
        finally:
            if f is not None:
                f.close()

    async def _send_file_framed(self, fd: int, path: str | os.PathLike[str] | int, offset: int,
                                count: int, prefix: bytes, suffix: bytes) -> int:
        if prefix:
            await self.send_all(prefix)
        sent = await self._sendfile(fd, offset, count)
        if sent < count:
            name = path if isinstance(path, int) else os.fspath(path)
            raise ResponseError(f"file {name!r} shrank while being sent")
        if suffix:
            await self.send_all(suffix)
        return sent + len(prefix) + len(suffix)

    async def _sendfile(self, fd: int, offset: int, count: int) -> int:
        """``os.sendfile`` from ``fd`` to the socket; each wait is bounded like a send. Over
        TLS, reads of the file (in a worker thread) and writes instead."""
        if not self.io.can_sendfile:
            return await self._copy_file(fd, offset, count)
        sock = self.io.sock
        out = sock.fileno()
        rate = self.response_rate
        sent = 0
        while sent < count:
            step = min(count - sent, 1 << 20)
            try:
                n = os.sendfile(out, fd, offset + sent, step)
            except BlockingIOError:
                with trio.CancelScope(deadline=write_deadline(rate, step)) as scope:
                    await trio.lowlevel.wait_writable(sock)
                if not scope.cancelled_caught:
                    continue
                if self.server.metrics is not None:
                    self.server.metrics.reject("response_rate")
                n = -1
            except OSError:
                n = -1
            if n < 0:  # send_file aborts the exchange
                raise ClientDisconnected("the client disconnected or read too slowly")
            if n == 0:
                break
            sent += n
            await self.io.fairness()
        return sent

    async def _copy_file(self, fd: int, offset: int, count: int) -> int:
        sent = 0
        while sent < count:
            data = await trio.to_thread.run_sync(os.pread, fd, min(count - sent, 256 * 1024),
                                                 offset + sent)
            if not data:
                break
            await self.send_all(data)
            sent += len(data)
        return sent

    # -------------------------------------------------------------------- request loop

    async def run(self) -> None:
        await self.server.run_connection("http1", self._run)

    async def _run(self) -> None:
        try:
            with self.timer:
                if self.sniff and not await self._sniff_preface():
                    return
                while True:
                    head = await self._read_head()
                    if head is None:
                        return
                    await self._handle(head)
                    proto = self.proto
                    # Not "or draining": a response whose head went out before the drain
                    # promised keep-alive, so the client may be sending its next request
                    # already; _read_head gives it DRAIN_GRACE, and its answer says close.
                    if not proto.keep_alive:
                        return
                    proto.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ClientDisconnected):
            return
        finally:
            self.server.request_waits.discard(self.timer)
            with trio.CancelScope(shield=True) as cleanup:
                # sending a last error, then lingering (each bounded on its own too)
                cleanup.deadline = trio.current_time() + CLOSE_TIMEOUT + LINGER_TIMEOUT
                # Only a head-wait deadline (or a drain while idle) cancels the timer scope. A
                # connection that never sent a byte is closed silently (browsers open spare
                # connections); one stuck mid-headers is told why.
                if (self.timer.cancelled_caught and self.proto.has_partial_request
                        and not self.server.draining):
                    await self._send_error(408, "timed out waiting for the request headers")
                await self._close()

    async def _close(self) -> None:
        io = self.io
        ex = self.exchange
        proto = self.proto
        graceful = False
        if self.h2_handover is not None:
            return  # HTTP/2 takes the connection over
        try:
            if ex is not None and ex.upgraded:
                return  # the new protocol owned the connection
            if ex is not None and (ex.aborted or (proto.response_started
                                                  and not proto.response_complete)):
                # A response cut short: reset, so the client cannot take it for a whole one
                # (a FIN would end a close-delimited body as if it were complete).
                io.reset_on_close()
                return
            io.shutdown_write()
            graceful = True
            # Linger when the client may still be sending (a body not read, a request refused
            # for a bad head, pipelined bytes), so our answer is not destroyed by a reset.
            if (ex is not None and not ex.body.is_complete) or self.errored \
                    or io.peer_may_be_sending():
                await _linger(io)
        except trio.BrokenResourceError:
            pass
        finally:
            await io.aclose(graceful)

    async def _sniff_preface(self) -> bool:
        """Read a plain connection's first bytes until they can no longer be the HTTP/2
        connection preface. Prior knowledge: hand the connection over to HTTP/2 (see
        :attr:`h2_handover`) and return False; otherwise give the bytes to the HTTP/1.1
        protocol and return True. The wait is the first request's header deadline."""
        server = self.server
        timer = self.timer
        timer.deadline = trio.current_time() + server.config.timeouts.request_headers
        buf = self.io.try_receive()
        known_empty = buf is None
        eof = buf == b""
        buf = buf or b""
        if not buf and not eof:
            # No byte yet: a drain gives the request DRAIN_GRACE to arrive.
            if server.draining:
                timer.deadline = min(timer.deadline, trio.current_time() + DRAIN_GRACE)
            server.request_waits.add(timer)
        try:
            while not eof and len(buf) < len(PREFACE) and PREFACE.startswith(buf):
                data = await self.io.receive(known_empty=known_empty)
                known_empty = False
                server.request_waits.discard(timer)
                eof = not data
                buf += data
        finally:
            server.request_waits.discard(timer)
        if buf.startswith(PREFACE):
            # the first stream's deadline still runs from accept
            self.h2_handover = _H2Handover(buf, None, None, b"", timer.deadline)
            return False
        if buf:
            self.proto.receive_data(buf)
        if eof:
            self.proto.receive_data(b"")
        return True

    def _h2c_settings(self, head: RequestHead) -> bytes | None:
        """The ``HTTP2-Settings`` value of a valid ``Upgrade: h2c`` request (RFC 7540 §3.2:
        exactly one, named in ``Connection``, base64url of whole settings), else ``None``."""
        if head.upgrade is None or head.http_version != b"1.1" or \
                b"h2c" not in [t.strip().lower() for t in head.upgrade.split(b",")]:
            return None
        settings = [v for n, v in head.headers if n == b"http2-settings"]
        tokens = {t.strip().lower() for n, v in head.headers if n == b"connection"
                  for t in v.split(b",")}
        if len(settings) != 1 or b"http2-settings" not in tokens:
            return None
        if head.chunked or (head.content_length or 0) > \
                self.server.config.limits.http2.initial_stream_window_size:
            # The body is read into memory before the switch: no more than HTTP/2 itself lets a
            # stream have buffered (its window). Larger or chunked: the Upgrade is ignored
            # (RFC 7540 §3.2 allows it) and the request served over HTTP/1.1.
            return None
        value = settings[0].strip()
        return value if valid_h2c_settings(value) else None

    async def _h2c_upgrade(self, ex: Exchange, settings: bytes) -> None:
        """Read the upgrade request's body, answer 101 and hand the connection over to HTTP/2,
        where the request is stream 1. Body errors raise as they do for an app reading it."""
        chunks = []
        while True:
            chunk = await ex.body.receive()
            if not chunk:
                break
            chunks.append(chunk)
        proto = self.proto
        ex.response._status = 101
        data = proto.response_head(101, [(b"upgrade", b"h2c")], switching_protocols=True)
        leftover = proto.switch_protocol()
        ex.upgraded = True
        ex.response.mark_done()
        await self.send_all(data)
        self.h2_handover = _H2Handover(leftover, settings, ex.head, b"".join(chunks), None)

    async def _read_head(self) -> RequestHead | None:
        """The next request's head, ``None`` when the connection is to end (EOF between
        requests, a bad head answered with its 4xx, a deadline or a drain while idle).

        Post-conditions: :attr:`timer` has no deadline, so the app never runs under a head's
        deadline; the task went through the scheduler at least once since the last response
        (a wait, or :meth:`_Fairness.fairness` for a head that was already there), which the
        response's last write relies on (it does not yield itself)."""
        proto = self.proto
        server = self.server
        timer = self.timer
        try:
            ev = proto.next_event()
            known_empty = yielded = False
            if ev is NEED_DATA:
                # Bytes already waiting in the socket need no deadline.
                data = self.io.try_receive()
                if data is None and not self.first:
                    # Under load the client's next request often arrives while the other
                    # connections take their turn: let them, then look again, before paying
                    # for a wait (an epoll registration and a wake-up).
                    await self.io.fairness()
                    data = self.io.try_receive()
                    yielded = True
                if data is not None:
                    proto.receive_data(data)
                    ev = proto.next_event()
                else:
                    known_empty = True
            if ev is NEED_DATA:
                timeouts = server.config.timeouts
                # Idle: no byte of the next request yet. A connection's first request gets the
                # request-headers timeout from accept; later ones the keep-alive timeout.
                idle = not proto.has_partial_request
                deadline = trio.current_time() + (
                    timeouts.keep_alive if idle and not self.first else timeouts.request_headers)
                # the first request's deadline runs from accept (set while sniffing for h2c)
                timer.deadline = min(deadline, timer.deadline) if self.first else deadline
                # A drain gives the next request DRAIN_GRACE to arrive (see DRAIN_GRACE).
                waits = server.request_waits
                if idle:
                    if server.draining:
                        timer.deadline = min(timer.deadline, trio.current_time() + DRAIN_GRACE)
                    waits.add(timer)
                while ev is NEED_DATA:
                    data = await self.io.receive(known_empty=known_empty)
                    known_empty = False
                    began = idle and bool(data)
                    if began:
                        idle = False
                        waits.discard(timer)
                    proto.receive_data(data)
                    ev = proto.next_event()
                    if began and ev is NEED_DATA and not self.first:
                        # The rest of a head whose first bytes came gets the request-headers
                        # timeout (the first request's runs from accept). Most heads arrive
                        # whole: then no deadline is set for nothing (the setter is not cheap).
                        timer.deadline = trio.current_time() + timeouts.request_headers
                if idle:
                    waits.discard(timer)
                timer.deadline = math.inf
                if timer.cancel_called:
                    # The deadline passed, or a drain closed this idle connection, while the
                    # bytes were arriving: the app must not run under a cancelled scope. The
                    # client sees the close that the keep-alive race always allows.
                    return None
            else:
                # A head that was already there (read while sniffing for the HTTP/2 preface,
                # pipelined, or in the socket): no wait, so yield here (see the post-conditions),
                # and the app must not run under the first head's deadline from accept.
                if timer.deadline != math.inf:
                    timer.deadline = math.inf
                if not yielded:
                    await self.io.fairness()
        except ProtocolError as exc:
            log.debug("bad request from %s: %s", self.peer_text, exc.message)
            timer.deadline = math.inf
            await self._send_error(exc.status_hint, exc.message)
            return None
        except trio.BrokenResourceError:
            return None
        self.first = False
        if type(ev) is ConnectionClosed:
            return None
        assert type(ev) is RequestHead
        return ev

    async def _send_error(self, status: int, message: str) -> None:
        self.errored = True
        if self.server.metrics is not None:
            self.server.metrics.bad_request("http1", status)
        try:
            with trio.move_on_after(CLOSE_TIMEOUT):
                await self.io.send_all(self.proto.error_response(status, message), None)
        except trio.BrokenResourceError:
            pass

    async def _handle(self, head: RequestHead) -> None:
        server = self.server
        proto = self.proto
        ex = Exchange(self, head, server.config.limits.max_request_body_size)
        self.exchange = ex
        if not head.has_body:
            proto.next_event()  # the (empty) body's end
        response = ex.response
        # The app's code (the call, a completion that runs its on_starting callbacks, its
        # on_completed callbacks) runs in a copy of the connection's context (see in_context).
        context = contextvars.copy_context()
        try:
            try:
                if head.upgrade is not None and self.sniff:
                    settings = self._h2c_settings(head)
                    if settings is not None:
                        await self._h2c_upgrade(ex, settings)
                        return
                await in_context(context, server.call_app(ex.context, head))
            except (ClientDisconnected, RequestBodyTooLarge):
                if not response.is_complete:
                    ex.mark_aborted()
            except (Exception, SystemExit) as exc:
                # SystemExit too: one request must not stop the server.
                await self._app_failed(ex, exc)
            if not response.is_complete and not ex.aborted and not ex.rejected:
                # The app returned without completing: finish what it started.
                try:
                    await in_context(context, response.complete())
                except ClientDisconnected:
                    pass
                except Exception as exc:  # an on_starting callback, an invalid header …
                    await self._app_failed(ex, exc)
            if response.has_completed_callbacks:
                for cb in reversed(response.take_completed_callbacks()):
                    try:
                        await in_context(context, _awaited(cb()))
                    except Exception:
                        log.exception("an on_completed callback failed")
        except BaseException:
            # Cancelled (the graceful shutdown's deadline, a second signal), a WebSocket too.
            server.count_request(ex.request.http_version, False, response, ex.body.received,
                                 ex.start_time)
            raise
        # Body limits were counted where they fired; a server's error answer (ex.rejected) is
        # an answer, an upgrade's 101 too.
        if server.metrics is not None:
            server.count_request(ex.request.http_version,
                                 response.delivered or ex.rejected or ex.upgraded, response,
                                 ex.body.received, ex.start_time)
        if server.access_log:
            self._log_access(ex)
        if ex.upgraded or ex.aborted:
            proto.keep_alive = False
        elif proto.keep_alive and not ex.body.is_complete:
            await self._drain_body(ex)

    async def _app_failed(self, ex: Exchange, exc: BaseException) -> None:
        target = ex.head.target.decode("latin-1")
        if ex.aborted or ex.rejected:
            # The client left, the app aborted, or the server already answered with an error
            # (413 …); what the app raised after that is a consequence, not a server error.
            log.debug("application raised %s after %s %s was aborted or rejected",
                      type(exc).__name__, ex.request.method, target)
            return
        if isinstance(exc, ResponseError):
            log.error("invalid response to %s %s: %s", ex.request.method, target, exc)
        else:
            log.error("exception in application for %s %s", ex.request.method, target,
                      exc_info=exc)
        # A 500 if nothing was sent yet. After the response started there is no honest way to
        # finish it: reject() aborts, so the client sees a truncated response, never a
        # complete-looking one.
        await ex.reject(500, "Internal Server Error")

    async def _drain_body(self, ex: Exchange) -> None:
        """Read and discard an unread request body so the connection can be reused; close
        instead when it is large, slow, or the client still waits for 100-continue."""
        proto = self.proto
        if ex.unread_body_ends_connection():
            proto.keep_alive = False
            return
        drained = 0
        with trio.move_on_after(DRAIN_TIMEOUT):
            try:
                while True:
                    ev = proto.next_event()
                    if ev is NEED_DATA:
                        data = await self.io.receive()
                        if not data:
                            break
                        proto.receive_data(data)
                        continue
                    if type(ev) is EndOfBody:
                        ex.body.mark_complete()
                        return
                    if type(ev) is BodyData:
                        drained += len(ev.data)
                        if drained > MAX_DRAIN_BYTES:
                            break
            except (ProtocolError, trio.BrokenResourceError):
                pass
        proto.keep_alive = False

    def _log_access(self, ex: Exchange) -> None:
        request = ex.request
        self.server.log_access(self.peer_text, ex.context, request.method, ex.head.target,
                               request.http_version, ex.response.status,
                               ex.response.bytes_sent, ex.start_time)


READ_PAUSE = 4 * HIGH_WATER  # queued output past which an HTTP/2 connection stops reading


class _Budget:
    """A token bucket: ``rate`` tokens a second, holding at most twice that (the burst); tokens
    given for work done (:meth:`give`) may go beyond it."""

    __slots__ = ("_time", "capacity", "rate", "tokens")

    def __init__(self, rate: float) -> None:
        self.rate = float(rate)
        self.capacity = self.tokens = 2.0 * rate
        self._time = trio.current_time()

    def _refill(self) -> None:
        now = trio.current_time()
        if self.tokens < self.capacity:
            self.tokens = min(self.capacity, self.tokens + (now - self._time) * self.rate)
        self._time = now

    def take(self, n: float) -> bool:
        """Spend ``n`` tokens; False (and nothing spent) when fewer are left."""
        self._refill()
        if self.tokens < n:
            return False
        self.tokens -= n
        return True

    def give(self, n: float) -> None:
        """Add ``n`` tokens, up to the capacity plus ``n`` (what is given is never lost to a
        full bucket, and cannot be hoarded beyond the latest gift)."""
        if n:
            self._refill()
            self.tokens = min(self.tokens + n, self.capacity + n)


class _H2Handover:
    """How a connection became HTTP/2 after starting as HTTP/1.1: the bytes already read
    (the preface, or what followed an upgrade request) and, for ``Upgrade: h2c``, the
    ``HTTP2-Settings`` value, the request and its body (stream 1)."""

    __slots__ = ("body", "data", "deadline", "head", "settings")

    def __init__(self, data: bytes, settings: bytes | None, head: RequestHead | None,
                 body: bytes, deadline: float | None) -> None:
        self.deadline = deadline  # for the first stream (prior knowledge: from accept)
        self.data = data
        self.settings = settings
        self.head = head
        self.body = body


class _H2Connection:
    """One HTTP/2 connection: a reader loop (this task), a writer task, and one task per stream
    under the connection's nursery.

    The reader feeds the protocol and hands events to the streams. Streams queue frames in the
    protocol and :meth:`kick` the writer, which sends everything queued in one write; a stream
    that finds more than ``HIGH_WATER`` bytes queued waits for the writer (backpressure). The
    timer scope around the reader bounds the wait for the first stream (request-headers timeout)
    and an idle connection (keep-alive timeout, no stream open). A graceful shutdown sends
    GOAWAY at once and closes once the open streams are done.
    """

    def __init__(self, server: _Server, io: _SocketIO | _TlsIO, tls: TlsInfo | None,
                 handover: _H2Handover | None = None,
                 addresses: _Addresses | None = None) -> None:
        config = server.config
        limits = config.limits
        h2l = limits.http2
        self.server = server
        self.io = io
        self.handover = handover
        self.proto = HTTP2Protocol(
            max_concurrent_streams=h2l.max_streams_per_connection,
            header_table_size=h2l.header_table_size,
            max_frame_size=h2l.max_frame_size,
            initial_stream_window_size=h2l.initial_stream_window_size,
            initial_connection_window_size=h2l.initial_connection_window_size,
            max_request_headers_count=limits.max_request_headers_count,
            max_request_headers_total_size=limits.max_request_headers_total_size,
            server_header=server.server_header,
            max_header_field_size=h2l.max_header_field_size,
        )
        self.max_body_size = limits.max_request_body_size
        self.response_rate = limits.min_response_data_rate
        self.body_rate = limits.min_request_body_data_rate
        self.metrics = server.metrics  # (for the streams: H2Connection)
        self.root_path = config.root_path
        self.scheme = "http" if tls is None else "https"
        self.streams: dict[int, H2Stream] = {}
        self.timer = trio.CancelScope()
        self.closing = False  # GOAWAY sent or received: close once the streams are done
        self.broken = False  # the connection failed: nothing more can be sent
        self.writer_done = False
        self.writer_waiting = False  # the writer has sent everything and waits for more
        self.opened = 0  # streams opened so far
        self.failed = False  # a connection error (GOAWAY queued): close without waiting
        self.peer_eof = False  # the client closed its side
        # Rapid reset (CVE-2023-44487): streams the client resets while their apps run.
        self.resets = _Budget(h2l.max_resets_per_second)
        # Control-frame floods (PING, SETTINGS, empty DATA …); DATA sent pays for WINDOW_UPDATEs.
        self.control = _Budget(h2l.max_control_frames_per_second)
        self._control_seen = 0
        self._data_seen = (0, 0)  # DATA frames and bytes sent, as last credited
        self.closed = False
        self._writer_exited = trio.Event()
        self._wake = trio.Event()
        self._drained: trio.Event | None = None
        self._no_streams: trio.Event | None = None
        self._nursery: trio.Nursery | None = None
        self.peer_text, self.features = server.connection_features(io, tls, addresses)

    # ------------------------------------------------------------ for the streams

    def kick(self) -> None:
        self._wake.set()

    async def wait_drained(self) -> None:
        while not self.broken and self.proto.pending_output > HIGH_WATER:
            if self._drained is None:
                self._drained = trio.Event()
            await self._drained.wait()
        if self.broken:
            raise ClientDisconnected("the client disconnected")

    # ------------------------------------------------------------------ tasks

    async def run(self) -> None:
        await self.server.run_connection("http2", self._run)

    async def _run(self) -> None:
        server = self.server
        server.drain_callbacks.add(self._on_drain)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._writer)
                try:
                    await self._read_loop()
                finally:
                    if self.broken or self.failed or self.peer_eof or not self.closing:
                        # Ended by the client (EOF, an error, its GOAWAY with an error), or
                        # not by a drain: the streams can send nothing more.
                        for stream in list(self.streams.values()):
                            stream.closed = True
                            stream.abort()
                    if not self.broken:
                        self.proto.goaway()
                    self.kick()
                    if self.failed:
                        # A connection error: send the GOAWAY and close now (RFC 9113 §5.4.1),
                        # without waiting for the applications of the aborted streams.
                        self.writer_done = True
                        with trio.move_on_after(CLOSE_TIMEOUT):
                            await self._writer_exited.wait()
                        with trio.CancelScope(shield=True) as cleanup:
                            cleanup.deadline = trio.current_time() + CLOSE_TIMEOUT
                            await self._close()
                    while self.streams:
                        self._no_streams = trio.Event()
                        await self._no_streams.wait()
                    self.writer_done = True
                    self.kick()
        finally:
            server.drain_callbacks.discard(self._on_drain)
            with trio.CancelScope(shield=True) as cleanup:
                cleanup.deadline = trio.current_time() + CLOSE_TIMEOUT + LINGER_TIMEOUT
                await self._close()

    async def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        io = self.io
        graceful = False
        try:
            if self.broken:
                io.reset_on_close()
                return
            io.shutdown_write()
            graceful = True
            # The client may still be sending (frames crossing our GOAWAY): read them away for
            # a moment so the close does not reset what we sent.
            if io.peer_may_be_sending():
                await _linger(io)
        except trio.BrokenResourceError:
            pass
        finally:
            await io.aclose(graceful)

    async def _writer(self) -> None:
        try:
            await self._write_loop()
        finally:
            self._writer_exited.set()

    async def _write_loop(self) -> None:
        proto = self.proto
        io = self.io
        while True:
            data = proto.data_to_send()
            if data:
                try:
                    await io.send_all(data, self.response_rate)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    if type(exc) is ResponseTooSlow and self.server.metrics is not None:
                        self.server.metrics.reject("response_rate")
                    self._broken()
                    return
                continue
            if self._drained is not None:
                self._drained.set()
                self._drained = None
            if self.writer_done:
                return
            self._wake = trio.Event()
            self.writer_waiting = True
            await self._wake.wait()
            self.writer_waiting = False

    def _broken(self) -> None:
        self.broken = True
        for stream in list(self.streams.values()):
            stream.abort()
        if self._drained is not None:
            self._drained.set()
            self._drained = None
        self.timer.cancel()

    def _on_drain(self) -> None:
        """A graceful shutdown began: GOAWAY now; close once the open streams are done."""
        self.closing = True
        self.proto.goaway()
        self.kick()
        if not self.streams:
            self.timer.cancel()

    async def _read_loop(self) -> None:
        proto = self.proto
        server = self.server
        timeouts = server.config.timeouts
        timer = self.timer
        with timer:
            handover = self.handover
            timer.deadline = (handover.deadline if handover is not None
                              and handover.deadline is not None
                              else trio.current_time() + timeouts.request_headers)
            if handover is not None and handover.head is not None:
                assert handover.settings is not None
                try:
                    ev = proto.initiate_upgrade(handover.settings, handover.head)
                except ProtocolError:
                    return
                stream = self._open(ev.stream_id, ev.head, False)
                if handover.body:
                    stream.on_data(handover.body, 0)
                stream.on_end([])
            else:
                proto.initiate()
            self.kick()
            if server.draining:
                self._on_drain()
            if handover is not None and handover.data and not self._feed(handover.data):
                return
            while not (self.closing and not self.streams):
                if self.proto.pending_output > READ_PAUSE:
                    # The client sends faster than it reads what it asks for (PINGs, SETTINGS,
                    # refused streams …): stop reading until the writer, bounded by the
                    # minimum response rate, has sent it.
                    try:
                        await self.wait_drained()
                    except ClientDisconnected:
                        return
                try:
                    data = await self.io.receive()
                except trio.BrokenResourceError:
                    self.broken = True
                    return
                opened = self.opened
                if not data:
                    self.peer_eof = True
                    return
                if not self._feed(data):
                    return
                if self.opened != opened:
                    await self._let_streams_answer()
        if timer.cancelled_caught and not self.closing and not self.broken:
            log.debug("HTTP/2 connection from %s idle: closing", self.peer_text)

    async def _let_streams_answer(self) -> None:
        """After opening streams, let them (and the writer) run before reading again: a
        client that waits for the answers has sent nothing more yet, so reading at once would
        only find the socket empty and pay for a wait on it. Bounded: a stream whose app takes
        longer (or waits for its body) does not hold the reader."""
        for _ in range(4):
            await trio.lowlevel.cancel_shielded_checkpoint()
            if self.writer_waiting and not self.proto.pending_output:
                # Answered. One more turn for the other connections gives the client time to
                # send its next requests (as Trio's own sockets yield after each send).
                await trio.lowlevel.cancel_shielded_checkpoint()
                return

    def _feed(self, data: bytes) -> bool:
        """Hand received bytes to the protocol and its events to the streams; False when the
        connection must end (a connection error, the client's GOAWAY)."""
        proto = self.proto
        malformed = proto.malformed
        refused = proto.refused
        try:
            events = proto.receive_data(data)
        except ProtocolError as exc:
            log.debug("HTTP/2 connection error from %s: %s", self.peer_text, exc.message)
            self.failed = True
            self.kick()  # the GOAWAY
            return False
        if proto.malformed != malformed:
            log.debug("malformed HTTP/2 request(s) from %s: stream reset (PROTOCOL_ERROR)",
                      self.peer_text)
            if self.server.metrics is not None:  # (as the 400 it would be over HTTP/1.1)
                self.server.metrics.bad_request("http2", 400, proto.malformed - malformed)
        if proto.refused != refused and self.server.metrics is not None:
            self.server.metrics.reject("h2_streams", proto.refused - refused)
        control = proto.control_frames
        if control != self._control_seen:
            frames, nbytes = proto.data_frames_sent, proto.data_bytes_sent
            seen_frames, seen_bytes = self._data_seen
            # The client's WINDOW_UPDATEs acknowledging the data: a stream and a connection
            # one per DATA frame, and per 4 KiB its app reads (Go's client does that).
            self.control.give(2 * (frames - seen_frames) + (nbytes - seen_bytes) / 2048)
            self._data_seen = (frames, nbytes)
            taken = control - self._control_seen
            self._control_seen = control
            if not self.control.take(taken):
                log.warning("HTTP/2 client %s sends too many control frames (flood): closing "
                            "the connection", self.peer_text)
                return self._calm_down("too many control frames", "h2_control_frames")
        streams = self.streams
        for ev in events:
            if isinstance(ev, StreamData):
                stream = streams.get(ev.stream_id)
                if stream is not None:
                    stream.on_data(ev.data, ev.flow_length)
                else:
                    proto.consumed(ev.stream_id, ev.flow_length)
            elif isinstance(ev, StreamRequest):
                self._open(ev.stream_id, ev.head, ev.end_stream)
            elif isinstance(ev, StreamEnded):
                stream = streams.get(ev.stream_id)
                if stream is not None:
                    stream.on_end(ev.trailers)
            elif isinstance(ev, WindowOpened):
                if ev.stream_id:
                    stream = streams.get(ev.stream_id)
                    if stream is not None:
                        stream.on_window()
                else:
                    for stream in streams.values():
                        stream.on_window()
            elif isinstance(ev, StreamReset):
                stream = streams.get(ev.stream_id)
                if stream is not None:
                    stream.closed = True
                    stream.abort()
                    if ev.remote and not stream.response.is_complete \
                            and not self.resets.take(1):
                        log.warning("HTTP/2 client %s resets streams too fast (rapid reset): "
                                    "closing the connection", self.peer_text)
                        return self._calm_down("too many stream resets", "h2_resets")
            elif isinstance(ev, StreamRefused):
                self._refuse(ev)
            elif isinstance(ev, ConnectionEnded):
                log.debug("HTTP/2 client %s sent GOAWAY (error code %d)", self.peer_text,
                          ev.error_code)
                if ev.error_code != NO_ERROR or not streams:
                    self.kick()
                    return False
                self.closing = True  # the streams in flight finish, then the connection closes
        self.kick()
        return True

    def _calm_down(self, reason: str, limit: str) -> bool:
        """End the connection with GOAWAY ``ENHANCE_YOUR_CALM`` (a flood, counted against
        ``limit``); returns False for :meth:`_feed` to pass on."""
        if self.server.metrics is not None:
            self.server.metrics.reject(limit)
        self.proto.goaway(ENHANCE_YOUR_CALM, reason)
        self.failed = True
        self.kick()
        return False

    def _open(self, stream_id: int, head: RequestHead, end_stream: bool) -> H2Stream:
        stream = H2Stream(self, stream_id, head, end_stream, self.max_body_size)
        self.streams[stream_id] = stream
        self.opened += 1
        metrics = self.server.metrics
        if metrics is not None:
            metrics.h2_streams_active += 1  # until _stream_task ends
        if self.timer.deadline != math.inf:  # (the setter is not cheap)
            self.timer.deadline = math.inf
        assert self._nursery is not None
        self._nursery.start_soon(self._stream_task, stream)
        return stream

    def _refuse(self, ev: StreamRefused) -> None:
        log.debug("bad HTTP/2 request from %s on stream %d: %s", self.peer_text, ev.stream_id,
                  ev.message)
        if self.server.metrics is not None:
            self.server.metrics.bad_request("http2", ev.status)
        head = RequestHead(method=ev.method, target=b"", http_version=b"2", headers=[],
                           keep_alive=True, expects_continue=False, content_length=None,
                           chunked=False)
        stream = H2Stream(self, ev.stream_id, head, ev.end_stream, 0)
        self.streams[ev.stream_id] = stream
        if self.timer.deadline != math.inf:
            self.timer.deadline = math.inf
        assert self._nursery is not None
        self._nursery.start_soon(self._refuse_task, stream, ev.status, ev.message)

    async def _refuse_task(self, stream: H2Stream, status: int, message: str) -> None:
        try:
            await send_error(stream, status, message)
        finally:
            self._stream_done(stream)

    async def _stream_task(self, stream: H2Stream) -> None:
        server = self.server
        response = stream.response
        try:
            try:
                try:
                    if stream.head.upgrade is not None:
                        stream.tunnel = True
                    await server.call_app(stream.context, stream.head)
                except (ClientDisconnected, RequestBodyTooLarge):
                    if not response.is_complete:
                        stream.request.abort()
                except (Exception, SystemExit) as exc:
                    await self._app_failed(stream, exc)
                if not response.is_complete and not stream.aborted and not stream.rejected:
                    try:
                        await response.complete()
                    except ClientDisconnected:
                        pass
                    except Exception as exc:
                        await self._app_failed(stream, exc)
                for cb in reversed(response.take_completed_callbacks()):
                    try:
                        await cb()
                    except Exception:
                        log.exception("an on_completed callback failed")
            except BaseException:
                # Cancelled (the graceful shutdown's deadline, a second signal), a WebSocket too.
                server.count_request("2", False, response, stream.body.received,
                                     stream.start_time)
                raise
            # Body limits were counted where they fired. A WebSocket (extended CONNECT) that
            # was accepted counts as its 200 however it ended, as over HTTP/1.1.
            server.count_request("2", response.delivered or stream.rejected
                                 or (stream.tunnel and response.has_started), response,
                                 stream.body.received, stream.start_time)
            if server.access_log:
                server.log_access(self.peer_text, stream.context, stream.request.method,
                                  stream.head.target, "2", response.status,
                                  response.bytes_sent, stream.start_time)
        finally:
            if server.metrics is not None:
                server.metrics.h2_streams_active -= 1
            self._stream_done(stream)

    async def _app_failed(self, stream: H2Stream, exc: BaseException) -> None:
        target = stream.head.target.decode("latin-1")
        method = stream.request.method
        if stream.aborted or stream.rejected:
            log.debug("application raised %s after %s %s was aborted or rejected",
                      type(exc).__name__, method, target)
            return
        if isinstance(exc, ResponseError):
            log.error("invalid response to %s %s: %s", method, target, exc)
        else:
            log.error("exception in application for %s %s", method, target, exc_info=exc)
        await stream.reject(500, "Internal Server Error")

    def _stream_done(self, stream: H2Stream) -> None:
        proto = self.proto
        sid = stream.stream_id
        if not stream.response.is_complete and not stream.closed:
            stream.reset(INTERNAL_ERROR)
        unread = stream.body.discard()
        if unread:
            proto.consumed(sid, unread)
        if not stream.body.peer_ended and not stream.closed:
            # A complete response before the whole request body: take a little more of it
            # (as HTTP/1.1 drains), then ask the client to stop, without error (RFC 9113 §8.1).
            proto.finish_unread(sid, MAX_DRAIN_BYTES - stream.body.received)
        else:
            proto.stream_finished(sid)
        self.streams.pop(sid, None)
        self.kick()
        if not self.streams:
            if self._no_streams is not None:
                self._no_streams.set()
            if self.closing:
                self.timer.cancel()
            else:
                self.timer.deadline = trio.current_time() + self.server.config.timeouts.keep_alive


async def _linger(io: _SocketIO | _TlsIO) -> None:
    """Read and discard what the client still sends for a short while, so that closing does
    not reset the connection before the client has read what was sent (RFC 9112 §9.6)."""
    with trio.move_on_after(LINGER_TIMEOUT):
        discarded = 0
        while discarded < MAX_LINGER_BYTES:
            try:
                data = await io.receive()
            except trio.BrokenResourceError:
                return
            if not data:
                return
            discarded += len(data)


# ------------------------------------------------------------------------- the tree


async def _accept_loop(server: _Server, bound: BoundListener, nursery: trio.Nursery) -> None:
    """Accept connections on ``bound`` and start a task for each under ``nursery``.

    Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) the loop logs one ERROR,
    retries with exponential backoff (10 ms to 1 s; the clients wait in the kernel backlog)
    and logs one WARNING when accept works again. Other errors propagate."""
    listener = bound.listener
    slots = server.connection_slots
    failures = 0
    first_failure = 0.0
    while True:
        if slots is not None:
            await slots.acquire()
        try:
            stream = await listener.accept()
        except OSError as exc:
            if slots is not None:
                slots.release()
            if exc.errno not in _RESOURCE_ERRNOS:
                raise
            if not failures:
                first_failure = trio.current_time()
                log.error("accept on %s failed: %s; backing off until descriptors are free",
                          bound.url, os.strerror(exc.errno or 0))
            await trio.sleep(min(ACCEPT_BACKOFF_MAX, ACCEPT_BACKOFF_MIN * 2 ** min(failures, 16)))
            failures += 1
            continue
        except BaseException:
            if slots is not None:
                slots.release()
            raise
        if failures:
            log.warning("accept on %s works again after %d failed attempts over %.1f s",
                        bound.url, failures, trio.current_time() - first_failure)
            failures = 0
        if server.metrics is not None:
            server.metrics.connections_accepted += 1
        nursery.start_soon(_connection_task, server, stream)


_Addresses = tuple[tuple[str, int] | None, tuple[str, int] | None, bool]
"""A connection's (peer, local) addresses (a PROXY protocol header's when it gave some), and
whether its requests' forwarding headers are to be believed (``ConnectionInfo.trusted_proxy``)."""


def _peer_trusted(proxy: ForwardedHeaders, sock: trio.socket.SocketType,
                  peer: tuple[str, int] | None) -> bool:
    """Whether the peer of a connection is a trusted proxy: a Unix socket peer always is (only
    local processes can connect); a TCP peer when its address is trusted, never when the
    address is not known (``peer`` ``None``: a client that reset its connection before it was
    accepted, whose request may still be read)."""
    return sock.family == socket.AF_UNIX or proxy.is_trusted(peer)


async def _recv_exactly(tsock: trio.socket.SocketType, size: int) -> bytes:
    """Consume exactly ``size`` bytes. Raises ``OSError`` when the peer closes first."""
    chunks: list[bytes] = []
    while size > 0:
        got = await tsock.recv(size)
        if not got:
            raise OSError("closed in the middle of the PROXY protocol header")
        chunks.append(got)
        size -= len(got)
    return b"".join(chunks)


async def _read_proxy_header(server: _Server, tsock: trio.socket.SocketType
                             ) -> ProxyHeader | None:
    """Read the PROXY protocol header (v1 or v2) a connection must start with and consume
    exactly its bytes, so that TLS and HTTP read what follows untouched: peek, and take only
    the bytes the parser says belong to the header. The wait is bounded by the first request's
    header deadline (``Timeouts.request_headers``, from accept; shortened to
    ``DRAIN_GRACE`` by a graceful shutdown, like a first request's).

    Returns the header, or ``None`` when the connection is to be closed: the peer is not
    trusted (``ProxyConfig.trusted``, :func:`_peer_trusted`; checked before reading), it sent
    something else or an invalid header, closed, or was too slow. Each is logged at WARNING (at
    most once a second) with the peer and the reason, and counted as the ``proxy_protocol``
    rejection unless the server is draining; nothing is sent (the peer does not speak HTTP to
    us yet). Reading costs time linear in the header's size, however it is split."""
    assert server.proxy_protocol is not None
    peer = _address(tsock, True)
    failure: str | None = None
    header: ProxyHeader | None = None
    if not _peer_trusted(server.proxy_protocol, tsock, peer):
        failure = "the peer is not a trusted proxy (--forwarded-allow-ips)"
    else:
        with trio.move_on_after(server.config.timeouts.request_headers) as scope:
            if server.draining:
                scope.deadline = min(scope.deadline, trio.current_time() + DRAIN_GRACE)
            server.request_waits.add(scope)
            try:
                buf = b""
                while header is None:
                    total = header_size(buf)
                    if total is not None:
                        # v2, its fixed part in: the rest is exactly this long (parsing a
                        # growing buffer on every arrival would be quadratic)
                        buf += await _recv_exactly(tsock, total - len(buf))
                        header = parse_proxy_header(buf)
                        if header is None:  # (cannot be: every byte of it is in)
                            raise ProxyProtocolError("incomplete header")
                        break
                    data = await tsock.recv(MAX_HEADER_SIZE - len(buf), socket.MSG_PEEK)
                    if not data:
                        failure = "closed before the PROXY protocol header"
                        break
                    header = parse_proxy_header(buf + data)
                    # Complete: take the rest of the header. Not yet: every byte is the
                    # header's, take them all (a peek would only see them again).
                    want = len(data) if header is None else header.length - len(buf)
                    while want > 0:
                        got = await tsock.recv(want)
                        if not got:
                            raise OSError("connection closed")
                        want -= len(got)
                    buf += data
            except ProxyProtocolError as exc:
                failure = f"invalid PROXY protocol header: {exc}"
            except OSError as exc:
                failure = str(exc) or type(exc).__name__
            finally:
                server.request_waits.discard(scope)
        if scope.cancelled_caught:
            failure = ("the server is shutting down" if server.draining
                       else "timed out waiting for the PROXY protocol header")
    if failure is not None:
        if server.metrics is not None and not server.draining:
            server.metrics.reject("proxy_protocol")
        now = trio.current_time()
        if now - server.proxy_logged >= 1.0:
            server.proxy_logged = now
            if peer is not None:
                who = f"{peer[0]}:{peer[1]}"
            else:
                who = ("a Unix socket peer" if tsock.family == socket.AF_UNIX
                       else "a peer whose address is not known")
            log.warning("PROXY protocol: closing the connection from %s: %s", who, failure)
        return None
    return header


async def _connection_task(server: _Server, stream: trio.SocketStream) -> None:
    try:
        addresses: _Addresses | None = None  # None: the socket's, not trusted
        forwarded = server.forwarded_headers
        if server.proxy_protocol is not None:
            try:
                header = await _read_proxy_header(server, stream.socket)
            except BaseException:
                stream.socket.close()  # cancelled from outside: never leak it
                raise
            if header is None:
                stream.socket.close()
                return
            if header.source is not None:
                # Forwarding headers are the source's (behind a TCP-mode proxy, the client's):
                # believed when the source is a trusted proxy itself ("*" does not make it
                # one: the source is named by the proxy, like a header's hop).
                addresses = (header.source, header.destination,
                             forwarded is not None and forwarded.is_trusted_hop(header.source))
            # (LOCAL, UNKNOWN, UNSPEC, UNIX: the real addresses are kept, which are the
            # proxy's; the client is not known, so its forwarding headers are not believed.)
        elif forwarded is not None:
            accepted = stream.socket
            peer = _address(accepted, True)
            addresses = (peer, _address(accepted, False),
                         _peer_trusted(forwarded, accepted, peer))
        if server.ssl_context is not None:
            await _tls_connection(server, stream, addresses)
            return
        # The connection drives the socket itself (see _SocketIO); take it out of the stream.
        tsock = stream.socket
        sock = socket.socket(tsock.family, tsock.type, tsock.proto, fileno=tsock.detach())
        io = _SocketIO(sock)
        h1 = _H1Connection(server, io, addresses=addresses)
        await h1.run()
        if h1.h2_handover is not None:
            await _H2Connection(server, io, None, h1.h2_handover, addresses).run()
    except Exception:
        log.exception("unexpected error on a connection")
    finally:
        if server.connection_slots is not None:
            server.connection_slots.release()


_PLAIN_HTTP_TO_TLS_BODY = b"This port speaks HTTPS: a plain HTTP request was sent to it.\n"
_PLAIN_HTTP_TO_TLS = (b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n"
                      b"content-length: %d\r\nconnection: close\r\n\r\n"
                      % len(_PLAIN_HTTP_TO_TLS_BODY)) + _PLAIN_HTTP_TO_TLS_BODY


async def _tls_connection(server: _Server, stream: trio.SocketStream,
                          addresses: _Addresses | None = None) -> None:
    try:
        io_and_info = await _tls_handshake(server, stream)
    except BaseException:
        stream.socket.close()  # cancelled from outside (a second signal …): never leak it
        raise
    if io_and_info is not None:
        io, info = io_and_info
        if info.alpn_protocol == "h2":
            await _H2Connection(server, io, info, addresses=addresses).run()
        else:
            await _H1Connection(server, io, info, addresses).run()


async def _tls_handshake(server: _Server, stream: trio.SocketStream
                         ) -> tuple[_TlsIO, TlsInfo] | None:
    """Handshake under ``Tls.handshake_timeout``, then HTTP/1.1 over TLS. A failed or slow
    handshake (a plain-HTTP client, an unsupported version, a missing client certificate) closes
    the connection with a debug log line; the server goes on."""
    assert server.ssl_context is not None and server.config.tls is not None
    # https_compatible=False: aclose() sends close_notify (with True it would not); a client
    # that closes without one then reads as a broken connection, which ends it all the same.
    ssl_stream = trio.SSLStream(stream, server.ssl_context, server_side=True,
                                https_compatible=False)
    peer = _address(stream.socket, True)
    failure: str | None = None
    plain_http = False
    with trio.move_on_after(server.config.tls.handshake_timeout) as scope:
        # Like a new connection's first request, a handshake gets DRAIN_GRACE from a
        # graceful shutdown.
        if server.draining:
            scope.deadline = min(scope.deadline, trio.current_time() + DRAIN_GRACE)
        server.request_waits.add(scope)
        try:
            # A TLS client starts with a handshake record (0x16); a plain-HTTP one with a
            # method name. Peeked, so the handshake still reads every byte.
            first = await stream.socket.recv(1, socket.MSG_PEEK)
            if not first:
                failure = "closed before the handshake"
            elif first != b"\x16":
                failure = "not a TLS handshake"
                plain_http = first.isalpha()
            else:
                await ssl_stream.do_handshake()
        except OSError as exc:
            failure = str(exc)
        except trio.BrokenResourceError as exc:
            cause = exc.__cause__
            failure = str(cause or exc) or type(cause or exc).__name__
        finally:
            server.request_waits.discard(scope)
    if scope.cancelled_caught:
        failure = "the server is shutting down" if server.draining else "handshake timed out"
    if failure is not None:
        log.debug("TLS handshake with %s failed: %s", f"{peer[0]}:{peer[1]}" if peer else "-",
                  failure)
        if plain_http:
            # A plain-HTTP client: tell it in words it can read (as nginx and Kestrel do).
            if server.metrics is not None:
                server.metrics.bad_request("http1", 400)
            with trio.move_on_after(CLOSE_TIMEOUT), contextlib.suppress(OSError):
                await stream.socket.send(_PLAIN_HTTP_TO_TLS)
                # read what it sent so the close does not reset the answer away
                with trio.move_on_after(0.2):
                    await stream.socket.recv(65536)
        stream.socket.close()
        return None
    # (SSLStream forwards the SSLObject's methods TlsInfo reads.)
    info = TlsInfo(ssl_stream, server.cipher_suites, server.server_certificate_pem)
    return _TlsIO(ssl_stream), info


async def _watch_signals(begin_shutdown: Callable[[], None], force: Callable[[], None], *,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """SIGINT/SIGTERM: the first begins a graceful shutdown, the next cancels what is left.
    ``task_status.started()`` once the handlers are installed."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        count = 0
        async for signum in signals:
            count += 1
            if count == 1:
                log.info("received %s: shutting down gracefully",
                         signal.Signals(signum).name)
                begin_shutdown()
            else:
                log.warning("received %s again: cancelling in-flight requests now",
                            signal.Signals(signum).name)
                force()


async def _watch_event(event: trio.Event, begin_shutdown: Callable[[], None]) -> None:
    await event.wait()
    begin_shutdown()


async def systemd_watchdog(interval: float) -> None:
    """Tell systemd the event loop is alive (``WATCHDOG=1``) every ``interval`` seconds; a
    blocked loop stops the pings and systemd restarts the service."""
    while True:
        systemd.notify("WATCHDOG=1")
        await trio.sleep(interval)


class ListeningAddresses(list[str]):
    """What :func:`serve` passes to ``task_status.started()``: the public URLs bound (a
    ``list[str]``), plus :attr:`admin`, the admin endpoint's URLs (empty without
    ``Config.admin_bind``), so a test or an embedding program binding the admin endpoint to
    port 0 can find it."""

    def __init__(self, urls: list[str], admin: list[str] | None = None) -> None:
        super().__init__(urls)
        self.admin: list[str] = list(admin or [])


ADMIN_BACKLOG = 64


def _admin_config(bind: Bind) -> Config:
    """The admin endpoint's own server configuration: HTTP/1.1 only, no access log, no TLS,
    small limits (it answers probes and scrapes, nothing bigger)."""
    return Config(
        binds=(bind,), access_log=False, http2=False, http_parser="h11",
        backlog=ADMIN_BACKLOG,
        limits=Limits(max_concurrent_connections=100, max_concurrent_requests=50,
                      max_request_body_size=64 * 1024, max_request_line_size=4096,
                      max_request_headers_count=50, max_request_headers_total_size=16 * 1024),
        timeouts=Timeouts(keep_alive=5.0, request_headers=10.0, graceful=CLOSE_TIMEOUT),
    )


async def run_admin_endpoint(app: AdminApp, bind: Bind, stop: trio.Event, done: trio.Event, *,
                             task_status: trio.TaskStatus[list[str]]) -> None:
    """Serve the admin endpoint on ``bind`` with a server of its own (:func:`_admin_config`),
    ``task_status.started(urls)`` once listening, until ``stop`` is set; then close the
    listener and give requests in progress ``CLOSE_TIMEOUT`` to finish, and set ``done``.
    Raises :class:`ListenError` when ``bind`` cannot be bound."""
    try:
        admin = _Server(app, _admin_config(bind))
        listeners = await open_listeners((bind,), ADMIN_BACKLOG, "http")
        urls = [bl.url for bl in listeners]
        admin.features.set(ServerAddressesFeature, ServerAddressesInfo(list(urls)))
        async with trio.open_nursery() as connections:
            try:
                async with trio.open_nursery() as acceptors:
                    for bl in listeners:
                        acceptors.start_soon(_accept_loop, admin, bl, connections)
                    for url in urls:
                        log.info("trioserve admin endpoint on %s", url)
                    task_status.started(urls)
                    await stop.wait()
                    acceptors.cancel_scope.cancel()
            finally:
                admin.begin_drain()
                with trio.CancelScope(shield=True) as cleanup:
                    cleanup.deadline = trio.current_time() + CLOSE_TIMEOUT
                    for bl in listeners:
                        await bl.aclose()
            connections.cancel_scope.deadline = trio.current_time() + CLOSE_TIMEOUT
    finally:
        done.set()


async def serve(
    app: Application,
    config: Config | None = None,
    *,
    shutdown: trio.Event | None = None,
    force: trio.Event | None = None,
    install_signal_handlers: bool = True,
    metrics: Metrics | None = None,
    systemd_notify: bool = False,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until shut down.

    Runs the application's start-up (ASGI lifespan) first, then binds every address and calls
    ``task_status.started(addresses)`` with the URLs actually bound (a
    :class:`ListeningAddresses`: the public URLs only; its ``admin`` attribute has the admin
    endpoint's). Shutdown begins on SIGINT
    or SIGTERM (when ``install_signal_handlers`` and in the main thread) or when ``shutdown`` is
    set: listeners close, connections waiting for a request get ``DRAIN_GRACE`` (1 s) for one
    to arrive (it is answered with ``Connection: close``), in-flight requests get until
    ``config.timeouts.graceful`` to finish and are then cancelled, and finally the application's
    shutdown runs. Returns normally after a graceful shutdown. ``force`` set (like a second
    signal): in-flight requests and the application's shutdown are cancelled at once.

    ``metrics``: a :class:`~trioserve.metrics.Metrics` the server updates (requests,
    connections, rejections …); with ``config.admin_bind`` and no ``metrics`` the server makes
    its own; with neither nothing is counted. With ``config.admin_bind`` the admin endpoint
    (:class:`~trioserve.admin.AdminApp`: ``/metrics``, ``/livez``, ``/readyz``) is served there
    by a separate server from before the application's start-up until the very end: ``/readyz``
    is 503 until the public listeners are up and again from the moment a graceful shutdown
    begins, while the admin endpoint stays up through the drain.

    ``systemd_notify``: this server is the service systemd started (the ``trioserve`` command
    without ``--workers`` passes ``True``): under systemd (``NOTIFY_SOCKET`` set) it then
    sends ``READY=1`` once listening (not when a shutdown was requested during start-up),
    ``STOPPING=1`` when the graceful shutdown begins and, when the watchdog is on
    (``WATCHDOG_USEC``), ``WATCHDOG=1`` every half period. Off by default: a program that
    embeds ``serve()`` (maybe several times, one after another) speaks for itself.

    Raises :class:`~trioserve.features.LifespanFailure` if the application's start-up fails and
    :class:`~trioserve.listeners.ListenError` if an address (or the admin address) cannot be
    bound.
    """
    try:
        await _serve(app, config, shutdown, force, install_signal_handlers, metrics,
                     systemd_notify, task_status)
    except BaseExceptionGroup as group:
        # Trio's nurseries wrap a start-up error in an exception group; raise the documented
        # exception itself (the CLI catches LifespanFailure and ListenError by type).
        sole = _sole_exception(group)
        if isinstance(sole, LifespanFailure | ListenError):
            raise sole from None
        raise


def _sole_exception(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


async def _serve(
    app: Application,
    config: Config | None,
    shutdown: trio.Event | None,
    force_event: trio.Event | None,
    install_signal_handlers: bool,
    metrics: Metrics | None,
    systemd_notify: bool,
    task_status: trio.TaskStatus[list[str]],
) -> None:
    config = config or Config()
    graceful = config.timeouts.graceful
    if metrics is None and config.admin_bind is not None:
        metrics = Metrics()
    server = _Server(app, config, metrics)
    lifespan_stop = trio.Event()
    lifespan_done = trio.Event()
    startup_scope = trio.CancelScope()  # a shutdown request during start-up ends start-up
    accept_scope = trio.CancelScope()
    connections_scope = trio.CancelScope()  # gets the graceful deadline on shutdown
    lifespan_wait = trio.CancelScope()  # bounds the application's shutdown
    forced = stopping = listening = False
    admin_stop = trio.Event()
    admin_done = trio.Event()

    def begin_shutdown() -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        if systemd_notify:
            systemd.notify("STOPPING=1\nSTATUS=draining")
        startup_scope.cancel()
        accept_scope.cancel()
        server.begin_drain()
        connections_scope.deadline = trio.current_time() + graceful

    def force() -> None:
        nonlocal forced
        forced = True
        begin_shutdown()
        connections_scope.cancel()
        lifespan_wait.cancel()

    async def run_lifespan(*, task_status: trio.TaskStatus[None]) -> None:
        try:
            await app.run_lifespan(lifespan_stop, task_status=task_status)  # type: ignore[attr-defined]
        finally:
            lifespan_done.set()

    async with trio.open_nursery() as root:
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            # Installed before the app's start-up runs, so a signal then is never fatal.
            await root.start(_watch_signals, begin_shutdown, force)
        if shutdown is not None:
            root.start_soon(_watch_event, shutdown, begin_shutdown)
        if force_event is not None:
            root.start_soon(_watch_event, force_event, force)
        watchdog = systemd.watchdog_interval() if systemd_notify else None
        if watchdog is not None:
            root.start_soon(systemd_watchdog, watchdog)
        admin_urls: list[str] = []
        if config.admin_bind is not None:
            assert metrics is not None
            admin_app = AdminApp(metrics.snapshot, lambda: listening and not server.draining,
                                 draining=lambda: server.draining)
            admin_urls = await root.start(run_admin_endpoint, admin_app, config.admin_bind,
                                          admin_stop, admin_done)
        else:
            admin_done.set()
        lifespan_started = False
        listeners: list[BoundListener] | None = None
        with startup_scope:
            if isinstance(app, HostedApplication):
                await root.start(run_lifespan)
                lifespan_started = True
            listeners = await open_listeners(config.binds, config.backlog,
                                             "https" if config.tls is not None else "http")
        if stopping:  # (startup_scope cancelled, or too late to cancel anything in it)
            log.info("shutdown requested during start-up")
        if listeners is not None:
            addresses = [bl.url for bl in listeners]
            server.features.set(ServerAddressesFeature, ServerAddressesInfo(list(addresses)))
            with connections_scope:
                async with trio.open_nursery() as connections:
                    with accept_scope:
                        async with trio.open_nursery() as acceptors:
                            for bl in listeners:
                                acceptors.start_soon(_accept_loop, server, bl, connections)
                            # A stop requested once start-up had passed its last checkpoint
                            # (accept_scope is cancelled already): nothing was ready.
                            if not stopping:
                                for url in addresses:
                                    log.info("trioserve listening on %s", url)
                                listening = True
                                task_status.started(ListeningAddresses(addresses, admin_urls))
                                if systemd_notify:
                                    systemd.notify("READY=1\nSTATUS=listening on "
                                                   + ", ".join(addresses))
                    # Accepting stopped: close the listening sockets so new connections are
                    # refused, while the connections nursery drains.
                    server.begin_drain()
                    with trio.CancelScope(shield=True) as cleanup:
                        cleanup.deadline = trio.current_time() + CLOSE_TIMEOUT
                        for bl in listeners:
                            await bl.aclose()
            if connections_scope.cancelled_caught:
                if forced:
                    log.warning("in-flight requests were cancelled on a second signal")
                else:
                    log.warning("graceful shutdown timed out after %gs: in-flight requests "
                                "were cancelled", graceful)
        if lifespan_started:
            lifespan_stop.set()
            with lifespan_wait:
                lifespan_wait.deadline = trio.current_time() + graceful
                await lifespan_done.wait()
            if lifespan_wait.cancelled_caught:
                log.warning("the application's shutdown did not finish %s; it was cancelled",
                            "before a second signal" if forced else f"within {graceful:g}s")
        admin_stop.set()  # the admin endpoint closes last
        await admin_done.wait()
        root.cancel_scope.cancel()
    log.info("trioserve stopped")
