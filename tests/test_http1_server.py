"""HTTP/1.1 end to end over real loopback sockets: keep-alive, pipelining, chunked bodies,
100-continue, HEAD, HTTP/1.0, bad input, limits, timeouts and every kind of listener."""

from __future__ import annotations

import email.utils
import json
import socket
from typing import Any

import h11
import httpx
import pytest
import trio
from conftest import make_config, parse_responses, raw_exchange, run_server

from trioserve import Bind, MinDataRate
from trioserve.features import (
    RequestBodyFeature,
    RequestContext,
    RequestFeature,
    ResponseBodyFeature,
    ResponseFeature,
    ServerAddressesFeature,
)

TIMEOUT = 10.0


# ---------------------------------------------------------------------------- test apps


class EchoApp:
    """An ASGI app that counts its calls.

    - ``/chunked``: three body pieces without Content-Length (chunked on HTTP/1.1)
    - ``/noread``: answers without reading the request body
    - ``/gate``: waits for ``gate`` before reading the body
    - anything else: reads the whole body and answers with JSON describing the request
    """

    def __init__(self) -> None:
        self.calls = 0
        self.disconnects = 0
        self.gate = trio.Event()
        self.entered = trio.Event()
        self.scopes: list[dict[str, Any]] = []

    async def read_body(self, receive: Any) -> bytes | None:
        body = b""
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                self.disconnects += 1
                return None
            body += msg.get("body", b"")
            if not msg.get("more_body", False):
                return body

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        self.calls += 1
        self.scopes.append(scope)
        path = scope["path"]
        if path == "/chunked":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/plain")]})
            for piece in (b"one,", b"two,", b"three"):
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        if path == "/noread":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"did not read"})
            return
        if path == "/gate":
            self.entered.set()
            await self.gate.wait()
        body = await self.read_body(receive)
        if body is None:
            return
        payload = json.dumps({
            "method": scope["method"],
            "path": path,
            "query": scope["query_string"].decode(),
            "body": body.decode("latin-1"),
            "client": list(scope["client"]) if scope["client"] else None,
            "http_version": scope["http_version"],
        }).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


