"""systemd integration of real processes: socket activation by ``systemd-socket-activate``
(installed with systemd; it passes a listening socket as ``LISTEN_FDS`` exactly as systemd does)
and ``sd_notify`` messages received on an ``AF_UNIX`` datagram socket the test owns, with the
sender's credentials (``SO_PASSCRED``), so the test knows which process said what: in worker
mode only the supervisor talks to systemd."""

from __future__ import annotations

import shutil
import signal
import sys
import textwrap
from pathlib import Path

import pytest
from procs import ServerProcess, free_port, notify_socket
from test_workers import APP, READY_RE, http_get, wait_gone

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                       reason="systemd-socket-activate is not installed"),
]


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
