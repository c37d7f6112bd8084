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
