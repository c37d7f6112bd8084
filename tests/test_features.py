"""Applications written directly against :mod:`trioserve.features`, served over real loopback
sockets (``run_server(app, asgi=False)``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h11
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

from trioserve.features import (
    ClientDisconnected,
    ConnectionFeature,
    FeatureCollection,
    FeatureMissingError,
    FeatureStateError,
    RequestBodyFeature,
    RequestBodyTooLarge,
    RequestContext,
    RequestFeature,
    RequestLifetimeFeature,
    ResponseBodyFeature,
    ResponseFeature,
    ServerAddressesFeature,
    TlsFeature,
    UpgradeFeature,
)

TIMEOUT = 10


def get(path: bytes, *extra: bytes, close: bool = True) -> bytes:
    lines = [b"GET %s HTTP/1.1" % path, b"Host: x", *extra]
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def post(path: bytes, body: bytes, *, chunked: bool = False) -> bytes:
    if chunked:
        return (b"POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                b"Connection: close\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (path, len(body), body))
    return (b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
            % (path, len(body))) + body


def one_response(data: bytes, method: bytes = b"GET") -> tuple[h11.Response, bytes]:
    responses = parse_responses(data, [method])
    assert len(responses) == 1, data[:300]
    return responses[0]


def header(resp: h11.Response, name: bytes) -> bytes | None:
    for n, v in resp.headers:
        if n == name:
            return bytes(v)
    return None


async def read_all(body: RequestBodyFeature) -> bytes:
    out = []
    while chunk := await body.receive():
        out.append(chunk)
    return b"".join(out)


async def text(ctx: RequestContext, data: bytes | str, status: int = 200) -> None:
    ctx.features[ResponseFeature].status = status
    await ctx.features[ResponseBodyFeature].complete(
        data.encode() if isinstance(data, str) else data)


async def read_head(stream: trio.abc.Stream) -> tuple[bytes, bytes]:
    """Read up to the end of a response head; returns (head, bytes after it)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = await stream.receive_some(65536)
        assert data, f"connection closed after {buf!r}"
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


# ------------------------------------------------------------------- the collection


def test_feature_collection_lookup_and_fallback() -> None:
    class A:
        pass

    class B:
        pass

    server = FeatureCollection({A: "server-a"})
    conn = FeatureCollection({B: "conn-b"}, server)
    req = FeatureCollection({}, conn)
    assert req.get(A) == "server-a"
    assert req[B] == "conn-b"
    assert A in req and B in req and TlsFeature not in req
    assert req.get(TlsFeature) is None
    with pytest.raises(FeatureMissingError, match="TlsFeature"):
        req[TlsFeature]
    req.set(A, "request-a")  # shadows the server's, at this level only
    assert req[A] == "request-a"
    assert conn[A] == "server-a"
    assert req.types() == {A, B}
    req.set(A, None)
    assert req[A] == "server-a"
    assert req.parent is conn and conn.parent is server and server.parent is None


