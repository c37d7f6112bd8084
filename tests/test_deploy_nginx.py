"""trioserve behind Debian's nginx, configured by ``docs/examples/nginx.conf`` as it is (only its
ports and certificate paths replaced), in front of the trioserve command line its comment shows.

One nginx (one worker, run as the test user with a temporary prefix) and one trioserve serve the
whole module. Clients connect from 127.0.0.2, so that the client's address differs from nginx's
(127.0.0.1, the only trusted proxy): what the app sees is visibly the client's, not the peer's.

- the client's address and scheme (``X-Forwarded-For``/``-Proto``) reach the ASGI scope, over
  HTTP and over HTTPS, and the prefix of ``location /app/`` its ``root_path``;
- forwarding headers the client forges are overwritten or ignored (right-most untrusted hop);
- nginx keeps its upstream connections alive: many requests, from many client connections,
  arrive on one or two trioserve connections (the app reports each request's connection id);
- a WebSocket passes through;
- a 100 MiB upload is streamed through (``proxy_request_buffering off``): the app is reading it
  before the client has sent half, hashes it chunk by chunk, the digest matches, and trioserve's
  peak memory does not grow by anything like the body's size;
- a client talking to trioserve directly, not through the trusted proxy, cannot forge headers.
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio
import trio_websocket
from deploy_helpers import (
    SERVING_RE,
    Certs,
    Listener,
    commented_commands,
    example,
    make_certs,
    peak_rss,
    run_nginx,
    runnable_command,
    substitute,
    tool,
)
from procs import server_process

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(tool("nginx") is None,
                       reason="nginx is not installed (Debian: apt-get install nginx)"),
]

CLIENT = "127.0.0.2"  # the clients' source address; nginx and trioserve talk over 127.0.0.1
UPLOAD_CHUNK = 1 << 20
UPLOAD_SIZE = 100 * UPLOAD_CHUNK


@dataclass
class Stack:
    http: str  # nginx's plain-HTTP URL
    https: str
    direct: str  # trioserve's own URL, bypassing nginx
    server_pid: int
    certs: Certs


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("nginx")
    certs = make_certs(tmp / "certs")
    conf = example("nginx.conf")
    [command] = commented_commands(conf)
    with server_process(runnable_command(command, {"--port": "0"})) as server:
        m = server.wait_for_line(SERVING_RE, 20)
        port = int(m.group(2))
        http, https = Listener(), Listener()
        try:
            site = substitute(conf, {
                "server 127.0.0.1:8000;": f"server 127.0.0.1:{port};",
                "listen 80;": f"listen 127.0.0.1:{http.port};",
                "listen 443 ssl http2;": f"listen 127.0.0.1:{https.port} ssl http2;",
                "/etc/letsencrypt/live/example.com/fullchain.pem": str(certs.chain),
                "/etc/letsencrypt/live/example.com/privkey.pem": str(certs.key),
            })
            with run_nginx(site, tmp / "prefix", [http, https]):
                http.close()  # nginx has them now
                https.close()
                yield Stack(f"http://127.0.0.1:{http.port}", f"https://127.0.0.1:{https.port}",
                            f"http://127.0.0.1:{port}", server.proc.pid, certs)
        finally:
            http.close()
            https.close()


@pytest.fixture
def client_from_127_0_0_2(stack: Stack) -> httpx.AsyncClient:
    verify = ssl.create_default_context(cafile=str(stack.certs.ca))
    transport = httpx.AsyncHTTPTransport(local_address=CLIENT, verify=verify)
    return httpx.AsyncClient(transport=transport, verify=verify, timeout=30)


async def test_client_address_and_scheme_reach_the_app(
        stack: Stack, client_from_127_0_0_2: httpx.AsyncClient) -> None:
    async with client_from_127_0_0_2 as client:
        for base, scheme in ((stack.http, "http"), (stack.https, "https")):
            r = await client.get(f"{base}/info?x=1", headers={"Host": "example.com"})
            assert r.status_code == 200, r.text
            seen = r.json()
            assert seen["client"][0] == CLIENT, seen
            assert seen["scheme"] == scheme, seen
            assert seen["host"] == "example.com", seen
            assert seen["root_path"] == "" and seen["path"] == "/info", seen


async def test_prefix_location_sets_root_path(
        stack: Stack, client_from_127_0_0_2: httpx.AsyncClient) -> None:
    async with client_from_127_0_0_2 as client:
        r = await client.get(f"{stack.https}/app/items/1", headers={"Host": "example.com"})
    seen = r.json()
    assert r.status_code == 200, seen
    assert (seen["root_path"], seen["path"], seen["scheme"]) == ("/app", "/app/items/1", "https")
    assert seen["client"][0] == CLIENT


async def test_forged_forwarding_headers_do_not_get_through(
        stack: Stack, client_from_127_0_0_2: httpx.AsyncClient) -> None:
    forged = {"Host": "example.com", "X-Forwarded-For": "203.0.113.9",
              "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example",
              "X-Forwarded-Prefix": "/evil"}
    async with client_from_127_0_0_2 as client:
        r = await client.get(f"{stack.http}/info", headers=forged)
    seen = r.json()
    # nginx appends the client to X-Forwarded-For ("203.0.113.9, 127.0.0.2") and overwrites the
    # rest; trioserve takes the right-most address that is not a trusted proxy
    assert seen["client"][0] == CLIENT, seen
    assert seen["scheme"] == "http", seen
    assert seen["host"] == "example.com", seen
    assert seen["root_path"] == "", seen


async def test_upstream_connections_are_kept_alive(stack: Stack) -> None:
    connections = []
    for _ in range(20):
        # a new client connection each time: only nginx's upstream keep-alive can join them
        async with httpx.AsyncClient(timeout=30) as client:
            r = await client.get(f"{stack.http}/info")
        assert r.status_code == 200
        connections.append(r.json()["connection"])
    assert all(connections)
    assert len(set(connections)) <= 2, connections


async def test_websocket_through_nginx(stack: Stack) -> None:
    host, _, port = stack.http.removeprefix("http://").rpartition(":")
    with trio.fail_after(30):
        sock = trio.socket.socket()
        await sock.bind((CLIENT, 0))
        await sock.connect((host, int(port)))
        async with trio.open_nursery() as nursery:
            ws = await trio_websocket.wrap_client_stream(
                nursery, trio.SocketStream(sock), "example.com", "/ws?room=1")
            for text in ("hello", "again"):
                await ws.send_message(text)
                seen = json.loads(await ws.get_message())
                assert seen["echo"] == text
                assert seen["scheme"] == "ws" and seen["path"] == "/ws", seen
                assert seen["client"][0] == CLIENT, seen
            await ws.aclose()


async def test_large_upload_is_streamed(stack: Stack) -> None:
    block = os.urandom(UPLOAD_CHUNK)
    digest = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        for i in range(UPLOAD_SIZE // UPLOAD_CHUNK):
            chunk = i.to_bytes(8, "big") + block[8:]  # every chunk differs
            digest.update(chunk)
            yield chunk
            if i == UPLOAD_SIZE // UPLOAD_CHUNK // 2:
                await app_has_received_some()

    async def app_has_received_some() -> None:
        """Half-way through, the app must already be reading: nginx streams the body rather
        than spooling all of it first."""
        async with httpx.AsyncClient(timeout=10) as direct:
            with trio.fail_after(20):
                # polling another process: no event to wait on
                while not (await direct.get(  # noqa: ASYNC110
                        f"{stack.direct}/progress?id=big")).json()["received"]:
                    await trio.sleep(0.05)

    before = peak_rss(stack.server_pid)
    with trio.fail_after(120):
        async with httpx.AsyncClient(timeout=60) as client:
            r = await client.post(f"{stack.http}/upload?id=big", content=body(),
                                  headers={"Content-Length": str(UPLOAD_SIZE)})
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["size"] == UPLOAD_SIZE
    assert result["sha256"] == digest.hexdigest()
    assert result["max_chunk"] <= 4 * UPLOAD_CHUNK, result  # the app got it piece by piece
    growth = peak_rss(stack.server_pid) - before
    assert growth < 40 * UPLOAD_CHUNK, f"trioserve's peak RSS grew by {growth} bytes"


async def test_direct_client_cannot_forge_headers(stack: Stack) -> None:
    """trioserve trusts 127.0.0.1 only: a client at 127.0.0.2 connecting to it directly (not
    through nginx) gets its forwarding headers ignored."""
    transport = httpx.AsyncHTTPTransport(local_address=CLIENT)
    async with httpx.AsyncClient(transport=transport, timeout=30) as client:
        r = await client.get(f"{stack.direct}/info", headers={
            "X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "evil.example", "X-Forwarded-Prefix": "/evil"})
    seen = r.json()
    assert r.status_code == 200, seen
    assert seen["client"][0] == CLIENT, seen
    assert seen["scheme"] == "http", seen
    assert seen["host"] != "evil.example" and seen["root_path"] == "", seen


def test_example_serves_tls_with_the_certificate_given(stack: Stack) -> None:
    """A sanity check of the set-up itself: nginx presents the test certificate (so the HTTPS
    assertions above are about nginx's TLS, not some other listener)."""
    pem = ssl.get_server_certificate(
        ("127.0.0.1", int(stack.https.rpartition(":")[2])), timeout=10)
    assert pem.strip().splitlines()[1] in Path(stack.certs.chain).read_text()
