"""Graceful shutdown of a real ``trioserve`` process on SIGTERM/SIGINT: in-flight requests finish,
new connections are refused, idle keep-alive connections close at once, the graceful deadline
cancels what is left, a second signal cancels immediately, and the exit code is 0."""

from __future__ import annotations

import concurrent.futures
import signal
import socket
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from procs import ServerProcess, module_command

pytestmark = pytest.mark.slow

APP = """
    import sys
    import trio

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    print("APP lifespan shutdown", file=sys.stderr, flush=True)
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"]
        if path in ("/slow", "/forever"):
            print(f"APP started {path}", file=sys.stderr, flush=True)
            await trio.sleep(1.5 if path == "/slow" else 10)
            print(f"APP finished {path}", file=sys.stderr, flush=True)
        body = f"done {path}".encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
"""


def start(tmp_path: Path, *extra: str) -> ServerProcess:
    (tmp_path / "slowapp.py").write_text(textwrap.dedent(APP))
    return ServerProcess(module_command("slowapp:app", "--port", "0", "--app-dir",
                                        str(tmp_path), *extra))


def get(port: int, path: str, timeout: float = 15.0) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=timeout)


def refused_within(port: int, seconds: float) -> bool:
    """Poll until a connection to ``port`` is refused."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                pass
        except ConnectionRefusedError:
            return True
        time.sleep(0.02)
    return False


def idle_keep_alive_connection(port: int) -> socket.socket:
    """A connection that completed one request and now sits idle between requests."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n")
    data = b""
    while not data.endswith(b"done /hello"):
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    assert data.startswith(b"HTTP/1.1 200 ")
    assert b"connection: close" not in data.lower()
    return sock


def test_sigterm_drains_in_flight_request(tmp_path: Path) -> None:
    sp = start(tmp_path)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            port = sp.wait_port()
            idle = idle_keep_alive_connection(port)
            in_flight = pool.submit(get, port, "/slow")
            sp.wait_for_line("APP started /slow")
            sp.signal(signal.SIGTERM)

            # the idle keep-alive connection is closed by the server once the drain's grace for
            # a next request (DRAIN_GRACE, 1 s; see tests/test_drain.py) has passed
            idle.settimeout(5.0)
            assert idle.recv(4096) == b""
            idle.close()

            # new connections are refused once the listener has closed
            assert refused_within(port, 2.0)

            # the request in flight during the signal completes normally
            r = in_flight.result(timeout=10)
            assert r.status_code == 200 and r.text == "done /slow"
            assert r.headers.get("connection") == "close"

            assert sp.wait(10) == 0
            assert "APP finished /slow" in sp.stderr
            assert "APP lifespan shutdown" in sp.stderr
            assert "Traceback" not in sp.stderr
        finally:
            sp.close()


def test_graceful_timeout_cancels_long_request(tmp_path: Path) -> None:
    sp = start(tmp_path, "--graceful-timeout", "0.5")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            port = sp.wait_port()
            in_flight = pool.submit(get, port, "/forever")
            sp.wait_for_line("APP started /forever")
            t0 = time.monotonic()
            sp.signal(signal.SIGTERM)
            assert sp.wait(5) == 0
            assert time.monotonic() - t0 < 4.0
            with pytest.raises(httpx.HTTPError):
                in_flight.result(timeout=5)
            assert "APP finished /forever" not in sp.stderr
            assert "APP lifespan shutdown" in sp.stderr  # shutdown still runs after cancelling
            assert "Traceback" not in sp.stderr
        finally:
            sp.close()


def test_second_sigint_cancels_immediately(tmp_path: Path) -> None:
    sp = start(tmp_path)  # graceful timeout: the default 30 s
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            port = sp.wait_port()
            in_flight = pool.submit(get, port, "/forever")
            sp.wait_for_line("APP started /forever")
            sp.signal(signal.SIGINT)
            assert refused_within(port, 2.0)
            time.sleep(0.3)
            assert sp.proc.poll() is None, "the first SIGINT must wait for the request"
            t0 = time.monotonic()
            sp.signal(signal.SIGINT)
            assert sp.wait(5) == 0
            assert time.monotonic() - t0 < 3.0
            with pytest.raises(httpx.HTTPError):
                in_flight.result(timeout=5)
            assert "APP finished /forever" not in sp.stderr
            assert "Traceback" not in sp.stderr
        finally:
            sp.close()


def test_sigterm_with_no_connections_exits_0(tmp_path: Path) -> None:
    sp = start(tmp_path)
    try:
        port = sp.wait_port()
        assert get(port, "/hello").text == "done /hello"
        t0 = time.monotonic()
        sp.signal(signal.SIGTERM)
        assert sp.wait(5) == 0
        assert time.monotonic() - t0 < 3.0
    finally:
        sp.close()


LIFESPAN_APP = """
    import sys
    import trio

    async def app(scope, receive, send):
        assert scope["type"] == "lifespan"
        message = await receive()
        print("APP starting", file=sys.stderr, flush=True)
        await trio.sleep({startup_delay})
        await send({{"type": "lifespan.startup.complete"}})
        await receive()
        print("APP shutting down", file=sys.stderr, flush=True)
        await trio.sleep({shutdown_delay})
        await send({{"type": "lifespan.shutdown.complete"}})
"""


def start_lifespan(tmp_path: Path, startup_delay: float, shutdown_delay: float,
                   *extra: str) -> ServerProcess:
    (tmp_path / "lsapp.py").write_text(textwrap.dedent(LIFESPAN_APP).format(
        startup_delay=startup_delay, shutdown_delay=shutdown_delay))
    return ServerProcess(module_command("lsapp:app", "--port", "0", "--app-dir",
                                        str(tmp_path), *extra))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_startup_exits_cleanly(tmp_path: Path, signum: int) -> None:
    sp = start_lifespan(tmp_path, 30, 0)
    try:
        sp.wait_for_line("APP starting")
        t0 = time.monotonic()
        sp.signal(signum)
        assert sp.wait(10) == 0
        assert time.monotonic() - t0 < 5.0
        assert "Traceback" not in sp.stderr
        assert "listening on" not in sp.stderr
        assert "shutdown requested during start-up" in sp.stderr
    finally:
        sp.close()


def test_hanging_application_shutdown_is_bounded(tmp_path: Path) -> None:
    sp = start_lifespan(tmp_path, 0, 60, "--graceful-timeout", "1")
    try:
        sp.wait_port()
        t0 = time.monotonic()
        sp.signal(signal.SIGTERM)
        sp.wait_for_line("APP shutting down")
        assert sp.wait(10) == 0
        assert time.monotonic() - t0 < 6.0
        assert "did not finish within 1s" in sp.stderr
        assert "Traceback" not in sp.stderr
    finally:
        sp.close()
