"""ASGI 3 bridge: serves an ASGI application on trioserve's request features.

HTTP (spec 2.4), WebSocket (spec 2.4, over HTTP/1.1 and HTTP/2) and lifespan (spec 2.0, with
state) are implemented::

    from trioserve.bridges.asgi import ASGIBridge
    await trioserve.serve(ASGIBridge(asgi_app), config)

Behaviour worth knowing:

- ``scope["path"]`` and ``scope["raw_path"]`` include ``root_path`` (the prefix a proxy strips
  before forwarding), as Uvicorn does (in ``raw_path`` percent-encoded, so that it stays a
  valid encoded path whatever the prefix holds: ``%``, ``?``, non-ASCII); ``scope["state"]``
  is a shallow copy of the lifespan state.
- ``receive()`` streams the body as ``http.request`` messages with ``more_body``; afterwards it
  waits and returns ``http.disconnect`` when the client goes away or once the response is sent.
- ``http.response.start`` is held until the first body message so that a one-message body goes
  out with a Content-Length in a single write.
- ``send()`` after the client disconnected raises :class:`~trioserve.features.ClientDisconnected`
  (an ``OSError``, as spec 2.4 asks).
- Extensions: ``http.response.pathsend`` (sent with ``sendfile`` on plain TCP),
  ``http.response.trailers``, ``http.response.early_hint``, ``tls``, and for WebSockets
  ``websocket.http.response`` (refuse the handshake with a real HTTP response).
- WebSocket: ``websocket.close`` before ``websocket.accept`` answers 403; an app that returns
  without accepting or answering gets 500; after accept, an app that returns closes the
  WebSocket with 1000 and one that raises with 1011. ``websocket.disconnect`` carries the peer's
  close code (1006 when the connection dropped without a close frame).

Lifespan, ``lifespan="auto"`` (the default): an app that raises before it first calls
``receive()``, or returns without answering, does not support lifespan and is served without
it; a ``lifespan.startup.failed`` message, or an exception after start-up began, fails start-up
with :class:`~trioserve.features.LifespanFailure`. ``"on"`` makes lifespan mandatory, ``"off"``
never runs it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Literal
from urllib.parse import quote

import trio

from trioserve.features import (
    ClientDisconnected,
    ConnectionFeature,
    EarlyHintsFeature,
    FeatureCollection,
    FeatureMissingError,
    FeatureStateError,
    LifespanFailure,
    RequestBodyFeature,
    RequestBodyTooLarge,
    RequestContext,
    RequestFeature,
    RequestLifetimeFeature,
    ResponseBodyFeature,
    ResponseFeature,
    TlsFeature,
    WebSocketDisconnected,
    WebSocketFeature,
)

__all__ = ["ASGIApp", "ASGIBridge"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("trioserve.asgi")

_ASGI = {"version": "3.0", "spec_version": "2.4"}
_DISCONNECT: Message = {"type": "http.disconnect"}


def _byte_pairs(pairs: Any, what: str) -> list[tuple[bytes, bytes]]:
    """ASGI header pairs as a list; raises :class:`TypeError` unless names and values are
    ``bytes``."""
    out = []
    for name, value in pairs:
        if type(name) is not bytes or type(value) is not bytes:
            raise TypeError(f"ASGI {what} names and values must be bytes, got "
                            f"{name!r}: {value!r}")
        out.append((name, value))
    return out


_PATH_SAFE = "/:@!$&'()*+,;="  # RFC 3986 pchar's sub-delims, ":" and "@", and "/"


def _encoded_path(path: str) -> bytes:
    """``path`` (decoded text) percent-encoded as the bytes of a URI path: UTF-8, every byte
    outside RFC 3986's pchar and ``/`` escaped (``%`` itself included, so that decoding gives
    ``path`` back)."""
    return quote(path, safe=_PATH_SAFE).encode("ascii")


def _tls_extension(tls: TlsFeature) -> dict[str, Any]:
    """The ASGI ``tls`` extension's scope entry for a TLS connection."""
    return {
        "server_cert": tls.server_certificate_pem,
        "client_cert_chain": [tls.peer_certificate_pem] if tls.peer_certificate_pem else [],
        "client_cert_name": tls.peer_certificate_name,
        "client_cert_error": None,  # a client certificate that fails verification ends the
                                    # handshake, so the app never sees one
        "tls_version": tls.tls_version,
        "cipher_suite": tls.cipher_suite,
    }


