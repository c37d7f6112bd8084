"""asyncio-only ASGI apps on Trio: ``--loop asyncio-compat`` (trio-asyncio) and its ``auto``
detection, with a real Django project (``tests/asgi_django_project``: sync and async views, the
ORM on SQLite through ``sync_to_async``, a streaming response, the admin) served by the
``trioserve`` command, and an app that uses asyncio directly served in-process."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import make_config, run_server
from procs import module_command, server_process
from trioserve.bridges.asgi import ASGIBridge, asyncio_framework

from trioserve import serve
from trioserve.features import LifespanFailure

pytest.importorskip("trio_asyncio")

TESTS = Path(__file__).resolve().parent
TIMEOUT = 30


# ------------------------------------------------------------ an app that uses asyncio itself

async def asyncio_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """asyncio.get_running_loop, create_task, sleep, Queue, run_in_executor (a thread pool of
    its own, as asgiref uses) and asgiref's sync_to_async, in one request; lifespan state set
    after an asyncio.sleep."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await asyncio.sleep(0.01)
                scope["state"]["started_on"] = type(asyncio.get_running_loop()).__name__
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    from asgiref.sync import sync_to_async

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str] = asyncio.Queue()

    async def producer() -> None:
        await asyncio.sleep(0.01)
        await queue.put("queued")

    task = asyncio.create_task(producer())
    item = await asyncio.wait_for(queue.get(), 5)
    await task
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        in_pool = await loop.run_in_executor(pool, lambda: threading.current_thread().name)
    in_thread = await sync_to_async(lambda: threading.current_thread() is not
                                    threading.main_thread())()
    body = (f"{item} {type(loop).__name__} {in_pool.startswith('ThreadPoolExecutor')} "
            f"{in_thread} {scope['state'].get('started_on')}").encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "h2c"])
async def test_asyncio_app_runs_on_asyncio_compat(http2: bool) -> None:
    bridge = ASGIBridge(asyncio_app, loop="asyncio-compat")
    with trio.fail_after(TIMEOUT):
        async with run_server(bridge, asgi=False) as srv, httpx.AsyncClient(
                http1=not http2, http2=http2) as client:
            url = f"http://127.0.0.1:{srv.port}/"
            responses = [await client.get(url) for _ in range(3)]
            together = await _gather([lambda: client.get(url) for _ in range(5)])
    for r in [*responses, *together]:
        assert r.status_code == 200
        assert r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
        assert r.text == "queued TrioEventLoop True True TrioEventLoop"


async def _gather(calls: list[Any]) -> list[Any]:
    results: list[Any] = [None] * len(calls)

    async def one(i: int) -> None:
        results[i] = await calls[i]()

    async with trio.open_nursery() as nursery:
        for i in range(len(calls)):
            nursery.start_soon(one, i)
    return results


async def test_asyncio_websocket_app() -> None:
    """A WebSocket app that uses asyncio between messages, on asyncio-compat."""
    from trio_websocket import open_websocket_url

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            await asyncio.sleep(0.001)
            loop = type(asyncio.get_running_loop()).__name__
            await send({"type": "websocket.send", "text": f"{message['text']} {loop}"})

    with trio.fail_after(TIMEOUT):
        async with run_server(ASGIBridge(app, loop="asyncio-compat"), asgi=False) as srv, \
                open_websocket_url(f"ws://127.0.0.1:{srv.port}/") as ws:
            for word in ("one", "two"):
                await ws.send_message(word)
                assert await ws.get_message() == f"{word} TrioEventLoop"


