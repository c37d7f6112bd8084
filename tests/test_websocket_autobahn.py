"""Autobahn TestSuite conformance of trioserve's WebSockets: kosoku's fuzzing client against
trioserve serving the ASGI echo app (tests/ws_echo_app.py) in a subprocess.

Every case of sections 1-10 and 12-13 must end OK, NON-STRICT or INFORMATIONAL, closing
handshake included (kosoku's ``passed``). Skipped when kosoku is not installed.

Knobs (environment): AUTOBAHN_CASES and AUTOBAHN_EXCLUDE (case ids or globs, space-separated)
narrow the selection for a local run, AUTOBAHN_TIMEOUT (seconds) bounds it, and
AUTOBAHN_PARALLELISM sets how many cases kosoku runs at once, AUTOBAHN_FULL=1 adds the slowest
compression variants the suite leaves out by default (see HEAVY). kosoku's reports, index.html
included, stay in the test's tmp_path (pytest keeps the last three runs' directories).
"""

from __future__ import annotations

import base64
import os
import socket
from pathlib import Path

import pytest
from autobahn import (
    DEFAULT_CASES,
    KosokuUnavailable,
    failures,
    format_failures,
    kosoku_command,
    run_autobahn,
    section_seconds,
    summary,
)
from procs import module_command, server_process

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent

CASES = tuple(os.environ.get("AUTOBAHN_CASES", "").split()) or DEFAULT_CASES
# Sections 12 and 13 (permessage-deflate, 1000 echoes per case) are nearly all of the run's
# time, and their variants 14-18 (64-128 KiB messages cut into 256- to 32768-byte fragments)
# are 60% of it: on 2 cores the whole selection takes ~5-8 min at deflate level 1, which with
# the rest of the suite is too close to CI's 15 minutes. So the suite leaves those ten variants
# per subsection out; the same sizes unfragmented (12.x.9-10), and fragmentation at 8-32 KiB
# (12.x.11-13), stay. AUTOBAHN_FULL=1 runs them too (the full selection passes: 517 cases).
HEAVY = tuple(f"{section}.*.{variant}" for section in (12, 13) for variant in range(14, 19))
EXCLUDE = tuple(os.environ.get("AUTOBAHN_EXCLUDE", "").split()) or (
    () if os.environ.get("AUTOBAHN_FULL") else HEAVY)
# This bound only ends a run that hangs.
TIMEOUT = float(os.environ.get("AUTOBAHN_TIMEOUT", "900"))
# two cases at once: kosoku's client side (the case files run in Python) overlaps the server's
PARALLELISM = int(os.environ.get("AUTOBAHN_PARALLELISM", "2"))


def websocket_handshake(port: int, timeout: float = 10.0) -> bytes:
    """The head of the server's answer to a WebSocket opening handshake on ``/``."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    return head.partition(b"\r\n\r\n")[0]


def test_autobahn_fuzzingclient_against_trioserve(tmp_path: Path) -> None:
    try:
        kosoku_command()
    except KosokuUnavailable as exc:
        pytest.skip(f"kosoku (the Autobahn TestSuite runner) is not installed: {exc}")

    # --ws-ping-interval 0: no keepalive pings. Autobahn's cases end at the first event they do
    # not expect, and the 12.x/13.x cases expect none: a ping arriving in one of them (the
    # default 20 s interval, in a case that lasts longer) makes kosoku close the connection
    # and report FAILED, "Case did not finish within 480 seconds".
    # --ws-deflate-level 1: the compression level changes no byte of the protocol, only zlib's
    # effort, and sections 12-13 (1000 echoes of up to 128 KiB per case) are mostly that:
    # level 1 halves their time in CI. The default level is exercised by the other tests.
    cmd = module_command("ws_echo_app:app", "--app-dir", str(TESTS), "--host", "127.0.0.1",
                         "--port", "0", "--no-access-log", "--ws-ping-interval", "0",
                         "--ws-deflate-level", "1")
    with server_process(cmd) as sp:
        port = sp.wait_port()
        head = websocket_handshake(port)
        status = head.split(b"\r\n", 1)[0]
        assert status.startswith(b"HTTP/1.1 101"), (
            f"trioserve did not accept a WebSocket handshake: {head.decode('latin-1')!r}")

        results = run_autobahn(port, CASES, EXCLUDE, timeout=TIMEOUT, concurrency=PARALLELISM,
                               report_dir=tmp_path / "autobahn")

        # shown by pytest with a failure, and with -rP
        print(f"{len(results)} cases, behavior {summary(results)}, "
              f"close {summary(results, close=True)}")
        print("wall seconds per pattern: "
              + ", ".join(f"{k} {v:.1f}" for k, v in results.wall_seconds.items()))
        print("case seconds per subsection: "
              + ", ".join(f"{k} {v:.1f}" for k, v in section_seconds(results, 2).items()))
        print(f"reports: {results.report_dir}")
        assert sp.proc.poll() is None, f"trioserve exited during the run:\n{sp.stderr}"

    bad = failures(results)
    assert results, "kosoku ran no case"
    assert not bad, (
        f"{len(bad)} of {len(results)} Autobahn cases did not pass "
        f"(behavior {summary(results)}, close {summary(results, close=True)}; reports in "
        f"{results.report_dir}):\n{format_failures(results, wirelog=False, limit=60)}")
