"""WSGI bridge (PEP 3333): serves a WSGI application on trioserve's request features.

Never through ASGI, never buffering whole bodies::

    from trioserve.bridges.wsgi import WSGIBridge
    await trioserve.serve(WSGIBridge(flask_app, threads=40), config)

How it works:

- Each request's application call runs in a worker thread, at most ``threads`` at once; the
  Trio loop never blocks on the application. What the thread needs from the connection (body
  pieces, writes) runs in the request's own Trio task, under its deadlines. Hand-offs between
  the loop and the threads are batched at the loop's I/O waits (see :class:`_WorkerPool`).
- ``wsgi.input`` streams the request body from the connection: every read the application makes
  pulls the next piece through the Trio loop, so a body is never held
  whole and a slow application slows the client down (TCP backpressure). The core's body limit
  applies (413).
- The response iterable is consumed in the worker thread and each chunk is written as it is
  yielded; ``write()`` writes at once. Headers go out with the first non-empty chunk (or at the
  end), as PEP 3333 requires. A list or tuple result is sent from the Trio side in one write with
  its Content-Length. ``close()`` on the iterable is always called, also when the client
  disconnects (writes then raise, which stops the iteration) or the application fails.
- ``wsgi.file_wrapper`` returns a :class:`FileWrapper`; when the application returns it for a
  regular file, the file is sent with ``os.sendfile`` on plain TCP.
- Errors: an exception before anything was sent gives 500 (traceback in the log); a missing
  ``start_response``, a non-bytes chunk, or more bytes than the declared Content-Length give a
  logged error and a closed connection, never a silently short response.
- WebSockets: WSGI has no way to hold a connection open, so a WebSocket handshake is answered
  ``400`` with a message saying so (and ``Connection: close``), without calling the app.

``environ`` follows PEP 3333: ``PATH_INFO`` is percent-decoded bytes as latin-1, ``SCRIPT_NAME``
is the root path (the configured one, with a forwarded prefix in front), its UTF-8 bytes as
latin-1 too, header names containing ``_`` are dropped (so ``X_Forwarded_For``
cannot pose as ``X-Forwarded-For``), repeated headers are joined with ``", "`` (``"; "`` for
``Cookie``; a repeated ``Content-Type`` keeps the last one); on HTTPS, ``HTTPS=on``.
"""

from __future__ import annotations

import collections
import contextvars
import io
import logging
import os
import queue
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from types import TracebackType
from typing import IO, Any
from urllib.parse import unquote_to_bytes

import outcome
import trio

from trioserve.features import (
    ClientDisconnected,
    ConnectionFeature,
    RequestBodyFeature,
    RequestBodyTooLarge,
    RequestContext,
    RequestFeature,
    ResponseBodyFeature,
    ResponseFeature,
    WebSocketFeature,
)

__all__ = ["FileWrapper", "WSGIApp", "WSGIBridge"]

log = logging.getLogger("trioserve.wsgi")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], None]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_READ_SIZE = 64 * 1024
_PHRASES = {int(s): s.phrase for s in HTTPStatus}


class _Job:
    """One application call handed to a worker thread.

    Threads talk to the request's Trio task through :attr:`inbox`, filled on the Trio thread by
    :func:`_deliver`: ``("call", (async_fn, args))`` asks the task to run ``async_fn`` and reply
    on :attr:`reply`; ``("done", outcome)`` ends the job. Calls are serialised by a lock, so
    even an application that writes from several threads gets one reply per call. Once the job
    is over (``finished``) or given up (``abandoned``), calls fail with ``ClientDisconnected``
    instead of reaching a task that no longer listens. The call machinery (lock, reply queue) is
    made on the first call: most jobs never call back."""

    __slots__ = ("abandoned", "always", "args", "finished", "fn", "inbox", "lock", "pool",
                 "reply", "run", "task", "waiting")

    def __init__(self, pool: _WorkerPool, run: _RunState, fn: Callable[..., Any],
                 args: tuple[Any, ...], always: bool) -> None:
        self.pool = pool
        self.run = run
        self.fn = fn
        self.args = args
        self.always = always  # run even if abandoned before a thread picked it up
        self.task = trio.lowlevel.current_task()
        self.reply: queue.SimpleQueue[outcome.Outcome[Any]] | None = None
        self.lock: threading.Lock | None = None
        self.inbox: collections.deque[tuple[str, Any]] = collections.deque()
        self.waiting = False
        self.abandoned = False
        self.finished = False

    def call(self, afn: Callable[..., Any], *args: Any) -> Any:
        """Thread side: run ``await afn(*args)`` in the request's own Trio task; its result or
        exception comes back here. Raises ``ClientDisconnected`` once the request is over."""
        if self.lock is None:
            with self.pool.mutex:
                if self.lock is None:
                    self.reply = queue.SimpleQueue()
                    self.lock = threading.Lock()
        assert self.reply is not None
        with self.lock:
            # This thread is about to wait for the Trio side: let another one take queued jobs.
            # (Before the call is sent: nothing may come between sending it and its reply.)
            self.pool.wake_if_queued()
            try:
                self.run.token.run_sync_soon(_deliver, self, ("call", (afn, args)))
            except trio.RunFinishedError:
                raise ClientDisconnected("the server has stopped") from None
            return self.reply.get().unwrap()

    def answer(self, result: outcome.Outcome[Any]) -> None:
        """Trio side: the reply to the pending :meth:`call`."""
        assert self.reply is not None
        self.reply.put(result)


