"""Regression tests for problems found in review: interrupted writes, concurrent disconnect
waiters, 101 without an upgrade, resets for cut-short responses, errors while finishing, a
SystemExit in the app, the first request's header deadline, swallowed start-up failures."""

from __future__ import annotations

import sys
from typing import Any

import anyio
import httpx
import pytest
import trio
from conftest import make_config, parse_responses, raw_exchange, run_server
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route
from trioserve.bridges.asgi import ASGIBridge

from trioserve import serve
from trioserve.features import (
    ClientDisconnected,
    LifespanFailure,
    RequestContext,
    ResponseBodyFeature,
    ResponseFeature,
)


async def test_interrupted_write_aborts_the_response() -> None:
    outcome: list[str] = []

    async def app(ctx: RequestContext) -> None:
        out = ctx.features[ResponseBodyFeature]
        await out.start()
        with trio.move_on_after(0.3):
            await out.send(b"x" * (32 * 1024 * 1024))  # far more than socket buffers hold
        try:
            await out.complete(b"tail")
        except ClientDisconnected:
            outcome.append("refused")
        else:
            outcome.append("completed")

    with trio.fail_after(20):
        async with run_server(app, asgi=False) as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            async with stream:
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
                                      b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n")
                await trio.sleep(1.0)  # read nothing while the app's write is cancelled
                received = b""
                try:
                    while chunk := await stream.receive_some(1 << 20):
                        received += chunk
                except trio.BrokenResourceError:
                    pass
    assert outcome == ["refused"]
    assert received.count(b"HTTP/1.1 200") == 1  # the second request was never answered
    assert not received.endswith(b"0\r\n\r\n")


