"""Echo applications for ``trioserve fuzz target`` and ``trioserve fuzz diff``.

Each answers every HTTP request with ``200`` and a JSON body describing the request exactly as
the server handed it over::

    {"api": "asgi", "method": "POST", "target": "/a%20b?x=1", "http_version": "1.1",
     "headers": [["host", "example"], ["x-a", "1"]], "body_base64": "aGVsbG8="}

``target`` is the raw path plus ``?`` and the query string when there is one (the bytes the
server received, percent-escapes kept; an ASGI server that gives no ``raw_path`` falls back to
``path``, and ``raw_path_missing`` says so). Every text field is the bytes decoded as latin-1,
so nothing is lost. The response carries ``x-trioserve-echo: asgi`` (or ``wsgi``); the answer to
``HEAD`` has no body, so it also carries the description, base64-encoded, in
``x-trioserve-echo-request``.

Any ASGI server can run :data:`app`, for example ``uvicorn trioserve.fuzz.echo:app`` or
``hypercorn trioserve.fuzz.echo:app``; :data:`wsgi_app` is the WSGI form. A WSGI ``environ``
cannot say everything: header names come back from ``HTTP_*`` keys (lower-cased, ``_`` read as
``-``), repeated fields arrive joined by the server, and the original order is the server's
order of ``environ``; the fuzzer does not compare WSGI echoes' headers.

The module itself uses only the standard library (no hypothesis): a server under test needs
trioserve installed, nothing more.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import quote

__all__ = ["ECHO_HEADER", "ECHO_REQUEST_HEADER", "app", "describe_environ", "wsgi_app"]

ECHO_HEADER = "x-trioserve-echo"
"""Response header marking an echo: its value is the interface, ``asgi`` or ``wsgi``."""
ECHO_REQUEST_HEADER = "x-trioserve-echo-request"
"""Response header holding the base64 JSON description on the answer to ``HEAD``."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def _latin1(data: bytes | str) -> str:
    return data if isinstance(data, str) else bytes(data).decode("latin-1")


def _encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode("ascii")


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """ASGI 3 echo application (HTTP; lifespan is accepted; WebSockets are closed).

    Reads the whole request body before answering; returns without answering if the client
    disconnects first (the server then decides what to send, if anything)."""
    kind = scope["type"]
    if kind == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if kind == "websocket":
        await send({"type": "websocket.close", "code": 1000})
        return
    if kind != "http":
        return
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    raw_path = scope.get("raw_path")
    doc: dict[str, Any] = {"api": "asgi", "method": scope["method"]}
    if raw_path is None:
        raw_path = quote(scope.get("path", ""), safe="/%!$&'()*+,;=:@~").encode("latin-1")
        doc["raw_path_missing"] = True
    query = scope.get("query_string", b"")
    target = bytes(raw_path) + (b"?" + bytes(query) if query else b"")
    doc.update({
        "target": _latin1(target),
        "http_version": scope.get("http_version", ""),
        "headers": [[_latin1(n), _latin1(v)] for n, v in scope.get("headers", ())],
        "body_base64": base64.b64encode(bytes(body)).decode("ascii"),
    })
    payload = _encode(doc)
    headers = [(b"content-type", b"application/json"),
               (b"content-length", b"%d" % len(payload)),
               (ECHO_HEADER.encode(), b"asgi")]
    if scope["method"] == "HEAD":
        headers.append((ECHO_REQUEST_HEADER.encode(), base64.b64encode(payload)))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def describe_environ(environ: dict[str, Any]) -> dict[str, Any]:
    """The echo description of a WSGI request (without the body)."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        target = str(raw)
    else:
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        target = quote(path.encode("latin-1"), safe="/!$&'()*+,;=:@~")
        if environ.get("QUERY_STRING"):
            target += "?" + environ["QUERY_STRING"]
    headers: list[list[str]] = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            headers.append([key[5:].replace("_", "-").lower(), str(value)])
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value != "":
            headers.append([key.replace("_", "-").lower(), str(value)])
    return {
        "api": "wsgi", "method": environ.get("REQUEST_METHOD", ""), "target": target,
        "http_version": str(environ.get("SERVER_PROTOCOL", "")).removeprefix("HTTP/"),
        "headers": headers,
    }


def wsgi_app(environ: dict[str, Any],
             start_response: Callable[..., Any]) -> Iterable[bytes]:
    """WSGI echo application (see the module docstring for what WSGI cannot tell). Reads the
    body to its end when the server marks ``wsgi.input_terminated``, else ``CONTENT_LENGTH``
    bytes."""
    stream = environ["wsgi.input"]
    if environ.get("wsgi.input_terminated"):
        body = stream.read()
    else:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        body = stream.read(length) if length > 0 else b""
    doc = describe_environ(environ)
    doc["body_base64"] = base64.b64encode(body).decode("ascii")
    payload = _encode(doc)
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(payload))),
               (ECHO_HEADER, "wsgi")]
    if doc["method"] == "HEAD":
        headers.append((ECHO_REQUEST_HEADER, base64.b64encode(payload).decode("ascii")))
    start_response("200 OK", headers)
    return [payload]
