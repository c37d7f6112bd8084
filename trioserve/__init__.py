"""trioserve: an HTTP server on Trio's structured concurrency.

``serve(app, config)`` runs an application (see :mod:`trioserve.features`) over HTTP/1.1 and
HTTP/2, with WebSockets over both; ``trioserve.bridges.asgi`` and ``trioserve.bridges.wsgi``
adapt ASGI 3 and WSGI applications.
"""

from .config import (
    Bind,
    Config,
    ConfigError,
    Http2Limits,
    Limits,
    MinDataRate,
    ProxyConfig,
    Timeouts,
    Tls,
    WebSocketConfig,
)
from .metrics import Metrics
from .server import serve

__all__ = ["Bind", "Config", "ConfigError", "Http2Limits", "Limits", "Metrics", "MinDataRate",
           "ProxyConfig", "Timeouts", "Tls", "WebSocketConfig", "serve"]
__version__ = "0.1.0"
