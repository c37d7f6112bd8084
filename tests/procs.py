"""Helpers for tests that run trioserve in a subprocess: start it, learn its port from the
"listening on" log line, wait for it to exit with a timeout, and always clean it up."""

from __future__ import annotations

import os
import re
import signal
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
