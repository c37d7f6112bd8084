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

Event loop, ``loop``: ``"trio"`` calls the application in the server's Trio task, which is
right for every app built on anyio (Starlette, FastAPI, Litestar) or on Trio.
``"asyncio-compat"`` runs it on asyncio inside Trio, through `trio-asyncio
<https://trio-asyncio.readthedocs.io>`_ (the ``asyncio`` extra): one asyncio loop is opened for
the server's lifetime (by :meth:`ASGIBridge.run_lifespan`), each call of the application is an
asyncio task on it (``asyncio.get_running_loop()``, ``create_task``, ``sleep``, queues,
``run_in_executor`` and asgiref's ``sync_to_async`` work), ``receive``/``send`` run back on the
Trio side, under the server's deadlines and limits, and a Trio cancellation (a deadline, a
shutdown) cancels the application's task. ``"auto"`` (the default) picks ``asyncio-compat`` for
an application built on an asyncio-only framework (:func:`asyncio_framework`: Django, Django
Channels, asgiref), else ``trio``. An application on ``trio`` that turns out to call asyncio
fails its requests with a 500 and one error naming ``--loop asyncio-compat``, not a traceback.

Lifespan, ``lifespan="auto"`` (the default): an app that raises before it first calls
``receive()``, or returns without answering, does not support lifespan and is served without
it; a ``lifespan.startup.failed`` message, or an exception after start-up began, fails start-up
with :class:`~trioserve.features.LifespanFailure`. ``"on"`` makes lifespan mandatory, ``"off"``
never runs it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
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

__all__ = ["LOOPS", "ASGIApp", "ASGIBridge", "asyncio_framework"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("trioserve.asgi")

LOOPS = ("auto", "trio", "asyncio-compat")

# Top-level packages of asyncio-only frameworks -> their names (see asyncio_framework).
_ASYNCIO_FRAMEWORKS = {"django": "Django", "channels": "Django Channels", "asgiref": "asgiref"}
_WRAPPED_ATTRIBUTES = ("app", "application", "asgi_app", "inner", "__wrapped__")


def asyncio_framework(app: object) -> str | None:
    """The asyncio-only framework ``app`` is built on (``"Django"``, ``"Django Channels"``,
    ``"asgiref"``), or ``None``: the modules of the app, its class, and of what it wraps
    (middleware keep the app they wrap in ``app``, ``application``, ``asgi_app``, ``inner`` or
    ``__wrapped__``), a few levels deep."""
    todo: list[object] = [app]
    seen: set[int] = set()
    while todo and len(seen) < 32:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        for candidate in (obj, type(obj)):
            module = getattr(candidate, "__module__", None)
            if isinstance(module, str):
                name = _ASYNCIO_FRAMEWORKS.get(module.partition(".")[0])
                if name is not None:
                    return name
        for attribute in _WRAPPED_ATTRIBUTES:
            try:
                inner = getattr(obj, attribute, None)
            except Exception:  # a property that fails: not a wrapped app
                continue
            if inner is not None and callable(inner):
                todo.append(inner)
    return None


def _trio_asyncio() -> Any:
    """The trio_asyncio module. Raises :class:`ValueError` naming the extra to install."""
    try:
        return importlib.import_module("trio_asyncio")
    except ImportError:
        raise ValueError("loop 'asyncio-compat' needs trio-asyncio: pip install "
                         "'trioserve[asyncio]'") from None


def _accept_any_executor(aio: Any, loop: Any) -> concurrent.futures.ThreadPoolExecutor:
    """Let ``loop`` (a trio-asyncio loop) run functions in any ``concurrent.futures``
    executor, as asyncio's own loops do: trio-asyncio takes only its ``TrioExecutor``, while
    asgiref's ``sync_to_async`` (Django's sync views, its ORM from async code) passes a
    ``ThreadPoolExecutor`` of its own. The default executor (``None``: ``asyncio.to_thread``,
    ``sync_to_async(thread_sensitive=False)``) is a thread pool too, returned to be shut
    down with the loop: trio-asyncio's runs the function in a Trio thread the caller cannot
    be cancelled out of, so a deadline would wait for the thread instead of cancelling the
    app's task."""
    own = loop.run_in_executor
    default = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="trioserve-asyncio")

    def run_in_executor(executor: Any, func: Any, *args: Any) -> Any:
        if isinstance(executor, aio.TrioExecutor):
            return own(executor, func, *args)
        pool = default if executor is None else executor
        return asyncio.wrap_future(pool.submit(func, *args), loop=loop)

    loop.run_in_executor = run_in_executor
    return default


