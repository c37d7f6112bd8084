"""``trioserve fuzz``, run as a real subprocess: in-process parser campaigns, a live trioserve
running the echo app, the h11 and httptools parsers compared with ``fuzz diff`` (the CI check
that they agree), deliberately broken toy servers the tool must catch (with a minimised
reproducer that ``fuzz replay`` reproduces and the example database replays first), and the
clear errors for a remote target and a missing hypothesis.

Every campaign is bounded by ``--max-examples`` and ``--duration`` and only talks to loopback;
``--database`` points into the test's temporary directory (or is off) so nothing is written to
the checkout.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import random
import sys
import threading
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from procs import module_command, run_to_exit, server_process

pytest.importorskip("hypothesis")

from conftest import parse_responses, raw_exchange, run_server
from trioserve.fuzz import echo
from trioserve.fuzz.campaign import stable_line
from trioserve.fuzz.cli import main as fuzz_main
from trioserve.fuzz.http1 import SMUGGLED_REQUEST, GeneratedRequest, Http1Case, available_parsers
from trioserve.fuzz.target import (
    LEADING_EMPTY_LINE,
    Finding,
    check_diff,
    check_http1_target,
    parse_target,
    read_responses,
)

pytestmark = pytest.mark.slow

HTTP1 = "http1-valid,http1-mutated,http1-framing"


def _report(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text())
    for key in ("command", "command_line", "targets", "seed", "duration", "examples",
                "campaigns", "findings"):
        assert key in doc, key
    return doc


def _echo_server(*args: str) -> list[str]:
    return module_command("trioserve.fuzz.echo:app", "--port", "0", "--no-access-log",
                          "--headers-timeout", "5", *args)


def test_parser_campaigns_short_run(tmp_path: Path) -> None:
    """A short in-process run of the four HTTP/1.1 campaigns finds nothing in trioserve's
    parsers, exits 0 and writes a complete report (seed, counts, no findings)."""
    report = tmp_path / "report.json"
    res = run_to_exit(module_command(
        "fuzz", "parser", "--campaign", HTTP1 + ",http1-bytes", "--duration", "8",
        "--max-examples", "40", "--seed", "1", "--report", str(report),
        "--database", str(tmp_path / "db"), "--quiet"), timeout=90)
    assert res.returncode == 0, res.stdout + res.stderr
    doc = _report(report)
    assert doc["command"] == "parser" and doc["seed"] == 1 and doc["findings"] == []
    for name in ("http1-valid", "http1-mutated", "http1-framing", "http1-bytes"):
        stats = doc["campaigns"][name]
        assert 1 <= stats["examples"] <= 40, (name, stats)
        assert stats["skipped"] is None
    # the framing campaign's attacks were refused, its controls accepted
    assert any(k.startswith("refused") for k in doc["campaigns"]["http1-framing"]["outcomes"])
    assert "0 finding(s)" in res.stdout


def test_http2_campaign_skips_clearly_without_its_module(tmp_path: Path) -> None:
    """When trioserve.fuzz.http2 cannot be imported, the http2 campaign is skipped with a
    message (and the report says why); asked for alone, nothing can run: exit 2."""
    block = ("import sys; sys.modules['trioserve.fuzz.http2'] = None; "
             "from trioserve.cli import main; raise SystemExit(main(sys.argv[1:]))")
    report = tmp_path / "r.json"
    base = [sys.executable, "-c", block, "fuzz", "parser", "--duration", "2",
            "--max-examples", "5", "--database", "none", "--report", str(report)]
    res = run_to_exit([*base, "--campaign", "http1-bytes,http2"], timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "campaign http2 skipped: trioserve.fuzz.http2 is not available" in res.stderr
    assert "not available" in _report(report)["campaigns"]["http2"]["skipped"]
    alone = run_to_exit([*base, "--campaign", "http2"], timeout=60)
    assert alone.returncode == 2
    assert "no campaign can run" in alone.stderr


def test_target_trioserve_running_the_echo_app(tmp_path: Path) -> None:
    """``fuzz target`` against trioserve serving the echo app: 100 inputs per HTTP/1.1
    campaign, every property holds (valid requests reach the app exactly as sent, attacks are
    refused, no 5xx, no hang, never more requests than were sent), exit 0."""
    report = tmp_path / "t.json"
    with server_process(_echo_server()) as sp:
        port = sp.wait_port()
        res = run_to_exit(module_command(
            "fuzz", "target", f"http://127.0.0.1:{port}", "--max-examples", "100",
            "--duration", "40", "--timeout", "10", "--seed", "2", "--database", "none",
            "--report", str(report), "--quiet"), timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    doc = _report(report)
    assert doc["targets"] == [f"127.0.0.1:{port}=http://127.0.0.1:{port}"]
    for name in HTTP1.split(","):
        assert doc["campaigns"][name]["examples"] >= 100, doc["campaigns"][name]
    assert any("to app" in k for k in doc["campaigns"]["http1-valid"]["outcomes"])


@pytest.mark.skipif("httptools" not in available_parsers(), reason="httptools not installed")
def test_diff_h11_and_httptools_agree(tmp_path: Path) -> None:
    """``fuzz diff`` between trioserve --http h11 and --http httptools, both serving the echo
    app: the same inputs are accepted, refused and echoed alike (exit 0). This is the CI check
    that the two parsers are interchangeable."""
    report = tmp_path / "d.json"
    with server_process(_echo_server("--http", "h11")) as a, \
            server_process(_echo_server("--http", "httptools")) as b:
        pa, pb = a.wait_port(), b.wait_port()
        res = run_to_exit(module_command(
            "fuzz", "diff", f"h11=http://127.0.0.1:{pa}", f"httptools=http://127.0.0.1:{pb}",
            "--max-examples", "100", "--duration", "40", "--timeout", "10", "--seed", "3",
            "--database", "none", "--report", str(report), "--quiet"), timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    doc = _report(report)
    assert doc["command"] == "diff" and len(doc["targets"]) == 2
    assert all(doc["campaigns"][n]["examples"] >= 100 for n in HTTP1.split(","))


# ------------------------------------------------------------------ the tool can fail


async def _naive_http(stream: trio.SocketStream, answer: Any) -> None:
    """A deliberately broken HTTP/1.1 server loop: frames bodies by Content-Length alone
    (``int()`` of the last one, so ``+5`` and ``0_5`` pass), ignores Transfer-Encoding, never
    checks Host, keeps the connection alive; ``answer(head)`` gives the response bytes."""
    buf = b""
    async with stream:
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        try:
                            length = int(value.strip())
                        except ValueError:
                            await stream.send_all(b"HTTP/1.1 400 Bad Request\r\n"
                                                  b"Content-Length: 0\r\n\r\n")
                            return
                while len(buf) < length:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return
                    buf += chunk
                buf = buf[length:]
                await stream.send_all(answer(head))
        except trio.BrokenResourceError:
            return


def _ok(head: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def _500_on_z_header(stream: trio.SocketStream) -> None:
    """Reads one head, answers 500 when a field name starts with 'z' (else 200), closes."""
    buf = b""
    async with stream:
        try:
            while b"\r\n\r\n" not in buf:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                buf += chunk
            lines = buf.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]
            status = b"500 Oops" if any(n[:1] in (b"z", b"Z") for n in lines) else b"200 OK"
            await stream.send_all(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n"
                                  b"Connection: close\r\n\r\n")
        except trio.BrokenResourceError:
            return


async def _fuzz(*args: str) -> Any:
    with trio.fail_after(120):
        return await trio.run_process(module_command("fuzz", *args), capture_stdout=True,
                                      capture_stderr=True, check=False)


async def _toy(nursery: trio.Nursery, handler: Any) -> str:
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"


async def test_smuggling_server_is_caught_minimised_and_replayed(tmp_path: Path) -> None:
    """Against a toy server that frames by Content-Length and ignores Transfer-Encoding, the
    framing campaign finds request smuggling (or a Content-Length RFC 9112 requires refusing
    let through), exits 1, reports a minimised reproducer with its replay command, and
    ``fuzz replay`` reproduces it (exit 1)."""
    report = tmp_path / "r.json"
    async with trio.open_nursery() as nursery:
        url = await _toy(nursery, lambda s: _naive_http(s, _ok))
        res = await _fuzz("target", url, "--campaign", "http1-framing", "--max-examples", "150",
                          "--duration", "30", "--timeout", "5", "--shrink-time", "10",
                          "--seed", "4", "--database", "none", "--report", str(report),
                          "--quiet")
        assert res.returncode == 1, res.stdout + res.stderr
        doc = _report(report)
        kinds = {f["kind"] for f in doc["findings"]}
        assert kinds & {"smuggling", "accepted-invalid"}, doc["findings"]
        smuggling = [f for f in doc["findings"] if f["kind"] == "smuggling"]
        assert smuggling, doc["findings"]
        f = smuggling[0]
        raw = base64.b64decode(f["raw_base64"])
        assert repr(raw) == f["raw"] and f["length"] == len(raw)
        assert b"transfer-encoding" in raw.lower() and b"GET /smuggled" in raw
        assert len(raw) < 200  # the random extra fields were shrunk away
        assert f["replay"] == f"trioserve fuzz replay {report} {f['index']}"
        replay = await _fuzz("replay", str(report), str(f["index"]))
        assert replay.returncode == 1, replay.stdout + replay.stderr
        assert b"still fails (smuggling)" in replay.stdout
        nursery.cancel_scope.cancel()


async def test_database_replays_a_finding_first(tmp_path: Path) -> None:
    """A toy server answering 500 when a header name starts with 'z': a long enough run finds
    it (exit 1, a ``server-error`` finding); a one-example rerun with the same database finds
    it again at once, while a one-example run with a fresh database does not."""
    db = str(tmp_path / "db")
    async with trio.open_nursery() as nursery:
        url = await _toy(nursery, _500_on_z_header)
        common = ["target", url, "--campaign", "http1-valid", "--timeout", "5", "--seed", "5",
                  "--shrink-time", "5", "--quiet"]
        first = await _fuzz(*common, "--max-examples", "400", "--duration", "30",
                            "--database", db, "--report", str(tmp_path / "1.json"))
        assert first.returncode == 1, first.stdout + first.stderr
        found = _report(tmp_path / "1.json")["findings"]
        assert [f["kind"] for f in found] == ["server-error"], found
        again = await _fuzz(*common, "--max-examples", "1", "--duration", "30",
                            "--database", db, "--report", str(tmp_path / "2.json"))
        assert again.returncode == 1, again.stdout + again.stderr
        fresh = await _fuzz(*common, "--max-examples", "1", "--duration", "30",
                            "--database", str(tmp_path / "fresh"),
                            "--report", str(tmp_path / "3.json"))
        assert fresh.returncode == 0, fresh.stdout + fresh.stderr
        nursery.cancel_scope.cancel()


async def test_a_server_that_never_answers_is_a_hang(tmp_path: Path) -> None:
    """A toy server that reads and never answers nor closes: each input is reported as a
    ``hang`` after --timeout, exit 1."""

    async def silent(stream: trio.SocketStream) -> None:
        async with stream:
            await trio.sleep_forever()

    report = tmp_path / "h.json"
    async with trio.open_nursery() as nursery:
        url = await _toy(nursery, silent)
        res = await _fuzz("target", url, "--campaign", "http1-valid", "--max-examples", "2",
                          "--timeout", "1", "--shrink-time", "2", "--duration", "10",
                          "--database", "none", "--report", str(report), "--quiet")
        assert res.returncode == 1, res.stdout + res.stderr
        assert {f["kind"] for f in _report(report)["findings"]} == {"hang"}
        nursery.cancel_scope.cancel()


# ----------------------------------------------------------------------- usage errors


@pytest.mark.parametrize("args", [
    ["target", "http://192.0.2.1:8000/"],
    ["diff", "http://127.0.0.1:9/", "http://[2001:db8::1]:80/"],
])
def test_remote_target_refused_without_allow_remote(args: Sequence[str],
                                                    tmp_path: Path) -> None:
    """A target that does not resolve to loopback is refused before any connection: exit 2,
    and the message names --allow-remote."""
    res = run_to_exit(module_command("fuzz", *args, "--report", str(tmp_path / "r.json")),
                      timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "not a loopback address" in res.stderr and "--allow-remote" in res.stderr
    assert not (tmp_path / "r.json").exists()


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    """An unknown campaign and a diff with one URL are usage errors: exit 2, one clear line."""
    res = run_to_exit(module_command("fuzz", "parser", "--campaign", "nope", "--database",
                                     "none", "--report", str(tmp_path / "r.json")), timeout=60)
    assert res.returncode == 2 and "unknown campaign 'nope'" in res.stderr
    res = run_to_exit(module_command("fuzz", "diff", "http://127.0.0.1:9/"), timeout=60)
    assert res.returncode == 2 and "at least two URLs" in res.stderr


def test_missing_hypothesis_gives_the_install_line() -> None:
    """Without hypothesis, ``trioserve fuzz`` says how to install it (exit 2), no traceback;
    the server itself never imports hypothesis."""
    code = ("import sys; sys.modules['hypothesis'] = None; "
            "from trioserve.cli import main; rc = main(['fuzz', 'parser']); "
            "assert 'hypothesis' not in [m.split('.')[0] for m in sys.modules if sys.modules[m]]; "
            "raise SystemExit(rc)")
    res = run_to_exit([sys.executable, "-c", code], timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "pip install 'trioserve[fuzz]'" in res.stderr
    assert "Traceback" not in res.stderr


# ---------------------------------------------------------------------------- echo app


async def test_echo_app_describes_the_request_exactly() -> None:
    """The echo app, served by trioserve, answers with the request exactly as the server gave
    it: method, raw target with its percent-escapes and query, version, headers in order
    (repeats kept), body; marked with x-trioserve-echo; HEAD carries it in a header."""
    body = b"h\x00ll\xff"
    raw = (b"PATCH /a%2Fb/%7e?q=%20&x HTTP/1.1\r\nHost: example\r\nX-Dup: 1\r\n"
           b"x-dup: 2\r\nX-Obs: caf\xe9\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
           + body)
    async with run_server(echo.app) as srv:
        (resp, payload), = parse_responses(await raw_exchange(srv.port, raw))
        (head_resp, head_body), = parse_responses(await raw_exchange(
            srv.port, b"HEAD /h HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n"), [b"HEAD"])
    assert resp.status_code == 200
    assert dict(resp.headers)[b"x-trioserve-echo"] == b"asgi"
    doc = json.loads(payload)
    assert doc["method"] == "PATCH" and doc["target"] == "/a%2Fb/%7e?q=%20&x"
    assert doc["http_version"] == "1.1"
    assert doc["headers"] == [["host", "example"], ["x-dup", "1"], ["x-dup", "2"],
                              ["x-obs", "caf\xe9"], ["content-length", "5"],
                              ["connection", "close"]]
    assert base64.b64decode(doc["body_base64"]) == body
    assert head_body == b""
    described = json.loads(base64.b64decode(dict(head_resp.headers)[b"x-trioserve-echo-request"]))
    assert described["method"] == "HEAD" and described["target"] == "/h"


# ------------------------------------------------- regressions (review of the fuzz tool)


def _case(raw: bytes, requests: int | None = 1, methods: tuple[bytes, ...] = (b"GET",), *,
          valid: bool = False, must_reject: bool = False, label: str = "valid") -> Http1Case:
    """An :class:`Http1Case` for hand-written bytes; ``valid``: one valid GET the
    application must answer (its ``expected``)."""
    expected = ()
    if valid:
        head, _, _ = raw.partition(b"\r\n\r\n")
        line = head.lstrip(b"\r\n").split(b"\r\n")
        method, target, version = line[0].split(b" ")
        headers = tuple((n.strip().lower(), v.strip())
                        for n, _, v in (h.partition(b":") for h in line[1:]))
        expected = (GeneratedRequest(raw=raw, method=method, target=target,
                                     http_version=version.removeprefix(b"HTTP/"),
                                     headers=headers, body=b""),)
    return Http1Case(raw=raw, requests=requests, methods=methods, expected=expected,
                     must_reject=must_reject, label=label)


async def _judge(url: str, case: Http1Case, *, seconds: float = 5.0) -> str | Finding:
    """``check_http1_target`` (``seconds``: its timeout) run in a thread (its sockets block):
    the outcome, or the :class:`Finding` it raised."""
    target = parse_target(url)

    def run() -> str | Finding:
        try:
            return check_http1_target(target, case, timeout=seconds)
        except Finding as exc:
            return exc

    with trio.fail_after(seconds + 10):
        return await trio.to_thread.run_sync(run)


async def _read_head(stream: trio.SocketStream) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        buf += chunk
    return buf


async def _garbage(stream: trio.SocketStream) -> None:
    """Answers every request with 3000 random bytes, then closes."""
    async with stream:
        with contextlib.suppress(trio.BrokenResourceError):
            await _read_head(stream)
            await stream.send_all(os.urandom(3000))


async def _flood(stream: trio.SocketStream) -> None:
    """Answers one request with a stream of tiny 200 responses, in small writes, until the
    client goes away (at most 20000 writes)."""
    async with stream:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await _read_head(stream)
            for _ in range(20000):
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n" * 2)
                await trio.sleep(0.001)


async def _always_500(stream: trio.SocketStream) -> None:
    """Answers 500 without echoing anything, then closes."""
    async with stream:
        with contextlib.suppress(trio.BrokenResourceError):
            await _read_head(stream)
            await stream.send_all(b"HTTP/1.1 500 Oops\r\ncontent-length: 0\r\n"
                                  b"connection: close\r\n\r\n")


async def _hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers 200 without reading the request body (a common, correct application)."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"hi"})


def test_stable_line_is_linear_and_garbage_is_one_finding_key() -> None:
    """A message quoting many escaped bytes is elided at once (the old pattern matched each
    backslash two ways: seconds at 22 escapes), a cut repr is elided too, and random garbage
    answers all read as one fault (one finding key), whatever bytes they hold."""
    start = time.monotonic()
    line = stable_line("illegal status line: b'" + r"\x00" * 22)  # no closing quote
    assert time.monotonic() - start < 0.5 and line == "illegal status line: …"
    assert stable_line("x b'" + "\\'" * 300) == "x …"
    rnd = random.Random(1)
    keys = {stable_line(f"response bytes are not HTTP/1.1: "
                        f"{read_responses(rnd.randbytes(3000), [b'GET']).error}")
            for _ in range(40)}
    assert len(keys) == 1, keys


async def test_a_garbage_answering_server_is_one_finding(nursery: trio.Nursery) -> None:
    """A toy server answering random bytes: every input gives the same ``bad-response`` key."""
    url = await _toy(nursery, _garbage)
    keys = set()
    for i in range(6):
        got = await _judge(url, _case(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i))
        assert isinstance(got, Finding) and got.kind == "bad-response", got
        keys.add(stable_line(str(got).partition("\n")[0]))
    assert len(keys) == 1, keys


async def test_a_flood_of_responses_is_not_a_hang(nursery: trio.Nursery) -> None:
    """A server answering one request with an endless stream of responses is reported at once
    for passing more requests than were sent (``smuggling``), not as a ``hang`` after the
    timeout: the exchange stops ``linger`` after the answers it waited for, and counting them
    is not re-done on every piece."""
    url = await _toy(nursery, _flood)
    start = trio.current_time()
    got = await _judge(url, _case(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), seconds=4)
    assert isinstance(got, Finding) and got.kind == "smuggling", got
    assert trio.current_time() - start < 3


async def test_diff_reports_a_5xx_as_server_error(nursery: trio.Nursery) -> None:
    """``check_diff`` between trioserve with the echo app and a server answering 500 reports
    a ``server-error`` naming the second (it used to crash comparing echoes)."""
    url = await _toy(nursery, _always_500)
    async with run_server(echo.app) as srv:
        targets = [parse_target(f"ref=http://127.0.0.1:{srv.port}"),
                   parse_target(f"bad={url}")]
        case = _case(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")

        def run() -> Finding | str:
            try:
                return check_diff(targets, case, timeout=5)
            except Finding as exc:
                return exc

        with trio.fail_after(20):
            got = await trio.to_thread.run_sync(run)
    assert isinstance(got, Finding) and got.kind == "server-error", got
    assert "bad 500" in str(got).partition("\n")[0]


async def test_bad_chunk_size_may_reach_an_app_that_ignores_the_body(
        nursery: trio.Nursery) -> None:
    """A chunked request with a bad chunk size: trioserve serving an app that answers without
    reading the body answers 200 from the valid head (no ``accepted-invalid``), while a server
    that lets the smuggled request through is still caught."""
    raw = (b"POST /framing HTTP/1.1\r\nHost: fuzz.example\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"0x5\r\nhello\r\n0\r\n\r\n" + SMUGGLED_REQUEST)
    case = _case(raw, 0, (b"POST",), must_reject=True, label="chunk-size: b'0x5/hello'")
    async with run_server(_hello) as srv:
        got = await _judge(f"http://127.0.0.1:{srv.port}", case)
    assert got == "1 to app, then 2xx", got
    naive = await _toy(nursery, lambda s: _naive_http(s, _ok))
    got = await _judge(naive, case)
    assert isinstance(got, Finding) and got.kind == "smuggling", got


async def test_ordinary_answers_are_not_valid_refused(tmp_path: Path,
                                                      nursery: trio.Nursery) -> None:
    """Python's http.server (no echo app): a 404 for a missing path, 501 to ``OPTIONS *`` and
    no answer to a request after an empty line are not ``valid-refused`` (an application's
    answers, and a SHOULD of RFC 9112 §2.2); a server answering 400 to a valid request is."""
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        for raw, want in [(b"GET /missing HTTP/1.1\r\nHost: a\r\n\r\n", "1 to app, then 4xx"),
                          (b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", "0 to app, then 5xx"),
                          (b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", LEADING_EMPTY_LINE)]:
            got = await _judge(url, _case(raw, valid=True))
            assert got == want, (raw, got)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
    refuser = await _toy(nursery, lambda s: _naive_http(s, _bad_request))
    got = await _judge(refuser, _case(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", valid=True))
    assert isinstance(got, Finding) and got.kind == "valid-refused", got


def _bad_request(head: bytes) -> bytes:
    return b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"


def test_same_seed_same_inputs_and_nothing_in_the_working_directory(tmp_path: Path) -> None:
    """Two runs with the same --seed (no database) try the same inputs (same outcomes), and
    hypothesis writes nothing into the working directory (its constants cache used to land
    in ./.hypothesis even with --database none)."""
    outcomes = []
    for i in range(2):
        report = tmp_path / f"{i}.json"
        res = run_to_exit(module_command(
            "fuzz", "parser", "--campaign", "http1-mutated", "--max-examples", "60",
            "--duration", "30", "--seed", "7", "--database", "none", "--report", str(report),
            "--quiet"), timeout=60, cwd=tmp_path)
        assert res.returncode == 0, res.stdout + res.stderr
        stats = _report(report)["campaigns"]["http1-mutated"]
        outcomes.append((stats["examples"], stats["outcomes"]))
    assert outcomes[0] == outcomes[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.json", "1.json"]


def test_an_unsupported_hypothesis_is_refused(tmp_path: Path) -> None:
    """When hypothesis stops reading the attribute the runner sets the seed with, the run
    stops with exit 2 and says so, instead of silently ignoring --seed."""
    code = ("import sys; import trioserve.fuzz.campaign as c; c._SEED_ATTR = '_gone'; "
            "from trioserve.cli import main; "
            "raise SystemExit(main(['fuzz', 'parser', '--campaign', 'http1-bytes', "
            "'--max-examples', '1', '--database', 'none', '--report', sys.argv[1]]))")
    res = run_to_exit([sys.executable, "-c", code, str(tmp_path / "r.json")], timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "is not supported" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["target", "http://127.0.0.1:0"], "port 0"),
    (["target", "http://127.0.0.1:1", "--campaign", "nope"], "unknown campaign 'nope'"),
])
def test_target_errors_before_any_connection(args: list[str], message: str,
                                             tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Port 0 is refused (it used to become port 80), and an unknown campaign is reported
    before the target is probed: exit 2, one line."""
    assert fuzz_main([*args, "--report", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert parse_target("http://127.0.0.1/").port == 80


@pytest.mark.parametrize(("doc", "message"), [
    ({"command": "target", "findings": [1]}, "finding 0 is not a JSON object"),
    ({"command": "parser", "findings": [{"campaign": "http1-bytes", "message": "m"}]},
     "finding 0 has no 'kind'"),
    ({"command": "target", "timeout": "5", "findings": []}, "'timeout'"),
    ([], "not a JSON object"),
])
def test_replay_refuses_a_malformed_report(doc: Any, message: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """``replay`` of a report with malformed findings exits 2 with one line, no traceback."""
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    assert fuzz_main(["replay", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_usage_error_is_one_line_and_replay_help_names_the_report_timeout(
        capsys: pytest.CaptureFixture[str]) -> None:
    """An option error is one line on stderr (as docs/fuzzing.md says), and ``replay --help``
    says the report's timeout comes before the default."""
    with pytest.raises(SystemExit) as exc:
        fuzz_main(["parser", "--duration", "0"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "expected a positive number of seconds" in err and err.count("\n") == 1, err
    with pytest.raises(SystemExit):
        fuzz_main(["replay", "--help"])
    assert "default the report's, else 35" in " ".join(capsys.readouterr().out.split())
