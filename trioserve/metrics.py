"""Server metrics: plain counters the server updates, a JSON snapshot, Prometheus text.

A :class:`Metrics` is updated by :func:`trioserve.serve` (pass one in, or set
``Config.admin_bind`` and the server makes its own); nothing here does I/O or knows about Trio,
so the hot path pays a few integer additions per request. Three steps turn it into what
Prometheus scrapes:

- :meth:`Metrics.snapshot`: a JSON-serialisable ``dict`` (what a worker process sends to its
  supervisor);
- :func:`check_snapshot`: a snapshot from another process, checked before it is kept;
- :func:`merge`: the sum of several snapshots (a supervisor's workers);
  :func:`retire` first zeroes the gauges of a worker that exited, so its counters still count
  (totals never go backwards) while its connections no longer do;
- :func:`render_prometheus`: the text exposition format 0.0.4.

The metric names, labels and what each counts are documented in ``docs/metrics.md``.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from itertools import pairwise
from typing import Any

__all__ = [
    "CONTENT_TYPE",
    "DURATION_BUCKETS",
    "LIMITS",
    "Metrics",
    "check_snapshot",
    "merge",
    "render_prometheus",
    "retire",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The ``Content-Type`` of :func:`render_prometheus`'s text."""

DURATION_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the request duration histogram's buckets; ``+Inf`` is implied."""

LIMITS: tuple[str, ...] = (
    "concurrency",        # 503: Limits.max_concurrent_requests
    "websockets",         # 503: Limits.max_concurrent_upgraded_connections
    "body_size",          # 413: Limits.max_request_body_size
    "request_line",       # 414: Limits.max_request_line_size
    "headers",            # 431: header count, section or field size (HTTP/1.1 and HTTP/2)
    "headers_timeout",    # 408: Timeouts.request_headers (HTTP/1.1)
    "body_rate",          # 408: Limits.min_request_body_data_rate
    "response_rate",      # dropped: Limits.min_response_data_rate
    "h2_streams",         # RST_STREAM REFUSED_STREAM: Http2Limits.max_streams_per_connection
    "h2_resets",          # GOAWAY ENHANCE_YOUR_CALM: Http2Limits.max_resets_per_second
    "h2_control_frames",  # GOAWAY ENHANCE_YOUR_CALM: Http2Limits.max_control_frames_per_second
    "proxy_protocol",     # connection closed: no valid PROXY header, or an untrusted peer
)
"""The ``limit`` label values of ``trioserve_rejected_total``, always all exposed (zero until
something is refused), so a dashboard can rely on every series."""

_HEAD_LIMITS = {408: "headers_timeout", 414: "request_line", 431: "headers"}
_BODY_LIMITS = {408: "body_rate", 413: "body_size", 431: "headers"}  # 431: trailers

_SNAPSHOT_VERSION = 1


class _Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size  # per bucket, not cumulative; the last is +Inf
        self.sum = 0.0


