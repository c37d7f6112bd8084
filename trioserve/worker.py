"""The worker side of ``trioserve --workers N`` and ``--reload``: ``python -m trioserve.worker FD``.

A worker is started by the supervisor (:mod:`trioserve.supervisor`) and never by hand. ``FD`` is
its end of a Unix stream socket pair, the *channel*:

- supervisor → worker, once, before anything else: a 4-byte big-endian length and a pickled
  :class:`WorkerSetup` (the application spec, the :class:`~trioserve.config.Config` whose binds
  are the listening sockets the worker inherited, and the worker's limits). Only the supervisor
  writes there, so unpickling it is safe.
- worker → supervisor: JSON lines (never pickle: the supervisor does not trust code the
  application runs), each an object with a ``t`` (type):

  - ``{"t": "hb", "m": SNAPSHOT}``: a heartbeat, every :attr:`WorkerSetup.heartbeat_interval`
    seconds from a Trio task, so an event loop blocked by the application stops them; ``m`` is
    :meth:`trioserve.metrics.Metrics.snapshot` (absent when metrics are off).
  - ``{"t": "ready"}``: the server is listening on the inherited sockets.
  - ``{"t": "retiring", "requests": N}``: ``--max-requests`` reached; the worker is draining.
  - ``{"t": "error", "message": TEXT}``: start-up failed (the app could not be imported, its
    start-up failed, a socket could not be used); the worker then exits with code 1.
  - ``{"t": "bye", "m": SNAPSHOT}``: the server stopped; last metrics before a clean exit.

Signals: SIGTERM begins a graceful drain (again: nothing more), SIGQUIT cancels in-flight
requests at once; while the application is being imported, both still have their default
action (the process ends). SIGINT and SIGHUP do nothing: a terminal's Ctrl-C reaches the whole
process group and the supervisor decides what the workers do. SIGTTIN and SIGTTOU do nothing
either, except when stdin is a terminal (``--reload``), where they keep their job-control
default. These are Python handlers, not ``SIG_IGN``, so the application's own child processes
start with the default dispositions (``SIG_IGN`` would survive their ``exec``). Once the event
loop is over, all six are ignored: a late signal cannot kill a worker that is exiting cleanly.

When the channel reaches end of file (the supervisor is gone, even by ``kill -9``) the worker
drains and exits: it outlives its supervisor by its drain and the application's shutdown at
most. A thread watches for that from before the application's import (which may take long or
hang), sending the worker SIGTERM: during the import that ends it, later it is a drain.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import select
import signal
import socket
import struct
import sys
import threading
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

import trio

from .config import Bind, Config, ConfigError
from .features import Application, LifespanFailure
from .listeners import ListenError
from .loading import AppLoadError, AppSpec
from .logs import setup_cli_logging
from .metrics import Metrics
from .server import serve

__all__ = ["WorkerSetup", "encode_setup", "main"]

log = logging.getLogger("trioserve.worker")

_LENGTH = struct.Struct(">I")
MAX_SETUP_SIZE = 16 * 1024 * 1024
RETIRE_CHECK_INTERVAL = 0.05  # seconds between --max-requests checks (an attribute read)


@dataclass(frozen=True, slots=True)
class WorkerSetup:
    """What the supervisor tells a worker.

    - ``spec``: the application to load (:class:`~trioserve.loading.AppSpec`).
    - ``config``: the server's configuration; ``binds`` are ``Bind.from_fd`` of the inherited
      listening sockets and ``admin_bind`` is ``None`` (the supervisor serves it).
    - ``heartbeat_interval``: seconds between heartbeats.
    - ``max_requests``: requests after which the worker retires (jitter already added);
      ``None``: never.
    - ``metrics``: count requests and send the counts with each heartbeat.
    """

    spec: AppSpec
    config: Config
    heartbeat_interval: float = 1.0
    max_requests: int | None = None
    metrics: bool = False


def encode_setup(setup: WorkerSetup) -> bytes:
    """The bytes the supervisor writes to a new worker's channel."""
    payload = pickle.dumps(setup, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(payload)) + payload


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    chunks: list[bytes] = []
    while n:
        chunk = sock.recv(min(n, 65536))
        if not chunk:
            raise EOFError("the supervisor closed the channel during set-up")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _read_setup(sock: socket.socket) -> WorkerSetup:
    """Read the set-up (blocking). Raises :class:`EOFError` or :class:`ValueError`."""
    (size,) = _LENGTH.unpack(_read_exactly(sock, _LENGTH.size))
    if size > MAX_SETUP_SIZE:
        raise ValueError(f"set-up of {size} bytes is too large")
    setup = pickle.loads(_read_exactly(sock, size))  # written by our supervisor
    if not isinstance(setup, WorkerSetup):
        raise ValueError(f"expected a WorkerSetup, got {type(setup).__name__}")
    return setup


