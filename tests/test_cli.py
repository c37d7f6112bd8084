"""The command line, run as a real subprocess: ``python -m trioserve`` and the ``trioserve``
script serving the demo app on port 0, the access log, and clear errors with the right exit code
for bad options, unimportable apps and a failing start-up."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import signal
import socket
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import make_config, parse_responses, raw_exchange, run_server
from procs import (
    ACCESS_RE,
    module_command,
    run_to_exit,
    server_process,
    trioserve_script,
)
from trioserve.fuzz.http1 import available_parsers

from trioserve import Config, ConfigError, serve
from trioserve.cli import build_config, build_parser, main
from trioserve.features import RequestContext
from trioserve.protocols.http1 import resolve_parser

pytestmark = pytest.mark.slow

HTTP_TIMEOUT = httpx.Timeout(10.0)


def assert_clean_error(stderr: str, *needles: str) -> None:
    """Exactly one ``trioserve: error:`` line, containing every needle, and no traceback."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("trioserve: error:")]
    assert len(errors) == 1, stderr
    for needle in needles:
        assert needle in errors[0], stderr


def write_module(directory: Path, name: str, source: str) -> None:
    (directory / f"{name}.py").write_text(textwrap.dedent(source))


# An ASGI app reporting what it sees, for the option tests.
SCOPE_APP = """
    import json

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = json.dumps({"path": scope["path"], "root_path": scope["root_path"],
                           "raw_path": scope["raw_path"].decode()}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    def create():
        return app
"""


# ------------------------------------------------------------------------ serving the demo


def test_python_m_trioserve_serves_the_demo() -> None:
    with server_process(module_command("trioserve.demo:app", "--port", "0")) as sp:
        port = sp.wait_port()
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=HTTP_TIMEOUT) as client:
            page = client.get("/")
            assert page.status_code == 200
            assert page.headers["content-type"].startswith("text/html")
            assert "trioserve is running" in page.text
            assert page.headers["server"] == "trioserve"

            info = client.get("/api/info?x=1")
            assert info.status_code == 200
            data = info.json()
            assert data["path"] == "/api/info" and data["query_string"] == "x=1"
            assert data["http_version"] == "1.1" and data["client"][0] == "127.0.0.1"
            assert data["uptime_seconds"] is not None  # lifespan start-up ran

            with client.stream("GET", "/stream?n=4&delay=0.01") as r:
                assert r.status_code == 200
                assert r.headers["transfer-encoding"] == "chunked"
                streamed = b"".join(r.iter_bytes())
            assert streamed == b"line 1\nline 2\nline 3\nline 4\n"

            payload = os.urandom(3 * 1024 * 1024 + 17)
            up = client.post("/upload", content=payload,
                             headers={"content-type": "application/x-test"})
            assert up.status_code == 200
            assert up.headers["content-type"] == "application/x-test"
            assert hashlib.sha256(up.content).hexdigest() == hashlib.sha256(payload).hexdigest()

            assert client.get("/missing").status_code == 404

        # one access log line per request: client, method, target, status, bytes, duration
        expected = [("GET", "/", 200, len(page.content)),
                    ("GET", "/api/info?x=1", 200, len(info.content)),
                    ("GET", "/stream?n=4&delay=0.01", 200, len(streamed)),
                    ("POST", "/upload", 200, len(payload)),
                    ("GET", "/missing", 404, 1)]
        for method, target, status, min_bytes in expected:
            m = sp.wait_for_line(
                re.compile(r'"' + re.escape(f"{method} {target} HTTP/1.1") + r'"'), timeout=5)
            line = ACCESS_RE.search(m.string)
            assert line is not None, m.string
            assert re.fullmatch(r"127\.0\.0\.1:\d+", line["client"])
            assert int(line["status"]) == status
            assert int(line["bytes"]) >= min_bytes
            assert 0 <= float(line["duration"]) < 10
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0
        assert "Traceback" not in sp.stderr


