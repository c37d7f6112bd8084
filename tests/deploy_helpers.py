"""Shared by the deployment tests (``tests/test_deploy_*.py``): the application they serve, the
configuration examples of ``docs/examples`` with their placeholders replaced, and nginx, HAProxy
and trioserve processes on loopback.

The application (``deploy_helpers:app``, loaded by trioserve with ``--app-dir tests``) is a
features application around an ASGI one: the wrapper hands the connection id (which the ASGI
scope does not carry) to the ASGI app through a context variable, so that a test can count the
connections a proxy opened. The ASGI app answers:

- ``POST /upload?id=ID``: reads the body as it arrives, hashes it, and answers
  ``{"sha256", "size", "chunks", "max_chunk"}``, never holding more than one chunk;
  ``GET /progress?id=ID``: ``{"received": bytes}`` of that upload so far;
- ``GET /slow?seconds=S&id=ID``: answers after ``S`` seconds (``/progress?id=ID`` says 1 once
  it has started);
- a WebSocket: for each text message, ``{"echo": message, ...what it saw}``;
- anything else: what it saw, as JSON: ``client``, ``scheme``, ``host`` (the ``Host`` field),
  ``root_path``, ``path``, ``http_version``, ``connection`` (the id) and ``pid``.

Ports: nginx and HAProxy cannot bind port 0, so the tests bind a socket on port 0 themselves
and hand it over (nginx's ``NGINX`` variable, HAProxy's ``bind fd@N``): no port is ever
guessed. Only ``systemd-socket-activate`` needs a free port number (``procs.free_port``).

This module is imported by the server processes too, so it imports nothing beyond the standard
library and trioserve at module level.
"""

from __future__ import annotations

import contextvars
import csv
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import trio
from trioserve.bridges.asgi import ASGIBridge

from trioserve.features import ConnectionFeature, RequestContext

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
EXAMPLES = REPO / "docs" / "examples"
DEPLOY_MD = REPO / "docs" / "deploy.md"

#: the application every example names, and what the tests serve instead
EXAMPLE_APP = "myproject.main:app"
TEST_APP = "deploy_helpers:app"

SERVING_RE = re.compile(r"listening on (https?)://127\.0\.0\.1:(\d+)")
ADMIN_RE = re.compile(r"admin endpoint on https?://127\.0\.0\.1:(\d+)")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# ------------------------------------------------------------------------- the application

_CONNECTION: contextvars.ContextVar[str] = contextvars.ContextVar("connection", default="")
_RECEIVED: dict[str, int] = {}  # upload id -> body bytes the app has read so far


def _seen(scope: Scope) -> dict[str, Any]:
    host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
    client = scope.get("client")
    return {
        "client": list(client) if client else None,
        "scheme": scope["scheme"],
        "host": host,
        "root_path": scope.get("root_path", ""),
        "path": scope["path"],
        "http_version": scope.get("http_version"),
        "connection": _CONNECTION.get(),
        "pid": os.getpid(),
    }


