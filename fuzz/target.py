"""Live targets: send fuzz inputs to a running server over TCP and judge what comes back.

Any HTTP/1.1 server can be a target, not only trioserve. Each input goes on a fresh connection:
the fuzzer connects, sends the bytes, **shuts down its write side** (a TCP half-close, which
RFC 9112 §9.6 allows a client) and reads until the server closes or ``timeout`` seconds pass.
The half-close tells a server that nothing more is coming, so a server that has answered what it
received closes at once instead of waiting out its keep-alive timeout, and an incomplete request
ends in a refusal or a close instead of the header timeout. A server that still waits longer
than ``timeout`` after that is reported as hanging; the default timeout (35 s) is above common
request-header timeouts (trioserve's is 30 s), so only a server that waits past its own timeouts
is reported.

Responses are read with h11 (client side). :func:`check_http1_target` checks one target,
:func:`check_diff` compares several; both raise :class:`Finding`.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import math
import re
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import h11

from .echo import ECHO_HEADER, ECHO_REQUEST_HEADER
from .http1 import GeneratedRequest, Http1Case, InvariantViolation, elide_bytes

__all__ = [
    "DEFAULT_LINGER",
    "DEFAULT_TIMEOUT",
    "REFUSAL_STATUSES",
    "Exchange",
    "Finding",
    "Observation",
    "Response",
    "ResponseCounter",
    "ResponseStream",
    "Target",
    "TargetError",
    "Unreachable",
    "check_diff",
    "check_h2_target",
    "check_http1_target",
    "exchange",
    "normalise_target",
    "observe",
    "parse_target",
    "probe_echo",
    "read_responses",
]

DEFAULT_TIMEOUT = 35.0
"""Seconds a server gets, after the fuzzer's half-close, to answer and close."""
DEFAULT_LINGER = 0.25
"""Seconds to wait for more bytes once every response an input calls for has arrived."""
MAX_RESPONSE_BYTES = 1 << 20
REFUSAL_STATUSES = frozenset({400, 408, 411, 413, 414, 431, 501, 505})
"""Statuses a server sends on its own to refuse a request at the protocol level. For a target
that does not run the echo app, every other final response counts as a request that reached the
application."""
VALID_REFUSED_STATUSES = frozenset({400, 411, 413, 414, 431, 505})
"""For a target that does not run the echo app, the answers to a valid request that are a
``valid-refused`` finding: protocol-level refusals. Anything else may be the application's
answer (404, 405, and 501 for a method it does not implement, ``OPTIONS *`` included)."""
_BODY_FAULT_FAMILIES = frozenset({"chunk-size"})
"""Framing families whose fault is in the body: the head is valid, so a server may hand the
request to an application that answers without reading the body before it reaches the fault."""
_ALLOWED_5XX = frozenset({501, 505})
_STANDARD_METHODS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT",
                               b"OPTIONS", b"TRACE", b"PATCH"})


class TargetError(Exception):
    """A target URL that cannot be used: not ``http://host:port``, not resolvable, or not on
    loopback without ``allow_remote``."""