def test_console_script_and_no_access_log() -> None:
    script = trioserve_script()
    if not script.exists():
        pytest.skip(f"no console script at {script}")
    cmd = [str(script), "trioserve.demo:app", "--port", "0", "--no-access-log"]
    with server_process(cmd) as sp:
        port = sp.wait_port()
        r = httpx.get(f"http://127.0.0.1:{port}/api/info", timeout=HTTP_TIMEOUT)
        assert r.status_code == 200 and r.json()["path"] == "/api/info"
        sp.signal(signal.SIGINT)
        assert sp.wait() == 0
        assert ACCESS_RE.search(sp.stderr) is None, sp.stderr


# ------------------------------------------------------------------------- option errors


@pytest.mark.parametrize("args,needle", [
    (["--port", "x"], "--port"),
    (["--port", "70000"], "--port"),
    (["--keep-alive-timeout", "-1"], "--keep-alive-timeout"),
    (["--graceful-timeout", "nan"], "--graceful-timeout"),
    (["--max-body-size", "lots"], "--max-body-size"),
    (["--log-level", "loud"], "--log-level"),
    (["--root-path", "no-slash/"], "root_path"),
    (["--min-body-rate", "-3"], "--min-body-rate"),
    (["--http", "bogus"], "--http"),
], ids=["port-x", "port-range", "keep-alive-negative", "graceful-nan", "body-size-word",
        "log-level", "root-path", "min-body-rate", "http-bogus"])
def test_bad_option_value_exits_2(args: list[str], needle: str) -> None:
    res = run_to_exit(module_command("trioserve.demo:app", *args))
    assert res.returncode == 2, res.stderr
    assert_clean_error(res.stderr, needle)


def test_missing_app_argument_exits_2() -> None:
    res = run_to_exit(module_command())
    assert res.returncode == 2
    assert_clean_error(res.stderr, "APP")


# ------------------------------------------------------------------- app loading errors


def test_unimportable_module_exits_1() -> None:
    res = run_to_exit(module_command("nope:app", "--port", "0"))
    assert res.returncode == 1, res.stderr
    assert_clean_error(res.stderr, "'nope'")


def test_missing_attribute_exits_1() -> None:
    res = run_to_exit(module_command("trioserve.demo:missing", "--port", "0"))
    assert res.returncode == 1, res.stderr
    assert_clean_error(res.stderr, "'missing'", "trioserve.demo")


def test_bad_app_spec_exits_1() -> None:
    res = run_to_exit(module_command("trioserve.demo", "--port", "0"))
    assert res.returncode == 1, res.stderr
    assert_clean_error(res.stderr, "module:attribute")


def test_module_raising_at_import_exits_1(tmp_path: Path) -> None:
    write_module(tmp_path, "boom", """
        raise RuntimeError("kaboom at import")
    """)
    res = run_to_exit(module_command("boom:app", "--port", "0", "--app-dir", str(tmp_path)))
    assert res.returncode == 1, res.stderr
    assert_clean_error(res.stderr, "kaboom at import", "RuntimeError")


def test_module_with_missing_dependency_exits_1(tmp_path: Path) -> None:
    write_module(tmp_path, "needsdep", """
        import surely_not_installed_dependency_xyz
        app = None
    """)
    res = run_to_exit(module_command("needsdep:app", "--port", "0", "--app-dir", str(tmp_path)))
    assert res.returncode == 1, res.stderr
    assert_clean_error(res.stderr, "surely_not_installed_dependency_xyz")


def test_not_callable_app_exits_1(tmp_path: Path) -> None:
    write_module(tmp_path, "notcallable", "app = 42\n")
    res = run_to_exit(module_command("notcallable:app", "--port", "0", "--app-dir",
                                     str(tmp_path)))
    assert res.returncode == 1, res.stderr
    assert_clean_error(res.stderr, "not callable")


# ---------------------------------------------------------------------- lifespan failures


def test_lifespan_startup_failed_message(tmp_path: Path) -> None:
    write_module(tmp_path, "failing", """
        async def app(scope, receive, send):
            if scope["type"] == "lifespan":
                await receive()
                await send({"type": "lifespan.startup.failed",
                            "message": "database unreachable"})
    """)
    res = run_to_exit(module_command("failing:app", "--port", "0", "--app-dir", str(tmp_path)))
    assert res.returncode != 0, res.stderr
    assert_clean_error(res.stderr, "database unreachable")
    assert "listening on" not in res.stderr