def _ended() -> outcome.Error:
    """A fresh failure for a call or job that comes after its request ended (an outcome can be
    unwrapped only once)."""
    return outcome.Error(ClientDisconnected("the request is over"))


def _deliver(job: _Job, message: tuple[str, Any]) -> None:
    """Trio thread: hand ``message`` to the job's task, or refuse it if the job is over."""
    if job.finished or job.abandoned:
        if message[0] == "call":
            job.answer(_ended())
        return
    job.inbox.append(message)
    if job.waiting:
        job.waiting = False
        trio.lowlevel.reschedule(job.task)


class _RunState(trio.abc.Instrument):
    """The pool's state in one ``trio.run``: finished jobs waiting to be collected, the count of
    outstanding jobs, and the hooks into that run's loop. As an instrument it ties the pool to
    the loop's cycle: queued jobs go to a thread just before the loop waits for I/O (when it is
    about to release the GIL), finished ones are collected just after, so a burst of requests
    costs one thread wake-up and one loop wake-up, not one per request. Everything here but
    :attr:`done` (and ``notify_pending``, under the pool's mutex) is touched only by the run's
    own thread."""

    def __init__(self, pool: _WorkerPool, token: trio.lowlevel.TrioToken) -> None:
        self.pool = pool
        self.token = token
        self.done: collections.deque[tuple[_Job, outcome.Outcome[Any]]] = collections.deque()
        self.notify_pending = False  # a collect() is scheduled on the loop
        self.outstanding = 0  # jobs queued or running
        self.lot = trio.lowlevel.ParkingLot()
        self.ticker_parked = False

    # Instrument hooks: they must never raise (Trio would drop the instrument).
    def before_io_wait(self, timeout: float) -> None:
        if self.pool.queue:
            self.pool.wake(only_if_none_awake=True)

    def after_io_wait(self, timeout: float) -> None:
        if self.done:
            self.collect()

    def collect(self) -> None:
        """Deliver every finished job to its task."""
        self.notify_pending = False  # before draining: a later notice then finds work or none
        done = self.done
        while done:
            job, result = done.popleft()
            self.outstanding -= 1
            _deliver(job, ("done", result))

    async def tick(self) -> None:
        """While jobs wait in the queue or results wait here: collect the results and, when the
        queue made no progress for a tick (the awake threads are blocked), wake another thread.
        Parked otherwise, so a long request on its own costs no wake-ups."""
        pool = self.pool
        seen = pool.taken
        try:
            while True:
                if not pool.queue and not self.done:
                    self.ticker_parked = True
                    await self.lot.park()
                await trio.sleep(pool.TICK)
                if self.done:
                    self.collect()
                if pool.queue and pool.taken == seen:
                    pool.wake()
                seen = pool.taken
        finally:
            pool.unbind(self)

    def job_queued(self) -> None:
        if self.ticker_parked:
            self.ticker_parked = False
            self.lot.unpark_all()