_AIO_CLOSE_TIMEOUT = 5.0  # seconds the asyncio tasks left at shutdown get to end


def _log_asyncio_error(loop: Any, context: dict[str, Any]) -> None:
    """The asyncio loop's exception handler: log what asyncio reports (a task's exception
    nobody retrieved, a failed callback) as asyncio's own loops do. trio-asyncio's default
    raises it into the loop instead, which would end the loop, and every request with it."""
    exc = context.get("exception")
    # A request's leftover task ending because its client left (Django's listen_for_disconnect
    # after the request was cancelled) is not an error.
    quiet = isinstance(exc, ClientDisconnected) or type(exc).__name__ == "RequestAborted"
    log.log(logging.DEBUG if quiet else logging.ERROR, "asyncio: %s",
            context.get("message") or "unhandled error",
            exc_info=exc if isinstance(exc, BaseException) else None)


async def _cancel_all_tasks() -> None:
    """Cancel the asyncio tasks still running and wait for them, at most
    ``_AIO_CLOSE_TIMEOUT``, as ``asyncio.run`` does before it closes its loop: a task an app
    started (Django's request tasks outlive a cancelled request) gets its ``CancelledError``
    rather than being destroyed pending. Tasks still running then are logged."""
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=_AIO_CLOSE_TIMEOUT)
        if pending:
            log.warning("%d asyncio task(s) did not end within %gs of being cancelled at "
                        "shutdown: %s", len(pending), _AIO_CLOSE_TIMEOUT,
                        ", ".join(sorted(t.get_name() for t in pending)))