class Client:
    """A raw HTTP/1.1 client over one TCP stream, parsing responses with h11."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> Client:
        return cls(await trio.open_tcp_stream(host, port))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _next(self) -> Any:
        while True:
            ev = self.h11.next_event()
            if ev is not h11.NEED_DATA:
                return ev
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                data = b""
            self.h11.receive_data(data)

    async def response(self, method: bytes = b"GET") -> tuple[h11.Response, bytes,
                                                                list[h11.InformationalResponse]]:
        """Read one complete response (the request bytes are sent separately with send())."""
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        self.h11.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
        self.h11.send(h11.EndOfMessage())
        informational: list[h11.InformationalResponse] = []
        resp: h11.Response | None = None
        body = b""
        while True:
            ev = await self._next()
            if isinstance(ev, h11.InformationalResponse):
                informational.append(ev)
            elif isinstance(ev, h11.Response):
                resp = ev
            elif isinstance(ev, h11.Data):
                body += bytes(ev.data)
            elif isinstance(ev, h11.EndOfMessage):
                assert resp is not None
                return resp, body, informational
            else:
                raise AssertionError(f"connection ended before a full response: {ev!r}")

    async def expect_closed(self) -> None:
        """The server closes the connection with no further bytes."""
        rest = await read_until_eof(self.stream)
        assert rest == b"", f"unexpected bytes after the response: {rest[:200]!r}"

    async def aclose(self) -> None:
        await self.stream.aclose()


async def read_until_eof(stream: trio.abc.Stream) -> bytes:
    chunks = []
    while True:
        try:
            chunk = await stream.receive_some(65536)
        except trio.BrokenResourceError:  # a reset also means "closed"
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def header(resp: h11.Response, name: bytes) -> bytes | None:
    for n, v in resp.headers:
        if n.lower() == name:
            return bytes(v)
    return None


def header_values(resp: h11.Response, name: bytes) -> list[bytes]:
    return [bytes(v) for n, v in resp.headers if n.lower() == name]


async def assert_serves(port: int, host: str = "127.0.0.1") -> None:
    """A fresh connection still gets a normal answer."""
    data = await raw_exchange(port, b"GET /fresh HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                              host=host)
    (resp, body), = parse_responses(data)
    assert resp.status_code == 200
    assert json.loads(body)["path"] == "/fresh"


GET = b"GET /%s HTTP/1.1\r\nHost: example\r\n\r\n"


# ------------------------------------------------------------------ keep-alive, pipelining


async def test_keep_alive_sequential_requests_share_one_connection() -> None:
    app = EchoApp()
    with trio.fail_after(TIMEOUT):
        async with run_server(app, lifespan="off") as srv:
            c = await Client.connect(srv.port)
            for i in range(5):
                await c.send(b"GET /n%d?i=%d HTTP/1.1\r\nHost: example\r\n\r\n" % (i, i))
                resp, body, _ = await c.response()
                assert resp.status_code == 200
                assert header(resp, b"connection") is None
                info = json.loads(body)
                assert info["path"] == f"/n{i}" and info["query"] == f"i={i}"
            await c.aclose()
    assert app.calls == 5
    # all five ran on one TCP connection
    assert len({tuple(s["client"]) for s in app.scopes}) == 1


async def test_pipelined_requests_answered_in_order() -> None:
    app = EchoApp()
    with trio.fail_after(TIMEOUT):
        async with run_server(app, lifespan="off") as srv:
            data = await raw_exchange(
                srv.port,
                b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n"
                b"POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
                b"GET /third HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            )
    responses = parse_responses(data)
    assert [r.status_code for r, _ in responses] == [200, 200, 200]
    infos = [json.loads(b) for _, b in responses]
    assert [i["path"] for i in infos] == ["/first", "/second", "/third"]
    assert infos[1]["method"] == "POST" and infos[1]["body"] == "hello"
    assert header(responses[2][0], b"connection") == b"close"
    assert app.calls == 3


async def test_unread_small_body_is_skipped_and_connection_reused() -> None:
    app = EchoApp()
    with trio.fail_after(TIMEOUT):
        async with run_server(app, lifespan="off") as srv:
            c = await Client.connect(srv.port)
            await c.send(b"POST /noread HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n"
                         b"hello world"
                         b"POST /noread HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"3\r\nabc\r\n0\r\n\r\n"
                         + GET % b"third")
            for _ in range(2):
                resp, body, _ = await c.response(b"POST")
                assert resp.status_code == 200 and body == b"did not read"
            resp, body, _ = await c.response()
            assert json.loads(body)["path"] == "/third"
            await c.aclose()
    assert app.calls == 3


# ------------------------------------------------------------------------- chunked bodies


async def test_chunked_request_body() -> None:
    app = EchoApp()
    with trio.fail_after(TIMEOUT):
        async with run_server(app, lifespan="off") as srv:
            c = await Client.connect(srv.port)
            await c.send(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5\r\nhello\r\n")
            await trio.sleep(0.05)
            await c.send(b"1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n")
            resp, body, _ = await c.response(b"POST")
            assert resp.status_code == 200
            assert json.loads(body)["body"] == "hello 0123456789"
            # the connection is still usable afterwards
            await c.send(GET % b"after")
            resp, body, _ = await c.response()
            assert json.loads(body)["path"] == "/after"
            await c.aclose()


async def test_chunked_response_body() -> None:
    app = EchoApp()
    with trio.fail_after(TIMEOUT):
        async with run_server(app, lifespan="off") as srv:
            data = await raw_exchange(
                srv.port, b"GET /chunked HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    head, _, raw_body = data.partition(b"\r\n\r\n")
    assert b"\r\ntransfer-encoding: chunked" in head.lower()
    assert b"content-length" not in head.lower()
    assert raw_body == b"4\r\none,\r\n4\r\ntwo,\r\n5\r\nthree\r\n0\r\n\r\n"
    (_resp, body), = parse_responses(data)
    assert body == b"one,two,three"


async def test_response_without_length_to_http10_is_close_delimited() -> None:
    app = EchoApp()
    with trio.fail_after(TIMEOUT):
        async with run_server(app, lifespan="off") as srv:
            data = await raw_exchange(srv.port, b"GET /chunked HTTP/1.0\r\n\r\n")
    head, _, raw_body = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower()
    assert b"connection: close" in head.lower()
    assert raw_body == b"one,two,three"


# ------------------------------------------------------------------------ 100-continue


async def test_expect_100_continue_sent_when_app_first_reads() -> None:
    app = EchoApp()
    with trio.fail_after(TIMEOUT):
        async with run_server(app, lifespan="off") as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            await stream.send_all(b"POST /gate HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
                                  b"Expect: 100-continue\r\n\r\n")
            await app.entered.wait()
            # the app has been called but has not read the body yet: no 100 so far
            with trio.move_on_after(0.3):
                early = await stream.receive_some(1024)
                pytest.fail(f"server sent {early!r} before the app read the body")
            app.gate.set()
            got = b""
            while b"\r\n\r\n" not in got:
                got += await stream.receive_some(1024)
            assert got == b"HTTP/1.1 100 Continue\r\n\r\n"
            await stream.send_all(b"data")
            c = Client(stream)
            c.h11.receive_data(b"HTTP/1.1 100 Continue\r\n\r\n")
            resp, body, informational = await c.response(b"POST")
            assert [i.status_code for i in informational] == [100]
            assert resp.status_code == 200
            assert json.loads(body)["body"] == "data"
            await stream.aclose()


async def test_expect_100_continue_not_sent_when_app_does_not_read() -> None:
    app = EchoApp()
    with trio.fail_after(TIMEOUT):
        async with run_server(app, lifespan="off") as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            await stream.send_all(b"POST /noread HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
                                  b"Expect: 100-continue\r\n\r\n")
            c = Client(stream)
            resp, body, informational = await c.response(b"POST")
            assert informational == []
            assert resp.status_code == 200 and body == b"did not read"
            # Either the server closes (it cannot know whether the body will follow) or, if it
            # keeps the connection, the body and a next request are handled consistently.
            with trio.move_on_after(1.0):
                rest = await read_until_eof(stream)
                assert rest == b""
                await stream.aclose()
                await assert_serves(srv.port)
                return
            await stream.send_all(b"data" + GET % b"next")
            resp, body, _ = await c.response()
            assert json.loads(body)["path"] == "/next"
            await stream.aclose()
    assert app.calls in (1, 2)


async def test_expect_100_continue_ignored_for_http10() -> None:
    app = EchoApp()
    with trio.fail_after(TIMEOUT):
        async with run_server(app, lifespan="off") as srv:
            data = await raw_exchange(srv.port, b"POST /x HTTP/1.0\r\nContent-Length: 2\r\n"
                                                b"Expect: 100-continue\r\n\r\nok")
    assert b"100 Continue" not in data
    (_resp, body), = parse_responses(data)
    assert json.loads(body)["body"] == "ok"


# --------------------------------------------------------------- HEAD, versions, headers


async def test_head_gets_headers_but_no_body() -> None:
    app = EchoApp()
    with trio.fail_after(TIMEOUT):
        async with run_server(app, lifespan="off") as srv:
            c = await Client.connect(srv.port)
            await c.send(b"GET /same HTTP/1.1\r\nHost: a\r\n\r\n")
            _, get_body, _ = await c.response()
            await c.send(b"HEAD /same HTTP/1.1\r\nHost: a\r\n\r\n")
            resp, body, _ = await c.response(b"HEAD")
            assert resp.status_code == 200 and body == b""
            assert header(resp, b"content-type") == b"application/json"
            # the JSON differs only in "method"; its length is the GET's plus 1
            assert int(header(resp, b"content-length") or 0) == len(get_body) + 1
            # HEAD of a streamed response: neither chunks nor a terminator
            await c.send(b"HEAD /chunked HTTP/1.1\r\nHost: a\r\n\r\n")
            resp, body, _ = await c.response(b"HEAD")
            assert resp.status_code == 200 and body == b""
            # no stray body bytes: the next response parses cleanly
            await c.send(GET % b"after-head")
            resp, body, _ = await c.response()
            assert json.loads(body)["path"] == "/after-head"
            await c.aclose()
    # and on the wire: nothing after the HEAD response's header section
    async with run_server(app, lifespan="off") as srv:
        data = await raw_exchange(srv.port, b"HEAD /chunked HTTP/1.1\r\nHost: a\r\n"
                                            b"Connection: close\r\n\r\n")
    assert data.endswith(b"\r\n\r\n") and data.count(b"\r\n\r\n") == 1


async def test_http10_closes_by_default() -> None:
    app = EchoApp()
    with trio.fail_after(TIMEOUT):
        async with run_server(app, lifespan="off") as srv:
            c = await Client.connect(srv.port)
            await c.send(b"GET /old HTTP/1.0\r\n\r\n")
            resp, body, _ = await c.response()
            assert resp.status_code == 200
            assert json.loads(body)["http_version"] == "1.0"
            assert header(resp, b"connection") == b"close"
            await c.expect_closed()


async def test_http10_keep_alive_when_asked() -> None:
    app = EchoApp()
    with trio.fail_after(TIMEOUT):
        async with run_server(app, lifespan="off") as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            for i in range(2):
                await stream.send_all(b"GET /ka%d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" % i)
                c = Client(stream)  # HTTP/1.0 responses: a fresh parser per response
                resp, body, _ = await c.response()
                assert resp.status_code == 200
                assert header(resp, b"connection") == b"keep-alive"
                assert json.loads(body)["path"] == f"/ka{i}"
            await stream.aclose()
    assert app.calls == 2


async def test_connection_close_honoured() -> None:
    app = EchoApp()
    with trio.fail_after(TIMEOUT):
        async with run_server(app, lifespan="off") as srv:
            c = await Client.connect(srv.port)
            await c.send(b"GET /bye HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                         + GET % b"never")
            resp, _, _ = await c.response()
            assert resp.status_code == 200
            assert header(resp, b"connection") == b"close"
            await c.expect_closed()
    assert app.calls == 1


async def test_date_and_server_headers() -> None:
    app = EchoApp()
    with trio.fail_after(TIMEOUT):
        async with run_server(app, lifespan="off") as srv:
            data = await raw_exchange(srv.port, b"GET / HTTP/1.1\r\nHost: a\r\n"
                                                b"Connection: close\r\n\r\n")
            err = await raw_exchange(srv.port, b"BAD\r\n\r\n")
    for raw in (data, err):
        (resp, _), = parse_responses(raw)
        assert header_values(resp, b"server") == [b"trioserve"]
        (date,) = header_values(resp, b"date")
        parsed = email.utils.parsedate_to_datetime(date.decode())
        assert parsed.tzinfo is not None
        assert date.endswith(b" GMT")


async def test_server_header_can_be_turned_off() -> None:
    app = EchoApp()
    config = make_config(server_header=None)
    with trio.fail_after(TIMEOUT):
        async with run_server(app, config, lifespan="off") as srv:
            data = await raw_exchange(srv.port, b"GET / HTTP/1.1\r\nHost: a\r\n"
                                                b"Connection: close\r\n\r\n")
            err = await raw_exchange(srv.port, b"BAD\r\n\r\n")
    for raw in (data, err):
        (resp, _), = parse_responses(raw)
        assert header(resp, b"server") is None
        assert header(resp, b"date") is not None


# ------------------------------------------------------------------------- bad requests


BAD_HEAD_REQUESTS = {
    "no-version": (b"GET /\r\nHost: a\r\n\r\n", 400),
    "garbage-line": (b"HELLO THERE\r\n\r\n", 400),
    "extra-token": (b"GET / HTTP/1.1 x\r\nHost: a\r\n\r\n", 400),
    "space-in-method": (b"G ET / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "bad-version": (b"GET / HTTX/1.1\r\nHost: a\r\n\r\n", 400),
    "http2-version": (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    "bad-target": (b"GET nopath HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "header-name-space": (b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n", 400),
    "header-name-empty": (b"GET / HTTP/1.1\r\nHost: a\r\n: x\r\n\r\n", 400),
    "header-name-paren": (b"GET / HTTP/1.1\r\nHost: a\r\nX(y): x\r\n\r\n", 400),
    "space-before-colon": (b"GET / HTTP/1.1\r\nHost: a\r\nX-A : x\r\n\r\n", 400),
    "header-no-colon": (b"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", 400),
    "header-value-nul": (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n", 400),
    "header-value-bare-cr": (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n", 400),
    "header-bare-lf": (b"GET / HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n", 400),
    "obs-fold": (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\r\n b\r\n\r\n", 400),
    "missing-host": (b"GET / HTTP/1.1\r\nX-A: a\r\n\r\n", 400),
    "two-hosts": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "bad-host": (b"GET / HTTP/1.1\r\nHost: a b/c\r\n\r\n", 400),
    "te-and-cl": (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                  b"Content-Length: 5\r\n\r\n0\r\n\r\n", 400),
    "duplicate-cl-same": (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                          b"Content-Length: 5\r\n\r\nhello", 400),
    "duplicate-cl-different": (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                               b"Content-Length: 6\r\n\r\nhello!", 400),
    "cl-list": (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello", 400),
    "cl-negative": (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
    "cl-plus": (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello", 400),
    "te-on-http10": (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "te-unknown": (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    "request-line-too-long": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
    "request-line-too-long-unterminated": (b"GET /" + b"a" * 9000, 414),
    "too-many-headers": (b"GET / HTTP/1.1\r\nHost: a\r\n"
                         + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n", 431),
    "headers-too-big": (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 33000 + b"\r\n\r\n",
                        431),
    "headers-too-big-unterminated": (b"GET / HTTP/1.1\r\nHost: a\r\n"
                                     + b"X-Big: v\r\n" * 4000, 431),
}


@pytest.mark.parametrize("raw,status", BAD_HEAD_REQUESTS.values(), ids=BAD_HEAD_REQUESTS.keys())
async def test_bad_request_head_rejected_without_calling_app(raw: bytes, status: int) -> None:
    app = EchoApp()
    with trio.fail_after(TIMEOUT):
        async with run_server(app, lifespan="off") as srv:
            data = await raw_exchange(srv.port, raw)  # reads until the server closes
            responses = parse_responses(data)
            assert len(responses) == 1, data[:300]
            resp, _ = responses[0]
            assert resp.status_code == status, data[:300]
            assert header(resp, b"connection") == b"close"
            assert app.calls == 0
            await assert_serves(srv.port)
            assert app.calls == 1


async def test_bad_second_request_after_a_good_one() -> None:
    """A pipelined bad request after a good one: the good one is answered, the bad one gets
    400 and never reaches the app, and nothing after it is read."""
    app = EchoApp()
    with trio.fail_after(TIMEOUT):
        async with run_server(app, lifespan="off") as srv:
            data = await raw_exchange(srv.port,
                                      b"GET /good HTTP/1.1\r\nHost: a\r\n\r\n"
                                      b"GET /bad HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n"
                                      b"GET /never HTTP/1.1\r\nHost: a\r\n\r\n")
    responses = parse_responses(data)
    assert [r.status_code for r, _ in responses] == [200, 400]
    assert header(responses[1][0], b"connection") == b"close"
    assert [s["path"] for s in app.scopes] == ["/good"]


async def test_limits_are_configurable() -> None:
    app = EchoApp()
    config = make_config(limits={"max_request_line_size": 64, "max_request_headers_count": 3,
                                 "max_request_headers_total_size": 200})
    with trio.fail_after(TIMEOUT):
        async with run_server(app, config, lifespan="off") as srv:
            ok = await raw_exchange(srv.port, b"GET /" + b"a" * 40 + b" HTTP/1.1\r\nHost: a\r\n"
                                              b"X-1: 1\r\nConnection: close\r\n\r\n")
            assert parse_responses(ok)[0][0].status_code == 200
            line = await raw_exchange(srv.port, b"GET /" + b"a" * 60 + b" HTTP/1.1\r\n"
                                                b"Host: a\r\n\r\n")
            assert parse_responses(line)[0][0].status_code == 414
            count = await raw_exchange(srv.port, b"GET / HTTP/1.1\r\nHost: a\r\nX-1: 1\r\n"
                                                 b"X-2: 2\r\nX-3: 3\r\n\r\n")
            assert parse_responses(count)[0][0].status_code == 431
            size = await raw_exchange(srv.port, b"GET / HTTP/1.1\r\nHost: a\r\nX-1: "
                                                + b"v" * 250 + b"\r\n\r\n")
            assert parse_responses(size)[0][0].status_code == 431
    assert app.calls == 1


async def test_body_over_limit_413() -> None:
    app = EchoApp()
    config = make_config(limits={"max_request_body_size": 1000})
    with trio.fail_after(TIMEOUT):
        async with run_server(app, config, lifespan="off") as srv:
            # declared too large: rejected before any body byte is read
            data = await raw_exchange(srv.port, b"POST /big HTTP/1.1\r\nHost: a\r\n"
                                                b"Content-Length: 2000\r\n\r\n" + b"x" * 2000)
            (resp, _), = parse_responses(data)
            assert resp.status_code == 413
            assert header(resp, b"connection") == b"close"
            # chunked, discovered while reading
            chunks = b"".join(b"100\r\n" + b"y" * 256 + b"\r\n" for _ in range(6)) + b"0\r\n\r\n"
            data = await raw_exchange(srv.port, b"POST /big HTTP/1.1\r\nHost: a\r\n"
                                                b"Transfer-Encoding: chunked\r\n\r\n" + chunks)
            (resp, _), = parse_responses(data)
            assert resp.status_code == 413
            assert header(resp, b"connection") == b"close"
            # exactly at the limit is fine
            data = await raw_exchange(srv.port, b"POST /ok HTTP/1.1\r\nHost: a\r\n"
                                                b"Content-Length: 1000\r\nConnection: close\r\n\r\n"
                                                + b"z" * 1000)
            (resp, body), = parse_responses(data)
            assert resp.status_code == 200 and len(json.loads(body)["body"]) == 1000
            await assert_serves(srv.port)
    # the app saw the two oversized requests only as a disconnect, never as a body
    assert app.disconnects == 2


@pytest.mark.parametrize("body", [
    b"5\r\nhel",                      # truncated, then the client half-closes
    b"zz\r\nhello\r\n0\r\n\r\n",       # invalid chunk size
    b"5\r\nhelloXX0\r\n\r\n",          # chunk data not followed by CRLF
], ids=["truncated", "bad-size", "missing-crlf"])
async def test_bad_chunked_body(body: bytes) -> None:
    app = EchoApp()
    with trio.fail_after(TIMEOUT):
        async with run_server(app, lifespan="off") as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            await stream.send_all(b"POST /chunks HTTP/1.1\r\nHost: a\r\n"
                                  b"Transfer-Encoding: chunked\r\n\r\n" + body)
            await stream.send_eof()
            data = await read_until_eof(stream)
            await stream.aclose()
            (resp, _), = parse_responses(data)
            assert resp.status_code == 400
            assert header(resp, b"connection") == b"close"
            # the app saw the head but never a complete body
            assert app.disconnects == 1
            await assert_serves(srv.port)


async def test_client_stops_mid_headers_gets_408() -> None:
    app = EchoApp()
    config = make_config(timeouts={"request_headers": 0.5})
    with trio.fail_after(TIMEOUT):
        async with run_server(app, config, lifespan="off") as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            await stream.send_all(b"GET /slow HTTP/1.1\r\nHost: a\r\nX-Partial: ")
            start = trio.current_time()
            data = await read_until_eof(stream)
            elapsed = trio.current_time() - start
            await stream.aclose()
            assert 0.3 < elapsed < 3.0
            (resp, _), = parse_responses(data)
            assert resp.status_code == 408
            assert header(resp, b"connection") == b"close"
            assert app.calls == 0
            await assert_serves(srv.port)


async def test_silent_connection_closed_after_request_headers_timeout() -> None:
    """A connection that never sends a byte cannot be held open: it is closed (with or without
    a 408) once the request-headers timeout has passed."""
    app = EchoApp()
    config = make_config(timeouts={"request_headers": 0.5, "keep_alive": 30})
    with trio.fail_after(TIMEOUT):
        async with run_server(app, config, lifespan="off") as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            start = trio.current_time()
            data = await read_until_eof(stream)
            elapsed = trio.current_time() - start
            await stream.aclose()
            assert 0.3 < elapsed < 3.0
            if data:
                (resp, _), = parse_responses(data)
                assert resp.status_code == 408
            assert app.calls == 0


async def test_expect_100_continue_with_oversized_body_gets_413_without_100() -> None:
    app = EchoApp()
    config = make_config(limits={"max_request_body_size": 1000})
    with trio.fail_after(TIMEOUT):
        async with run_server(app, config, lifespan="off") as srv:
            data = await raw_exchange(srv.port, b"POST /x HTTP/1.1\r\nHost: a\r\n"
                                                b"Content-Length: 5000\r\n"
                                                b"Expect: 100-continue\r\n\r\n")
            assert b"100 Continue" not in data
            (resp, _), = parse_responses(data)
            assert resp.status_code == 413
            assert header(resp, b"connection") == b"close"
            await assert_serves(srv.port)


async def test_request_headers_timeout_counts_from_first_byte_not_per_read() -> None:
    """A client dribbling header bytes cannot extend the deadline."""
    app = EchoApp()
    config = make_config(timeouts={"request_headers": 0.5})
    with trio.fail_after(TIMEOUT):
        async with run_server(app, config, lifespan="off") as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            start = trio.current_time()
            closed = trio.Event()
            received = []

            async def reader() -> None:
                received.append(await read_until_eof(stream))
                closed.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                for b in b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"x" * 50:
                    if closed.is_set():
                        break
                    try:
                        await stream.send_all(bytes([b]))
                    except trio.BrokenResourceError:
                        break
                    await trio.sleep(0.05)
            elapsed = trio.current_time() - start
            await stream.aclose()
            assert elapsed < 2.0
            (resp, _), = parse_responses(received[0])
            assert resp.status_code == 408
            assert app.calls == 0


async def test_keep_alive_idle_timeout_closes_silently() -> None:
    app = EchoApp()
    config = make_config(timeouts={"keep_alive": 0.3})
    with trio.fail_after(TIMEOUT):
        async with run_server(app, config, lifespan="off") as srv:
            c = await Client.connect(srv.port)
            await c.send(GET % b"once")
            resp, _, _ = await c.response()
            assert resp.status_code == 200
            start = trio.current_time()
            await c.expect_closed()  # no 408, just a close
            elapsed = trio.current_time() - start
            assert 0.2 < elapsed < 3.0
            await c.aclose()
    assert app.calls == 1


async def test_slow_request_body_below_min_rate_gets_408() -> None:
    app = EchoApp()
    config = make_config(limits={"min_request_body_data_rate":
                                 MinDataRate(bytes_per_second=1000, grace_period=0.3)})
    with trio.fail_after(TIMEOUT):
        async with run_server(app, config, lifespan="off") as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            await stream.send_all(b"POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n"
                                  b"\r\n" + b"x" * 10)
            start = trio.current_time()
            received: list[bytes] = []

            async def reader() -> None:
                received.append(await read_until_eof(stream))
                nursery.cancel_scope.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                while True:  # 100 bytes/s, far below 1000
                    await trio.sleep(0.1)
                    try:
                        await stream.send_all(b"x" * 10)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        break
            elapsed = trio.current_time() - start
            await stream.aclose()
            assert elapsed < 4.0
            (resp, _), = parse_responses(received[0])
            assert resp.status_code == 408
            assert header(resp, b"connection") == b"close"
            assert app.disconnects == 1
            await assert_serves(srv.port)


async def test_fast_enough_body_is_not_cut_off() -> None:
    app = EchoApp()
    config = make_config(limits={"min_request_body_data_rate":
                                 MinDataRate(bytes_per_second=1000, grace_period=0.3)})
    with trio.fail_after(TIMEOUT):
        async with run_server(app, config, lifespan="off") as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            await stream.send_all(b"POST /steady HTTP/1.1\r\nHost: a\r\nContent-Length: 8000\r\n"
                                  b"Connection: close\r\n\r\n")
            for _ in range(8):  # 1000 bytes every 0.1 s = 10 kB/s
                await stream.send_all(b"x" * 1000)
                await trio.sleep(0.1)
            data = await read_until_eof(stream)
            await stream.aclose()
    (resp, body), = parse_responses(data)
    assert resp.status_code == 200 and len(json.loads(body)["body"]) == 8000


# ------------------------------------------------------------------ connection limits


async def test_max_concurrent_connections() -> None:
    app = EchoApp()
    config = make_config(limits={"max_concurrent_connections": 1})
    with trio.fail_after(TIMEOUT):
        async with run_server(app, config, lifespan="off") as srv:
            first = await Client.connect(srv.port)
            await first.send(GET % b"first")
            resp, _, _ = await first.response()
            assert resp.status_code == 200
            # the kernel completes the handshake, but the server does not accept/serve it
            second = await Client.connect(srv.port)
            await second.send(GET % b"second")
            with trio.move_on_after(0.5) as waited:
                await second.response()
            assert waited.cancelled_caught, "second connection served while the first was open"
            assert app.calls == 1
            # the first connection is still served meanwhile
            await first.send(GET % b"first-again")
            resp, body, _ = await first.response()
            assert json.loads(body)["path"] == "/first-again"
            await first.aclose()
            second.h11 = h11.Connection(h11.CLIENT)
            resp, body, _ = await second.response()
            assert resp.status_code == 200 and json.loads(body)["path"] == "/second"
            await second.aclose()
    assert app.calls == 3


# ---------------------------------------------------------------------------- listeners


def _ipv6_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_available(), reason="IPv6 loopback is not available")
async def test_ipv6_listener() -> None:
    app = EchoApp()
    config = make_config(binds=(Bind.tcp("::1", 0),))
    with trio.fail_after(TIMEOUT):
        async with run_server(app, config, lifespan="off") as srv:
            assert srv.addresses[0].startswith("http://[::1]:")
            assert srv.host == "::1" and srv.port > 0
            async with httpx.AsyncClient() as client:
                r = await client.get(f"http://[::1]:{srv.port}/v6")
            assert r.status_code == 200
            info = r.json()
            assert info["path"] == "/v6" and info["client"][0] == "::1"


async def test_unix_socket_listener(tmp_path: Any) -> None:
    app = EchoApp()
    path = str(tmp_path / "s.sock")
    config = make_config(binds=(Bind.unix(path),))
    with trio.fail_after(TIMEOUT):
        async with run_server(app, config, lifespan="off") as srv:
            assert srv.addresses == [f"unix:{path}"]
            transport = httpx.AsyncHTTPTransport(uds=path)
            async with httpx.AsyncClient(transport=transport) as client:
                r = await client.post("http://localhost/unix", content=b"over uds")
                assert r.status_code == 200
                assert r.json()["body"] == "over uds"
                assert r.json()["client"] is None  # no IP peer on a Unix socket
            stream = await trio.open_unix_socket(path)
            await stream.send_all(b"GET /raw HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            data = await read_until_eof(stream)
            await stream.aclose()
            (_resp, body), = parse_responses(data)
            assert json.loads(body)["path"] == "/raw"
    assert not await trio.Path(path).exists(), "the socket file is removed on shutdown"


async def test_inherited_fd_listener() -> None:
    app = EchoApp()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        port = sock.getsockname()[1]
        config = make_config(binds=(Bind.from_fd(sock.fileno()),))
        with trio.fail_after(TIMEOUT):
            async with run_server(app, config, lifespan="off") as srv:
                assert srv.addresses == [f"http://127.0.0.1:{port}"]
                assert srv.port == port
                data = await raw_exchange(port, b"GET /fd HTTP/1.1\r\nHost: a\r\n"
                                                b"Connection: close\r\n\r\n")
                (_resp, body), = parse_responses(data)
                assert json.loads(body)["path"] == "/fd"
    finally:
        # The server took ownership of the descriptor and closed it on shutdown.
        try:
            sock.close()
        except OSError:
            pass


async def test_port_zero_reports_the_real_port() -> None:
    seen: list[list[str]] = []

    async def app(ctx: RequestContext) -> None:
        feats = ctx.features
        addrs = feats[ServerAddressesFeature]
        seen.append(list(addrs.addresses))
        assert feats[RequestFeature].path == "/addr"
        assert await feats[RequestBodyFeature].receive() == b""
        feats[ResponseFeature].headers = [(b"content-type", b"text/plain")]
        await feats[ResponseBodyFeature].complete("\n".join(addrs.addresses).encode())

    config = make_config(binds=(Bind.tcp("127.0.0.1", 0), Bind.tcp("127.0.0.1", 0)))
    with trio.fail_after(TIMEOUT):
        async with run_server(app, config, asgi=False) as srv:
            assert len(srv.addresses) == 2
            ports = [int(a.rpartition(":")[2]) for a in srv.addresses]
            assert all(p > 0 for p in ports) and ports[0] != ports[1]
            for p in ports:
                data = await raw_exchange(p, b"GET /addr HTTP/1.1\r\nHost: a\r\n"
                                             b"Connection: close\r\n\r\n")
                (resp, body), = parse_responses(data)
                assert resp.status_code == 200
                assert body.decode().split("\n") == srv.addresses
    assert seen == [srv.addresses, srv.addresses]


@pytest.mark.parametrize("http2", [True, False])
@pytest.mark.parametrize("pipelined", [False, True])
async def test_app_outlives_the_request_headers_timeout(http2: bool, pipelined: bool) -> None:
    """The request-headers deadline bounds the head only: an app (or a WebSocket) taking
    longer than it on a connection's first request — whose head the HTTP/2 preface sniffing
    already read — or on a pipelined request finishes normally."""

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await trio.sleep(1.0)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["path"].encode()})

    config = make_config(timeouts={"request_headers": 0.3, "keep_alive": 0.3}, http2=http2)
    request = b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n"
    with trio.fail_after(TIMEOUT):
        async with run_server(slow, config, lifespan="off") as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            await stream.send_all(request % 1 + (request % 2 if pipelined else b""))
            data = b""
            while data.count(b"HTTP/1.1 200") < (2 if pipelined else 1):
                chunk = await stream.receive_some()
                assert chunk, f"connection closed early: {data!r}"
                data += chunk
            await stream.aclose()
            assert b"\r\n\r\n/1" in data
