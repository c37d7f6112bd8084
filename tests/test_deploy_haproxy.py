"""trioserve behind Debian's HAProxy, configured by ``docs/examples/haproxy.cfg`` as it is (only
its ports and certificate paths replaced), in front of the two trioserve command lines its
comments show:

- TCP mode with ``send-proxy-v2`` in front of ``--proxy-protocol --certfile ...``: TLS passes
  through HAProxy, and the app sees the client's own address and port, carried by the PROXY
  protocol v2 header; a client that connects to trioserve directly, without a PROXY header, is
  refused;
- HTTP mode with ``option forwardfor`` in front of ``--proxy-headers``: the app sees the client's
  address, not HAProxy's nor a forged ``X-Forwarded-For`` entry;
- HAProxy's health checks against trioserve's admin endpoint (``/readyz``) pass for both.

Clients connect from 127.0.0.2; HAProxy, the only trusted peer, from 127.0.0.1.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import trio
from conftest import parse_responses, read_until_closed
from deploy_helpers import (
    ADMIN_RE,
    SERVING_RE,
    Certs,
    HAProxy,
    Listener,
    commented_commands,
    example,
    make_certs,
    runnable_command,
    substitute,
    tool,
)
from procs import ServerProcess, server_process

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(tool("haproxy") is None,
                       reason="HAProxy is not installed (Debian: apt-get install haproxy)"),
]

CLIENT = "127.0.0.2"


@dataclass
class Stack:
    haproxy: HAProxy
    tls_port: int  # HAProxy's TCP-mode frontend (PROXY protocol to trioserve)
    http_port: int  # HAProxy's HTTP-mode frontend (X-Forwarded-For to trioserve)
    pp_server_port: int  # the --proxy-protocol trioserve, directly
    certs: Certs


def _ports(server: ServerProcess) -> tuple[int, int]:
    """(serving port, admin port) from the server's start-up log."""
    serving = int(server.wait_for_line(SERVING_RE, 20).group(2))
    admin = int(server.wait_for_line(ADMIN_RE, 20).group(1))
    return serving, admin


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("haproxy")
    certs = make_certs(tmp / "certs")
    cfg = example("haproxy.cfg")
    pp_command, headers_command = commented_commands(cfg)
    assert "--proxy-protocol" in pp_command and "--proxy-headers" in headers_command
    with server_process(runnable_command(pp_command, {
            "--port": "0", "--admin-bind": "127.0.0.1:0", "--certfile": str(certs.chain),
            "--keyfile": str(certs.key)})) as pp_server, \
            server_process(runnable_command(headers_command, {
                "--port": "0", "--admin-bind": "127.0.0.1:0"})) as headers_server:
        pp_port, pp_admin = _ports(pp_server)
        http_port, http_admin = _ports(headers_server)
        tls, www = Listener(), Listener()
        try:
            config = substitute(cfg, {
                "bind :443": f"bind fd@{tls.fd}",
                "bind :80": f"bind fd@{www.fd}",
                "server app1 127.0.0.1:8443 send-proxy-v2 check port 9443":
                    f"server app1 127.0.0.1:{pp_port} send-proxy-v2 check port {pp_admin}",
                "server app1 127.0.0.1:8000 check port 9000":
                    f"server app1 127.0.0.1:{http_port} check port {http_admin}",
            })
            haproxy = HAProxy(config, tmp / "haproxy", [tls, www])
            try:
                tls.close()  # HAProxy has them now
                www.close()
                yield Stack(haproxy, tls.port, www.port, pp_port, certs)
            finally:
                haproxy.close()
        finally:
            tls.close()
            www.close()


async def _raw_request(port: int, *, tls_ca: str | None) -> tuple[int, bytes, int]:
    """Send ``GET /info`` from 127.0.0.2 to ``port`` (over TLS when ``tls_ca``); returns the
    client's own port, the status and the body."""
    sock = trio.socket.socket()
    await sock.bind((CLIENT, 0))
    await sock.connect(("127.0.0.1", port))
    local_port = sock.getsockname()[1]
    stream: trio.abc.Stream = trio.SocketStream(sock)
    if tls_ca is not None:
        stream = trio.SSLStream(stream, ssl.create_default_context(cafile=tls_ca),
                                server_hostname="localhost")
    async with stream:
        await stream.send_all(b"GET /info HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = await read_until_closed(stream)
    [(response, body)] = parse_responses(data)
    return local_port, body, response.status_code


async def test_proxy_protocol_v2_carries_the_client_address(stack: Stack) -> None:
    with trio.fail_after(30):
        local_port, body, status = await _raw_request(stack.tls_port, tls_ca=str(stack.certs.ca))
    assert status == 200, body
    seen = json.loads(body)
    # HAProxy connected from 127.0.0.1; the PROXY header names the client's own socket
    assert seen["client"] == [CLIENT, local_port], seen
    assert seen["scheme"] == "https", seen


async def test_connection_without_proxy_header_is_refused(stack: Stack) -> None:
    """A client reaching the --proxy-protocol server directly (no PROXY header) gets no
    answer at all: the connection is closed."""
    with trio.fail_after(30):
        sock = trio.socket.socket()
        await sock.bind((CLIENT, 0))
        await sock.connect(("127.0.0.1", stack.pp_server_port))
        async with trio.SocketStream(sock) as stream:
            await stream.send_all(b"GET /info HTTP/1.1\r\nHost: localhost\r\n"
                                  b"X-Forwarded-For: 203.0.113.9\r\n\r\n")
            assert await read_until_closed(stream) == b""


async def test_http_mode_forwardfor(stack: Stack) -> None:
    transport = httpx.AsyncHTTPTransport(local_address=CLIENT)
    async with httpx.AsyncClient(transport=transport, timeout=30) as client:
        r = await client.get(f"http://127.0.0.1:{stack.http_port}/info",
                             headers={"Host": "example.com"})
        forged = await client.get(f"http://127.0.0.1:{stack.http_port}/info", headers={
            "Host": "example.com", "X-Forwarded-For": "203.0.113.9",
            "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"})
    for response in (r, forged):
        seen = response.json()
        assert response.status_code == 200, seen
        assert seen["client"][0] == CLIENT, seen
        assert seen["scheme"] == "http", seen
        assert seen["host"] == "example.com", seen


def test_health_checks_pass_against_the_admin_endpoint(stack: Stack) -> None:
    deadline = time.monotonic() + 20
    while True:
        servers = stack.haproxy.servers()
        states = {name: (row["status"], row["check_status"]) for name, row in servers.items()}
        if all(state == ("UP", "L7OK") for state in states.values()):
            break
        assert time.monotonic() < deadline, states
        time.sleep(0.2)
    assert set(states) == {"trioserve_tls/app1", "trioserve_http/app1"}
