"""The ASGI bridge, end to end: raw ASGI apps served by trioserve over real loopback sockets.

Each test writes the request bytes itself so the scope and the message sequence can be checked
exactly; responses are parsed with an h11 client.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest
import trio
from conftest import (
    assert_incomplete,
    make_config,
    parse_responses,
    raw_exchange,
    read_until_closed,
    run_server,
)
from trioserve.bridges.asgi import ASGIBridge

from trioserve import serve
from trioserve.features import LifespanFailure

Scope = dict[str, Any]
Message = dict[str, Any]

TIMEOUT = 10


class RawClient:
    """One TCP connection; sends raw request bytes, parses responses with h11."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    @property
    def sockname(self) -> tuple[str, int]:
        host, port = self.stream.socket.getsockname()[:2]
        return host, port

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def request(self, data: bytes, method: bytes = b"GET") -> tuple[h11.Response, bytes]:
        self.expect(method)
        await self.send(data)
        return await self.read_response()

    def expect(self, method: bytes = b"GET") -> None:
        """Tell the h11 client which request the next response answers."""
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        self.h11.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
        self.h11.send(h11.EndOfMessage())

    async def next_event(self) -> Any:
        while True:
            ev = self.h11.next_event()
            if ev is not h11.NEED_DATA:
                return ev
            self.h11.receive_data(bytes(await self.stream.receive_some(65536)))

    async def read_response(self) -> tuple[h11.Response, bytes]:
        resp = None
        body = b""
        while True:
            ev = await self.next_event()
            if isinstance(ev, h11.InformationalResponse):
                continue
            if isinstance(ev, h11.Response):
                resp = ev
            elif isinstance(ev, h11.Data):
                body += bytes(ev.data)
            elif isinstance(ev, h11.EndOfMessage):
                assert resp is not None
                return resp, body
            else:
                raise AssertionError(f"unexpected event {ev!r}")

    async def read_until_close(self) -> bytes:
        return await read_until_closed(self.stream)

    async def aclose(self) -> None:
        await self.stream.aclose()


def header(resp: h11.Response, name: bytes) -> bytes | None:
    for n, v in resp.headers:
        if n == name:
            return bytes(v)
    return None


async def read_all(receive: Any) -> tuple[list[Message], bytes]:
    """Read every http.request message; stop at the last one or at http.disconnect."""
    messages = []
    while True:
        m = await receive()
        messages.append(m)
        if m["type"] != "http.request" or not m.get("more_body", False):
            break
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")
    return messages, body


async def respond(send: Any, status: int = 200, body: bytes = b"ok",
                  headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers or []})
    await send({"type": "http.response.body", "body": body})


# ------------------------------------------------------------------------------- scope