class Finding(InvariantViolation):
    """A property of a live target does not hold. ``kind`` names the property (``hang``,
    ``bad-response``, ``server-error``, ``smuggling``, ``accepted-invalid``,
    ``valid-refused``, ``echo-mismatch``; for ``diff``: ``connection``, ``server-error``,
    ``echo-count``, ``echo-differs``, ``status-class``); the message's first line is stable
    across inputs of the same fault, details follow on the next lines."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Unreachable(Finding):
    """The target refused or dropped the connection attempt: it may have crashed."""

    def __init__(self, message: str) -> None:
        super().__init__("unreachable", message)


@dataclass(frozen=True)
class Target:
    """A resolved target. ``name`` labels it in reports (``name=URL`` on the command line, else
    ``host:port``)."""

    url: str
    name: str
    host: str
    port: int
    family: int
    sockaddr: tuple[Any, ...]
    echo: str | None = None
    """The echo app's interface (``asgi``/``wsgi``) when :func:`probe_echo` found it on the
    target, else ``None`` (not probed, or not the echo app)."""


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def parse_target(spec: str, *, allow_remote: bool = False) -> Target:
    """``[name=]http://host:port[/...]`` resolved. Without ``allow_remote`` every address the
    host resolves to must be loopback (127.0.0.0/8 or ::1). Raises :class:`TargetError` with a
    one-line reason."""
    name, sep, url = spec.partition("=")
    if not sep or "://" in name:
        name, url = "", spec
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise TargetError(f"{url!r}: only http:// URLs can be fuzzed (cleartext HTTP/1.1, or "
                          "HTTP/2 with prior knowledge)")
    try:
        port = 80 if parts.port is None else parts.port
    except ValueError as exc:
        raise TargetError(f"{url!r}: {exc}") from None
    if port == 0:
        raise TargetError(f"{url!r}: port 0 is not a port a server listens on")
    host = parts.hostname
    if not host:
        raise TargetError(f"{url!r}: no host")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise TargetError(f"{url!r}: cannot resolve {host!r}: {exc}") from None
    if not allow_remote:
        for info in infos:
            address = str(info[4][0])
            if not _is_loopback(address):
                raise TargetError(
                    f"refusing to fuzz {url}: {host} resolves to {address}, which is not a "
                    "loopback address (127.0.0.0/8 or ::1); pass --allow-remote to fuzz a "
                    "server you are allowed to attack")
    family, _, _, _, sockaddr = infos[0]
    return Target(url=url, name=name or f"{host}:{port}", host=host, port=port, family=family,
                  sockaddr=tuple(sockaddr))


# ---------------------------------------------------------------------------------- exchange


@dataclass(frozen=True)
class Exchange:
    """What one connection gave back. ``end``: ``closed`` (EOF), ``reset``, ``idle`` (every
    expected response arrived, then nothing for the linger time), ``timeout`` (no close within
    the timeout) or ``overflow`` (more than 1 MiB); ``seconds`` from the end of sending to the
    end; ``send_error``: why sending stopped early (the server closed first)."""

    received: bytes
    end: str
    seconds: float
    send_error: str | None = None


def exchange(target: Target, data: bytes, *, timeout: float = DEFAULT_TIMEOUT,
             half_close: bool = True, done: Callable[[bytearray], bool] | None = None,
             linger: float = DEFAULT_LINGER) -> Exchange:
    """Connect, send ``data``, half-close, read until the server closes or ``timeout``.

    With ``done``: once ``done(received so far)`` is true (every response the input calls for
    has arrived), read for at most ``linger`` seconds more, then end the exchange (``end`` is
    ``idle``), so a server that keeps a half-closed connection open until its keep-alive
    timeout does not slow the campaign down; an extra response (the smuggling signal) arrives
    well within that on loopback. ``done`` is called after each received piece until it is
    true, never after (a server that keeps sending is cut off ``linger`` seconds after the
    answers arrived); make it cheap (:class:`ResponseCounter`).

    Raises :class:`Unreachable` when the connection cannot be made (within 5 s)."""
    sock = socket.socket(target.family, socket.SOCK_STREAM)
    try:
        sock.settimeout(5.0)
        try:
            sock.connect(target.sockaddr)
        except OSError as exc:
            raise Unreachable(f"cannot connect to {target.name}: {exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        send_error = None
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            send_error = f"{type(exc).__name__}: {exc}"
        start = time.monotonic()
        deadline = start + timeout
        idle_deadline = math.inf
        received = bytearray()
        end = "closed"
        while True:
            now = time.monotonic()
            left = min(deadline, idle_deadline) - now
            if left <= 0:
                end = "idle" if idle_deadline <= deadline else "timeout"
                break
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue  # the loop decides which deadline passed
            except OSError:
                end = "reset"
                break
            if not chunk:
                break
            received += chunk
            if len(received) > MAX_RESPONSE_BYTES:
                end = "overflow"
                break
            if done is not None and linger > 0 and idle_deadline == math.inf \
                    and done(received):
                idle_deadline = time.monotonic() + linger
        return Exchange(bytes(received), end, time.monotonic() - start, send_error)
    finally:
        sock.close()


# ---------------------------------------------------------------------------------- responses


@dataclass(frozen=True)
class Response:
    """One final response."""

    status: int
    http_version: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    method: bytes

    def header(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None

    @property
    def echo_api(self) -> str | None:
        """``asgi``/``wsgi`` when the echo app answered, else ``None``."""
        value = self.header(ECHO_HEADER.encode())
        return None if value is None else value.decode("latin-1")

    def echo(self) -> dict[str, Any]:
        """The echo app's description of the request. Raises :class:`ValueError` when the
        response is not an echo or its description is not the JSON the app sends."""
        if self.echo_api is None:
            raise ValueError("not an echo response")
        payload = self.body
        if self.method == b"HEAD" or not payload:
            encoded = self.header(ECHO_REQUEST_HEADER.encode())
            if encoded is not None:
                try:
                    payload = base64.b64decode(encoded, validate=True)
                except binascii.Error as exc:
                    raise ValueError(f"bad {ECHO_REQUEST_HEADER}: {exc}") from None
        try:
            doc = json.loads(payload)
        except ValueError as exc:
            raise ValueError(f"echo body is not JSON ({exc}): {payload[:80]!r}") from None
        if not isinstance(doc, dict) or not {"method", "target", "headers"} <= doc.keys():
            raise ValueError(f"echo body is not an echo description: {payload[:80]!r}")
        return doc


@dataclass
class ResponseStream:
    """The responses parsed out of a connection's bytes. ``error``: why the rest is not valid
    HTTP/1.1 (``None`` when every byte was read); ``truncated``: the bytes end inside a response
    (a reset can cause that); ``tunnel``: a 2xx to CONNECT (or a 101) turned the rest into
    opaque bytes."""

    responses: list[Response] = field(default_factory=list)
    informational: int = 0
    error: str | None = None
    truncated: bool = False
    tunnel: bool = False
    error_index: int = -1


def _parse_once(data: bytes, methods: Sequence[bytes]) -> ResponseStream:
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_BYTES)
    conn.receive_data(data)
    conn.receive_data(b"")
    out = ResponseStream()
    limit = len(data) // 12 + 2  # a response takes at least "HTTP/1.1 200\r\n\r\n"
    for i in range(limit):
        if i and not conn.trailing_data[0]:
            return out
        method = methods[i] if i < len(methods) else b"GET"
        conn.send(h11.Request(method=method, target="/", headers=[("Host", "fuzz")]))
        conn.send(h11.EndOfMessage())
        head: h11.Response | None = None
        body = bytearray()
        while True:
            try:
                ev = conn.next_event()
            except h11.RemoteProtocolError as exc:
                text = str(exc)
                if i == 0 and not data:
                    return out
                if i == 0 and not out.informational and not b"HTTP/".startswith(data[:5]):
                    # garbage: one message, whatever h11 makes of the bytes
                    out.error = "the answer does not begin with a status line (HTTP/...)"
                    out.error_index = 0
                    return out
                out.error = elide_bytes(text)
                out.truncated = "closed" in text
                out.error_index = i
                return out
            if isinstance(ev, h11.InformationalResponse):
                out.informational += 1
            elif isinstance(ev, h11.Response):
                head = ev
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                break
            elif ev is h11.PAUSED:
                if head is not None:
                    out.responses.append(Response(head.status_code, head.http_version,
                                                  list(head.headers), bytes(body), method))
                out.tunnel = True
                return out
            else:  # ConnectionClosed before a response, or NEED_DATA (not after EOF)
                return out
        assert head is not None
        out.responses.append(Response(head.status_code, head.http_version,
                                      list(head.headers), bytes(body), method))
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            rest = conn.trailing_data[0]
            if rest:
                out.error = (f"{len(rest)} bytes after a response that closes the connection"
                             f" ({head.status_code})")
                out.error_index = i  # (or this response had a body h11 did not expect)
            return out
        conn.start_next_cycle()
    out.error = "too many responses"
    return out


def _better(a: ResponseStream, b: ResponseStream) -> bool:
    """Whether parse ``a`` reads further than ``b``."""
    if (a.error is None) != (b.error is None):
        return a.error is None
    return len(a.responses) > len(b.responses)


def read_responses(data: bytes, methods: Sequence[bytes], *,
                   methods_certain: bool = True) -> ResponseStream:
    """Parse ``data`` as the responses to requests with ``methods`` (``GET`` beyond them).

    A parse that fails at response *k* is retried with *k* (or *k - 1*, whose body may have
    been taken for the next response) read as the answer to ``GET`` instead of ``HEAD``, when
    it then turns out to be a refusal: a server that refuses bytes does not know they meant
    ``HEAD``, and may send a body. When ``methods_certain`` is false (mutated bytes: a method
    may have been damaged into or out of ``HEAD``), the method is switched either way whatever
    the status. The parse that reads furthest wins. Never raises."""
    guess = list(methods)
    best = _parse_once(data, guess)
    for _ in range(6):
        k = best.error_index
        if best.error is None or k < 0:
            break
        improved = False
        for j in (k, k - 1):
            if j < 0:
                continue
            trial = guess + [b"GET"] * (j + 1 - len(guess))
            if trial[j] != b"HEAD" and methods_certain:
                continue
            trial[j] = b"GET" if trial[j] == b"HEAD" else b"HEAD"
            other = _parse_once(data, trial)
            refusal = len(other.responses) > j and other.responses[j].status >= 400
            if (refusal or not methods_certain) and _better(other, best):
                guess, best, improved = trial, other, True
                break
        if not improved:
            break
    return best


class ResponseCounter:
    """``done`` for :func:`exchange`: whether ``wanted`` final responses to requests with
    ``methods`` have arrived. Reads each new piece of the bytes once (h11, client side), where
    re-reading everything on each piece would take quadratic time on a server that sends many
    small pieces. Once h11 cannot go on (bytes that are not a response as expected: a body to
    a HEAD refusal, a connection meant to close), it falls back to :func:`read_responses` on
    the whole, only when the bytes have grown by a quarter since its last try."""

    def __init__(self, methods: Sequence[bytes], wanted: int, *,
                 methods_certain: bool = True) -> None:
        self.methods = list(methods)
        self.wanted = wanted
        self.certain = methods_certain
        self.count = 0
        self._conn: h11.Connection | None = h11.Connection(
            h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_BYTES)
        self._fed = 0
        self._tried = 0
        self._ask()

    def _ask(self) -> None:
        assert self._conn is not None
        method = self.methods[self.count] if self.count < len(self.methods) else b"GET"
        self._conn.send(h11.Request(method=method, target="/", headers=[("Host", "fuzz")]))
        self._conn.send(h11.EndOfMessage())

    def _read(self, received: bytearray) -> None:
        conn = self._conn
        assert conn is not None
        conn.receive_data(bytes(received[self._fed:]))
        self._fed = len(received)
        while self.count < self.wanted:
            try:
                ev = conn.next_event()
            except h11.RemoteProtocolError:
                self._conn = None
                return
            if ev is h11.NEED_DATA:
                return
            if isinstance(ev, h11.EndOfMessage):
                self.count += 1
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                    self._ask()
                else:
                    self._conn = None  # closing, or a tunnel: the whole read decides
                    return
            elif ev is h11.PAUSED or isinstance(ev, h11.ConnectionClosed):
                self._conn = None
                return

    def __call__(self, received: bytearray) -> bool:
        if self._conn is not None:
            self._read(received)
        if self.count >= self.wanted:
            return True
        if self._conn is None and len(received) * 4 >= self._tried * 5 + 1:
            self._tried = len(received)
            stream = read_responses(bytes(received), self.methods,
                                    methods_certain=self.certain)
            self.count = max(self.count, len(stream.responses))
        return self.count >= self.wanted


# --------------------------------------------------------------------------- observations


@dataclass(frozen=True)
class Observation:
    """One target's answer to one input, summarised for the properties."""

    target: Target
    exchange: Exchange
    stream: ResponseStream
    echoes: list[dict[str, Any] | None]
    """Per final response: the echo description, ``None`` for a response not from the app."""
    echo_error: str | None = None

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.stream.responses]

    @property
    def echo_app(self) -> bool:
        """Whether the target runs the echo app (the probe said so, or it echoed here)."""
        return self.target.echo is not None or any(e is not None for e in self.echoes)

    @property
    def echo_count(self) -> int:
        """The echo app's answers."""
        return sum(e is not None for e in self.echoes)

    @property
    def app_requests(self) -> int:
        """Requests that reached the application: echo responses when the target runs the
        echo app, else final responses other than :data:`REFUSAL_STATUSES`."""
        if self.echo_app:
            return self.echo_count
        return sum(r.status not in REFUSAL_STATUSES for r in self.stream.responses)

    def summary(self) -> str:
        parts = [f"{self.target.name}: {self.exchange.end} after {self.exchange.seconds:.2f}s",
                 f"statuses {self.statuses}"]
        if self.stream.error:
            parts.append(f"unreadable: {self.stream.error}")
        echoed = [e["method"] + " " + e["target"] for e in self.echoes if e is not None]
        if echoed:
            parts.append(f"echoed {echoed}")
        return ", ".join(parts)


