"""A minimal ASGI WebSocket echo application for the Autobahn conformance run
(``tests/test_websocket_autobahn.py``): it accepts every WebSocket with no subprotocol and echoes
each text message as text and each binary message as binary until the client disconnects. HTTP
requests get a short plain-text 404 and lifespan events are acknowledged."""

from __future__ import annotations

from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]


async def app(scope: Scope, receive: Any, send: Any) -> None:
    kind = scope["type"]
    if kind == "websocket":
        await _echo(receive, send)
    elif kind == "http":
        await send({"type": "http.response.start", "status": 404,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
        await send({"type": "http.response.body", "body": b"WebSocket echo only\n"})
    elif kind == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _echo(receive: Any, send: Any) -> None:
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message["type"] != "websocket.receive":
            continue
        text = message.get("text")
        if text is not None:
            await send({"type": "websocket.send", "text": text})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})
