"""Edge behaviour over real sockets: slow readers, lingering close, read-only sent headers,
disconnect polling, framing details, and request smuggling attempts (conflicting framing, bad
chunk sizes, bare CR/LF, obs-fold …), which every installed HTTP/1.1 request parser (h11,
httptools) must answer exactly alike.

Tests whose outcome depends on how the request bytes are parsed or read run once per installed
parser (the ``http_parser`` fixture); the slow-reader tests only exercise the response side and
run with the default parser."""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import anyio
import h11
import httpx
import pytest
import trio
from conftest import make_config, parse_responses, raw_exchange, run_server
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from trioserve.fuzz.http1 import available_parsers

from trioserve import MinDataRate
from trioserve.features import (
    FeatureStateError,
    RequestContext,
    ResponseBodyFeature,
    ResponseFeature,
)


@pytest.fixture(params=available_parsers())
def http_parser(request: pytest.FixtureRequest) -> str:
    """Each installed HTTP/1.1 request parser in turn (``Config.http_parser``)."""
    return str(request.param)


async def test_client_that_stops_reading_is_disconnected() -> None:
    dropped = trio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        chunk = b"x" * 65536
        try:
            for _ in range(2000):  # 128 MiB: far more than the socket buffers hold
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except OSError:
            dropped.set()
            raise

    config = make_config(limits={"min_response_data_rate": MinDataRate(100_000, 0.5)})
    with trio.fail_after(30):
        async with run_server(app, config) as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            async with stream:
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                await dropped.wait()  # without ever reading