def observe(target: Target, case: Http1Case, *, timeout: float,
            linger: float = DEFAULT_LINGER) -> Observation:
    """Send ``case.raw`` to ``target`` and read the answer; stop ``linger`` seconds after the
    responses the case calls for (``max(1, case.requests)``) have arrived, if the server has
    not closed by then. Raises :class:`Unreachable`."""
    certain = case.family not in ("mutated", "bytes")
    done = ResponseCounter(case.methods, max(1, case.requests or 0), methods_certain=certain)
    ex = exchange(target, case.raw, timeout=timeout, done=done, linger=linger)
    stream = read_responses(ex.received, case.methods, methods_certain=certain)
    echoes: list[dict[str, Any] | None] = []
    echo_error = None
    for r in stream.responses:
        if r.echo_api is None:
            echoes.append(None)
            continue
        try:
            echoes.append(r.echo())
        except ValueError as exc:
            echo_error = echo_error or str(exc)
            echoes.append(None)
    return Observation(target, ex, stream, echoes, echo_error)


def normalise_target(target: bytes) -> bytes:
    """What an ASGI application can see of a request-target: the query's ``?`` disappears
    when the query is empty (``query_string`` is then ``b""``)."""
    return target[:-1] if target.endswith(b"?") else target


def _path_of_absolute(target: bytes) -> bytes | None:
    """The path-and-query of an absolute-form target (``/`` for an empty path)."""
    m = re.match(rb"[A-Za-z][A-Za-z0-9+.\-]*://[^/?#]*", target)
    if m is None:
        return None
    rest = target[m.end():]
    return rest if rest.startswith(b"/") else b"/" + rest