class Metrics:
    """Counters and gauges of one server process.

    The server calls the methods below; each is a few additions, cheap enough for every
    request. :attr:`requests` is the number of requests ended so far, answered or aborted (the
    supervisor's ``--max-requests`` reads it). Not thread-safe: one Trio run updates it.
    """

    __slots__ = (
        "_aborted",
        "_bounds",
        "_durations",
        "_statuses",
        "bad_requests",
        "connections_accepted",
        "connections_active",
        "h2_streams_active",
        "rejected",
        "request_body_bytes",
        "requests",
        "response_bytes",
        "websockets_active",
        "websockets_total",
    )

    def __init__(self, buckets: Iterable[float] = DURATION_BUCKETS) -> None:
        """``buckets``: the duration histogram's upper bounds in seconds, increasing and
        finite. Raises ``ValueError`` otherwise."""
        bounds = tuple(float(b) for b in buckets)
        if not bounds or any(not math.isfinite(b) for b in bounds) or any(
                a >= b for a, b in pairwise(bounds)):
            raise ValueError(f"histogram buckets must be finite and increasing, got {bounds!r}")
        self._bounds = bounds
        self.requests = 0
        self._statuses: dict[tuple[str, int], int] = {}
        self._aborted: dict[str, int] = {}
        self._durations: dict[str, _Histogram] = {}
        self.request_body_bytes = 0
        self.response_bytes = 0
        self.connections_accepted = 0
        self.connections_active: dict[str, int] = {"http1": 0, "http2": 0}
        self.h2_streams_active = 0
        self.websockets_active = 0
        self.websockets_total = 0
        self.rejected: dict[str, int] = dict.fromkeys(LIMITS, 0)
        self.bad_requests: dict[tuple[str, int], int] = {}

    # ------------------------------------------------------------------ updates

    def request(self, protocol: str, status: int, duration: float, received: int,
                sent: int) -> None:
        """A request completed (the access log's line): ``protocol`` ``"1.0"``, ``"1.1"`` or
        ``"2"``, its response ``status``, ``duration`` seconds from its head to the end of its
        response, request body bytes ``received`` and response bytes ``sent``."""
        self.requests += 1
        key = (protocol, status)
        statuses = self._statuses
        statuses[key] = statuses.get(key, 0) + 1
        hist = self._durations.get(protocol)
        if hist is None:
            hist = self._durations[protocol] = _Histogram(len(self._bounds) + 1)
        # bisect_left: a duration equal to a bound belongs in that bound's bucket (le).
        hist.counts[bisect_left(self._bounds, duration)] += 1
        hist.sum += duration
        self.request_body_bytes += received
        self.response_bytes += sent

    def request_aborted(self, protocol: str, received: int, sent: int) -> None:
        """A request ended without a complete response (the access log's line all the same):
        the client left or reset it, the application failed or aborted after the response
        began, or it was cancelled at the end of a graceful shutdown. Counted by ``protocol``
        apart from :meth:`request`'s statuses and durations; its ``received`` and ``sent``
        bytes count as any request's."""
        self.requests += 1
        aborted = self._aborted
        aborted[protocol] = aborted.get(protocol, 0) + 1
        self.request_body_bytes += received
        self.response_bytes += sent

    def reject(self, limit: str, count: int = 1) -> None:
        """``count`` requests or connections were refused by ``limit`` (one of
        :data:`LIMITS`; another name is counted under its own label all the same)."""
        rejected = self.rejected
        rejected[limit] = rejected.get(limit, 0) + count

    def body_rejected(self, status: int) -> None:
        """A limit on a request's body fired with ``status`` (413 too large, 408 too slow, 431
        trailers too large), whether or not its response had begun; other statuses are not
        limits and count nothing. Once per request: where the limit fires."""
        limit = _BODY_LIMITS.get(status)
        if limit is not None:
            self.reject(limit)

    def bad_request(self, protocol: str, status: int, count: int = 1) -> None:
        """The server answered ``count`` request heads itself, without the application:
        ``protocol`` ``"http1"`` or ``"http2"``; a malformed request (400 …, also an HTTP/2
        request reset with ``PROTOCOL_ERROR``) or a head over a limit (408, 414, 431, also
        counted in :attr:`rejected`)."""
        key = (protocol, status)
        self.bad_requests[key] = self.bad_requests.get(key, 0) + count
        limit = _HEAD_LIMITS.get(status)
        if limit is not None:
            self.reject(limit, count)

    def connection_opened(self, kind: str) -> None:
        """A connection began speaking ``kind`` (``"http1"`` or ``"http2"``)."""
        active = self.connections_active
        active[kind] = active.get(kind, 0) + 1

    def connection_closed(self, kind: str) -> None:
        self.connections_active[kind] -= 1

    # ------------------------------------------------------------------ snapshot

    def snapshot(self) -> dict[str, Any]:
        """Everything, as plain JSON-serialisable data (see :func:`merge`): ``counters`` only
        grow, ``gauges`` go up and down, ``histograms`` hold per-bucket (not cumulative)
        counts with their ``bounds``."""
        requests: dict[str, dict[str, int]] = {}
        for (protocol, status), n in self._statuses.items():
            requests.setdefault(protocol, {})[str(status)] = n
        bad: dict[str, dict[str, int]] = {}
        for (protocol, status), n in self.bad_requests.items():
            bad.setdefault(protocol, {})[str(status)] = n
        return {
            "version": _SNAPSHOT_VERSION,
            "counters": {
                "requests": requests,
                "requests_aborted": dict(self._aborted),
                "bad_requests": bad,
                "request_body_bytes": self.request_body_bytes,
                "response_bytes": self.response_bytes,
                "connections_accepted": self.connections_accepted,
                "websockets": self.websockets_total,
                "rejected": dict(self.rejected),
            },
            "gauges": {
                "connections_active": dict(self.connections_active),
                "h2_streams_active": self.h2_streams_active,
                "websockets_active": self.websockets_active,
            },
            "histograms": {
                "request_duration_seconds": {
                    protocol: {"bounds": list(self._bounds), "counts": list(h.counts),
                               "sum": h.sum}
                    for protocol, h in self._durations.items()
                },
            },
        }


