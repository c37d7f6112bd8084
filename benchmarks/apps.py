"""Applications the benchmarks serve."""

from __future__ import annotations

from typing import Any


def _whole_response(body: bytes, content_type: bytes, status: int = 200,
                    headers: tuple[tuple[bytes, bytes], ...] = ()
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two ASGI messages of a response sent whole, with its Content-Length: built once,
    so the apps below send the same dicts every time."""
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", content_type),
                         (b"content-length", str(len(body)).encode()), *headers]}
    return start, {"type": "http.response.body", "body": body}


BODY = b"Hello, world!"
_START, _BODY = _whole_response(BODY, b"text/plain")


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI hello world."""
    if scope["type"] != "http":
        return
    await send(_START)
    await send(_BODY)


def wsgi_hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """WSGI hello world."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [BODY]


_WS_ACCEPT = {"type": "websocket.accept"}
_WS_UPGRADE_REQUIRED, _WS_UPGRADE_REQUIRED_BODY = _whole_response(
    b"WebSocket echo only", b"text/plain", 426,
    ((b"upgrade", b"websocket"), (b"connection", b"upgrade")))


async def ws_echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI WebSocket echo: accept, then send every message back as it came (text as text,
    bytes as bytes) until the client disconnects. Plain HTTP requests get 426. It answers the
    lifespan handshake itself, so every server runs this same app with no wrapper (Hypercorn
    0.18's trio worker dies on an app that returns from the lifespan scope without a word: see
    ``run.hypercorn_hello``)."""
    kind = scope["type"]
    if kind == "websocket":
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        await send(_WS_ACCEPT)
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return  # websocket.disconnect
            text = message.get("text")
            if text is not None:
                await send({"type": "websocket.send", "text": text})
            else:
                await send({"type": "websocket.send", "bytes": message.get("bytes")})
    elif kind == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif kind == "http":
        await send(_WS_UPGRADE_REQUIRED)
        await send(_WS_UPGRADE_REQUIRED_BODY)


# ---------------------------------------------------------------- the suite's other scenarios
# Each answers the lifespan handshake itself (as ws_echo does), so every server, Hypercorn's trio
# worker included, runs the same app with no wrapper.


async def lifespan(receive: Any, send: Any) -> None:
    """Answer an ASGI lifespan scope: start-up, then shutdown, both complete."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        else:
            await send({"type": "lifespan.shutdown.complete"})
            return


BIG = b"x" * 65536
_BIG_START, _BIG_BODY = _whole_response(BIG, b"application/octet-stream")


async def big(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI: a 64 KiB response body, in one message, with a Content-Length."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
    elif scope["type"] == "http":
        await send(_BIG_START)
        await send(_BIG_BODY)


async def upload(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI: read the whole request body and answer with its length in bytes (so a server that
    lost part of a body answers a different number, and a client can check)."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return  # http.disconnect
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = str(size).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


STREAM_CHUNKS = 16
CHUNK = b"y" * 1024
_STREAM_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"application/octet-stream")],  # no length: chunked
}
_STREAM_PART = {"type": "http.response.body", "body": CHUNK, "more_body": True}
_STREAM_END = {"type": "http.response.body", "body": b""}


async def stream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI: a streaming response, ``STREAM_CHUNKS`` body messages of 1 KiB each and an empty
    last one, with no Content-Length (chunked over HTTP/1.1)."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
    elif scope["type"] == "http":
        await send(_STREAM_START)
        for _ in range(STREAM_CHUNKS):
            await send(_STREAM_PART)
        await send(_STREAM_END)