def _echo_differences(want: GeneratedRequest, echo: dict[str, Any]) -> list[str]:
    """Fields of ``echo`` that do not describe ``want`` (``want`` as the app must see it)."""
    diffs: list[str] = []
    method = str(echo.get("method", "")).encode("latin-1")
    if method != want.method:
        diffs.append(f"method: sent {want.method!r}, app saw {method!r}")
    got_target = normalise_target(str(echo.get("target", "")).encode("latin-1"))
    ok_targets = {normalise_target(want.target)}
    absolute = _path_of_absolute(want.target)
    if absolute is not None:
        ok_targets.add(normalise_target(absolute))
    if got_target not in ok_targets:
        diffs.append(f"target: sent {want.target!r}, app saw {got_target!r}")
    version = str(echo.get("http_version", "")).encode("latin-1")
    if version != want.http_version:
        diffs.append(f"http_version: sent {want.http_version!r}, app saw {version!r}")
    if echo.get("api") != "wsgi":
        got_headers = [(str(n).lower().encode("latin-1"), str(v).encode("latin-1"))
                       for n, v in echo.get("headers", ())]
        if got_headers != list(want.headers):
            diffs.append(f"headers: sent {list(want.headers)!r}, app saw {got_headers!r}")
    try:
        body = base64.b64decode(str(echo.get("body_base64", "")), validate=True)
    except binascii.Error:
        body = b"<not base64>"
    if body != want.body and want.method != b"HEAD":
        diffs.append(f"body: sent {want.body!r}, app saw {body!r}")
    return diffs