async def test_asyncio_app_on_trio_fails_with_a_message_naming_asyncio_compat(
        caplog: pytest.LogCaptureFixture) -> None:
    """On plain Trio the same app gets 500s and one ERROR that says what to do, without a
    traceback; later requests log at DEBUG only. Its lifespan fails with the same hint."""
    bridge = ASGIBridge(asyncio_app, loop="trio", lifespan="off")
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(TIMEOUT):
        async with run_server(bridge, asgi=False) as srv, httpx.AsyncClient() as client:
            responses = [await client.get(f"http://127.0.0.1:{srv.port}/") for _ in range(2)]
    assert [r.status_code for r in responses] == [500, 500]
    assert all(r.text == "Internal Server Error\n" for r in responses)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "--loop asyncio-compat" in errors[0].getMessage()
    assert errors[0].exc_info is None
    assert sum("--loop asyncio-compat" in r.getMessage() for r in caplog.records) == 2

    with pytest.raises(LifespanFailure, match="--loop asyncio-compat"), \
            trio.fail_after(TIMEOUT):
        await serve(ASGIBridge(asyncio_app, loop="trio", lifespan="on"), make_config(),
                    install_signal_handlers=False)


async def test_app_exceptions_reach_the_server_and_trio_cancels_the_asyncio_task(
        caplog: pytest.LogCaptureFixture) -> None:
    """An exception in the app's asyncio task is the server's usual 500 (logged with its
    traceback); the graceful-shutdown deadline, a Trio cancellation, cancels the app's asyncio
    task (it sees CancelledError); a client that leaves is seen by receive() as
    http.disconnect."""
    seen: list[str] = []
    started = trio.Event()
    disconnected = trio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            assert (await receive())["type"] == "lifespan.startup"
            await send({"type": "lifespan.startup.complete"})
            assert (await receive())["type"] == "lifespan.shutdown"
            # After the requests: the request's task must have been cancelled by then, by
            # the deadline itself, not by the loop's final clean-up after this.
            seen.append("lifespan.shutdown")
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == "/fail":
            await asyncio.sleep(0)
            raise ValueError("the app failed")
        if scope["path"] == "/disconnect":
            await receive()  # the (empty) body
            seen.append((await receive())["type"])
            disconnected.set()  # (a Trio event: set from the asyncio task, in the same thread)
            return
        try:
            asyncio.get_running_loop().call_soon(lambda: None)
            started.set()  # (a Trio event: set from the asyncio task, in the same thread)
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    config = make_config(timeouts={"graceful": 0.5})
    bridge = ASGIBridge(app, loop="asyncio-compat")
    with trio.fail_after(TIMEOUT):
        async with run_server(bridge, config, asgi=False) as srv:
            async with httpx.AsyncClient() as client:
                failed = await client.get(f"http://127.0.0.1:{srv.port}/fail")
            assert failed.status_code == 500
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            await stream.send_all(b"GET /disconnect HTTP/1.1\r\nHost: x\r\n\r\n")
            await trio.sleep(0.1)
            await stream.aclose()
            await disconnected.wait()
            slow = await trio.open_tcp_stream("127.0.0.1", srv.port)
            await slow.send_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            await started.wait()
        # leaving run_server began the graceful shutdown; its deadline cancelled /slow
        await slow.aclose()
    assert seen == ["http.disconnect", "cancelled", "lifespan.shutdown"]
    assert any("exception in application" in r.getMessage() and r.exc_info is not None
               and "the app failed" in str(r.exc_info[1]) for r in caplog.records)


def test_auto_detects_asyncio_only_frameworks() -> None:
    from django.core.handlers.asgi import ASGIHandler
    from starlette.applications import Starlette

    class Middleware:  # keeps the app it wraps in .app, as ASGI middleware do
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await self.app(scope, receive, send)

    django_app = ASGIHandler.__new__(ASGIHandler)  # no settings needed to tell what it is
    assert asyncio_framework(django_app) == "Django"
    assert asyncio_framework(Middleware(Middleware(django_app))) == "Django"
    assert asyncio_framework(Starlette()) is None
    assert asyncio_framework(asyncio_app) is None
    assert ASGIBridge(Middleware(django_app)).loop == "asyncio-compat"
    assert ASGIBridge(Starlette()).loop == "trio"
    assert ASGIBridge(asyncio_app).loop == "trio"  # nothing tells: trio (and the hint above)


# ------------------------------------------------------------------ a real Django project

