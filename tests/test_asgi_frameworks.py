"""Real ASGI frameworks served by trioserve over real loopback sockets: Starlette and FastAPI
(anyio runs on Trio here), driven with httpx.AsyncClient.

No ``from __future__ import annotations`` in this module: FastAPI reads the endpoints'
annotations at runtime, and the pydantic models live at module level for it.
"""

import hashlib
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import h11
import httpx
import pytest
import trio
from conftest import make_config, run_server
from fastapi import FastAPI
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from trioserve.bridges.asgi import ASGIBridge

from trioserve import serve
from trioserve.features import LifespanFailure

TIMEOUT = 20
MiB = 1024 * 1024


class Item(BaseModel):
    name: str
    price: float
    tags: list[str] = []


class Priced(BaseModel):
    id: int
    q: str | None
    item: Item
    total: float


@dataclass
class AppState:
    """What the apps record, for the tests to check."""

    events: list[str] = field(default_factory=list)
    proceed: trio.Event = field(default_factory=trio.Event)
    sse_started: trio.Event = field(default_factory=trio.Event)
    sse_disconnected: trio.Event = field(default_factory=trio.Event)
    sse_disconnected_at: float | None = None
    upload_chunks: list[int] = field(default_factory=list)


class NoticingStreamingResponse(StreamingResponse):
    """A StreamingResponse that records when the client went away (spec 2.4: send() raises
    OSError, which Starlette turns into ClientDisconnect)."""

    def __init__(self, state: AppState, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.state = state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        except ClientDisconnect:
            self.state.sse_disconnected_at = trio.current_time()
            self.state.sse_disconnected.set()
            raise


def routes(state: AppState) -> list[Route]:
    async def upload(request: Request) -> Response:
        # Read the body as it streams in (hashing on the way), then stream it back.
        chunks = []
        digest = hashlib.sha256()
        async for chunk in request.stream():
            if chunk:
                chunks.append(chunk)
                digest.update(chunk)
        state.upload_chunks.append(len(chunks))

        async def replay() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

        return StreamingResponse(replay(), media_type="application/octet-stream",
                                 headers={"x-sha256": digest.hexdigest()})

    async def echo(request: Request) -> Response:
        # Full duplex: each request chunk goes straight back out.
        return StreamingResponse(request.stream(), media_type="application/octet-stream")

    async def stream(request: Request) -> Response:
        async def gen() -> AsyncIterator[bytes]:
            yield b"first\n"
            await state.proceed.wait()  # the client sets it once it has seen "first"
            for i in range(3):
                yield b"more %d\n" % i

        return StreamingResponse(gen(), media_type="text/plain")

    async def sse(request: Request) -> Response:
        async def gen() -> AsyncIterator[str]:
            i = 0
            while True:
                yield f"id: {i}\nevent: tick\ndata: {json.dumps({'n': i})}\n\n"
                state.sse_started.set()
                i += 1
                await trio.sleep(0.05)

        return NoticingStreamingResponse(state, gen(), media_type="text/event-stream",
                                         headers={"cache-control": "no-cache"})

    async def greeting(request: Request) -> Response:
        return PlainTextResponse(f"{request.state.greeting} from {request.url.path}")

    async def info(request: Request) -> Response:
        return JSONResponse({"method": request.method, "path": request.url.path,
                             "query": dict(request.query_params),
                             "client": list(request.client or ()),
                             "body": (await request.body()).decode()})

    return [
        Route("/upload", upload, methods=["POST"]),
        Route("/echo", echo, methods=["POST"]),
        Route("/stream", stream),
        Route("/sse", sse),
        Route("/greeting", greeting),
        Route("/info", info, methods=["GET", "POST"]),
    ]


def make_lifespan(state: AppState, *, fail: bool = False) -> Any:
    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
        state.events.append("startup")
        await trio.lowlevel.checkpoint()  # the lifespan runs on Trio: trio calls work
        if fail:
            raise RuntimeError("cannot connect to the database")
        try:
            yield {"greeting": "hello"}
        finally:
            state.events.append("shutdown")

    return lifespan


def starlette_app(state: AppState) -> Starlette:
    return Starlette(routes=routes(state), lifespan=make_lifespan(state))


def fastapi_app(state: AppState) -> FastAPI:
    app = FastAPI(lifespan=make_lifespan(state))
    app.router.routes.extend(routes(state))

    @app.post("/items/{item_id}")
    async def price_item(item_id: int, item: Item, q: str | None = None) -> Priced:
        return Priced(id=item_id, q=q, item=item, total=item.price * 2)

    @app.get("/sync")
    def sync_endpoint() -> dict[str, str]:  # runs in anyio's worker threads, on Trio
        return {"thread": "worker"}

    return app


APPS = {"starlette": starlette_app, "fastapi": fastapi_app}


@pytest.fixture(params=list(APPS))
def app_and_state(request: pytest.FixtureRequest) -> tuple[Any, AppState]:
    state = AppState()
    return APPS[request.param](state), state


def client_for(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=TIMEOUT)


# ------------------------------------------------------------------------------ tests


async def test_fastapi_json_round_trip() -> None:
    state = AppState()
    with trio.fail_after(TIMEOUT):
        async with run_server(fastapi_app(state)) as srv, client_for(srv.url) as client:
            item = {"name": "crème brûlée ☕", "price": 4.25, "tags": ["dessert", "fr"]}
            r = await client.post("/items/42", params={"q": "a b&c"}, json=item)
            assert r.status_code == 200
            assert r.headers["content-type"] == "application/json"
            assert int(r.headers["content-length"]) == len(r.content)
            assert r.json() == {"id": 42, "q": "a b&c", "item": item, "total": 8.5}
            # validation errors come back as FastAPI's 422
            r = await client.post("/items/42", json={"name": "x"})
            assert r.status_code == 422
            assert r.json()["detail"][0]["loc"] == ["body", "price"]
            r = await client.post("/items/not-an-int", json=item)
            assert r.status_code == 422
            # sync endpoints run in anyio worker threads, under Trio
            r = await client.get("/sync")
            assert r.json() == {"thread": "worker"}
            r = await client.get("/nope")
            assert r.status_code == 404


async def test_request_details(app_and_state: tuple[Any, AppState]) -> None:
    app, _ = app_and_state
    with trio.fail_after(TIMEOUT):
        async with run_server(app) as srv, client_for(srv.url) as client:
            r = await client.post("/info?x=1&y=%C3%A9", content=b"payload")
            assert r.json() == {"method": "POST", "path": "/info",
                                "query": {"x": "1", "y": "é"},
                                "client": ["127.0.0.1", r.json()["client"][1]],
                                "body": "payload"}


@pytest.mark.parametrize("chunked_upload", [False, True], ids=["content-length", "chunked"])
async def test_10mib_upload_echoed_with_same_sha256(app_and_state: tuple[Any, AppState],
                                                    chunked_upload: bool) -> None:
    app, state = app_and_state
    payload = os.urandom(10 * MiB)
    expected = hashlib.sha256(payload).hexdigest()

    async def body_stream() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 256 * 1024):
            yield payload[i:i + 256 * 1024]

    content: Any = body_stream() if chunked_upload else payload
    with trio.fail_after(TIMEOUT):
        async with run_server(app) as srv, client_for(srv.url) as client:
            digest = hashlib.sha256()
            size = 0
            async with client.stream("POST", "/upload", content=content) as r:
                assert r.status_code == 200
                assert r.headers["transfer-encoding"] == "chunked"
                assert r.headers["x-sha256"] == expected  # the server saw the same bytes
                async for chunk in r.aiter_bytes():
                    digest.update(chunk)
                    size += len(chunk)
    assert size == len(payload)
    assert digest.hexdigest() == expected
    # the body reached the app in many pieces, not as one buffered blob
    assert state.upload_chunks[0] > 10


