"""Slow clients against the real server: Debian's ``slowhttptest`` in its three modes (slow
headers a.k.a. Slowloris, slow body a.k.a. R-U-Dead-Yet, slow read with a tiny TCP window) run
against ``trioserve trioserve.demo:app`` in a subprocess, while a normal client asks for a page
every 0.2 s; and a pure-Python Slowloris that needs no tool.

Each attack proves three things: the normal client is served throughout (every request 200),
``slowhttptest``'s own report says the service stayed available, and the server itself dropped
the slow connections (its socket descriptors, read from ``/proc/<pid>/fd``, return to the
baseline while the attacker is still running), by the rule that applies: ``--headers-timeout``
for slow headers, the minimum request body rate (240 B/s after a 5 s grace period, the default)
for slow bodies, the minimum response rate (the same default) for slow readers.

The server runs with its default configuration except ``--headers-timeout 5`` (default 30):
with the default a Slowloris connection is only dropped after 30 s, longer than the attack. The
rates' defaults already drop slow bodies and slow readers within seconds. The attacks are
bounded (at most 300 connections at 100 per second, ``-l`` 22 s at most) and only hit loopback.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trio
from conftest import make_config, parse_responses, read_until_closed, run_server
from procs import module_command, server_process

from trioserve.demo import app as demo_app

SLOWHTTPTEST = shutil.which("slowhttptest")
needs_slowhttptest = pytest.mark.skipif(
    SLOWHTTPTEST is None,
    reason="slowhttptest is not installed (Debian/Ubuntu: apt-get install slowhttptest)")

HEADERS_TIMEOUT = 5.0  # --headers-timeout given to the server (default 30 s)
ATTACK_RATE = 100  # slowhttptest -r: new connections per second
PROBE_INTERVAL = 0.2  # the normal client's request period
PROBE_TIMEOUT = 10.0  # generous: a normal request must get its 200 within this

ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass(frozen=True)
class Attack:
    """One slowhttptest mode: its arguments, the demo path it hits, how many connections, its
    length (``-l``: slowhttptest gives up and closes its sockets after it) and the time after the
    attack started by which the server must have dropped every slow connection (less than the
    length, so the drop is the server's doing)."""

    args: tuple[str, ...]
    path: str
    connections: int
    length: int
    dropped_by: float


ATTACKS = {
    # Slowloris: an unfinished head, a random "X-xx: xx" line every 2 s. Dropped at
    # --headers-timeout from accept: 3 s to open them all + 5 s + 6 s of slack.
    "slow-headers": Attack(("-H", "-i", "2", "-t", "GET", "-x", "24"), "/", 300, 18, 14.0),
    # R-U-Dead-Yet: a POST announcing 8192 bytes, then at most 10 bytes every 2 s (~5 B/s),
    # to the echoing /upload. Dropped by the 240 B/s minimum body rate after its 5 s grace.
    "slow-body": Attack(("-B", "-i", "2", "-s", "8192", "-x", "10", "-t", "POST"), "/upload",
                        300, 18, 14.0),
    # Slow read: a TCP window of 1-512 bytes, 32 bytes read every 2 s, 3 pipelined requests of
    # the demo's 14 KB stream per connection. The kernel takes about 17 KB per connection
    # before the server's writes have to wait; then a write waiting past 5 s (grace) + its
    # bytes at 240 B/s resets the connection. Producing those 17 KB costs the demo ~1,250
    # tiny sends per connection, so the server is CPU-bound while the buffers fill (measured
    # on 2 shared cores: the last connection dropped 12-13 s after the start with 150
    # connections, 18-22 s with 300): 150 connections, 19 s to drop them, 22 s of attack.
    "slow-read": Attack(("-X", "-w", "1", "-y", "512", "-n", "2", "-z", "32", "-k", "3", "-t",
                         "GET"), "/stream?n=1000&delay=0", 150, 22, 19.0),
}


def socket_count(pid: int) -> int:
    """Sockets the process holds (``/proc/<pid>/fd`` entries pointing at ``socket:[...]``)."""
    n = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                n += 1
        except OSError:  # closed between listdir and readlink
            pass
    return n


@dataclass
class Prober:
    """A normal client in a thread: a fresh connection (``Connection: close``) and a ``GET
    /api/info`` every PROBE_INTERVAL seconds, each with PROBE_TIMEOUT; records every outcome."""

    base: str
    results: list[tuple[float, str, float]] = field(default_factory=list)  # (t, outcome, s)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=PROBE_TIMEOUT,
                          headers={"connection": "close"}) as client:
            while not self._stop.is_set():
                start = time.monotonic()
                try:
                    outcome = str(client.get("/api/info").status_code)
                except httpx.HTTPError as exc:
                    outcome = f"{type(exc).__name__}: {exc}"
                self.results.append((start, outcome, time.monotonic() - start))
                self._stop.wait(max(0.0, PROBE_INTERVAL - (time.monotonic() - start)))

    def __enter__(self) -> Prober:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(PROBE_TIMEOUT + 5)

    def assert_all_served(self, min_requests: int) -> None:
        failed = [r for r in self.results if r[1] != "200"]
        assert not failed, f"normal requests not answered 200 during the attack: {failed[:10]}"
        assert len(self.results) >= min_requests, (
            f"only {len(self.results)} normal requests completed (expected >= {min_requests}); "
            f"slowest {max((r[2] for r in self.results), default=0):.2f} s")


