"""Edge behaviour over real sockets: slow readers, lingering close, read-only sent headers,
disconnect polling, framing details."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest
import trio
from conftest import make_config, parse_responses, raw_exchange, run_server
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from trioserve import MinDataRate
from trioserve.features import (
    FeatureStateError,
    RequestContext,
    ResponseBodyFeature,
    ResponseFeature,
)


async def test_client_that_stops_reading_is_disconnected() -> None:
    dropped = trio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        chunk = b"x" * 65536
        try:
            for _ in range(2000):  # 128 MiB: far more than the socket buffers hold
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except OSError:
            dropped.set()
            raise

    config = make_config(limits={"min_response_data_rate": MinDataRate(100_000, 0.5)})
    with trio.fail_after(30):
        async with run_server(app, config) as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            async with stream:
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                await dropped.wait()  # without ever reading


async def test_slow_reader_limit_can_be_disabled() -> None:
    finished = trio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(8 * 1024 * 1024).encode())]})
        for _ in range(128):
            await send({"type": "http.response.body", "body": b"y" * 65536, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        finished.set()

    config = make_config(limits={"min_response_data_rate": None})
    with trio.fail_after(30):
        async with run_server(app, config) as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            async with stream:
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                await trio.sleep(1.5)  # longer than any grace period; nothing is read
                assert not finished.is_set()
                total = 0
                while not finished.is_set() or total < 8 * 1024 * 1024:
                    data = await stream.receive_some(1 << 20)
                    if not data:
                        break
                    total += len(data)
                assert total > 8 * 1024 * 1024  # headers + the whole body


async def test_response_headers_are_read_only_once_sent() -> None:
    outcome: dict[str, object] = {}

    async def app(ctx: RequestContext) -> None:
        resp = ctx.features[ResponseFeature]
        body = ctx.features[ResponseBodyFeature]
        resp.headers.append((b"x-before", b"1"))
        await body.start()
        for attempt in ("append", "assign"):
            try:
                if attempt == "append":
                    resp.headers.append((b"x-after", b"1"))
                else:
                    resp.headers = []
            except FeatureStateError as exc:
                outcome[attempt] = str(exc)
        outcome["visible"] = list(resp.headers)
        await body.complete(b"ok")

    with trio.fail_after(10):
        async with run_server(app, asgi=False) as srv:
            async with httpx.AsyncClient() as client:
                r = await client.get(srv.url)
    assert r.headers["x-before"] == "1" and "x-after" not in r.headers
    assert "started" in str(outcome["append"]) and "started" in str(outcome["assign"])
    assert (b"x-before", b"1") in outcome["visible"]  # type: ignore[operator]


async def test_head_response_keeps_the_length_of_a_whole_body() -> None:
    async def app(ctx: RequestContext) -> None:
        await ctx.features[ResponseBodyFeature].complete(b"hello")

    with trio.fail_after(10):
        async with run_server(app, asgi=False) as srv:
            data = await raw_exchange(
                srv.port, b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    [(resp, body)] = parse_responses(data, [b"HEAD"])
    assert dict(resp.headers)[b"content-length"] == b"5"
    assert body == b""
    assert data.endswith(b"\r\n\r\n")


async def test_starlette_is_disconnected_sees_a_client_that_left() -> None:
    noticed = trio.Event()

    async def poll(request: Request) -> PlainTextResponse:
        await request.body()
        while not await request.is_disconnected():  # noqa: ASYNC110 - the polling under test
            await anyio.sleep(0.02)
        noticed.set()
        return PlainTextResponse("gone")

    app = Starlette(routes=[Route("/poll", poll)])
    with trio.fail_after(10):
        async with run_server(app) as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            await stream.send_all(b"GET /poll HTTP/1.1\r\nHost: x\r\n\r\n")
            await trio.sleep(0.2)
            await stream.aclose()
            with trio.fail_after(2):
                await noticed.wait()


async def test_413_reaches_a_client_still_sending_its_body() -> None:
    async def upload(request: Request) -> PlainTextResponse:
        body = await request.body()
        return PlainTextResponse(str(len(body)))

    app = Starlette(routes=[Route("/upload", upload, methods=["POST"])])
    config = make_config(limits={"max_request_body_size": 1024 * 1024})
    with trio.fail_after(20):
        async with run_server(app, config) as srv:
            async with httpx.AsyncClient() as client:
                # httpx writes the whole body before it reads the answer.
                r = await client.post(f"{srv.url}/upload", content=b"z" * (4 * 1024 * 1024))
                assert r.status_code == 413
                assert r.headers["connection"] == "close"
                r = await client.post(f"{srv.url}/upload", content=b"z" * 1000)
                assert r.status_code == 200 and r.text == "1000"


async def test_early_answer_to_100_continue_closes() -> None:
    async def app(ctx: RequestContext) -> None:
        ctx.features[ResponseFeature].status = 403
        await ctx.features[ResponseBodyFeature].complete(b"no")

    with trio.fail_after(10):
        async with run_server(app, asgi=False) as srv:
            data = await raw_exchange(
                srv.port,
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                b"Expect: 100-continue\r\n\r\n")
    assert not data.startswith(b"HTTP/1.1 100")
    [(resp, body)] = parse_responses(data)
    assert resp.status_code == 403 and body == b"no"
    assert dict(resp.headers)[b"connection"] == b"close"


async def test_higher_http1_minor_version_is_served_as_1_1() -> None:
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        seen.append(scope["http_version"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with trio.fail_after(10):
        async with run_server(app) as srv:
            data = await raw_exchange(
                srv.port, b"GET / HTTP/1.2\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 204 ")
    assert seen == ["1.1"]


@pytest.mark.parametrize("target", [b"http:///x", b"http://", b"http://?q"])
async def test_absolute_form_needs_a_host(target: bytes) -> None:
    called: list[object] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        called.append(scope)

    with trio.fail_after(10):
        async with run_server(app) as srv:
            data = await raw_exchange(srv.port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400 ")
    assert not [c for c in called if c["type"] == "http"]  # type: ignore[index]


async def test_lifespan_state_is_in_the_scope_even_when_empty() -> None:
    states: list[object] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        states.append(scope.get("state"))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with trio.fail_after(10):
        async with run_server(app) as srv:
            async with httpx.AsyncClient() as client:
                await client.get(srv.url)
    assert states == [{}]
