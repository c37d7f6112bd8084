"""WebSockets from a real browser: headless Chromium (Debian's ``chromium`` package) loads a page
from a server running in a subprocess, talks to its ``/ws`` endpoint and POSTs what it saw to
``/report`` (the app is ``tests/ws_browser_app.py``, written with Starlette).

Each test runs against trioserve and, for comparison, against Uvicorn (``pip install uvicorn
websockets``; skipped when not installed): :func:`server_argv` builds either command line.
``pytest tests/test_websocket_browser.py -k uvicorn`` runs only the Uvicorn cases.

Over HTTPS trioserve offers HTTP/2 by ALPN; Chromium then sends WebSockets over HTTP/2 (RFC 8441)
only if the server's SETTINGS enable the extended CONNECT, else over a separate HTTP/1.1
connection. Either is accepted; the test prints which HTTP version the page, the ``/report``
fetch and the WebSocket used (``pytest -s`` shows it).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trustme
import ws_browser_app as plan
from procs import REPO, ServerProcess, child_env, server_process

pytestmark = pytest.mark.slow

TESTS_DIR = Path(__file__).resolve().parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SERVERS = ("trioserve", "uvicorn")
# "trioserve listening on http://127.0.0.1:PORT", "Uvicorn running on https://127.0.0.1:PORT"
PORT_RE = re.compile(r"(?:listening on|running on) https?://127\.0\.0\.1:(\d+)")
SERVER_START_TIMEOUT = 30.0
REPORT_TIMEOUT = 90.0  # Chromium's start-up on a loaded 2-core machine plus the page's own 30 s


def server_argv(server: str, *, certfile: Path | None = None,
                keyfile: Path | None = None) -> list[str]:
    """The command serving ``ws_browser_app:app`` on 127.0.0.1, port 0 (HTTPS with a
    certificate), logging its port on stderr."""
    common = ["ws_browser_app:app", "--app-dir", str(TESTS_DIR), "--host", "127.0.0.1",
              "--port", "0"]
    if server == "trioserve":
        argv = [sys.executable, "-m", "trioserve", *common]
        if certfile is not None:
            argv += ["--certfile", str(certfile), "--keyfile", str(keyfile)]
        return argv
    if server == "uvicorn":
        argv = [sys.executable, "-m", "uvicorn", *common, "--log-level", "info"]
        if certfile is not None:
            argv += ["--ssl-certfile", str(certfile), "--ssl-keyfile", str(keyfile)]
        return argv
    raise ValueError(f"unknown server {server!r}")


def chromium_argv(url: str, profile: Path, *, tls: bool) -> list[str]:
    argv = [
        CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
        f"--user-data-dir={profile}",
        "--no-first-run", "--no-default-browser-check", "--disable-extensions",
        "--disable-default-apps", "--disable-sync", "--disable-background-networking",
        "--disable-component-update", "--disable-domain-reliability", "--disable-breakpad",
        "--disable-client-side-phishing-detection", "--no-pings", "--no-proxy-server",
        "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
        "--disable-dev-shm-usage", "--mute-audio",
        # no name resolves: the browser can reach nothing but the 127.0.0.1 it is given
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ]
    if tls:
        argv.append("--ignore-certificate-errors")
    argv.append(url)
    return argv


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "uvicorn":
        for module in ("uvicorn", "websockets"):
            if importlib.util.find_spec(module) is None:
                pytest.skip(f"{module} is not installed (pip install uvicorn websockets): "
                            "the Uvicorn comparison needs it")
    return name


@pytest.fixture
def chromium() -> str:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"Chromium is not installed ({CHROMIUM} missing; on Debian: "
                    "apt-get install chromium)")
    return CHROMIUM


@contextmanager
def browser(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run Chromium in its own process group; the whole group is killed on exit, whatever
    happened."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=child_env(), cwd=REPO,
                                start_new_session=True)
    try:
        yield proc
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass


def tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return "(none)"


def wait_for_report(path: Path, sp: ServerProcess, chrome: subprocess.Popen[bytes],
                    chrome_log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + REPORT_TIMEOUT
    while not path.exists():
        if sp.proc.poll() is not None:
            raise AssertionError(f"the server exited ({sp.proc.returncode}) before the report:\n"
                                 f"{sp.stderr}")
        if chrome.poll() is not None:
            raise AssertionError(f"Chromium exited ({chrome.returncode}) before the report:\n"
                                 f"{tail(chrome_log)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no report within {REPORT_TIMEOUT}s.\nChromium:\n"
                                 f"{tail(chrome_log)}\nserver:\n{sp.stderr}")
        time.sleep(0.1)
    report: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return report


def short(message: dict[str, Any]) -> dict[str, Any]:
    """A message as compared: long text as its length and hash, for a readable diff."""
    if message.get("type") == "text" and len(message.get("data", "")) > 200:
        data = message["data"]
        return {"type": "text", "length": len(data),
                "sha256": hashlib.sha256(data.encode()).hexdigest()}
    return message


def text(data: str) -> dict[str, Any]:
    return short({"type": "text", "data": data})


def binary(data: bytes) -> dict[str, Any]:
    return {"type": "binary", "hex": data.hex()}


def run_browser_session(server: str, chromium: str, tmp_path: Path, *,
                        tls: bool) -> dict[str, Any]:
    certfile = keyfile = None
    if tls:
        ca = trustme.CA()
        cert = ca.issue_cert("localhost", "127.0.0.1")
        certfile, keyfile = tmp_path / "server.pem", tmp_path / "server-key.pem"
        cert.cert_chain_pems[0].write_to_path(str(certfile))
        for blob in cert.cert_chain_pems[1:]:
            blob.write_to_path(str(certfile), append=True)
        cert.private_key_pem.write_to_path(str(keyfile))
    report_path = tmp_path / "report.json"
    cmd = server_argv(server, certfile=certfile, keyfile=keyfile)
    with server_process(cmd, env={"WS_BROWSER_REPORT": str(report_path)}) as sp:
        port = int(sp.wait_for_line(PORT_RE, SERVER_START_TIMEOUT).group(1))
        url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/"
        chrome_log = tmp_path / "chromium.log"
        started = time.monotonic()
        with browser(chromium_argv(url, tmp_path / "profile", tls=tls), chrome_log) as chrome:
            report = wait_for_report(report_path, sp, chrome, chrome_log)
        elapsed = time.monotonic() - started
    browser_side, server_side = report["browser"], report["server"]
    conns = server_side["connections"]
    print(f"\n[{server}, {'https' if tls else 'http'}] report after {elapsed:.1f}s: "
          f"page over {browser_side['navigationProtocol']!r} "
          f"(server saw HTTP/{server_side['page_http_version']}), /report fetch over "
          f"HTTP/{server_side['report_http_version']}, WebSocket over "
          f"{['HTTP/' + str(c['http_version']) for c in conns]}, "
          f"extensions {browser_side['extensions']!r}, finish {browser_side['finish']!r}, "
          f"events {browser_side['events']}, errors {browser_side['errors']}")
    return report


def check_report(report: dict[str, Any], *, tls: bool) -> None:
    b, s = report["browser"], report["server"]
    replies = [text(plan.SERVER_HELLO)]
    replies += [text(plan.echo_text(t)) for t in plan.TEXTS]
    replies.append(binary(plan.BINARY))
    sent = [text(t) for t in plan.TEXTS] + [binary(plan.BINARY), text(plan.CLOSE_REQUEST)]

    outcome = (f"page events {b['events']}, close {b['close']}, errors {b['errors']}, "
               f"finish {b['finish']!r}; server-side WebSocket connections "
               f"{[{k: v for k, v in c.items() if k != 'received'} for c in s['connections']]} "
               "(the server's log is in the captured stdout)")
    assert b["errors"] == [], outcome
    assert b["finish"] == "closed", outcome
    assert b["events"] == ["open", "close"], outcome  # no "error" event
    assert re.fullmatch(("wss" if tls else "ws") + r"://127\.0\.0\.1:\d+/ws", b["url"]), b["url"]
    assert b["protocol"] == plan.SUBPROTOCOL
    # what the browser received, in order: the greeting came before any echo
    assert [short(m) for m in b["received"]] == replies
    assert [short(m) for m in b["sent"]] == sent
    assert b["close"] == {"code": plan.CLOSE_CODE, "reason": plan.CLOSE_REASON,
                          "wasClean": True}

    # the server side saw one connection with the same messages, and closed it itself
    assert len(s["connections"]) == 1, s["connections"]
    conn = s["connections"][0]
    assert conn["scheme"] == ("wss" if tls else "ws")
    assert conn["path"] == "/ws"
    assert plan.SUBPROTOCOL in conn["subprotocols"]
    assert [short(m) for m in conn["received"]] == sent
    assert conn["end"] == {"by": "server", "code": plan.CLOSE_CODE}
    # HTTP/1.1 upgrade, or HTTP/2 extended CONNECT (RFC 8441) over TLS
    assert conn["http_version"] in (("1.1", "2") if tls else ("1.1",))
    if not tls:
        assert b["navigationProtocol"] == "http/1.1"


def test_browser_websocket(server: str, chromium: str, tmp_path: Path) -> None:
    report = run_browser_session(server, chromium, tmp_path, tls=False)
    check_report(report, tls=False)


def test_browser_websocket_over_tls(server: str, chromium: str, tmp_path: Path) -> None:
    report = run_browser_session(server, chromium, tmp_path, tls=True)
    check_report(report, tls=True)
    if server == "uvicorn":  # Uvicorn has no HTTP/2
        assert report["browser"]["navigationProtocol"] == "http/1.1"
