"""A graceful drain (SIGTERM, a worker's reload) does not close a connection waiting for a
request at once, kept-alive or just accepted: the request may be on its way (a rolling restart
of workers under load would lose it). A request that arrives within the grace is served with
``Connection: close``; a connection that sends nothing is closed after the grace, long before
the graceful timeout."""

from __future__ import annotations

from typing import Any

import trio
from conftest import make_config, parse_responses, read_until_closed, run_server
from trioserve.bridges.asgi import ASGIBridge

from trioserve import serve


def _app(release: trio.Event) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/slow":
            await release.wait()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": scope["path"].encode()})
    return app


REQUEST = b"GET /%s HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_drain_serves_requests_sent_just_after_it_began() -> None:
    release = trio.Event()
    config = make_config(timeouts={"graceful": 30})
    with trio.fail_after(20):
        async with run_server(_app(release), config) as srv:
            fresh = await trio.open_tcp_stream("127.0.0.1", srv.port)  # accepted, sends nothing yet
            silent = await trio.open_tcp_stream("127.0.0.1", srv.port)  # never sends
            idle = await trio.open_tcp_stream("127.0.0.1", srv.port)
            await idle.send_all(REQUEST % b"idle")
            first = await idle.receive_some(65536)
            assert first.startswith(b"HTTP/1.1 200")
            quiet = await trio.open_tcp_stream("127.0.0.1", srv.port)  # kept alive, then silent
            await quiet.send_all(REQUEST % b"quiet")
            assert (await quiet.receive_some(65536)).startswith(b"HTTP/1.1 200")
            slow = await trio.open_tcp_stream("127.0.0.1", srv.port)
            await slow.send_all(REQUEST % b"slow")
            await trio.sleep(0.2)  # the slow request is in the app: the drain lasts until release
            srv.shutdown.set()
            await trio.sleep(0.3)
            # the kept-alive connection's next request is served, and the connection closed
            await idle.send_all(REQUEST % b"again")
            answer = parse_responses(await read_until_closed(idle))
            assert [(r.status_code, body) for r, body in answer] == [(200, b"/again")]
            assert (b"connection", b"close") in answer[0][0].headers
            # the accepted connection's request, sent after the drain began, is served
            await fresh.send_all(REQUEST % b"fresh")
            answer = parse_responses(await read_until_closed(fresh))
            assert [(r.status_code, body) for r, body in answer] == [(200, b"/fresh")]
            assert (b"connection", b"close") in answer[0][0].headers
            # the silent ones are closed after the grace, while the slow request still runs
            assert await read_until_closed(silent) == b""
            assert await read_until_closed(quiet) == b""
            assert not release.is_set()
            release.set()
            answer = parse_responses(await read_until_closed(slow))
            assert [(r.status_code, body) for r, body in answer] == [(200, b"/slow")]


async def test_drain_serves_the_next_request_after_a_keep_alive_response() -> None:
    # The response's head went out before the drain, promising keep-alive: the client may
    # send its next request as soon as the body ends, and that request must be served.
    release = trio.Event()
    started = trio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"5")]})
        if scope["path"] == "/held":
            await send({"type": "http.response.body", "body": b"hel", "more_body": True})
            started.set()
            await release.wait()
            await send({"type": "http.response.body", "body": b"lo"})
            return
        await send({"type": "http.response.body", "body": b"hello"})

    with trio.fail_after(20):
        async with run_server(app, make_config()) as srv:
            conn = await trio.open_tcp_stream("127.0.0.1", srv.port)
            await conn.send_all(REQUEST % b"held")
            await started.wait()
            srv.shutdown.set()
            await trio.sleep(0.2)
            release.set()
            head = b""
            while not head.endswith(b"hello"):
                chunk = await conn.receive_some(65536)
                assert chunk, head
                head += chunk
            assert b"connection: close" not in head.lower()  # keep-alive was promised
            await conn.send_all(REQUEST % b"next")
            answer = parse_responses(await read_until_closed(conn))
            assert [(r.status_code, body) for r, body in answer] == [(200, b"hello")]
            assert (b"connection", b"close") in answer[0][0].headers


async def test_force_event_cancels_in_flight_requests() -> None:
    # serve(force=...) is the second signal of a program that handles signals itself (a
    # worker's SIGQUIT): in-flight requests are cancelled instead of waiting for the graceful
    # timeout.
    release = trio.Event()
    force = trio.Event()
    config = make_config(timeouts={"graceful": 60})
    wrapped = ASGIBridge(_app(release), lifespan="off")
    shutdown = trio.Event()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(
                lambda task_status: serve(wrapped, config, shutdown=shutdown, force=force,
                                          install_signal_handlers=False,
                                          task_status=task_status))
            port = int(addresses[0].rpartition(":")[2])
            conn = await trio.open_tcp_stream("127.0.0.1", port)
            await conn.send_all(REQUEST % b"slow")
            await trio.sleep(0.2)
            shutdown.set()
            await trio.sleep(0.2)
            force.set()
            # the slow request is cancelled: its connection closes without a response
            assert await read_until_closed(conn) == b""
        assert not release.is_set()