async def _json(send: Send, payload: dict[str, Any], status: int = 200) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def asgi_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI application described in the module docs."""
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            await send({"type": "websocket.send",
                        "text": json.dumps({"echo": text, **_seen(scope)})})
    if scope["type"] != "http":
        return
    query = parse_qs(scope["query_string"].decode())
    if scope["method"] == "POST" and scope["path"].endswith("/upload"):
        upload = query.get("id", [""])[0]
        digest = hashlib.sha256()
        size = chunks = max_chunk = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            digest.update(chunk)
            size += len(chunk)
            chunks += 1
            max_chunk = max(max_chunk, len(chunk))
            _RECEIVED[upload] = size
            if not message.get("more_body", False):
                break
        await _json(send, {"sha256": digest.hexdigest(), "size": size, "chunks": chunks,
                           "max_chunk": max_chunk})
        return
    if scope["path"].endswith("/slow"):
        _RECEIVED[query.get("id", [""])[0]] = 1  # "it is in the app" for /progress
        await trio.sleep(float(query.get("seconds", ["1"])[0]))
    if scope["path"] == "/progress":
        await _json(send, {"received": _RECEIVED.get(query.get("id", [""])[0], 0)})
        return
    await _json(send, _seen(scope))


_bridge = ASGIBridge(asgi_app, lifespan="off")


async def app(ctx: RequestContext) -> None:
    """The features application trioserve serves: the ASGI app, told the connection id."""
    conn = ctx.features.get(ConnectionFeature)
    _CONNECTION.set(conn.connection_id if conn is not None else "")
    await _bridge(ctx)


# ------------------------------------------------------------------------------- examples

def example(name: str) -> str:
    """The text of ``docs/examples/NAME``."""
    return (EXAMPLES / name).read_text()


def substitute(text: str, replacements: dict[str, str]) -> str:
    """``text`` with each key replaced by its value. Fails naming the key when one does not
    occur: the example changed, and the test must follow."""
    for old, new in replacements.items():
        if old not in text:
            raise AssertionError(f"{old!r} is no longer in the example; update the test")
        text = text.replace(old, new)
    return text


def commented_commands(text: str) -> list[list[str]]:
    """The command lines quoted in an example's comments (``#   trioserve myproject.main:app
    ...``), split as a shell would."""
    return [shlex.split(m.group(1))
            for m in re.finditer(rf"^#\s+(trioserve {re.escape(EXAMPLE_APP)} .*)$", text, re.M)]


def option(argv: Sequence[str], name: str) -> str:
    """The value of ``--name VALUE`` in ``argv``; fails when absent."""
    args = list(argv)
    if name not in args or args.index(name) + 1 >= len(args):
        raise AssertionError(f"{name} is not in {args}")
    return args[args.index(name) + 1]


def runnable_command(argv: Sequence[str], values: dict[str, str]) -> list[str]:
    """A ``trioserve`` command line from an example, made runnable here: this interpreter's
    trioserve, the test application instead of :data:`EXAMPLE_APP`, and each ``--option``
    in ``values`` given that value instead (every one must be in the example)."""
    args = list(argv)
    if args[0] == "trioserve" or args[0].endswith("/trioserve"):
        args = args[1:]
    assert EXAMPLE_APP in args, f"{EXAMPLE_APP} is not in {args}"
    args[args.index(EXAMPLE_APP)] = TEST_APP
    for name, value in values.items():
        option(args, name)
        args[args.index(name) + 1] = value
    return [sys.executable, "-m", "trioserve", *args, "--app-dir", str(TESTS)]


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file: ``{section: {key: [values...]}}``, continuation lines joined."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"not a unit file line: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of a Dockerfile, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        line = pending + stripped
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


# ------------------------------------------------------------------------------ processes

def tool(name: str) -> str | None:
    """The path of a program: on ``PATH``, or in ``/usr/sbin`` (where Debian puts nginx and
    HAProxy, often not on an unprivileged user's ``PATH``); ``None`` if not installed."""
    found = shutil.which(name)
    if found is None and os.access(f"/usr/sbin/{name}", os.X_OK):
        found = f"/usr/sbin/{name}"
    return found


class Listener:
    """A listening TCP socket on ``host`` port 0, for a process that cannot bind port 0
    itself: pass :attr:`fd` to it, then :meth:`close` this process's copy."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_server((host, 0), backlog=128)
        self.host = host
        self.port: int = self.sock.getsockname()[1]
        self.fd = self.sock.fileno()

    def close(self) -> None:
        self.sock.close()


def peak_rss(pid: int) -> int:
    """The process's peak resident set size (``VmHWM``), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for process {pid}")


@dataclass
class Certs:
    """A CA and a server certificate for ``localhost``, ``127.0.0.1`` and ``example.com``."""

    ca: Path
    chain: Path
    key: Path


def make_certs(directory: Path) -> Certs:
    import trustme  # a test dependency: the server processes never import it
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1", "example.com")
    certs = Certs(directory / "ca.pem", directory / "fullchain.pem", directory / "privkey.pem")
    ca.cert_pem.write_to_path(str(certs.ca))
    for i, blob in enumerate(cert.cert_chain_pems):
        blob.write_to_path(str(certs.chain), append=i > 0)
    cert.private_key_pem.write_to_path(str(certs.key))
    return certs


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextmanager
def run_nginx(site: str, prefix: Path, listeners: Sequence[Listener]) -> Iterator[Path]:
    """Run Debian's nginx in the foreground with ``site`` (an ``http``-block file such as
    ``docs/examples/nginx.conf``) inside a minimal main configuration under ``prefix``, on the
    inherited ``listeners`` (each ``listen`` of ``site`` must name one's address). Yields the
    error log's path once nginx has started its worker."""
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "temp").mkdir(exist_ok=True)
    (prefix / "site.conf").write_text(site)
    error_log = prefix / "error.log"
    temp = "\n".join(f"    {kind}_temp_path {prefix / 'temp' / kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (prefix / "nginx.conf").write_text(f"""\
worker_processes 1;
pid {prefix / 'nginx.pid'};
error_log {error_log} notice;
events {{
    worker_connections 256;
}}
http {{
    access_log {prefix / 'access.log'};
{temp}
    include {prefix / 'site.conf'};
}}
""")
    directives = "daemon off;"
    if os.geteuid() == 0:  # else nginx's workers would run as nobody, shut out of prefix
        directives += " user root;"
    proc = subprocess.Popen(
        [tool("nginx") or "nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
         "-g", directives],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        pass_fds=[lst.fd for lst in listeners],
        env={**os.environ, "NGINX": "".join(f"{lst.fd};" for lst in listeners)})
    try:
        deadline = time.monotonic() + 15
        while "start worker process" not in (error_log.read_text() if error_log.exists()
                                              else ""):
            if proc.poll() is not None or time.monotonic() > deadline:
                log = error_log.read_text() if error_log.exists() else ""
                raise AssertionError(f"nginx did not start (exit {proc.returncode}):\n{log}")
            time.sleep(0.05)
        yield error_log
    finally:
        _stop(proc, signal.SIGTERM)
        if error_log.exists():
            print(f"--- nginx error log:\n{error_log.read_text()}")


class HAProxy:
    """Debian's HAProxy in the foreground (``-db``) with a configuration file, plus a
    ``global`` section of the test's own that opens the runtime API on a Unix socket."""

    def __init__(self, config: str, directory: Path, listeners: Sequence[Listener]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.api = directory / "haproxy.sock"
        (directory / "test-global.cfg").write_text(
            f"global\n    stats socket {self.api} mode 600 level admin\n")
        (directory / "haproxy.cfg").write_text(config)
        self.log = directory / "haproxy.log"
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(
            [tool("haproxy") or "haproxy", "-db", "-f", str(directory / "test-global.cfg"),
             "-f", str(directory / "haproxy.cfg")],
            stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT,
            pass_fds=[lst.fd for lst in listeners])
        deadline = time.monotonic() + 15
        while True:
            try:
                self.command("show info")
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise AssertionError(f"HAProxy did not start (exit {self.proc.returncode})"
                                         f":\n{self.log.read_text()}") from None
                time.sleep(0.05)

    def command(self, text: str) -> str:
        """One runtime API command's answer."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.api))
            s.sendall(text.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def servers(self) -> dict[str, dict[str, str]]:
        """``show stat`` for each server, keyed ``backend/server``."""
        text = self.command("show stat").lstrip("# ")
        return {f"{row['pxname']}/{row['svname']}": row
                for row in csv.DictReader(io.StringIO(text))
                if row["svname"] not in ("FRONTEND", "BACKEND")}

    def close(self) -> None:
        _stop(self.proc, signal.SIGTERM)
        self._log_file.close()
        print(f"--- HAProxy log:\n{self.log.read_text()}")
