"""Memory per idle keep-alive connection: trioserve against Uvicorn and Hypercorn.

Each server runs alone on 127.0.0.1, serving ``apps:hello`` (Hypercorn: ``run:hypercorn_hello``,
the same app with the lifespan handshake it needs) with a 600 s keep-alive timeout. This script
raises its own descriptor limit to the hard limit (the server inherits it), opens N connections
with Trio, each sending one ``GET /`` and reading the 200 response, and then keeps them all open
and idle. The server's resident memory (``VmRSS``, summed over its process tree: Hypercorn's
worker is a child process) is read before (after a 100-connection warm-up, closed again) and
2 s after the N connections are open; the difference divided by N is what one idle connection
costs. "held" is how many more sockets the server holds (``/proc/<pid>/fd``) at that moment:
N when none was dropped. Only loopback; every connection and server is closed at the end.

    python benchmarks/idle_connections.py                        # 10,000 connections, all
    python benchmarks/idle_connections.py --connections 2000 --server trioserve
    python benchmarks/idle_connections.py --protocol h2         # HTTP/2 with prior knowledge

Peers: ``pip install uvicorn hypercorn`` (rows of servers that are not installed are left out).
Uvicorn has no HTTP/2 row: it does not serve HTTP/2.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import trio
from run import HAVE_HYPERCORN, HAVE_UVICORN, PY, free_port, running

HERE = Path(__file__).resolve().parent
KEEP_ALIVE = 600  # seconds: longer than any run, so the servers' own timeouts close nothing
WARM_UP = 100
SETTLE = 2.0  # seconds between the last connection opening and the measurement
CONNECT_CONCURRENCY = 100  # connections being opened at once (backlogs are 100 to 2048)
SERVERS = ("trioserve", "uvicorn", "hypercorn-trio", "hypercorn-asyncio")


def server_command(name: str, port: int) -> list[str]:
    if name == "trioserve":
        return [PY, "-m", "trioserve", "apps:hello", "--app-dir", str(HERE), "--port", str(port),
                "--keep-alive-timeout", str(KEEP_ALIVE), "--no-access-log", "--log-level",
                "warning"]
    if name == "uvicorn":
        return [PY, "-m", "uvicorn", "apps:hello", "--app-dir", str(HERE), "--host", "127.0.0.1",
                "--port", str(port), "--timeout-keep-alive", str(KEEP_ALIVE), "--lifespan", "off",
                "--no-access-log", "--log-level", "warning"]
    worker = name.removeprefix("hypercorn-")
    return [PY, "-m", "hypercorn", "--worker-class", worker, "--bind", f"127.0.0.1:{port}",
            "--keep-alive", str(KEEP_ALIVE), "--backlog", "1024", "run:hypercorn_hello"]


def available(name: str, protocol: str) -> str | None:
    """Why ``name`` has no row, or None."""
    if name == "uvicorn":
        if not HAVE_UVICORN:
            return "not installed (pip install uvicorn)"
        if protocol == "h2":
            return "it does not serve HTTP/2"
    if name.startswith("hypercorn") and not HAVE_HYPERCORN:
        return "not installed (pip install hypercorn)"
    return None


# ------------------------------------------------------------------ the server's process tree


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss(pid: int) -> int:
    """VmRSS in bytes, summed over the process tree."""
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) * 1024 for line in f
                              if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total


def sockets(pid: int) -> int:
    """Socket descriptors held by the process tree."""
    n = 0
    for p in process_tree(pid):
        try:
            names = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for name in names:
            try:
                n += os.readlink(f"/proc/{p}/fd/{name}").startswith("socket:")
            except OSError:
                pass
    return n


def wait_sockets_at_most(pid: int, n: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while sockets(pid) > n and time.monotonic() < deadline:
        time.sleep(0.1)


# -------------------------------------------------------------------------------- the client


async def http1_request(stream: trio.SocketStream) -> None:
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("closed before the response")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(f"not a 200: {head[:40]!r}")
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    if m is None:
        raise ConnectionError("no content-length")
    while len(body) < int(m.group(1)):
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("closed in the body")
        body += chunk


async def h2_request(stream: trio.SocketStream) -> h2.connection.H2Connection:
    """One GET over HTTP/2 with prior knowledge; the connection (kept by the caller, so that
    the client's state stays alive as long as the socket) is left idle with no stream open."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":path", "/"), (":scheme", "http"),
                          (":authority", "127.0.0.1")], end_stream=True)
    await stream.send_all(conn.data_to_send())
    status = None
    while True:
        data = await stream.receive_some(65536)
        if not data:
            raise ConnectionError("closed before the response")
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                status = dict(event.headers).get(b":status")
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                if status != b"200":
                    raise ConnectionError(f"status {status!r}")
                await stream.send_all(conn.data_to_send())  # SETTINGS ack, WINDOW_UPDATEs
                return conn
            elif isinstance(event, h2.events.ConnectionTerminated | h2.events.StreamReset):
                raise ConnectionError(repr(event))
        if out := conn.data_to_send():
            await stream.send_all(out)


