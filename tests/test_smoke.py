import httpx
import trio
from conftest import parse_responses, raw_exchange, run_server

from trioserve.demo import app as demo_app


async def test_demo_json_and_pipelining() -> None:
    with trio.fail_after(10):
        async with run_server(demo_app) as srv:
            async with httpx.AsyncClient(base_url=srv.url) as client:
                r = await client.get("/api/info")
                assert r.status_code == 200
                assert r.json()["path"] == "/api/info"
            data = await raw_exchange(
                srv.port,
                b"GET /api/info HTTP/1.1\r\nHost: a\r\n\r\n"
                b"GET /nope HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            )
            responses = parse_responses(data)
            assert [r.status_code for r, _ in responses] == [200, 404]