def test_lifespan_startup_exception(tmp_path: Path) -> None:
    write_module(tmp_path, "raising", """
        async def app(scope, receive, send):
            if scope["type"] == "lifespan":
                await receive()
                raise ValueError("bad settings file")
    """)
    res = run_to_exit(module_command("raising:app", "--port", "0", "--app-dir", str(tmp_path)))
    assert res.returncode != 0, res.stderr
    assert_clean_error(res.stderr, "bad settings file")


def test_port_in_use_exits_1() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        res = run_to_exit(module_command("trioserve.demo:app", "--port", str(port)))
    assert res.returncode == 1, res.stderr
    assert_clean_error(res.stderr, str(port))


# -------------------------------------------------------------------------------- options


def test_server_header_options(tmp_path: Path) -> None:
    with server_process(module_command("trioserve.demo:app", "--port", "0",
                                       "--no-server-header")) as sp:
        port = sp.wait_port()
        r = httpx.get(f"http://127.0.0.1:{port}/api/info", timeout=HTTP_TIMEOUT)
        assert r.status_code == 200
        assert "server" not in r.headers
        assert "date" in r.headers
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0
    with server_process(module_command("trioserve.demo:app", "--port", "0",
                                       "--server-header", "edge/1")) as sp:
        port = sp.wait_port()
        r = httpx.get(f"http://127.0.0.1:{port}/nothing", timeout=HTTP_TIMEOUT)
        assert r.headers["server"] == "edge/1"
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0


def test_root_path_app_dir_and_factory(tmp_path: Path) -> None:
    write_module(tmp_path, "scopeapp", SCOPE_APP)
    cmd = module_command("scopeapp:create", "--factory", "--app-dir", str(tmp_path),
                         "--root-path", "/prefix", "--port", "0")
    with server_process(cmd) as sp:
        port = sp.wait_port()
        r = httpx.get(f"http://127.0.0.1:{port}/some/where", timeout=HTTP_TIMEOUT)
        assert r.status_code == 200
        assert r.json() == {"path": "/prefix/some/where", "root_path": "/prefix",
                            "raw_path": "/prefix/some/where"}
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0


def test_app_dir_defaults_to_cwd(tmp_path: Path) -> None:
    write_module(tmp_path, "scopeapp", SCOPE_APP)
    with server_process(module_command("scopeapp:app", "--port", "0"), cwd=tmp_path) as sp:
        port = sp.wait_port()
        r = httpx.get(f"http://127.0.0.1:{port}/x", timeout=HTTP_TIMEOUT)
        assert r.json()["path"] == "/x" and r.json()["root_path"] == ""
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0


def test_factory_failure_exits_1(tmp_path: Path) -> None:
    write_module(tmp_path, "badfactory", """
        def create():
            raise LookupError("no config for factory")
    """)
    res = run_to_exit(module_command("badfactory:create", "--factory", "--port", "0",
                                     "--app-dir", str(tmp_path)))
    assert res.returncode == 1, res.stderr
    assert_clean_error(res.stderr, "no config for factory")


def test_inherited_fd() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        port = sock.getsockname()[1]
        fd = sock.fileno()
        with server_process(module_command("trioserve.demo:app", "--fd", str(fd)),
                            pass_fds=(fd,)) as sp:
            assert sp.wait_port() == port
            r = httpx.get(f"http://127.0.0.1:{port}/api/info", timeout=HTTP_TIMEOUT)
            assert r.status_code == 200
            sp.signal(signal.SIGTERM)
            assert sp.wait() == 0
    finally:
        sock.close()


def test_ipv6_host() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("IPv6 loopback is not available")
    with server_process(module_command("trioserve.demo:app", "--host", "::1",
                                       "--port", "0")) as sp:
        port = int(sp.wait_for_line(r"listening on http://\[::1\]:(\d+)").group(1))
        r = httpx.get(f"http://[::1]:{port}/api/info", timeout=HTTP_TIMEOUT)
        assert r.status_code == 200 and r.json()["client"][0] == "::1"
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0