def check_http1_target(target: Target, case: Http1Case, *, timeout: float = DEFAULT_TIMEOUT,
                       linger: float = DEFAULT_LINGER) -> str:
    """The properties of one live target for one input:

    - ``hang``: the server answers or closes within ``timeout`` of the half-close;
    - ``bad-response``: what it sends parses as HTTP/1.1 responses (h11), at most 1 MiB, and
      the echo app's answers are intact;
    - ``server-error``: no 5xx other than 501 and 505;
    - ``smuggling``: never more requests reach the application than the bytes were built from;
    - ``accepted-invalid``: nothing of bytes RFC 9112 requires refusing reaches the application
      (for a fault in a chunked body and a target without the echo app, which may answer from
      the head alone: at most the carrying request);
    - ``valid-refused`` / ``echo-mismatch``: a valid request is answered by the application
      and, when the target runs the echo app, the app saw exactly the method, target, version,
      headers (names case-insensitive, order kept) and body that were sent. With the echo app
      any 4xx/5xx answer is a refusal, except 501 to a non-standard method; without it only
      :data:`VALID_REFUSED_STATUSES` are. A request starting with an empty line that is refused
      or not answered is an outcome, not a finding (RFC 9112 §2.2 only says SHOULD ignore).

    Returns a short outcome label for statistics. Raises :class:`Finding` (or
    :class:`Unreachable` when the target cannot be reached)."""
    obs = observe(target, case, timeout=timeout, linger=linger)
    return judge_http1(obs, case, timeout=timeout)


