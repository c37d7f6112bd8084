"""trioserve: an HTTP server on Trio's structured concurrency.

``serve(app, config)`` runs an application (see :mod:`trioserve.features`) behind HTTP/1.1;
``trioserve.bridges.asgi`` adapts ASGI 3 applications.
"""

from .config import Bind, Config, ConfigError, Limits, MinDataRate, Timeouts, Tls
from .server import serve

__all__ = ["Bind", "Config", "ConfigError", "Limits", "MinDataRate", "Timeouts", "Tls", "serve"]
__version__ = "0.1.0"
