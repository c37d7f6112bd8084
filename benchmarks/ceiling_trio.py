"""The ceiling: what Trio itself costs per HTTP/1.1 request, with no HTTP at all.

A Trio task per connection reads from a non-blocking socket (``trio.lowlevel.wait_readable``,
``recv``), finds the end of each request head with ``bytes.find(b"\\r\\n\\r\\n")`` (no parsing,
no validation, no timeouts) and writes a canned ``Hello, world!`` response, yielding to the
scheduler once per read as trioserve does. No server can do less per request on Trio: the gap
between this and a real server is the server's own Python, and the gap between this and
Uvicorn with uvloop is what the event loop costs. Not a server to use: it answers anything.

Run: ``python benchmarks/ceiling_trio.py PORT``.
"""

from __future__ import annotations

import socket
import sys

import trio

RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 13\r\n"
            b"server: ceiling\r\ndate: Mon, 07 Dec 2026 00:00:00 GMT\r\n\r\nHello, world!")


async def handle(sock: socket.socket) -> None:
    buf = b""
    try:
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                return
            if not data:
                return
            buf += data
            while (end := buf.find(b"\r\n\r\n")) >= 0:
                buf = buf[end + 4:]
                try:
                    sock.send(RESPONSE)  # small: the socket buffer always takes it
                except OSError:
                    return
            await trio.lowlevel.cancel_shielded_checkpoint()
    finally:
        trio.lowlevel.notify_closing(sock)
        sock.close()


async def main(port: int) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(1024)
    listener.setblocking(False)
    print(f"ceiling (trio, no HTTP) listening on http://127.0.0.1:{port}", file=sys.stderr,
          flush=True)
    async with trio.open_nursery() as nursery:
        while True:
            await trio.lowlevel.wait_readable(listener)
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            nursery.start_soon(handle, sock)


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]))