def _migrate(db: Path) -> None:
    """Create the project's tables and an admin user in a fresh SQLite file."""
    env = {"ASGI_PROJECT_DB": str(db), "DJANGO_SETTINGS_MODULE": "asgi_django_project.settings",
           "PYTHONPATH": str(TESTS)}
    script = ("import django; django.setup(); from django.core.management import call_command; "
              "call_command('migrate', verbosity=0); "
              "from django.contrib.auth.models import User; "
              "User.objects.create_superuser('admin', 'admin@example.test', 'secret-pw')")
    subprocess.run([sys.executable, "-c", script], env={**os.environ, **env}, check=True,
                   timeout=120, cwd=TESTS)


@pytest.fixture(scope="module")
def django_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("django") / "db.sqlite3"
    _migrate(db)
    return db


@pytest.fixture
def django_server(django_db: Path, tmp_path: Path,
                  request: pytest.FixtureRequest) -> Iterator[tuple[Any, str, Path]]:
    loop = getattr(request, "param", "auto")
    marker = tmp_path / "cancelled"
    cmd = module_command("asgi_django_project.asgi:application", "--app-dir", str(TESTS),
                         "--port", "0", "--loop", loop, "--graceful-timeout", "1")
    env = {"ASGI_PROJECT_DB": str(django_db), "ASGI_PROJECT_MARKER": str(marker),
           "DJANGO_SETTINGS_MODULE": "asgi_django_project.settings"}
    with server_process(cmd, env=env) as srv:
        port = srv.wait_port(60)
        yield srv, f"http://127.0.0.1:{port}", marker


def test_django_project_on_asyncio_compat(django_server: tuple[Any, str, Path]) -> None:
    srv, base, _ = django_server
    srv.wait_for_line("an application built on Django: running it on asyncio")
    with httpx.Client(base_url=base, timeout=TIMEOUT) as client:
        assert client.get("/hello/").text == "Hello, world!"
        sync = client.get("/sync/").json()
        assert sync["main"] is False and sync["thread"].startswith("ThreadPoolExecutor")
        assert client.get("/async/").json() == {"loop": "TrioEventLoop", "main": True}
        assert client.get("/tasks/").json() == {"got": [0, 1, 2]}
        before = client.get("/users/").json()
        assert before["names"] == ["admin"]
        created = client.post("/users/", data={"name": "zoe"}).json()
        assert created == {"count": 2, "names": ["admin", "zoe"]}
        with client.stream("GET", "/stream/") as streamed:
            assert streamed.headers.get("transfer-encoding") == "chunked"
            assert list(streamed.iter_lines()) == [f"chunk {i}" for i in range(5)]

        login = client.get("/admin/login/")
        assert login.status_code == 200 and "Log in | Django site admin" in login.text
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text)
        assert token is not None
        done = client.post("/admin/login/?next=/admin/", data={
            "csrfmiddlewaretoken": token.group(1), "username": "admin", "password": "secret-pw",
            "next": "/admin/"})
        assert done.status_code == 302 and done.headers["location"] == "/admin/"
        admin = client.get("/admin/")
        assert admin.status_code == 200 and "Site administration" in admin.text
    assert "ERROR" not in srv.stderr


def test_django_request_is_cancelled_by_the_shutdown_deadline(
        django_server: tuple[Any, str, Path]) -> None:
    """SIGTERM with --graceful-timeout 1: the view's asyncio task is cancelled (it writes the
    marker in its CancelledError handler) and the server exits 0."""
    srv, base, marker = django_server
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /slow/ HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.5)  # the view is sleeping in asyncio by now (a longer wait only delays)
        srv.signal(signal.SIGTERM)
        assert srv.wait(30) == 0
    assert marker.read_text() == "cancelled"


@pytest.mark.parametrize("django_server", ["trio"], indirect=True)
def test_django_on_plain_trio_names_asyncio_compat(django_server: tuple[Any, str, Path]) -> None:
    srv, base, _ = django_server
    with httpx.Client(base_url=base, timeout=TIMEOUT) as client:
        assert client.get("/async/").status_code == 500
        assert client.get("/sync/").status_code == 500
    line = srv.wait_for_line("ERROR").string
    assert "--loop asyncio-compat" in line
    assert "Traceback" not in srv.stderr


