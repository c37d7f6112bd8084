"""``trioserve --workers N``: a supervisor and worker processes sharing the listening sockets,
driven like production would be: ``kill -9`` under load, SIGHUP and SIGTERM under load, a
blocked event loop, ``--max-requests``, SIGTTIN/SIGTTOU, start-up failures, crash loops, the
admin endpoint over the workers' merged metrics; and what goes wrong in production: garbage on
a worker's channel, late signals, a supervisor killed during an import, a reload racing
``--max-requests``, SIGSTOP/SIGCONT of everything, no file descriptor left, an application that
dies right after its start-up or never becomes ready.

The load is a few threads sending ``GET`` requests on fresh connections with
``Connection: close`` (no keep-alive: a keep-alive connection that the server closes while idle
is the race RFC 9112 §9.3.1 leaves to the client's retry; no request here is ever retried).
Every request's start and end time and outcome are recorded, so each test states exactly which
requests must have succeeded."""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio
import trustme
from procs import ServerProcess, module_command, run_to_exit
from prometheus_client.parser import text_string_to_metric_families

from trioserve.cli import AppSpec
from trioserve.config import Bind, Config, ProcessConfig
from trioserve.metrics import Metrics, check_snapshot
from trioserve.supervisor import Supervisor

pytestmark = pytest.mark.slow

APP = """
    import atexit
    import os
    import subprocess
    import sys
    import time

    import trio

    MARKER = os.environ.get("CRASH_MARKER")
    if MARKER and os.path.exists(MARKER):
        raise RuntimeError("crash marker present")

    # IMPORT_DELAYS: a directory whose file "delays" lists seconds; the n-th import to start
    # once it exists sleeps the n-th (later ones do not).
    DELAYS = os.environ.get("IMPORT_DELAYS")
    if DELAYS and os.path.exists(os.path.join(DELAYS, "delays")):
        with open(os.path.join(DELAYS, "delays")) as f:
            delays = f.read().split()
        for i, delay in enumerate(delays):
            try:
                os.close(os.open(os.path.join(DELAYS, f"taken{i}"), os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                continue
            print(f"APP import delay {delay} {os.getpid()}", file=sys.stderr, flush=True)
            time.sleep(float(delay))
            break

    if os.environ.get("ATEXIT_SLEEP"):  # a slow exit after the event loop
        def linger():
            print(f"APP atexit {os.getpid()}", file=sys.stderr, flush=True)
            time.sleep(float(os.environ["ATEXIT_SLEEP"]))

        atexit.register(linger)

    # What an application's bug could write to its worker's channel (the worker's argument).
    CHANNEL = {
        "nested": b"[" * 100_000 + b"\\n",
        "deep-metrics": b'{"t":"hb","m":' + b'{"a":' * 900 + b"1" + b"}" * 901 + b"\\n",
        "bad-metrics": b'{"t":"hb","m":{"version":1,"counters":"x"}}\\n',
        "garbage": b"not json\\n" * 50,
    }

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                    if os.environ.get("CRASH_AFTER"):  # dies soon after start-up
                        await trio.sleep(float(os.environ["CRASH_AFTER"]))
                        os._exit(1)
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"]
        tag = scope["query_string"].decode()
        if tag:
            print(f"APP begin {tag} {os.getpid()}", file=sys.stderr, flush=True)
        body = str(os.getpid()).encode()
        if path == "/block":  # blocks the worker's event loop
            time.sleep(float(tag or "0.3"))
        elif path == "/slow":
            await trio.sleep(1.5)
        elif path == "/forever":
            await trio.sleep(60)
        elif path.startswith("/channel/"):
            os.write(int(sys.argv[1]), CHANNEL[path.removeprefix("/channel/")])
        elif path == "/child-sigign":  # the signals a child process starts with ignored
            status = subprocess.run(["cat", "/proc/self/status"], capture_output=True,
                                    text=True, check=True).stdout
            body = status.split("SigIgn:")[1].split()[0].encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
"""

READY_RE = re.compile(r"(\d+) workers? ready \(([\d, ]+)\)")


