"""The supervisor of ``trioserve --workers N`` and ``--reload``: worker processes that heal.

:func:`supervise` runs a Trio program in the main process. It opens the listening sockets
itself (TCP, Unix, inherited descriptors, systemd's ``LISTEN_FDS``) and never imports the
application; it starts worker processes (``python -m trioserve.worker``, see
:mod:`trioserve.worker`) that inherit the sockets and serve them, and keeps them running:

- A worker that exits, crashes or is killed (even ``kill -9``) is replaced at once. A worker
  that exits before it is ready, is not ready within :attr:`Supervisor.start_timeout` of its
  start (then killed), or crashes within ``CRASH_WINDOW`` of becoming ready counts as a
  failed start: the next start waits 0.1 s, then 0.2 s, 0.4 s … up to 10 s (reset once a
  worker has been ready for ``CRASH_WINDOW``); a worker process that cannot even be started
  (``EMFILE`` …) too. At the very first start a worker that fails before it is ready stops
  everything instead (exit 1, the worker's one-line error on stderr): nothing would ever work.
- A worker silent for ``worker_timeout`` seconds (heartbeats come from its event loop, so a
  loop blocked by the application stops them) is killed with SIGKILL and replaced. Time
  during which the supervisor itself was stopped (SIGSTOP, a frozen cgroup) is not silence.
- What a worker sends is untrusted (the application runs there): a malformed message (bad
  JSON, too deep, a metrics snapshot of the wrong shape) gets the worker killed, and never
  reaches the merged metrics.
- Signals (Gunicorn's arbiter is the model): SIGTERM/SIGINT stop gracefully (workers drain
  within the graceful timeout, stragglers are killed after twice that plus 5 s, exit 0); a
  second one makes the workers cancel in-flight requests; SIGHUP reloads gracefully (new
  workers first, then the old ones drain once each new one has been ready; if one fails, the
  old ones keep serving); SIGTTIN/SIGTTOU add/remove a worker (never fewer than one; ignored
  with ``--reload``).
- ``--max-requests``: a worker that served its share says so, drains and exits 0; its
  replacement starts at once.
- ``--reload``: one worker, reloaded like SIGHUP when a Python file under the watched
  directories changes (watchfiles; if watching fails, an ERROR and no more watching).
- The admin endpoint (``Config.admin_bind``) is served here, over the merged metrics of the
  workers; systemd hears ``READY=1``, ``RELOADING=1``, ``STOPPING=1`` and ``WATCHDOG=1`` from
  the supervisor only (workers do not get ``NOTIFY_SOCKET`` or ``LISTEN_*``).

``docs/workers.md`` describes all of it for users.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, Literal

import trio

from . import systemd
from .admin import AdminApp
from .config import Config, ProcessConfig
from .listeners import BoundListener, ListenError, open_listeners
from .loading import AppSpec
from .metrics import check_snapshot, merge, retire
from .server import run_admin_endpoint, systemd_watchdog
from .worker import WorkerSetup, encode_setup, worker_config

__all__ = ["supervise"]

log = logging.getLogger("trioserve.supervisor")

BACKOFF_MIN = 0.1  # seconds before restarting after the first failed start; doubles each time
BACKOFF_MAX = 10.0
STOP_MARGIN = 5.0  # beyond twice the graceful timeout, before stragglers are killed
CHANNEL_DRAIN = 1.0  # after a worker exits, time to read what it wrote last
MAX_MESSAGE = 4 * 1024 * 1024  # bytes of one message from a worker
MAX_ERROR_TEXT = 2000
WATCH_TIMEOUT_MS = 300  # --reload: the watcher thread wakes up this often without changes
START_TIMEOUT_MIN = 60.0  # a worker not ready this long (or worker_timeout) after its start dies
CRASH_WINDOW = 5.0  # an unexpected exit this soon after becoming ready is a failed start

WorkerState = Literal["starting", "ready", "leaving"]


def supervise(spec: AppSpec, config: Config, process: ProcessConfig) -> int:
    """Run the supervisor until it is stopped; returns the exit code: 0 after a stop by
    signal, 1 when an address cannot be bound or the first workers cannot start (the reason on
    stderr, one line), 2 when ``--reload`` is asked for without watchfiles or a directory to
    watch is missing."""
    if process.reload:
        try:
            importlib.import_module("watchfiles")
        except ImportError:
            print("trioserve: error: --reload needs 'pip install trioserve[reload]'",
                  file=sys.stderr)
            return 2
        for directory in process.reload_dirs:
            if not os.path.isdir(directory):
                print(f"trioserve: error: --reload-dir {directory!r}: not a directory",
                      file=sys.stderr)
                return 2
    return trio.run(Supervisor(spec, config, process).run)


def _parse_message(line: bytes) -> dict[str, Any]:
    """One JSON line from a worker (see :mod:`trioserve.worker`), checked: an object whose
    ``t`` is a string; ``requests`` of ``retiring`` an integer; ``message`` of ``error`` a
    string. Raises ``ValueError`` (and whatever ``json.loads`` raises, ``RecursionError``
    included) otherwise. A metrics snapshot ``m`` that :func:`check_snapshot` refuses (another
    trioserve version after an upgrade and a SIGHUP, or damaged) is taken out and its reason
    left in ``bad_metrics``: the worker may serve all the same."""
    message = json.loads(line)
    if not isinstance(message, dict) or not isinstance(message.get("t"), str):
        raise ValueError("not an object with a type")
    if "m" in message:
        try:
            message["m"] = check_snapshot(message["m"])
        except ValueError as exc:
            del message["m"]
            message["bad_metrics"] = str(exc)[:200]
    kind = message["t"]
    if kind == "retiring" and (not isinstance(message.get("requests"), int)
                               or isinstance(message["requests"], bool)):
        raise ValueError("retiring without a number of requests")
    if kind == "error" and not isinstance(message.get("message"), str):
        raise ValueError("error without a message")
    return message


def _describe_exit(code: int) -> str:
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"was killed by {name}"


class _Worker:
    """The supervisor's view of one worker process."""

    def __init__(self, process: trio.Process, channel: trio.SocketStream, generation: int,
                 serial: int, max_requests: int | None) -> None:
        self.process = process
        self.serial = serial  # start order (pids wrap around)
        self.pid = process.pid
        self.channel = channel
        self.generation = generation
        self.max_requests = max_requests
        self.state: WorkerState = "starting"
        self.was_ready = False
        self.started_at = trio.current_time()
        self.ready_at: float | None = None
        self.stable = False  # ready for CRASH_WINDOW
        self.expected_exit = False  # asked to stop, or retiring: its exit is no failure
        self.finishing = False  # said its last word (bye, error): its server is over
        self.last_seen: float | None = None  # trio time of its last message
        self.snapshot: dict[str, Any] | None = None
        self.metrics_refused = False  # its snapshots do not pass check_snapshot (logged once)
        self.error: str | None = None
        self.exit_text: str | None = None  # "exited with code 1", once it exited
        self.channel_closed = trio.Event()

    @property
    def exited(self) -> bool:
        return self.exit_text is not None

    def terminate(self) -> None:
        """Ask the worker to drain and exit (SIGTERM)."""
        self.expected_exit = True
        self.state = "leaving"
        self.signal(signal.SIGTERM)

    def signal(self, signum: int) -> None:
        if self.process.returncode is None:
            try:
                self.process.send_signal(signum)
            except ProcessLookupError:
                pass