async def test_features_fall_back_request_connection_server() -> None:
    seen: list[dict[str, Any]] = []

    async def app(ctx: RequestContext) -> None:
        f = ctx.features
        conn_level = f.parent
        assert conn_level is not None
        server_level = conn_level.parent
        assert server_level is not None
        seen.append({
            "request_level": {RequestFeature, RequestBodyFeature, ResponseFeature,
                              ResponseBodyFeature, UpgradeFeature,
                              RequestLifetimeFeature} <= set(f._items),
            "conn_has_request": conn_level.get(RequestFeature) is not None,
            "conn_level": conn_level.get(ConnectionFeature) is f.get(ConnectionFeature),
            "server_has_conn": server_level.get(ConnectionFeature) is not None,
            "server_level": server_level[ServerAddressesFeature] is f[ServerAddressesFeature],
            "id": f[ConnectionFeature].connection_id,
            "peer": f[ConnectionFeature].peer,
            "local": f[ConnectionFeature].local,
            "addresses": list(f[ServerAddressesFeature].addresses),
            "tls": f.get(TlsFeature),
            "path": f[RequestFeature].path,
        })
        # A request-level override (what a middleware does) must not leak to the next request.
        f.set(ConnectionFeature, None)
        assert f.get(ConnectionFeature) is not None  # removing here uncovers the parent's
        await text(ctx, "ok")

    with trio.fail_after(TIMEOUT):
        async with run_server(app, asgi=False) as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            async with stream:
                client_addr = stream.socket.getsockname()[:2]
                await stream.send_all(get(b"/one", close=False) + get(b"/two"))
                data = await read_until_closed(stream)
            assert [r.status_code for r, _ in parse_responses(data)] == [200, 200]
            data = await raw_exchange(srv.port, get(b"/three"))
            assert one_response(data)[0].status_code == 200
    one, two, three = seen
    for s in seen:
        assert s["request_level"] and s["conn_level"] and s["server_level"]
        assert not s["conn_has_request"] and not s["server_has_conn"]
        assert s["addresses"] == srv.addresses == [f"http://127.0.0.1:{srv.port}"]
        assert s["local"] == ("127.0.0.1", srv.port)
        assert s["tls"] is None  # plain TCP
    assert one["peer"] == two["peer"] == client_addr
    assert one["id"] == two["id"] != three["id"]  # one id per connection
    assert three["peer"] != client_addr
    assert [s["path"] for s in seen] == ["/one", "/two", "/three"]


# ---------------------------------------------------------------- invalid transitions