class _WorkerPool:
    """At most ``size`` daemon threads running application calls, started as needed.

    Jobs are queued on the Trio thread and taken by awake threads in order; an idle thread sleeps
    on its own lock until woken. The pool keeps as few threads awake as keep the queue moving:
    one is woken when jobs wait and none is awake; another when a thread blocks on the Trio side
    (a body read, a streamed write) or when the queue made no progress for a tick (an application
    blocked in I/O). Finished jobs are collected in batches: after every I/O wait of the loop,
    on a tick while jobs wait, and when a thread goes idle (which wakes the loop). A thread
    holding the GIL never has to hand it to the loop per request, which is what makes this
    cheaper than one ``trio.to_thread`` round trip per call.

    The async operations a thread asks for run in the calling task itself, so its cancel scopes
    apply. Threads outlive a ``trio.run`` and serve every run that uses the pool (one
    :class:`_RunState` per run, even for runs in several threads at once); a job abandoned
    before a thread took it is skipped. A thread that cannot be started is logged and the pool
    goes on with the threads it has."""

    TICK = 0.001  # seconds between progress checks while jobs wait

    def __init__(self, size: int) -> None:
        self.size = size
        self.mutex = threading.Lock()  # guards idle, awake, threads, runs, notify_pending
        self.queue: collections.deque[_Job] = collections.deque()  # waiting for a thread
        self.idle: list[threading.Lock] = []  # the wake locks of sleeping threads, LIFO
        self.threads = 0
        self.awake = 0  # threads not sleeping
        self.taken = 0  # jobs taken so far: the queue's progress
        self.runs: dict[trio.lowlevel.TrioToken, _RunState] = {}

    # ------------------------------------------------------------------ Trio thread

    def _state(self) -> _RunState:
        """This run's state, made (with its instrument and ticker) on first use."""
        token = trio.lowlevel.current_trio_token()
        state = self.runs.get(token)
        if state is None:
            state = _RunState(self, token)
            trio.lowlevel.add_instrument(state)
            trio.lowlevel.spawn_system_task(state.tick, name="trioserve-wsgi-ticker")
            with self.mutex:
                self.runs[token] = state
        return state

    def unbind(self, state: _RunState) -> None:
        """The run is over: forget its state (results still to come are dropped)."""
        with self.mutex:
            self.runs.pop(state.token, None)

    async def run(self, fn: Callable[..., Any], *args: Any, always: bool = False) -> Any:
        """Run ``fn(*args, job)`` in a worker thread; serve its ``job.call`` requests until it
        returns; return its result or raise its exception. If this task is cancelled, the job
        is abandoned: not started if still queued (unless ``always``), and its further calls
        raise ``ClientDisconnected``."""
        state = self._state()
        job = _Job(self, state, fn, args, always)
        state.outstanding += 1
        self.queue.append(job)
        state.job_queued()

        def abort(_: Any) -> trio.lowlevel.Abort:
            job.waiting = False
            job.abandoned = True
            return trio.lowlevel.Abort.SUCCEEDED

        try:
            while True:
                while not job.inbox:
                    job.waiting = True
                    await trio.lowlevel.wait_task_rescheduled(abort)
                kind, payload = job.inbox.popleft()
                if kind == "done":
                    return payload.unwrap()
                afn, fargs = payload
                try:
                    res: outcome.Outcome[Any] = outcome.Value(await afn(*fargs))
                except Exception as exc:
                    res = outcome.Error(exc)
                except BaseException:  # Cancelled, or a group holding it: the thread must not hang
                    job.abandoned = True
                    job.answer(_ended())
                    raise
                job.answer(res)
        finally:
            job.finished = True
            while job.inbox:  # calls that arrived with or after "done"
                if job.inbox.popleft()[0] == "call":
                    job.answer(_ended())

    # -------------------------------------------------------------------- any thread

    def wake(self, *, only_if_none_awake: bool = False) -> None:
        """Wake an idle thread, or start one if there is none and the pool is not full. Never
        raises: a thread that cannot be started is logged, and the jobs wait for the others."""
        with self.mutex:
            if only_if_none_awake and self.awake:
                return
            if self.idle:
                self.awake += 1
                self.idle.pop().release()
                return
            if self.threads >= self.size:
                return
            self.threads += 1
            self.awake += 1
            number = self.threads
        try:
            threading.Thread(target=self._work, args=(threading.Lock(),),
                             name=f"trioserve-wsgi-{number}", daemon=True).start()
        except Exception as exc:  # RuntimeError("can't start new thread"), MemoryError …
            with self.mutex:
                self.threads -= 1
                self.awake -= 1
            log.error("cannot start a WSGI worker thread (%d running): %s", self.threads, exc)

    def wake_if_queued(self) -> None:
        """Wake another thread if jobs wait (the caller is about to block)."""
        if self.queue:
            self.wake()

    # ---------------------------------------------------------------- worker threads

    def _next(self, wake: threading.Lock) -> _Job | None:
        """The next queued job, or ``None`` after registering this thread as idle (its wake
        lock is then held, so the caller sleeps on it until :meth:`wake` releases it). A thread
        going idle makes sure the results waiting in any run get collected."""
        with self.mutex:
            job: _Job | None
            try:
                job = self.queue.popleft()
            except IndexError:
                job = None
                wake.acquire()  # not blocking: the lock is free whenever the thread is awake
                self.awake -= 1
                self.idle.append(wake)
            else:
                self.taken += 1
                if len(self.runs) == 1:
                    # One run: its ticker keeps going while its results wait (see tick()).
                    return job
            notify = []
            for state in self.runs.values():
                # Going idle: every run's waiting results. Taking another run's job: this
                # run's ticker may be parked, so it is told now.
                if state.done and not state.notify_pending and (job is None
                                                                or state is not job.run):
                    state.notify_pending = True
                    notify.append(state)
        for state in notify:
            try:
                state.token.run_sync_soon(state.collect)
            except trio.RunFinishedError:
                pass  # that server has stopped; this thread serves the others
        return job

    def _work(self, wake: threading.Lock) -> None:
        while True:
            job = self._next(wake)
            if job is None:
                wake.acquire()  # sleep until woken
                wake.release()
                continue
            if job.abandoned and not job.always:
                result: outcome.Outcome[Any] = _ended()
            else:
                result = outcome.capture(_run_job, job)
                if isinstance(result, outcome.Error) and not isinstance(result.error, Exception):
                    # KeyboardInterrupt, SystemExit … from application code: a failed request,
                    # not a reason to stop the server.
                    err = RuntimeError(f"the WSGI application raised {result.error!r}")
                    err.__cause__ = result.error
                    result = outcome.Error(err)
            job.run.done.append((job, result))
            del job, result