class Supervisor:
    """One supervisor run; see the module's description. Use :func:`supervise`."""

    def __init__(self, spec: AppSpec, config: Config, process: ProcessConfig) -> None:
        self.spec = spec
        self.config = config
        self.process = process
        self.target = 1 if process.reload else max(process.workers, 1)
        self.heartbeat_interval = min(1.0, process.worker_timeout / 4)
        self.start_timeout = max(START_TIMEOUT_MIN, process.worker_timeout)
        self.resumed_at = -float("inf")  # trio time the supervisor last woke from a stop
        self.workers: dict[int, _Worker] = {}
        self.listeners: list[BoundListener] = []
        self.listeners_closed = False
        self.generation = 0  # workers of this generation are the serving ones
        self.next_generation = 1
        self.booted = False
        self.boot_failure: str | None = None
        self.stopping = False
        self.exit_code = 0
        self.failed_starts = 0  # in a row
        self.next_start = -float("inf")  # trio time before which no worker starts (backoff)
        self.restarts = 0
        self.spawning = 0
        self.spawned = 0
        self.retired: dict[str, Any] | None = None  # metrics of workers that exited
        self.reload_scope: trio.CancelScope | None = None
        self.stopped = trio.Event()
        self.admin_stop = trio.Event()
        self.admin_done = trio.Event()
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        # systemd talks to this process only (see _notify); the workers get none of it.
        self.watchdog = systemd.watchdog_interval()
        self.environment = {k: v for k, v in os.environ.items()
                            if k not in systemd.ENVIRONMENT}

    # ------------------------------------------------------------------ helpers

    @property
    def nursery(self) -> trio.Nursery:
        assert self._nursery is not None
        return self._nursery

    def _poke(self) -> None:
        """Something changed: wake every :meth:`_wait_until`."""
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._changed.wait()

    def _active(self) -> list[_Worker]:
        """The workers that count towards the target: the current generation's, not leaving."""
        return [w for w in self.workers.values()
                if w.generation == self.generation and w.state != "leaving"]

    @staticmethod
    def _notify(state: str) -> None:
        """``sd_notify`` (nothing without ``NOTIFY_SOCKET``); the supervisor is the only
        process that talks to systemd (its admin endpoint's server does not either)."""
        systemd.notify(state)

    # ------------------------------------------------------------------ main

    async def run(self) -> int:
        """The whole run: bind, start the workers, supervise until stopped; the exit code."""
        signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU)
        with trio.open_signal_receiver(*signals) as receiver:
            scheme = "https" if self.config.tls is not None else "http"
            try:
                self.listeners = await open_listeners(self.config.binds, self.config.backlog,
                                                      scheme)
            except ListenError as exc:
                print(f"trioserve: error: {exc.strerror or exc}", file=sys.stderr)
                return 1
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._watch_signals, receiver)
                    if not await self._start_admin():
                        nursery.cancel_scope.cancel()
                        return 1
                    if self.watchdog is not None:
                        nursery.start_soon(systemd_watchdog, self.watchdog)
                    for bl in self.listeners:
                        log.info("trioserve supervisor %d listening on %s", os.getpid(), bl.url)
                    log.info("starting %d worker%s", self.target, "s" if self.target > 1 else "")
                    nursery.start_soon(self._manage)
                    await self._boot()
                    await self.stopped.wait()
                    self.admin_stop.set()  # the admin endpoint closes last
                    await self.admin_done.wait()
                    nursery.cancel_scope.cancel()
            finally:
                with trio.CancelScope(shield=True) as cleanup:
                    cleanup.deadline = trio.current_time() + 5
                    await self._close_listeners()
        log.info("trioserve supervisor stopped")
        return self.exit_code

    async def _start_admin(self) -> bool:
        """Serve the admin endpoint when configured; ``False`` (after the error) when its
        address cannot be bound."""
        bind = self.config.admin_bind
        if bind is None:
            self.admin_done.set()
            return True
        app = AdminApp(self._snapshot, self._ready, self._gauges,
                       draining=lambda: self.stopping)
        try:
            await self.nursery.start(run_admin_endpoint, app, bind, self.admin_stop,
                                     self.admin_done)
        except ListenError as exc:
            print(f"trioserve: error: {exc.strerror or exc}", file=sys.stderr)
            return False
        return True

    async def _boot(self) -> None:
        """Wait for the first generation: all ready (tell systemd), a failed start (stop,
        exit 1) or a stop request."""
        await self._wait_until(lambda: self.stopping or self.boot_failure is not None or
                               sum(w.state == "ready" for w in self._active()) >= self.target)
        if self.stopping:
            return
        if self.boot_failure is not None:
            print(f"trioserve: error: {self.boot_failure}", file=sys.stderr)
            self.exit_code = 1
            self._begin_stop()
            return
        self.booted = True
        pids = ", ".join(str(w.pid) for w in self._active())
        log.info("%d worker%s ready (%s)", self.target, "s" if self.target > 1 else "", pids)
        self._notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS={self._status()}")
        if self.process.reload:
            self.nursery.start_soon(self._watch_files)

    def _status(self) -> str:
        ready = sum(w.state == "ready" for w in self.workers.values())
        urls = ", ".join(bl.url for bl in self.listeners)
        return f"{ready} worker{'s' if ready != 1 else ''} ready; listening on {urls}"

    async def _close_listeners(self) -> None:
        if not self.listeners_closed:
            self.listeners_closed = True
            for bl in self.listeners:
                await bl.aclose()

    # ------------------------------------------------------------------ signals

    async def _watch_signals(self, receiver: AsyncIterator[int]) -> None:
        async for signum in receiver:
            name = signal.Signals(signum).name
            if signum in (signal.SIGTERM, signal.SIGINT):
                if not self.stopping:
                    log.info("received %s: stopping the workers gracefully (within %gs)", name,
                             self.config.timeouts.graceful)
                    self._begin_stop()
                else:
                    log.warning("received %s again: the workers cancel in-flight requests now",
                                name)
                    for w in list(self.workers.values()):
                        if not w.finishing:  # its requests are over: nothing to cancel
                            w.signal(signal.SIGQUIT)
            elif self.stopping:
                log.info("received %s while stopping: ignored", name)
            elif signum == signal.SIGHUP:
                self.request_reload("received SIGHUP")
            elif self.process.reload:
                log.info("received %s: ignored, --reload runs one worker", name)
            elif signum == signal.SIGTTIN:
                self.target += 1
                log.info("received SIGTTIN: %d workers wanted", self.target)
                self._poke()
            elif self.target > 1:
                self.target -= 1
                log.info("received SIGTTOU: %d worker%s wanted", self.target,
                         "s" if self.target > 1 else "")
                self._poke()
            else:
                log.warning("received SIGTTOU: ignored, one worker at least must run")

    def _begin_stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self._notify("STOPPING=1\nSTATUS=draining")
        if self.reload_scope is not None:
            self.reload_scope.cancel()
        for w in list(self.workers.values()):
            w.terminate()
        self._poke()
        self.nursery.start_soon(self._finish_stop)

    async def _finish_stop(self) -> None:
        """Close the listening sockets once no worker is being started, wait for the workers
        (graceful timeout twice: connections, then the app's shutdown, plus a margin), kill
        those left."""
        await self._wait_until(lambda: self.spawning == 0)
        await self._close_listeners()  # the workers' copies close as they begin draining
        grace = 2 * self.config.timeouts.graceful + STOP_MARGIN
        with trio.move_on_after(grace):
            await self._wait_until(lambda: not self.workers)
        for w in list(self.workers.values()):
            log.warning("worker %d did not stop within %gs: killing it", w.pid, grace)
            w.signal(signal.SIGKILL)
        await self._wait_until(lambda: not self.workers)
        self.stopped.set()

    # ------------------------------------------------------------------ the worker count

    async def _manage(self) -> None:
        """Keep :attr:`target` workers of the current generation: start the missing ones
        (after the backoff of failed starts), stop the extra ones (those not ready first,
        then the oldest)."""
        while not self.stopping and self.boot_failure is None:
            changed = self._changed
            active = self._active()
            if len(active) > self.target:
                victim = min(active, key=lambda w: (w.state == "ready", w.serial))
                log.info("stopping worker %d (%d wanted)", victim.pid, self.target)
                victim.terminate()
                continue
            if len(active) < self.target:
                wait = self.next_start - trio.current_time()
                if wait <= 0:
                    await self._spawn(None)
                    continue
                with trio.move_on_after(wait):
                    await changed.wait()
                continue
            await changed.wait()

    def _failed_start(self, reason: str, error: str | None = None, *,
                      fatal_at_boot: bool = True) -> None:
        """A worker of the serving generation could not start (``reason``; ``error``: what
        it said): back off; at the first start, stop with its error (unless not
        ``fatal_at_boot``: it had been ready)."""
        if not self.booted and fatal_at_boot:
            if self.boot_failure is None:
                self.boot_failure = error or reason
            return
        if error:
            reason = f"{reason}: {error}"
        self.failed_starts += 1
        delay = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** (self.failed_starts - 1))
        self.next_start = trio.current_time() + delay
        log.error("%s; next start in %.1fs (%d failed start%s in a row)", reason, delay,
                  self.failed_starts, "s" if self.failed_starts > 1 else "")

    async def _spawn(self, generation: int | None) -> _Worker | None:
        """Start a worker of ``generation`` (``None``: the serving one, as it is once the
        process exists); ``None`` if the process could not be started (logged) or the
        supervisor is stopping (its listening sockets may be closed)."""
        if self.stopping:
            return None
        limit = self.process.max_requests
        if limit is not None and self.process.max_requests_jitter:
            limit += random.randint(0, self.process.max_requests_jitter)
        setup = WorkerSetup(
            spec=self.spec,
            config=worker_config(self.config, [bl.listener.socket.fileno()
                                               for bl in self.listeners]),
            heartbeat_interval=self.heartbeat_interval,
            max_requests=limit,
            metrics=self.config.admin_bind is not None,
        )
        parent: socket.socket | None = None
        child: socket.socket | None = None
        self.spawning += 1
        try:
            # Out of descriptors (EMFILE, ENFILE) or processes (EAGAIN): a failed start.
            parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            # A few kilobytes: the socket buffer takes them before the worker reads.
            parent.sendall(encode_setup(setup))
            fds = [bl.listener.socket.fileno() for bl in self.listeners] + [child.fileno()]
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "trioserve.worker", str(child.fileno())],
                pass_fds=fds, env=self.environment,
                # --reload: the terminal stays the worker's, for a debugger's prompt
                stdin=None if self.process.reload else subprocess.DEVNULL)
        except OSError as exc:
            if parent is not None:
                parent.close()
            if generation is None:
                self._failed_start(f"cannot start a worker process: {exc}")
            else:
                log.error("cannot start a worker process: %s", exc)
            return None
        except BaseException:
            if parent is not None:
                parent.close()
            raise
        finally:
            if child is not None:
                child.close()
            self.spawning -= 1
            self._poke()
        if generation is None:
            generation = self.generation
        channel = trio.SocketStream(trio.socket.from_stdlib_socket(parent))
        self.spawned += 1
        w = _Worker(process, channel, generation, self.spawned, limit)
        self.workers[w.pid] = w
        log.info("worker %d started", w.pid)
        self.nursery.start_soon(self._watch_worker, w)
        if self.stopping:
            w.terminate()
        self._poke()
        return w

    # ------------------------------------------------------------------ one worker

    async def _watch_worker(self, w: _Worker) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_messages, w)
            nursery.start_soon(self._watch_heartbeats, w)
            await w.process.wait()
            with trio.move_on_after(CHANNEL_DRAIN):
                await w.channel_closed.wait()
            nursery.cancel_scope.cancel()
        await w.channel.aclose()
        self._exited(w)

    async def _read_messages(self, w: _Worker) -> None:
        buffer = bytearray()
        try:
            while True:
                data = await w.channel.receive_some(65536)
                if not data:
                    break
                buffer += data
                while (end := buffer.find(b"\n")) >= 0:
                    line = bytes(buffer[:end])
                    del buffer[:end + 1]
                    if not self._message(w, line):
                        return  # it is being killed: the rest is not worth an ERROR each
                if len(buffer) > MAX_MESSAGE:
                    log.error("worker %d sent a message over %d bytes: killing it", w.pid,
                              MAX_MESSAGE)
                    w.signal(signal.SIGKILL)
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            w.channel_closed.set()

    def _message(self, w: _Worker, line: bytes) -> bool:
        """Act on one line from ``w``; ``False`` when it is malformed (logged; the worker is
        killed)."""
        try:
            message = _parse_message(line)
        except Exception as exc:  # RecursionError included: whatever the application wrote
            log.error("worker %d sent a malformed message %r (%s): killing it", w.pid,
                      line[:100], str(exc)[:200] or type(exc).__name__)
            w.signal(signal.SIGKILL)
            return False
        kind = message["t"]
        w.last_seen = trio.current_time()
        if "m" in message:
            w.snapshot = message["m"]
        elif "bad_metrics" in message and not w.metrics_refused:
            w.metrics_refused = True
            log.warning("worker %d sent metrics this supervisor cannot use (%s); they are left "
                        "out of the admin endpoint (after upgrading trioserve, restart the "
                        "supervisor rather than reload it)", w.pid, message["bad_metrics"])
        if kind == "ready":
            w.was_ready = True
            w.ready_at = w.last_seen
            if w.state == "starting":
                w.state = "ready"
            log.info("worker %d ready", w.pid)
            self._poke()
        elif kind == "retiring":
            log.info("worker %d retiring after %s requests (--max-requests): starting its "
                     "replacement", w.pid, message["requests"])
            w.expected_exit = True
            w.state = "leaving"
            self._poke()
        elif kind == "error":
            w.error = message["message"][:MAX_ERROR_TEXT]
            w.finishing = True
        elif kind == "bye":
            w.finishing = True
        return True

    async def _tick(self, interval: float) -> None:
        """Sleep ``interval``; if the supervisor slept far longer, it was stopped (SIGSTOP,
        Ctrl-Z, ``docker pause``, a frozen cgroup), very likely with its workers, whose
        silence meanwhile means nothing: note when it resumed (:attr:`resumed_at`)."""
        before = trio.current_time()
        await trio.sleep(interval)
        now = trio.current_time()
        # Shorter stops go unnoticed: with a heartbeat every interval, they cannot alone
        # stretch a silence past worker_timeout (4 intervals or more).
        if now - before > 3 * interval:
            if before >= self.resumed_at:  # the first task to notice this stop says so
                log.warning("the supervisor was suspended for about %.1fs (SIGSTOP, a "
                            "paused container?): worker timeouts start again", now - before)
            self.resumed_at = max(self.resumed_at, now)

    async def _watch_heartbeats(self, w: _Worker) -> None:
        """Kill ``w`` when it is not ready :attr:`start_timeout` after its start or silent
        for ``worker_timeout`` (neither with ``--reload``: a debugger's breakpoint must not
        get it killed); reset the failed starts once it has been ready for ``CRASH_WINDOW``."""
        timeout = self.process.worker_timeout
        while True:
            await self._tick(self.heartbeat_interval)
            now = trio.current_time()
            if not w.stable and w.ready_at is not None and now - w.ready_at >= CRASH_WINDOW:
                w.stable = True
                self.failed_starts = 0
            if self.process.reload:
                continue
            if not w.was_ready and now - max(w.started_at, self.resumed_at) > \
                    self.start_timeout:
                w.error = (f"the worker was not ready within {self.start_timeout:g}s of its "
                           "start (an import or application start-up that hangs?)")
                log.error("worker %d not ready within %gs of its start: killing it", w.pid,
                          self.start_timeout)
                w.signal(signal.SIGKILL)
                return
            # The app's import comes before the worker's event loop: only the start timeout.
            if w.last_seen is None:
                continue
            silent = now - max(w.last_seen, self.resumed_at)
            if silent > timeout:
                log.error("worker %d timed out: no heartbeat for %.1fs (--worker-timeout %g; "
                          "is its event loop blocked?): killing it", w.pid, silent, timeout)
                w.signal(signal.SIGKILL)
                return

    def _exited(self, w: _Worker) -> None:
        code = w.process.returncode
        assert code is not None
        w.exit_text = _describe_exit(code)
        if self.workers.get(w.pid) is w:  # (a reused pid may be a newer worker's already)
            del self.workers[w.pid]
        if w.snapshot is not None:
            kept = [retire(w.snapshot)] if self.retired is None else [self.retired,
                                                                      retire(w.snapshot)]
            try:
                self.retired = merge(kept)
            except Exception as exc:  # checked on arrival: not expected
                log.error("worker %d's metrics cannot be kept: %s", w.pid, exc)
        what = f"worker {w.pid} {w.exit_text}"
        up = None if w.ready_at is None else trio.current_time() - w.ready_at
        if w.expected_exit or self.stopping:
            log.info("%s", what)
        elif w.generation > self.generation:
            pass  # a reload's new worker: the reload reports it
        elif up is None:
            self._failed_start(f"{what} before it was ready", w.error)
        elif up < CRASH_WINDOW:  # an application that dies right after start-up
            self.restarts += 1
            self._failed_start(f"{what} {up:.1f}s after it was ready", w.error,
                               fatal_at_boot=False)
        else:
            self.restarts += 1
            log.warning("%s: starting a replacement", what)
        self._poke()

    # ------------------------------------------------------------------ reload

    def request_reload(self, reason: str) -> None:
        """Start a graceful reload; one in progress is abandoned (its new workers stop) for
        this one, which loads the latest code."""
        if not self.booted or self.stopping:
            log.info("%s: not reloading before the workers are up", reason)
            return
        if self.reload_scope is not None:
            log.info("%s: restarting the reload in progress", reason)
            self.reload_scope.cancel()
        scope = trio.CancelScope()
        self.reload_scope = scope
        self.nursery.start_soon(self._reload, reason, scope)

    async def _reload(self, reason: str, scope: trio.CancelScope) -> None:
        generation = self.next_generation
        self.next_generation += 1
        count = self.target
        self._notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}\n"
                     "STATUS=reloading")
        log.info("%s: reloading: starting %d new worker%s", reason, count,
                 "s" if count > 1 else "")
        new: list[_Worker] = []
        done = False
        try:
            with scope:
                for _ in range(count):
                    w = await self._spawn(generation)
                    if w is None:
                        if not self.stopping:
                            log.error("reload failed: the old workers keep serving")
                        return
                    new.append(w)
                # A new worker may retire (--max-requests) before its siblings are ready: it
                # has been ready, and _manage replaces it once its generation serves.
                def failure(w: _Worker) -> bool:
                    return w.exited and not (w.was_ready and w.expected_exit)

                await self._wait_until(lambda: self.stopping or any(map(failure, new))
                                       or all(w.was_ready for w in new))
                failed = next(filter(failure, new), None)
                if self.stopping:
                    return
                if failed is not None:
                    log.error("reload failed: new worker %d %s%s%s; the old workers keep "
                              "serving", failed.pid, failed.exit_text,
                              "" if failed.was_ready else " before it was ready",
                              f": {failed.error}" if failed.error else "")
                    return
                done = True
                old = [w for w in self.workers.values()
                       if w.generation < generation and w.state != "leaving"]
                self.generation = generation
                for w in old:
                    w.terminate()
                log.info("reload complete: worker%s %s ready; the old ones drain",
                         "s" if count > 1 else "", ", ".join(str(w.pid) for w in new))
                self._poke()
        finally:
            if not done:
                for w in new:
                    w.terminate()
            if self.reload_scope is scope:
                self.reload_scope = None
                if not self.stopping:
                    self._notify(f"READY=1\nSTATUS={self._status()}")

    async def _watch_files(self) -> None:
        """``--reload``: watch the directories (watchfiles, in a thread) and reload when a
        Python file changes."""
        watchfiles = importlib.import_module("watchfiles")
        directories = self.process.reload_dirs or (os.getcwd(),)
        stop = threading.Event()

        def watching() -> None:
            log.info("watching %s for changes to Python files (--reload)",
                     ", ".join(directories))

        def watch() -> None:
            announced = False
            # Waking up every WATCH_TIMEOUT without changes (an empty set) tells when the
            # watcher is in place, so "watching" is logged only once a change would be seen.
            for changes in watchfiles.watch(*directories, watch_filter=watchfiles.PythonFilter(),
                                            stop_event=stop, yield_on_timeout=True,
                                            rust_timeout=WATCH_TIMEOUT_MS):
                if not announced:
                    announced = True
                    trio.from_thread.run_sync(watching)
                if changes:
                    paths = sorted({os.path.relpath(path) for _change, path in changes})
                    trio.from_thread.run_sync(self._files_changed, paths)

        async def stop_on_cancel() -> None:
            try:
                await trio.sleep_forever()
            finally:
                stop.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_on_cancel)
            try:
                await trio.to_thread.run_sync(watch)
            except Exception as exc:  # the inotify watch limit, a directory gone …
                log.error("--reload: watching for changes failed (%s: %s); no longer "
                          "watching, the server keeps serving (restart it to watch again)",
                          type(exc).__name__, exc)
            nursery.cancel_scope.cancel()

    def _files_changed(self, paths: list[str]) -> None:
        shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
        self.request_reload(f"changed: {shown}")

    # ------------------------------------------------------------------ admin endpoint

    def _snapshot(self) -> Mapping[str, Any]:
        snapshots: Iterable[dict[str, Any]] = [
            s for s in [self.retired, *(w.snapshot for w in self.workers.values())]
            if s is not None]
        return merge(snapshots)  # cannot fail: each was checked when it arrived

    def _ready(self) -> bool:
        return not self.stopping and any(w.state == "ready" for w in self.workers.values())

    def _gauges(self) -> dict[str, float]:
        return {
            "trioserve_workers": float(len(self.workers)),
            "trioserve_workers_ready": float(sum(w.state == "ready"
                                                 for w in self.workers.values())),
            "trioserve_workers_desired": float(self.target),
            "trioserve_worker_restarts_total": float(self.restarts),
        }
