"""The floor: a minimal Trio + h11 server that answers every request with a canned response.

Two variants, both parsing every request fully with h11:

- ``h11``: the canonical h11 loop (h11's own example server): parse with ``next_event``, send a
  fixed ``Response``/``Data``/``EndOfMessage`` through ``Connection.send``, ``start_next_cycle``.
- ``prebuilt``: parse with h11, but write pre-serialized response bytes (a fresh
  ``h11.Connection`` per request carries the leftover bytes over), the cheapest way to use h11.

Run: ``python benchmarks/floor_h11.py PORT [h11|prebuilt]``.
"""

from __future__ import annotations

import functools
import sys
from email.utils import formatdate

import h11
import trio

BODY = b"Hello, world!"
HEADERS = [("content-type", "text/plain"), ("content-length", str(len(BODY))),
           ("server", "floor")]


async def handle_h11(stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                continue
            if isinstance(ev, h11.Request):
                continue
            if isinstance(ev, h11.EndOfMessage):
                out = conn.send(h11.Response(
                    status_code=200,
                    headers=[*HEADERS, ("date", formatdate(usegmt=True))]))
                out += conn.send(h11.Data(data=BODY))
                out += conn.send(h11.EndOfMessage())
                await stream.send_all(out)
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
                continue
            return  # ConnectionClosed or anything else
    except (h11.RemoteProtocolError, trio.BrokenResourceError):
        return
    finally:
        await stream.aclose()


PREBUILT = (b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 13\r\n"
            b"server: floor\r\n")


async def handle_prebuilt(stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                continue
            if isinstance(ev, h11.Request):
                continue
            if isinstance(ev, h11.EndOfMessage):
                date = formatdate(usegmt=True).encode()
                await stream.send_all(PREBUILT + b"date: " + date + b"\r\n\r\n" + BODY)
                leftover, closed = conn.trailing_data
                conn = h11.Connection(h11.SERVER)
                if leftover:
                    conn.receive_data(bytes(leftover))
                if closed:
                    conn.receive_data(b"")
                continue
            return
    except (h11.RemoteProtocolError, trio.BrokenResourceError):
        return
    finally:
        await stream.aclose()


def main() -> None:
    port = int(sys.argv[1])
    variant = sys.argv[2] if len(sys.argv) > 2 else "h11"
    handler = handle_h11 if variant == "h11" else handle_prebuilt
    print(f"floor ({variant}) listening on http://127.0.0.1:{port}", file=sys.stderr,
          flush=True)
    trio.run(functools.partial(trio.serve_tcp, handler, port, host="127.0.0.1"))


if __name__ == "__main__":
    main()