@dataclass
class FdSampler:
    """Samples the server's socket count every 0.25 s in a thread: (seconds since start, n)."""

    pid: int
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    start: float = 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                n = socket_count(self.pid)
            except FileNotFoundError:  # the process is gone; the test reports it
                return
            self.samples.append((time.monotonic() - self.start, n))
            self._stop.wait(0.25)

    def __enter__(self) -> FdSampler:
        self.start = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(5)


def read_report(path: Path) -> list[dict[str, int]]:
    """slowhttptest's CSV: one row a second with Closed, Pending, Connected and Service
    Available (the number of target connections while its probe is answered, 0 when not)."""
    with path.open(newline="") as f:
        return [{k.strip(): int(v) for k, v in row.items()} for row in csv.DictReader(f)]


@needs_slowhttptest
@pytest.mark.slow
@pytest.mark.parametrize("mode", list(ATTACKS))
def test_slowhttptest_attack_leaves_the_server_available(mode: str, tmp_path: Path) -> None:
    """Under each slowhttptest attack (see ATTACKS), a normal client gets 200 for every request
    (one every 0.2 s, each on a new connection); slowhttptest's report shows the service
    available every second; the server held the attack's connections (its socket count rose by
    at least 80 % of them) and dropped them all by itself (``--headers-timeout 5``, or the
    default 240 B/s rates after their 5 s grace) while slowhttptest was still running: its
    socket count is back to the baseline at most ``dropped_by`` seconds after the attack started
    and stays there. For slow reads slowhttptest still held its sockets until its ``-l`` length;
    for slow headers and slow bodies it saw every connection closed and stopped early."""
    assert SLOWHTTPTEST is not None
    cmd = module_command("trioserve.demo:app", "--port", "0",
                         "--headers-timeout", str(HEADERS_TIMEOUT))
    with server_process(cmd) as sp:
        port = sp.wait_port()
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/api/info", timeout=PROBE_TIMEOUT).status_code == 200
        baseline = socket_count(sp.proc.pid)
        prefix = tmp_path / "report"
        attack = ATTACKS[mode]
        cmd = [SLOWHTTPTEST, *attack.args, "-c", str(attack.connections), "-r", str(ATTACK_RATE),
               "-l", str(attack.length), "-p", "3", "-g", "-o", str(prefix), "-u",
               base + attack.path]
        with Prober(base) as prober, FdSampler(sp.proc.pid) as fds:
            done = subprocess.run(cmd, capture_output=True, text=True, check=False,
                                  timeout=attack.length + 30, cwd=tmp_path)
            attack_took = time.monotonic() - fds.start
            # keep sampling until the server is back to the baseline, or past the deadline
            while (time.monotonic() - fds.start < attack.dropped_by + 1
                   and socket_count(sp.proc.pid) > baseline + 3):
                time.sleep(0.1)
            time.sleep(0.5)
        stdout = ANSI_RE.sub("", done.stdout)
        assert done.returncode == 0, f"slowhttptest failed ({done.returncode}):\n{stdout}\n" \
                                     f"{done.stderr}"
        assert sp.proc.poll() is None, f"the server exited during the attack:\n{sp.stderr}"
        trace = " ".join(f"{t:.1f}s:{n}" for t, n in fds.samples)

        # the normal client was served throughout, about 5 requests a second
        prober.assert_all_served(min_requests=int(attack_took / PROBE_INTERVAL / 3))

        # slowhttptest's own verdict, every second of the attack
        rows = read_report(prefix.with_suffix(".csv"))
        assert rows, stdout
        unavailable = [r["Seconds"] for r in rows if r["Service Available"] == 0]
        assert not unavailable, f"slowhttptest found the service unavailable at {unavailable}" \
                                f" s:\n{stdout}"
        assert re.search(r"service available:\s*NO", stdout) is None, stdout
        assert max(r["Connected"] for r in rows) >= attack.connections - 10, rows

        # the attack reached the server, and the server let go of every slow connection itself
        peak = max(n for _, n in fds.samples)
        assert peak >= baseline + attack.connections * 0.8, (
            f"baseline {baseline}, the attack never got in: {trace}")
        peak_at = next(t for t, n in fds.samples if n == peak)
        back_at = next((t for t, n in fds.samples if t > peak_at and n <= baseline + 3), None)
        assert back_at is not None and back_at <= attack.dropped_by, (
            f"slow connections still held {attack.dropped_by} s after the attack started "
            f"(baseline {baseline}): {trace}")
        assert all(n <= baseline + 3 for t, n in fds.samples if t >= back_at), trace
        if mode == "slow-read":
            # slowhttptest keeps its sockets until -l (it never reads as far as the reset):
            # the server's side was closed while they were still open
            assert fds.samples[-1][0] >= attack.length - 1, trace
        else:
            # the attacker saw the server close every connection and stopped on its own before
            # its -l length (its CSV's last row may predate the last few closes: not used)
            assert re.search(r"Exit status:\s*No open connections left", stdout), stdout
            assert attack_took < attack.length, stdout
        # and once it is over, nothing of it is left in the server
        deadline = time.monotonic() + 10
        while socket_count(sp.proc.pid) > baseline + 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert socket_count(sp.proc.pid) <= baseline + 1, trace
        assert httpx.get(f"{base}/api/info", timeout=PROBE_TIMEOUT).status_code == 200