def _line(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def _send_blocking(sock: socket.socket, message: dict[str, Any]) -> None:
    """Send one message outside Trio (start-up errors); a gone supervisor is ignored."""
    try:
        sock.sendall(_line(message))
    except OSError:
        pass


class _Worker:
    """One worker's Trio side: the server, heartbeats, signals and the retirement check."""

    def __init__(self, app: Application, setup: WorkerSetup, channel: socket.socket,
                 early: _EarlySignals) -> None:
        self.app = app
        self.setup = setup
        self.early = early
        self.stream = trio.SocketStream(trio.socket.from_stdlib_socket(channel))
        self.send_lock = trio.Lock()
        self.shutdown = trio.Event()
        self.force = trio.Event()  # SIGQUIT: serve() cancels in-flight requests
        self.metrics = Metrics() if setup.metrics or setup.max_requests is not None else None
        self.failure: str | None = None
        self.listening = _Listening()

    async def send(self, message: dict[str, Any]) -> None:
        """Send one message; a supervisor that is gone makes the worker drain."""
        try:
            async with self.send_lock:
                await self.stream.send_all(_line(message))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.supervisor_gone()

    def supervisor_gone(self) -> None:
        if not self.shutdown.is_set():
            log.warning("worker %d: the supervisor is gone; shutting down gracefully",
                        os.getpid())
            self.shutdown.set()

    def with_metrics(self, message: dict[str, Any]) -> dict[str, Any]:
        if self.metrics is not None and self.setup.metrics:
            message["m"] = self.metrics.snapshot()
        return message

    async def heartbeats(self) -> None:
        while True:
            await self.send(self.with_metrics({"t": "hb"}))
            await trio.sleep(self.setup.heartbeat_interval)

    async def watch_channel(self) -> None:
        """The supervisor never writes after the set-up: end of file means it is gone."""
        try:
            while await self.stream.receive_some(4096):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        self.supervisor_gone()

    async def watch_signals(self, *, task_status: trio.TaskStatus[None]) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGQUIT) as signals:
            # From here on the receiver has them; those that came before it did are not lost.
            for signum in self.early.take():
                self.on_signal(signum)
            task_status.started()
            async for signum in signals:
                self.on_signal(signum)

    def on_signal(self, signum: int) -> None:
        if signum == signal.SIGTERM:
            log.debug("worker %d: SIGTERM: draining", os.getpid())
            self.shutdown.set()
        else:
            log.warning("worker %d: SIGQUIT: cancelling in-flight requests now", os.getpid())
            self.shutdown.set()
            self.force.set()

    async def retire_after(self, limit: int) -> None:
        metrics = self.metrics
        assert metrics is not None
        # Polled: the server counts with plain additions and signals nothing.
        while metrics.requests < limit:  # noqa: ASYNC110
            await trio.sleep(RETIRE_CHECK_INTERVAL)
        log.info("worker %d served %d requests (--max-requests): retiring", os.getpid(),
                 metrics.requests)
        await self.send({"t": "retiring", "requests": metrics.requests})
        self.shutdown.set()

    async def run_server(self) -> None:
        """``serve()`` until drained; a start-up failure (the app's, a socket's, the TLS
        files') is kept in :attr:`failure`."""
        try:
            await serve(self.app, self.setup.config, shutdown=self.shutdown, force=self.force,
                        install_signal_handlers=False, metrics=self.metrics,
                        task_status=self.listening)
        except LifespanFailure as exc:
            self.failure = f"application start-up failed: {exc}"
        except ListenError as exc:
            self.failure = exc.strerror or str(exc)
        except ConfigError as exc:  # a certificate that can no longer be read, say
            self.failure = str(exc)

    async def announce(self) -> None:
        """Tell the supervisor once listening; then watch ``--max-requests``."""
        await self.listening.event.wait()
        await self.send({"t": "ready"})
        if self.setup.max_requests is not None:
            await self.retire_after(self.setup.max_requests)

    async def run(self) -> int:
        """Serve until drained; the exit code (1 when start-up failed)."""
        async with trio.open_nursery() as outer:
            await outer.start(self.watch_signals)
            outer.start_soon(self.heartbeats)
            outer.start_soon(self.watch_channel)
            async with trio.open_nursery() as inner:
                inner.start_soon(self.announce)
                await self.run_server()
                inner.cancel_scope.cancel()
            if self.failure is not None:
                await self.send({"t": "error", "message": self.failure})
            else:
                await self.send(self.with_metrics({"t": "bye"}))
            outer.cancel_scope.cancel()
        return 1 if self.failure is not None else 0