def test_asyncio_compat_without_trio_asyncio_is_a_clear_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from django.core.handlers.asgi import ASGIHandler

    from trioserve.loading import AppLoadError, wrap_app

    monkeypatch.setitem(sys.modules, "trio_asyncio", None)  # as if not installed
    with pytest.raises(ValueError, match=r"pip install 'trioserve\[asyncio\]'"):
        ASGIBridge(asyncio_app, loop="asyncio-compat")
    with pytest.raises(AppLoadError, match=r"--loop: .*Django.*trioserve\[asyncio\].*loop "
                                           r"'trio'"):
        wrap_app(ASGIHandler.__new__(ASGIHandler), "auto", "auto", loop="auto")
    assert ASGIBridge(asyncio_app, loop="trio").loop == "trio"  # trio needs nothing more


def test_cli_asyncio_compat_without_trio_asyncio_exits_2_before_importing_the_app() -> None:
    script = ("import sys; sys.modules['trio_asyncio'] = None; "
              "sys.argv = ['trioserve', 'no_such_module:app', '--loop', 'asyncio-compat']; "
              "from trioserve.cli import run; run()")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "trioserve: error: --loop: loop 'asyncio-compat' needs trio-asyncio: pip install "
        "'trioserve[asyncio]'")


async def test_system_exit_in_the_app_is_a_500_and_the_loop_lives_on() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/exit":
            await asyncio.sleep(0)
            sys.exit(3)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"alive"})

    with trio.fail_after(TIMEOUT):
        async with run_server(ASGIBridge(app, loop="asyncio-compat"), asgi=False) as srv, \
                httpx.AsyncClient() as client:
            url = f"http://127.0.0.1:{srv.port}"
            assert (await client.get(url + "/exit")).status_code == 500
            after = await client.get(url + "/")
    assert after.status_code == 200 and after.text == "alive"


async def test_a_lifespan_that_returns_after_startup_keeps_the_loop_open() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
            return  # allowed by the spec: no shutdown handling
        await asyncio.sleep(0)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"served"})

    with trio.fail_after(TIMEOUT):
        async with run_server(ASGIBridge(app, loop="asyncio-compat"), asgi=False) as srv, \
                httpx.AsyncClient() as client:
            responses = [await client.get(f"http://127.0.0.1:{srv.port}/") for _ in range(2)]
    assert [r.text for r in responses] == ["served", "served"]


async def test_the_shutdown_deadline_cancels_an_app_waiting_for_a_thread() -> None:
    """``asyncio.to_thread`` (the loop's default executor): the graceful deadline cancels the
    app's task at once; the server does not wait for the thread's 20 seconds."""
    seen: list[str] = []
    waiting = trio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        waiting.set()
        try:
            await asyncio.to_thread(time.sleep, 20)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    config = make_config(timeouts={"graceful": 0.5})
    with trio.fail_after(10):
        async with run_server(ASGIBridge(app, loop="asyncio-compat"), config,
                              asgi=False) as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await waiting.wait()
        await stream.aclose()
    assert seen == ["cancelled"]


async def test_fastapi_on_plain_trio_calling_asyncio_logs_the_hint_without_a_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    """FastAPI's error middleware answers the 500 itself and re-raises: the bridge logs the
    hint once and nothing more (no traceback)."""
    from fastapi import FastAPI

    api = FastAPI()

    @api.get("/")
    async def index() -> dict[str, str]:
        await asyncio.sleep(0)
        return {"never": "reached"}

    caplog.set_level(logging.INFO)
    with trio.fail_after(TIMEOUT):
        async with run_server(ASGIBridge(api, loop="auto", lifespan="off"),
                              asgi=False) as srv, httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{srv.port}/")
    assert response.status_code == 500
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "--loop asyncio-compat" in errors[0].getMessage(), \
        [r.getMessage() for r in errors]
    assert errors[0].exc_info is None