def _run_job(job: _Job) -> Any:
    """Worker thread: the job's call, in a copy of the thread's own (empty) context, so a
    context variable one request sets is not seen by the next request this thread runs."""
    return contextvars.copy_context().run(job.fn, *job.args, job)


class FileWrapper:
    """``wsgi.file_wrapper``: iterates a file in blocks; served with ``sendfile`` when the
    application returns it unchanged for a regular file."""

    def __init__(self, filelike: IO[bytes], blksize: int = 64 * 1024) -> None:
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        while True:
            data = read(self.blksize)
            if not data:
                return
            yield data

    def fileno(self) -> int | None:
        """The file descriptor when the file is a regular file, else ``None``."""
        try:
            fd = self.filelike.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            return None
        try:
            return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None
        except OSError:
            return None


class _Input:
    """``wsgi.input``: the request body, pulled from the connection as the application reads.

    Reads raise :class:`~trioserve.features.ClientDisconnected` (an ``OSError``) when the client
    goes away or the server has already refused the body (413)."""

    __slots__ = ("_body", "_buf", "_eof", "job")

    def __init__(self, body: RequestBodyFeature) -> None:
        self.job: _Job | None = None  # set when the application call starts
        self._body = body
        self._buf = bytearray()
        self._eof = body.is_complete

    def _fill(self) -> bool:
        """Pull one more piece; False at the end of the body."""
        if self._eof:
            return False
        try:
            assert self.job is not None
            data = self.job.call(self._body.receive)
        except RequestBodyTooLarge as exc:
            self._eof = True
            raise ClientDisconnected(f"request body refused: {exc}") from exc
        if not data:
            self._eof = True
            return False
        self._buf += data
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            while self._fill():
                pass
            data = bytes(self._buf)
            self._buf.clear()
            return data
        while len(self._buf) < size and self._fill():
            pass
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    def readline(self, size: int | None = -1) -> bytes:
        limit = -1 if size is None else size
        start = 0
        while True:
            i = self._buf.find(b"\n", start)
            if i >= 0:
                end = i + 1
                break
            if 0 <= limit <= len(self._buf):
                end = limit
                break
            start = len(self._buf)
            if not self._fill():
                end = len(self._buf)
                break
        if 0 <= limit < end:
            end = limit
        data = bytes(self._buf[:end])
        del self._buf[:end]
        return data

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line