async def test_full_duplex_echo_over_raw_socket() -> None:
    """Starlette's StreamingResponse(request.stream()) echoes while the client is still
    sending: 10 MiB go through although neither side buffers the whole body."""
    state = AppState()
    payload = os.urandom(10 * MiB)
    piece = 64 * 1024
    received = bytearray()
    with trio.fail_after(TIMEOUT):
        async with run_server(starlette_app(state)) as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            conn = h11.Connection(h11.CLIENT)

            async def sender() -> None:
                await stream.send_all(conn.send(h11.Request(
                    method="POST", target="/echo",
                    headers=[("Host", "x"), ("Transfer-Encoding", "chunked")])))
                for i in range(0, len(payload), piece):
                    await stream.send_all(conn.send(h11.Data(data=payload[i:i + piece])))
                await stream.send_all(conn.send(h11.EndOfMessage()))

            async with stream, trio.open_nursery() as nursery:
                nursery.start_soon(sender)
                status = None
                while True:
                    ev = conn.next_event()
                    if ev is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(256 * 1024))
                    elif isinstance(ev, h11.Response):
                        status = ev.status_code
                    elif isinstance(ev, h11.Data):
                        received += ev.data
                    elif isinstance(ev, h11.EndOfMessage):
                        break
    assert status == 200
    assert len(received) == len(payload)
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()


