"""The bundled demo: a small ASGI application, no framework needed.

``trioserve trioserve.demo:app`` then open http://127.0.0.1:8000/:

- ``GET /``: a page with links and an upload form
- ``GET /api/info``: JSON about the request and the server
- ``GET /stream?n=10&delay=0.2``: a streamed (chunked) plain-text response
- ``POST /upload``: echoes the request body back, streamed, with its content type
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import trio

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]

PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>trioserve demo</title>
<style>body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;line-height:1.5}
code{background:#eee;padding:0 .2rem}</style></head>
<body>
<h1>trioserve is running</h1>
<p>This is the bundled demo application (<code>trioserve.demo:app</code>).</p>
<ul>
<li><a href="/api/info">/api/info</a>: JSON about this request</li>
<li><a href="/stream">/stream</a>: a streamed response, one line every 0.2 s</li>
</ul>
<form method="post" action="/upload" enctype="multipart/form-data">
<p><label>Upload a file to have it echoed back: <input type="file" name="file"></label>
<button>Upload</button></p></form>
</body></html>
"""


async def _send_simple(send: Callable[[Message], Awaitable[None]], status: int,
                       content_type: bytes, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def app(scope: Scope, receive: Callable[[], Awaitable[Message]],
              send: Callable[[Message], Awaitable[None]]) -> None:
    """The demo ASGI application."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                scope["state"]["started_at"] = time.time()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path = scope["path"]
    method = scope["method"]
    if path == "/" and method in ("GET", "HEAD"):
        await _send_simple(send, 200, b"text/html; charset=utf-8", PAGE)
    elif path == "/api/info" and method in ("GET", "HEAD"):
        started = scope.get("state", {}).get("started_at")
        info = {
            "server": "trioserve",
            "method": method,
            "path": path,
            "query_string": scope["query_string"].decode("latin-1"),
            "http_version": scope["http_version"],
            "client": list(scope["client"]) if scope.get("client") else None,
            "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
            "uptime_seconds": round(time.time() - started, 3) if started else None,
        }
        await _send_simple(send, 200, b"application/json", json.dumps(info).encode())
    elif path == "/stream" and method == "GET":
        query = parse_qs(scope["query_string"].decode("latin-1"))
        try:
            n = min(int(query.get("n", ["10"])[0]), 1000)
            delay = min(float(query.get("delay", ["0.2"])[0]), 5.0)
        except ValueError:
            await _send_simple(send, 400, b"text/plain", b"n and delay must be numbers\n")
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
        for i in range(n):
            await send({"type": "http.response.body", "body": b"line %d\n" % (i + 1),
                        "more_body": True})
            await trio.sleep(delay)
        await send({"type": "http.response.body", "body": b""})
    elif path == "/upload" and method == "POST":
        content_type = b"application/octet-stream"
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", content_type)]})
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            more = message.get("more_body", False)
            await send({"type": "http.response.body", "body": body, "more_body": more})
            if not more:
                return
    elif path in ("/", "/api/info", "/stream", "/upload"):
        await _send_simple(send, 405, b"text/plain", b"method not allowed\n")
    else:
        await _send_simple(send, 404, b"text/plain", b"not found\n")