class _Errors:
    """``wsgi.errors``: text written by the application goes to the ``trioserve.wsgi`` log."""

    def write(self, text: str) -> None:
        text = text.rstrip("\n")
        if text:
            log.error("%s", text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pass


_ERRORS = _Errors()


class _Cycle:
    """One request's response state, shared by the worker thread and the Trio side."""

    __slots__ = ("headers", "headers_sent", "job", "out", "reason", "resp", "status")

    def __init__(self, resp: ResponseFeature, out: ResponseBodyFeature) -> None:
        self.job: _Job | None = None
        self.resp = resp
        self.out = out
        self.status: int | None = None
        self.reason: str | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_sent = False

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: ExcInfo | None = None) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # break the reference cycle (PEP 3333)
        elif self.status is not None:
            raise RuntimeError("start_response() called a second time without exc_info")
        parsed = _STATUSES.get(status) if type(status) is str else None
        if parsed is None:
            parsed = _parse_status(status)
        self.status, self.reason = parsed
        fields = _FIELDS
        out_headers = []
        for field in headers:
            # Only exact (str, str) tuples hit the cache: a str subclass or anything
            # unhashable takes the checked path every time.
            encoded = (fields.get(field) if type(field) is tuple and len(field) == 2
                       and type(field[0]) is str and type(field[1]) is str else None)
            if encoded is None:
                encoded = _encode_field(field)
            out_headers.append(encoded)
        self.headers = out_headers
        return self.write

    def _apply(self) -> None:
        """Trio side: move status and headers onto the response feature."""
        if self.status is None:
            raise RuntimeError("the WSGI application sent body data before calling "
                               "start_response()")
        resp = self.resp
        resp.status = self.status
        resp.reason = self.reason
        resp.headers = self.headers
        self.headers_sent = True

    async def _send(self, data: bytes) -> None:
        if not self.headers_sent:
            self._apply()
        await self.out.send(data)

    async def _finish(self, data: bytes = b"") -> None:
        """Trio side: end the response; ``data`` is its last (or only) piece."""
        if not self.headers_sent:
            self._apply()
        await self.out.complete(data)

    def write(self, data: bytes) -> None:
        """The ``write()`` callable (thread side)."""
        if type(data) is not bytes:
            raise TypeError(f"WSGI write() takes bytes, got {type(data).__name__}")
        if data:
            assert self.job is not None
            self.job.call(self._send, data)


# Apps send the same status lines and header fields again and again: remember their parsed or
# encoded forms (bounded; emptied when full). Plain dict reads and writes are atomic under the
# GIL, so worker threads share these without a lock.
_STATUSES: dict[str, tuple[int, str | None]] = {}
_FIELDS: dict[tuple[str, str], tuple[bytes, bytes]] = {}
_CACHE_MAX = 1024
_CACHE_FIELD_MAX = 256  # longer fields (cookies, tokens) are not remembered


def _parse_status(status: object) -> tuple[int, str | None]:
    """``(code, reason)`` of a WSGI status line; ``reason`` is ``None`` for the standard phrase
    (the server's cached status lines are used then). Raises :class:`ValueError`."""
    if type(status) is not str or len(status) < 4 or not status[:3].isdigit() \
            or status[3:4] not in (" ", ""):
        raise ValueError(f"WSGI status must be a string like '200 OK', got {status!r}")
    code = int(status[:3])
    reason = status[4:]
    parsed = (code, None if not reason or _PHRASES.get(code) == reason else reason)
    if len(_STATUSES) >= _CACHE_MAX:
        _STATUSES.clear()
    _STATUSES[status] = parsed
    return parsed


def _encode_field(field: Any) -> tuple[bytes, bytes]:
    """A WSGI header field ``(name, value)`` as latin-1 bytes. Raises :class:`TypeError` for
    anything but a pair of str, :class:`UnicodeEncodeError` for text beyond latin-1."""
    try:
        name, value = field
    except (TypeError, ValueError):
        raise TypeError(f"WSGI headers must be (name, value) pairs, got {field!r}") from None
    if type(name) is not str or type(value) is not str:
        raise TypeError(f"WSGI header names and values must be str, got {name!r}: {value!r}")
    encoded = (name.encode("latin-1"), value.encode("latin-1"))
    if type(field) is tuple and len(name) + len(value) <= _CACHE_FIELD_MAX:
        if len(_FIELDS) >= _CACHE_MAX:
            _FIELDS.clear()
        _FIELDS[field] = encoded
    return encoded


