"""Requests lost to graceful reloads under keep-alive load.

Starts ``trioserve trioserve.demo:app --workers N`` on a free loopback port, runs ``--clients``
threads that each keep one raw HTTP/1.1 connection alive and send GETs back to back (no retry,
like wrk: a request the server closes the connection on is lost), sends SIGHUP ``--reloads``
times, and prints the requests served and lost::

    python benchmarks/reload_under_load.py --workers 2 --clients 12 --reloads 3

Exit status 1 when a request was lost. Loopback only; bounded by ``--reloads`` and
``--interval``.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Client(threading.Thread):
    """One keep-alive connection sending requests until ``stop``; reconnects only when a
    response says ``Connection: close``. Counts served requests and lost ones (the connection
    closed before a whole response)."""

    def __init__(self, port: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop = stop
        self.served = 0
        self.lost: list[str] = []

    def run(self) -> None:
        sock: socket.socket | None = None
        while not self.stop.is_set():
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
            try:
                sock.sendall(REQUEST)
                close = self._read_response(sock)
            except (OSError, EOFError) as exc:
                self.lost.append(f"{type(exc).__name__}: {exc}")
                close = True
            else:
                self.served += 1
            if close:
                sock.close()
                sock = None
        if sock is not None:
            sock.close()

    @staticmethod
    def _read_response(sock: socket.socket) -> bool:
        """Read one response; ``True`` when it says ``Connection: close``."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise EOFError(f"closed after {len(data)} bytes of the response")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        m = re.search(rb"(?im)^content-length: *(\d+)", head)
        length = int(m.group(1)) if m else 0
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise EOFError("closed in the middle of the body")
            body += chunk
        return re.search(rb"(?im)^connection: *close", head) is not None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--clients", type=int, default=12)
    p.add_argument("--reloads", type=int, default=3)
    p.add_argument("--interval", type=float, default=2.5, help="seconds between reloads")
    args = p.parse_args()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "trioserve", "trioserve.demo:app", "--port", str(port),
         "--workers", str(args.workers), "--no-access-log"],
        stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        for line in server.stderr:
            if "ready (" in line:  # "2 workers ready (pids)"
                break
        threading.Thread(target=server.stderr.read, daemon=True).start()  # keep draining
        stop = threading.Event()
        clients = [Client(port, stop) for _ in range(args.clients)]
        for c in clients:
            c.start()
        for _ in range(args.reloads):
            time.sleep(args.interval)
            os.kill(server.pid, signal.SIGHUP)
        time.sleep(args.interval)
        stop.set()
        for c in clients:
            c.join(60)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    served = sum(c.served for c in clients)
    lost = [reason for c in clients for reason in c.lost]
    print(f"trioserve --workers {args.workers}, {args.clients} keep-alive clients, "
          f"{args.reloads} SIGHUP reloads: {served} requests served, {len(lost)} lost")
    for reason in lost[:10]:
        print(f"  lost: {reason}")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
