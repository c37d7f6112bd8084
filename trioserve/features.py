"""The public contract between the server and applications: request features.

As in ASP.NET Core, a request reaches the application as a set of small *features*, each one
concern, looked up by type::

    async def app(ctx: RequestContext) -> None:
        request = ctx.features[RequestFeature]
        body = ctx.features[ResponseBodyFeature]
        ctx.features[ResponseFeature].headers.append((b"content-type", b"text/plain"))
        await body.complete(b"hello " + request.path.encode())

A :class:`FeatureCollection` falls back request → connection → server, so connection-wide
(:class:`ConnectionFeature`, :class:`TlsFeature`) and server-wide (:class:`ServerAddressesFeature`)
features are visible from every request. Bridges (ASGI, WSGI) import only this module.

Features refuse invalid transitions with :class:`FeatureStateError`: changing
``RequestBodyFeature.max_size`` after the body was first read, changing the status or headers after
the response started, upgrading after the response started, sending after completion.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    import os

    import trio

__all__ = [
    "Application",
    "ClientDisconnected",
    "ConnectionFeature",
    "EarlyHintsFeature",
    "FeatureCollection",
    "FeatureMissingError",
    "FeatureStateError",
    "HostedApplication",
    "LifespanFailure",
    "RequestBodyFeature",
    "RequestBodyTooLarge",
    "RequestContext",
    "RequestFeature",
    "RequestLifetimeFeature",
    "ResponseBodyFeature",
    "ResponseFeature",
    "ServerAddressesFeature",
    "ServerAddressesInfo",
    "TlsFeature",
    "UpgradeFeature",
    "WebSocketDisconnected",
    "WebSocketFeature",
]

T = TypeVar("T")
Headers = list[tuple[bytes, bytes]]
Callback = Callable[[], Awaitable[None]]


class FeatureStateError(RuntimeError):
    """A feature was used in a state that does not allow it (e.g. headers changed after the
    response started). The message says which transition was refused and why."""


class FeatureMissingError(KeyError):
    """``features[T]`` was asked for a feature this request does not have."""


class ClientDisconnected(OSError):
    """The client went away (or the request was aborted) while the app was reading the body
    or sending the response. ASGI bridges turn it into ``http.disconnect``."""


class WebSocketDisconnected(ClientDisconnected):
    """The WebSocket is closed: the close ``code`` and ``reason`` — the peer's (1005 when its
    close frame had no code), the server's own after a protocol failure (1002, 1007, 1009), or
    1006 when the connection was lost without a close handshake."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"the WebSocket closed with code {code}" + (f": {reason}" if reason
                                                                       else ""))
        self.code = code
        self.reason = reason


class RequestBodyTooLarge(Exception):
    """The request body exceeds ``RequestBodyFeature.max_size``. The server answers 413 if the
    response has not started, and closes the connection."""

    status_code = 413


class LifespanFailure(Exception):
    """The application's start-up failed; the message is the application's own."""


# ----------------------------------------------------------------------------- features


@runtime_checkable
class RequestFeature(Protocol):
    """The request line and headers.

    ``path`` is the target's path, percent-decoded and then decoded as UTF-8 (invalid sequences
    become U+FFFD); ``raw_path`` is the path exactly as sent, for anything that needs the bytes.
    ``headers`` are ``(lower-case name, value)`` byte
    pairs in the order received. ``http_version`` is ``"1.0"``, ``"1.1"`` or ``"2"``.
    """

    method: str
    scheme: str
    path: str
    raw_path: bytes
    raw_target: bytes
    query_string: bytes
    root_path: str
    http_version: str
    headers: Headers


@runtime_checkable
class RequestBodyFeature(Protocol):
    """The request body, streamed.

    ``receive()`` returns the next chunk, ``b""`` once the body is complete.
    Raises :class:`ClientDisconnected` if the client goes away first and
    :class:`RequestBodyTooLarge` past ``max_size``. ``max_size`` may be changed until the body is
    first read (Kestrel's ``MaxRequestBodySize``); after that :class:`FeatureStateError`.
    """

    @property
    def max_size(self) -> int | None: ...
    @max_size.setter
    def max_size(self, value: int | None) -> None: ...
    @property
    def expected_length(self) -> int | None:
        """The declared Content-Length, ``None`` for chunked or HTTP/2 bodies without one."""
        ...
    @property
    def is_complete(self) -> bool: ...
    async def receive(self) -> bytes: ...


@runtime_checkable
class ResponseFeature(Protocol):
    """The response status and headers, mutable until the response starts.

    ``on_starting`` callbacks run just before the headers are written (last registered first);
    ``on_completed`` callbacks after the response is complete. Assigning ``status`` or
    ``reason`` after the response started raises :class:`FeatureStateError`.
    """

    status: int
    reason: str | None
    headers: Headers

    @property
    def has_started(self) -> bool: ...
    def on_starting(self, callback: Callback) -> None: ...
    def on_completed(self, callback: Callback) -> None: ...