def _checked_chunk(chunk: object) -> bytes:
    """A response chunk, which PEP 3333 requires to be ``bytes``; else :class:`TypeError`."""
    if type(chunk) is not bytes:
        raise TypeError(f"WSGI response chunks must be bytes, got {type(chunk).__name__}")
    return chunk


_BASE_ENVIRON: dict[str, Any] = {
    "wsgi.version": (1, 0),
    "wsgi.errors": _ERRORS,
    "wsgi.multithread": True,
    "wsgi.multiprocess": False,
    "wsgi.run_once": False,
    "wsgi.input_terminated": True,
    "wsgi.file_wrapper": FileWrapper,
}
_PROTOCOLS = {"1.1": "HTTP/1.1", "1.0": "HTTP/1.0", "2": "HTTP/2"}
# Header name -> environ key ("" for names that are dropped), filled as names are seen.
_ENVIRON_KEYS: dict[bytes, str] = {b"content-type": "CONTENT_TYPE",
                                   b"content-length": "CONTENT_LENGTH"}
_ENVIRON_KEYS_MAX = 1024  # emptied (but for the two above) when full
_ENVIRON_NAME_MAX = 64  # longer names (clients choose them) are converted each time


def _environ_key(name: bytes) -> str:
    """The environ key for a (lower-case) header name; ``""`` if the name contains ``_``."""
    key = "" if b"_" in name else "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
    if len(name) <= _ENVIRON_NAME_MAX:
        if len(_ENVIRON_KEYS) >= _ENVIRON_KEYS_MAX:
            _ENVIRON_KEYS.clear()
            _ENVIRON_KEYS[b"content-type"] = "CONTENT_TYPE"
            _ENVIRON_KEYS[b"content-length"] = "CONTENT_LENGTH"
        _ENVIRON_KEYS[name] = key
    return key