def start(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
    (tmp_path / "wapp.py").write_text(textwrap.dedent(APP))
    return ServerProcess(module_command("wapp:app", "--port", "0", "--app-dir", str(tmp_path),
                                        "--no-access-log", *args), env=env)


def wait_ready(sp: ServerProcess) -> list[int]:
    """The pids of the first generation, once all are ready."""
    m = sp.wait_for_line(READY_RE, timeout=60)
    return [int(p) for p in m.group(2).split(", ")]


class NoResponse(Exception):
    """The connection closed before any byte of a response."""


def http_get(where: int | str, target: str, timeout: float = 30.0) -> tuple[int, str]:
    """``GET target`` on a fresh connection (TCP port or Unix socket path) with
    ``Connection: close``; the status and body. Raises :class:`NoResponse` or ``OSError``."""
    if isinstance(where, int):
        sock = socket.create_connection(("127.0.0.1", where), timeout=timeout)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(where)
    with sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
                     .encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    if not data:
        raise NoResponse("closed before any response byte")
    head, sep, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length: *(\d+)", head)
    if not sep or length is None or int(length.group(1)) != len(body):
        raise NoResponse(f"incomplete response {data[:200]!r}")
    return int(head.split()[1]), body.decode()


@dataclass
class Result:
    target: str
    start: float
    end: float
    status: int | None = None
    body: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200


class Load:
    """``threads`` threads sending requests one after another until stopped. ``target`` may
    contain ``{n}``, replaced by a number unique to the request."""

    def __init__(self, port: int, target: str = "/pid", threads: int = 2) -> None:
        self.port = port
        self.target = target
        self.results: list[Result] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._count = 0
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _next_target(self) -> str:
        with self._lock:
            self._count += 1
            return self.target.format(n=self._count)

    def _run(self) -> None:
        while not self._stop.is_set():
            target = self._next_target()
            r = Result(target, time.monotonic(), 0.0)
            try:
                r.status, r.body = http_get(self.port, target, timeout=30)
            except (OSError, NoResponse) as exc:
                r.error = f"{type(exc).__name__}: {exc}"
                time.sleep(0.01)  # refused: do not spin
            r.end = time.monotonic()
            with self._lock:
                self.results.append(r)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[Result]:
        self._stop.set()
        for t in self._threads:
            t.join(40)
        return self.results

    def count(self) -> int:
        with self._lock:
            return len(self.results)

    def wait_for(self, n: int, timeout: float = 30.0) -> None:
        """Wait until ``n`` more requests completed."""
        goal = self.count() + n
        deadline = time.monotonic() + timeout
        while self.count() < goal:
            assert time.monotonic() < deadline, f"the load stalled at {self.count()} requests"
            time.sleep(0.01)


def serving_pids(port: int, expected: int, rounds: int = 20) -> set[int]:
    """The pids answering: rounds of concurrent requests that block their worker's event loop,
    so the next connection must go to another worker, until ``expected`` pids were seen."""
    seen: set[int] = set()

    def one() -> None:
        body = http_get(port, "/block?0.2")[1]
        with lock:
            seen.add(int(body))

    lock = threading.Lock()
    for _ in range(rounds):
        threads = [threading.Thread(target=one) for _ in range(expected * 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        if len(seen) >= expected:
            break
    return seen


@contextmanager
def supervisor(tmp_path: Path, *args: str, env: dict[str, str] | None = None
               ) -> Iterator[ServerProcess]:
    sp = start(tmp_path, *args, env=env)
    try:
        yield sp
    finally:
        sp.close()


def stop(sp: ServerProcess) -> None:
    """SIGTERM; the supervisor exits 0 after the workers drained."""
    sp.signal(signal.SIGTERM)
    assert sp.wait(60) == 0, sp.stderr
    assert "Traceback" not in sp.stderr, sp.stderr


def gone(pid: int) -> bool:
    """The process no longer exists (or is a zombie waiting for its reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_gone(pids: list[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(gone(p) for p in pids):
        assert time.monotonic() < deadline, f"still running: {[p for p in pids if not gone(p)]}"
        time.sleep(0.05)


def test_two_workers_serve_and_kill_9_is_healed_under_load(tmp_path: Path) -> None:
    with supervisor(tmp_path, "--workers", "2") as sp:
        port = sp.wait_port()
        first = wait_ready(sp)
        assert len(set(first)) == 2 and os.getpid() not in first
        assert serving_pids(port, 2) == set(first)  # both workers answer
        victim, survivor = first
        with Load(port) as load:
            load.wait_for(20)
            mark = len(sp.lines)
            kill_time = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            sp.wait_for_line(f"worker {victim} was killed by SIGKILL", timeout=10, start=mark)
            reaped = time.monotonic()  # from now on, no connection can reach the victim
            started = sp.wait_for_line(r"worker (\d+) started", timeout=10, start=mark)
            spawn_delay = time.monotonic() - kill_time
            new = int(started.group(1))
            sp.wait_for_line(f"worker {new} ready", timeout=30, start=mark)
            ready_delay = time.monotonic() - kill_time
            load.wait_for(20)
        print(f"replacement started {spawn_delay:.2f}s and ready {ready_delay:.2f}s after kill")
        # "Replaced at once": the supervisor starts the new process as soon as it reaps the old.
        assert spawn_delay < 2.0
        results = load.results
        after = [r for r in results if r.start >= reaped]
        before = [r for r in results if r.end <= kill_time]
        assert after and before
        assert all(r.ok for r in after), [r for r in after if not r.ok]
        assert all(r.ok for r in before), [r for r in before if not r.ok]
        # Only the requests in flight on the victim (at most one per load thread) could fail.
        failed = [r for r in results if not r.ok]
        assert len(failed) <= 2, failed
        assert {int(r.body) for r in after} <= {survivor, new}
        assert serving_pids(port, 2) == {survivor, new}
        assert sp.proc.poll() is None  # the supervisor carries on
        stop(sp)
        wait_gone([survivor, new])


def test_sighup_reloads_under_load_without_losing_a_request(tmp_path: Path) -> None:
    with supervisor(tmp_path, "--workers", "2") as sp:
        port = sp.wait_port()
        old = wait_ready(sp)
        with Load(port) as load:
            load.wait_for(20)
            mark = len(sp.lines)
            sp.signal(signal.SIGHUP)
            done = sp.wait_for_line(r"reload complete: workers (\d+), (\d+) ready", timeout=60,
                                    start=mark)
            new = [int(done.group(1)), int(done.group(2))]
            for pid in old:
                sp.wait_for_line(f"worker {pid} exited with code 0", timeout=30, start=mark)
            old_gone = time.monotonic()
            load.wait_for(20)
        results = load.results
        assert all(r.ok for r in results), [r for r in results if not r.ok]
        assert not set(new) & set(old)
        assert {int(r.body) for r in results if r.start >= old_gone} <= set(new)
        assert serving_pids(port, 2) == set(new)
        stop(sp)


def test_sighup_under_wrk_keep_alive_load_loses_no_request(tmp_path: Path) -> None:
    # wrk keeps its connections alive and never retries: a request the server closes a
    # connection on shows as a socket error, a failed one as non-2xx.
    wrk = shutil.which("wrk")
    assert wrk is not None, "wrk is needed (Debian's wrk; .ci/run installs it)"
    with supervisor(tmp_path, "--workers", "2") as sp:
        port = sp.wait_port()
        wait_ready(sp)
        with subprocess.Popen([wrk, "-t1", "-c8", "-d7s", f"http://127.0.0.1:{port}/pid"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) as load:
            for _ in range(2):
                time.sleep(1.5)
                mark = len(sp.lines)
                sp.signal(signal.SIGHUP)
                sp.wait_for_line(r"reload complete", timeout=60, start=mark)
            out, _ = load.communicate(timeout=60)
        assert load.returncode == 0, out
        served = re.search(r"(\d+) requests in", out)
        assert served is not None and int(served.group(1)) > 100, out
        assert "Socket errors" not in out and "Non-2xx" not in out, out
        stop(sp)


def test_sigterm_under_load_completes_every_accepted_request(tmp_path: Path) -> None:
    with supervisor(tmp_path, "--workers", "2", "--graceful-timeout", "20") as sp:
        port = sp.wait_port()
        pids = wait_ready(sp)
        slow: list[tuple[int, str]] = []

        def slow_request(i: int) -> None:
            slow.append(http_get(port, f"/slow?slow{i}"))

        slow_threads = [threading.Thread(target=slow_request, args=(i,)) for i in range(4)]
        with Load(port, "/pid?load{n}") as load:
            load.wait_for(10)
            for t in slow_threads:
                t.start()
            for i in range(4):
                sp.wait_for_line(f"APP begin slow{i} ", timeout=20)
            sp.signal(signal.SIGTERM)
            assert sp.wait(60) == 0, sp.stderr
        for t in slow_threads:
            t.join(30)
        assert sorted(s for s, _ in slow) == [200] * 4
        # Every request that reached the application got its whole response; the others
        # were refused (or reset while waiting in the listen queue, never accepted).
        reached = set(re.findall(r"APP begin (load\d+) ", sp.stderr))
        by_target = {r.target.removeprefix("/pid?"): r for r in load.results}
        assert reached and reached <= by_target.keys()
        assert all(by_target[t].ok for t in reached), [by_target[t] for t in reached
                                                       if not by_target[t].ok]
        assert all(r.ok for r in load.results if r.target.removeprefix("/pid?") in reached)
        wait_gone(pids)
        assert "Traceback" not in sp.stderr


def test_second_sigterm_cancels_in_flight_requests(tmp_path: Path) -> None:
    with supervisor(tmp_path, "--workers", "1", "--graceful-timeout", "30") as sp:
        port = sp.wait_port()
        [pid] = wait_ready(sp)
        outcome: list[object] = []

        def forever() -> None:
            try:
                outcome.append(http_get(port, "/forever?f"))
            except (OSError, NoResponse) as exc:
                outcome.append(exc)

        t = threading.Thread(target=forever)
        t.start()
        sp.wait_for_line("APP begin f ")
        sp.signal(signal.SIGTERM)
        sp.wait_for_line("stopping the workers gracefully")
        time.sleep(0.3)
        assert sp.proc.poll() is None  # draining: the request still runs
        sp.signal(signal.SIGTERM)
        assert sp.wait(20) == 0  # far sooner than the graceful timeout
        t.join(10)
        assert outcome and not isinstance(outcome[0], tuple)
        assert "the workers cancel in-flight requests now" in sp.stderr
        wait_gone([pid])


def test_worker_blocking_its_event_loop_is_killed_and_replaced(tmp_path: Path) -> None:
    with supervisor(tmp_path, "--workers", "1", "--worker-timeout", "2") as sp:
        port = sp.wait_port()
        [pid] = wait_ready(sp)
        failures: list[Exception] = []

        def blocking_request() -> None:
            try:
                http_get(port, "/block?60")
            except (OSError, NoResponse) as exc:
                failures.append(exc)

        blocked = threading.Thread(target=blocking_request, daemon=True)
        blocked.start()
        line = sp.wait_for_line(rf"ERROR .*worker {pid} timed out: no heartbeat", timeout=20)
        assert "killing it" in line.string
        sp.wait_for_line(f"worker {pid} was killed by SIGKILL", timeout=10)
        m = sp.wait_for_line(r"worker (\d+) ready", timeout=30,
                             start=sp.lines.index(line.string))
        new = int(m.group(1))
        assert new != pid
        assert http_get(port, "/pid") == (200, str(new))
        blocked.join(10)
        assert failures  # its connection died with the worker
        stop(sp)


def test_max_requests_recycles_workers_without_failing_a_request(tmp_path: Path) -> None:
    with supervisor(tmp_path, "--workers", "2", "--max-requests", "10",
                    "--max-requests-jitter", "3") as sp:
        port = sp.wait_port()
        first = wait_ready(sp)
        results = []
        for _ in range(80):
            results.append(http_get(port, "/pid"))
            time.sleep(0.02)
        assert all(status == 200 for status, _ in results)
        pids = {int(body) for _, body in results}
        assert len(pids) >= 4, pids  # 80 requests, at most 13 (and a few) per worker
        retired = re.findall(r"worker (\d+) retiring after (\d+) requests", sp.stderr)
        assert len(retired) >= 2
        assert all(int(n) >= 10 for _, n in retired)
        for pid, _ in retired:
            sp.wait_for_line(f"worker {pid} exited with code 0", timeout=30)
        assert set(first) & {int(p) for p, _ in retired}
        stop(sp)


def test_sigttin_and_sigttou_change_the_number_of_workers(tmp_path: Path) -> None:
    with supervisor(tmp_path, "--workers", "1") as sp:
        port = sp.wait_port()
        [first] = wait_ready(sp)
        mark = len(sp.lines)
        sp.signal(signal.SIGTTIN)
        sp.wait_for_line("received SIGTTIN: 2 workers wanted", start=mark)
        second = int(sp.wait_for_line(r"worker (\d+) ready", timeout=30, start=mark).group(1))
        assert serving_pids(port, 2) == {first, second}
        mark = len(sp.lines)
        sp.signal(signal.SIGTTOU)
        sp.wait_for_line("received SIGTTOU: 1 worker wanted", start=mark)
        stopped = int(sp.wait_for_line(r"stopping worker (\d+) \(1 wanted\)",
                                       start=mark).group(1))
        sp.wait_for_line(f"worker {stopped} exited with code 0", timeout=30, start=mark)
        remaining = ({first, second} - {stopped}).pop()
        mark = len(sp.lines)
        sp.signal(signal.SIGTTOU)
        sp.wait_for_line("received SIGTTOU: ignored, one worker at least must run", start=mark)
        assert http_get(port, "/pid") == (200, str(remaining))
        assert not re.search(r"worker \d+ started", "\n".join(sp.lines[mark:]))
        stop(sp)


@pytest.mark.parametrize(("module", "source", "message"), [
    ("nosuchmodule", None, "could not import module 'nosuchmodule'"),
    ("badapp", "raise RuntimeError('boom at import')\n",
     "error while importing 'badapp': RuntimeError: boom at import"),
    ("failstart", textwrap.dedent("""
        async def app(scope, receive, send):
            await receive()
            await send({"type": "lifespan.startup.failed", "message": "no database"})
    """), "application start-up failed: no database"),
])
def test_first_start_failure_exits_1_with_the_workers_error(
        tmp_path: Path, module: str, source: str | None, message: str) -> None:
    if source is not None:
        (tmp_path / f"{module}.py").write_text(source)
    t0 = time.monotonic()
    proc = run_to_exit(module_command(f"{module}:app", "--workers", "2", "--port", "0",
                                      "--app-dir", str(tmp_path)), timeout=60)
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("trioserve: error")]
    assert len(errors) == 1, proc.stderr
    # the worker's error as the single-process server prints it
    assert errors[0].startswith(f"trioserve: error: {message}"), errors
    assert "Traceback" not in proc.stderr
    print(f"exit 1 after {time.monotonic() - t0:.2f}s")


def test_address_in_use_exits_1_before_any_worker(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "wapp.py").write_text(textwrap.dedent(APP))
        proc = run_to_exit(module_command("wapp:app", "--workers", "2", "--port", str(port),
                                          "--app-dir", str(tmp_path)))
    assert proc.returncode == 1
    assert f"trioserve: error: cannot listen on 127.0.0.1:{port}: address already in use" \
        in proc.stderr
    assert "worker" not in proc.stderr


def test_crash_loop_backs_off_and_recovers(tmp_path: Path) -> None:
    marker = tmp_path / "crash"
    with supervisor(tmp_path, "--workers", "1", env={"CRASH_MARKER": str(marker)}) as sp:
        port = sp.wait_port()
        [pid] = wait_ready(sp)
        marker.write_text("")
        mark = len(sp.lines)
        os.kill(pid, signal.SIGKILL)
        delays = []
        # Killed right after it was ready: that counts as a failed start too.
        sp.wait_for_line(rf"ERROR .*worker {pid} was killed by SIGKILL [\d.]+s after it was "
                         rf"ready; next start in 0.1s \(1 failed start in a row\)", start=mark)
        for n in (2, 3, 4):
            m = sp.wait_for_line(
                rf"ERROR .*worker \d+ exited with code 1 before it was ready: error while "
                rf"importing 'wapp': RuntimeError: crash marker present.*; next start in "
                rf"([\d.]+)s \({n} failed starts in a row\)", timeout=30, start=mark)
            delays.append(float(m.group(1)))
        assert delays == [0.2, 0.4, 0.8]
        assert sp.proc.poll() is None
        marker.unlink()
        m = sp.wait_for_line(r"worker (\d+) ready", timeout=40, start=mark)
        assert http_get(port, "/pid") == (200, m.group(1))
        stop(sp)


def test_unix_socket_served_by_workers_and_removed_at_exit(tmp_path: Path) -> None:
    path = str(tmp_path / "app.sock")
    (tmp_path / "wapp.py").write_text(textwrap.dedent(APP))
    sp = ServerProcess(module_command("wapp:app", "--uds", path, "--workers", "2",
                                      "--app-dir", str(tmp_path), "--no-access-log"))
    try:
        pids = wait_ready(sp)
        status, body = http_get(path, "/pid")
        assert status == 200 and int(body) in pids
        stop(sp)
        assert not os.path.exists(path)
    finally:
        sp.close()


def test_workers_serve_tls_and_http2(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    with supervisor(tmp_path, "--workers", "2", "--certfile", str(tmp_path / "server.pem")
                    ) as sp:
        port = int(sp.wait_for_line(r"supervisor \d+ listening on https://127\.0\.0\.1:(\d+)"
                                    ).group(1))
        pids = wait_ready(sp)
        context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        with httpx.Client(verify=context, http2=True) as client:
            response = client.get(f"https://127.0.0.1:{port}/pid")
        assert response.http_version == "HTTP/2"
        assert int(response.text) in pids
        stop(sp)


def test_workers_exit_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    with supervisor(tmp_path, "--workers", "2") as sp:
        sp.wait_port()
        pids = wait_ready(sp)
        sp.proc.kill()
        sp.proc.wait(10)
        wait_gone(pids)  # the channel's end of file: they drain and exit


def metric_values(text: str) -> dict[str, float]:
    """Sums per metric sample name (all labels together) of a Prometheus exposition."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def test_admin_endpoint_merges_the_workers_metrics(tmp_path: Path) -> None:
    admin = str(tmp_path / "admin.sock")
    with supervisor(tmp_path, "--workers", "2", "--admin-bind", f"unix:{admin}") as sp:
        port = sp.wait_port()
        sp.wait_for_line(f"admin endpoint on unix:{admin}")
        assert http_get(admin, "/readyz") == (503, "not ready\n")  # workers still starting
        pids = wait_ready(sp)
        assert http_get(admin, "/readyz") == (200, "ready\n")
        assert http_get(admin, "/livez") == (200, "ok\n")
        assert http_get(port, "/metrics")[0] == 200  # the app's path on the public port
        for _ in range(20):
            assert http_get(port, "/pid")[0] == 200
        # heartbeats bring each worker's counts within a second
        deadline = time.monotonic() + 20
        while True:
            values = metric_values(http_get(admin, "/metrics")[1])
            if values.get("trioserve_requests_total") == 21:
                break
            assert time.monotonic() < deadline, values
            time.sleep(0.2)
        assert values["trioserve_workers"] == 2
        assert values["trioserve_workers_ready"] == 2
        assert values["trioserve_workers_desired"] == 2
        assert values["trioserve_worker_restarts_total"] == 0
        assert values["trioserve_ready"] == 1
        os.kill(pids[0], signal.SIGKILL)
        sp.wait_for_line(r"worker \d+ ready", timeout=30,
                         start=sp.lines.index(sp.wait_for_line(
                             f"worker {pids[0]} was killed").string))
        values = metric_values(http_get(admin, "/metrics")[1])
        assert values["trioserve_requests_total"] == 21  # the dead worker's still count
        assert values["trioserve_worker_restarts_total"] == 1
        assert values["trioserve_workers"] == 2
        # draining: not ready, still alive, until the slow request is done
        slow = threading.Thread(target=http_get, args=(port, "/slow?s"))
        slow.start()
        sp.wait_for_line("APP begin s ")
        sp.signal(signal.SIGTERM)
        sp.wait_for_line("stopping the workers gracefully")
        assert http_get(admin, "/readyz") == (503, "draining\n")
        assert http_get(admin, "/livez") == (200, "ok\n")
        slow.join(30)
        assert sp.wait(30) == 0
        assert not os.path.exists(admin)


def test_worker_is_not_started_by_hand() -> None:
    proc = subprocess.run([sys.executable, "-m", "trioserve.worker"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 2
    assert "started by the trioserve supervisor only" in proc.stderr


# ---------------------------------------------------------------------- review findings


def test_check_snapshot_accepts_snapshots_and_rejects_other_shapes() -> None:
    metrics = Metrics()
    metrics.request("1.1", 200, 0.01, 3, 4)
    metrics.bad_request("2", 431)
    metrics.connection_opened("http1")
    snap = json.loads(json.dumps(metrics.snapshot()))
    assert check_snapshot(snap) is snap
    assert check_snapshot(Metrics().snapshot())
    deep: object = 1
    for _ in range(900):
        deep = {"a": deep}
    bad_status = json.loads(json.dumps(snap))
    bad_status["counters"]["requests"]["1.1"]["²"] = 1
    huge = json.loads(json.dumps(snap))
    huge["counters"]["response_bytes"] = 10**40
    short = json.loads(json.dumps(snap))
    short["histograms"]["request_duration_seconds"]["1.1"]["counts"] = [1]
    flag = json.loads(json.dumps(snap))
    flag["gauges"]["websockets_active"] = True
    for bad in [None, [], deep, {"version": 1, "counters": "x"}, {**snap, "version": 2},
                {**snap, "extra": 1}, bad_status, huge, short, flag]:
        with pytest.raises(ValueError):
            check_snapshot(bad)


def test_malformed_channel_messages_kill_the_worker_not_the_supervisor(tmp_path: Path) -> None:
    # A worker runs the application's code, which could write anything to its channel: JSON
    # too deep to parse, 50 garbage lines. Each time: one ERROR, the worker killed and
    # replaced, /metrics still right. Metrics too deep to merge or of the wrong shape (another
    # trioserve version after an upgrade and SIGHUP, or damaged) are left out with one
    # WARNING; the worker serves on.
    admin = str(tmp_path / "admin.sock")
    with supervisor(tmp_path, "--workers", "1", "--admin-bind", f"unix:{admin}") as sp:
        port = sp.wait_port()
        [pid] = wait_ready(sp)
        for _ in range(3):
            assert http_get(port, "/pid")[0] == 200
        deadline = time.monotonic() + 20
        while metric_values(http_get(admin, "/metrics")[1]).get("trioserve_requests_total") != 3:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        for kind in ("deep-metrics", "bad-metrics"):
            mark = len(sp.lines)
            with contextlib.suppress(OSError, NoResponse):
                http_get(port, f"/channel/{kind}")
            if kind == "deep-metrics":  # logged once per worker
                sp.wait_for_line(rf"WARNING .*worker {pid} sent metrics this supervisor "
                                 "cannot use", start=mark)
            else:
                time.sleep(1.5)  # a heartbeat or two later
            assert http_get(port, "/pid") == (200, str(pid))  # still the same worker
            assert not any("killing it" in x for x in sp.lines[mark:]), sp.lines[mark:]
            status, text = http_get(admin, "/metrics")
            assert status == 200, text
            assert metric_values(text)["trioserve_requests_total"] >= 3
        for kind in ("nested", "garbage"):
            mark = len(sp.lines)
            with contextlib.suppress(OSError, NoResponse):
                http_get(port, f"/channel/{kind}")
            sp.wait_for_line(rf"ERROR .*worker {pid} sent a malformed message .*: killing it",
                             start=mark)
            sp.wait_for_line(f"worker {pid} was killed by SIGKILL", start=mark)
            pid = int(sp.wait_for_line(r"worker (\d+) ready", timeout=30, start=mark).group(1))
            status, text = http_get(admin, "/metrics")
            assert status == 200, text
            # the killed workers' last good counts are kept (and the /channel requests of
            # those that answered before their heartbeat was refused)
            assert metric_values(text)["trioserve_requests_total"] >= 3
        assert len([x for x in sp.lines if "malformed message" in x]) == 2  # one per kind
        assert len([x for x in sp.lines if "cannot use" in x]) == 1  # once per worker
        assert http_get(port, "/pid") == (200, str(pid))
        stop(sp)


def test_worker_signals_leave_children_alone_and_late_ones_do_not_kill(tmp_path: Path) -> None:
    with supervisor(tmp_path, "--workers", "1", env={"ATEXIT_SLEEP": "2"}) as sp:
        port = sp.wait_port()
        [pid] = wait_ready(sp)
        # An application's child process starts with no signal ignored.
        status, mask = http_get(port, "/child-sigign")
        assert status == 200
        for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU,
                       signal.SIGTERM, signal.SIGQUIT):
            assert not int(mask, 16) & 1 << (signum - 1), (signum, mask)
        # The worker itself does nothing on them: the supervisor decides.
        for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
            os.kill(pid, signum)
        time.sleep(0.3)
        assert http_get(port, "/pid") == (200, str(pid))
        # Signals during the exit, after the event loop (an atexit handler runs): ignored.
        sp.signal(signal.SIGTERM)
        sp.wait_for_line(f"APP atexit {pid}", timeout=30)
        for signum in (signal.SIGTERM, signal.SIGQUIT, signal.SIGINT, signal.SIGHUP):
            os.kill(pid, signum)
        sp.signal(signal.SIGTERM)  # the supervisor's second SIGTERM: SIGQUIT to the workers
        assert sp.wait(30) == 0, sp.stderr
        assert f"worker {pid} exited with code 0" in sp.stderr
        assert "killed by" not in sp.stderr


def test_worker_importing_the_app_exits_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    delays = tmp_path / "delays"
    delays.mkdir()
    pids: list[int] = []
    try:
        with supervisor(tmp_path, "--workers", "1", env={"IMPORT_DELAYS": str(delays)}) as sp:
            sp.wait_port()
            pids += wait_ready(sp)
            (delays / "delays").write_text("60")
            mark = len(sp.lines)
            sp.signal(signal.SIGHUP)  # a new worker, stuck in its import for a minute
            pids.append(int(sp.wait_for_line(r"APP import delay 60 (\d+)", start=mark)
                            .group(1)))
            sp.proc.kill()
            sp.proc.wait(10)
            wait_gone(pids, timeout=10)
    finally:
        for pid in pids:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_sighup_completes_when_a_new_worker_retires_before_the_others_are_ready(
        tmp_path: Path) -> None:
    delays = tmp_path / "delays"
    delays.mkdir()
    with supervisor(tmp_path, "--workers", "2", "--max-requests", "5",
                    env={"IMPORT_DELAYS": str(delays)}) as sp:
        port = sp.wait_port()
        old = wait_ready(sp)
        # Both old workers busy (their event loops blocked): only new ones can accept.
        blocked = []
        for _ in old:
            mark = len(sp.lines)
            t = threading.Thread(target=http_get, args=(port, "/block?5"))
            t.start()
            blocked.append(t)
            sp.wait_for_line(r"APP begin 5 ", start=mark)
        (delays / "delays").write_text("0 2.5")  # one new worker fast, the other slow
        mark = len(sp.lines)
        sp.signal(signal.SIGHUP)
        fast = int(sp.wait_for_line(r"worker (\d+) ready", timeout=30, start=mark).group(1))
        for _ in range(5):
            assert http_get(port, "/pid") == (200, str(fast))
        sp.wait_for_line(f"worker {fast} retiring after 5 requests", start=mark)
        sp.wait_for_line(f"worker {fast} exited with code 0", timeout=30, start=mark)
        sp.wait_for_line("reload complete", timeout=30, start=mark)
        assert "reload failed" not in sp.stderr
        for t in blocked:
            t.join(30)
        for pid in old:
            sp.wait_for_line(f"worker {pid} exited with code 0", timeout=30, start=mark)
        status, body = http_get(port, "/pid")
        assert status == 200 and int(body) not in (*old, fast)
        stop(sp)


def test_stop_and_continue_of_the_whole_server_kills_no_worker(tmp_path: Path) -> None:
    # Ctrl-Z and fg, docker pause, a frozen cgroup: everything stops, then resumes. The
    # workers' silence meanwhile is the supervisor's own.
    with supervisor(tmp_path, "--workers", "2", "--worker-timeout", "1.5") as sp:
        port = sp.wait_port()
        pids = wait_ready(sp)
        everyone = [sp.proc.pid, *pids]
        for pid in everyone:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(2.5)
        for pid in everyone:
            os.kill(pid, signal.SIGCONT)
        time.sleep(2)  # beyond --worker-timeout
        assert "timed out" not in sp.stderr
        sp.wait_for_line(r"WARNING .*the supervisor was suspended for about [\d.]+s")
        assert serving_pids(port, 2) == set(pids)
        stop(sp)


def test_no_descriptor_left_for_a_worker_is_a_failed_start(tmp_path: Path) -> None:
    with supervisor(tmp_path, "--workers", "1") as sp:
        port = sp.wait_port()
        [first] = wait_ready(sp)
        supervisor_pid = sp.proc.pid
        fds = {int(fd) for fd in os.listdir(f"/proc/{supervisor_pid}/fd")}
        lowest_free = min(set(range(max(fds) + 2)) - fds)
        limits = resource.prlimit(supervisor_pid, resource.RLIMIT_NOFILE)
        resource.prlimit(supervisor_pid, resource.RLIMIT_NOFILE, (lowest_free, limits[1]))
        mark = len(sp.lines)
        sp.signal(signal.SIGTTIN)
        for n in (1, 2):
            sp.wait_for_line(rf"ERROR .*cannot start a worker process: \[Errno 24\] Too many "
                             rf"open files; next start in [\d.]+s \({n} failed starts? in a "
                             rf"row\)", start=mark)
        resource.prlimit(supervisor_pid, resource.RLIMIT_NOFILE, limits)
        second = int(sp.wait_for_line(r"worker (\d+) ready", timeout=30, start=mark).group(1))
        assert serving_pids(port, 2) == {first, second}
        stop(sp)


def test_worker_crashing_soon_after_start_up_backs_off(tmp_path: Path) -> None:
    # Ready, then dead 0.3 s later, again and again: not restarted twice a second forever.
    with supervisor(tmp_path, "--workers", "1", env={"CRASH_AFTER": "0.3"}) as sp:
        sp.wait_port()
        wait_ready(sp)
        delays = []
        for n in (1, 2, 3):
            m = sp.wait_for_line(rf"ERROR .*worker \d+ exited with code 1 [\d.]+s after it was "
                                 rf"ready; next start in ([\d.]+)s \({n} failed starts? in a "
                                 rf"row\)", timeout=30)
            delays.append(float(m.group(1)))
        assert delays == [0.1, 0.2, 0.4]
        assert "starting a replacement" not in sp.stderr
        stop(sp)


async def test_worker_not_ready_within_the_start_timeout_is_a_failed_start(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # In this process, to make the start timeout (60 s at least) short.
    (tmp_path / "hang.py").write_text("import time\ntime.sleep(60)\napp = None\n")
    sup = Supervisor(AppSpec("hang:app", app_dir=str(tmp_path)),
                     Config(binds=(Bind.tcp("127.0.0.1", 0),)),
                     ProcessConfig(workers=1, worker_timeout=1.0))
    sup.start_timeout = 1.5
    with trio.fail_after(30):
        code = await sup.run()
    # At the first start, a failed start stops everything.
    assert code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "trioserve: error: the worker was not ready within 1.5s of its start (an import or "
        "application start-up that hangs?)")
