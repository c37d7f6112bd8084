"""Applications the benchmarks serve."""

from __future__ import annotations

from typing import Any

BODY = b"Hello, world!"
_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")],
}
_BODY = {"type": "http.response.body", "body": BODY}


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
_WS_UPGRADE_REQUIRED = {
    "type": "http.response.start",
    "status": 426,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"19"),
                (b"upgrade", b"websocket"), (b"connection", b"upgrade")],
}
_WS_UPGRADE_REQUIRED_BODY = {"type": "http.response.body", "body": b"WebSocket echo only"}


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
