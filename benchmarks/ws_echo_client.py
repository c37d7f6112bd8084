"""WebSocket echo load: N connections, each sending a small text message and waiting for its
echo, for a fixed time; the round trips per second (all connections together) and their
latency, as JSON on stdout.

    python benchmarks/ws_echo_client.py ws://127.0.0.1:8000/ --duration 5 --warmup 2
    python benchmarks/ws_echo_client.py ws://127.0.0.1:8000/ --processes 2   # cross-check

Loopback only: the URL's host must be 127.0.0.1, localhost or ::1.

Why a hand-written client on raw sockets, in one process. The server under test runs pinned to
one core and this client to the other, so the client must spend far less CPU per round trip
than the fastest server it measures, or it measures itself. Measured on the 2-core development
machine against Uvicorn (h11, websockets-sansio), 8 connections, CPU (user + system) per
message: this client 19-21 us, of which about two thirds is the kernel's loopback TCP that any
client pays; a client on ``websockets``' asyncio API 49-54 us (91 % of its core at 18,500
messages/second, so it would cap the faster servers); ``websockets``' sync client with a thread
per connection 36-46 us on a quiet machine and over 90 us as soon as other work competes for
the core (GIL hand-offs). The fastest server measured, Uvicorn with websockets-sansio, spends
about 31-40 us per message; this client then used about half of its core. So: one process,
one thread, one ``epoll`` loop over the connections' non-blocking sockets; per round trip one
``recv``, a 2-byte header parse, a comparison with what was sent, a masked frame built with a
fresh key and one ``send``.

How a run shows that the client was not the limit: it reports its own CPU use
(``client_cpu``: the share of one core it used in the measured phase, ``client_cpu_user`` its
user part, ``client_cpu_us_per_message``), and with ``--server-pid`` the server's
(``server_cpu``, its process and descendants, from /proc/PID/stat, and
``server_cpu_us_per_message``), plus how busy each CPU was (``cpu_busy``, /proc/stat: every
process there, other sessions' work included). ``server_cpu`` near 1.0 with ``client_cpu``
well under it means the server's core was the bottleneck. ``--processes N`` splits the
connections over N forked processes as a cross-check: on a quiet machine 1 and 2 processes gave
the same messages/second (trioserve 10,054 and 10,536; Uvicorn websockets-sansio 31,308 and
29,086; server at 98-100 % of its core each time). Where other work competes for the client's
core, two processes win more of the scheduler's share and so measure more; such a round shows
a ``server_cpu`` well under 1.0, and benchmarks/run.py marks it.

The protocol side is RFC 6455 as a client must speak it: the opening handshake with a random
``Sec-WebSocket-Key``, checked ``101``, ``Upgrade``, ``Connection`` and ``Sec-WebSocket-Accept``;
no ``Sec-WebSocket-Extensions`` offered, so permessage-deflate is off (a server that answers
with an extension anyway fails the handshake); every frame it sends is masked with a key from
``os.urandom``; the server's frames must be unmasked, FIN text frames with the payload sent
(anything else is an error); a ``ping`` is answered with a ``pong`` and ``pong`` frames are
skipped; at the end a close frame (1000) is sent and the server's close awaited briefly.
Each message is ``--size`` bytes of ASCII with the connection and sequence number in it, so
an echo that came back on the wrong connection or out of order is caught.

Exit status 0 with the result, or 1 with ``{"error": ...}`` on stdout (a failed handshake, a
connection closed or broken by the server, an echo that differs from the message, or a
connection that completed no round trip in the measured phase).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import multiprocessing
import os
import select
import socket
import struct
import sys
import time
from typing import Any
from urllib.parse import urlsplit

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class LoadError(Exception):
    """Anything that makes the run's number untrustworthy."""