LEADING_EMPTY_LINE = "leading empty line not ignored"
"""The outcome label of a valid request refused or unanswered because of the empty line before
its request line (RFC 9112 §2.2: a server SHOULD ignore at least one)."""


def _refused(obs: Observation, want: GeneratedRequest, status: int) -> bool:
    if not obs.echo_app:
        return status in VALID_REFUSED_STATUSES
    return status >= 400 and not (status == 501 and want.method not in _STANDARD_METHODS)


def judge_http1(obs: Observation, case: Http1Case, *, timeout: float) -> str:
    """:func:`check_http1_target`'s verdict on an observation. Raises :class:`Finding`."""
    ex, stream = obs.exchange, obs.stream
    detail = obs.summary()
    family = case.family
    if ex.end == "timeout":
        if not ex.received:
            raise Finding("hang", f"no answer and no close within {timeout:g}s of the "
                                  f"half-close ({family})\n{detail}")
        raise Finding("hang", f"answered in part, then no close within {timeout:g}s of the "
                              f"half-close ({family})\n{detail}\nreceived {len(ex.received)} "
                              f"bytes: {ex.received[:300]!r}")
    if ex.end == "overflow":
        raise Finding("bad-response", f"more than {MAX_RESPONSE_BYTES} bytes in answer\n{detail}")
    # a response cut short by a reset, or by the fuzzer itself (idle), is not the server's fault
    if stream.error is not None and not (stream.truncated and ex.end in ("reset", "idle")):
        first = ("connection closed in the middle of a response" if stream.truncated
                 else f"response bytes are not HTTP/1.1: {stream.error}")
        raise Finding("bad-response", f"{first}\n{detail}\nreceived {ex.received[:2000]!r}")
    if obs.echo_error is not None:
        raise Finding("bad-response", f"the echo app's answer arrived damaged\n"
                                      f"{obs.echo_error}\n{detail}")
    for r in stream.responses:
        if r.status >= 500 and r.status not in _ALLOWED_5XX:
            raise Finding("server-error", f"answered {r.status} ({family})\n{detail}")
    app = obs.app_requests
    must_reject, most = case.must_reject, case.requests
    if must_reject and family in _BODY_FAULT_FAMILIES and not obs.echo_app:
        must_reject, most = False, 1
    if must_reject and app > 0:
        raise Finding("accepted-invalid",
                      f"bytes RFC 9112 requires refusing reached the application ({family})\n"
                      f"case {case.label}\n{detail}")
    if most is not None and app > most:
        raise Finding("smuggling",
                      f"more requests reached the application than the bytes were built from "
                      f"({family})\n{app} > {most}, case {case.label}\n{detail}")
    for i, want in enumerate(case.expected):
        if i >= len(stream.responses):
            if i == 0:
                if want.raw.startswith(b"\r\n"):
                    return LEADING_EMPTY_LINE
                raise Finding("valid-refused", f"a valid request got no answer\n{detail}")
            break  # a server may close between pipelined requests (RFC 9112 §9.6)
        r = stream.responses[i]
        echo = obs.echoes[i]
        if echo is None:
            if _refused(obs, want, r.status):
                if want.raw.startswith(b"\r\n"):
                    return LEADING_EMPTY_LINE
                raise Finding("valid-refused", f"a valid request was answered {r.status}\n"
                                               f"request {want.raw!r}\n{detail}")
            continue  # not the echo app's answer: nothing more to compare
        diffs = _echo_differences(want, echo)
        if diffs:
            fields = ", ".join(sorted({d.split(":", 1)[0] for d in diffs}))
            raise Finding("echo-mismatch", f"the application saw a different request "
                                           f"({fields})\n" + "\n".join(diffs))
    if not stream.responses:
        return "closed without answer"
    last = stream.responses[-1].status
    return f"{app} to app" + ("" if obs.echoes[-1] is not None else f", then {last // 100}xx")