async def test_invalid_transitions_raise_feature_state_error() -> None:
    errors: dict[str, str] = {}

    async def app(ctx: RequestContext) -> None:
        f = ctx.features
        req, body = f[RequestFeature], f[RequestBodyFeature]
        resp, out = f[ResponseFeature], f[ResponseBodyFeature]
        upgrade = f[UpgradeFeature]
        case = req.path.strip("/")

        def expect_refused(name: str, fn: Any) -> None:
            with pytest.raises(FeatureStateError) as info:
                fn()
            errors[name] = str(info.value)

        async def expect_refused_async(name: str, coro: Any) -> None:
            with pytest.raises(FeatureStateError) as info:
                await coro
            errors[name] = str(info.value)

        if case == "max-size":
            body.max_size = 5000  # fine before the first read
            first = await body.receive()
            assert first
            expect_refused("max_size", lambda: setattr(body, "max_size", 10))
            assert body.max_size == 5000
            rest = await read_all(body)
            await text(ctx, b"%d" % (len(first) + len(rest)))
        elif case == "after-start":
            resp.status = 202
            resp.reason = "Queued"
            await out.start()
            assert resp.has_started
            expect_refused("status", lambda: setattr(resp, "status", 500))
            expect_refused("reason", lambda: setattr(resp, "reason", "Nope"))

            async def cb() -> None:
                pass

            expect_refused("on_starting", lambda: resp.on_starting(cb))
            await expect_refused_async("upgrade", upgrade.upgrade())
            assert resp.status == 202
            await out.send(b"still ")
            await out.complete(b"fine")
        elif case == "complete-twice":
            await out.complete(b"done")
            assert out.is_complete
            await expect_refused_async("complete", out.complete(b"again"))
            await expect_refused_async("send", out.send(b"more"))
            await expect_refused_async("start", out.start())
            await expect_refused_async("send_file", out.send_file(__file__))
        elif case == "upgrade-refused":
            assert not upgrade.is_upgradable_request
            assert upgrade.protocol is None
            await expect_refused_async("not-upgradable", upgrade.upgrade())
            await text(ctx, "no upgrade")
        elif case == "upgrade-unread-body":
            assert upgrade.is_upgradable_request
            await expect_refused_async("upgrade-body", upgrade.upgrade())
            await text(ctx, "read the body first")

    with trio.fail_after(TIMEOUT):
        async with run_server(app, asgi=False) as srv:
            resp, body = one_response(await raw_exchange(srv.port, post(b"/max-size", b"a" * 3000,
                                                                        chunked=True)))
            assert (resp.status_code, body) == (200, b"3000")
            resp, body = one_response(await raw_exchange(
                srv.port, get(b"/after-start", b"Connection: upgrade", b"Upgrade: x")))
            assert (resp.status_code, resp.reason, body) == (202, b"Queued", b"still fine")
            resp, body = one_response(await raw_exchange(srv.port, get(b"/complete-twice")))
            assert (resp.status_code, body) == (200, b"done")
            resp, body = one_response(await raw_exchange(srv.port, get(b"/upgrade-refused")))
            assert body == b"no upgrade"
            resp, body = one_response(await raw_exchange(
                srv.port, b"POST /upgrade-unread-body HTTP/1.1\r\nHost: x\r\n"
                          b"Connection: upgrade, close\r\nUpgrade: x\r\n"
                          b"Content-Length: 3\r\n\r\nabc"))
            assert body == b"read the body first"
    assert set(errors) == {"max_size", "status", "reason", "on_starting", "upgrade", "complete",
                           "send", "start", "send_file", "not-upgradable", "upgrade-body"}
    for name, message in errors.items():
        assert message, name  # every refusal says why
    assert "read" in errors["max_size"]
    assert "started" in errors["status"] and "started" in errors["upgrade"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_per_request_max_size_override(chunked: bool) -> None:
    async def app(ctx: RequestContext) -> None:
        body = ctx.features[RequestBodyFeature]
        path = ctx.features[RequestFeature].path
        assert body.max_size == 1000  # the server's limit
        if path == "/big":
            body.max_size = 100_000
        elif path == "/unlimited":
            body.max_size = None
        elif path == "/small":
            body.max_size = 10
        with pytest.raises(ValueError):
            body.max_size = -1
        try:
            data = await read_all(body)
        except RequestBodyTooLarge:
            assert ctx.features[ResponseFeature].status == 413  # the server answered
            raise
        await text(ctx, b"%d" % len(data))

    config = make_config(limits={"max_request_body_size": 1000})
    with trio.fail_after(TIMEOUT):
        async with run_server(app, config, asgi=False) as srv:
            for path, size, expected in [
                (b"/big", 50_000, (200, b"50000")),
                (b"/unlimited", 200_000, (200, b"200000")),
                (b"/default", 1000, (200, b"1000")),
                (b"/small", 10, (200, b"10")),
            ]:
                resp, body = one_response(await raw_exchange(
                    srv.port, post(path, os.urandom(size), chunked=chunked)))
                assert (resp.status_code, body) == expected, path
            for path, size in [(b"/default", 1001), (b"/small", 11), (b"/big", 100_001)]:
                resp, _ = one_response(await raw_exchange(
                    srv.port, post(path, b"x" * size, chunked=chunked)))
                assert resp.status_code == 413, path


# -------------------------------------------------------------------- callbacks


async def test_on_starting_and_on_completed_order() -> None:
    order: list[str] = []
    all_done = trio.Event()

    async def app(ctx: RequestContext) -> None:
        resp = ctx.features[ResponseFeature]
        out = ctx.features[ResponseBodyFeature]
        failing = ctx.features[RequestFeature].path == "/fail"

        def starting(name: str) -> Any:
            async def cb() -> None:
                order.append(name)
                assert not resp.has_started  # headers not written yet: still mutable
                resp.headers.append((b"x-starting", name.encode()))
                if name == "starting-1":
                    resp.status = 203
            return cb

        def completed(name: str) -> Any:
            async def cb() -> None:
                await trio.lowlevel.checkpoint()
                order.append(name)
                if name == "completed-1":
                    all_done.set()
            return cb

        resp.on_completed(completed("completed-1"))
        if failing:
            order.clear()
            raise RuntimeError("the app failed")
        resp.on_starting(starting("starting-1"))
        resp.on_starting(starting("starting-2"))
        resp.on_completed(completed("completed-2"))
        order.append("app-before-send")
        await out.send(b"hello ")
        order.append("app-sent")
        await out.complete(b"world")
        order.append("app-returns")

    with trio.fail_after(TIMEOUT):
        async with run_server(app, asgi=False) as srv:
            resp, body = one_response(await raw_exchange(srv.port, get(b"/")))
            await all_done.wait()
            assert order == ["app-before-send", "starting-2", "starting-1", "app-sent",
                             "app-returns", "completed-2", "completed-1"]
            assert (resp.status_code, body) == (203, b"hello world")
            assert [v for n, v in resp.headers if n == b"x-starting"] == [b"starting-2",
                                                                          b"starting-1"]
            # on_completed runs even when the app fails
            all_done = trio.Event()
            resp, _ = one_response(await raw_exchange(srv.port, get(b"/fail")))
            assert resp.status_code == 500
            await all_done.wait()
            assert order == ["completed-1"]


# -------------------------------------------------------------------------- send_file


async def test_send_file_offset_and_count(tmp_path: Path) -> None:
    content = os.urandom(1_500_000)
    path = tmp_path / "data.bin"
    path.write_bytes(content)
    cases = {
        "/whole": (0, None),
        "/middle": (1000, 5000),
        "/tail": (len(content) - 10, None),
        "/big": (7, 1_400_000),
        "/empty": (500, 0),
    }

    async def app(ctx: RequestContext) -> None:
        req_path = ctx.features[RequestFeature].path
        resp = ctx.features[ResponseFeature]
        out = ctx.features[ResponseBodyFeature]
        query = ctx.features[RequestFeature].query_string
        if req_path == "/bad":
            with pytest.raises(ValueError):
                await out.send_file(path, len(content) + 1)
            with pytest.raises(ValueError):
                await out.send_file(path, 10, len(content))
            await out.complete(b"refused")
            return
        if req_path == "/mixed":
            await out.send(b"<")
            await out.send_file(path, 3, 4)
            await out.send(b">")
            await out.complete()
            return
        offset, count = cases[req_path]
        if query == b"length":
            n = len(content) - offset if count is None else count
            resp.headers.append((b"content-length", b"%d" % n))
        await out.send_file(path, offset, count)
        await out.complete()

    with trio.fail_after(TIMEOUT):
        async with run_server(app, asgi=False) as srv:
            for name, (offset, count) in cases.items():
                expected = content[offset:] if count is None else content[offset:offset + count]
                for query in (b"", b"?length"):
                    data = await raw_exchange(srv.port, get(name.encode() + query))
                    resp, body = one_response(data)
                    assert resp.status_code == 200
                    assert len(body) == len(expected), (name, query)
                    assert body == expected, (name, query)
                    if query:
                        assert header(resp, b"content-length") == b"%d" % len(expected)
                    else:
                        assert header(resp, b"transfer-encoding") == b"chunked"
                # HEAD: headers only
                data = await raw_exchange(srv.port, b"HEAD " + get(name.encode())[4:])
                head, _, rest = data.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200 ") and rest == b""
            resp, body = one_response(await raw_exchange(srv.port, get(b"/mixed")))
            assert body == b"<" + content[3:7] + b">"
            resp, body = one_response(await raw_exchange(srv.port, get(b"/bad")))
            assert body == b"refused"


# ----------------------------------------------------------------------------- upgrade


async def test_upgrade_returns_stream_with_early_bytes() -> None:
    results: dict[str, Any] = {}

    async def app(ctx: RequestContext) -> None:
        up = ctx.features[UpgradeFeature]
        results["upgradable"] = up.is_upgradable_request
        results["protocol"] = up.protocol
        stream = await up.upgrade([(b"upgrade", b"echo/1"), (b"x-extra", b"yes")])
        results["status"] = ctx.features[ResponseFeature].status
        results["complete"] = ctx.features[ResponseBodyFeature].is_complete
        async with stream:
            buf = b""
            while not buf.endswith(b"bye"):
                data = await stream.receive_some(1024)
                if not data:
                    break
                buf += data
                await stream.send_all(data.upper())
        results["received"] = buf

    with trio.fail_after(TIMEOUT):
        async with run_server(app, asgi=False) as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            async with stream:
                # the first protocol bytes travel in the same packet as the request
                await stream.send_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                                      b"Upgrade: echo/1\r\n\r\nearly-bytes;")
                head, rest = await read_head(stream)
                while len(rest) < len(b"EARLY-BYTES;"):
                    rest += await stream.receive_some(1024)
                assert rest == b"EARLY-BYTES;"
                await stream.send_all(b"later;")
                got = b""
                while len(got) < len(b"LATER;"):
                    got += await stream.receive_some(1024)
                assert got == b"LATER;"
                await stream.send_all(b"bye")
                tail = await read_until_closed(stream)
                assert tail == b"BYE"
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 101 Switching Protocols"
    hdrs = {n.lower(): v.strip() for n, _, v in (line.partition(b":") for line in lines[1:])}
    assert hdrs[b"upgrade"] == b"echo/1"
    assert hdrs[b"connection"].lower() == b"upgrade"
    assert hdrs[b"x-extra"] == b"yes"
    assert b"content-length" not in hdrs and b"transfer-encoding" not in hdrs
    assert results == {"upgradable": True, "protocol": b"echo/1", "status": 101,
                       "complete": True, "received": b"early-bytes;later;bye"}