async def test_streaming_response_arrives_incrementally(
        app_and_state: tuple[Any, AppState]) -> None:
    app, state = app_and_state
    with trio.fail_after(TIMEOUT):
        async with run_server(app) as srv, client_for(srv.url) as client:
            async with client.stream("GET", "/stream") as r:
                assert r.status_code == 200
                chunks = r.aiter_bytes()
                # The server is blocked until we set `proceed`: the first chunk must arrive
                # without the rest of the response.
                with trio.fail_after(5):
                    first = await chunks.__anext__()
                assert first == b"first\n"
                assert not state.proceed.is_set()
                state.proceed.set()
                rest = b"".join([c async for c in chunks])
            assert rest == b"more 0\nmore 1\nmore 2\n"


async def test_sse_notices_client_disconnect(app_and_state: tuple[Any, AppState]) -> None:
    app, state = app_and_state
    with trio.fail_after(TIMEOUT):
        async with run_server(app) as srv:
            client = client_for(srv.url)
            events = []
            async with client.stream("GET", "/sse") as r:
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/event-stream")
                buf = b""
                async for chunk in r.aiter_bytes():
                    buf += chunk
                    while b"\n\n" in buf:
                        event, buf = buf.split(b"\n\n", 1)
                        events.append(event)
                    if len(events) >= 3:
                        break
                closed_at = trio.current_time()  # leaving the block closes the connection
            await client.aclose()
            with trio.fail_after(1):
                await state.sse_disconnected.wait()
            assert state.sse_disconnected_at is not None
            assert state.sse_disconnected_at - closed_at < 1
            # the server is still serving
            async with client_for(srv.url) as client2:
                r2 = await client2.get("/greeting")
                assert r2.status_code == 200
    assert events[0] == b'id: 0\nevent: tick\ndata: {"n": 0}'
    assert events[2] == b'id: 2\nevent: tick\ndata: {"n": 2}'


async def test_lifespan_startup_state_and_shutdown(app_and_state: tuple[Any, AppState]) -> None:
    app, state = app_and_state
    with trio.fail_after(TIMEOUT):
        async with run_server(app) as srv:
            assert state.events == ["startup"]  # start-up ran before the server listened
            async with client_for(srv.url) as client:
                r = await client.get("/greeting")
                assert (r.status_code, r.text) == (200, "hello from /greeting")
            assert state.events == ["startup"]
    assert state.events == ["startup", "shutdown"]


@pytest.mark.parametrize("kind", list(APPS))
async def test_lifespan_startup_failure_raises_from_serve(kind: str) -> None:
    state = AppState()
    app = APPS[kind](state)
    app.router.lifespan_context = make_lifespan(state, fail=True)
    with trio.fail_after(TIMEOUT), pytest.raises(LifespanFailure,
                                                 match="cannot connect to the database"):
        await serve(ASGIBridge(app), make_config(), install_signal_handlers=False)
    assert state.events == ["startup"]
