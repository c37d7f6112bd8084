"""The WSGI bridge (PEP 3333) end to end over real loopback sockets: environ, streaming
``wsgi.input``, streamed responses, ``write()``, ``close()``, ``exc_info``, application errors,
``wsgi.file_wrapper`` (``sendfile``), the worker-thread bound, and the server's memory while a
WSGI app reads a 200 MiB upload.

Every well-behaved test app is wrapped in ``wsgiref.validate.validator`` and every test checks
that the run produced no warnings and no unraisable exceptions (the validator complains about an
unclosed iterable from ``__del__``). The validator turns its own findings into AssertionErrors
inside the app, which the server answers with 500, so the tests check status codes too.

Apps are *not* validated in three places, each said where it happens: apps that break PEP 3333
on purpose (the validator would catch the fault itself and the bridge's own handling would go
untested), ``read()`` without a size (PEP 3333 allows it; the validator does not, so those apps
read from the validator's ``.input``, the bridge's own object), and ``wsgi.file_wrapper``'s
``sendfile`` path (the validator hides the ``FileWrapper`` behind its own iterator).
"""

from __future__ import annotations

import gc
import hashlib
import io
import json
import logging
import os
import sys
import threading
import time
import warnings
import wsgiref.util
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from wsgiref.validate import validator

import h11
import httpx
import pytest
import trio
from conftest import (
    RunningServer,
    make_config,
    parse_responses,
    raw_exchange,
    read_until_closed,
    run_server,
)
from procs import module_command, server_process
from trioserve.bridges.wsgi import FileWrapper, WSGIBridge

TIMEOUT = 20
MiB = 1024 * 1024

Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], None]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

TEXT = [("Content-Type", "text/plain")]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def no_warnings_or_unraisables(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail the test if anything warned (the validator's WSGIWarning above all; the filter
    list is process-wide, so warnings from the worker threads are recorded too) or an
    exception was raised where nobody could see it (the validator's ``__del__`` asserting that
    the iterable was closed)."""
    unraisables: list[str] = []

    def hook(info: Any) -> None:
        unraisables.append(f"{info.exc_type.__name__}: {info.exc_value} ({info.object!r})")

    gc.collect()  # what earlier tests left for the collector is not this test's doing
    monkeypatch.setattr(sys, "unraisablehook", hook)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
        gc.collect()
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
    assert unraisables == []


@asynccontextmanager
async def wsgi_server(app: WSGIApp, *, validate: bool = True, threads: int = 40,
                      **config: Any) -> AsyncIterator[RunningServer]:
    """Serve ``app`` (wrapped in the validator unless told otherwise) on 127.0.0.1 port 0."""
    config.setdefault("timeouts", {"graceful": 5})
    wrapped = validator(app) if validate else app
    async with run_server(WSGIBridge(wrapped, threads=threads), make_config(**config),
                          asgi=False) as srv:
        yield srv


def client_for(srv: RunningServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=srv.url, timeout=TIMEOUT)


async def wait_thread_event(event: threading.Event, timeout: float) -> bool:  # noqa: ASYNC109
    """Wait for an event set by an application thread without blocking the Trio loop."""
    return await trio.to_thread.run_sync(event.wait, timeout)


async def get_ok(srv: RunningServer, path: str = "/") -> None:
    """The server still serves: a fresh connection gets 200."""
    async with client_for(srv) as client:
        r = await client.get(path)
        assert r.status_code == 200


def request(method: str, target: str, headers: list[tuple[str, str]] | None = None,
            body: bytes = b"", *, version: str = "1.1") -> bytes:
    lines = [f"{method} {target} HTTP/{version}", "Host: test"]
    lines += [f"{n}: {v}" for n, v in headers or []]
    if body and not any(n.lower() in ("content-length", "transfer-encoding")
                        for n, _ in headers or []):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(body: bytes, size: int) -> bytes:
    out = [b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size])
           for i in range(0, len(body), size)]
    return b"".join(out) + b"0\r\n\r\n"


def complete_responses(data: bytes) -> list[tuple[int, bytes]]:
    """``(status, body)`` of each complete response in ``data`` (all GETs), however the
    connection ended after them: a cut-short response, or a close where another response
    could have followed, ends the list."""
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(data)
    conn.receive_data(b"")
    out: list[tuple[int, bytes]] = []
    while True:
        conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
        conn.send(h11.EndOfMessage())
        status, body = 0, b""
        try:
            while True:
                ev = conn.next_event()
                if isinstance(ev, h11.Response):
                    status = ev.status_code
                elif isinstance(ev, h11.Data):
                    body += ev.data
                elif isinstance(ev, h11.EndOfMessage):
                    break
                elif ev is h11.NEED_DATA or isinstance(ev, h11.ConnectionClosed):
                    return out
        except h11.RemoteProtocolError:
            return out
        out.append((status, body))
        if conn.their_state is h11.MUST_CLOSE:
            return out
        conn.start_next_cycle()


def assert_no_complete_response(data: bytes) -> None:
    assert complete_responses(data) == []


def hello_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", TEXT)
    return [b"hello"]


# ---------------------------------------------------------------------------- environ


def environ_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Return the CGI variables and the wsgi.* values, as JSON."""
    out: dict[str, Any] = {k: v for k, v in environ.items() if "." not in k}
    out["body"] = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)).decode()
    out["wsgi"] = {
        "version": list(environ["wsgi.version"]),
        "url_scheme": environ["wsgi.url_scheme"],
        "multithread": environ["wsgi.multithread"],
        "multiprocess": environ["wsgi.multiprocess"],
        "run_once": environ["wsgi.run_once"],
        "input_terminated": environ["wsgi.input_terminated"],
        "file_wrapper_is_bridge_class": environ["wsgi.file_wrapper"] is FileWrapper,
    }
    environ["wsgi.errors"].write("a line for the error log\n")
    environ["wsgi.errors"].flush()
    body = json.dumps(out).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


async def exchange_with_ports(port: int, data: bytes) -> tuple[bytes, int]:
    """Send ``data`` on a new connection; return what came back and our local port."""
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        local_port = stream.socket.getsockname()[1]
        async with stream:
            await stream.send_all(data)
            chunks = []
            while chunk := await stream.receive_some(65536):
                chunks.append(chunk)
        return b"".join(chunks), local_port