# ------------------------------------------------------------------- request lifetime


async def test_abort_before_response_drops_the_connection() -> None:
    seen: dict[str, Any] = {}

    async def app(ctx: RequestContext) -> None:
        lifetime = ctx.features[RequestLifetimeFeature]
        out = ctx.features[ResponseBodyFeature]
        if ctx.features[RequestFeature].path == "/ok":
            await text(ctx, "ok")
            return
        seen["before"] = lifetime.aborted
        lifetime.abort()
        seen["after"] = lifetime.aborted
        with pytest.raises(ClientDisconnected):
            await out.send(b"nope")
        with pytest.raises(ClientDisconnected):
            await out.complete(b"nope")
        seen["done"] = True

    with trio.fail_after(TIMEOUT):
        async with run_server(app, asgi=False) as srv:
            # pipelined: the second request must not be answered on an aborted connection
            data = await raw_exchange(srv.port, get(b"/abort", close=False) + get(b"/ok"))
            assert data == b""
            _, body = one_response(await raw_exchange(srv.port, get(b"/ok")))
            assert body == b"ok"  # the server keeps serving
    assert seen == {"before": False, "after": True, "done": True}


async def test_abort_after_start_truncates() -> None:
    async def app(ctx: RequestContext) -> None:
        resp = ctx.features[ResponseFeature]
        out = ctx.features[ResponseBodyFeature]
        resp.headers.append((b"content-length", b"100"))
        await out.send(b"0123456789")
        ctx.features[RequestLifetimeFeature].abort()

    with trio.fail_after(TIMEOUT):
        async with run_server(app, asgi=False) as srv:
            data = await raw_exchange(srv.port, get(b"/", close=False))
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert body == b"0123456789"
    assert_incomplete(data)  # an HTTP client reading this must fail