@runtime_checkable
class ResponseBodyFeature(Protocol):
    """Writes the response body.

    ``start()`` writes the headers now. ``send(data)`` writes one chunk (starting the response
    if needed). ``send_file`` sends ``count`` bytes (``None``: to the end) of a file from
    ``offset``, with ``os.sendfile`` on plain TCP. ``complete(data)`` sends the last chunk and
    optional trailers; if the response has not started, ``data`` is the whole body and its
    length becomes the Content-Length. ``send_file`` also takes an open file descriptor (it
    reads with ``pread``/``sendfile`` from ``offset`` and does not close it). After
    ``complete`` every method raises :class:`FeatureStateError`. Writes raise
    :class:`ClientDisconnected` when the client is gone.
    """

    @property
    def is_complete(self) -> bool: ...
    async def start(self) -> None: ...
    async def send(self, data: bytes) -> None: ...
    async def send_file(
        self, path: str | os.PathLike[str] | int, offset: int = 0, count: int | None = None
    ) -> None: ...
    async def complete(self, data: bytes = b"", *, trailers: Headers | None = None) -> None: ...


@runtime_checkable
class EarlyHintsFeature(Protocol):
    """103 Early Hints (RFC 8297): ``send_early_hints(headers)`` sends an informational 103
    response with ``headers`` (usually ``link`` fields, so a browser can preload while the final
    response is being made), any number of times before the final response starts. HTTP/1.0
    clients get nothing (they do not understand 1xx responses). Raises
    :class:`FeatureStateError` once the final response has started and ``ValueError`` for an
    invalid header; :class:`ClientDisconnected` when the client is gone."""

    async def send_early_hints(self, headers: Headers) -> None: ...


@runtime_checkable
class ConnectionFeature(Protocol):
    """The connection: an id unique in this process, the peer and local addresses.

    Addresses are ``(host, port)`` for TCP and ``None`` for Unix sockets and unknown peers.
    """

    connection_id: str
    peer: tuple[str, int] | None
    local: tuple[str, int] | None


@runtime_checkable
class TlsFeature(Protocol):
    """TLS parameters of the connection; present only on TLS connections.

    ``version`` (``"TLSv1.3"``) and ``tls_version`` (``0x0304``); ``cipher`` (OpenSSL's name)
    and ``cipher_suite`` (its IANA number, ``None`` if unknown); ``alpn_protocol``;
    ``peer_certificate`` (``ssl.SSLObject.getpeercert()``: ``None`` without a client
    certificate, and without verification, ``client_cert="none"``, never present),
    ``peer_certificate_pem`` and ``peer_certificate_name`` (its subject, RFC 4514);
    ``server_certificate_pem``: the server's own leaf certificate."""

    version: str | None
    tls_version: int | None
    cipher: str | None
    cipher_suite: int | None
    alpn_protocol: str | None
    peer_certificate: dict[str, Any] | None
    peer_certificate_pem: str | None
    peer_certificate_name: str | None
    server_certificate_pem: str | None


@runtime_checkable
class UpgradeFeature(Protocol):
    """HTTP/1.1 ``Upgrade``. ``is_upgradable_request`` is true when the request asked for a
    protocol switch (``Connection: upgrade`` and ``Upgrade: protocol``). ``upgrade(headers)``
    sends ``101 Switching Protocols`` and returns the raw stream, with bytes the client already
    sent after the request put back in front; each write to it is bounded by the minimum
    response data rate (a peer that stops reading breaks it: ``trio.BrokenResourceError``).
    Raises :class:`FeatureStateError` when the request is not upgradable, the body was not
    fully read, or the response already started."""

    @property
    def is_upgradable_request(self) -> bool: ...
    @property
    def protocol(self) -> bytes | None: ...
    async def upgrade(self, headers: Headers | None = None) -> trio.abc.Stream: ...


