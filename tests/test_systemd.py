"""systemd integration of real processes: socket activation by ``systemd-socket-activate``
(installed with systemd; it passes a listening socket as ``LISTEN_FDS`` exactly as systemd does)
and ``sd_notify`` messages received on an ``AF_UNIX`` datagram socket the test owns, with the
sender's credentials (``SO_PASSCRED``), so the test knows which process said what: in worker
mode only the supervisor talks to systemd."""

from __future__ import annotations

import shutil
import signal
import socket
import struct
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from procs import ServerProcess
from test_workers import APP, READY_RE, http_get, wait_gone

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                       reason="systemd-socket-activate is not installed"),
]

UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class NotifySocket:
    """systemd's side of ``NOTIFY_SOCKET``: messages with the pid that sent each."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.messages: list[tuple[int, str]] = []

    def receive(self, timeout: float) -> tuple[int, str] | None:
        self.sock.settimeout(timeout)
        try:
            data, ancillary, _flags, _addr = self.sock.recvmsg(
                4096, socket.CMSG_SPACE(UCRED.size))
        except TimeoutError:
            return None
        pid = -1
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = UCRED.unpack(value[:UCRED.size])[0]
        self.messages.append((pid, data.decode()))
        return self.messages[-1]

    def wait_for(self, state: str, timeout: float = 30.0) -> tuple[int, str]:
        """The next message with the line ``state`` (earlier ones are kept in ``messages``)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            got = self.receive(left)
            if got is not None and state in got[1].splitlines():
                return got
        raise AssertionError(f"no {state!r} within {timeout}s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


@contextmanager
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    ns = NotifySocket(tmp_path / "notify.sock")
    try:
        yield ns
    finally:
        ns.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def activate(tmp_path: Path, port: int, *args: str,
             env: dict[str, str] | None = None) -> ServerProcess:
    """``systemd-socket-activate`` listening on ``port``, starting trioserve on the first
    connection with the socket as fd 3 (it execs: the pid stays the same)."""
    (tmp_path / "wapp.py").write_text(textwrap.dedent(APP))
    passed = [f"-E{name}" for name in (env or {})]
    return ServerProcess(["systemd-socket-activate", "-l", f"127.0.0.1:{port}",
                          "-EPYTHONUNBUFFERED", *passed, sys.executable, "-m", "trioserve",
                          "wapp:app", "--app-dir", str(tmp_path), "--no-access-log", *args],
                         env=env)


def test_socket_activation_single_process(tmp_path: Path) -> None:
    port = free_port()
    with notify_socket(tmp_path) as ns:
        sp = activate(tmp_path, port, env={"NOTIFY_SOCKET": ns.path})
        try:
            sp.wait_for_line(f"Listening on 127.0.0.1:{port} as 3")
            # The first connection starts the server, which finds it queued on the socket.
            status, body = http_get(port, "/pid")
            assert (status, int(body)) == (200, sp.proc.pid)
            assert sp.wait_for_line(r"trioserve listening on http://127\.0\.0\.1:(\d+)"
                                    ).group(1) == str(port)
            assert ns.wait_for("READY=1")[0] == sp.proc.pid
            sp.signal(signal.SIGTERM)
            assert ns.wait_for("STOPPING=1")[0] == sp.proc.pid
            assert sp.wait(30) == 0
        finally:
            sp.close()


def test_socket_activation_and_notify_with_workers(tmp_path: Path) -> None:
    port = free_port()
    with notify_socket(tmp_path) as ns:
        sp = activate(tmp_path, port, "--workers", "2",
                      env={"NOTIFY_SOCKET": ns.path, "WATCHDOG_USEC": "400000"})
        try:
            sp.wait_for_line(f"Listening on 127.0.0.1:{port} as 3")
            status, body = http_get(port, "/pid")
            supervisor = sp.proc.pid
            assert status == 200 and int(body) != supervisor
            ready = sp.wait_for_line(READY_RE, timeout=60)
            workers = [int(p) for p in ready.group(2).split(", ")]
            assert int(body) in workers
            assert f"supervisor {supervisor} listening on http://127.0.0.1:{port}" in sp.stderr
            pid, message = ns.wait_for("READY=1")
            assert pid == supervisor
            assert f"MAINPID={supervisor}" in message.splitlines()
            assert ns.wait_for("WATCHDOG=1")[0] == supervisor
            # a reload: RELOADING=1 ... READY=1
            sp.signal(signal.SIGHUP)
            pid, message = ns.wait_for("RELOADING=1")
            assert pid == supervisor
            assert any(line.startswith("MONOTONIC_USEC=") for line in message.splitlines())
            assert ns.wait_for("READY=1", timeout=60)[0] == supervisor
            sp.wait_for_line("reload complete")
            sp.signal(signal.SIGTERM)
            assert ns.wait_for("STOPPING=1")[0] == supervisor
            assert sp.wait(30) == 0
            # Whatever was sent came from the supervisor: the workers have no NOTIFY_SOCKET.
            while ns.receive(0.2) is not None:
                pass
            assert {pid for pid, _ in ns.messages} == {supervisor}, ns.messages
            wait_gone(workers)
        finally:
            sp.close()
