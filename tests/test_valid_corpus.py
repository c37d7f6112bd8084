"""Unusual but valid HTTP/1.1 requests reach the app exactly: method, target, headers, body."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from conftest import parse_responses, raw_exchange, run_server

TOKEN_CHARS = "!#$%&'*+-.^_`|~"

CASES: list[tuple[str, bytes, bytes, list[tuple[bytes, bytes]], bytes]] = [
    # (id, raw request, expected raw_path?query, expected headers subset, expected body)
    ("query", b"GET /p/a%20th?q=1&r=%20 HTTP/1.1\r\nHost: example.com\r\n\r\n",
     b"/p/a%20th?q=1&r=%20", [(b"host", b"example.com")], b""),
    ("asterisk", b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", b"*", [], b""),
    ("absolute-form", b"GET http://example.com/x?y HTTP/1.1\r\nHost: example.com\r\n\r\n",
     b"/x?y", [], b""),
    ("obs-text value", b"GET / HTTP/1.1\r\nHost: x\r\nX-Name: caf\xe9\r\n\r\n", b"/",
     [(b"x-name", b"caf\xe9")], b""),
    ("empty value", b"GET / HTTP/1.1\r\nHost: x\r\nX-Empty:\r\n\r\n", b"/",
     [(b"x-empty", b"")], b""),
    ("inner whitespace", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: \t a \t b \t \r\n\r\n", b"/",
     [(b"x-a", b"a \t b")], b""),
    ("token name", b"GET / HTTP/1.1\r\nHost: x\r\nX-" + TOKEN_CHARS.encode() + b": v\r\n\r\n",
     b"/", [(b"x-" + TOKEN_CHARS.encode(), b"v")], b""),
    ("repeated", b"GET / HTTP/1.1\r\nHost: x\r\nX-R: 1\r\nX-R: 2\r\n\r\n", b"/",
     [(b"x-r", b"1"), (b"x-r", b"2")], b""),
    ("ipv6 host", b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", b"/",
     [(b"host", b"[::1]:8080")], b""),
    ("double slash", b"GET //a//b HTTP/1.1\r\nHost: x\r\n\r\n", b"//a//b", [], b""),
    ("http/1.0 no host", b"GET /old HTTP/1.0\r\n\r\n", b"/old", [], b""),
    ("lowercase method", b"get / HTTP/1.1\r\nHost: x\r\n\r\n", b"/", [], b""),
    ("extension method", b"PROPFIND /dav HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab",
     b"/dav", [], b"ab"),
    ("content-length 0", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", b"/",
     [(b"content-length", b"0")], b""),
    ("leading zeros", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 003\r\n\r\nabc", b"/",
     [], b"abc"),
    ("chunked ext+trailer",
     b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"5;name=value\r\nhello\r\n000a\r\n, world!!!\r\n0\r\nX-T: 1\r\n\r\n",
     b"/", [(b"transfer-encoding", b"chunked")], b"hello, world!!!"),
    ("leading crlf", b"\r\nGET /after-crlf HTTP/1.1\r\nHost: x\r\n\r\n", b"/after-crlf", [], b""),
    ("long target", b"GET /" + b"a" * 8000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
     b"/" + b"a" * 8000, [], b""),
    ("100 headers", b"GET / HTTP/1.1\r\nHost: x\r\n"
     + b"".join(b"X-%d: %d\r\n" % (i, i) for i in range(98)) + b"\r\n", b"/",
     [(b"x-97", b"97")], b""),  # + Host + Connection: 100
    ("utf-8 percent path", b"GET /caf%C3%A9 HTTP/1.1\r\nHost: x\r\n\r\n", b"/caf%C3%A9", [],
     b""),
]


@pytest.mark.parametrize(("raw", "target", "headers", "body"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_valid_request_reaches_the_app_exactly(
        raw: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        data = b""
        while True:
            message = await receive()
            data += message.get("body", b"")
            if not message.get("more_body"):
                break
        seen.append({**scope, "body": data})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    method = raw.lstrip(b"\r\n").split(b" ", 1)[0]
    with trio.fail_after(10):
        async with run_server(app) as srv:
            data = await raw_exchange(srv.port, raw.replace(
                b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
    [(resp, _)] = parse_responses(data, [method])
    assert resp.status_code == 200, data[:200]
    [scope] = seen
    assert scope["method"] == method.decode()
    got_target = scope["raw_path"] + (b"?" + scope["query_string"] if scope["query_string"]
                                      else b"")
    assert got_target == target
    for pair in headers:
        assert pair in scope["headers"]
    assert [n for n, _ in scope["headers"]] == [
        n for n, _ in scope["headers"] if n == n.lower()]
    assert scope["body"] == body