class ASGIBridge:
    """Adapts an ASGI 3 application to a trioserve application (see module docs).

    Raises :class:`TypeError` at construction for an object that is not callable.
    """

    def __init__(self, app: ASGIApp, *, lifespan: Literal["auto", "on", "off"] = "auto") -> None:
        if not callable(app):
            raise TypeError(f"ASGI application must be callable, got {app!r}")
        if lifespan not in ("auto", "on", "off"):
            raise ValueError(f"lifespan must be 'auto', 'on' or 'off', got {lifespan!r}")
        self.app = app
        self.lifespan = lifespan
        self.state: dict[str, Any] = {}
        self.lifespan_supported: bool | None = None

    # ---------------------------------------------------------------------------- HTTP

    async def __call__(self, ctx: RequestContext) -> None:
        features = ctx.features
        get = features.get
        ws = get(WebSocketFeature)
        if ws is not None:
            await self._websocket(ctx, ws)
            return
        req = get(RequestFeature)
        body = get(RequestBodyFeature)
        resp = get(ResponseFeature)
        out = get(ResponseBodyFeature)
        if req is None or body is None or resp is None or out is None:
            raise FeatureMissingError("an HTTP request needs the request, request body, "
                                      "response and response body features")
        scope = self._scope(features, req, "http", req.scheme, {
            "http.response.pathsend": {}, "http.response.trailers": {},
            "http.response.early_hint": {}})
        scope["method"] = req.method
        h = _HTTPCycle(body, resp, out, get(RequestLifetimeFeature), get(EarlyHintsFeature))
        await self.app(scope, h.receive, h.send)
        if not out.is_complete and not h.disconnected:
            if resp.has_started or h.started:
                raise RuntimeError("ASGI application returned without completing the response "
                                   "(no final 'http.response.body' with more_body=False)")
            raise RuntimeError("ASGI application returned without sending a response")

    def _scope(self, features: FeatureCollection, req: RequestFeature, kind: str, scheme: str,
               extensions: dict[str, Any]) -> dict[str, Any]:
        """The scope entries HTTP and WebSocket share (spec 2.4), with the ``tls`` extension
        on TLS connections and the lifespan ``state``."""
        conn = features.get(ConnectionFeature)
        root_path = req.root_path
        scope: dict[str, Any] = {
            "type": kind,
            "asgi": _ASGI,
            "http_version": req.http_version,
            "scheme": scheme,
            "path": root_path + req.path if root_path else req.path,
            "raw_path": (_encoded_path(root_path) + req.raw_path if root_path
                         else req.raw_path),
            "query_string": req.query_string,
            "root_path": root_path,
            "headers": req.headers,
            "client": conn.peer if conn is not None else None,
            "server": conn.local if conn is not None else None,
            "extensions": extensions,
        }
        tls = features.get(TlsFeature)
        if tls is not None:
            extensions["tls"] = _tls_extension(tls)
        if self.lifespan_supported:
            scope["state"] = self.state.copy()
        return scope

    async def _websocket(self, ctx: RequestContext, ws: WebSocketFeature) -> None:
        features = ctx.features
        req = features[RequestFeature]
        scope = self._scope(features, req, "websocket",
                            "wss" if req.scheme == "https" else "ws",
                            {"websocket.http.response": {}})
        scope["subprotocols"] = list(ws.subprotocols)
        cycle = _WebSocketCycle(ws, features[ResponseFeature], features[ResponseBodyFeature],
                                features.get(RequestLifetimeFeature))
        await self.app(scope, cycle.receive, cycle.send)
        if cycle.state == "connecting" or cycle.state == "response":
            if cycle.out.is_complete:
                return
            if cycle.state == "response":
                raise RuntimeError("ASGI application returned without completing its "
                                   "'websocket.http.response' (more_body=False)")
            raise RuntimeError("ASGI application returned without accepting or refusing the "
                               "WebSocket")

    # ------------------------------------------------------------------------ lifespan

    async def run_lifespan(
        self, stop: trio.Event, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the ASGI lifespan protocol around the server's lifetime (see module docs).

        Raises :class:`LifespanFailure` when start-up fails."""
        if self.lifespan == "off":
            task_status.started()
            await stop.wait()
            return
        phase = "startup"
        received_startup = False
        started = False
        shutdown_done = trio.Event()
        failure: str | None = None

        async def receive() -> Message:
            nonlocal received_startup, phase
            if failure is not None:  # start-up failed: there is nothing more to receive
                raise LifespanFailure(failure)
            if not received_startup:
                received_startup = True
                return {"type": "lifespan.startup"}
            await stop.wait()
            phase = "shutdown"
            return {"type": "lifespan.shutdown"}

        async def send(message: Message) -> None:
            nonlocal started, failure
            t = message.get("type")
            if t == "lifespan.startup.complete" and phase == "startup" and not started:
                started = True
                self.lifespan_supported = True
                task_status.started()
            elif t == "lifespan.startup.failed" and phase == "startup" and not started:
                failure = str(message.get("message", "")) or "application start-up failed"
                raise LifespanFailure(failure)
            elif t == "lifespan.shutdown.complete" and phase == "shutdown":
                shutdown_done.set()
            elif t == "lifespan.shutdown.failed" and phase == "shutdown":
                log.error("application shutdown failed: %s", message.get("message", ""))
                shutdown_done.set()
            else:
                raise RuntimeError(f"unexpected ASGI lifespan message {t!r} during {phase}")

        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"},
                 "state": self.state}
        try:
            await self.app(scope, receive, send)
        except LifespanFailure:
            raise
        except Exception as exc:
            if started:
                log.error("exception in ASGI lifespan during %s", phase, exc_info=exc)
            elif received_startup or self.lifespan == "on":
                raise LifespanFailure(f"{type(exc).__name__}: {exc}") from exc
            else:
                log.info("ASGI lifespan not supported by the application (it raised %s); "
                         "serving without it", type(exc).__name__)
        if failure is not None:  # the app swallowed the exception its send() raised
            raise LifespanFailure(failure)
        if not started:
            if self.lifespan == "on":
                raise LifespanFailure("the application returned from lifespan without "
                                      "completing start-up")
            self.lifespan_supported = False
            task_status.started()
            await stop.wait()


class _HTTPCycle:
    """``receive`` and ``send`` for one request."""

    __slots__ = ("body", "disconnected", "hints", "lifetime", "out", "request_done", "resp",
                 "started", "trailers", "trailers_expected", "trailers_pending")

    def __init__(self, body: RequestBodyFeature, resp: ResponseFeature,
                 out: ResponseBodyFeature, lifetime: RequestLifetimeFeature | None,
                 hints: EarlyHintsFeature | None) -> None:
        self.body = body
        self.hints = hints
        self.trailers_expected = False  # http.response.start said trailers: True
        self.trailers_pending = False  # the body is done, the trailers are not
        self.trailers: list[tuple[bytes, bytes]] = []
        self.lifetime = lifetime
        self.resp = resp
        self.out = out
        self.request_done = False
        self.disconnected = False
        self.started = False

    async def receive(self) -> Message:
        if not self.request_done and not self.disconnected:
            body = self.body
            try:
                data = await body.receive()
            except (ClientDisconnected, RequestBodyTooLarge):
                self.disconnected = True
                return _DISCONNECT
            more = not body.is_complete
            if not more:
                self.request_done = True
            return {"type": "http.request", "body": data, "more_body": more}
        if not self.disconnected and not self.out.is_complete:
            lifetime = self.lifetime
            if lifetime is not None:
                await lifetime.wait_done()
            else:
                await trio.sleep_forever()
        self.disconnected = True
        return _DISCONNECT

    async def send(self, message: Message) -> None:
        t = message["type"]
        out = self.out
        if self.disconnected and not out.is_complete:
            raise ClientDisconnected("the client disconnected")
        if t == "http.response.body":
            if not self.started:
                raise RuntimeError("ASGI 'http.response.body' sent before 'http.response.start'")
            if out.is_complete or self.trailers_pending:
                raise RuntimeError("ASGI 'http.response.body' sent after the response body "
                                   "ended")
            data = message.get("body", b"")
            if type(data) is not bytes:
                if not isinstance(data, bytes | bytearray | memoryview):
                    raise TypeError(f"ASGI response body must be bytes, got "
                                    f"{type(data).__name__}")
                data = bytes(data)
            try:
                more = message.get("more_body", False)
                if more or self.trailers_expected:
                    # With trailers to follow, the last body message does not complete the
                    # response: it is sent chunked, so it starts now (an app that set
                    # Content-Length gets no trailers: HTTP/1.1 cannot carry them then).
                    if data:
                        await out.send(data)
                    elif not self.resp.has_started:
                        await out.start()
                    if not more:
                        self.trailers_pending = True
                else:
                    await out.complete(data)
            except ClientDisconnected:
                self.disconnected = True
                raise
        elif t == "http.response.start":
            if self.started:
                raise RuntimeError("ASGI 'http.response.start' sent twice")
            status = message["status"]
            if type(status) is not int:
                if not isinstance(status, int) or isinstance(status, bool):
                    raise TypeError(f"ASGI response status must be an int, got {status!r}")
                status = int(status)  # HTTPStatus and other int enums
            headers = _byte_pairs(message.get("headers", ()), "response header")
            resp = self.resp
            try:
                resp.status = status
            except FeatureStateError:
                raise RuntimeError("ASGI response started after the response was already sent "
                                   "by the server") from None
            resp.headers = headers
            self.trailers_expected = bool(message.get("trailers", False))
            self.started = True
        elif t == "http.response.trailers":
            if not self.trailers_pending:
                raise RuntimeError("ASGI 'http.response.trailers' needs 'trailers': True in "
                                   "'http.response.start' and the body sent to its end")
            self.trailers += [(name.lower(), value) for name, value
                              in _byte_pairs(message.get("headers", ()), "trailer")]
            if not message.get("more_trailers", False):
                self.trailers_pending = False
                try:
                    await out.complete(b"", trailers=self.trailers)
                except ClientDisconnected:
                    self.disconnected = True
                    raise
        elif t == "http.response.early_hint":
            if self.started and self.resp.has_started:
                raise RuntimeError("ASGI 'http.response.early_hint' after the response started")
            links = message.get("links", ())
            headers = []
            for link in links:
                if type(link) is not bytes:
                    raise TypeError(f"ASGI early hint links must be bytes, got {link!r}")
                headers.append((b"link", link))
            if self.hints is not None and headers:
                await self.hints.send_early_hints(headers)
        elif t == "http.response.pathsend":
            if not self.started or out.is_complete:
                raise RuntimeError("ASGI 'http.response.pathsend' needs a started, "
                                   "incomplete response")
            path = message["path"]
            if not os.path.isabs(path):
                raise ValueError(f"http.response.pathsend path must be absolute, got {path!r}")
            await out.send_file(path)
            await out.complete()
        else:
            raise RuntimeError(f"unexpected ASGI message type {t!r} for an HTTP request")


class _WebSocketCycle:
    """``receive`` and ``send`` for one WebSocket (ASGI spec 2.4)."""

    __slots__ = ("answered", "connected", "disconnect", "lifetime", "out", "resp", "state", "ws")

    def __init__(self, ws: WebSocketFeature, resp: ResponseFeature, out: ResponseBodyFeature,
                 lifetime: RequestLifetimeFeature | None) -> None:
        self.ws = ws
        self.resp = resp
        self.out = out
        self.lifetime = lifetime
        # connecting → open (accepted) | response (refusing with an HTTP response) | denied
        self.state = "connecting"
        self.connected = False  # websocket.connect was received
        self.answered: trio.Event | None = None  # set once accepted or refused
        self.disconnect: Message | None = None

    async def receive(self) -> Message:
        if not self.connected:
            self.connected = True
            return {"type": "websocket.connect"}
        if self.disconnect is not None:
            return self.disconnect
        while self.state == "open" or self.state == "closed":
            try:
                data = await self.ws.receive()
            except WebSocketDisconnected as exc:
                self.disconnect = {"type": "websocket.disconnect", "code": exc.code,
                                   "reason": exc.reason}
                return self.disconnect
            if self.state == "closed":
                continue  # after the app's own close: only the peer's reply matters
            if type(data) is str:
                return {"type": "websocket.receive", "text": data}
            return {"type": "websocket.receive", "bytes": data}
        if self.state == "connecting":
            # Not answered yet: another task of the app will accept or refuse; then receive
            # what follows (an accept that failed, the client being gone, ends in 1006).
            if self.answered is None:
                self.answered = trio.Event()
            await self.answered.wait()
            if self.state != "connecting":
                return await self.receive()
        else:
            await trio.lowlevel.checkpoint()
        self.disconnect = {"type": "websocket.disconnect", "code": 1006, "reason": ""}
        return self.disconnect

    def _answer(self) -> None:
        if self.answered is not None:
            self.answered.set()

    async def send(self, message: Message) -> None:
        t = message["type"]
        state = self.state
        if t == "websocket.send":
            if state != "open":
                if state == "closed":
                    raise ClientDisconnected("the WebSocket is closed")
                raise RuntimeError("ASGI 'websocket.send' before 'websocket.accept'")
            text = message.get("text")
            data = message.get("bytes")
            if (text is None) == (data is None):
                raise RuntimeError("ASGI 'websocket.send' needs exactly one of 'bytes' and "
                                   "'text'")
            if text is not None:
                if type(text) is not str:
                    raise TypeError(f"ASGI websocket.send 'text' must be str, got "
                                    f"{type(text).__name__}")
                await self.ws.send(text)
            else:
                if not isinstance(data, bytes | bytearray | memoryview):
                    raise TypeError(f"ASGI websocket.send 'bytes' must be bytes, got "
                                    f"{type(data).__name__}")
                await self.ws.send(bytes(data))
        elif t == "websocket.accept":
            if state != "connecting":
                raise RuntimeError(f"ASGI 'websocket.accept' when the WebSocket is {state}")
            headers = _byte_pairs(message.get("headers", ()), "websocket.accept header")
            subprotocol = message.get("subprotocol")
            if subprotocol is not None and type(subprotocol) is not str:
                raise TypeError(f"ASGI websocket.accept 'subprotocol' must be str, got "
                                f"{subprotocol!r}")
            try:
                await self.ws.accept(subprotocol, headers)
                self.state = "open"
            finally:
                self._answer()
        elif t == "websocket.close":
            code = message.get("code", 1000)
            code = 1000 if code is None else code
            reason = message.get("reason") or ""
            if state == "connecting":
                # Refused before accept: HTTP 403 (ASGI spec).
                self.state = "denied"
                self._answer()
                self.resp.status = 403
                await self.out.complete()
            elif state == "open":
                if isinstance(code, bool) or not isinstance(code, int):
                    raise TypeError(f"ASGI websocket.close 'code' must be an int, got {code!r}")
                self.state = "closed"
                await self.ws.close(code, str(reason))
            elif state == "response":
                raise RuntimeError("ASGI 'websocket.close' during a 'websocket.http.response'")
            # A second close, or one after the peer's: nothing left to do.
        elif t == "websocket.http.response.start":
            if state != "connecting":
                raise RuntimeError(f"ASGI 'websocket.http.response.start' when the WebSocket "
                                   f"is {state}")
            status = message["status"]
            if isinstance(status, bool) or not isinstance(status, int):
                raise TypeError(f"ASGI response status must be an int, got {status!r}")
            if status < 300:
                # Over HTTP/2 a 2xx to the extended CONNECT is the acceptance itself.
                raise RuntimeError(f"ASGI 'websocket.http.response.start' must refuse the "
                                   f"WebSocket (a status of 300 or more), got {status}")
            self.resp.status = int(status)
            self.resp.headers = _byte_pairs(message.get("headers", ()), "response header")
            self.state = "response"
            self._answer()
        elif t == "websocket.http.response.body":
            if state != "response" or self.out.is_complete:
                raise RuntimeError("ASGI 'websocket.http.response.body' without a started, "
                                   "incomplete 'websocket.http.response'")
            data = message.get("body", b"")
            if not isinstance(data, bytes | bytearray | memoryview):
                raise TypeError(f"ASGI response body must be bytes, got {type(data).__name__}")
            if message.get("more_body", False):
                await self.out.send(bytes(data))
            else:
                await self.out.complete(bytes(data))
        else:
            raise RuntimeError(f"unexpected ASGI message type {t!r} for a WebSocket")