# --------------------------------------------------------------------------------- diff


def _comparable(echo: dict[str, Any], with_headers: bool) -> dict[str, Any]:
    doc = {k: v for k, v in echo.items() if k not in ("api", "raw_path_missing")}
    if with_headers:
        doc["headers"] = [[str(n).lower(), v] for n, v in echo.get("headers", ())]
    else:
        doc.pop("headers", None)
    return doc


def check_diff(targets: Sequence[Target], case: Http1Case, *, timeout: float = DEFAULT_TIMEOUT,
               linger: float = DEFAULT_LINGER, pool: ThreadPoolExecutor | None = None) -> str:
    """Send ``case.raw`` to every target (concurrently when ``pool`` is given) and compare:

    - ``bad-response``: a target's answer does not parse as HTTP/1.1 (nothing to compare);
    - ``connection``: some targets closed, others still had not after ``timeout``;
    - ``server-error``: a target answered a 5xx other than 501 and 505 (the echo app never
      does: the server did);
    - ``echo-count``: a different number of requests reached the application, counted as the
      echo app's answers (the request-smuggling signal);
    - ``echo-differs``: the application saw different requests (after normalisation: header
      names lower-cased; headers are left out when a target runs the WSGI echo);
    - ``status-class``: responses at the same position differ in class (2xx/4xx/5xx).

    The message's details say which targets broke what RFC 9112 requires of these bytes.
    Returns an outcome label. Raises :class:`Finding` or :class:`Unreachable`."""
    def run(t: Target) -> Observation:
        return observe(t, case, timeout=timeout, linger=linger)

    observations = list(pool.map(run, targets)) if pool is not None else [run(t) for t in targets]
    details = "\n".join(o.summary() for o in observations)
    rfc = _rfc_notes(case, observations)
    if rfc:
        details += "\n" + rfc
    for o in observations:
        if o.stream.error is not None and \
                not (o.stream.truncated and o.exchange.end in ("reset", "idle")):
            raise Finding("bad-response", f"{o.target.name}: response bytes are not HTTP/1.1: "
                                          f"{o.stream.error}\n{details}")
    ends = {o.target.name: "timeout" if o.exchange.end == "timeout" else "closed"
            for o in observations}
    if len(set(ends.values())) > 1:
        hung = ", ".join(n for n, e in ends.items() if e == "timeout")
        raise Finding("connection", f"no close within {timeout:g}s from {hung} only\n{details}")
    errors: dict[str, int] = {}
    for o in observations:
        bad = [s for s in o.statuses if s >= 500 and s not in _ALLOWED_5XX]
        if bad:
            errors[o.target.name] = bad[0]
    if errors:
        listing = ", ".join(f"{n} {s}" for n, s in errors.items())
        raise Finding("server-error", f"answered 5xx ({case.family}): {listing}\n{details}")
    counts = {o.target.name: o.echo_count for o in observations}
    ref_name = observations[0].target.name
    if len(set(counts.values())) > 1:
        # the first line names who differs from the first target, and which way, not the
        # counts: one fault seen with different numbers of pipelined requests is one key
        more = [n for n, c in counts.items() if c > counts[ref_name]]
        fewer = [n for n, c in counts.items() if c < counts[ref_name]]
        parts = ([f"more than {ref_name}: {', '.join(more)}"] if more else []) + \
                ([f"fewer than {ref_name}: {', '.join(fewer)}"] if fewer else [])
        listing = ", ".join(f"{n}={c}" for n, c in counts.items())
        raise Finding("echo-count", f"requests reaching the application differ "
                                    f"({case.family}): {'; '.join(parts)}\n"
                                    f"{listing}\n{details}")
    with_headers = not any(e is not None and e.get("api") == "wsgi"
                           for o in observations for e in o.echoes)
    views = {o.target.name: [_comparable(e, with_headers) for e in o.echoes if e is not None]
             for o in observations}
    ref = views[ref_name]
    differing = [n for n, v in views.items() if v != ref]
    if differing:
        fields = sorted({k for n in differing for a, b in zip(ref, views[n], strict=True)
                         for k in set(a) | set(b) if a.get(k) != b.get(k)})
        listing = "\n".join(f"{n}: {views[n]!r}" for n in [ref_name, *differing])
        raise Finding("echo-differs", f"the application saw different requests "
                                      f"({', '.join(fields)}) ({case.family}): {ref_name} vs "
                                      f"{', '.join(differing)}\n{listing}\n{details}")
    classes = {o.target.name: [s // 100 for s in o.statuses] for o in observations}
    common = min(len(c) for c in classes.values())
    for i in range(common):
        at = {n: c[i] for n, c in classes.items()}
        if len(set(at.values())) > 1:
            odd = ", ".join(f"{n} {c}xx" for n, c in at.items() if c != at[ref_name])
            raise Finding("status-class", f"status classes differ ({case.family}): "
                                          f"{ref_name} {at[ref_name]}xx; {odd}\n"
                                          f"response {i + 1}\n{details}")
    first = observations[0]
    return f"agree: {first.echo_count} to app"


def _rfc_notes(case: Http1Case, observations: Sequence[Observation]) -> str:
    notes = []
    for o in observations:
        if case.must_reject and o.echo_count:
            notes.append(f"{o.target.name} let through bytes RFC 9112 requires refusing")
        if case.requests is not None and o.echo_count > case.requests:
            notes.append(f"{o.target.name} passed {o.echo_count} requests to the app; the "
                         f"bytes hold at most {case.requests}")
    if notes:
        notes.insert(0, f"case {case.label}")
    return "\n".join(notes)


# ------------------------------------------------------------------------------- HTTP/2


def check_h2_target(target: Target, data: bytes, *, timeout: float = DEFAULT_TIMEOUT,
                    check_output: Callable[[bytes, bytes], None]) -> str:
    """Send an HTTP/2 prior-knowledge connection's bytes, half-close, and judge what came back
    with ``check_output(sent, received)`` (``trioserve.fuzz.http2.check_h2_server_output``).
    Raises :class:`Finding` (``hang``, ``h2``) or :class:`Unreachable`."""
    ex = exchange(target, data, timeout=timeout)
    if ex.end == "timeout":
        raise Finding("hang", f"no close within {timeout:g}s of the half-close (h2)\n"
                              f"received {ex.received[:500]!r}")
    try:
        check_output(data, ex.received)
    except InvariantViolation as exc:
        raise Finding("h2", str(exc)) from None
    return ex.end


def probe_echo(target: Target, *, timeout: float = 10.0) -> str | None:
    """Send one plain GET; the echo interface (``asgi``/``wsgi``) if the echo app answered,
    else ``None``. Raises :class:`Unreachable`, or :class:`TargetError` when the answer is not
    HTTP/1.1 at all."""
    ex = exchange(target, b"GET /trioserve-fuzz-probe HTTP/1.1\r\nHost: fuzz\r\n\r\n",
                  timeout=timeout,
                  done=ResponseCounter([b"GET"], 1))
    stream = read_responses(ex.received, [b"GET"])
    if not stream.responses:
        raise TargetError(f"{target.url} gave no HTTP/1.1 response to a plain GET "
                          f"({ex.end}, {stream.error or 'nothing received'})")
    return stream.responses[0].echo_api
