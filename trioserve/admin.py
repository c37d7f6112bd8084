"""The admin endpoint: Prometheus metrics and health probes, for a separate listener only.

:class:`AdminApp` is a features application (see :mod:`trioserve.features`).
:func:`trioserve.serve` runs it on ``Config.admin_bind`` with a server of its own, never on a
public listener; a supervisor serves one over its workers' merged metrics. Routes:

- ``GET /metrics``: the metrics in Prometheus' text format 0.0.4;
- ``GET /livez``: 200 ``ok`` as long as the process serves at all (liveness);
- ``GET /readyz``: 200 ``ready`` when the server takes traffic, else 503 (``not ready`` while
  starting, ``draining`` once a graceful shutdown began): readiness;
- ``HEAD`` of each of them: the same status and headers without the body.

Another path is 404; another method on these paths 405 with ``Allow: GET, HEAD``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .features import RequestContext, RequestFeature, ResponseBodyFeature, ResponseFeature
from .metrics import CONTENT_TYPE, render_prometheus

__all__ = ["AdminApp"]

_TEXT = b"text/plain; charset=utf-8"
_NO_STORE = (b"cache-control", b"no-store")
_PATHS = ("/metrics", "/livez", "/readyz")


class AdminApp:
    """Serves ``/metrics``, ``/livez`` and ``/readyz`` (see the module's description).

    - ``snapshot``: returns the metrics to expose, a :meth:`trioserve.metrics.Metrics.snapshot`
      or :func:`trioserve.metrics.merge` of several; called on every scrape.
    - ``ready``: whether ``/readyz`` answers 200.
    - ``draining``: whether a not-ready server is draining (``/readyz`` then says
      ``draining``, else ``not ready``); ``None``: always ``not ready``.
    - ``extra_gauges``: more gauges for ``/metrics`` (a supervisor's ``trioserve_workers`` …).

    ``/metrics`` also has ``trioserve_ready`` (1 or 0). A callable that raises makes that
    request a 500 (logged by the server); the endpoint goes on.
    """

    __slots__ = ("_draining", "_extra", "_ready", "_snapshot")

    def __init__(self, snapshot: Callable[[], Mapping[str, Any]], ready: Callable[[], bool],
                 extra_gauges: Callable[[], Mapping[str, float]] | None = None, *,
                 draining: Callable[[], bool] | None = None) -> None:
        self._snapshot = snapshot
        self._ready = ready
        self._extra = extra_gauges
        self._draining = draining

    async def __call__(self, ctx: RequestContext) -> None:
        features = ctx.features
        request = features[RequestFeature]
        response = features[ResponseFeature]
        path = request.path
        if path not in _PATHS:
            await self._answer(ctx, 404, _TEXT, b"not found: the admin endpoint serves "
                               b"/metrics, /livez and /readyz\n")
            return
        if request.method not in ("GET", "HEAD"):
            response.headers.append((b"allow", b"GET, HEAD"))
            await self._answer(ctx, 405, _TEXT, b"method not allowed\n")
            return
        if path == "/livez":
            await self._answer(ctx, 200, _TEXT, b"ok\n")
        elif path == "/readyz":
            if self._ready():
                await self._answer(ctx, 200, _TEXT, b"ready\n")
            else:
                draining = self._draining is not None and self._draining()
                await self._answer(ctx, 503, _TEXT,
                                   b"draining\n" if draining else b"not ready\n")
        else:
            extra = {"trioserve_ready": 1.0 if self._ready() else 0.0}
            if self._extra is not None:
                extra.update(self._extra())
            text = render_prometheus(self._snapshot(), extra)
            await self._answer(ctx, 200, CONTENT_TYPE.encode("ascii"), text.encode("utf-8"))

    @staticmethod
    async def _answer(ctx: RequestContext, status: int, content_type: bytes,
                      body: bytes) -> None:
        response = ctx.features[ResponseFeature]
        response.status = status
        response.headers.extend([(b"content-type", content_type), _NO_STORE])
        await ctx.features[ResponseBodyFeature].complete(body)
