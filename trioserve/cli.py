"""``trioserve APP [options]``: configuration file, profile, environment and flags
(:mod:`trioserve.settings`) → :class:`~trioserve.config.Config` → serve. ``trioserve config``
prints the merged configuration; ``dev-cert`` and ``fuzz`` are the other subcommands.

:func:`build_parser` defines every option (its name, type, choices and default): the flags and
the keys of the configuration file and ``TRIOSERVE_*`` variables alike.

Exit codes: 0 after a graceful shutdown; 1 when the app cannot be imported, an address cannot be
bound or the app's start-up fails; 2 for a bad option value, from any source. Errors are one
clear line on stderr, never a traceback (``--log-level debug`` adds the traceback of an import
error).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import logging
import math
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import trio

from . import __version__
from .config import (
    Bind,
    Config,
    ConfigError,
    Http2Limits,
    Limits,
    MinDataRate,
    ProcessConfig,
    ProxyConfig,
    Timeouts,
    Tls,
    WebSocketConfig,
)
from .features import LifespanFailure
from .listeners import ListenError
from .loading import AppLoadError, AppSpec, detect_interface, load_app, wrap_app
from .logs import setup_cli_logging
from .protocols.http1 import resolve_parser
from .server import serve
from .settings import NumberType, Settings, SettingsError, load_settings, render_toml
from .systemd import listen_fds
from .tls import server_context, write_dev_cert

# (AppLoadError, AppSpec, load_app, detect_interface, wrap_app: re-exported from
# trioserve.loading, where they live)
__all__ = ["AppLoadError", "AppSpec", "build_config", "build_process_config", "config_main",
           "detect_interface", "load_app", "main", "parse_bind", "wrap_app"]

log = logging.getLogger("trioserve")

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"trioserve: error: {message}\n(run 'trioserve --help' for the options)\n")


def _number(convert: type[int] | type[float], accept: Callable[[Any], bool],
            wanted: str) -> NumberType:
    """An argparse ``type``: ``convert`` the text, then ``accept`` the value, else one error
    saying what was ``wanted``. Configuration files give it numbers (``NumberType.check``)."""
    return NumberType(convert, accept, wanted)


_positive_int = _number(int, lambda v: v > 0, "a positive integer")
_non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
# (NaN fails every comparison, so it is refused too)
_seconds = _number(float, lambda v: 0 < v < math.inf, "a positive number of seconds")
_rate = _number(float, lambda v: 0 <= v < math.inf, "bytes per second >= 0 (0 disables)")
_port = _number(int, lambda v: 0 <= v <= 65535, "a port number 0-65535")
_seconds_or_off = _number(float, lambda v: 0 <= v < math.inf,
                          "a number of seconds >= 0 (0 disables)")
_window_bits = _number(int, lambda v: 9 <= v <= 15, "an integer 9-15")
_deflate_level = _number(int, lambda v: 1 <= v <= 9, "an integer 1-9")


def parse_bind(text: str) -> Bind:
    """``HOST:PORT``, ``[IPV6]:PORT``, ``:PORT`` (127.0.0.1) or ``unix:PATH`` as a
    :class:`Bind`. Raises :class:`ValueError` saying what was expected."""
    if text.startswith("unix:"):
        return Bind.unix(text[5:])
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not sep or not 0 <= port <= 65535 or (":" in host and not text.startswith("[")):
        raise ValueError(f"expected HOST:PORT, [IPV6]:PORT or unix:PATH, got {text!r}")
    try:
        return Bind.tcp(host or "127.0.0.1", port)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def _bind_type(text: str) -> Bind:
    try:
        return parse_bind(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_bind_type.__name__ = "an address"


def _ip_list(text: str) -> tuple[str, ...]:
    entries = tuple(e.strip() for e in text.split(",") if e.strip())
    try:
        ProxyConfig(trusted=entries)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("ProxyConfig.trusted: ")) \
            from None
    return entries


_ip_list.__name__ = "a list of addresses"


def build_parser() -> argparse.ArgumentParser:
    d = Config()
    lim = Limits()
    t = Timeouts()
    p = _Parser(
        prog="trioserve",
        description="Serve an ASGI 3 or WSGI application (or a trioserve features "
                    "application) over HTTP/1.1 and HTTP/2 on Trio, with WebSockets for "
                    "ASGI and features applications.",
        epilog="Example: trioserve trioserve.demo:app --port 8000. Every option can also be "
               "set in trioserve.toml (or [tool.trioserve] in pyproject.toml) as 'key = "
               "value' (the option without '--'), in [profile.NAME] tables chosen with "
               "--profile, or as TRIOSERVE_<OPTION> environment variables; flags win over "
               "the environment, which wins over the profile and then the file. 'trioserve "
               "config' prints the effective configuration and where each value came from.",
    )
    p.add_argument("app", metavar="APP", nargs="?", default=None,
                   help="the application as 'module:attribute' (may be set as 'app' in the "
                        "configuration file instead)")
    p.add_argument("--version", action="version", version=f"trioserve {__version__}")
    g = p.add_argument_group("configuration file")
    g.add_argument("--config", metavar="FILE", default=None,
                   help="TOML configuration file (or set TRIOSERVE_CONFIG; default "
                        "./trioserve.toml, else [tool.trioserve] in ./pyproject.toml, if "
                        "present)")
    g.add_argument("--profile", metavar="NAME", default=None,
                   help="apply the file's [profile.NAME] table over its top level (or set "
                        "TRIOSERVE_PROFILE; default none)")
    g = p.add_argument_group("binding")
    g.add_argument("--host", default=None,
                   help="address to bind (default 127.0.0.1; '::' for all IPv6, '0.0.0.0' "
                        "for all IPv4)")
    g.add_argument("--port", type=_port, default=None,
                   help="TCP port to bind (default 8000; 0 picks a free port)")
    g.add_argument("--uds", metavar="PATH", help="bind a Unix domain socket")
    g.add_argument("--fd", type=_non_negative_int, metavar="N",
                   help="serve on an inherited listening socket file descriptor")
    g.add_argument("--backlog", type=_positive_int, default=d.backlog,
                   help=f"listen backlog (default {d.backlog})")
    g = p.add_argument_group("application")
    g.add_argument("--app-dir", default=".",
                   help="directory added to the import path before loading APP (default '.')")
    g.add_argument("--factory", dest="factory", action="store_true", default=False,
                   help="APP is a factory: call it without arguments to get the application")
    g.add_argument("--no-factory", dest="factory", action="store_false",
                   help="APP is the application itself (the default)")
    g.add_argument("--interface", choices=("auto", "asgi", "wsgi", "features"), default="auto",
                   help="application interface (default auto: an async callable taking (scope, "
                        "receive, send) is ASGI 3, a plain callable taking (environ, "
                        "start_response) is WSGI, an async callable taking (ctx) is a "
                        "features app)")
    g.add_argument("--threads", type=_positive_int, default=40,
                   help="WSGI only: worker threads running the application (default 40)")
    g.add_argument("--lifespan", choices=("auto", "on", "off"), default="auto",
                   help="ASGI lifespan (default auto: used when the app supports it)")
    g.add_argument("--loop", choices=("auto", "trio", "asyncio-compat"), default="auto",
                   help="ASGI only: the event loop the app runs on. trio: Trio itself (apps on "
                        "anyio or Trio: Starlette, FastAPI, Litestar); asyncio-compat: asyncio "
                        "inside Trio through trio-asyncio, for asyncio-only apps (Django, "
                        "Channels; pip install 'trioserve[asyncio]'); auto (the default): "
                        "asyncio-compat for an app built on Django, Channels or asgiref, else "
                        "trio")
    g.add_argument("--root-path", default=d.root_path,
                   help="path prefix the app is mounted under behind a proxy (default '')")
    g = p.add_argument_group("TLS (HTTPS on every listener; 'trioserve dev-cert' writes a "
                             "development certificate)")
    tls = Tls("x")
    g.add_argument("--certfile", metavar="PEM",
                   help="certificate chain (PEM, leaf first); turns TLS on")
    g.add_argument("--keyfile", metavar="PEM",
                   help="private key (PEM), if not in --certfile")
    g.add_argument("--keyfile-password", metavar="TEXT",
                   help="password of an encrypted --keyfile (or set TRIOSERVE_KEYFILE_PASSWORD)")
    g.add_argument("--ca-certs", metavar="PEM",
                   help="CA certificates client certificates must chain to")
    g.add_argument("--client-cert", choices=("none", "optional", "required"),
                   default=tls.client_cert,
                   help="ask clients for a certificate (default none; optional and required "
                        "need --ca-certs)")
    g.add_argument("--ciphers", metavar="LIST",
                   help="OpenSSL cipher list for TLS 1.2 (default: Python's secure defaults; "
                        "TLS 1.2 is the minimum version)")
    g.add_argument("--tls-handshake-timeout", type=_seconds, default=None,
                   metavar="SECONDS",
                   help=f"time a client gets to complete the TLS handshake (default "
                        f"{tls.handshake_timeout:g})")
    g = p.add_argument_group("protocol")
    g.add_argument("--http", choices=("auto", "h11", "httptools"), default=d.http_parser,
                   help="HTTP/1.1 request parser (default auto: httptools when installed, "
                        "pip install 'trioserve[fast]', else h11); both accept and refuse the "
                        "same requests")
    g.add_argument("--http2", dest="http2", action="store_true", default=d.http2,
                   help="serve HTTP/2 too (default on): ALPN h2 over TLS; prior knowledge and "
                        "Upgrade: h2c on plain listeners")
    g.add_argument("--no-http2", dest="http2", action="store_false",
                   help="serve HTTP/1.1 only")
    h2l = Http2Limits()
    g = p.add_argument_group("HTTP/2 limits (Kestrel's defaults)")
    g.add_argument("--h2-max-streams", type=_positive_int,
                   default=h2l.max_streams_per_connection, metavar="N",
                   help=f"concurrent streams per connection (default "
                        f"{h2l.max_streams_per_connection})")
    g.add_argument("--h2-max-frame-size", type=_positive_int, default=h2l.max_frame_size,
                   metavar="BYTES",
                   help=f"largest frame accepted, 16384-16777215 (default {h2l.max_frame_size})")
    g.add_argument("--h2-header-table-size", type=_non_negative_int,
                   default=h2l.header_table_size, metavar="BYTES",
                   help=f"HPACK dynamic table size (default {h2l.header_table_size})")
    g.add_argument("--h2-stream-window", type=_positive_int,
                   default=h2l.initial_stream_window_size, metavar="BYTES",
                   help=f"request body bytes in flight per stream before the app reads them "
                        f"(default {h2l.initial_stream_window_size})")
    g.add_argument("--h2-connection-window", type=_positive_int,
                   default=h2l.initial_connection_window_size, metavar="BYTES",
                   help=f"the same for all streams of a connection (default "
                        f"{h2l.initial_connection_window_size})")
    g.add_argument("--h2-max-header-field-size", type=_positive_int,
                   default=h2l.max_header_field_size, metavar="BYTES",
                   help=f"largest request field, name + value (default "
                        f"{h2l.max_header_field_size}); beyond it 431")
    g.add_argument("--h2-max-resets", type=_positive_int, default=h2l.max_resets_per_second,
                   metavar="PER_SECOND",
                   help=f"streams a client may reset while their apps run, per second, bursts "
                        f"of twice that (default {h2l.max_resets_per_second}); beyond it GOAWAY "
                        "ENHANCE_YOUR_CALM")
    g.add_argument("--h2-max-control-frames", type=_positive_int,
                   default=h2l.max_control_frames_per_second, metavar="PER_SECOND",
                   help=f"PING, SETTINGS, PRIORITY, WINDOW_UPDATE, empty DATA ... frames a "
                        f"client may send per second, bursts of twice that (default "
                        f"{h2l.max_control_frames_per_second}); beyond it GOAWAY "
                        "ENHANCE_YOUR_CALM")
    ws = WebSocketConfig()
    g = p.add_argument_group("WebSockets")
    g.add_argument("--ws-max-message-size", type=_non_negative_int,
                   default=ws.max_message_size, metavar="BYTES",
                   help=f"largest message received, after decompression, 0 for unbounded "
                        f"(default {ws.max_message_size}); beyond it close 1009")
    g.add_argument("--ws-ping-interval", type=_seconds_or_off, default=ws.ping_interval,
                   metavar="SECONDS",
                   help=f"seconds between the server's pings, 0 sends none (default "
                        f"{ws.ping_interval:g})")
    g.add_argument("--ws-ping-timeout", type=_seconds, default=ws.ping_timeout,
                   metavar="SECONDS",
                   help=f"a peer that does not answer a ping within this is dropped (default "
                        f"{ws.ping_timeout:g})")
    g.add_argument("--ws-idle-timeout", type=_seconds_or_off, default=0, metavar="SECONDS",
                   help="close a WebSocket (1001) after this long without a frame from the "
                        "peer, 0 never (default 0)")
    g.add_argument("--ws-close-timeout", type=_seconds, default=ws.close_timeout,
                   metavar="SECONDS",
                   help=f"time the peer gets to answer the server's close frame (default "
                        f"{ws.close_timeout:g})")
    g.add_argument("--ws-per-message-deflate", dest="ws_deflate", action="store_true",
                   default=ws.per_message_deflate,
                   help="accept permessage-deflate compression when offered (default on)")
    g.add_argument("--no-ws-per-message-deflate", dest="ws_deflate", action="store_false",
                   help="never compress WebSocket messages")
    g.add_argument("--ws-deflate-window-bits", type=_window_bits,
                   default=ws.deflate_max_window_bits, metavar="BITS",
                   help=f"the server's compression window, 9-15 (default "
                        f"{ws.deflate_max_window_bits})")
    g.add_argument("--ws-deflate-level", type=_deflate_level, default=ws.deflate_level,
                   metavar="LEVEL",
                   help=f"zlib compression level, 1 fastest - 9 smallest (default "
                        f"{ws.deflate_level})")
    g.add_argument("--max-websockets", type=_positive_int, default=None, metavar="N",
                   help="maximum open WebSockets (Kestrel's MaxConcurrentUpgradedConnections; "
                        "default unbounded); beyond it 503")
    g = p.add_argument_group("behind a reverse proxy or load balancer")
    px = ProxyConfig()
    g.add_argument("--proxy-headers", dest="proxy_headers", action="store_true", default=False,
                   help="apply forwarding headers from trusted proxies to the client address, "
                        "scheme, host and root path (default off)")
    g.add_argument("--no-proxy-headers", dest="proxy_headers", action="store_false",
                   help="ignore forwarding headers")
    g.add_argument("--proxy-headers-format", choices=("x-forwarded", "forwarded"),
                   default="x-forwarded",
                   help="the header the proxy writes: X-Forwarded-For/-Proto/-Host/-Prefix "
                        "(default) or RFC 7239 Forwarded")
    g.add_argument("--forwarded-allow-ips", type=_ip_list, default=px.trusted,
                   metavar="LIST",
                   help="comma-separated IPs and CIDR networks of the trusted proxies, '*' for "
                        "any peer (but not for the hops named in the headers) (default "
                        f"{','.join(px.trusted)}; Unix socket peers are always trusted)")
    g.add_argument("--proxy-protocol", dest="proxy_protocol", action="store_true",
                   default=False,
                   help="every connection starts with a PROXY protocol v1/v2 header "
                        "(HAProxy, cloud load balancers) from a trusted peer (default off)")
    g.add_argument("--no-proxy-protocol", dest="proxy_protocol", action="store_false",
                   help="connections start with HTTP or TLS directly")
    g = p.add_argument_group("process management")
    pc = ProcessConfig()
    g.add_argument("--workers", type=_non_negative_int, default=pc.workers, metavar="N",
                   help="run N worker processes under a supervisor that replaces any that "
                        "dies (default 0: serve in this process, no supervisor)")
    g.add_argument("--worker-timeout", type=_seconds, default=pc.worker_timeout,
                   metavar="SECONDS",
                   help=f"kill and replace a worker silent for this long (default "
                        f"{pc.worker_timeout:g})")
    g.add_argument("--max-requests", type=_non_negative_int, default=0, metavar="N",
                   help="replace a worker after it has served N requests, 0 never (default 0)")
    g.add_argument("--max-requests-jitter", type=_non_negative_int,
                   default=pc.max_requests_jitter, metavar="N",
                   help="add up to N (at random) to --max-requests per worker (default 0)")
    g.add_argument("--reload", dest="reload", action="store_true", default=False,
                   help="development: restart when a file changes (needs "
                        "'pip install trioserve[reload]')")
    g.add_argument("--no-reload", dest="reload", action="store_false",
                   help="do not watch files (the default)")
    g.add_argument("--reload-dir", action="append", default=None, metavar="DIR",
                   dest="reload_dirs",
                   help="directory to watch with --reload (repeatable; default the current "
                        "directory)")
    g.add_argument("--admin-bind", type=_bind_type, default=None, metavar="ADDRESS",
                   help="serve Prometheus /metrics, /livez and /readyz on this separate "
                        "address (HOST:PORT or unix:PATH; default off)")
    g = p.add_argument_group("logging and headers")
    g.add_argument("--log-level", choices=LOG_LEVELS, default="info",
                   help="log level (default info)")
    g.add_argument("--access-log", dest="access_log", action="store_true", default=d.access_log,
                   help="log one line per request (default on)")
    g.add_argument("--no-access-log", dest="access_log", action="store_false",
                   help="do not log requests")
    g.add_argument("--server-header", default=d.server_header,
                   help=f"value of the Server response header (default {d.server_header!r})")
    g.add_argument("--no-server-header", dest="server_header", action="store_const",
                   const=None, help="send no Server header")
    g = p.add_argument_group("limits (Kestrel's defaults)")
    g.add_argument("--max-connections", type=_positive_int, default=None,
                   help="maximum concurrent connections (default unbounded)")
    g.add_argument("--limit-concurrency", type=_non_negative_int, default=0, metavar="N",
                   help="maximum requests (HTTP/1.1 requests, HTTP/2 streams, WebSockets) in "
                        "the app at once, 0 for unbounded (default 0); beyond it 503 with "
                        "Retry-After")
    g.add_argument("--max-body-size", type=_non_negative_int, default=lim.max_request_body_size,
                   help=f"maximum request body bytes, 0 for unbounded (default "
                        f"{lim.max_request_body_size}); beyond it 413")
    g.add_argument("--max-request-line", type=_positive_int, default=lim.max_request_line_size,
                   help=f"maximum request line bytes (default {lim.max_request_line_size}); "
                        "beyond it 414")
    g.add_argument("--max-headers", type=_positive_int, default=lim.max_request_headers_count,
                   help=f"maximum request header fields (default "
                        f"{lim.max_request_headers_count}); beyond it 431")
    g.add_argument("--max-header-bytes", type=_positive_int,
                   default=lim.max_request_headers_total_size,
                   help=f"maximum bytes of the request header section (default "
                        f"{lim.max_request_headers_total_size}); beyond it 431")
    g.add_argument("--min-body-rate", type=_rate, default=240.0, metavar="BYTES_PER_SECOND",
                   help="minimum request body rate after a 5 s grace period, 0 disables "
                        "(default 240); slower clients get 408")
    g.add_argument("--min-response-rate", type=_rate, default=240.0,
                   metavar="BYTES_PER_SECOND",
                   help="minimum rate at which clients must read responses, after a 5 s grace "
                        "period, 0 disables (default 240); slower clients are disconnected")
    g = p.add_argument_group("timeouts (seconds)")
    g.add_argument("--keep-alive-timeout", type=_seconds, default=t.keep_alive,
                   help=f"idle time allowed between requests (default {t.keep_alive:g})")
    g.add_argument("--headers-timeout", type=_seconds, default=t.request_headers,
                   help=f"time allowed to receive a request's headers (default "
                        f"{t.request_headers:g}); beyond it 408")
    g.add_argument("--graceful-timeout", type=_seconds, default=t.graceful,
                   help=f"on shutdown, time in-flight requests get to finish (default "
                        f"{t.graceful:g})")
    return p


def build_config(args: argparse.Namespace) -> Config:
    """The :class:`Config` the parsed flags (or merged settings) describe. Raises
    :class:`ConfigError`.

    Listeners: ``--uds`` and ``--fd`` add one each; TCP ``--host``/``--port`` (default
    127.0.0.1:8000) is added when either is set or nothing else is. With none of the four
    set, the sockets of systemd socket activation (``LISTEN_FDS`` for this process) are used
    instead of the TCP default, and those variables are removed from the environment."""
    try:
        resolve_parser(args.http)
    except ValueError as exc:
        raise ConfigError(f"--http: {exc}") from None
    binds: list[Bind] = []
    if args.uds:
        binds.append(Bind.unix(args.uds))
    if args.fd is not None:
        binds.append(Bind.from_fd(args.fd))
    if not binds and args.host is None and args.port is None:
        # systemd socket activation: the sockets it passed, when nothing says where to listen
        try:
            binds.extend(Bind.from_fd(fd) for fd in listen_fds())
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if not binds or args.host is not None or args.port is not None:
        binds.append(Bind.tcp(args.host if args.host is not None else "127.0.0.1",
                              args.port if args.port is not None else 8000))
    limits = Limits(
        max_concurrent_connections=args.max_connections,
        max_concurrent_upgraded_connections=args.max_websockets,
        max_concurrent_requests=args.limit_concurrency or None,
        max_request_body_size=args.max_body_size or None,
        max_request_line_size=args.max_request_line,
        max_request_headers_count=args.max_headers,
        max_request_headers_total_size=args.max_header_bytes,
        min_request_body_data_rate=(MinDataRate(args.min_body_rate)
                                    if args.min_body_rate > 0 else None),
        min_response_data_rate=(MinDataRate(args.min_response_rate)
                                if args.min_response_rate > 0 else None),
        http2=Http2Limits(
            max_streams_per_connection=args.h2_max_streams,
            header_table_size=args.h2_header_table_size,
            max_frame_size=args.h2_max_frame_size,
            initial_stream_window_size=args.h2_stream_window,
            initial_connection_window_size=args.h2_connection_window,
            max_header_field_size=args.h2_max_header_field_size,
            max_resets_per_second=args.h2_max_resets,
            max_control_frames_per_second=args.h2_max_control_frames,
        ),
    )
    tls: Tls | None = None
    tls_flags = [f for f in ("keyfile", "keyfile_password", "ca_certs", "ciphers")
                 if getattr(args, f) is not None]
    if args.certfile is not None:
        if args.client_cert != "none" and args.ca_certs is None:
            raise ConfigError(f"--client-cert {args.client_cert} needs --ca-certs (the CA "
                              "certificates client certificates must chain to)")
        password = args.keyfile_password or os.environ.get("TRIOSERVE_KEYFILE_PASSWORD") or None
        tls = Tls(certfile=args.certfile, keyfile=args.keyfile, keyfile_password=password,
                  ca_certs=args.ca_certs, client_cert=args.client_cert, ciphers=args.ciphers,
                  handshake_timeout=(args.tls_handshake_timeout
                                     if args.tls_handshake_timeout is not None
                                     else Tls("x").handshake_timeout))
        # read the files now: a bad one is a configuration error
        server_context(tls, http2=args.http2)
    elif tls_flags or args.client_cert != "none" or args.tls_handshake_timeout is not None:
        if args.tls_handshake_timeout is not None:
            tls_flags.append("tls_handshake_timeout")
        flag = tls_flags[0].replace("_", "-") if tls_flags else "client-cert"
        raise ConfigError(f"--{flag} needs --certfile (TLS is on only with a certificate)")
    timeouts = Timeouts(keep_alive=args.keep_alive_timeout,
                        request_headers=args.headers_timeout,
                        graceful=args.graceful_timeout)
    return Config(
        binds=tuple(binds),
        limits=limits,
        timeouts=timeouts,
        server_header=args.server_header,
        root_path=args.root_path,
        access_log=args.access_log,
        backlog=args.backlog,
        http_parser=args.http,
        tls=tls,
        http2=args.http2,
        proxy=ProxyConfig(
            headers=args.proxy_headers_format if args.proxy_headers else "off",
            trusted=tuple(args.forwarded_allow_ips),
            proxy_protocol=args.proxy_protocol,
        ),
        admin_bind=args.admin_bind,
        websocket=WebSocketConfig(
            max_message_size=args.ws_max_message_size or None,
            ping_interval=args.ws_ping_interval or None,
            ping_timeout=args.ws_ping_timeout,
            idle_timeout=args.ws_idle_timeout or None,
            close_timeout=args.ws_close_timeout,
            per_message_deflate=args.ws_deflate,
            deflate_max_window_bits=args.ws_deflate_window_bits,
            deflate_level=args.ws_deflate_level,
        ),
    )


def build_process_config(args: argparse.Namespace) -> ProcessConfig:
    """The :class:`ProcessConfig` the parsed flags describe. Raises :class:`ConfigError`."""
    if args.reload and args.workers > 1:
        raise ConfigError("--reload runs one worker; it cannot be used with --workers "
                          f"{args.workers}")
    if args.reload_dirs and not args.reload:
        raise ConfigError("--reload-dir needs --reload")
    return ProcessConfig(
        workers=args.workers,
        worker_timeout=args.worker_timeout,
        max_requests=args.max_requests or None,
        max_requests_jitter=args.max_requests_jitter,
        reload=args.reload,
        reload_dirs=tuple(args.reload_dirs or ()),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see module docs)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        return 130
    except BaseExceptionGroup as group:
        # Ctrl-C that reached Trio before the server's own signal handling was installed.
        if group.subgroup(KeyboardInterrupt) is not None and \
                group.subgroup(lambda e: not isinstance(e, KeyboardInterrupt | BaseExceptionGroup)
                               ) is None:
            return 130
        raise


def dev_cert_main(argv: Sequence[str]) -> int:
    """``trioserve dev-cert [--dir DIR]``: write a self-signed certificate for localhost."""
    p = argparse.ArgumentParser(
        prog="trioserve dev-cert",
        description="Write a self-signed certificate and key for localhost, 127.0.0.1 and ::1 "
                    "(valid 365 days), for development only, like 'dotnet dev-certs https'. "
                    "Browsers and clients warn until told to trust it; never use it in "
                    "production.")
    p.add_argument("--dir", default=".", help="directory to write localhost.pem and "
                                              "localhost-key.pem to (default '.')")
    p.add_argument("--force", action="store_true", help="replace existing files")
    args = p.parse_args(argv)
    try:
        cert, key = write_dev_cert(args.dir, force=args.force)
    except (RuntimeError, OSError) as exc:
        print(f"trioserve: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {cert} and {key} (self-signed, for development only)\n"
          f"serve with: trioserve APP --certfile {cert} --keyfile {key}\n"
          f"trust it in a client, e.g.: curl --cacert {cert} https://localhost:8000/")
    return 0


def _effective_args(settings: Settings) -> argparse.Namespace:
    """The merged settings as the namespace :func:`build_config` takes."""
    args = settings.args
    if args.certfile is None and settings.sources["keyfile_password"].startswith("env "):
        # TRIOSERVE_KEYFILE_PASSWORD may be set for every run; without TLS it is ignored
        args.keyfile_password = None
    return args


def _config_parser() -> argparse.ArgumentParser:
    p = build_parser()
    p.prog = "trioserve config"
    p.description = ("Print the configuration 'trioserve' would run with these arguments: the "
                     "configuration file, its profile, TRIOSERVE_* variables and the flags "
                     "merged, as TOML with the source of each value (it can be saved as a "
                     "configuration file). Imports no application and binds nothing.")
    p.epilog = None
    return p


def config_main(argv: Sequence[str]) -> int:
    """``trioserve config [APP] [options]``: print the effective configuration on stdout and
    return 0; a bad file, profile, variable or value is one error line and 2 (a bad flag exits
    2 through argparse). Neither imports the application nor binds an address."""
    try:
        settings = load_settings(_config_parser, argv)
        args = _effective_args(settings)
        config = build_config(args)
        process = build_process_config(args)
    except (SettingsError, ConfigError) as exc:
        print(f"trioserve: error: {exc}", file=sys.stderr)
        return 2
    if settings.file is None:
        where = "file: none (no ./trioserve.toml, no [tool.trioserve] in ./pyproject.toml)"
    else:
        where = f"file: {settings.file}; profile: {settings.profile or 'none'}"
    scheme = "https" if config.tls is not None else "http"
    if process.reload:
        processes = "one worker restarted on file changes (--reload)"
    elif process.workers:
        processes = f"{process.workers} worker processes under a supervisor"
    else:
        processes = "one process"
    header = [f"trioserve {__version__}: effective configuration (flags > environment > "
              "profile > file > defaults)",
              where,
              f"listens on: {', '.join(b.describe() for b in config.binds)} ({scheme}); "
              f"{processes}",
              "admin endpoint: " + (config.admin_bind.describe() if config.admin_bind
                                    else "off")]
    sys.stdout.write(render_toml(settings, _config_parser(), header))
    return 0


def _main(argv: Sequence[str] | None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["dev-cert"]:
        return dev_cert_main(args_list[1:])
    if args_list[:1] == ["fuzz"]:  # imported here: serving never imports hypothesis
        return int(importlib.import_module("trioserve.fuzz.cli").main(args_list[1:]))
    if args_list[:1] == ["config"]:
        return config_main(args_list[1:])
    parser = build_parser()
    try:
        settings = load_settings(build_parser, args_list)
    except SettingsError as exc:
        print(f"trioserve: error: {exc}", file=sys.stderr)
        return 2
    args = _effective_args(settings)
    if args.app is None:
        parser.error("the following arguments are required: APP (or set 'app' in the "
                     "configuration file)")
    setup_cli_logging(args.log_level)
    if settings.file is not None:
        log.info("configuration from %s%s", settings.file,
                 f", profile {settings.profile}" if settings.profile else "")
    if args.proxy_headers_format != "x-forwarded" and not args.proxy_headers:
        log.warning("proxy-headers-format %s (%s) has no effect: forwarding headers are off "
                    "(--proxy-headers)", args.proxy_headers_format,
                    settings.sources["proxy_headers_format"])
    try:
        config = build_config(args)
        process = build_process_config(args)
    except ConfigError as exc:
        print(f"trioserve: error: {exc}", file=sys.stderr)
        return 2
    if args.loop == "asyncio-compat" and importlib.util.find_spec("trio_asyncio") is None:
        # checked before the app is imported, like --http httptools
        print("trioserve: error: --loop: loop 'asyncio-compat' needs trio-asyncio: pip install "
              "'trioserve[asyncio]'", file=sys.stderr)
        return 2
    if not process.workers and not process.reload:
        for name in ("max_requests", "max_requests_jitter", "worker_timeout"):
            if settings.sources[name] != "default":
                log.warning("%s (%s) has no effect without --workers", name.replace("_", "-"),
                            settings.sources[name])
    spec = AppSpec.from_args(args)
    if process.workers or process.reload:
        # imported here: a single-process server never loads the supervisor
        supervisor = importlib.import_module("trioserve.supervisor")
        return int(supervisor.supervise(spec, config, process))
    try:
        app = spec.load()
    except AppLoadError as exc:
        print(f"trioserve: error: {exc}", file=sys.stderr)
        if args.log_level == "debug" and exc.__cause__ is not None:
            traceback.print_exception(exc.__cause__)
        return 1
    try:
        trio.run(functools.partial(serve, systemd_notify=True), app, config)
    except LifespanFailure as exc:
        print(f"trioserve: error: application start-up failed: {exc}", file=sys.stderr)
        return 1
    except ListenError as exc:
        print(f"trioserve: error: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def run() -> NoReturn:
    """Console-script entry point."""
    sys.exit(main())
