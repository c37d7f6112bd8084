"""Server configuration: frozen, validated data and nothing else.

Every class here is a ``@dataclass(frozen=True, slots=True)`` that checks its own values in
``__post_init__`` and raises :class:`ConfigError` naming the offending field. Loading from the
command line, files or the environment lives in :mod:`trioserve.cli`; nothing here does I/O.

Defaults follow Kestrel's ``KestrelServerLimits`` unless noted (the keep-alive timeout is the
Python servers' 5 s rather than Kestrel's 130 s).
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "Bind",
    "Config",
    "ConfigError",
    "Http2Limits",
    "Limits",
    "MinDataRate",
    "ProcessConfig",
    "ProxyConfig",
    "Timeouts",
    "Tls",
    "WebSocketConfig",
]


class ConfigError(ValueError):
    """A configuration value is invalid. The message names the field and the value."""


def _positive_int(owner: str, name: str, value: object, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        kind = "a positive integer" + (" or None" if allow_none else "")
        raise ConfigError(f"{owner}.{name} must be {kind}, got {value!r}")


def _non_negative_int(owner: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{owner}.{name} must be an integer >= 0, got {value!r}")


def _positive_float(owner: str, name: str, value: object, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:  # type: ignore[arg-type,operator]
        kind = "a positive number of seconds" + (" or None" if allow_none else "")
        raise ConfigError(f"{owner}.{name} must be {kind}, got {value!r}")


@dataclass(frozen=True, slots=True)
class MinDataRate:
    """A minimum transfer rate: ``bytes_per_second`` on average once ``grace_period`` has passed.

    Mirrors Kestrel's ``MinDataRate``. Only time spent waiting on the client counts, so a slow
    application never makes a client look slow.
    """

    bytes_per_second: float = 240.0
    grace_period: float = 5.0

    def __post_init__(self) -> None:
        _positive_float("MinDataRate", "bytes_per_second", self.bytes_per_second)
        _positive_float("MinDataRate", "grace_period", self.grace_period)


@dataclass(frozen=True, slots=True)
class Http2Limits:
    """HTTP/2 settings and limits (Kestrel's ``Http2Limits`` defaults), sent to every client in
    the server's SETTINGS frame and enforced by the protocol.

    - ``max_streams_per_connection``: ``SETTINGS_MAX_CONCURRENT_STREAMS``; a stream over it
      is refused (``RST_STREAM REFUSED_STREAM``, safe to retry), and a client opening twice as
      many at once gets a connection error (``PROTOCOL_ERROR``).
    - ``header_table_size``: ``SETTINGS_HEADER_TABLE_SIZE``, the HPACK dynamic table the client
      may use (bytes; 0 disables it).
    - ``max_frame_size``: ``SETTINGS_MAX_FRAME_SIZE``, the largest frame payload accepted
      (16384-16777215); a larger frame is a ``FRAME_SIZE_ERROR``.
    - ``initial_stream_window_size``: ``SETTINGS_INITIAL_WINDOW_SIZE``, request body bytes one
      stream may have in flight before the application reads them (the backpressure window).
    - ``initial_connection_window_size``: the same across all the streams of a connection
      (raised from the protocol's 65535 right after the preface).

    - ``max_header_field_size``: bytes of one decoded request field (name + value; Kestrel's
      ``MaxRequestHeaderFieldSize``); a larger one gets 431 on its stream.
    - ``max_resets_per_second``: streams the client may reset (RST_STREAM) while their apps
      run, per second on average, in bursts of twice that (rapid reset, CVE-2023-44487);
      beyond it the connection ends with GOAWAY ``ENHANCE_YOUR_CALM``.
    - ``max_control_frames_per_second``: frames that carry no request (PING, SETTINGS,
      PRIORITY, WINDOW_UPDATE, RST_STREAM, empty DATA without END_STREAM, unknown types, DATA
      or HEADERS on a stream the client already reset) the client may send per second on
      average, in bursts of twice that; each DATA frame the server sends allows two more, and
      each 4 KiB of it one more (WINDOW_UPDATEs that acknowledge a download do not count
      against a client). Beyond it: GOAWAY
      ``ENHANCE_YOUR_CALM`` (the floods of CVE-2019-9512, -9515, -9518 and friends).

    The header list limit is ``Limits.max_request_headers_total_size`` (advertised as
    ``SETTINGS_MAX_HEADER_LIST_SIZE``); the header count limit is
    ``Limits.max_request_headers_count``. Over either, the request gets 431 on its stream.
    """

    max_streams_per_connection: int = 100
    header_table_size: int = 4096
    max_frame_size: int = 16384
    initial_stream_window_size: int = 768 * 1024
    initial_connection_window_size: int = 1024 * 1024
    max_header_field_size: int = 16 * 1024
    max_resets_per_second: int = 100
    max_control_frames_per_second: int = 1000

    def __post_init__(self) -> None:
        for name in ("max_streams_per_connection", "max_header_field_size",
                     "max_resets_per_second", "max_control_frames_per_second"):
            _positive_int("Http2Limits", name, getattr(self, name))
        h = self.header_table_size
        if isinstance(h, bool) or not isinstance(h, int) or not 0 <= h <= 2**31 - 1:
            raise ConfigError(f"Http2Limits.header_table_size must be an integer 0-2147483647, "
                              f"got {h!r}")
        f = self.max_frame_size
        if isinstance(f, bool) or not isinstance(f, int) or not 16384 <= f <= 2**24 - 1:
            raise ConfigError("Http2Limits.max_frame_size must be an integer 16384-16777215 "
                              f"(RFC 9113 §6.5.2), got {f!r}")
        for name in ("initial_stream_window_size", "initial_connection_window_size"):
            w = getattr(self, name)
            if isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= 2**31 - 1:
                raise ConfigError(f"Http2Limits.{name} must be an integer 1-2147483647 "
                                  f"(RFC 9113 §6.9), got {w!r}")
        if self.initial_connection_window_size < 65535:
            raise ConfigError("Http2Limits.initial_connection_window_size must be at least "
                              "65535 (the protocol's initial window), got "
                              f"{self.initial_connection_window_size!r}")


@dataclass(frozen=True, slots=True)
class WebSocketConfig:
    """WebSockets (RFC 6455 over HTTP/1.1, RFC 8441 over HTTP/2).

    - ``max_message_size``: bytes of one received message, after decompression; a larger one
      closes the WebSocket with 1009 (Message Too Big). ``None``: unbounded.
    - ``ping_interval``: seconds between the server's pings; ``None`` sends none.
    - ``ping_timeout``: seconds after a ping within which the peer must be heard from (its pong,
      or any frame); past it the peer is taken for dead and the connection is dropped (the app
      sees code 1006). Time the server spends waiting for the app to take a message does not
      count.
    - ``idle_timeout``: seconds without any frame from the peer after which the server closes
      with 1001; ``None`` (default): never (pings still find dead peers).
    - ``close_timeout``: seconds to wait for the peer's reply to the server's close frame before
      dropping the connection.
    - ``per_message_deflate``: accept permessage-deflate compression (RFC 7692) when offered.
    - ``deflate_max_window_bits``: the server's compression window, 9-15 (2**bits bytes of
      history). It bounds only the server's compressor (the messages it sends); the window of
      the messages it receives, and so of its decompressor, is the client's choice.
    - ``deflate_level``: zlib's compression level for the server's messages, 1 (fastest) to 9
      (smallest); 6 is zlib's default, as the websockets library uses. Text compresses about
      7x faster at 1, for about 20% larger messages.
    """

    max_message_size: int | None = 16 * 1024 * 1024
    ping_interval: float | None = 20.0
    ping_timeout: float = 20.0
    idle_timeout: float | None = None
    close_timeout: float = 5.0
    per_message_deflate: bool = True
    deflate_max_window_bits: int = 15
    deflate_level: int = 6

    def __post_init__(self) -> None:
        _positive_int("WebSocketConfig", "max_message_size", self.max_message_size,
                      allow_none=True)
        _positive_float("WebSocketConfig", "ping_interval", self.ping_interval, allow_none=True)
        _positive_float("WebSocketConfig", "ping_timeout", self.ping_timeout)
        _positive_float("WebSocketConfig", "idle_timeout", self.idle_timeout, allow_none=True)
        _positive_float("WebSocketConfig", "close_timeout", self.close_timeout)
        if not isinstance(self.per_message_deflate, bool):
            raise ConfigError("WebSocketConfig.per_message_deflate must be True or False, "
                              f"got {self.per_message_deflate!r}")
        b = self.deflate_max_window_bits
        if isinstance(b, bool) or not isinstance(b, int) or not 9 <= b <= 15:
            raise ConfigError("WebSocketConfig.deflate_max_window_bits must be an integer 9-15, "
                              f"got {b!r}")
        lv = self.deflate_level
        if isinstance(lv, bool) or not isinstance(lv, int) or not 1 <= lv <= 9:
            raise ConfigError(f"WebSocketConfig.deflate_level must be an integer 1-9, got {lv!r}")


@dataclass(frozen=True, slots=True)
class Limits:
    """Size and count limits. Each is enforced by a counter in the protocol or connection.

    - ``max_concurrent_connections``: open connections per server; when reached the listeners stop
      accepting until one closes (the kernel backlog holds the rest). ``None``: unbounded.
    - ``max_concurrent_upgraded_connections``: open WebSockets per server (Kestrel's
      ``MaxConcurrentUpgradedConnections``); a WebSocket handshake beyond it gets 503 with
      ``Retry-After``. ``None``: unbounded.
    - ``max_concurrent_requests``: application calls in progress per server (HTTP/1.1
      requests, HTTP/2 streams and WebSocket sessions together); a request beyond it is not
      given to the app but answered 503 with ``Retry-After: 1`` (over HTTP/1.1 with
      ``Connection: close``). ``None``: unbounded.
    - ``max_request_body_size``: bytes; beyond it 413. Per request an app may change it through
      :class:`~trioserve.features.RequestBodyFeature` before reading. ``None``: unbounded.
    - ``max_request_line_size``: bytes of the request line (method, target, version); beyond it 414.
    - ``max_request_headers_count``: header fields per request; beyond it 431.
    - ``max_request_headers_total_size``: bytes of the header section; beyond it 431.
    - ``min_request_body_data_rate``: see :class:`MinDataRate`; a client sending the body more
      slowly gets 408 and is disconnected. ``None`` disables the check.
    - ``min_response_data_rate``: see :class:`MinDataRate`; a client that reads the response
      more slowly (or stops reading) is disconnected. ``None`` disables the check.
    - ``http2``: :class:`Http2Limits`.
    """

    max_concurrent_connections: int | None = None
    max_concurrent_upgraded_connections: int | None = None
    max_concurrent_requests: int | None = None
    max_request_body_size: int | None = 30_000_000
    max_request_line_size: int = 8 * 1024
    max_request_headers_count: int = 100
    max_request_headers_total_size: int = 32 * 1024
    min_request_body_data_rate: MinDataRate | None = field(default_factory=MinDataRate)
    min_response_data_rate: MinDataRate | None = field(default_factory=MinDataRate)
    http2: Http2Limits = field(default_factory=Http2Limits)

    def __post_init__(self) -> None:
        _positive_int("Limits", "max_concurrent_connections", self.max_concurrent_connections,
                      allow_none=True)
        _positive_int("Limits", "max_concurrent_upgraded_connections",
                      self.max_concurrent_upgraded_connections, allow_none=True)
        _positive_int("Limits", "max_concurrent_requests", self.max_concurrent_requests,
                      allow_none=True)
        _positive_int("Limits", "max_request_body_size", self.max_request_body_size,
                      allow_none=True)
        _positive_int("Limits", "max_request_line_size", self.max_request_line_size)
        _positive_int("Limits", "max_request_headers_count", self.max_request_headers_count)
        _positive_int("Limits", "max_request_headers_total_size",
                      self.max_request_headers_total_size)
        if self.max_request_line_size < 16:
            raise ConfigError("Limits.max_request_line_size must be at least 16 bytes, "
                              f"got {self.max_request_line_size!r}")
        for name in ("min_request_body_data_rate", "min_response_data_rate"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, MinDataRate):
                raise ConfigError(f"Limits.{name} must be a MinDataRate or None, got {value!r}")
        if not isinstance(self.http2, Http2Limits):
            raise ConfigError(f"Limits.http2 must be Http2Limits, got {self.http2!r}")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Deadlines, in seconds. Each bounds exactly one wait with one cancel scope.

    - ``keep_alive``: how long an idle keep-alive connection waits for the next request's first
      byte before it is closed silently.
    - ``request_headers``: from the first byte of a request (or from accept, for a connection's
      first request) until its header section is complete; beyond it 408 and close.
    - ``graceful``: on shutdown, how long in-flight requests may take to finish before they are
      cancelled.
    """

    keep_alive: float = 5.0
    request_headers: float = 30.0
    graceful: float = 30.0

    def __post_init__(self) -> None:
        _positive_float("Timeouts", "keep_alive", self.keep_alive)
        _positive_float("Timeouts", "request_headers", self.request_headers)
        _positive_float("Timeouts", "graceful", self.graceful)


ProxyHeaders = Literal["off", "x-forwarded", "forwarded"]


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """Running behind a reverse proxy or load balancer.

    - ``headers``: which forwarding headers to apply to the request's features (client
      address, scheme, host, root path): ``"off"`` (default: none), ``"x-forwarded"``
      (``X-Forwarded-For/-Proto/-Host/-Prefix``, what nginx, HAProxy and most load balancers
      write) or ``"forwarded"`` (RFC 7239 ``Forwarded``). Only the header the proxy itself
      writes may be chosen: a client can send the other one through it unchanged.
    - ``trusted``: the peers whose forwarding headers (and PROXY protocol headers) are
      believed: IP addresses and CIDR networks, or ``"*"`` for every connection peer (hops
      named in the headers, and a PROXY header's source, are checked against the addresses and
      networks only). Hops are read from the right: the first address that is not trusted is
      the client. Unix socket peers are always trusted (only local processes can connect); a
      TCP peer whose address is unknown is not. Default: ``("127.0.0.1",)``.
    - ``proxy_protocol``: every connection starts with a PROXY protocol header (v1 or v2,
      HAProxy's), which gives the original client address. A connection without one, or from
      a peer not in ``trusted``, is closed.
    """

    headers: ProxyHeaders = "off"
    trusted: tuple[str, ...] = ("127.0.0.1",)
    proxy_protocol: bool = False

    def __post_init__(self) -> None:
        if self.headers not in ("off", "x-forwarded", "forwarded"):
            raise ConfigError("ProxyConfig.headers must be 'off', 'x-forwarded' or "
                              f"'forwarded', got {self.headers!r}")
        if not isinstance(self.trusted, tuple):
            raise ConfigError(f"ProxyConfig.trusted must be a tuple of addresses, got "
                              f"{self.trusted!r}")
        for entry in self.trusted:
            if entry == "*":
                continue
            try:
                ipaddress.ip_network(entry, strict=False)
            except (TypeError, ValueError):
                raise ConfigError("ProxyConfig.trusted: expected IP addresses, CIDR networks "
                                  f"or '*', got {entry!r}") from None
        if not isinstance(self.proxy_protocol, bool):
            raise ConfigError("ProxyConfig.proxy_protocol must be True or False, got "
                              f"{self.proxy_protocol!r}")


@dataclass(frozen=True, slots=True)
class ProcessConfig:
    """Process management by ``trioserve`` (the command line's supervisor); :func:`serve`
    ignores it.

    - ``workers``: worker processes sharing the listening sockets, under a supervisor that
      replaces any that exits or stops heart-beating; 0 (default): serve in this process.
    - ``worker_timeout``: seconds a worker may go without a heartbeat (its event loop blocked)
      before it is killed and replaced.
    - ``max_requests``: a worker that has served this many requests is replaced (gracefully);
      ``None`` (default): never. ``max_requests_jitter``: up to this many more, chosen at
      random per worker, so workers are not all replaced at once.
    - ``reload``: development mode: one worker, restarted when a file under ``reload_dirs``
      (default: the current directory) changes.
    """

    workers: int = 0
    worker_timeout: float = 30.0
    max_requests: int | None = None
    max_requests_jitter: int = 0
    reload: bool = False
    reload_dirs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _non_negative_int("ProcessConfig", "workers", self.workers)
        _positive_float("ProcessConfig", "worker_timeout", self.worker_timeout)
        _positive_int("ProcessConfig", "max_requests", self.max_requests, allow_none=True)
        _non_negative_int("ProcessConfig", "max_requests_jitter", self.max_requests_jitter)
        if not isinstance(self.reload, bool):
            raise ConfigError(f"ProcessConfig.reload must be True or False, got {self.reload!r}")
        if not isinstance(self.reload_dirs, tuple) or not all(
                isinstance(d, str) and d for d in self.reload_dirs):
            raise ConfigError(f"ProcessConfig.reload_dirs must be a tuple of directories, got "
                              f"{self.reload_dirs!r}")


ClientCertMode = Literal["none", "optional", "required"]


@dataclass(frozen=True, slots=True)
class Tls:
    """TLS for every listener (HTTPS). Files are read when the server starts; a missing or
    unreadable file, a wrong password or a key that does not match the certificate is a
    :class:`ConfigError` then (see :func:`trioserve.tls.server_context`).

    - ``certfile``: the certificate chain (PEM), leaf first; ``keyfile``: its private key (PEM),
      or ``None`` when the key is in ``certfile``; ``keyfile_password``: for an encrypted key.
    - ``ca_certs``: CA certificates (PEM) that client certificates must chain to; required when
      ``client_cert`` is not ``"none"``.
    - ``client_cert``: ``"none"`` (not asked for), ``"optional"`` (asked for, verified if sent),
      ``"required"`` (the handshake fails without a valid one).
    - ``ciphers``: an OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are OpenSSL's defaults);
      ``None`` keeps Python's secure defaults.
    - ``handshake_timeout``: seconds a client gets to complete the handshake (Kestrel: 10 s).

    TLS 1.2 is the minimum version; ALPN offers ``h2`` (unless ``Config.http2`` is off) and
    ``http/1.1``.
    """

    certfile: str
    keyfile: str | None = None
    keyfile_password: str | None = None
    ca_certs: str | None = None
    client_cert: ClientCertMode = "none"
    ciphers: str | None = None
    handshake_timeout: float = 10.0

    def __post_init__(self) -> None:
        for name in ("certfile", "keyfile", "keyfile_password", "ca_certs", "ciphers"):
            value = getattr(self, name)
            if value is None and name != "certfile":
                continue
            if not isinstance(value, str) or not value:
                raise ConfigError(f"Tls.{name} must be a non-empty string"
                                  f"{'' if name == 'certfile' else ' or None'}, got {value!r}")
        if self.client_cert not in ("none", "optional", "required"):
            raise ConfigError("Tls.client_cert must be 'none', 'optional' or 'required', "
                              f"got {self.client_cert!r}")
        if self.client_cert != "none" and self.ca_certs is None:
            raise ConfigError(f"Tls.client_cert={self.client_cert!r} needs Tls.ca_certs (the CA "
                              "certificates client certificates must chain to)")
        _positive_float("Tls", "handshake_timeout", self.handshake_timeout)


BindKind = Literal["tcp", "unix", "fd"]


@dataclass(frozen=True, slots=True)
class Bind:
    """One address to listen on: TCP ``host``/``port``, a Unix socket ``path``, or an inherited
    listening socket ``fd``. Build them with :meth:`tcp`, :meth:`unix` and :meth:`from_fd`.

    Port 0 asks the kernel for a free port; the real one is reported once bound.
    """

    kind: BindKind = "tcp"
    host: str = "127.0.0.1"
    port: int = 8000
    path: str | None = None
    fd: int | None = None

    @classmethod
    def tcp(cls, host: str = "127.0.0.1", port: int = 8000) -> Bind:
        return cls(kind="tcp", host=host, port=port)

    @classmethod
    def unix(cls, path: str) -> Bind:
        return cls(kind="unix", path=path)

    @classmethod
    def from_fd(cls, fd: int) -> Bind:
        return cls(kind="fd", fd=fd)

    def __post_init__(self) -> None:
        if self.kind == "tcp":
            if isinstance(self.port, bool) or not isinstance(self.port, int) or not (
                0 <= self.port <= 65535
            ):
                raise ConfigError(f"Bind.port must be an integer 0-65535, got {self.port!r}")
            if not isinstance(self.host, str) or not self.host:
                raise ConfigError(f"Bind.host must be a non-empty string, got {self.host!r}")
        elif self.kind == "unix":
            if not isinstance(self.path, str) or not self.path:
                raise ConfigError(f"Bind.path must be a non-empty path, got {self.path!r}")
        elif self.kind == "fd":
            _non_negative_int("Bind", "fd", self.fd)
        else:
            raise ConfigError(f"Bind.kind must be 'tcp', 'unix' or 'fd', got {self.kind!r}")

    def describe(self) -> str:
        """A human-readable form: ``127.0.0.1:8000``, ``[::1]:8000``, ``unix:/p``, ``fd://3``."""
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "fd":
            return f"fd://{self.fd}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


_WILDCARDS = ("", "*", "0.0.0.0", "::")


def _same_address(a: Bind, b: Bind) -> bool:
    """Whether binding both ``a`` and ``b`` must fail: the same Unix path or descriptor, or
    the same TCP port (not 0: each gets its own) on the same host or a wildcard address."""
    if a.kind != b.kind:
        return False
    if a.kind == "unix":
        return a.path == b.path
    if a.kind == "fd":
        return a.fd == b.fd
    return a.port == b.port != 0 and (a.host == b.host or a.host in _WILDCARDS
                                      or b.host in _WILDCARDS)


@dataclass(frozen=True, slots=True)
class Config:
    """Everything :func:`trioserve.serve` needs, validated.

    - ``binds``: the addresses to listen on (default ``127.0.0.1:8000``).
    - ``server_header``: the ``Server`` response header value; ``None`` sends none.
    - ``root_path``: the path prefix the app is mounted under (ASGI ``root_path``,
      WSGI ``SCRIPT_NAME``); empty or starting with ``/`` and not ending with one.
    - ``access_log``: log one line per request on the ``trioserve.access`` logger.
    - ``backlog``: the listen backlog per socket.
    - ``tls``: :class:`Tls` to serve HTTPS on every listener; ``None`` (default) for plain HTTP.
    - ``http_parser``: the HTTP/1.1 request parser: ``"h11"`` (the reference), ``"httptools"``
      (llhttp, the ``trioserve[fast]`` extra; about twice as fast per request) or ``"auto"``
      (httptools when installed, else h11). Both accept and refuse exactly the same requests.
    - ``http2``: serve HTTP/2 too (default ``True``): over TLS when the client picks ``h2`` by
      ALPN; on plain listeners by prior knowledge (a connection opening with the HTTP/2 preface)
      and by ``Upgrade: h2c`` from HTTP/1.1. ``False``: HTTP/1.1 only.
    - ``websocket``: :class:`WebSocketConfig`.
    - ``proxy``: :class:`ProxyConfig` (forwarding headers, PROXY protocol).
    - ``admin_bind``: where to serve the admin endpoint (Prometheus ``/metrics``,
      ``/livez``, ``/readyz``); ``None`` (default): no admin endpoint. Never one of ``binds``.
    """

    binds: tuple[Bind, ...] = (Bind(),)
    limits: Limits = field(default_factory=Limits)
    timeouts: Timeouts = field(default_factory=Timeouts)
    server_header: str | None = "trioserve"
    root_path: str = ""
    access_log: bool = True
    backlog: int = 1024
    http_parser: Literal["auto", "h11", "httptools"] = "auto"
    tls: Tls | None = None
    http2: bool = True
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    admin_bind: Bind | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.binds, tuple) or not self.binds:
            raise ConfigError(f"Config.binds must be a non-empty tuple of Bind, got {self.binds!r}")
        for b in self.binds:
            if not isinstance(b, Bind):
                raise ConfigError(f"Config.binds must contain Bind objects, got {b!r}")
        if not isinstance(self.limits, Limits):
            raise ConfigError(f"Config.limits must be Limits, got {self.limits!r}")
        if not isinstance(self.timeouts, Timeouts):
            raise ConfigError(f"Config.timeouts must be Timeouts, got {self.timeouts!r}")
        if self.server_header is not None:
            if not isinstance(self.server_header, str) or not self.server_header.isprintable():
                raise ConfigError("Config.server_header must be printable text or None, "
                                  f"got {self.server_header!r}")
            try:
                self.server_header.encode("ascii")
            except UnicodeEncodeError:
                raise ConfigError("Config.server_header must be ASCII, "
                                  f"got {self.server_header!r}") from None
        rp = self.root_path
        if not isinstance(rp, str) or (rp and (not rp.startswith("/") or rp.endswith("/"))):
            raise ConfigError("Config.root_path must be empty or start with '/' and not end "
                              f"with '/', got {rp!r}")
        _positive_int("Config", "backlog", self.backlog)
        if self.tls is not None and not isinstance(self.tls, Tls):
            raise ConfigError(f"Config.tls must be Tls or None, got {self.tls!r}")
        if not isinstance(self.websocket, WebSocketConfig):
            raise ConfigError(f"Config.websocket must be WebSocketConfig, got {self.websocket!r}")
        if not isinstance(self.http2, bool):
            raise ConfigError(f"Config.http2 must be True or False, got {self.http2!r}")
        if self.http_parser not in ("auto", "h11", "httptools"):
            raise ConfigError("Config.http_parser must be 'auto', 'h11' or 'httptools', "
                              f"got {self.http_parser!r}")
        if not isinstance(self.proxy, ProxyConfig):
            raise ConfigError(f"Config.proxy must be ProxyConfig, got {self.proxy!r}")
        if self.admin_bind is not None:
            if not isinstance(self.admin_bind, Bind):
                raise ConfigError(f"Config.admin_bind must be a Bind or None, got "
                                  f"{self.admin_bind!r}")
            if any(_same_address(self.admin_bind, b) for b in self.binds):
                raise ConfigError(f"Config.admin_bind {self.admin_bind.describe()} is also a "
                                  "public listener; the admin endpoint needs its own address")