async def _guarded(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """The app's call as an asyncio task: a ``SystemExit`` or ``KeyboardInterrupt`` from it
    becomes an ordinary exception (the request's 500, as on Trio), since asyncio lets those
    two out of its loop, which would end the loop and every request with it."""
    try:
        await app(scope, receive, send)
    except (SystemExit, KeyboardInterrupt) as exc:
        raise RuntimeError(f"the ASGI application raised {exc!r}") from exc


def _from_asyncio(exc: BaseException) -> bool:
    """Whether ``exc`` is what asyncio code run on Trio ends with: asyncio's ``no running
    event loop``, Trio's refusal of an asyncio future awaited in a Trio task (``unrecognized
    yield message``), or any exception raised inside the asyncio package."""
    seen: set[int] = set()
    todo = [exc]
    while todo:  # the exception, those it groups (task groups, nurseries), its cause, context
        e = todo.pop()
        if id(e) in seen or len(seen) > 64:
            continue
        seen.add(id(e))
        if isinstance(e, RuntimeError) and "no running event loop" in str(e):
            return True
        if isinstance(e, TypeError) and "unrecognized yield message" in str(e):
            return True
        tb = e.__traceback__
        if tb is not None:
            while tb.tb_next is not None:
                tb = tb.tb_next
            if f"{os.sep}asyncio{os.sep}" in tb.tb_frame.f_code.co_filename:
                return True
        if isinstance(e, BaseExceptionGroup):
            todo.extend(e.exceptions)
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)
    return False


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

    def __init__(self, app: ASGIApp, *, lifespan: Literal["auto", "on", "off"] = "auto",
                 loop: Literal["auto", "trio", "asyncio-compat"] = "auto") -> None:
        if not callable(app):
            raise TypeError(f"ASGI application must be callable, got {app!r}")
        if lifespan not in ("auto", "on", "off"):
            raise ValueError(f"lifespan must be 'auto', 'on' or 'off', got {lifespan!r}")
        if loop not in LOOPS:
            raise ValueError(f"loop must be one of {', '.join(LOOPS)}, got {loop!r}")
        self.app = app
        self.lifespan = lifespan
        self.state: dict[str, Any] = {}
        self.lifespan_supported: bool | None = None
        #: The framework that made ``loop="auto"`` choose asyncio-compat (None: it did not).
        self.detected_framework: str | None = None
        if loop == "auto":
            self.detected_framework = asyncio_framework(app)
            loop = "asyncio-compat" if self.detected_framework else "trio"
            if self.detected_framework is not None:
                try:
                    _trio_asyncio()
                except ValueError:
                    raise ValueError(
                        f"this application is built on {self.detected_framework}, which runs "
                        "on asyncio: install trio-asyncio (pip install 'trioserve[asyncio]') "
                        "for loop 'asyncio-compat', or choose loop 'trio' to try without it"
                    ) from None
        #: The loop the application runs on: ``"trio"`` or ``"asyncio-compat"``.
        self.loop = loop
        self._aio: Any = _trio_asyncio() if loop == "asyncio-compat" else None
        self._aio_loop: Any = None  # the open trio-asyncio loop (asyncio-compat)
        self._asyncio_logged = False

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
        if not await self._call_request(scope, h.receive, h.send, resp, out):
            return
        if not out.is_complete and not h.disconnected:
            if resp.has_started or h.started:
                raise RuntimeError("ASGI application returned without completing the response "
                                   "(no final 'http.response.body' with more_body=False)")
            raise RuntimeError("ASGI application returned without sending a response")

    async def _call(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Call the application: in this Trio task, or as an asyncio task on the trio-asyncio
        loop (asyncio-compat), with ``receive`` and ``send`` run back on the Trio side."""
        aio = self._aio
        if aio is None:
            await self.app(scope, receive, send)
            return
        loop = self._aio_loop
        if loop is None or not loop.is_running():
            raise RuntimeError("loop 'asyncio-compat': no asyncio loop is running (the server "
                               "opens it in run_lifespan, before the first request)")
        await aio.aio_as_trio(_guarded, loop=loop)(
            self.app, scope, aio.trio_as_aio(receive, loop=loop),
            aio.trio_as_aio(send, loop=loop))

    async def _call_request(self, scope: Scope, receive: Receive, send: Send,
                            resp: ResponseFeature, out: ResponseBodyFeature) -> bool:
        """:meth:`_call` for an HTTP request or a WebSocket; False when the app, on loop
        'trio', called asyncio and was answered here (:meth:`_asyncio_required`). Its other
        exceptions propagate."""
        try:
            await self._call(scope, receive, send)
        except Exception as exc:
            if self._aio is not None or not _from_asyncio(exc):
                raise
            await self._asyncio_required(resp, out, exc)
            return False
        return True

    async def _asyncio_required(self, resp: ResponseFeature, out: ResponseBodyFeature,
                                exc: BaseException) -> None:
        """An application on loop 'trio' called asyncio: log why (at ERROR once, then at
        DEBUG) and answer 500 if nothing was sent yet (else raise: the response is cut)."""
        level = logging.DEBUG if self._asyncio_logged else logging.ERROR
        self._asyncio_logged = True
        log.log(level, "the ASGI application called asyncio (%s: %s) while running on Trio: it "
                "needs an asyncio loop; serve it with --loop asyncio-compat (pip install "
                "'trioserve[asyncio]'), or loop='asyncio-compat' for ASGIBridge",
                type(exc).__name__, exc)
        if out.is_complete:
            return  # answered already (a framework's error middleware sent its 500)
        if resp.has_started:
            raise exc  # the response is cut short, as for any exception
        resp.status = 500
        resp.headers = [(b"content-type", b"text/plain; charset=utf-8")]
        await out.complete(b"Internal Server Error\n")  # the why is for the log, not clients

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
        if not await self._call_request(scope, cycle.receive, cycle.send, cycle.resp,
                                        cycle.out):
            return
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
        """Run the ASGI lifespan protocol around the server's lifetime (see module docs); on
        loop 'asyncio-compat', inside the trio-asyncio loop the requests then use, open from
        before start-up until after shutdown.

        Raises :class:`LifespanFailure` when start-up fails."""
        if self._aio is None:
            await self._run_lifespan(stop, task_status)
            return
        async with self._aio.open_loop() as loop:
            pool = _accept_any_executor(self._aio, loop)
            loop.set_exception_handler(_log_asyncio_error)
            self._aio_loop = loop
            try:
                await self._run_lifespan(stop, task_status)
                # An app's lifespan may return once started (the spec allows it): the loop
                # stays open for the requests until the server stops.
                await stop.wait()
            finally:
                self._aio_loop = None
                if loop.is_running():  # (not if an app's SystemExit ended it)
                    with trio.CancelScope(shield=True) as cleanup:
                        cleanup.deadline = trio.current_time() + 2 * _AIO_CLOSE_TIMEOUT
                        await self._aio.aio_as_trio(_cancel_all_tasks, loop=loop)()
                pool.shutdown(wait=False, cancel_futures=True)

    async def _run_lifespan(self, stop: trio.Event, task_status: trio.TaskStatus[None]) -> None:
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
            await self._call(scope, receive, send)
        except LifespanFailure:
            raise
        except Exception as exc:
            if started:
                log.error("exception in ASGI lifespan during %s", phase, exc_info=exc)
            elif received_startup or self.lifespan == "on":
                hint = (" (the application called asyncio while running on Trio: serve it "
                        "with --loop asyncio-compat)"
                        if self._aio is None and _from_asyncio(exc) else "")
                raise LifespanFailure(f"{type(exc).__name__}: {exc}{hint}") from exc
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