# ---------------------------------------------------------------------- merging


def _add(a: Any, b: Any, path: str) -> Any:
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for key, value in b.items():
            out[key] = _add(out[key], value, f"{path}.{key}") if key in out else _copy(value)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        if path.endswith(".bounds"):
            if a != b:
                raise ValueError(f"snapshots disagree on {path[1:]}: {a!r} and {b!r}")
            return list(a)
        return [_add(x, y, path) for x, y in zip(a, b, strict=True)]
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return a + b
    raise ValueError(f"snapshots cannot be merged at {path[1:] or 'the top'}: "
                     f"{a!r} and {b!r}")


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def merge(snapshots: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The sum of ``snapshots`` (from :meth:`Metrics.snapshot`, possibly after a JSON round
    trip): counters, gauges and histogram buckets added key by key (a key missing from one is
    zero there). No snapshot: an empty :class:`Metrics`' snapshot.

    Raises ``ValueError`` when they cannot be added: another snapshot version, histograms
    with different bucket bounds, a number where another has a table."""
    total: dict[str, Any] | None = None
    for snap in snapshots:
        if snap.get("version") != _SNAPSHOT_VERSION:
            raise ValueError(f"unknown metrics snapshot version {snap.get('version')!r} "
                             f"(expected {_SNAPSHOT_VERSION})")
        body = {k: v for k, v in snap.items() if k != "version"}
        total = _copy(body) if total is None else _add(total, body, "")
    if total is None:
        return Metrics().snapshot()
    total["version"] = _SNAPSHOT_VERSION
    return total


_INT_RANGE = 2**63  # beyond any real count; keeps sums printable (int max str digits)
_TABLES = {  # section -> key -> depth of its tables of numbers (0: a number)
    "counters": {"requests": 2, "requests_aborted": 1, "bad_requests": 2,
                 "request_body_bytes": 0, "response_bytes": 0, "connections_accepted": 0,
                 "websockets": 0, "rejected": 1},
    "gauges": {"connections_active": 1, "h2_streams_active": 0, "websockets_active": 0},
}
_STATUS_TABLES = {"requests", "bad_requests"}  # their inner keys are status codes


def _check_number(value: object, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}: expected a number, got {type(value).__name__}")
    if isinstance(value, int) and not -_INT_RANGE < value < _INT_RANGE:
        raise ValueError(f"{where}: {value} is out of range")


def _check_table(value: object, depth: int, where: str, status_keys: bool) -> None:
    if depth == 0:
        _check_number(value, where)
        return
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
    for key, inner in value.items():
        if not isinstance(key, str):
            raise ValueError(f"{where}: a key that is not a string")
        if status_keys and depth == 1 and not (key.isascii() and key.isdigit()):
            raise ValueError(f"{where}: {key[:20]!r} is not a status code")
        _check_table(inner, depth - 1, f"{where}.{key[:20]}", status_keys)


def _check_keys(value: object, expected: Iterable[str], where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
    if set(value) != set(expected):
        raise ValueError(f"{where}: expected the keys {sorted(expected)}, got "
                         f"{sorted(str(k)[:20] for k in value)[:20]}")
    return value


def check_snapshot(snapshot: object,
                   buckets: Iterable[float] = DURATION_BUCKETS) -> dict[str, Any]:
    """``snapshot``, from another process (after a JSON round trip), if it has exactly the
    shape of :meth:`Metrics.snapshot` with the duration histogram's ``buckets``: then
    :func:`merge` and :func:`render_prometheus` cannot fail on it, with any other such
    snapshot. Raises ``ValueError`` saying where it differs (another version, a missing or
    unknown key, a string, a boolean or an integer beyond 2**63 where a number belongs, a
    table nested deeper, a status that is not decimal digits, other bucket bounds)."""
    snap = _check_keys(snapshot, ("version", "counters", "gauges", "histograms"), "snapshot")
    if snap["version"] != _SNAPSHOT_VERSION or isinstance(snap["version"], bool):
        raise ValueError(f"unknown metrics snapshot version {snap['version']!r:.20} "
                         f"(expected {_SNAPSHOT_VERSION})")
    for section, tables in _TABLES.items():
        values = _check_keys(snap[section], tables, section)
        for key, depth in tables.items():
            _check_table(values[key], depth, f"{section}.{key}", key in _STATUS_TABLES)
    histograms = _check_keys(snap["histograms"], ("request_duration_seconds",), "histograms")
    bounds = [float(b) for b in buckets]
    durations = histograms["request_duration_seconds"]
    if not isinstance(durations, dict):
        raise ValueError("histograms.request_duration_seconds: expected an object")
    for protocol, hist in durations.items():
        where = f"histograms.request_duration_seconds.{str(protocol)[:20]}"
        if not isinstance(protocol, str):
            raise ValueError(f"{where}: a key that is not a string")
        hist = _check_keys(hist, ("bounds", "counts", "sum"), where)
        if hist["bounds"] != bounds:
            raise ValueError(f"{where}.bounds: other bucket bounds than {bounds}")
        counts = hist["counts"]
        if not isinstance(counts, list) or len(counts) != len(bounds) + 1:
            raise ValueError(f"{where}.counts: expected {len(bounds) + 1} numbers")
        for count in counts:
            _check_number(count, f"{where}.counts")
        _check_number(hist["sum"], f"{where}.sum")
    return snap


def retire(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """``snapshot`` with every gauge zeroed: what to keep of a process that exited, so that
    :func:`merge` still counts its requests (counters never go backwards) but not its
    connections."""

    def zero(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: zero(v) for k, v in value.items()}
        return 0

    out: dict[str, Any] = _copy(dict(snapshot))
    out["gauges"] = zero(out.get("gauges", {}))
    return out


# ---------------------------------------------------------------------- exposition

_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")

EXTRA_HELP = {
    "trioserve_workers": "Worker processes running.",
    "trioserve_workers_ready": "Worker processes ready and serving (not starting, not leaving).",
    "trioserve_workers_desired": "Worker processes the supervisor keeps running.",
    "trioserve_worker_restarts_total": "Worker processes replaced after exiting or hanging.",
    "trioserve_ready": "1 while the server accepts traffic, 0 while starting or draining.",
}


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _help_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    """A sample value as the exposition format writes it (``+Inf``, ``NaN``, ints plainly)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _le(bound: float) -> str:
    # As Prometheus' own clients write bounds: 1.0, not 1, so every scrape names a bucket alike.
    return repr(float(bound))


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{name}="{_label_value(value)}"' for name, value in pairs)
    return "{" + inner + "}" if inner else ""


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {_help_text(help_text)}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, labels: Iterable[tuple[str, str]] = ()) -> None:
        self.lines.append(f"{name}{_labels(labels)} {_number(value)}")