async def test_concurrent_disconnect_waiters() -> None:
    """sse-starlette's pattern: a task waiting in receive() while the streaming task polls
    is_disconnected(); both must work and the response must complete."""

    async def events(request: Request) -> StreamingResponse:
        async def listen() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        async def body() -> Any:
            async with anyio.create_task_group() as tg:
                tg.start_soon(listen)
                for i in range(5):
                    assert not await request.is_disconnected()
                    yield b"data: %d\n\n" % i
                    await anyio.sleep(0.01)
                tg.cancel_scope.cancel()

        return StreamingResponse(body(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/events", events)])
    with trio.fail_after(10):
        async with run_server(app) as srv:
            async with httpx.AsyncClient() as client:
                r = await client.get(f"{srv.url}/events")
    assert r.status_code == 200
    assert r.text == "".join(f"data: {i}\n\n" for i in range(5))


async def test_asgi_101_without_upgrade_is_refused() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 101, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with trio.fail_after(10):
        async with run_server(app) as srv:
            data = await raw_exchange(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    [(resp, _)] = parse_responses(data)
    assert resp.status_code == 500


async def test_close_delimited_response_cut_short_is_reset() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part one, ", "more_body": True})
        raise RuntimeError("boom")

    with trio.fail_after(10):
        async with run_server(app) as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            async with stream:
                await stream.send_all(b"GET / HTTP/1.0\r\n\r\n")
                with pytest.raises(trio.BrokenResourceError):  # RST, never a clean EOF
                    while await stream.receive_some(65536):
                        pass


@pytest.mark.parametrize("mistake", ["reason", "on_starting"])
async def test_error_while_finishing_gives_500(mistake: str) -> None:
    async def app(ctx: RequestContext) -> None:
        resp = ctx.features[ResponseFeature]
        if mistake == "reason":
            resp.reason = "bad\r\nInjected: yes"
        else:
            async def fail() -> None:
                raise RuntimeError("callback failed")
            resp.on_starting(fail)
        # returns without completing: the server finishes the response

    with trio.fail_after(10):
        async with run_server(app, asgi=False) as srv:
            data = await raw_exchange(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            [(resp, _)] = parse_responses(data)
            assert resp.status_code == 500
            assert b"Injected" not in data


async def test_system_exit_in_app_does_not_stop_the_server() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/exit":
            sys.exit(3)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with trio.fail_after(10):
        async with run_server(app) as srv:
            data = await raw_exchange(srv.port, b"GET /exit HTTP/1.1\r\nHost: x\r\n\r\n")
            assert parse_responses(data)[0][0].status_code == 500
            async with httpx.AsyncClient() as client:
                assert (await client.get(f"{srv.url}/ok")).status_code == 204


async def test_first_request_header_deadline_runs_from_accept() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        pass

    config = make_config(timeouts={"request_headers": 1.0})
    with trio.fail_after(10):
        async with run_server(app, config) as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            async with stream:
                start = trio.current_time()
                await trio.sleep(0.6)
                await stream.send_all(b"G")
                data = b""
                while chunk := await stream.receive_some(65536):
                    data += chunk
                elapsed = trio.current_time() - start
    assert data.startswith(b"HTTP/1.1 408 ")
    assert elapsed < 1.5  # not 0.6 + 1.0


async def test_swallowed_startup_failure_still_fails_startup() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        await receive()
        try:
            await send({"type": "lifespan.startup.failed", "message": "no database"})
        except Exception:
            pass  # a careless app
        await receive()

    with trio.fail_after(10), pytest.raises(LifespanFailure, match="no database"):
        await serve(ASGIBridge(app), make_config(), install_signal_handlers=False)


async def test_second_disconnect_waiter_takes_over_when_the_reader_gives_up() -> None:
    from trioserve.features import RequestLifetimeFeature

    result: dict[str, str] = {}

    async def app(ctx: RequestContext) -> None:
        lifetime = ctx.features[RequestLifetimeFeature]

        async def a() -> None:
            with trio.move_on_after(0.2):
                await lifetime.wait_done()
            result["A"] = "gave up"

        async def b() -> None:
            await trio.sleep(0.05)
            with trio.move_on_after(5) as scope:
                await lifetime.wait_done()
            result["B"] = "hung" if scope.cancelled_caught else "saw the disconnect"

        async with trio.open_nursery() as nursery:
            nursery.start_soon(a)
            nursery.start_soon(b)

    with trio.fail_after(10):
        async with run_server(app, asgi=False) as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await trio.sleep(0.5)
            await stream.aclose()
            while "B" not in result:  # noqa: ASYNC110
                await trio.sleep(0.05)
    assert result == {"A": "gave up", "B": "saw the disconnect"}


async def test_cancelled_send_file_aborts_the_response(tmp_path: Any) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(b"a" * (64 * 1024 * 1024))
    outcome: list[str] = []

    async def app(ctx: RequestContext) -> None:
        out = ctx.features[ResponseBodyFeature]
        with trio.move_on_after(0.3):
            await out.send_file(str(path))
        try:
            await out.complete()
        except ClientDisconnected:
            outcome.append("refused")

    with trio.fail_after(20):
        async with run_server(app, asgi=False) as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            async with stream:
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                while not outcome:  # noqa: ASYNC110
                    await trio.sleep(0.05)
    assert outcome == ["refused"]


async def test_wsgi_write_after_the_request_ended_does_not_hurt_the_server() -> None:
    import threading
    import time

    from trioserve.bridges.wsgi import WSGIBridge

    late: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        write = start_response("200 OK", [("Content-Type", "text/plain")])

        def background() -> None:
            time.sleep(0.3)
            try:
                write(b"late")
            except OSError as exc:
                late.append(type(exc).__name__)

        threading.Thread(target=background).start()
        return [b"hi"]

    with trio.fail_after(10):
        async with run_server(WSGIBridge(app), asgi=False) as srv:
            data = await raw_exchange(
                srv.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert data.endswith(b"\r\n\r\nhi")
            while not late:  # noqa: ASYNC110 - set by a plain thread
                await trio.sleep(0.05)
            async with httpx.AsyncClient() as client:
                assert (await client.get(srv.url)).text == "hi"
    assert late == ["ClientDisconnected"]