class WSGIBridge:
    """Adapts a WSGI application to a trioserve application (see module docs).

    ``threads``: the most application calls running at once (worker threads).
    Raises :class:`TypeError` for an object that is not callable, :class:`ValueError` for a
    non-positive ``threads``.
    """

    def __init__(self, app: WSGIApp, *, threads: int = 40) -> None:
        if not callable(app):
            raise TypeError(f"WSGI application must be callable, got {app!r}")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        self.app = app
        self._websocket_warned = False
        self.threads = threads
        self.pool = _WorkerPool(threads)

    def environ(self, ctx: RequestContext) -> dict[str, Any]:
        """The PEP 3333 ``environ`` for a request (without ``wsgi.input``)."""
        features = ctx.features
        req = features[RequestFeature]
        conn = features.get(ConnectionFeature)
        raw_path = req.raw_path
        scheme = req.scheme
        env = _BASE_ENVIRON.copy()
        env["REQUEST_METHOD"] = req.method
        root_path = req.root_path
        # PEP 3333: bytes as latin-1, like PATH_INFO (a decoded "/caf\u00e9" prefix is the
        # UTF-8 bytes of its path, each a character)
        env["SCRIPT_NAME"] = (root_path if root_path.isascii()
                              else root_path.encode("utf-8").decode("latin-1"))
        env["PATH_INFO"] = (unquote_to_bytes(raw_path) if b"%" in raw_path
                            else raw_path).decode("latin-1")
        env["QUERY_STRING"] = req.query_string.decode("latin-1")
        env["SERVER_PROTOCOL"] = _PROTOCOLS.get(req.http_version) or f"HTTP/{req.http_version}"
        env["wsgi.url_scheme"] = scheme
        if scheme == "https":
            env["HTTPS"] = "on"  # the CGI convention many frameworks read
        keys = _ENVIRON_KEYS
        for name, value in req.headers:
            key = keys.get(name)
            if key is None:
                key = _environ_key(name)
            if not key:
                continue  # a name with "_": it would collide with the "-" spelling
            text = value.decode("latin-1")
            old = env.get(key)
            if old is None or key == "CONTENT_TYPE":  # a repeated Content-Type: the last one
                env[key] = text
            else:
                env[key] = old + ("; " if key == "HTTP_COOKIE" else ", ") + text
        local = conn.local if conn is not None else None
        if local is not None:
            env["SERVER_NAME"], env["SERVER_PORT"] = local[0], str(local[1])
        else:
            host_header = env.get("HTTP_HOST")
            default_port = "443" if scheme == "https" else "80"
            if host_header:
                host, sep, port = host_header.rpartition(":")
                if sep and port.isdigit():
                    env["SERVER_NAME"], env["SERVER_PORT"] = host, port
                else:
                    env["SERVER_NAME"], env["SERVER_PORT"] = host_header, default_port
            else:
                env["SERVER_NAME"], env["SERVER_PORT"] = "localhost", default_port
        peer = conn.peer if conn is not None else None
        if peer is not None:
            env["REMOTE_ADDR"], env["REMOTE_PORT"] = peer[0], str(peer[1])
        else:
            env["REMOTE_ADDR"] = ""
        return env

    async def __call__(self, ctx: RequestContext) -> None:
        features = ctx.features
        if WebSocketFeature in features:
            await self._refuse_websocket(ctx)
            return
        env = self.environ(ctx)
        body = features[RequestBodyFeature]
        env["wsgi.input"] = _Input(body)
        cycle = _Cycle(features[ResponseFeature], features[ResponseBodyFeature])
        result = await self.pool.run(self._run, env, cycle)
        if result is None:
            return
        # A list or tuple's bytes, or a file wrapper, handed back to finish on the Trio side.
        if type(result) is bytes:
            await cycle._finish(result)
            return
        if isinstance(result, FileWrapper):
            try:
                await self._send_file(result, cycle)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    # Application code (Django's request_finished, thread-local cleanup):
                    # in a worker thread, never on the Trio loop. Queued even if cancelled.
                    await self.pool.run(lambda _job: close(), always=True)
            return
        raise AssertionError(f"unexpected result {result!r}")  # pragma: no cover

    async def _refuse_websocket(self, ctx: RequestContext) -> None:
        path = ctx.features[RequestFeature].path
        # Once as a warning (a misconfiguration to notice), then at debug: clients decide
        # how often this happens.
        level = logging.DEBUG if self._websocket_warned else logging.WARNING
        self._websocket_warned = True
        log.log(level, "WebSocket request to %s refused: a WSGI application cannot accept "
                "WebSockets (serve an ASGI application for that)", path)
        response = ctx.features[ResponseFeature]
        response.status = 400
        response.headers = [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"connection", b"close")]
        await ctx.features[ResponseBodyFeature].complete(
            b"WebSocket requests are not supported: this server runs a WSGI application, "
            b"which cannot accept them.\n")

    def _run(self, env: dict[str, Any], cycle: _Cycle, job: _Job) -> Any:
        """Worker thread: call the application and stream its response. Returns the joined
        bytes of a list or tuple, or a :class:`FileWrapper`, for the Trio side to send, or
        ``None`` when done here."""
        cycle.job = env["wsgi.input"].job = job
        iterable = self.app(env, cycle.start_response)
        kind = type(iterable)
        if (kind is list or kind is tuple) and not cycle.headers_sent:
            # Sent whole from the Trio side, in one write with its Content-Length.
            return b"".join([_checked_chunk(chunk) for chunk in iterable])
        if kind is FileWrapper and not cycle.headers_sent and \
                iterable.fileno() is not None:  # type: ignore[attr-defined]
            return iterable
        try:
            for chunk in iterable:
                if _checked_chunk(chunk):
                    job.call(cycle._send, chunk)
            job.call(cycle._finish)
        finally:
            close = getattr(iterable, "close", None)
            if close is not None:
                close()
        return None

    async def _send_file(self, wrapper: FileWrapper, cycle: _Cycle) -> None:
        fd = wrapper.fileno()
        assert fd is not None
        filelike = wrapper.filelike
        offset = filelike.tell()
        size = os.fstat(fd).st_size
        count = max(size - offset, 0)
        for name, value in cycle.headers:
            if name.lower() == b"content-length" and value.strip().isdigit():
                count = min(count, int(value))
        cycle._apply()
        if count:
            await cycle.out.send_file(fd, offset, count)
        await cycle.out.complete()