TRICKLERS = 200
TRICKLE_HEADERS_TIMEOUT = 4.0


async def test_pure_python_slowloris_dropped_with_408_at_headers_deadline() -> None:
    """200 connections each send a request line, then one header byte a second, forever: each
    gets a 408 and is closed at ``request_headers`` (4 s here) counted from accept, not from its
    last byte (it would never time out if a byte extended it), within 4 s to 4 s + 3 s of
    connecting; meanwhile a normal client is answered 200 every 0.2 s. The demo app in process,
    no tool needed."""
    config = make_config(timeouts={"request_headers": TRICKLE_HEADERS_TIMEOUT})
    closed_after: list[float] = []
    responses: list[bytes] = []
    normal: list[int] = []
    with trio.fail_after(60):
        async with run_server(demo_app, config) as srv:

            async def trickler() -> None:
                stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
                start = trio.current_time()
                async with stream:
                    await stream.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
                    async with trio.open_nursery() as nursery:

                        async def drip() -> None:
                            # 30 bytes over 30 s: far past the deadline if nothing stops it
                            for b in b"X-Slowloris: " + b"x" * 17:
                                await trio.sleep(1)
                                try:
                                    await stream.send_all(bytes([b]))
                                except (trio.BrokenResourceError, trio.ClosedResourceError):
                                    return

                        nursery.start_soon(drip)
                        responses.append(await read_until_closed(stream))
                        closed_after.append(trio.current_time() - start)
                        nursery.cancel_scope.cancel()

            async def normal_client(stop: trio.Event) -> None:
                async with httpx.AsyncClient(base_url=srv.url, timeout=PROBE_TIMEOUT) as client:
                    while not stop.is_set():
                        normal.append((await client.get("/api/info")).status_code)
                        await trio.sleep(PROBE_INTERVAL)

            stop = trio.Event()
            async with trio.open_nursery() as outer:
                outer.start_soon(normal_client, stop)
                async with trio.open_nursery() as attack:
                    for _ in range(TRICKLERS):
                        attack.start_soon(trickler)
                stop.set()

    assert len(responses) == TRICKLERS
    statuses = [parse_responses(r)[0][0].status_code if parse_responses(r) else None
                for r in responses]
    assert statuses == [408] * TRICKLERS, statuses
    early = [t for t in closed_after if t < TRICKLE_HEADERS_TIMEOUT - 0.1]
    late = [t for t in closed_after if t > TRICKLE_HEADERS_TIMEOUT + 3]
    assert not early and not late, sorted(closed_after)
    assert len(normal) >= 10 and set(normal) == {200}, normal
