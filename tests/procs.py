"""Helpers for tests that run trioserve in a subprocess: start it, learn its port from the
"listening on" log line, wait for it to exit with a timeout, and always clean it up; a free port
number for tools that only take one (:func:`free_port`), and systemd's ``NOTIFY_SOCKET`` side
(:func:`notify_socket`)."""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LISTENING_RE = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
ACCESS_RE = re.compile(
    r'(?P<client>\S+) - "(?P<method>[A-Z]+) (?P<target>\S+) HTTP/(?P<version>1\.[01])" '
    r"(?P<status>\d{3}) (?P<bytes>\d+) (?P<duration>\d+\.\d+)s"
)


UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listened on a moment ago on ``host`` (for tools that only take a port
    number, such as ``systemd-socket-activate``; whoever binds it next may lose a race)."""
    with socket.create_server((host, 0)) as s:
        port: int = s.getsockname()[1]
        return port


class NotifySocket:
    """systemd's side of ``NOTIFY_SOCKET``: an ``AF_UNIX`` datagram socket bound at ``path``
    that collects the messages sent to it, each with the pid of its sender when ``passcred``
    (``SO_PASSCRED``; else, and when the kernel gives none, the pid is -1)."""

    def __init__(self, path: str | os.PathLike[str], *, passcred: bool = True) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        if passcred:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        # every message received so far, (pid, text), in order
        self.messages: list[tuple[int, str]] = []

    def receive(self, timeout: float) -> tuple[int, str] | None:
        """The next message (also appended to :attr:`messages`); ``None`` after ``timeout``
        seconds without one."""
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
        """The next message received with the line ``state`` (say ``READY=1``), as
        ``(pid, text)``: messages received before this call never match, so a second
        ``READY=1`` (after a reload) is waited for. Raises ``AssertionError`` after ``timeout``
        seconds, listing the messages."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            got = self.receive(left)
            if got is not None and state in got[1].splitlines():
                return got
        raise AssertionError(f"no {state!r} within {timeout}s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


@contextmanager
def notify_socket(directory: str | os.PathLike[str], *,
                  passcred: bool = True) -> Iterator[NotifySocket]:
    """A :class:`NotifySocket` at ``directory/notify.sock``, closed on exit."""
    ns = NotifySocket(Path(directory) / "notify.sock", passcred=passcred)
    try:
        yield ns
    finally:
        ns.close()


def trioserve_script() -> Path:
    """The ``trioserve`` console script installed next to this interpreter."""
    return Path(sys.executable).parent / "trioserve"


def module_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "trioserve", *args]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONPATH", None)
    if extra:
        env.update(extra)
    return env


class ServerProcess:
    """A running ``trioserve`` process whose stderr is collected line by line in a thread."""

    def __init__(self, cmd: Sequence[str], *, cwd: str | os.PathLike[str] | None = None,
                 env: dict[str, str] | None = None, pass_fds: Sequence[int] = ()) -> None:
        self.cmd = list(cmd)
        self.proc = subprocess.Popen(
            self.cmd, cwd=cwd or REPO, env=child_env(env), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
            pass_fds=tuple(pass_fds),
        )
        self.lines: list[str] = []
        self.stdout: list[str] = []
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.lines), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump(self, pipe: object, into: list[str]) -> None:
        assert pipe is not None
        for line in pipe:  # type: ignore[attr-defined]
            with self._cond:
                into.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def stderr(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for_line(self, pattern: str | re.Pattern[str], timeout: float = 10.0,
                      start: int = 0) -> re.Match[str]:
        """The first stderr line (from index ``start``) matching ``pattern``; fails on timeout or
        if the process exits first."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        i = start
        with self._cond:
            while True:
                while i < len(self.lines):
                    m = rx.search(self.lines[i])
                    if m:
                        return m
                    i += 1
                if self.proc.poll() is not None and not any(t.is_alive() for t in self._threads):
                    raise AssertionError(
                        f"process exited ({self.proc.returncode}) before logging {rx.pattern!r}:"
                        f"\n{self.stderr_unlocked()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no line matching {rx.pattern!r} within {timeout}s:\n"
                                         f"{self.stderr_unlocked()}")
                self._cond.wait(min(left, 0.1))

    def stderr_unlocked(self) -> str:
        return "\n".join(self.lines)

    def wait_port(self, timeout: float = 15.0) -> int:
        return int(self.wait_for_line(LISTENING_RE, timeout).group(1))

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 15.0) -> int:
        """Wait for exit; kill and fail if it takes longer than ``timeout``."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"process did not exit within {timeout}s:\n{self.stderr}") \
                from None
        for t in self._threads:
            t.join(5)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass

    def close(self) -> None:
        self.kill()
        for t in self._threads:  # they end at EOF, which follows the process's exit
            t.join(5)
        # pytest shows captured output only for a failing test: the server's log helps there
        print(f"--- {' '.join(self.cmd)} (exit {self.proc.returncode}) stderr:\n{self.stderr}")
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:  # pragma: no cover
                    pass


@contextmanager
def server_process(cmd: Sequence[str], **kw: object) -> Iterator[ServerProcess]:
    """Start ``cmd``; the process is killed on exit however the test ends."""
    sp = ServerProcess(cmd, **kw)  # type: ignore[arg-type]
    try:
        yield sp
    finally:
        sp.close()


def run_to_exit(cmd: Sequence[str], *, timeout: float = 20.0, cwd: str | os.PathLike[str] |
                None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command that should exit on its own; kill it after ``timeout``."""
    return subprocess.run(list(cmd), cwd=cwd or REPO, env=child_env(env), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout, check=False)
