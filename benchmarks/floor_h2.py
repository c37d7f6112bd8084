"""The HTTP/2 floor: a minimal Trio + h2 server that answers every request with a canned response.

Plain TCP with prior knowledge (h2c, no TLS, no HTTP/1.1 upgrade), one ``h2.connection.
H2Connection`` per connection: read, feed the bytes to h2, answer each ``RequestReceived`` with
fixed headers and ``Hello, world!`` (the body of ``apps:hello``) ending the stream, acknowledge
``DataReceived`` so flow control never stalls, and write everything h2 produced once per read.
Nothing else: it is the cheapest correct HTTP/2 server on Trio, the lower bound for one.

Run: ``python benchmarks/floor_h2.py PORT``.
"""

from __future__ import annotations

import functools
import sys

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import trio

BODY = b"Hello, world!"
HEADERS = [(b":status", b"200"), (b"content-type", b"text/plain"),
           (b"content-length", str(len(BODY)).encode())]
CONFIG = h2.config.H2Configuration(client_side=False, header_encoding=None)


async def handle(stream: trio.SocketStream) -> None:
    conn = h2.connection.H2Connection(CONFIG)
    conn.initiate_connection()
    try:
        await stream.send_all(conn.data_to_send())
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    conn.send_headers(ev.stream_id, HEADERS)
                    conn.send_data(ev.stream_id, BODY, end_stream=True)
                elif isinstance(ev, h2.events.DataReceived):
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    await stream.send_all(conn.data_to_send())
                    return
            await stream.send_all(conn.data_to_send())
    except (h2.exceptions.ProtocolError, trio.BrokenResourceError):
        return
    finally:
        await stream.aclose()


def main() -> None:
    port = int(sys.argv[1])
    print(f"floor (trio+h2, h2c) listening on http://127.0.0.1:{port}", file=sys.stderr,
          flush=True)
    trio.run(functools.partial(trio.serve_tcp, handle, port, host="127.0.0.1"))


if __name__ == "__main__":
    main()