def test_uds(tmp_path: Path) -> None:
    path = tmp_path / "demo.sock"
    with server_process(module_command("trioserve.demo:app", "--uds", str(path))) as sp:
        sp.wait_for_line(re.compile(r"listening on unix:" + re.escape(str(path))), timeout=15)
        transport = httpx.HTTPTransport(uds=str(path))
        with httpx.Client(transport=transport, timeout=HTTP_TIMEOUT) as client:
            r = client.get("http://localhost/api/info")
            assert r.status_code == 200 and r.json()["path"] == "/api/info"
            payload = os.urandom(200_000)
            up = client.post("http://localhost/upload", content=payload)
            assert up.content == payload
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0
    assert not path.exists()


# --------------------------------------------------------------------- HTTP/1.1 parser choice


@pytest.mark.parametrize("parser", available_parsers())
def test_http_option_serves_with_each_installed_parser(parser: str) -> None:
    with server_process(module_command("trioserve.demo:app", "--port", "0", "--http", parser,
                                       "--no-access-log")) as sp:
        port = sp.wait_port()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=HTTP_TIMEOUT) as client:
            info = client.get("/api/info?p=1")
            assert info.status_code == 200 and info.json()["query_string"] == "p=1"
            payload = os.urandom(300_000)
            up = client.post("/upload", content=payload)
            assert up.status_code == 200 and up.content == payload
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0
        assert "Traceback" not in sp.stderr


@pytest.mark.parametrize("choice", ["auto", *available_parsers()])
def test_http_option_reaches_the_config(choice: str) -> None:
    args = build_parser().parse_args(["trioserve.demo:app", "--http", choice])
    assert build_config(args).http_parser == choice


def test_http_parser_defaults_to_auto() -> None:
    args = build_parser().parse_args(["trioserve.demo:app"])
    assert build_config(args).http_parser == "auto" == Config().http_parser


def test_config_refuses_an_unknown_http_parser() -> None:
    with pytest.raises(ConfigError, match=r"Config\.http_parser") as info:
        Config(http_parser="bogus")  # type: ignore[arg-type]
    assert "bogus" in str(info.value)


@pytest.fixture
def without_httptools(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the ``fast`` extra were not installed: the parser module finds no httptools."""
    monkeypatch.setattr("trioserve.protocols.http1.httptools", None)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``main`` installs its stderr handler on the ``trioserve`` logger; put things back."""
    parent = logging.getLogger("trioserve")
    saved = (parent.handlers[:], parent.level, parent.propagate)
    yield
    parent.handlers[:], parent.level, parent.propagate = saved


def test_http_httptools_without_httptools_exits_2(
        without_httptools: None, restore_logging: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trioserve.demo:app", "--port", "0", "--http", "httptools"]) == 2
    err = capsys.readouterr().err
    assert_clean_error(err, "--http", "trioserve[fast]")
    assert "listening on" not in err


def test_auto_falls_back_to_h11_without_httptools(without_httptools: None) -> None:
    assert resolve_parser("auto") == "h11"
    assert available_parsers() == ["h11"]
    with pytest.raises(ValueError, match=r"trioserve\[fast\]"):
        resolve_parser("httptools")


async def test_auto_serves_without_httptools(without_httptools: None) -> None:
    args = build_parser().parse_args(["trioserve.demo:app", "--port", "0", "--no-access-log"])
    config = build_config(args)
    assert config.http_parser == "auto"

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body[::-1]})

    with trio.fail_after(10):
        async with run_server(app, config, lifespan="off") as srv:
            data = await raw_exchange(srv.port, b"POST / HTTP/1.1\r\nHost: x\r\n"
                                                b"Content-Length: 3\r\n\r\nabc"
                                                b"GET / HTTP/1.1\r\nHost: x\r\n"
                                                b"Content-Length: 5, 5\r\n\r\nhello")
    [(ok, body), (bad, _)] = parse_responses(data)
    assert (ok.status_code, body) == (200, b"cba")
    assert bad.status_code == 400


async def test_serve_refuses_httptools_when_it_is_missing(without_httptools: None) -> None:
    called: list[object] = []

    async def app(ctx: RequestContext) -> None:
        called.append(ctx)  # pragma: no cover - never served

    with trio.fail_after(10), pytest.raises(ConfigError) as info:
        await serve(app, make_config(http_parser="httptools"), install_signal_handlers=False)
    assert "Config.http_parser" in str(info.value)
    assert "trioserve[fast]" in str(info.value)
    assert called == []