class _Listening(trio.TaskStatus[list[str]]):
    """The ``task_status`` given to :func:`serve`: an event set once it listens."""

    def __init__(self) -> None:
        self.event = trio.Event()

    def started(self, value: list[str] | None = None) -> None:
        self.event.set()


def _do_nothing(signum: int, frame: FrameType | None) -> None:
    """The handler of the signals the supervisor decides about (see the module's text)."""


def _quiet_signals() -> None:
    """SIGINT and SIGHUP do nothing, nor do SIGTTIN and SIGTTOU unless stdin is a terminal."""
    quiet = [signal.SIGINT, signal.SIGHUP]
    try:
        terminal = os.isatty(0)
    except OSError:
        terminal = False
    # With a handler, a read from the terminal by a background process group would fail with
    # EINTR, be retried and raise SIGTTIN again, forever; the default stops the worker, as
    # job control does for any program (--reload's debugger prompt).
    if not terminal:
        quiet += [signal.SIGTTIN, signal.SIGTTOU]
    for signum in quiet:
        signal.signal(signum, _do_nothing)


def _ignore_late_signals() -> None:
    """After the event loop: a signal can only interrupt the exit (Python handlers are reset
    to the default actions while the interpreter finalizes; ``SIG_IGN`` is not)."""
    for signum in (signal.SIGTERM, signal.SIGQUIT, signal.SIGINT, signal.SIGHUP,
                   signal.SIGTTIN, signal.SIGTTOU):
        signal.signal(signum, signal.SIG_IGN)


class _EarlySignals:
    """SIGTERM and SIGQUIT from the end of the application's import until the worker's
    signal receiver takes over (and again after it, until :func:`_ignore_late_signals`):
    kept for the receiver, never the default action."""

    def __init__(self) -> None:
        self._received: list[int] = []
        for signum in (signal.SIGTERM, signal.SIGQUIT):
            signal.signal(signum, self._handler)

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self._received.append(signum)

    def take(self) -> list[int]:
        """The signals received so far, forgotten here."""
        received, self._received = self._received, []
        return received


def _end_with_supervisor(channel: socket.socket) -> None:
    """Start a daemon thread that sends this process SIGTERM once ``channel`` reaches end of
    file (the supervisor is gone). The thread polls a duplicate of the descriptor, so the
    channel's own may be closed meanwhile. The supervisor never writes after the set-up: if
    it does, the thread stops watching rather than spin."""
    sock = socket.socket(fileno=os.dup(channel.fileno()))  # dup(): not inherited

    def watch() -> None:
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN | select.POLLRDHUP)
        while True:
            poller.poll()
            try:
                data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                return
            os.kill(os.getpid(), signal.SIGTERM)
            return

    threading.Thread(target=watch, name="trioserve-supervisor-watch", daemon=True).start()


def main(argv: Sequence[str] | None = None) -> int:
    """Run a worker; returns its exit code (0 after a drain, 1 when start-up failed, 2 when
    started without a supervisor's channel)."""
    _quiet_signals()
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        fd = int(args[0])
        channel = socket.socket(fileno=fd)
    except (IndexError, ValueError, OSError):
        print("trioserve.worker: started by the trioserve supervisor only "
              "(use 'trioserve APP --workers N')", file=sys.stderr)
        return 2
    channel.set_inheritable(False)
    try:
        setup = _read_setup(channel)
    except Exception as exc:  # one line, whatever went wrong
        print(f"trioserve.worker: bad set-up from the supervisor: {exc!r}", file=sys.stderr)
        return 2
    setup_cli_logging(setup.spec.log_level)
    for bind in setup.config.binds:
        if bind.fd is not None:
            # the application's own child processes must not hold the listening sockets
            os.set_inheritable(bind.fd, False)
    _end_with_supervisor(channel)
    try:
        app = setup.spec.load()
    except AppLoadError as exc:
        _ignore_late_signals()
        if setup.spec.log_level == "debug" and exc.__cause__ is not None:
            traceback.print_exception(exc.__cause__)
        _send_blocking(channel, {"t": "error", "message": str(exc)})
        return 1
    early = _EarlySignals()
    try:
        return trio.run(_Worker(app, setup, channel, early).run)
    finally:
        _ignore_late_signals()


def worker_config(config: Config, fds: Sequence[int]) -> Config:
    """``config`` for a worker serving the inherited sockets ``fds``: their binds replace
    ``config.binds`` and the admin endpoint is off (the supervisor serves it)."""
    return dataclasses.replace(config, binds=tuple(Bind.from_fd(fd) for fd in fds),
                               admin_bind=None)


if __name__ == "__main__":
    # Run as trioserve.worker, not __main__: the set-up unpickles trioserve.worker's classes.
    from trioserve.worker import main as _main

    sys.exit(_main())