async def test_wait_done_returns_on_disconnect_and_on_completion() -> None:
    waiting = trio.Event()
    results: dict[str, Any] = {}
    finished = trio.Event()

    async def app(ctx: RequestContext) -> None:
        lifetime = ctx.features[RequestLifetimeFeature]
        body = ctx.features[RequestBodyFeature]
        path = ctx.features[RequestFeature].path
        if path == "/early":
            with pytest.raises(FeatureStateError):
                await lifetime.wait_done()  # the body was not read yet
            await read_all(body)
            await text(ctx, "ok")
            with trio.fail_after(1):
                await lifetime.wait_done()  # the response is complete: returns at once
            results["after-complete-aborted"] = lifetime.aborted
            return
        await read_all(body)
        waiting.set()
        await lifetime.wait_done()
        results["aborted"] = lifetime.aborted
        results["at"] = trio.current_time()
        finished.set()

    with trio.fail_after(TIMEOUT):
        async with run_server(app, asgi=False) as srv:
            _, body = one_response(await raw_exchange(srv.port, post(b"/early", b"abc")))
            assert body == b"ok"
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            await stream.send_all(post(b"/wait", b"hello"))
            await waiting.wait()
            await trio.sleep(0.1)
            assert not finished.is_set()
            closed_at = trio.current_time()
            await stream.aclose()
            with trio.fail_after(1):
                await finished.wait()
    assert results["aborted"] is True
    assert results["at"] - closed_at < 1
    assert results["after-complete-aborted"] is False
