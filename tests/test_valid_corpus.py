"""Unusual but valid HTTP/1.1 requests reach the app exactly: method, target, headers, body;
with every installed request parser (h11, httptools), whether a request arrives in one piece,
in several, or pipelined behind others on one connection."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from conftest import make_config, parse_responses, raw_exchange, run_server
from trioserve.fuzz.http1 import available_parsers

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


PARSERS = available_parsers()


def recording_app(seen: list[dict[str, Any]]) -> Any:
    """An ASGI app that appends each request's scope, with its whole body, to ``seen``."""

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

    return app


def method_of(raw: bytes) -> bytes:
    return raw.lstrip(b"\r\n").split(b" ", 1)[0]


def with_close(raw: bytes) -> bytes:
    return raw.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)


def assert_reached_exactly(scope: dict[str, Any], raw: bytes, target: bytes,
                           headers: list[tuple[bytes, bytes]], body: bytes,
                           case: str = "") -> None:
    assert scope["method"] == method_of(raw).decode(), case
    got_target = scope["raw_path"] + (b"?" + scope["query_string"] if scope["query_string"]
                                      else b"")
    assert got_target == target, case
    for pair in headers:
        assert pair in scope["headers"], case
    assert [n for n, _ in scope["headers"]] == [
        n for n, _ in scope["headers"] if n == n.lower()], case
    assert scope["body"] == body, case


@pytest.mark.parametrize("http_parser", PARSERS)
@pytest.mark.parametrize(("raw", "target", "headers", "body"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_valid_request_reaches_the_app_exactly(
        raw: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes,
        http_parser: str) -> None:
    seen: list[dict[str, Any]] = []
    method = method_of(raw)
    with trio.fail_after(10):
        async with run_server(recording_app(seen), make_config(http_parser=http_parser)) as srv:
            data = await raw_exchange(srv.port, with_close(raw))
    [(resp, _)] = parse_responses(data, [method])
    assert resp.status_code == 200, data[:200]
    [scope] = seen
    assert_reached_exactly(scope, raw, target, headers, body)


def cut_points(raw: bytes) -> list[int]:
    """Where to split ``raw``: after its first byte, inside the request line, in the middle of
    the head, between the CR and LF of the head's end, and one byte into the body."""
    head_end = raw.index(b"\r\n\r\n")
    return sorted({1, raw.index(b" ") + 2, head_end // 2, head_end + 3, head_end + 5}
                  & set(range(1, len(raw))))


@pytest.mark.parametrize("http_parser", PARSERS)
async def test_valid_requests_arriving_in_pieces_reach_the_app_exactly(http_parser: str) -> None:
    """Each request sent in pieces, with a pause after each so the server reads them one by
    one: the same result as in one piece."""
    seen: list[dict[str, Any]] = []
    with trio.fail_after(30):
        async with run_server(recording_app(seen), make_config(http_parser=http_parser)) as srv:
            for name, raw, target, headers, body in CASES:
                sent = with_close(raw)
                stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
                async with stream:
                    start = 0
                    for cut in [*cut_points(sent), len(sent)]:
                        await stream.send_all(sent[start:cut])
                        start = cut
                        await trio.sleep(0.003)
                    chunks = []
                    while chunk := await stream.receive_some(65536):
                        chunks.append(chunk)
                [(resp, _)] = parse_responses(b"".join(chunks), [method_of(raw)])
                assert resp.status_code == 200, name
                assert len(seen) == 1, name
                assert_reached_exactly(seen.pop(), raw, target, headers, body, name)


@pytest.mark.parametrize("http_parser", PARSERS)
async def test_valid_requests_pipelined_on_one_connection(http_parser: str) -> None:
    """Every keep-alive case sent back to back in one write, then a final request that closes:
    each is framed exactly where it ends, so each reaches the app exactly and in order."""
    cases = [c for c in CASES if b"HTTP/1.0" not in c[1]]  # HTTP/1.0 closes after its response
    last = b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    seen: list[dict[str, Any]] = []
    with trio.fail_after(10):
        async with run_server(recording_app(seen), make_config(http_parser=http_parser)) as srv:
            data = await raw_exchange(srv.port, b"".join(c[1] for c in cases) + last)
    responses = parse_responses(data, [method_of(c[1]) for c in cases] + [b"GET"])
    assert [r.status_code for r, _ in responses] == [200] * (len(cases) + 1)
    assert len(seen) == len(cases) + 1
    for (name, raw, target, headers, body), scope in zip(cases, seen[:-1], strict=True):
        assert_reached_exactly(scope, raw, target, headers, body, name)
    assert seen[-1]["path"] == "/last"
