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
import json
import sys
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
from trioserve.fuzz.http1 import available_parsers

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