async def test_environ_is_exact(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trioserve.wsgi")
    raw = request("POST", "/caf%C3%A9/a%2Fb?x=1&y=%C3%A9&z", [
        ("Connection", "close"),
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Accept", "text/html"),
        ("X_Forwarded_For", "6.6.6.6"),  # sent first: must not become HTTP_X_FORWARDED_FOR
        ("X-Forwarded-For", "1.2.3.4"),
        ("Accept", "application/json"),
        ("Cookie", "a=1"),
        ("Cookie", "b=2"),
        ("X-Custom-Thing", "  spaced value"),
    ], b"hello")
    with trio.fail_after(TIMEOUT):
        async with wsgi_server(environ_app, root_path="/mount") as srv:
            data, client_port = await exchange_with_ports(srv.port, raw)
    [(resp, body)] = parse_responses(data)
    assert resp.status_code == 200
    env = json.loads(body)
    assert env == {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "/mount",
        "PATH_INFO": "/caf\u00c3\u00a9/a/b",  # percent-decoded bytes as latin-1 ("café")
        "QUERY_STRING": "x=1&y=%C3%A9&z",  # as sent
        "CONTENT_TYPE": "text/plain; charset=utf-8",
        "CONTENT_LENGTH": "5",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": str(srv.port),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": str(client_port),
        "HTTP_HOST": "test",
        "HTTP_CONNECTION": "close",
        "HTTP_ACCEPT": "text/html, application/json",
        "HTTP_X_FORWARDED_FOR": "1.2.3.4",
        "HTTP_COOKIE": "a=1; b=2",
        "HTTP_X_CUSTOM_THING": "spaced value",
        "body": "hello",
        "wsgi": {"version": [1, 0], "url_scheme": "http", "multithread": True,
                 "multiprocess": False, "run_once": False, "input_terminated": True,
                 "file_wrapper_is_bridge_class": True},
    }
    assert "a line for the error log" in [r.getMessage() for r in caplog.records
                                          if r.name == "trioserve.wsgi"]


async def test_script_name_is_bytes_as_latin1_like_path_info() -> None:
    """PEP 3333: a non-ASCII root path reaches the app as its UTF-8 bytes as latin-1, as
    PATH_INFO does, so that frameworks' ``.encode("latin-1")`` round trip works (wsgiref's
    request_uri here) and both decode the same way."""
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        body = json.dumps({"SCRIPT_NAME": environ["SCRIPT_NAME"],
                           "PATH_INFO": environ["PATH_INFO"],
                           "uri": wsgiref.util.request_uri(environ)}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    with trio.fail_after(TIMEOUT):
        async with wsgi_server(app, root_path="/caf\u00e9/\u20ac 100%") as srv:
            data = await raw_exchange(srv.port, request("GET", "/caf%C3%A9",
                                                        [("Connection", "close")]))
    [(resp, body)] = parse_responses(data)
    assert resp.status_code == 200, body
    env = json.loads(body)
    assert env["SCRIPT_NAME"] == "/caf\u00c3\u00a9/\u00e2\u0082\u00ac 100%"
    assert env["PATH_INFO"] == "/caf\u00c3\u00a9"
    assert env["SCRIPT_NAME"].encode("latin-1").decode("utf-8") == "/caf\u00e9/\u20ac 100%"
    assert env["uri"] == "http://test/caf%C3%A9/%E2%82%AC%20100%25/caf%C3%A9"


async def test_environ_underscore_header_alone_is_dropped_and_http10() -> None:
    raw = request("GET", "/", [("X_Forwarded_For", "6.6.6.6"), ("X_Other", "1")],
                  version="1.0")
    with trio.fail_after(TIMEOUT):
        async with wsgi_server(environ_app) as srv:
            data = await raw_exchange(srv.port, raw)
    [(resp, body)] = parse_responses(data)
    assert resp.status_code == 200
    env = json.loads(body)
    assert env["SERVER_PROTOCOL"] == "HTTP/1.0"
    assert env["SCRIPT_NAME"] == ""
    assert env["PATH_INFO"] == "/"
    assert env["QUERY_STRING"] == ""
    assert "CONTENT_TYPE" not in env and "CONTENT_LENGTH" not in env
    assert sorted(k for k in env if k.startswith("HTTP_")) == ["HTTP_HOST"]


# ------------------------------------------------------------------------- wsgi.input

BODY = (b"alpha\nbeta beta beta beta\n\n" + b"x" * 150 + b"\ngamma\r\n\xff\x00binary\n"
        b"last line without newline")


def _read_n(s: Any) -> list[bytes]:
    out = []
    while piece := s.read(7):
        out.append(piece)
    return out


def _readlines_until_empty(s: Any, *args: int) -> list[bytes]:
    out = []
    while line := s.readline(*args):
        out.append(line)
    return out


def _mixed(s: Any) -> list[bytes]:
    return [s.read(3), s.readline(), s.read(0), s.read(5), s.readline(4), s.readline(),
            *s.readlines(), s.read(10), s.readline()]


# name -> (uses the validator's wrapper?, operation). read() without a size is legal in
# PEP 3333 but the validator refuses it, so that one goes to the bridge's object directly.
INPUT_OPS: dict[str, tuple[bool, Callable[[Any], list[bytes]]]] = {
    "read": (False, lambda s: [s.read()]),
    "read_none": (False, lambda s: [s.read(None)]),
    "read_n": (True, _read_n),
    "read_big": (True, lambda s: [s.read(10 * len(BODY)), s.read(10)]),
    "readline": (True, _readlines_until_empty),
    "readline_n": (True, lambda s: _readlines_until_empty(s, 4)),
    "readlines": (True, lambda s: s.readlines()),
    "readlines_hint": (True, lambda s: [*s.readlines(8), b"|", *s.readlines(30), b"|",
                                        *s.readlines()]),
    "iterate": (True, lambda s: list(s)),
    "iterate_bridge": (False, lambda s: list(s)),
    "mixed": (True, _mixed),
}


def input_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    wrapped = environ["wsgi.input"]
    uses_validator, op = INPUT_OPS[environ["QUERY_STRING"]]
    pieces = op(wrapped if uses_validator else wrapped.input)
    body = json.dumps([p.decode("latin-1") for p in pieces]).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_wsgi_input_methods(framing: str) -> None:
    async def body() -> AsyncIterator[bytes]:  # small chunks: lines cross piece boundaries
        for i in range(0, len(BODY), 5):
            yield BODY[i:i + 5]

    with trio.fail_after(TIMEOUT):
        async with wsgi_server(input_app) as srv, client_for(srv) as client:
            for name, (_, op) in INPUT_OPS.items():
                content: Any = BODY if framing == "content-length" else body()
                r = await client.post(f"/?{name}", content=content)
                assert r.status_code == 200, name
                got = [p.encode("latin-1") for p in r.json()]
                assert got == op(io.BytesIO(BODY)), name  # same as a file would give


def hashing_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    digest = hashlib.sha256()
    size = 0
    while piece := environ["wsgi.input"].read(65536):
        assert len(piece) <= 65536
        digest.update(piece)
        size += len(piece)
    start_response("200 OK", TEXT)
    return [f"{size} {digest.hexdigest()}".encode()]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_wsgi_input_large_body(framing: str) -> None:
    payload = os.urandom(3 * MiB + 12345)
    headers = [("Connection", "close")]
    if framing == "chunked":
        headers.append(("Transfer-Encoding", "chunked"))
    raw = request("POST", "/", headers,
                  chunked(payload, 100_000) if framing == "chunked" else payload)
    with trio.fail_after(TIMEOUT):
        async with wsgi_server(hashing_app) as srv:
            data = await raw_exchange(srv.port, raw)
    [(resp, body)] = parse_responses(data)
    assert resp.status_code == 200
    assert body.decode() == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_body_over_limit_gets_413(framing: str) -> None:
    seen: list[str] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ["REQUEST_METHOD"] == "GET":
            return hello_app(environ, start_response)
        try:
            while environ["wsgi.input"].read(1024):
                pass
        except OSError as exc:
            seen.append(type(exc).__name__)
            raise
        start_response("200 OK", TEXT)
        return [b"read it all"]

    payload = b"z" * 5000
    raw = request("POST", "/", [("Transfer-Encoding", "chunked")] if framing == "chunked"
                  else [], chunked(payload, 700) if framing == "chunked" else payload)
    with trio.fail_after(TIMEOUT):
        async with wsgi_server(app, limits={"max_request_body_size": 1000}) as srv:
            data = await raw_exchange(srv.port, raw)
            [(resp, _)] = parse_responses(data)
            assert resp.status_code == 413
            assert seen == ["ClientDisconnected"]  # the app's read raised an OSError
            # within the limit it works, and the server keeps serving
            [(resp, body)] = parse_responses(await raw_exchange(
                srv.port, request("POST", "/", [("Connection", "close")], b"z" * 1000)))
            assert (resp.status_code, body) == (200, b"read it all")


# --------------------------------------------------------------------------- responses


async def test_generator_response_streams_incrementally() -> None:
    proceed = threading.Event()

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", TEXT)
        yield b""  # empty chunks send nothing, not even the headers
        yield b"first\n"
        if not proceed.wait(TIMEOUT):  # the client sets it once it has seen "first"
            raise RuntimeError("the client never saw the first chunk")
        yield b"second\n"
        yield b"third\n"

    with trio.fail_after(TIMEOUT):
        async with wsgi_server(app) as srv, client_for(srv) as client:
            async with client.stream("GET", "/") as r:
                assert r.status_code == 200
                assert r.headers["transfer-encoding"] == "chunked"
                chunks = r.aiter_raw()
                with trio.fail_after(5):
                    first = await chunks.__anext__()
                assert first == b"first\n"
                assert not proceed.is_set()
                proceed.set()
                rest = b"".join([c async for c in chunks])
            assert rest == b"second\nthird\n"


async def test_write_callable_sends_at_once() -> None:
    proceed = threading.Event()

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        write = start_response("200 OK", TEXT)
        write(b"written ")
        if not proceed.wait(TIMEOUT):
            raise RuntimeError("the client never saw the written bytes")
        write(b"")
        write(b"twice, ")
        return [b"then ", b"returned"]

    with trio.fail_after(TIMEOUT):
        async with wsgi_server(app) as srv, client_for(srv) as client:
            async with client.stream("GET", "/") as r:
                assert r.status_code == 200
                chunks = r.aiter_raw()
                with trio.fail_after(5):
                    first = await chunks.__anext__()
                assert first == b"written "
                proceed.set()
                rest = b"".join([c async for c in chunks])
            assert rest == b"twice, then returned"


@pytest.mark.parametrize("validate", [True, False], ids=["validated", "plain"])
async def test_list_response_and_keep_alive(validate: bool) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("201 Created", TEXT)
        return (b"a", b"", b"bc")

    raw = request("GET", "/") + request("GET", "/", [("Connection", "close")])
    with trio.fail_after(TIMEOUT):
        async with wsgi_server(app, validate=validate) as srv:
            responses = parse_responses(await raw_exchange(srv.port, raw))
    assert [(r.status_code, r.reason, b) for r, b in responses] == [(201, b"Created", b"abc")] * 2
    if not validate:  # the validator hides the tuple behind an iterator
        assert (b"content-length", b"3") in responses[0][0].headers


async def test_unread_body_is_drained_and_connection_reused() -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", TEXT)
        return [environ["REQUEST_METHOD"].encode()]  # never reads wsgi.input

    raw = (request("POST", "/", [], b"ignored body " * 100)
           + request("POST", "/", [("Transfer-Encoding", "chunked")],
                     chunked(b"ignored too " * 100, 50))
           + request("GET", "/", [("Connection", "close")]))
    with trio.fail_after(TIMEOUT):
        async with wsgi_server(app) as srv:
            data = await raw_exchange(srv.port, raw)
    assert complete_responses(data) == [(200, b"POST"), (200, b"POST"), (200, b"GET")]


async def test_expect_100_continue_answered_on_first_read() -> None:
    with trio.fail_after(TIMEOUT):
        async with wsgi_server(hashing_app) as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            async with stream:
                await stream.send_all(request("POST", "/", [
                    ("Content-Length", "5"), ("Expect", "100-continue"),
                    ("Connection", "close")]))
                interim = b""
                while b"\r\n\r\n" not in interim:
                    interim += await stream.receive_some(65536)
                assert interim.startswith(b"HTTP/1.1 100 Continue\r\n")
                await stream.send_all(b"12345")
                rest = b""
                while chunk := await stream.receive_some(65536):
                    rest += chunk
    interim, _, final = interim.partition(b"\r\n\r\n")
    assert complete_responses(final + rest) == [
        (200, f"5 {hashlib.sha256(b'12345').hexdigest()}".encode())]


async def test_client_disconnect_while_app_reads_body() -> None:
    errors: list[BaseException] = []
    done = threading.Event()

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ["REQUEST_METHOD"] == "GET":
            return hello_app(environ, start_response)
        try:
            while environ["wsgi.input"].read(1024):
                pass
        except OSError as exc:
            errors.append(exc)
            raise
        finally:
            done.set()
        start_response("200 OK", TEXT)
        return [b"unexpected"]

    with trio.fail_after(TIMEOUT):
        async with wsgi_server(app) as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            async with stream:
                await stream.send_all(request("POST", "/", [("Content-Length", "100000")])
                                      + b"only a part")
                await trio.sleep(0.1)  # the app is now waiting for more
            assert await wait_thread_event(done, 5)
            assert len(errors) == 1  # the read raised an OSError (ClientDisconnected)
            await get_ok(srv)


async def test_blocked_app_threads_do_not_block_the_loop() -> None:
    release = threading.Event()
    blocked = threading.Event()

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/block":
            blocked.set()
            if not release.wait(TIMEOUT):
                raise RuntimeError("never released")
        start_response("200 OK", TEXT)
        return [environ["PATH_INFO"].encode()]

    with trio.fail_after(TIMEOUT):
        async with wsgi_server(app) as srv, client_for(srv) as client:
            async with trio.open_nursery() as nursery:
                async def blocked_request() -> None:
                    r = await client.get("/block")
                    assert r.content == b"/block"

                nursery.start_soon(blocked_request)
                assert await wait_thread_event(blocked, 5)
                with trio.fail_after(5):
                    for i in range(5):  # served while /block holds a worker thread
                        r = await client.get(f"/free{i}")
                        assert (r.status_code, r.content) == (200, f"/free{i}".encode())
                release.set()


async def test_graceful_shutdown_abandons_a_blocked_app_thread() -> None:
    """After the graceful deadline the request task is cancelled; the thread cannot be: its
    next write raises (ClientDisconnected), which ends the iteration, and close() is called."""
    release = threading.Event()
    tracked: list[Tracked] = []

    def gen() -> Iterator[bytes]:
        yield b"before"
        release.wait(TIMEOUT)
        yield b"after"
        yield b"never"

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", TEXT)
        t = Tracked(gen())
        tracked.append(t)
        return t

    with trio.fail_after(TIMEOUT):
        async with wsgi_server(app, timeouts={"graceful": 0.3}) as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            await stream.send_all(request("GET", "/"))
            received = b""
            while b"before" not in received:
                received += await stream.receive_some(65536)
            started = trio.current_time()
        # the server stopped without waiting for the blocked thread
        assert trio.current_time() - started < 5
        with trio.move_on_after(5):
            try:
                while chunk := await stream.receive_some(65536):
                    received += chunk
            except trio.BrokenResourceError:
                pass
        await stream.aclose()
        assert complete_responses(received) == []
        release.set()
        assert await wait_thread_event(tracked[0].closed, 5)
        assert tracked[0].yielded == 2  # "after" was yielded; its write raised; no more


class Tracked:
    """A response iterable with ``close()``; records what happened in the app thread."""

    def __init__(self, gen: Iterator[bytes]) -> None:
        self.gen = gen
        self.closed = threading.Event()
        self.close_calls = 0
        self.yielded = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.gen:
            self.yielded += 1
            yield chunk

    def close(self) -> None:
        self.close_calls += 1
        close = getattr(self.gen, "close", None)
        if close is not None:
            close()
        self.closed.set()


async def test_close_called_after_normal_end() -> None:
    tracked: list[Tracked] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", TEXT)
        t = Tracked(iter([b"one ", b"two"]))
        tracked.append(t)
        return t

    with trio.fail_after(TIMEOUT):
        async with wsgi_server(app) as srv, client_for(srv) as client:
            r = await client.get("/")
            assert (r.status_code, r.content) == (200, b"one two")
            assert await wait_thread_event(tracked[0].closed, 5)
    assert tracked[0].close_calls == 1


async def test_close_called_when_app_fails_mid_iteration(
        caplog: pytest.LogCaptureFixture) -> None:
    tracked: list[Tracked] = []

    def gen() -> Iterator[bytes]:
        yield b"partial "
        raise RuntimeError("boom in the middle")

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/ok":
            return hello_app(environ, start_response)
        start_response("200 OK", TEXT)
        t = Tracked(gen())
        tracked.append(t)
        return t

    with trio.fail_after(TIMEOUT):
        async with wsgi_server(app) as srv:
            data = await raw_exchange(srv.port, request("GET", "/"))
            # the head and the first chunk went out; the response was then cut short
            assert data.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"partial " in data
            assert_no_complete_response(data)  # never a complete-looking response
            assert await wait_thread_event(tracked[0].closed, 5)
            await get_ok(srv, "/ok")
    assert tracked[0].close_calls == 1
    assert any("boom in the middle" in str(r.exc_info[1]) for r in caplog.records
               if r.exc_info)


async def test_client_disconnect_stops_iteration_and_closes() -> None:
    tracked: list[Tracked] = []

    def ticks() -> Iterator[bytes]:
        for i in range(500):  # a bound, so a broken bridge cannot keep a thread forever
            yield b"tick %d\n" % i
            time.sleep(0.02)

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/ok":
            return hello_app(environ, start_response)
        start_response("200 OK", TEXT)
        t = Tracked(ticks())
        tracked.append(t)
        return t

    with trio.fail_after(TIMEOUT):
        async with wsgi_server(app) as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            async with stream:
                await stream.send_all(request("GET", "/"))
                received = b""
                while received.count(b"tick") < 3:
                    received += await stream.receive_some(65536)
            # the client is gone: iteration must stop soon, and close() be called
            assert await wait_thread_event(tracked[0].closed, 3)
            count = tracked[0].yielded
            await trio.sleep(0.3)
            assert tracked[0].yielded == count < 100
            assert tracked[0].close_calls == 1
            await get_ok(srv, "/ok")


async def test_exc_info_before_headers_sent_replaces_the_response() -> None:
    def gen(start_response: StartResponse) -> Iterator[bytes]:
        yield b""  # nothing sent yet
        try:
            raise ValueError("rendering failed")
        except ValueError:
            start_response("500 Internal Server Error", [("Content-Type", "text/html")],
                           sys.exc_info())
        yield b"<h1>sorry</h1>"

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [*TEXT, ("X-First", "yes")])
        return gen(start_response)

    with trio.fail_after(TIMEOUT):
        async with wsgi_server(app) as srv, client_for(srv) as client:
            r = await client.get("/")
    assert (r.status_code, r.content) == (500, b"<h1>sorry</h1>")
    assert r.headers["content-type"] == "text/html"
    assert "x-first" not in r.headers


async def test_exc_info_after_headers_sent_reraises_and_cuts_the_response(
        caplog: pytest.LogCaptureFixture) -> None:
    reraised: list[BaseException] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/ok":
            return hello_app(environ, start_response)
        write = start_response("200 OK", TEXT)
        write(b"already sent")
        try:
            raise ValueError("too late to change the status")
        except ValueError:
            try:
                start_response("500 Internal Server Error", TEXT, sys.exc_info())
            except ValueError as exc:  # PEP 3333: the original exception, re-raised
                reraised.append(exc)
                raise
        return [b"never"]

    with trio.fail_after(TIMEOUT):
        async with wsgi_server(app) as srv:
            data = await raw_exchange(srv.port, request("GET", "/"))
            assert data.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"already sent" in data
            assert b"never" not in data
            assert_no_complete_response(data)  # truncated: no final chunk
            await get_ok(srv, "/ok")
    assert [str(e) for e in reraised] == ["too late to change the status"]
    assert any("too late to change the status" in str(r.exc_info[1])
               for r in caplog.records if r.exc_info)


@pytest.mark.parametrize("where", ["call", "generator"])
async def test_app_raising_before_start_response_gives_500(
        where: str, caplog: pytest.LogCaptureFixture) -> None:
    def failing_gen(start_response: StartResponse) -> Iterator[bytes]:
        raise KeyError("missing thing")
        start_response("200 OK", TEXT)  # pragma: no cover
        yield b""  # pragma: no cover

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/ok":
            return hello_app(environ, start_response)
        if where == "call":
            raise KeyError("missing thing")
        return failing_gen(start_response)

    with trio.fail_after(TIMEOUT):
        async with wsgi_server(app) as srv:
            for _ in range(2):
                [(resp, _)] = parse_responses(await raw_exchange(srv.port,
                                                                 request("GET", "/")))
                assert resp.status_code == 500
                await get_ok(srv, "/ok")  # the server keeps serving
    tracebacks = [r for r in caplog.records if r.exc_info and "missing thing" in
                  str(r.exc_info[1])]
    assert len(tracebacks) == 2


# Not validated: the validator would catch these faults itself (as AssertionErrors), and the
# point is the bridge's own handling.

def _no_start_list(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    return [b"body without a status"]


def _no_start_empty(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    return []


def _no_start_gen(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    yield b"body without a status"


def _no_start_empty_gen(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    yield from ()


def _start_twice(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", TEXT)
    start_response("404 Not Found", TEXT)  # without exc_info: an error
    return [b"body without a status"]


@pytest.mark.parametrize("app", [_no_start_list, _no_start_empty, _no_start_gen,
                                 _no_start_empty_gen, _start_twice],
                         ids=lambda f: f.__name__[1:])
async def test_start_response_never_called_or_twice_gives_500(app: WSGIApp) -> None:
    with trio.fail_after(TIMEOUT):
        async with wsgi_server(app, validate=False) as srv:
            [(resp, body)] = parse_responses(await raw_exchange(srv.port, request("GET", "/")))
    assert resp.status_code == 500
    assert b"body without a status" not in body


def _str_in_list(environ: Environ, start_response: StartResponse) -> Iterable[Any]:
    start_response("200 OK", TEXT)
    return ["text, not bytes"]


def _bytearray_in_tuple(environ: Environ, start_response: StartResponse) -> Iterable[Any]:
    start_response("200 OK", TEXT)
    return (bytearray(b"not bytes either"),)


def _str_in_gen(environ: Environ, start_response: StartResponse) -> Iterable[Any]:
    start_response("200 OK", TEXT)
    yield "text, not bytes"


def _str_to_write(environ: Environ, start_response: StartResponse) -> Iterable[Any]:
    start_response("200 OK", TEXT)("text, not bytes")
    return []


@pytest.mark.parametrize("app", [_str_in_list, _bytearray_in_tuple, _str_in_gen,
                                 _str_to_write], ids=lambda f: f.__name__[1:])
async def test_non_bytes_chunk_before_anything_sent_gives_500(app: WSGIApp) -> None:
    with trio.fail_after(TIMEOUT):
        async with wsgi_server(app, validate=False) as srv:
            [(resp, body)] = parse_responses(await raw_exchange(srv.port, request("GET", "/")))
            assert resp.status_code == 500
            assert b"not bytes" not in body
            [(resp, _)] = parse_responses(await raw_exchange(srv.port, request("GET", "/")))
            assert resp.status_code == 500


async def test_non_bytes_chunk_after_data_sent_cuts_the_response() -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[Any]:
        start_response("200 OK", TEXT)
        yield b"fine so far"
        yield "then text"

    with trio.fail_after(TIMEOUT):
        async with wsgi_server(app, validate=False) as srv:
            data = await raw_exchange(srv.port, request("GET", "/"))
    assert b"fine so far" in data
    assert b"then text" not in data
    assert_no_complete_response(data)


def _too_long_list(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [*TEXT, ("Content-Length", "8")])
    return [b"hello", b" world"]


def _too_long_gen(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [*TEXT, ("Content-Length", "8")])
    yield b"hello"
    yield b" world"


def _too_long_write(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    write = start_response("200 OK", [*TEXT, ("Content-Length", "8")])
    write(b"hello")
    write(b" world")
    return []


@pytest.mark.parametrize("validate", [True, False], ids=["validated", "plain"])
@pytest.mark.parametrize("app", [_too_long_list, _too_long_gen, _too_long_write],
                         ids=lambda f: f.__name__[10:])
async def test_more_bytes_than_content_length_closes_the_connection(
        app: WSGIApp, validate: bool, caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(TIMEOUT):
        async with wsgi_server(app, validate=validate) as srv:
            # keep-alive asked for, and a second request pipelined: it must not be answered
            data = await raw_exchange(srv.port, request("GET", "/") + request("GET", "/"))
    assert b" world" not in data
    assert_no_complete_response(data)  # the client never sees a complete response
    assert any("Content-Length" in r.getMessage() or
               (r.exc_info and "Content-Length" in str(r.exc_info[1]))
               for r in caplog.records)


async def test_exactly_content_length_then_more_sends_no_extra_bytes() -> None:
    """PEP 3333: the server must not send more than the declared Content-Length. The first
    chunk fills it exactly, so that response is whole; the connection then closes."""
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [*TEXT, ("Content-Length", "5")])
        yield b"hello"
        yield b" world"

    with trio.fail_after(TIMEOUT):
        async with wsgi_server(app) as srv:
            data = await raw_exchange(srv.port, request("GET", "/") + request("GET", "/"))
    assert b" world" not in data
    assert complete_responses(data) == [(200, b"hello")]


def _head_list(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", TEXT)
    return [b"body of ", environ["REQUEST_METHOD"].encode()]


def _head_gen(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", TEXT)
    yield b"body of "
    yield environ["REQUEST_METHOD"].encode()


def _head_write(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", TEXT)(b"body of ")
    return [environ["REQUEST_METHOD"].encode()]


@pytest.mark.parametrize("validate", [True, False], ids=["validated", "plain"])
@pytest.mark.parametrize("app", [_head_list, _head_gen, _head_write],
                         ids=lambda f: f.__name__[6:])
async def test_head_gets_no_body(app: WSGIApp, validate: bool) -> None:
    raw = request("HEAD", "/") + request("GET", "/", [("Connection", "close")])
    with trio.fail_after(TIMEOUT):
        async with wsgi_server(app, validate=validate) as srv:
            data = await raw_exchange(srv.port, raw)
    responses = parse_responses(data, [b"HEAD", b"GET"])
    assert [(r.status_code, b) for r, b in responses] == [(200, b""), (200, b"body of GET")]
    assert b"body of HEAD" not in data
    if app is _head_list and not validate:  # a list's length is known: HEAD says it
        assert (b"content-length", b"12") in responses[0][0].headers


# ------------------------------------------------------------------ wsgi.file_wrapper


class CountingFile(io.BufferedReader):
    """A real file that counts read() calls (none means the bytes went by sendfile) and notes
    the thread that closed it."""

    reads = 0
    closed_in: int | None = None

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        return super().read(size)

    def close(self) -> None:
        if self.closed_in is None:
            self.closed_in = threading.get_ident()
        super().close()


@pytest.fixture
def data_file(tmp_path: Path) -> tuple[Path, bytes]:
    content = os.urandom(MiB + 4321)
    path = tmp_path / "data.bin"
    path.write_bytes(content)
    return path, content


# (offset the app seeks to, Content-Length the app declares or None, expected slice). Behind
# the validator the file is iterated, so a Content-Length shorter than the file is an error
# there (more bytes than declared, tested above); the sendfile path sends at most that many.
FILE_CASES = [
    pytest.param(True, 0, None, slice(None), id="validated-whole"),
    pytest.param(True, 1000, None, slice(1000, None), id="validated-seeked"),
    pytest.param(False, 0, None, slice(None), id="sendfile-whole"),
    pytest.param(False, 1000, None, slice(1000, None), id="sendfile-seeked"),
    pytest.param(False, 0, 70_000, slice(0, 70_000), id="sendfile-short-content-length"),
    pytest.param(False, 5, 100, slice(5, 105), id="sendfile-seeked-short"),
]


@pytest.mark.parametrize(("validate", "offset", "length", "expected"), FILE_CASES)
async def test_file_wrapper_serves_the_right_bytes(
        data_file: tuple[Path, bytes], validate: bool, offset: int, length: int | None,
        expected: slice) -> None:
    path, content = data_file
    files: list[CountingFile] = []
    returned: list[type] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        f = CountingFile(io.FileIO(path, "rb"))
        files.append(f)
        f.seek(offset)
        headers = [("Content-Type", "application/octet-stream")]
        if length is not None:
            headers.append(("Content-Length", str(length)))
        start_response("200 OK", headers)
        result = environ["wsgi.file_wrapper"](f, 32 * 1024)
        returned.append(type(result))
        return result

    with trio.fail_after(TIMEOUT):
        async with wsgi_server(app, validate=validate) as srv, client_for(srv) as client:
            for _ in range(2):  # twice on one connection: the response ends cleanly
                r = await client.get("/")
                assert r.status_code == 200
                assert r.content == content[expected]
    assert returned == [FileWrapper, FileWrapper]
    assert all(f.closed for f in files)  # FileWrapper.close closed the file
    # close() is application code (Django sends request_finished from it and cleans up its
    # thread-local database connections): it runs in a worker thread, never on the Trio loop
    loop_thread = threading.get_ident()
    assert [f.closed_in is not None and f.closed_in != loop_thread for f in files] == [True] * 2
    if not validate:
        assert [f.reads for f in files] == [0, 0]  # sent with sendfile, never read


async def test_file_wrapper_on_a_non_file_is_iterated() -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", TEXT)
        return environ["wsgi.file_wrapper"](io.BytesIO(b"in memory " * 1000), 999)

    for validate in (True, False):
        with trio.fail_after(TIMEOUT):
            async with wsgi_server(app, validate=validate) as srv, client_for(srv) as client:
                r = await client.get("/")
                assert (r.status_code, r.content) == (200, b"in memory " * 1000)


async def test_file_wrapper_head_sends_no_body(data_file: tuple[Path, bytes]) -> None:
    path, content = data_file

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(len(content)))])
        return environ["wsgi.file_wrapper"](open(path, "rb"))

    raw = request("HEAD", "/") + request("GET", "/", [("Connection", "close")])
    for validate in (True, False):
        with trio.fail_after(TIMEOUT):
            async with wsgi_server(app, validate=validate) as srv:
                data = await raw_exchange(srv.port, raw)
        responses = parse_responses(data, [b"HEAD", b"GET"])
        assert [(r.status_code, b) for r, b in responses] == [(200, b""), (200, content)]


# ------------------------------------------------------------------------ thread pool


async def test_thread_pool_bounds_concurrent_app_calls() -> None:
    lock = threading.Lock()
    running = 0
    peak = 0
    calls = 0

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        nonlocal running, peak, calls
        with lock:
            running += 1
            calls += 1
            peak = max(peak, running)
        try:
            time.sleep(0.2)
        finally:
            with lock:
                running -= 1
        start_response("200 OK", TEXT)
        return [environ["PATH_INFO"].encode()]

    results: dict[int, bytes] = {}
    with trio.fail_after(TIMEOUT):
        async with wsgi_server(app, threads=2) as srv, client_for(srv) as client:
            async def one(i: int) -> None:
                r = await client.get(f"/{i}")
                assert r.status_code == 200
                results[i] = r.content

            started = trio.current_time()
            async with trio.open_nursery() as nursery:
                for i in range(6):
                    nursery.start_soon(one, i)
            elapsed = trio.current_time() - started
    assert results == {i: f"/{i}".encode() for i in range(6)}
    assert calls == 6
    assert peak == 2  # both threads were used, never more
    assert elapsed >= 0.55  # 6 calls of 0.2 s, two at a time: at least three rounds


# ---------------------------------------------------------------------- memory (slow)

MEMORY_APP = '''
import warnings
from wsgiref.validate import WSGIWarning, validator

warnings.simplefilter("error", WSGIWarning)


def count_body(environ, start_response):
    stream = environ["wsgi.input"]
    size = 0
    while True:
        piece = stream.read(64 * 1024)
        if not piece:
            break
        size += len(piece)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(size).encode()]


app = validator(count_body)
'''


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_200mib_upload_keeps_server_rss_growth_under_20mib(tmp_path: Path) -> None:
    (tmp_path / "memapp.py").write_text(MEMORY_APP)
    total = 200 * MiB
    piece = os.urandom(256 * 1024)

    def body() -> Iterator[bytes]:
        for _ in range(total // len(piece)):
            yield piece

    cmd = module_command("memapp:app", "--interface", "wsgi", "--port", "0", "--max-body-size",
                         "0", "--app-dir", str(tmp_path), "--no-access-log")
    with server_process(cmd, cwd=tmp_path) as sp, httpx.Client(timeout=60) as client:
        port = sp.wait_port()
        pid = sp.proc.pid
        url = f"http://127.0.0.1:{port}/"
        # warm up: imports, the worker thread, the connection
        r = client.post(url, content=b"x" * (4 * MiB))
        assert (r.status_code, r.text) == (200, str(4 * MiB))
        try:  # reset the peak to the current RSS (Linux 4.0+), so only the upload counts
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            pass
        before = _status_kib(pid, "VmRSS")
        started = time.monotonic()
        r = client.post(url, content=body())
        elapsed = time.monotonic() - started
        assert (r.status_code, r.text) == (200, str(total))
        peak = _status_kib(pid, "VmHWM")
    growth_mib = (peak - before) / 1024
    print(f"200 MiB upload in {elapsed:.1f}s, server peak RSS growth {growth_mib:.1f} MiB")
    assert growth_mib < 20


# ------------------------------------------------------------- worker pool under load
#
# The pool hands jobs to threads at the loop's I/O waits and adds a thread when the queue makes
# no progress for a tick (an application blocked in I/O) or when a thread blocks on the loop (a
# body read, a streamed write). These tests check what that must never cost: a blocked
# application holding up others, results delivered to the wrong request, uploads stalling, or
# a pool that only works in the first ``trio.run``.


async def test_app_blocked_in_io_does_not_hold_up_a_fast_request() -> None:
    """With two threads, a request whose application sleeps is no reason for another request,
    on another connection, to wait: the queue stalls for a tick and the second thread takes it.
    Twice: first with no thread started yet, then with both threads idle."""
    entered = threading.Event()
    slept = threading.Event()

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/slow":
            entered.set()
            time.sleep(0.3)  # blocking I/O, as far as the pool can tell
            slept.set()
        start_response("200 OK", TEXT)
        return [environ["PATH_INFO"].encode()]

    with trio.fail_after(TIMEOUT):
        async with wsgi_server(app, threads=2) as srv, \
                client_for(srv) as slow_client, client_for(srv) as fast_client:
            order: list[str] = []
            for _ in range(2):
                entered.clear()
                slept.clear()
                order.clear()

                async def get(client: httpx.AsyncClient, path: str) -> float:
                    started = trio.current_time()
                    r = await client.get(path)
                    assert (r.status_code, r.content) == (200, path.encode())
                    order.append(path)
                    return trio.current_time() - started

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(get, slow_client, "/slow")
                    assert await wait_thread_event(entered, 5)
                    fast = await get(fast_client, "/fast")
                    assert not slept.is_set(), "/fast waited for /slow's thread"
                assert order == ["/fast", "/slow"]
                assert fast < 0.25  # well before /slow's 0.3 s sleep could be over


def mixed_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Answers ``/<n>`` in one of four ways by ``n % 4``: a list, a generator of several
    chunks, ``write()`` then a list, or an echo of the request body (a POST)."""
    n = int(environ["PATH_INFO"][1:])
    headers = [("Content-Type", "text/plain"), ("X-Request", str(n))]
    kind = n % 4
    if kind == 3:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        start_response("200 OK", headers)
        return [b"echo %d: %s" % (n, body)]
    write = start_response("200 OK", headers)
    if kind == 0:
        return [b"list %d" % n]
    if kind == 1:
        return (b"gen %d.%d;" % (n, i) for i in range(3))
    write(b"write %d;" % n)
    return [b"then list %d" % n]


def mixed_expected(n: int) -> bytes:
    return [b"list %d" % n, b"gen %d.0;gen %d.1;gen %d.2;" % (n, n, n),
            b"write %d;then list %d" % (n, n), b"echo %d: body of %d" % (n, n)][n % 4]


@pytest.mark.parametrize("threads", [1, 4, 40])
async def test_many_concurrent_requests_get_their_own_responses(threads: int) -> None:
    """Fifty requests at once over eight connections: jobs are handed out and collected in
    batches, and every response still belongs to its request."""
    count = 50
    got: dict[int, tuple[int, str, bytes]] = {}
    limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
    with trio.fail_after(TIMEOUT):
        async with wsgi_server(mixed_app, threads=threads) as srv, \
                httpx.AsyncClient(base_url=srv.url, timeout=TIMEOUT, limits=limits) as client:
            async def one(n: int) -> None:
                if n % 4 == 3:
                    r = await client.post(f"/{n}", content=b"body of %d" % n)
                else:
                    r = await client.get(f"/{n}")
                got[n] = (r.status_code, r.headers["x-request"], r.content)

            async with trio.open_nursery() as nursery:
                for n in range(count):
                    nursery.start_soon(one, n)
    assert got == {n: (200, str(n), mixed_expected(n)) for n in range(count)}
    assert len({content for _, _, content in got.values()}) == count


@pytest.mark.parametrize("threads", [2, 40])
async def test_concurrent_uploads_read_through_wsgi_input(threads: int) -> None:
    """Eight 1 MiB uploads at once (half with Content-Length, half chunked), each read in
    64 KiB pieces through ``wsgi.input``: the threads block on the loop for every piece, and
    every application call still sees exactly its own body."""
    lock = threading.Lock()
    running = peak = 0

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            return hashing_app(environ, start_response)
        finally:
            with lock:
                running -= 1

    payloads = [os.urandom(MiB) for _ in range(8)]
    answers: dict[int, str] = {}
    with trio.fail_after(TIMEOUT):
        async with wsgi_server(app, threads=threads) as srv:
            async def upload(i: int) -> None:
                payload = payloads[i]

                async def pieces() -> AsyncIterator[bytes]:
                    for start in range(0, len(payload), 100_000):
                        yield payload[start:start + 100_000]
                        await trio.lowlevel.checkpoint()

                async with client_for(srv) as client:  # a connection of its own
                    r = await client.post("/", content=payload if i % 2 else pieces())
                    assert r.status_code == 200
                    answers[i] = r.text

            async with trio.open_nursery() as nursery:
                for i in range(len(payloads)):
                    nursery.start_soon(upload, i)
    assert answers == {i: f"{MiB} {hashlib.sha256(p).hexdigest()}"
                       for i, p in enumerate(payloads)}
    assert 1 <= peak <= threads


def run_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """``/stream/<k>``: ``k`` streamed chunks; a POST: the SHA-256 of its body."""
    if environ["REQUEST_METHOD"] == "POST":
        return hashing_app(environ, start_response)
    k = int(environ["PATH_INFO"].rsplit("/", 1)[1])
    start_response("200 OK", TEXT)
    return (b"%d;" % i for i in range(k))


def test_same_bridge_serves_consecutive_trio_runs() -> None:
    """The pool rebinds to each new ``trio.run``: its one thread, left idle by the previous
    run, is woken by the new one, and body reads and streamed writes reach the new loop."""
    bridge = WSGIBridge(validator(run_app), threads=1)  # type: ignore[arg-type]
    payload = os.urandom(300_000)
    digest = f"{len(payload)} {hashlib.sha256(payload).hexdigest()}"

    async def one_run() -> None:
        with trio.fail_after(TIMEOUT):
            async with run_server(bridge, make_config(timeouts={"graceful": 5}),
                                  asgi=False) as srv, client_for(srv) as client:
                for k in (0, 1, 5):
                    r = await client.get(f"/stream/{k}")
                    assert (r.status_code, r.content) == (200, b"".join(
                        b"%d;" % i for i in range(k)))
                    r = await client.post("/", content=payload)
                    assert (r.status_code, r.text) == (200, digest)

    for _ in range(3):
        trio.run(one_run)


def test_thread_left_blocked_by_an_earlier_run_does_not_confuse_the_next() -> None:
    """A run ends (graceful deadline) while an application call is still blocked in its
    thread. In the next run the pool starts another thread rather than wait for that one; when
    the old call finally returns, its result (for a request that no longer exists) is dropped,
    and the old thread serves the new run too."""
    release = threading.Event()
    blocked = threading.Event()
    unblocked = threading.Event()

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/block":
            blocked.set()
            release.wait(TIMEOUT)
            unblocked.set()
        start_response("200 OK", TEXT)
        return [environ["PATH_INFO"].encode()]

    bridge = WSGIBridge(validator(app), threads=2)  # type: ignore[arg-type]

    async def first_run() -> None:
        with trio.fail_after(TIMEOUT):
            async with run_server(bridge, make_config(timeouts={"graceful": 0.2}),
                                  asgi=False) as srv:
                stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
                await stream.send_all(b"GET /block HTTP/1.1\r\nHost: x\r\n\r\n")
                assert await wait_thread_event(blocked, 5)
            # the server is gone: the request was cut off, the thread still waits
            assert_no_complete_response(await read_until_closed(stream))
            await stream.aclose()
            assert not unblocked.is_set()

    async def second_run() -> None:
        with trio.fail_after(TIMEOUT):
            async with run_server(bridge, make_config(timeouts={"graceful": 5}),
                                  asgi=False) as srv, client_for(srv) as client:
                r = await client.get("/while-blocked")  # by a second thread
                assert (r.status_code, r.content) == (200, b"/while-blocked")
                assert not unblocked.is_set()
                release.set()
                assert await wait_thread_event(unblocked, 5)
                async with trio.open_nursery() as nursery:
                    for i in range(6):
                        nursery.start_soon(get_path, client, f"/after{i}")

    try:
        trio.run(first_run)
        trio.run(second_run)
    finally:
        release.set()


async def get_path(client: httpx.AsyncClient, path: str) -> None:
    r = await client.get(path)
    assert (r.status_code, r.content) == (200, path.encode())


# --------------------------------------------------------- pool: concurrent runs, start failure


def test_one_bridge_serves_two_runs_at_once() -> None:
    """Two trio.run loops in two threads share one bridge (one pool): every request of each is
    answered by its own run."""

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", TEXT)
        return [environ["PATH_INFO"].encode()]

    bridge = WSGIBridge(app, threads=2)
    results: dict[str, list[bytes]] = {}
    errors: list[BaseException] = []

    def serve_and_fetch(name: str) -> None:
        async def main() -> None:
            with trio.fail_after(TIMEOUT):
                async with run_server(bridge, make_config(), asgi=False) as srv, \
                        httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.port}") as client:
                    got: list[bytes] = []

                    async def one(i: int) -> None:
                        r = await client.get(f"/{name}/{i}")
                        got.append(r.content)

                    async with trio.open_nursery() as nursery:
                        for i in range(40):
                            nursery.start_soon(one, i)
                    results[name] = sorted(got)

        try:
            trio.run(main)
        except BaseException as exc:  # reported below, from the main thread
            errors.append(exc)

    threads = [threading.Thread(target=serve_and_fetch, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT + 5)
    assert not errors, errors
    for name in ("a", "b"):
        assert results[name] == sorted(f"/{name}/{i}".encode() for i in range(40))


async def test_a_thread_that_cannot_start_fails_no_request(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Thread creation failing (the process is out of threads) is logged; requests wait for the
    threads that exist and are served, the server keeps running."""
    starts = 0
    real_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        nonlocal starts
        starts += 1
        if self.name.startswith("trioserve-wsgi") and starts > 1:
            raise RuntimeError("can't start new thread")
        real_start(self)

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        time.sleep(0.01)
        start_response("200 OK", TEXT)
        return [environ["PATH_INFO"].encode()]

    monkeypatch.setattr(threading.Thread, "start", start)
    with trio.fail_after(TIMEOUT):
        async with wsgi_server(app, threads=4) as srv, client_for(srv) as client:
            got: list[bytes] = []

            async def one(i: int) -> None:
                r = await client.get(f"/{i}")
                assert r.status_code == 200
                got.append(r.content)

            async with trio.open_nursery() as nursery:
                for i in range(10):
                    nursery.start_soon(one, i)
    assert sorted(got) == sorted(f"/{i}".encode() for i in range(10))
    assert "cannot start a WSGI worker thread" in caplog.text


_WSGI_USER: Any = __import__("contextvars").ContextVar("wsgi_user", default="nobody")


def _context_wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    before = _WSGI_USER.get()
    _WSGI_USER.set(environ["QUERY_STRING"] or before)
    body = f"{before} {_WSGI_USER.get()}".encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


async def test_context_variables_do_not_leak_between_requests() -> None:
    """A worker thread runs each request in a fresh copy of its own context: a context
    variable one request sets is not seen by the next request the thread runs (one thread, so
    every request goes through the same one)."""
    with trio.fail_after(10):
        async with run_server(WSGIBridge(_context_wsgi_app, threads=1), asgi=False) as srv, \
                httpx.AsyncClient() as client:
            url = f"http://127.0.0.1:{srv.port}/"
            texts = [(await client.get(url + q)).text for q in ("?alice", "", "?bob", "")]
    assert texts == ["nobody alice", "nobody nobody", "nobody bob", "nobody nobody"]