def _protocol_sort(item: tuple[str, Any]) -> tuple[int, str]:
    order = {"1.0": 0, "1.1": 1, "2": 2}
    return (order.get(item[0], 9), item[0])


def _status_sort(item: tuple[str, Any]) -> tuple[int, str]:
    return (int(item[0]) if item[0].isdigit() else 10**6, item[0])


def render_prometheus(snapshot: Mapping[str, Any],
                      extra_gauges: Mapping[str, float] | None = None) -> str:
    """``snapshot`` (from :meth:`Metrics.snapshot` or :func:`merge`) in Prometheus' text
    exposition format 0.0.4 (serve it as :data:`CONTENT_TYPE`): every metric named
    ``trioserve_…`` with HELP and TYPE lines, counters ending in ``_total``, the duration
    histogram as cumulative ``_bucket{le=…}``, ``_sum`` and ``_count``.

    ``extra_gauges`` adds one gauge per entry (a supervisor's ``trioserve_workers`` …); a name
    ending in ``_total`` is written as a counter. Raises ``ValueError`` for a name that is not
    a valid metric name or that clashes with one already written (the same name, ``X`` next to
    a counter ``X_total`` or the reverse, a family's name followed by ``_…``), and
    ``KeyError`` for a snapshot missing a section."""
    counters = snapshot["counters"]
    gauges = snapshot["gauges"]
    w = _Writer()

    w.family("trioserve_requests_total", "counter",
             "Requests answered with a complete response, by HTTP version and status code. "
             "Aborted ones are in trioserve_requests_aborted_total, heads the server refused "
             "itself in trioserve_bad_requests_total.")
    for protocol, by_status in sorted(counters["requests"].items(), key=_protocol_sort):
        for status, n in sorted(by_status.items(), key=_status_sort):
            w.sample("trioserve_requests_total", n, (("protocol", protocol), ("status", status)))

    w.family("trioserve_requests_aborted_total", "counter",
             "Requests that ended without a complete response (the client left or reset it, "
             "the application failed after the response began, cancelled at the end of a "
             "graceful shutdown), by HTTP version.")
    for protocol, n in sorted(counters["requests_aborted"].items(), key=_protocol_sort):
        w.sample("trioserve_requests_aborted_total", n, (("protocol", protocol),))

    name = "trioserve_request_duration_seconds"
    w.family(name, "histogram",
             "Time from a request's head to the end of its response, by HTTP version "
             "(the requests of trioserve_requests_total).")
    durations = snapshot["histograms"]["request_duration_seconds"]
    for protocol, hist in sorted(durations.items(), key=_protocol_sort):
        cumulative = 0
        bounds = hist["bounds"]
        counts = hist["counts"]
        for bound, n in zip(bounds, counts, strict=False):
            cumulative += n
            w.sample(f"{name}_bucket", cumulative, (("protocol", protocol), ("le", _le(bound))))
        total = sum(counts)
        w.sample(f"{name}_bucket", total, (("protocol", protocol), ("le", "+Inf")))
        w.sample(f"{name}_sum", hist["sum"], (("protocol", protocol),))
        w.sample(f"{name}_count", total, (("protocol", protocol),))

    w.family("trioserve_bad_requests_total", "counter",
             "Request heads the server answered itself, without the application (malformed: "
             "400, also plain HTTP on a TLS port and HTTP/2 streams reset with PROTOCOL_ERROR; "
             "over a limit: 408, 414, 431), by protocol (http1, http2) and status code.")
    for protocol, by_status in sorted(counters["bad_requests"].items(), key=_protocol_sort):
        for status, n in sorted(by_status.items(), key=_status_sort):
            w.sample("trioserve_bad_requests_total", n,
                     (("protocol", protocol), ("status", status)))

    w.family("trioserve_rejected_total", "counter",
             "Requests, streams or connections refused because of a limit, by limit.")
    rejected = counters["rejected"]
    for limit in (*LIMITS, *sorted(set(rejected) - set(LIMITS))):
        w.sample("trioserve_rejected_total", rejected.get(limit, 0), (("limit", limit),))

    w.family("trioserve_request_body_bytes_total", "counter",
             "Request body bytes the application read (decoded: without chunked framing).")
    w.sample("trioserve_request_body_bytes_total", counters["request_body_bytes"])
    w.family("trioserve_response_bytes_total", "counter",
             "Response bytes of answered and aborted requests: for HTTP/1.x the status line, "
             "headers and body as written; for HTTP/2 the body (DATA payload) only.")
    w.sample("trioserve_response_bytes_total", counters["response_bytes"])

    w.family("trioserve_connections_accepted_total", "counter",
             "Connections accepted on the public listeners.")
    w.sample("trioserve_connections_accepted_total", counters["connections_accepted"])
    w.family("trioserve_connections_active", "gauge",
             "Open connections, by protocol (http1 or http2; an h2c upgrade moves from one to "
             "the other; TLS handshakes in progress are in neither).")
    for kind, n in sorted(gauges["connections_active"].items()):
        w.sample("trioserve_connections_active", n, (("protocol", kind),))
    w.family("trioserve_http2_streams_active", "gauge",
             "HTTP/2 streams whose application call is in progress.")
    w.sample("trioserve_http2_streams_active", gauges["h2_streams_active"])
    w.family("trioserve_websockets_active", "gauge",
             "WebSocket sessions in progress (over HTTP/1.1 and HTTP/2).")
    w.sample("trioserve_websockets_active", gauges["websockets_active"])
    w.family("trioserve_websockets_total", "counter",
             "WebSocket sessions started (valid handshakes given to the application).")
    w.sample("trioserve_websockets_total", counters["websockets"])

    if extra_gauges:
        taken = {line.split(" ")[2] for line in w.lines if line.startswith("# TYPE ")}
        bases: set[str] = set()  # the extras' names without _total
        for extra, value in extra_gauges.items():
            if not _NAME_RE.match(extra):
                raise ValueError(f"invalid metric name {extra!r}")
            # A family's samples are named after it (X_total, X_bucket …) and parsers name a
            # counter X_total's family X: a gauge X would be read as the same family.
            base = extra.removesuffix("_total")
            if extra in taken or base in taken or base + "_total" in taken or any(
                    extra.startswith(t + "_") for t in taken):
                raise ValueError(f"metric {extra!r} clashes with one of the server's")
            if base in bases:
                raise ValueError(f"metric {extra!r} clashes with another extra metric")
            bases.add(base)
            kind = "counter" if extra.endswith("_total") else "gauge"
            w.family(extra, kind, EXTRA_HELP.get(extra, f"{extra} (from the supervisor)."))
            w.sample(extra, value)
    return "\n".join(w.lines) + "\n"