@dataclass
class Idle:
    streams: list[trio.SocketStream]
    states: list[object]  # the HTTP/2 client connections, kept alive with their sockets
    errors: list[str]

    async def aclose(self) -> None:
        for stream in self.streams:
            await stream.aclose()


async def open_idle(port: int, n: int, protocol: str) -> Idle:
    idle = Idle([], [], [])
    limiter = trio.CapacityLimiter(CONNECT_CONCURRENCY)

    async def one() -> None:
        async with limiter:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError as exc:
                idle.errors.append(f"connect: {exc}")
                return
            idle.streams.append(stream)
            try:
                with trio.fail_after(30):
                    if protocol == "h2":
                        idle.states.append(await h2_request(stream))
                    else:
                        await http1_request(stream)
            except (OSError, ConnectionError, trio.TooSlowError, trio.BrokenResourceError,
                    h2.exceptions.ProtocolError) as exc:
                idle.errors.append(f"{type(exc).__name__}: {exc}")

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
    return idle


# -------------------------------------------------------------------------------- measuring


@dataclass
class Row:
    name: str
    held: int
    before: int
    after: int
    connections: int
    errors: list[str]

    @property
    def per_connection(self) -> float:
        return (self.after - self.before) / self.connections


def measure(name: str, connections: int, protocol: str) -> Row:
    port = free_port()
    with running(server_command(name, port), port) as proc:
        started = sockets(proc.pid)

        async def go() -> Row:
            warm = await open_idle(port, WARM_UP, protocol)
            await warm.aclose()
            if warm.errors:
                raise RuntimeError(f"{name}: warm-up failed: {warm.errors[:3]}")
            await trio.to_thread.run_sync(wait_sockets_at_most, proc.pid, started)
            await trio.sleep(1)
            base_sockets, before = sockets(proc.pid), rss(proc.pid)
            idle = await open_idle(port, connections, protocol)
            try:
                await trio.sleep(SETTLE)
                after, held = rss(proc.pid), sockets(proc.pid) - base_sockets
            finally:
                await idle.aclose()
            return Row(name, held, before, after, connections, idle.errors)

        return trio.run(go)


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def table(rows: list[Row], args: argparse.Namespace, skipped: dict[str, str]) -> list[str]:
    base = next((r for r in rows if r.name == "trioserve"), None)
    lines = [f"Idle keep-alive connections ({args.protocol}, {args.connections:,} connections, "
             f"each after one GET /; RSS of the server's process tree), "
             f"{time.strftime('%Y-%m-%d %H:%M')}", "",
             "| server | connections held | RSS before | RSS after | bytes per idle connection "
             "| ratio vs trioserve |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = f"{r.per_connection / base.per_connection:.2f}x" if base else "-"
        lines.append(f"| {r.name} | {r.held:,} | {mib(r.before)} | {mib(r.after)} | "
                     f"{r.per_connection:,.0f} | {ratio} |")
    for r in rows:
        if r.errors:
            lines.append(f"\n{r.name}: {len(r.errors)} connections failed, e.g. {r.errors[0]}")
    for name, why in skipped.items():
        lines.append(f"\n{name}: no row, {why}")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=10_000)
    ap.add_argument("--server", choices=[*SERVERS, "all"], default="all")
    ap.add_argument("--protocol", choices=["http1", "h2"], default="http1")
    args = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.connections + 200
    if hard != resource.RLIM_INFINITY and hard < need:
        print(f"{args.connections} connections need {need} descriptors, the hard limit is "
              f"{hard}", file=sys.stderr)
        return 2
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the servers inherit it
    (HERE / "results").mkdir(exist_ok=True)
    names = SERVERS if args.server == "all" else (args.server,)
    rows, skipped = [], {}
    for name in names:
        if (why := available(name, args.protocol)) is not None:
            skipped[name] = why
            continue
        print(f"{name}: {args.connections:,} idle {args.protocol} connections ...",
              file=sys.stderr, flush=True)
        rows.append(measure(name, args.connections, args.protocol))
    lines = table(rows, args, skipped)
    print("\n".join(lines))
    (HERE / "results" / f"idle-{args.protocol}.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