async def test_scope_is_exact() -> None:
    scopes: list[Scope] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            m = await receive()
            assert m["type"] == "lifespan.startup"
            scope["state"]["db"] = "connected"
            await send({"type": "lifespan.startup.complete"})
            m = await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        scopes.append(scope)
        scope["state"]["per_request"] = True  # must not leak into the next request's state
        await read_all(receive)
        await respond(send)

    with trio.fail_after(TIMEOUT):
        async with run_server(app) as srv:
            client = await RawClient.connect(srv.port)
            resp, _ = await client.request(
                b"POST /caf%C3%A9/a%20b/%2F?x=1%202&y=%C3%A9 HTTP/1.1\r\n"
                b"Host: example.test\r\n"
                b"X-Custom-A: 1\r\n"
                b"x-custom-b: Two  Words\r\n"
                b"X-CUSTOM-A: 3\r\n"
                b"Content-Length: 2\r\n"
                b"\r\n"
                b"hi")
            assert resp.status_code == 200
            resp, _ = await client.request(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            assert resp.status_code == 200
            client_addr = client.sockname
            await client.aclose()
    first, second = scopes
    assert first == {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/café/a b//",
        "raw_path": b"/caf%C3%A9/a%20b/%2F",
        "query_string": b"x=1%202&y=%C3%A9",
        "root_path": "",
        "headers": [
            (b"host", b"example.test"),
            (b"x-custom-a", b"1"),
            (b"x-custom-b", b"Two  Words"),
            (b"x-custom-a", b"3"),
            (b"content-length", b"2"),
        ],
        "client": client_addr,
        "server": ("127.0.0.1", srv.port),
        "state": {"db": "connected", "per_request": True},
        "extensions": {"http.response.pathsend": {}, "http.response.trailers": {},
                       "http.response.early_hint": {}},
    }
    assert all(type(n) is bytes and type(v) is bytes for n, v in first["headers"])
    assert second["http_version"] == "1.0"
    assert second["method"] == "GET"
    assert second["path"] == "/"
    assert second["raw_path"] == b"/"
    assert second["query_string"] == b""
    assert second["headers"] == [(b"connection", b"keep-alive")]
    assert second["client"] == client_addr  # same keep-alive connection
    # each request gets its own shallow copy of the lifespan state
    assert second["state"] == {"db": "connected", "per_request": True}
    assert second["state"] is not first["state"]


async def test_scope_root_path_prefixes_path_and_raw_path() -> None:
    scopes: list[Scope] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        scopes.append(scope)
        await respond(send)

    with trio.fail_after(TIMEOUT):
        async with run_server(app, make_config(root_path="/api/v1"), lifespan="off") as srv:
            data = await raw_exchange(
                srv.port,
                b"GET /users/%C3%A9?q=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert parse_responses(data)[0][0].status_code == 200
    (scope,) = scopes
    assert scope["root_path"] == "/api/v1"
    assert scope["path"] == "/api/v1/users/é"
    assert scope["raw_path"] == b"/api/v1/users/%C3%A9"
    assert scope["query_string"] == b"q=1"
    assert "state" not in scope  # lifespan off: no state to share


async def test_raw_path_has_the_root_path_percent_encoded() -> None:
    """``raw_path`` is a valid encoded path whatever the root path holds: ``%``, ``?``,
    a space and non-ASCII escaped; pchar's sub-delims, ``:`` and ``@`` kept."""
    scopes: list[Scope] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        scopes.append(scope)
        await respond(send)

    root = "/caf\u00e9 100%/a?b/;x=y:@!$&'()*+,"
    with trio.fail_after(TIMEOUT):
        async with run_server(app, make_config(root_path=root), lifespan="off") as srv:
            data = await raw_exchange(
                srv.port, b"GET /x%2Fy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert parse_responses(data)[0][0].status_code == 200
    (scope,) = scopes
    assert scope["root_path"] == root
    assert scope["path"] == root + "/x/y"
    assert scope["raw_path"] == b"/caf%C3%A9%20100%25/a%3Fb/;x=y:@!$&'()*+,/x%2Fy"


# ------------------------------------------------------------------------ request body


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_request_body_streams_with_more_body(chunked: bool) -> None:
    got_first = trio.Event()
    received: list[Message] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        while True:
            m = await receive()
            received.append(m)
            got_first.set()
            if not m.get("more_body"):
                break
        body = b"".join(m["body"] for m in received)
        await respond(send, body=hashlib.sha256(body).hexdigest().encode())

    parts = [b"a" * 1000, b"b" * 2000, b"c" * 3000]
    total = b"".join(parts)
    with trio.fail_after(TIMEOUT):
        async with run_server(app, lifespan="off") as srv:
            client = await RawClient.connect(srv.port)
            client.expect(b"POST")
            if chunked:
                await client.send(b"POST /up HTTP/1.1\r\nHost: x\r\n"
                                  b"Transfer-Encoding: chunked\r\n\r\n")
                for i, part in enumerate(parts):
                    await client.send(b"%x\r\n%s\r\n" % (len(part), part))
                    if i == 0:
                        await got_first.wait()
                    else:
                        await trio.sleep(0.05)
                await client.send(b"0\r\n\r\n")
            else:
                await client.send(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                                  % len(total))
                for i, part in enumerate(parts):
                    await client.send(part)
                    if i == 0:
                        await got_first.wait()
                    else:
                        await trio.sleep(0.05)
            resp, body = await client.read_response()
            await client.aclose()
    assert resp.status_code == 200
    assert body == hashlib.sha256(total).hexdigest().encode()
    assert all(m["type"] == "http.request" for m in received)
    assert all(type(m["body"]) is bytes for m in received)
    assert len(received) >= 3  # it arrived in pieces and was not buffered
    assert [m["more_body"] for m in received] == [True] * (len(received) - 1) + [False]
    assert received[0]["body"] == parts[0]


async def test_no_body_is_one_empty_message() -> None:
    received: list[Message] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        received.append(await receive())
        await respond(send)

    with trio.fail_after(TIMEOUT):
        async with run_server(app, lifespan="off") as srv:
            data = await raw_exchange(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\n"
                                                b"Connection: close\r\n\r\n")
    assert parse_responses(data)[0][0].status_code == 200
    assert received == [{"type": "http.request", "body": b"", "more_body": False}]


async def test_disconnect_while_waiting_in_receive_after_body() -> None:
    waiting = trio.Event()
    result: list[tuple[Message, float]] = []
    app_done = trio.Event()

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        _, body = await read_all(receive)
        assert body == b"hello"
        waiting.set()
        m = await receive()  # blocks: the body is over, nothing has been sent
        result.append((m, trio.current_time()))
        app_done.set()

    with trio.fail_after(TIMEOUT):
        async with run_server(app, lifespan="off") as srv:
            client = await RawClient.connect(srv.port)
            await client.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
            await waiting.wait()
            await trio.sleep(0.1)
            assert not result  # still waiting while the client is connected
            closed_at = trio.current_time()
            await client.aclose()
            with trio.fail_after(1):
                await app_done.wait()
    ((m, at),) = result
    assert m == {"type": "http.disconnect"}
    assert at - closed_at < 1


async def test_receive_after_response_complete_returns_disconnect() -> None:
    after: list[Message] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await read_all(receive)
        await respond(send, body=b"done")
        with trio.fail_after(2):
            after.append(await receive())
            after.append(await receive())

    with trio.fail_after(TIMEOUT):
        async with run_server(app, lifespan="off") as srv:
            client = await RawClient.connect(srv.port)
            resp, body = await client.request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (resp.status_code, body) == (200, b"done")
            # the connection is still usable
            resp, body = await client.request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (resp.status_code, body) == (200, b"done")
            await client.aclose()
    assert after == [{"type": "http.disconnect"}] * 4


@pytest.mark.parametrize("client_leaves", [False, True], ids=["completes", "client-leaves"])
async def test_disconnect_listener_task_beside_streaming(client_leaves: bool) -> None:
    """The spec-2.3 pattern (one task waits in receive() for http.disconnect while another
    streams the response) ends cleanly both when the response completes and when the client
    goes away mid-stream."""
    outcome: dict[str, Any] = {}
    first_sent = trio.Event()
    app_done = trio.Event()

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await read_all(receive)

        async def listen(cancel: trio.CancelScope) -> None:
            m = await receive()
            outcome["listener"] = m
            outcome["listener_at"] = trio.current_time()
            cancel.cancel()

        async def stream(cancel: trio.CancelScope) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for i in range(5 if not client_leaves else 1000):
                await send({"type": "http.response.body", "body": b"chunk %d;" % i,
                            "more_body": True})
                first_sent.set()
                await trio.sleep(0.02)
            await send({"type": "http.response.body", "body": b"end"})
            outcome["completed"] = True

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(listen, nursery.cancel_scope)
                nursery.start_soon(stream, nursery.cancel_scope)
        finally:
            app_done.set()

    with trio.fail_after(TIMEOUT):
        async with run_server(app, lifespan="off") as srv:
            client = await RawClient.connect(srv.port)
            if client_leaves:
                await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                await first_sent.wait()
                closed_at = trio.current_time()
                await client.aclose()
                with trio.fail_after(1):
                    await app_done.wait()
                assert outcome["listener_at"] - closed_at < 1
                assert "completed" not in outcome
            else:
                _, body = await client.request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert body == b"chunk 0;chunk 1;chunk 2;chunk 3;chunk 4;end"
                await app_done.wait()
                assert outcome["completed"]
                app_done = trio.Event()
                # keep-alive still works after the listener returned
                _, body = await client.request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert body.endswith(b"end")
                await client.aclose()
    assert outcome["listener"] == {"type": "http.disconnect"}


# -------------------------------------------------------------------- app errors


async def test_exception_before_start_is_500_and_server_keeps_serving() -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["path"] == "/boom":
            raise ValueError("boom")
        if scope["path"] == "/boom-after-start-message":
            # start is only held, nothing is on the wire yet: still a clean 500
            await send({"type": "http.response.start", "status": 201, "headers": []})
            raise ValueError("boom")
        await respond(send, body=b"fine")

    with trio.fail_after(TIMEOUT):
        async with run_server(app, lifespan="off") as srv:
            for path in (b"/boom", b"/boom-after-start-message"):
                data = await raw_exchange(srv.port, b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path)
                (resp, body), = parse_responses(data)
                assert resp.status_code == 500
                assert b"boom" not in body  # no details leak to the client
                assert header(resp, b"connection") == b"close"
            async with httpx.AsyncClient(base_url=srv.url) as client:
                r = await client.get("/ok")
                assert (r.status_code, r.content) == (200, b"fine")


async def test_exception_after_start_with_content_length_truncates() -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"100")]})
        await send({"type": "http.response.body", "body": b"x" * 10, "more_body": True})
        raise ValueError("boom midway")

    with trio.fail_after(TIMEOUT):
        async with run_server(app, lifespan="off") as srv:
            data = await raw_exchange(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            assert b"content-length: 100" in head.lower()
            assert body == b"x" * 10
            assert_incomplete(data)
            async with httpx.AsyncClient(base_url=srv.url) as client:
                # the server resets the connection: a truncated response never looks whole
                with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                    await client.get("/")


async def test_exception_after_start_chunked_never_terminates_body() -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise ValueError("boom midway")

    with trio.fail_after(TIMEOUT):
        async with run_server(app, lifespan="off") as srv:
            data = await raw_exchange(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b"transfer-encoding: chunked" in data.lower()
            assert b"partial" in data
            assert not data.endswith(b"0\r\n\r\n")
            assert_incomplete(data)  # never a complete-looking response


@pytest.mark.parametrize("case", ["no-response", "start-only", "no-final-body"])
async def test_app_returning_without_response(case: str) -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if case == "start-only":
            await send({"type": "http.response.start", "status": 200, "headers": []})
        elif case == "no-final-body":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", b"10")]})
            await send({"type": "http.response.body", "body": b"12345", "more_body": True})

    with trio.fail_after(TIMEOUT):
        async with run_server(app, lifespan="off") as srv:
            data = await raw_exchange(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    if case == "no-final-body":
        # headers are out: the only honest answer is to cut the connection
        assert data.startswith(b"HTTP/1.1 200 ")
        assert_incomplete(data)
    else:
        (resp, _), = parse_responses(data)
        assert resp.status_code == 500


@pytest.mark.parametrize("headers", [
    [("content-type", "text/plain")],
    [(b"content-type", "text/plain")],
    [(b"x-bad", b"line\r\nbreak")],
    [(b"bad name", b"v")],
    [(b"content-length", b"nope")],
], ids=["str-both", "str-value", "crlf-value", "space-in-name", "bad-content-length"])
async def test_bad_response_headers_are_500(headers: list[Any]) -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["path"] == "/ok":
            await respond(send, body=b"fine")
            return
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"never"})

    with trio.fail_after(TIMEOUT):
        async with run_server(app, lifespan="off") as srv:
            data = await raw_exchange(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            (resp, _), = parse_responses(data)
            assert resp.status_code == 500
            assert b"never" not in data
            data = await raw_exchange(srv.port, b"GET /ok HTTP/1.1\r\nHost: x\r\n"
                                                b"Connection: close\r\n\r\n")
            assert parse_responses(data)[0][1] == b"fine"


@pytest.mark.parametrize("status", ["200", 99, 1000, None], ids=str)
async def test_bad_status_is_500(status: Any) -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"never"})

    with trio.fail_after(TIMEOUT):
        async with run_server(app, lifespan="off") as srv:
            data = await raw_exchange(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    (resp, _), = parse_responses(data)
    assert resp.status_code == 500


# ------------------------------------------------------------------ response kinds


async def test_head_sends_no_body() -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"hello", "more_body": True})
        await send({"type": "http.response.body", "body": b" world"})

    with trio.fail_after(TIMEOUT):
        async with run_server(app, lifespan="off") as srv:
            client = await RawClient.connect(srv.port)
            await client.send(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
            # nothing but the head may arrive
            data = b""
            while b"\r\n\r\n" not in data:
                data += await client.stream.receive_some(65536)
            with trio.move_on_after(0.2):
                data += await client.stream.receive_some(65536)
            head, _, rest = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            assert rest == b""
            assert b"transfer-encoding" not in head.lower()
            # the connection is intact: a GET on it gets the full body
            await client.send(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            rest = await client.read_until_close()
            await client.aclose()
    (_, body), = parse_responses(rest)
    assert body == b"hello world"


@pytest.mark.parametrize("with_length", [True, False], ids=["content-length", "chunked"])
async def test_pathsend_serves_a_file(tmp_path: Path, with_length: bool) -> None:
    content = os.urandom(300_000)
    path = tmp_path / "blob.bin"
    path.write_bytes(content)

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        assert "http.response.pathsend" in scope["extensions"]
        headers = [(b"content-type", b"application/octet-stream")]
        if with_length:
            headers.append((b"content-length", str(len(content)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.pathsend", "path": str(path)})

    with trio.fail_after(TIMEOUT):
        async with run_server(app, lifespan="off") as srv:
            async with httpx.AsyncClient(base_url=srv.url) as client:
                for _ in range(2):  # keep-alive survives a pathsend response
                    r = await client.get("/file")
                    assert r.status_code == 200
                    assert r.content == content
                    if with_length:
                        assert r.headers["content-length"] == str(len(content))
                    else:
                        assert r.headers["transfer-encoding"] == "chunked"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_body_over_max_size_is_413(chunked: bool) -> None:
    seen: list[list[Message]] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        messages, body = await read_all(receive)
        seen.append(messages)
        if messages[-1]["type"] == "http.request":
            await respond(send, body=b"%d" % len(body))

    body = b"z" * 5000
    if chunked:
        request = (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                   + b"".join(b"3e8\r\n%s\r\n" % body[i:i + 1000] for i in range(0, 5000, 1000))
                   + b"0\r\n\r\n")
    else:
        request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + body
    config = make_config(limits={"max_request_body_size": 1000})
    with trio.fail_after(TIMEOUT):
        async with run_server(app, config, lifespan="off") as srv:
            data = await raw_exchange(srv.port, request)
            (resp, _), = parse_responses(data)
            assert resp.status_code == 413
            # a body within the limit is fine
            data = await raw_exchange(
                srv.port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                          b"Connection: close\r\n\r\n" + body[:1000])
            (resp, ok_body), = parse_responses(data)
            assert (resp.status_code, ok_body) == (200, b"1000")
    assert seen[0][-1] == {"type": "http.disconnect"}
    if not chunked:
        assert seen[0] == [{"type": "http.disconnect"}]  # refused before reading any of it


async def test_send_after_disconnect_raises_oserror() -> None:
    errors: list[BaseException] = []
    after: list[Message] = []
    first_sent = trio.Event()
    noticed = trio.Event()

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await read_all(receive)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            while True:
                await send({"type": "http.response.body", "body": b"x" * 1024,
                            "more_body": True})
                first_sent.set()
                await trio.sleep(0.01)
        except OSError as exc:
            errors.append(exc)
        try:
            await send({"type": "http.response.body", "body": b"again", "more_body": True})
        except OSError as exc:
            errors.append(exc)
        after.append(await receive())
        noticed.set()

    with trio.fail_after(TIMEOUT):
        async with run_server(app, lifespan="off") as srv:
            client = await RawClient.connect(srv.port)
            await client.send(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
            await first_sent.wait()
            assert await client.stream.receive_some(65536)
            closed_at = trio.current_time()
            await client.aclose()
            with trio.fail_after(2):
                await noticed.wait()
            assert trio.current_time() - closed_at < 1
    assert len(errors) == 2
    assert all(isinstance(e, OSError) for e in errors)
    assert after == [{"type": "http.disconnect"}]


# ---------------------------------------------------------------------- lifespan


async def test_app_without_lifespan_support_still_serves() -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"unsupported scope type {scope['type']}")
        await respond(send, body=b"served")

    with trio.fail_after(TIMEOUT):
        async with run_server(app) as srv:
            async with httpx.AsyncClient(base_url=srv.url) as client:
                r = await client.get("/")
                assert (r.status_code, r.content) == (200, b"served")


async def test_lifespan_on_with_unsupporting_app_fails() -> None:
    called = False

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        nonlocal called
        if scope["type"] != "http":
            raise ValueError(f"unsupported scope type {scope['type']}")
        called = True

    with trio.fail_after(TIMEOUT), pytest.raises(LifespanFailure,
                                                 match="unsupported scope type lifespan"):
        await serve(ASGIBridge(app, lifespan="on"), make_config(), install_signal_handlers=False)
    assert not called


async def test_lifespan_startup_failed_message() -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "database unreachable"})

    with trio.fail_after(TIMEOUT), pytest.raises(LifespanFailure, match="database unreachable"):
        await serve(ASGIBridge(app), make_config(), install_signal_handlers=False)


# ------------------------------------------------- trailers and early hints (ASGI extensions)


async def _trailers_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    assert "http.response.trailers" in scope["extensions"]
    await send({"type": "http.response.start", "status": 200, "trailers": True,
                "headers": [(b"trailer", b"x-checksum, x-count")]})
    digest = hashlib.sha256()
    for part in (b"first ", b"second"):
        digest.update(part)
        await send({"type": "http.response.body", "body": part, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
    await send({"type": "http.response.trailers",
                "headers": [(b"x-checksum", digest.hexdigest().encode())],
                "more_trailers": True})
    await send({"type": "http.response.trailers", "headers": [(b"x-count", b"2")]})


async def test_response_trailers_follow_a_chunked_body() -> None:
    with trio.fail_after(10):
        async with run_server(_trailers_app, make_config(), lifespan="off") as srv:
            data = await raw_exchange(
                srv.port, b"GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n")
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    events = []
    while True:
        ev = conn.next_event()
        if ev is h11.NEED_DATA:
            break
        events.append(ev)
        if isinstance(ev, h11.EndOfMessage):
            break
    head = events[0]
    assert isinstance(head, h11.Response) and head.status_code == 200
    assert (b"transfer-encoding", b"chunked") in head.headers.raw_items()
    body = b"".join(bytes(e.data) for e in events if isinstance(e, h11.Data))
    assert body == b"first second"
    end = events[-1]
    assert isinstance(end, h11.EndOfMessage)
    assert list(end.headers.raw_items()) == [
        (b"x-checksum", hashlib.sha256(b"first second").hexdigest().encode()),
        (b"x-count", b"2")]


async def _hints_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    assert "http.response.early_hint" in scope["extensions"]
    await send({"type": "http.response.early_hint",
                "links": [b"</style.css>; rel=preload; as=style",
                          b"</app.js>; rel=preload; as=script"]})
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"page"})


async def test_early_hints_come_before_the_final_response() -> None:
    with trio.fail_after(10):
        async with run_server(_hints_app, make_config(), lifespan="off") as srv:
            data = await raw_exchange(
                srv.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            old = await raw_exchange(srv.port, b"GET / HTTP/1.0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 103 Early Hints\r\n"
                           b"link: </style.css>; rel=preload; as=style\r\n"
                           b"link: </app.js>; rel=preload; as=script\r\n\r\n"
                           b"HTTP/1.1 200 OK\r\n"), data
    assert data.endswith(b"\r\n\r\npage")
    # HTTP/1.0 clients do not understand 1xx: they get the final response only
    assert old.startswith(b"HTTP/1.1 200 OK\r\n") and b" 103 " not in old


async def test_early_hints_after_the_response_started_are_an_app_error() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await send({"type": "http.response.early_hint", "links": [b"</x>; rel=preload"]})

    with trio.fail_after(10):
        async with run_server(app, make_config(), lifespan="off") as srv:
            data = await raw_exchange(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b" 103 " not in data
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert_incomplete(data)  # the response was cut short: the app failed mid-response


_USER: Any = __import__("contextvars").ContextVar("user", default="nobody")


async def _context_app(scope: Scope, receive: Any, send: Any) -> None:
    """Answers the value of a context variable before and after setting it to the query
    string, across a suspension (so it is set in the request's own context for its whole
    life); sets it again in an on_completed-like late step, after the response."""
    if scope["type"] != "http":
        return
    before = _USER.get()
    _USER.set(scope["query_string"].decode() or before)
    await trio.lowlevel.checkpoint()
    body = f"{before} {_USER.get()}".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
    _USER.set("after-the-response")


@pytest.mark.parametrize("http2", [False, True], ids=["http1-keep-alive", "h2c"])
async def test_context_variables_do_not_leak_between_requests(http2: bool) -> None:
    """Each request runs in its own copy of the connection's context, as a task per request
    would: what one request's app sets is never seen by the next one on the same connection
    (behind a proxy, the next request may be another client's)."""
    with trio.fail_after(TIMEOUT):
        async with run_server(_context_app) as srv, httpx.AsyncClient(
                http1=not http2, http2=http2) as client:
            url = f"http://127.0.0.1:{srv.port}/"
            first = await client.get(url + "?alice")
            second = await client.get(url)
            third = await client.get(url + "?bob")
            assert first.http_version == second.http_version == ("HTTP/2" if http2
                                                                  else "HTTP/1.1")
    assert first.text == "nobody alice"
    assert second.text == "nobody nobody"
    assert third.text == "nobody bob"
    assert _USER.get() == "nobody"  # nor does it reach the server's own context