async def test_slow_reader_limit_can_be_disabled() -> None:
    finished = trio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(8 * 1024 * 1024).encode())]})
        for _ in range(128):
            await send({"type": "http.response.body", "body": b"y" * 65536, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        finished.set()

    config = make_config(limits={"min_response_data_rate": None})
    with trio.fail_after(30):
        async with run_server(app, config) as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            async with stream:
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                await trio.sleep(1.5)  # longer than any grace period; nothing is read
                assert not finished.is_set()
                total = 0
                while not finished.is_set() or total < 8 * 1024 * 1024:
                    data = await stream.receive_some(1 << 20)
                    if not data:
                        break
                    total += len(data)
                assert total > 8 * 1024 * 1024  # headers + the whole body


async def test_response_headers_are_read_only_once_sent() -> None:
    outcome: dict[str, object] = {}

    async def app(ctx: RequestContext) -> None:
        resp = ctx.features[ResponseFeature]
        body = ctx.features[ResponseBodyFeature]
        resp.headers.append((b"x-before", b"1"))
        await body.start()
        for attempt in ("append", "assign"):
            try:
                if attempt == "append":
                    resp.headers.append((b"x-after", b"1"))
                else:
                    resp.headers = []
            except FeatureStateError as exc:
                outcome[attempt] = str(exc)
        outcome["visible"] = list(resp.headers)
        await body.complete(b"ok")

    with trio.fail_after(10):
        async with run_server(app, asgi=False) as srv:
            async with httpx.AsyncClient() as client:
                r = await client.get(srv.url)
    assert r.headers["x-before"] == "1" and "x-after" not in r.headers
    assert "started" in str(outcome["append"]) and "started" in str(outcome["assign"])
    assert (b"x-before", b"1") in outcome["visible"]  # type: ignore[operator]


async def test_head_response_keeps_the_length_of_a_whole_body(http_parser: str) -> None:
    async def app(ctx: RequestContext) -> None:
        await ctx.features[ResponseBodyFeature].complete(b"hello")

    with trio.fail_after(10):
        async with run_server(app, make_config(http_parser=http_parser), asgi=False) as srv:
            data = await raw_exchange(
                srv.port, b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    [(resp, body)] = parse_responses(data, [b"HEAD"])
    assert dict(resp.headers)[b"content-length"] == b"5"
    assert body == b""
    assert data.endswith(b"\r\n\r\n")


async def test_starlette_is_disconnected_sees_a_client_that_left(http_parser: str) -> None:
    noticed = trio.Event()

    async def poll(request: Request) -> PlainTextResponse:
        await request.body()
        while not await request.is_disconnected():  # noqa: ASYNC110 - the polling under test
            await anyio.sleep(0.02)
        noticed.set()
        return PlainTextResponse("gone")

    app = Starlette(routes=[Route("/poll", poll)])
    with trio.fail_after(10):
        async with run_server(app, make_config(http_parser=http_parser)) as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            await stream.send_all(b"GET /poll HTTP/1.1\r\nHost: x\r\n\r\n")
            await trio.sleep(0.2)
            await stream.aclose()
            with trio.fail_after(2):
                await noticed.wait()


async def test_413_reaches_a_client_still_sending_its_body(http_parser: str) -> None:
    async def upload(request: Request) -> PlainTextResponse:
        body = await request.body()
        return PlainTextResponse(str(len(body)))

    app = Starlette(routes=[Route("/upload", upload, methods=["POST"])])
    config = make_config(limits={"max_request_body_size": 1024 * 1024}, http_parser=http_parser)
    with trio.fail_after(20):
        async with run_server(app, config) as srv:
            async with httpx.AsyncClient() as client:
                # httpx writes the whole body before it reads the answer.
                r = await client.post(f"{srv.url}/upload", content=b"z" * (4 * 1024 * 1024))
                assert r.status_code == 413
                assert r.headers["connection"] == "close"
                r = await client.post(f"{srv.url}/upload", content=b"z" * 1000)
                assert r.status_code == 200 and r.text == "1000"


async def test_early_answer_to_100_continue_closes(http_parser: str) -> None:
    async def app(ctx: RequestContext) -> None:
        ctx.features[ResponseFeature].status = 403
        await ctx.features[ResponseBodyFeature].complete(b"no")

    with trio.fail_after(10):
        async with run_server(app, make_config(http_parser=http_parser), asgi=False) as srv:
            data = await raw_exchange(
                srv.port,
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                b"Expect: 100-continue\r\n\r\n")
    assert not data.startswith(b"HTTP/1.1 100")
    [(resp, body)] = parse_responses(data)
    assert resp.status_code == 403 and body == b"no"
    assert dict(resp.headers)[b"connection"] == b"close"


async def test_higher_http1_minor_version_is_served_as_1_1(http_parser: str) -> None:
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        seen.append(scope["http_version"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with trio.fail_after(10):
        async with run_server(app, make_config(http_parser=http_parser)) as srv:
            data = await raw_exchange(
                srv.port, b"GET / HTTP/1.2\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 204 ")
    assert seen == ["1.1"]


@pytest.mark.parametrize("target", [b"http:///x", b"http://", b"http://?q"])
async def test_absolute_form_needs_a_host(target: bytes, http_parser: str) -> None:
    called: list[object] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        called.append(scope)

    with trio.fail_after(10):
        async with run_server(app, make_config(http_parser=http_parser)) as srv:
            data = await raw_exchange(srv.port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400 ")
    assert not [c for c in called if c["type"] == "http"]  # type: ignore[index]


async def test_lifespan_state_is_in_the_scope_even_when_empty() -> None:
    states: list[object] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        states.append(scope.get("state"))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with trio.fail_after(10):
        async with run_server(app) as srv:
            async with httpx.AsyncClient() as client:
                await client.get(srv.url)
    assert states == [{}]


# ------------------------------------------------------------- request smuggling attempts
#
# Each request below is followed on the same connection by SMUGGLED, a complete request of its
# own. A server that frames the first request differently from a proxy in front of it would
# either answer a request the proxy never saw or swallow one it did: the answers below pin down
# exactly one reading, and every installed parser must give that same reading.

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
POST = b"POST / HTTP/1.1\r\nHost: x\r\n"
CHUNKED = POST + b"Transfer-Encoding: chunked\r\n\r\n"

Seen = list[tuple[str, str, bytes | None]]  # (method, path, body; None: never completed)


class Smuggle(NamedTuple):
    raw: bytes  # sent whole, then SMUGGLED unless ``eof``
    statuses: list[int]  # the statuses of the responses, in order
    seen: Seen  # what reached the application
    eof: bool = False  # half-close after ``raw`` (a truncated request) instead of SMUGGLED


def _refused(raw: bytes, status: int = 400) -> Smuggle:
    """Refused from the head alone: one error, the application never called."""
    return Smuggle(raw, [status], [])


def _bad_body(raw: bytes, status: int = 400) -> Smuggle:
    """A head the application gets, then a body the server refuses: one error response."""
    return Smuggle(raw, [status], [("POST", "/", None)])


def _served(raw: bytes, method: str, path: str, body: bytes) -> Smuggle:
    """Accepted: the request, then SMUGGLED as a separate request."""
    return Smuggle(raw, [200, 200], [(method, path, body), ("GET", "/smuggled", b"")])


SMUGGLING: dict[str, Smuggle] = {
    # Transfer-Encoding with Content-Length (RFC 9112 §6.1: a proxy may pick either)
    "te-then-cl": _refused(CHUNKED.replace(b"\r\n\r\n", b"\r\nContent-Length: 4\r\n\r\n")
                           + b"0\r\n\r\n"),
    "cl-then-te": _refused(POST + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"0\r\n\r\n"),
    "te-with-cl-0": _refused(POST + b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"0\r\n\r\n"),
    "te-cl-mixed-case-names": _refused(POST + b"content-LENGTH: 4\r\n"
                                       b"TRANSFER-encoding: chunked\r\n\r\n0\r\n\r\n"),
    # a coding list split over two fields, Content-Length between them: refused from the head
    # either way (RFC 9112 §6.3 puts no order between its two faults; the unknown coding is
    # named first, 501, as in te-gzip-field-then-chunked-field)
    "te-split-around-cl": _refused(POST + b"Transfer-Encoding: gzip\r\nContent-Length: 4\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501),
    "te-split-around-cl-chunked": _refused(POST + b"Transfer-Encoding: \r\nContent-Length: 4\r\n"
                                           b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    "te-with-cl-on-http10": _refused(b"POST / HTTP/1.0\r\nContent-Length: 5\r\n"
                                     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    # Content-Length repeated or malformed (RFC 9112 §6.3)
    "cl-twice-same": _refused(POST + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc"),
    "cl-twice-different": _refused(POST + b"Content-Length: 3\r\nContent-Length: 0\r\n\r\nabc"),
    "cl-list": _refused(POST + b"Content-Length: 3, 3\r\n\r\nabc"),
    "cl-plus": _refused(POST + b"Content-Length: +3\r\n\r\nabc"),
    "cl-negative": _refused(POST + b"Content-Length: -3\r\n\r\nabc"),
    "cl-hex": _refused(POST + b"Content-Length: 0x3\r\n\r\nabc"),
    "cl-inner-space": _refused(POST + b"Content-Length: 1 3\r\n\r\nabc"),
    "cl-underscore-digits": _refused(POST + b"Content-Length: 1_0\r\n\r\nabc"),
    "cl-arabic-digit": _refused(POST + b"Content-Length: \xd9\xa3\r\n\r\nabc"),
    "cl-empty": _refused(POST + b"Content-Length:\r\n\r\nabc"),
    "cl-overflow": _refused(POST + b"Content-Length: 99999999999999999999999\r\n\r\nabc"),
    # zero padding beyond 20 digits: h11 refuses, llhttp alone would read 3
    "cl-21-digits": _refused(POST + b"Content-Length: " + b"0" * 20 + b"3\r\n\r\nabc"),
    "cl-long-zero-padding": _refused(POST + b"Content-Length: " + b"0" * 40 + b"3\r\n\r\nabc"),
    "cl-space-before-colon": _refused(POST + b"Content-Length : 3\r\n\r\nabc"),
    "cl-bare-lf-after-value": _refused(POST + b"Content-Length: 3\n\r\n\r\nabc"),
    "cl-inner-tab": _refused(POST + b"Content-Length: 1\t3\r\n\r\nabc"),
    "cl-nul-after-value": _refused(POST + b"Content-Length: 3\x00\r\n\r\nabc"),
    "cl-over-the-limit": _bad_body(POST + b"Content-Length: 999999999999999999\r\n\r\nabc",
                                   413),
    # Transfer-Encoding variants
    "te-space-before-colon": _refused(POST + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
    "te-chunked-twice": _refused(POST + b"Transfer-Encoding: chunked, chunked\r\n\r\n"
                                 b"0\r\n\r\n"),
    "te-two-fields": _refused(POST + b"Transfer-Encoding: chunked\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    "te-chunked-not-last": _refused(POST + b"Transfer-Encoding: chunked, gzip\r\n\r\n"
                                    b"0\r\n\r\n"),
    "te-trailing-comma": _refused(POST + b"Transfer-Encoding: chunked,\r\n\r\n0\r\n\r\n"),
    "te-empty": _refused(POST + b"Transfer-Encoding:\r\n\r\n0\r\n\r\n"),
    "te-quoted": _refused(POST + b'Transfer-Encoding: "chunked"\r\n\r\n0\r\n\r\n'),
    "te-vertical-tab": _refused(POST + b"Transfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n"),
    "te-gzip-then-chunked": _refused(POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n"
                                     b"0\r\n\r\n", 501),
    "te-unknown-coding": _refused(POST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 501),
    "te-on-http10": _refused(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"0\r\n\r\n"),
    "te-tab-before-colon": _refused(POST + b"Transfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n"),
    "te-nul-before-value": _refused(POST + b"Transfer-Encoding: \x00chunked\r\n\r\n"
                                    b"0\r\n\r\n"),
    "te-nul-after-value": _refused(POST + b"Transfer-Encoding: chunked\x00\r\n\r\n0\r\n\r\n"),
    "te-ctl-in-value": _refused(POST + b"Transfer-Encoding: chun\x01ked\r\n\r\n0\r\n\r\n"),
    # two fields make one list (RFC 9110 §5.3): "chunked, identity", chunked not last
    "te-chunked-then-identity": _refused(POST + b"Transfer-Encoding: chunked\r\n"
                                         b"Transfer-Encoding: identity\r\n\r\n0\r\n\r\n"),
    # "identity" is no registered coding since RFC 7230: chunked is last, the other unknown
    "te-identity-then-chunked": _refused(POST + b"Transfer-Encoding: identity, chunked\r\n\r\n"
                                         b"0\r\n\r\n", 501),
    "te-gzip-field-then-chunked-field": _refused(POST + b"Transfer-Encoding: gzip\r\n"
                                                 b"Transfer-Encoding: chunked\r\n\r\n"
                                                 b"0\r\n\r\n", 501),
    # a well-formed coding (token + parameter, RFC 9112 §7), but not the bare "chunked" the
    # server implements: an unknown coding, not a malformed list
    "te-chunked-with-parameter": _refused(POST + b"Transfer-Encoding: chunked;q=1\r\n\r\n"
                                          b"0\r\n\r\n", 501),
    # obs-fold hiding a Transfer-Encoding inside another field's value, or just before it
    "te-folded-into-other-field": _refused(POST + b"X: y\r\n Transfer-Encoding: chunked\r\n"
                                           b"\r\n0\r\n\r\n"),
    "te-after-obs-fold": _refused(POST + b"X: y\r\n z\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  b"0\r\n\r\n"),
    # bad chunk-size lines, chunk data and trailer sections (RFC 9112 §7.1)
    "chunk-size-not-hex": _bad_body(CHUNKED + b"zz\r\nhello\r\n0\r\n\r\n"),
    "chunk-size-negative": _bad_body(CHUNKED + b"-5\r\nhello\r\n0\r\n\r\n"),
    "chunk-size-0x": _bad_body(CHUNKED + b"0x5\r\nhello\r\n0\r\n\r\n"),
    "chunk-size-overflow": _bad_body(CHUNKED + b"fffffffffffffffff1\r\nhello\r\n0\r\n\r\n"),
    # 17 hex digits, 2^64 + 5: a parser that wraps at 64 bits reads 5
    "chunk-size-wraps-64-bits": _bad_body(CHUNKED + b"10000000000000005\r\nhello\r\n0\r\n\r\n"),
    "chunk-size-2-63": _bad_body(CHUNKED + b"8000000000000000\r\nhello\r\n0\r\n\r\n"),
    "chunk-size-plus": _bad_body(CHUNKED + b"+5\r\nhello\r\n0\r\n\r\n"),
    "chunk-size-underscore": _bad_body(CHUNKED + b"1_0\r\n0123456789abcdef\r\n0\r\n\r\n"),
    "chunk-size-0X": _bad_body(CHUNKED + b"0X5\r\nhello\r\n0\r\n\r\n"),
    "chunk-size-leading-space": _bad_body(CHUNKED + b" 5\r\nhello\r\n0\r\n\r\n"),
    "chunk-size-leading-tab": _bad_body(CHUNKED + b"\t5\r\nhello\r\n0\r\n\r\n"),
    "chunk-size-empty": _bad_body(CHUNKED + b"\r\nhello\r\n0\r\n\r\n"),
    "chunk-size-trailing-junk": _bad_body(CHUNKED + b"5x\r\nhello\r\n0\r\n\r\n"),
    "chunk-size-nul": _bad_body(CHUNKED + b"5\x00\r\nhello\r\n0\r\n\r\n"),
    # chunk extensions: one that never ends within any sane line, thousands of pairs on one
    # line or spread over many one-byte chunks (RFC 9112 §7.1.1: limit their total length per
    # request, 4xx beyond), and malformed ones
    "chunk-ext-64k": _bad_body(CHUNKED + b"5;" + b"a" * 65536 + b"\r\nhello\r\n0\r\n\r\n"),
    "chunk-ext-10000-pairs": _bad_body(CHUNKED + b"5" + b";a=b" * 10000 + b"\r\nhello\r\n"
                                       b"0\r\n\r\n"),
    "chunk-ext-pairs-over-many-chunks": _bad_body(
        CHUNKED + (b"1" + b";a=b" * 1000 + b"\r\nx\r\n") * 200 + b"0\r\n\r\n"),
    "chunk-ext-bare-semicolon": _bad_body(CHUNKED + b"5;\r\nhello\r\n0\r\n\r\n"),
    "chunk-ext-no-name": _bad_body(CHUNKED + b"5;=b\r\nhello\r\n0\r\n\r\n"),
    # a quoted-string cannot hold CR/LF: unterminated at the end of the line, not continued
    "chunk-ext-unterminated-quote": _bad_body(CHUNKED + b'5;a="x\r\nhello\r\n0\r\n\r\n'),
    "chunk-ext-nul": _bad_body(CHUNKED + b"5;a=\x00\r\nhello\r\n0\r\n\r\n"),
    "chunk-size-bare-lf": _bad_body(CHUNKED + b"5\nhello\r\n0\r\n\r\n"),
    "chunk-size-bare-cr": _bad_body(CHUNKED + b"5\rhello\r\n0\r\n\r\n"),
    "chunk-ext-bare-cr": _bad_body(CHUNKED + b"5;a\rb\r\nhello\r\n0\r\n\r\n"),
    "chunk-data-too-long": _bad_body(CHUNKED + b"5\r\nhelloXX0\r\n\r\n"),
    "chunk-data-bare-lf": _bad_body(CHUNKED + b"5\r\nhello\n0\r\n\r\n"),
    "chunk-data-lf-crlf": _bad_body(CHUNKED + b"3\r\nabc\n\r\n0\r\n\r\n"),
    "last-chunk-bare-lf": _bad_body(CHUNKED + b"0\r\n\n"),
    "trailer-obs-fold": _bad_body(CHUNKED + b"0\r\nX-T: a\r\n b\r\n\r\n"),
    "trailer-bare-lf": _bad_body(CHUNKED + b"0\r\nX-T: a\nX-U: b\r\n\r\n"),
    # line endings, obs-fold, control bytes, field syntax in the head (RFC 9112 §2.2, §5)
    "bare-lf-everywhere": _refused(b"GET / HTTP/1.1\nHost: x\n\n"),
    "bare-lf-in-fields": _refused(b"GET / HTTP/1.1\r\nHost: x\nX-A: 1\r\n\r\n"),
    "bare-lf-leading": _refused(b"\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    "bare-cr-in-value": _refused(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r2\r\n\r\n"),
    "bare-cr-after-request-line": _refused(b"GET / HTTP/1.1\rHost: x\r\n\r\n"),
    "obs-fold-space": _refused(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\n\r\n"),
    "obs-fold-tab": _refused(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\t2\r\n\r\n"),
    "obs-fold-te": _refused(POST + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n"),
    "space-before-first-field": _refused(b"GET / HTTP/1.1\r\n Host: x\r\n\r\n"),
    "nul-in-value": _refused(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\x002\r\n\r\n"),
    "del-in-value": _refused(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\x7f2\r\n\r\n"),
    "quote-in-name": _refused(b'GET / HTTP/1.1\r\nHost: x\r\nX"A: 1\r\n\r\n'),
    "obs-text-in-name": _refused(b"GET / HTTP/1.1\r\nHost: x\r\nX\xe9: 1\r\n\r\n"),
    "double-space-in-line": _refused(b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n"),
    "tab-in-line": _refused(b"GET\t/ HTTP/1.1\r\nHost: x\r\n\r\n"),
    "space-after-version": _refused(b"GET / HTTP/1.1 \r\nHost: x\r\n\r\n"),
    "lowercase-version": _refused(b"GET / http/1.1\r\nHost: x\r\n\r\n"),
    "http-0.9": _refused(b"GET /\r\n\r\n"),
    "two-hosts": _refused(b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n"),
    "no-host": _refused(b"GET / HTTP/1.1\r\n\r\n"),
    "fragment": _refused(b"GET /a#b HTTP/1.1\r\nHost: x\r\n\r\n"),
    "connect-origin-form": _refused(b"CONNECT / HTTP/1.1\r\nHost: x\r\n\r\n"),
    "nine-empty-lines": _refused(b"\r\n" * 9 + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    # bare CR, bare LF, NUL and other control bytes in each part of the head
    "nul-in-method": _refused(b"G\x00ET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    "ctl-in-method": _refused(b"GE\x01T / HTTP/1.1\r\nHost: x\r\n\r\n"),
    "bare-cr-in-method": _refused(b"GE\rT / HTTP/1.1\r\nHost: x\r\n\r\n"),
    "method-not-a-token": _refused(b"GE(T / HTTP/1.1\r\nHost: x\r\n\r\n"),
    "nul-in-target": _refused(b"GET /a\x00b HTTP/1.1\r\nHost: x\r\n\r\n"),
    "del-in-target": _refused(b"GET /a\x7fb HTTP/1.1\r\nHost: x\r\n\r\n"),
    "ctl-in-target": _refused(b"GET /a\x0bb HTTP/1.1\r\nHost: x\r\n\r\n"),
    "bare-cr-in-target": _refused(b"GET /a\rb HTTP/1.1\r\nHost: x\r\n\r\n"),
    "bare-lf-in-target": _refused(b"GET /a\nb HTTP/1.1\r\nHost: x\r\n\r\n"),
    "nul-after-version": _refused(b"GET / HTTP/1.1\x00\r\nHost: x\r\n\r\n"),
    "bare-lf-after-request-line": _refused(b"GET / HTTP/1.1\nHost: x\r\n\r\n"),
    "nul-in-name": _refused(b"GET / HTTP/1.1\r\nHost: x\r\nX\x00A: 1\r\n\r\n"),
    "ctl-in-name": _refused(b"GET / HTTP/1.1\r\nHost: x\r\nX\x1fA: 1\r\n\r\n"),
    "bare-cr-in-name": _refused(b"GET / HTTP/1.1\r\nHost: x\r\nX\rA: 1\r\n\r\n"),
    "nul-before-first-field": _refused(b"GET / HTTP/1.1\r\n\x00Host: x\r\n\r\n"),
    "ctl-in-value": _refused(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\x012\r\n\r\n"),
    "esc-in-value": _refused(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: \x1b[31m\r\n\r\n"),
    "bare-lf-in-value": _refused(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\n2\r\n\r\n"),
    "bare-cr-before-end-of-head": _refused(b"GET / HTTP/1.1\r\nHost: x\r\n\r\r\n"),
    "space-before-colon": _refused(b"GET / HTTP/1.1\r\nHost: x\r\nX-A : 1\r\n\r\n"),
    "tab-before-colon": _refused(b"GET / HTTP/1.1\r\nHost: x\r\nX-A\t: 1\r\n\r\n"),
    "tab-before-first-field": _refused(b"GET / HTTP/1.1\r\n\tHost: x\r\n\r\n"),
    "empty-field-name": _refused(b"GET / HTTP/1.1\r\nHost: x\r\n: 1\r\n\r\n"),
    "field-without-colon": _refused(b"GET / HTTP/1.1\r\nHost: x\r\nX-A 1\r\n\r\n"),
    # Host (RFC 9112 §3.2: exactly one, valid; 400 otherwise)
    "two-hosts-same-value": _refused(b"GET / HTTP/1.1\r\nHost: x\r\nHost: x\r\n\r\n"),
    "two-hosts-differing-case": _refused(b"GET / HTTP/1.1\r\nhost: x\r\nHOST: y\r\n\r\n"),
    "host-list": _refused(b"GET / HTTP/1.1\r\nHost: x, y\r\n\r\n"),
    "host-space-before-colon": _refused(b"GET / HTTP/1.1\r\nHost : x\r\n\r\n"),
    "host-with-path": _refused(b"GET / HTTP/1.1\r\nHost: x/y\r\n\r\n"),
    "host-with-userinfo": _refused(b"GET / HTTP/1.1\r\nHost: u@x\r\n\r\n"),
    "no-host-absolute-form": _refused(b"GET http://x/ HTTP/1.1\r\n\r\n"),
    # versions (RFC 9112 §2.3: HTTP-version = "HTTP/" DIGIT "." DIGIT; 505 for a major other
    # than 1)
    "version-1.1x": _refused(b"GET / HTTP/1.1x\r\nHost: x\r\n\r\n"),
    "version-11": _refused(b"GET / HTTP/11\r\nHost: x\r\n\r\n"),
    "version-1-dot": _refused(b"GET / HTTP/1.\r\nHost: x\r\n\r\n"),
    "version-1.01": _refused(b"GET / HTTP/1.01\r\nHost: x\r\n\r\n"),
    "version-01.1": _refused(b"GET / HTTP/01.1\r\nHost: x\r\n\r\n"),
    "version-missing": _refused(b"GET / \r\nHost: x\r\n\r\n"),
    "version-2.0": _refused(b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    "version-3.0": _refused(b"GET / HTTP/3.0\r\nHost: x\r\n\r\n", 505),
    "version-0.9": _refused(b"GET / HTTP/0.9\r\nHost: x\r\n\r\n", 505),
    # request-target forms (RFC 9112 §3.2)
    "authority-form-get": _refused(b"GET x:80 HTTP/1.1\r\nHost: x\r\n\r\n"),
    "connect-absolute-form": _refused(b"CONNECT http://x/ HTTP/1.1\r\nHost: x\r\n\r\n"),
    "asterisk-form-get": _refused(b"GET * HTTP/1.1\r\nHost: x\r\n\r\n"),
    "target-without-slash": _refused(b"GET p HTTP/1.1\r\nHost: x\r\n\r\n"),
    # RFC 9110 §4.2.4: userinfo in an http(s) URI is treated as an error (phishing, and a
    # proxy may route on a different host than the server sees)
    "absolute-form-userinfo": _refused(b"GET http://u@x/ HTTP/1.1\r\nHost: x\r\n\r\n"),
    # limits (docs/reference.md: 414 and 431)
    "request-line-too-long": _refused(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                                      414),
    "too-many-fields": _refused(b"GET / HTTP/1.1\r\nHost: x\r\n"
                                + b"".join(b"X-%d: 1\r\n" % i for i in range(100)) + b"\r\n",
                                431),
    "header-section-too-large": _refused(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: "
                                         + b"a" * 33000 + b"\r\n\r\n", 431),
    # accepted: the first request is framed exactly so, and SMUGGLED is a request of its own
    "cl-trailing-whitespace": _served(POST + b"Content-Length: 3 \t\r\n\r\nabc", "POST", "/",
                                      b"abc"),
    "cl-leading-zeros": _served(POST + b"Content-Length: 003\r\n\r\nabc", "POST", "/", b"abc"),
    "cl-no-space": _served(POST + b"Content-Length:3\r\n\r\nabc", "POST", "/", b"abc"),
    "cl-tab-before-value": _served(POST + b"Content-Length:\t3\r\n\r\nabc", "POST", "/",
                                   b"abc"),
    "te-mixed-case-name": _served(POST + b"tRaNsFeR-eNcOdInG: chunked\r\n\r\n"
                                  b"5\r\nhello\r\n0\r\n\r\n", "POST", "/", b"hello"),
    "chunk-size-uppercase-hex": _served(CHUNKED + b"A\r\n0123456789\r\n0\r\n\r\n", "POST",
                                        "/", b"0123456789"),
    # 17 hex digits, value 5: RFC 9112 §7.1 wants large numerals parsed, not refused
    "chunk-size-zero-padded": _served(CHUNKED + b"00000000000000005\r\nhello\r\n0\r\n\r\n",
                                      "POST", "/", b"hello"),
    "last-chunk-00": _served(CHUNKED + b"5\r\nhello\r\n00\r\n\r\n", "POST", "/", b"hello"),
    # BWS after ";" and around "=" is accepted; before the first ";" h11 refuses it (a known
    # strictness, docs/reference.md), which both parsers share: 400, never a misframed body
    "chunk-ext-bws": _served(CHUNKED + b"5; a = b\r\nhello\r\n0\r\n\r\n", "POST", "/",
                             b"hello"),
    "chunk-ext-bws-before-semicolon": _bad_body(CHUNKED + b"5 ; a=b\r\nhello\r\n0\r\n\r\n"),
    "chunk-ext-100-pairs": _served(CHUNKED + b"5" + b";a=b" * 100 + b"\r\nhello\r\n0\r\n\r\n",
                                   "POST", "/", b"hello"),
    "tab-in-value": _served(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\t2\r\n\r\n", "GET", "/",
                            b""),
    "obs-text-in-value": _served(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: \xe9\r\n\r\n", "GET",
                                 "/", b""),
    # methods are case-sensitive tokens: "get" and unregistered ones reach the app
    "lowercase-method": _served(b"get / HTTP/1.1\r\nHost: x\r\n\r\n", "get", "/", b""),
    "extension-method": _served(b"FOO_BAR / HTTP/1.1\r\nHost: x\r\n\r\n", "FOO_BAR", "/",
                                b""),
    "absolute-form": _served(b"GET http://x/p?q=1 HTTP/1.1\r\nHost: x\r\n\r\n", "GET", "/p",
                             b""),
    # RFC 9112 §3.2.2: with an absolute-form target the target's authority wins over Host
    "absolute-form-other-host": _served(b"GET http://a/p HTTP/1.1\r\nHost: b\r\n\r\n", "GET",
                                        "/p", b""),
    "absolute-form-empty-host-field": _served(b"GET http://a/p HTTP/1.1\r\nHost:\r\n\r\n",
                                              "GET", "/p", b""),
    "asterisk-form-options": _served(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", "OPTIONS", "*",
                                     b""),
    "te-tab-before-value": _served(POST + b"Transfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n",
                                   "POST", "/", b""),
    "te-uppercase": _served(POST + b"Transfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\n", "POST", "/",
                            b""),
    "te-trailing-space": _served(POST + b"Transfer-Encoding: chunked \r\n\r\n0\r\n\r\n", "POST",
                                 "/", b""),
    "chunk-size-trailing-space": _served(CHUNKED + b"5 \r\nhello\r\n0\r\n\r\n", "POST", "/",
                                         b"hello"),
    "chunk-ext-quoted": _served(CHUNKED + b'3;a="b;c"\r\nabc\r\n0\r\n\r\n', "POST", "/",
                                b"abc"),
    "get-with-a-body": _served(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nGET /",
                               "GET", "/", b"GET /"),
    "cl-0-then-next": _served(POST + b"Content-Length: 0\r\n\r\n", "POST", "/", b""),
    "http10-keep-alive": _served(b"POST / HTTP/1.0\r\nConnection: keep-alive\r\n"
                                 b"Content-Length: 3\r\n\r\nabc", "POST", "/", b"abc"),
    # HTTP/1.0 needs no Host; it closes after the response, SMUGGLED is never read
    "http10-no-host": Smuggle(b"GET / HTTP/1.0\r\n\r\n", [200], [("GET", "/", b"")]),
    "expect-continue": _served(POST + b"Expect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
                               "POST", "/", b"abc"),
    # an Upgrade the app does not take is an ordinary request (h2c is taken: test_http2_*)
    "ignored-upgrade": _served(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                               b"Upgrade: foo/2\r\n\r\n", "GET", "/", b""),
    # h2c Upgrade without HTTP2-Settings in Connection is not an h2c upgrade (RFC 7540 §3.2.1)
    "h2c-upgrade-incomplete": _served(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                                      b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\n\r\n",
                                      "GET", "/", b""),
    # Content_Length is not Content-Length: no body, so "abc" starts the next request line
    "cl-with-underscore": Smuggle(POST + b"Content_Length: 3\r\n\r\nabc", [200, 200],
                                  [("POST", "/", b""), ("abcGET", "/smuggled", b"")]),
    # Transfer_Encoding is not Transfer-Encoding either: no body, and the chunked framing that
    # follows is a bad request line of its own, which ends the connection before SMUGGLED
    "te-with-underscore": Smuggle(POST + b"Transfer_Encoding: chunked\r\n\r\n0\r\n\r\n",
                                  [200, 400], [("POST", "/", b"")]),
    # a 2xx to CONNECT turns the connection into a tunnel (RFC 9110 §9.3.6); the server has none
    # to offer, so it closes: what follows is never parsed as a request
    "connect-authority-form": Smuggle(b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n", [200],
                                      [("CONNECT", "x:443", b"")]),
    # truncated, then the client half-closes
    "head-truncated": Smuggle(b"GET / HTTP/1.1\r\nHost: x\r\n", [400], [], eof=True),
    "cl-body-truncated": Smuggle(POST + b"Content-Length: 10\r\n\r\nabc", [400],
                                 [("POST", "/", None)], eof=True),
    "chunked-body-truncated": Smuggle(CHUNKED + b"5\r\nhel", [400], [("POST", "/", None)],
                                      eof=True),
    # a huge chunk size within 2^63 whose data never comes: cut short by the half-close
    "chunk-size-huge-body-missing": Smuggle(CHUNKED + b"7fffffffffffffff\r\n" + SMUGGLED, [400],
                                            [("POST", "/", None)], eof=True),
}


async def _smuggle(parser: str, case: Smuggle, limits: dict[str, Any] | None = None
                   ) -> tuple[list[tuple[h11.Response, bytes]], Seen]:
    """Send ``case`` to a fresh server using ``parser`` (and ``limits``, else the defaults); the
    parsed responses (all of them, until the server closed) and what the application saw."""
    seen: Seen = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":  # the server refused the body
                seen.append((scope["method"], scope["path"], None))
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        seen.append((scope["method"], scope["path"], body))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    with trio.fail_after(10):
        config = make_config(http_parser=parser, limits=limits)
        async with run_server(app, config, lifespan="off") as srv:
            if case.eof:
                stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
                async with stream:
                    await stream.send_all(case.raw)
                    await stream.send_eof()
                    chunks = []
                    while chunk := await stream.receive_some(65536):
                        chunks.append(chunk)
                data = b"".join(chunks)
            else:
                data = await raw_exchange(srv.port, case.raw + SMUGGLED)
    # h11 as a client stops at a 2xx to CONNECT (a tunnel follows; next_event() would return
    # PAUSED for ever): read the answers to CONNECT as if to GET
    methods = [b"GET" if method == "CONNECT" else method.encode() for method, _, _ in seen]
    responses = parse_responses(data, methods)
    # parse_responses stops at the first "Connection: close": nothing may follow it (a final
    # status line after the error response would be an answer to a smuggled request)
    final_status_lines = re.findall(rb"HTTP/1\.1 [2-5][0-9][0-9] ", data)
    assert len(final_status_lines) == len(responses), data[:2000]
    return responses, seen


def _assert_refusal_closes(responses: list[tuple[h11.Response, bytes]]) -> None:
    """Every error answer is the server's own (the app here only answers 200): the last response,
    plain text naming the problem, with ``Connection: close`` (the caller's read ending proves
    the close itself)."""
    for i, (resp, body) in enumerate(responses):
        if resp.status_code < 400:
            continue
        headers = dict(resp.headers)
        assert i == len(responses) - 1, f"a response after the {resp.status_code}: {responses}"
        assert headers.get(b"connection") == b"close", resp
        assert headers.get(b"content-type", b"").startswith(b"text/plain"), resp
        assert body, resp


@pytest.mark.parametrize("case", SMUGGLING.values(), ids=SMUGGLING.keys())
async def test_smuggling_attempt_gets_one_reading(http_parser: str, case: Smuggle) -> None:
    """The exact statuses and the exact requests the app saw: a refused head never reaches the
    app, a refused body ends the request, and the connection closes after the error response
    (the read only ends when the server closes), so SMUGGLED is never parsed as a request."""
    responses, seen = await _smuggle(http_parser, case)
    assert [r.status_code for r, _ in responses] == case.statuses, responses
    assert seen == case.seen
    _assert_refusal_closes(responses)


async def test_huge_chunk_whose_data_never_comes_is_dropped(http_parser: str) -> None:
    """A chunk size just under 2^63 followed by SMUGGLED, the connection held open: SMUGGLED is
    chunk data, never a request; the body-rate limit ends the request with 408 and closes
    (grace period shortened from 5 s to keep the test quick)."""
    case = Smuggle(CHUNKED + b"7fffffffffffffff\r\n", [408], [("POST", "/", None)])
    with trio.fail_after(10):
        responses, seen = await _smuggle(
            http_parser, case, limits={"min_request_body_data_rate": MinDataRate(240, 1.0)})
    assert [r.status_code for r, _ in responses] == case.statuses, responses
    assert seen == case.seen
    _assert_refusal_closes(responses)


def _answer(responses: list[tuple[h11.Response, bytes]]) -> list[tuple[object, ...]]:
    """The responses without their Date field, which changes every second."""
    return [(r.status_code, r.reason, [(n, v) for n, v in r.headers if n != b"date"], body)
            for r, body in responses]


@pytest.mark.skipif(len(available_parsers()) < 2, reason="needs httptools as well as h11")
@pytest.mark.parametrize("case", [pytest.param(case, id=name) for name, case in SMUGGLING.items()])
async def test_both_parsers_answer_smuggling_attempts_identically(case: Smuggle) -> None:
    """Not only the same status: the same responses, headers and error text included, and the
    same view for the application."""
    h11_responses, h11_seen = await _smuggle("h11", case)
    fast_responses, fast_seen = await _smuggle("httptools", case)
    assert _answer(fast_responses) == _answer(h11_responses)
    assert fast_seen == h11_seen


@pytest.mark.parametrize("http_parser", available_parsers())
@pytest.mark.parametrize(("raw", "message"), [
    # a bad chunk footer found while peeking past the previous chunk: the parser's own reason,
    # not the follow-up error of a parser already in its error state
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
     b"malformed chunk footer"),
    # a lone LF in the head is a bare LF, not obs-fold
    (b"GET / HTTP/1.1\r\nHost: x\nX-A: 1\r\n\r\n", b"bare CR or LF"),
])
async def test_error_text_names_the_first_fault(http_parser: str, raw: bytes,
                                                message: bytes) -> None:
    case = Smuggle(raw, [400], [])
    responses, _seen = await _smuggle(http_parser, case)
    assert responses[0][0].status_code == 400
    assert message in responses[0][1], responses[0][1]
