"""Views of the ASGI test project: sync views (Django runs them in a thread through
asgiref's sync_to_async), async views using asyncio directly, the ORM from async code."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt


async def hello(request: HttpRequest) -> HttpResponse:
    """The smallest async view (what the cost of asyncio-compat is measured with)."""
    return HttpResponse(b"Hello, world!", content_type="text/plain")


def sync_view(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"thread": threading.current_thread().name,
                         "main": threading.current_thread() is threading.main_thread()})


async def async_view(request: HttpRequest) -> HttpResponse:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(0.01)
    return JsonResponse({"loop": type(loop).__name__,
                         "main": threading.current_thread() is threading.main_thread()})


@csrf_exempt
async def users(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        name = request.POST["name"]
        await sync_to_async(User.objects.create_user)(name, password="pw-" + name)
    names = [u.username async for u in User.objects.order_by("username")]
    return JsonResponse({"count": await User.objects.acount(), "names": names})


async def stream(request: HttpRequest) -> HttpResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(5):
            await asyncio.sleep(0.01)
            yield f"chunk {i}\n".encode()

    return StreamingHttpResponse(chunks(), content_type="text/plain")


async def tasks(request: HttpRequest) -> HttpResponse:
    queue: asyncio.Queue[int] = asyncio.Queue()

    async def produce(n: int) -> None:
        await asyncio.sleep(0.005 * n)
        await queue.put(n)

    workers = [asyncio.create_task(produce(n)) for n in range(3)]
    got = sorted([await queue.get() for _ in workers])
    await asyncio.gather(*workers)
    return JsonResponse({"got": got})


async def slow(request: HttpRequest) -> HttpResponse:
    """Sleeps until cancelled; writes a marker file (ASGI_PROJECT_MARKER) when it is."""
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        marker = os.environ.get("ASGI_PROJECT_MARKER")
        if marker:
            # A small blocking write: awaiting here, in a cancelled task, could be cut short.
            Path(marker).write_text("cancelled")  # noqa: ASYNC240
        raise
    return HttpResponse("not cancelled")