class Masker:
    """Fresh 4-byte masking keys from ``os.urandom``, fetched 4 KiB at a time (RFC 6455 §5.3:
    a new, unpredictable key per frame), and the masking itself as one big-integer XOR."""

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def key(self) -> bytes:
        if self._at >= len(self._pool):
            self._pool, self._at = os.urandom(4096), 0
        key = self._pool[self._at:self._at + 4]
        self._at += 4
        return key

    def frame(self, opcode: int, payload: bytes) -> bytes:
        """One masked FIN frame carrying ``payload``."""
        n = len(payload)
        if n < 126:
            head = bytes((0x80 | opcode, 0x80 | n))
        elif n < 65536:
            head = bytes((0x80 | opcode, 0x80 | 126)) + struct.pack("!H", n)
        else:
            head = bytes((0x80 | opcode, 0x80 | 127)) + struct.pack("!Q", n)
        key = self.key()
        if not n:
            return head + key
        stream = (key * (n // 4 + 1))[:n]
        masked = (int.from_bytes(payload, "little") ^ int.from_bytes(stream, "little")).to_bytes(
            n, "little")
        return head + key + masked


def handshake(host: str, port: int, path: str, timeout: float) -> tuple[socket.socket, bytes]:
    """Open one WebSocket connection; return the socket (blocking, TCP_NODELAY) and any bytes
    that came after the 101 response."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise LoadError(f"handshake: cannot connect: {exc}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16))
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: " + key.decode() + "\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode("ascii")
    buf = b""
    try:
        sock.sendall(request)
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise LoadError("handshake: the server closed the connection without a "
                                f"complete response ({len(buf)} bytes: {buf[:80]!r})")
            buf += chunk
            if len(buf) > 65536:
                raise LoadError("handshake: response head over 64 KiB")
    except OSError as exc:
        sock.close()
        raise LoadError(f"handshake: {exc!r}") from None
    except LoadError:
        sock.close()
        raise
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    problem = None
    if len(status) < 2 or status[1] != "101":
        problem = f"status line {lines[0]!r}, not 101"
    elif [v.lower() for v in headers.get("upgrade", [])] != ["websocket"]:
        problem = f"Upgrade: {headers.get('upgrade')}"
    elif "upgrade" not in {t.strip().lower() for v in headers.get("connection", [])
                           for t in v.split(",")}:
        problem = f"Connection: {headers.get('connection')}"
    elif headers.get("sec-websocket-accept") != [
            base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()]:
        problem = f"Sec-WebSocket-Accept: {headers.get('sec-websocket-accept')}"
    elif "sec-websocket-extensions" in headers:
        problem = f"extension not offered: {headers['sec-websocket-extensions']}"
    if problem:
        sock.close()
        raise LoadError(f"handshake: {problem}")
    return sock, rest


class Conn:
    __slots__ = ("buf", "count", "expected", "index", "sent_at", "seq", "sock")

    def __init__(self, index: int, sock: socket.socket, rest: bytes) -> None:
        self.index = index
        self.sock = sock
        self.buf = bytearray(rest)
        self.seq = 0
        self.expected = b""
        self.sent_at = 0
        self.count = 0  # round trips in the measured phase


def _proc_cpu(pid: int) -> tuple[int, int] | None:
    """(ppid, utime + stime in clock ticks) of a process, from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[1]), int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return None


def tree_cpu(pids: list[int]) -> int | None:
    """CPU ticks used so far by the processes ``pids`` and all their descendants (Hypercorn
    serves from a child process), or None without /proc or without ``pids``."""
    if not pids or not os.path.isdir("/proc"):
        return None
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (entry := _proc_cpu(int(name))) is not None:
            table[int(name)] = entry
    wanted, total, grew = set(pids), 0, True
    while grew:
        more = {pid for pid, (ppid, _) in table.items() if ppid in wanted} - wanted
        grew = bool(more)
        wanted |= more
    for pid in wanted:
        if pid in table:
            total += table[pid][1]
    return total


def cpu_lines() -> dict[str, tuple[int, int]]:
    """(busy, total) clock ticks of each CPU from /proc/stat ({} without it)."""
    out = {}
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("cpu") and line[3].isdigit():
                    name, *fields = line.split()
                    values = [int(x) for x in fields[:8]]
                    idle = values[3] + values[4]  # idle + iowait
                    out[name] = (sum(values) - idle, sum(values))
    except (OSError, ValueError, IndexError):
        return {}
    return out


class Snapshot:
    """CPU counters at one moment: this process's, the server's (its process tree), and each
    CPU's (busy and total ticks, everything running there, other sessions' work included)."""

    def __init__(self, wall: float, own: os.times_result, server: int | None,
                 cpus: dict[str, tuple[int, int]]) -> None:
        self.wall, self.own, self.server, self.cpus = wall, own, server, cpus

    @classmethod
    def take(cls, server_pids: list[int]) -> Snapshot:
        return cls(time.monotonic(), os.times(), tree_cpu(server_pids), cpu_lines())

    def since(self, before: Snapshot) -> dict[str, Any]:
        """Shares of one core over the interval: the client's own (user and system), the
        server's, and how busy each CPU was."""
        wall = self.wall - before.wall
        tick = os.sysconf("SC_CLK_TCK")
        user = (self.own.user - before.own.user) / wall
        system = (self.own.system - before.own.system) / wall
        server = (None if self.server is None or before.server is None
                  else (self.server - before.server) / tick / wall)
        busy = {name: (self.cpus[name][0] - b[0]) / max(1, self.cpus[name][1] - b[1])
                for name, b in before.cpus.items() if name in self.cpus}
        return {"cpu_user": user, "cpu_system": system, "server_cpu": server,
                "cpu_busy": busy}


def run_connections(url: str, indexes: list[int], size: int, warmup: float, duration: float,
                    timeout: float, server_pids: list[int], barrier: Any = None
                    ) -> dict[str, Any]:
    """The load over the connections ``indexes`` in this process; the raw result."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    masker = Masker()
    filler = b"." * size
    conns = []
    try:
        for i in indexes:
            sock, rest = handshake(host, port, path, timeout)
            conns.append(Conn(i, sock, rest))
    except LoadError:
        for c in conns:
            c.sock.close()
        if barrier is not None:
            barrier.abort()
        raise
    if barrier is not None:
        barrier.wait(timeout)
    frame = masker.frame
    perf = time.perf_counter_ns
    measure_from_ns = perf() + int(warmup * 1e9)
    end_ns = measure_from_ns + int(duration * 1e9)
    latencies: list[int] = []
    before: Snapshot | None = None
    by_fd = {c.sock.fileno(): c for c in conns}

    def send_next(c: Conn) -> None:
        c.seq += 1
        c.expected = (b"%02d:%012d:" % (c.index, c.seq) + filler)[:size]
        data = frame(OP_TEXT, c.expected)
        c.sent_at = perf()
        if c.sock.send(data) != len(data):  # a few dozen bytes into an empty send buffer
            raise LoadError(f"connection {c.index}: short send")

    # Non-blocking sockets and epoll itself rather than selectors: the least Python per round
    # trip (one epoll_wait shared by the ready connections, one recv and one send each).
    ep = select.epoll()
    try:
        for c in conns:
            c.sock.setblocking(False)
            ep.register(c.sock.fileno(), select.EPOLLIN)
            send_next(c)
        last_progress = time.monotonic()
        while True:
            now_ns = perf()
            if before is None and now_ns >= measure_from_ns:
                before = Snapshot.take(server_pids)
            if now_ns >= end_ns:
                break
            events = ep.poll(0.05)
            if not events:
                if time.monotonic() - last_progress > timeout:
                    raise LoadError(f"no echo for {timeout:g} s")
                continue
            last_progress = time.monotonic()
            for fd, _ in events:
                c = by_fd[fd]
                try:
                    data = c.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    raise LoadError(f"connection {c.index}: recv: {exc!r}") from None
                if not data:
                    raise LoadError(f"connection {c.index}: the server closed the TCP "
                                    "connection")
                buf = c.buf
                buf += data
                while len(buf) >= 2:
                    b0, b1 = buf[0], buf[1]
                    n = b1 & 0x7F
                    off = 2
                    if n == 126:
                        if len(buf) < 4:
                            break
                        n, off = struct.unpack_from("!H", buf, 2)[0], 4
                    elif n == 127:
                        if len(buf) < 10:
                            break
                        n, off = struct.unpack_from("!Q", buf, 2)[0], 10
                    if len(buf) < off + n:
                        break
                    if b1 & 0x80:
                        raise LoadError(f"connection {c.index}: masked frame from the server")
                    payload = bytes(buf[off:off + n])
                    del buf[:off + n]
                    opcode = b0 & 0x0F
                    if b0 == 0x80 | OP_TEXT:
                        if payload != c.expected:
                            raise LoadError(f"connection {c.index}: echo {payload[:40]!r} for "
                                            f"message {c.expected[:40]!r}")
                        t = perf()
                        if c.sent_at >= measure_from_ns and t <= end_ns:
                            c.count += 1
                            latencies.append(t - c.sent_at)
                        send_next(c)
                    elif opcode == OP_PING:
                        c.sock.sendall(frame(OP_PONG, payload))
                    elif opcode == OP_PONG:
                        pass
                    elif opcode == OP_CLOSE:
                        code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                        raise LoadError(f"connection {c.index}: the server sent close "
                                        f"(code {code}, {payload[2:80]!r})")
                    else:
                        raise LoadError(f"connection {c.index}: unexpected frame, first byte "
                                        f"{b0:#04x} (not a text echo: opcode {opcode:#x}, "
                                        f"FIN {b0 >> 7}, RSV {(b0 >> 4) & 7})")
        after = Snapshot.take(server_pids)
    finally:
        ep.close()
        for c in conns:
            c.sock.setblocking(True)
        close_all(conns, masker)
    assert before is not None
    # counted: the round trips sent and answered within [measure_from_ns, end_ns]
    return {"counts": {c.index: c.count for c in conns}, "latencies": latencies,
            "wall": (end_ns - measure_from_ns) / 1e9, **after.since(before)}


def close_all(conns: list[Conn], masker: Masker) -> None:
    """Send close (1000) on each connection, wait up to 1 s in all for the server's close or
    EOF, then close the sockets. Errors here do not fail the run."""
    close = struct.pack("!H", 1000)
    for c in conns:
        try:
            c.sock.sendall(masker.frame(OP_CLOSE, close))
        except OSError:
            pass
    deadline = time.monotonic() + 1.0
    for c in conns:
        try:
            while (left := deadline - time.monotonic()) > 0:
                c.sock.settimeout(left)
                if not c.sock.recv(65536):
                    break
        except OSError:
            pass
        c.sock.close()


def _child(url: str, indexes: list[int], args: argparse.Namespace, barrier: Any,
           queue: Any) -> None:
    try:
        queue.put(run_connections(url, indexes, args.size, args.warmup, args.duration,
                                  args.timeout, args.server_pid, barrier))
    except LoadError as exc:
        queue.put({"error": str(exc)})
    except Exception as exc:  # reported to the parent, never a hang
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def percentile(sorted_values: list[int], q: float) -> float:
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k] / 1e6  # ms


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url", help="ws://127.0.0.1:PORT/PATH")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--size", type=int, default=32, help="message size in bytes (>= 16)")
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    ap.add_argument("--warmup", type=float, default=2.0,
                    help="seconds of load on the same connections before measuring")
    ap.add_argument("--processes", type=int, default=1,
                    help="split the connections over this many processes (default 1)")
    ap.add_argument("--timeout", type=float, default=5.0,
                    help="handshake timeout, and the longest wait for any echo")
    ap.add_argument("--server-pid", type=int, action="append", default=[],
                    help="report the CPU share this process and its descendants used in the "
                         "measured phase (server_cpu); repeatable")
    args = ap.parse_args()
    parts = urlsplit(args.url)
    if parts.scheme != "ws" or parts.hostname not in LOOPBACK:
        ap.error("the URL must be ws://127.0.0.1:PORT/... (loopback only, no TLS)")
    if args.size < 16 or args.connections < 1 or not 1 <= args.processes <= args.connections:
        ap.error("--size >= 16, --connections >= 1, 1 <= --processes <= --connections")
    if not 0 < args.duration <= 600 or not 0 <= args.warmup <= 600:
        ap.error("--duration in (0, 600], --warmup in [0, 600]")

    indexes = list(range(args.connections))
    try:
        if args.processes == 1:
            parts_out = [run_connections(args.url, indexes, args.size, args.warmup,
                                         args.duration, args.timeout, args.server_pid)]
        else:
            ctx = multiprocessing.get_context("fork")
            barrier, queue = ctx.Barrier(args.processes), ctx.Queue()
            procs = [ctx.Process(target=_child, args=(args.url, indexes[i::args.processes],
                                                      args, barrier, queue))
                     for i in range(args.processes)]
            for p in procs:
                p.start()
            limit = args.timeout * 3 + args.warmup + args.duration + 5
            parts_out = [queue.get(timeout=limit) for _ in procs]
            for p in procs:
                p.join(5)
            errors = [p["error"] for p in parts_out if "error" in p]
            if errors:
                raise LoadError("; ".join(errors))
    except LoadError as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    except Exception as exc:  # e.g. queue.Empty: reported as a failed run
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1

    counts = {i: n for part in parts_out for i, n in part["counts"].items()}
    latencies = sorted(x for part in parts_out for x in part["latencies"])
    wall = max(part["wall"] for part in parts_out)
    total = sum(counts.values())
    idle = sorted(i for i, n in counts.items() if not n)
    result: dict[str, Any] = {
        "url": args.url, "connections": args.connections, "size": args.size,
        "processes": args.processes, "warmup": args.warmup, "duration": round(wall, 3),
        "messages": total, "messages_per_second": round(total / wall, 1),
        "latency_ms": ({"p50": round(percentile(latencies, 0.50), 3),
                        "p90": round(percentile(latencies, 0.90), 3),
                        "p99": round(percentile(latencies, 0.99), 3),
                        "max": round(latencies[-1] / 1e6, 3)} if latencies else None),
        "per_connection": [counts[i] for i in indexes],
        # shares of one core during the measured phase (see the module's docstring)
        "client_cpu": round(sum(p["cpu_user"] + p["cpu_system"] for p in parts_out), 3),
        "client_cpu_user": round(sum(p["cpu_user"] for p in parts_out), 3),
        "client_cpu_us_per_message": (round(sum(p["cpu_user"] + p["cpu_system"]
                                                for p in parts_out) * wall / total * 1e6, 1)
                                      if total else None),
        "server_cpu": (None if parts_out[0]["server_cpu"] is None
                       else round(parts_out[0]["server_cpu"], 3)),
        # the server's CPU time per round trip: steadier than messages/second where other
        # work shares the machine (it still moves with cache and batching effects)
        "server_cpu_us_per_message": (None if parts_out[0]["server_cpu"] is None or not total
                                      else round(parts_out[0]["server_cpu"] * wall / total
                                                 * 1e6, 1)),
        "cpu_busy": {k: round(v, 3) for k, v in parts_out[0]["cpu_busy"].items()},
    }
    if idle:
        result["error"] = f"connections {idle} completed no round trip in the measured phase"
    print(json.dumps(result))
    return 1 if idle else 0


if __name__ == "__main__":
    sys.exit(main())