@runtime_checkable
class WebSocketFeature(Protocol):
    """A WebSocket opening handshake: present only on a valid one, over HTTP/1.1 (``Upgrade:
    websocket``) or HTTP/2 (extended ``CONNECT``, RFC 8441). Invalid handshakes are answered
    400 by the server before the app runs.

    To refuse, answer with the ordinary response features instead of calling ``accept``.
    ``accept(subprotocol, headers)`` completes the handshake (``subprotocol`` must be one of
    :attr:`subprotocols`, else ``ValueError``); then ``receive()`` returns each whole message
    (``str`` for text, ``bytes`` for binary) and ``send(data)`` sends one. ``close(code,
    reason)`` starts the closing handshake. Once the WebSocket is closed (by the peer, by
    ``close``, a protocol error, a dead peer or a server shutdown), ``receive()`` raises
    :class:`WebSocketDisconnected` with the peer's close code, except after a protocol failure,
    where the code is the server's own (1009, 1002, 1007 …), and 1006 when the connection was
    lost or dropped. ``send()`` raises it too; after ``close()`` (or the server's own close
    frame), until the peer's reply arrives, with the code of that frame. A failed or too-slow
    write makes ``send()`` raise it with 1006.
    ``accept``/``send``/``receive`` in the wrong state raise :class:`FeatureStateError`.
    ``state`` is ``"connecting"``, ``"open"``, ``"closing"`` (our close sent) or ``"closed"``.
    """

    @property
    def subprotocols(self) -> tuple[str, ...]: ...
    @property
    def extensions(self) -> tuple[str, ...]:
        """The extensions the client offered (``Sec-WebSocket-Extensions`` items)."""
        ...
    @property
    def state(self) -> str: ...
    @property
    def close_code(self) -> int | None: ...
    @property
    def close_reason(self) -> str: ...
    async def accept(self, subprotocol: str | None = None,
                     headers: Headers | None = None) -> None: ...
    async def receive(self) -> str | bytes: ...
    async def send(self, data: str | bytes) -> None: ...
    async def close(self, code: int = 1000, reason: str = "") -> None: ...


@runtime_checkable
class RequestLifetimeFeature(Protocol):
    """Whether the request was aborted (client disconnect, or ``abort()``).

    ``abort()`` drops the connection once the app returns and makes further writes raise
    :class:`ClientDisconnected`. ``wait_done()`` returns once the client disconnects, the request
    is aborted, or the response is complete (whichever comes first); it reads the connection
    meanwhile, so call it only after the request body was fully read."""

    @property
    def aborted(self) -> bool: ...
    def abort(self) -> None: ...
    async def wait_done(self) -> None: ...


@runtime_checkable
class ServerAddressesFeature(Protocol):
    """The addresses actually bound (the real port when port 0 was asked for), as URLs like
    ``http://127.0.0.1:8000`` or ``unix:/run/app.sock``."""

    addresses: list[str]


@dataclass(slots=True)
class ServerAddressesInfo:
    """The server's :class:`ServerAddressesFeature` implementation."""

    addresses: list[str]


# ------------------------------------------------------------------ collection, context


class FeatureCollection:
    """Features keyed by their type, with fallback to a parent collection.

    ``get(T)`` returns the feature or ``None``; ``features[T]`` raises
    :class:`FeatureMissingError`; ``set(T, obj)`` adds or replaces one at this level only
    (a middleware may wrap a feature for the requests below it).
    """

    __slots__ = ("_items", "_parent")

    def __init__(
        self, items: dict[type, object] | None = None, parent: FeatureCollection | None = None
    ) -> None:
        self._items: dict[type, object] = items if items is not None else {}
        self._parent = parent

    @property
    def parent(self) -> FeatureCollection | None:
        return self._parent

    def get(self, feature: type[T]) -> T | None:
        c: FeatureCollection | None = self
        while c is not None:
            v = c._items.get(feature)
            if v is not None:
                return v  # type: ignore[return-value]
            c = c._parent
        return None

    def __getitem__(self, feature: type[T]) -> T:
        v = self.get(feature)
        if v is None:
            raise FeatureMissingError(f"this request has no {feature.__name__}")
        return v

    def __contains__(self, feature: type) -> bool:
        return self.get(feature) is not None

    def set(self, feature: type[T], value: T | None) -> None:
        """Set (or with ``None`` remove) a feature at this level."""
        if value is None:
            self._items.pop(feature, None)
        else:
            self._items[feature] = value

    def types(self) -> frozenset[type]:
        """Every feature type visible from here."""
        out: set[type] = set()
        c: FeatureCollection | None = self
        while c is not None:
            out.update(c._items)
            c = c._parent
        return frozenset(out)


class RequestContext:
    """One request as the application sees it: its :attr:`features`."""

    __slots__ = ("features",)

    def __init__(self, features: FeatureCollection) -> None:
        self.features = features


Application = Callable[[RequestContext], Awaitable[None]]
"""An application: an async callable taking a :class:`RequestContext`. It must complete the
response (``ResponseBodyFeature.complete``) before returning; if it returns without doing so the
server completes it (an empty body if nothing was sent)."""


@runtime_checkable
class HostedApplication(Protocol):
    """An application with a lifetime around the server's (ASGI lifespan).

    ``run_lifespan`` runs start-up, calls ``task_status.started()``, waits until ``stop`` is set,
    runs shutdown and returns. Start-up failure raises :class:`LifespanFailure` before
    ``started()``."""

    async def __call__(self, ctx: RequestContext) -> None: ...

    async def run_lifespan(
        self, stop: trio.Event, *, task_status: trio.TaskStatus[None]
    ) -> None: ...
