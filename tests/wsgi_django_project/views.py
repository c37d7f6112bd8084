"""Views of the test project. They run in trioserve's WSGI worker threads."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from typing import Any

from django.http import (
    FileResponse,
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    JsonResponse,
    StreamingHttpResponse,
)
from django.middleware.csrf import get_token
from django.utils.html import format_html
from django.views.decorators.csrf import csrf_exempt

# Set by the tests: the event the streaming view waits for, the file the download view sends.
STATE: dict[str, Any] = {"proceed": threading.Event(), "download": None}


@csrf_exempt
def echo_form(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"method": request.method,
                         "form": {k: request.POST.getlist(k) for k in request.POST}})


@csrf_exempt
def upload(request: HttpRequest) -> HttpResponse:
    f = request.FILES["file"]
    digest = hashlib.sha256()
    size = 0
    for chunk in f.chunks(64 * 1024):
        digest.update(chunk)
        size += len(chunk)
    return JsonResponse({"name": f.name, "size": size, "sha256": digest.hexdigest(),
                         "note": request.POST.get("note")})


def stream(request: HttpRequest) -> HttpResponse:
    proceed: threading.Event = STATE["proceed"]

    def gen() -> Iterator[bytes]:
        yield b"first\n"
        if not proceed.wait(20):
            raise RuntimeError("the client never saw the first chunk")
        for i in range(3):
            yield b"more %d\n" % i

    return StreamingHttpResponse(gen(), content_type="text/plain")


def download(request: HttpRequest) -> HttpResponse:
    return FileResponse(open(STATE["download"], "rb"),  # Django closes it
                        content_type="application/octet-stream")


def set_cookie(request: HttpRequest) -> HttpResponse:
    response = HttpResponse("cookies set", content_type="text/plain")
    response.set_cookie("flavour", "chocolate chip")
    response.set_cookie("size", "large", httponly=True)
    return response


def show_cookies(request: HttpRequest) -> HttpResponse:
    return JsonResponse(dict(request.COOKIES))


def redirect_view(request: HttpRequest) -> HttpResponse:
    return HttpResponseRedirect("/landing/?from=redirect")


def landing(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"landed from {request.GET.get('from', 'nowhere')}",
                        content_type="text/plain")


def csrf_form(request: HttpRequest) -> HttpResponse:
    """CSRF-protected (no csrf_exempt): the middleware refuses a POST without the token."""
    if request.method == "POST":
        return HttpResponse(f"thanks, {request.POST['name']}", content_type="text/plain")
    return HttpResponse(format_html(
        '<form method="post"><input type="hidden" name="csrfmiddlewaretoken" value="{}">'
        '<input name="name"></form>', get_token(request)))
