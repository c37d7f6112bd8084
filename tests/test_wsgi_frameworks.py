"""Real WSGI frameworks served by trioserve's WSGI bridge over real loopback sockets, driven
with httpx: a Flask app and a minimal Django project (``tests/wsgi_django_project``).

Both are wrapped in ``wsgiref.validate.validator`` and every test checks that the run produced
no warnings and no unraisable exceptions (the fixture comes from test_wsgi.py). Only the file
download also runs without the validator, because the validator hides the ``FileWrapper``
behind its own iterator and the bridge's ``sendfile`` path would go untested.

Flask is configured with ``MAX_CONTENT_LENGTH``: without it, since the bridge sets
``wsgi.input_terminated``, Werkzeug reads url-encoded forms with ``wsgi.input.read()`` (no size),
which PEP 3333 servers support but the validator refuses.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import RunningServer
from flask import Flask, Response, redirect, request, send_file, stream_with_context
from test_wsgi import Environ, StartResponse, no_warnings_or_unraisables, wsgi_server
from trioserve.bridges.wsgi import FileWrapper

__all__ = ["no_warnings_or_unraisables"]  # the autouse fixture, shared with test_wsgi.py

TIMEOUT = 30
MiB = 1024 * 1024
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


# ------------------------------------------------------------------------------ apps


class Shared:
    """What a test shares with the views: the streaming view waits for ``proceed``; the
    download view sends ``download``."""

    def __init__(self) -> None:
        self.proceed = threading.Event()
        self.download: Path | None = None


def flask_app(shared: Shared) -> Flask:
    app = Flask("trioserve_wsgi_test")
    app.config["MAX_CONTENT_LENGTH"] = 64 * MiB  # see the module docs

    @app.post("/echo-form")
    def echo_form() -> Any:
        return {"method": request.method,
                "form": {k: request.form.getlist(k) for k in request.form}}

    @app.post("/upload")
    def upload() -> Any:
        f = request.files["file"]
        digest = hashlib.sha256()
        size = 0
        while chunk := f.stream.read(64 * 1024):
            digest.update(chunk)
            size += len(chunk)
        return {"name": f.filename, "size": size, "sha256": digest.hexdigest(),
                "note": request.form.get("note")}

    @app.get("/stream")
    def stream() -> Response:
        def gen() -> Iterator[bytes]:
            yield b"first\n"
            if not shared.proceed.wait(20):
                raise RuntimeError("the client never saw the first chunk")
            for i in range(3):  # the request context is still there (stream_with_context)
                yield b"more %d for %s\n" % (i, request.path.encode())

        return Response(stream_with_context(gen()), mimetype="text/plain")

    @app.get("/download")
    def download() -> Response:
        assert shared.download is not None
        return send_file(shared.download, mimetype="application/octet-stream")

    @app.get("/set-cookie")
    def set_cookie() -> Response:
        response = Response("cookies set", mimetype="text/plain")
        response.set_cookie("flavour", "chocolate chip")
        response.set_cookie("size", "large", httponly=True)
        return response

    @app.get("/show-cookies")
    def show_cookies() -> Any:
        return dict(request.cookies)

    @app.get("/redirect")
    def redirect_view() -> Any:
        return redirect("/landing?from=redirect")

    @app.get("/landing")
    def landing() -> Any:
        return Response(f"landed from {request.args.get('from', 'nowhere')}",
                        mimetype="text/plain")

    return app


_django_app: WSGIApp | None = None


def django_app(shared: Shared) -> WSGIApp:
    """The Django project's WSGI application, set up once per process."""
    global _django_app
    from wsgi_django_project import views

    views.STATE["proceed"] = shared.proceed
    views.STATE["download"] = shared.download
    if _django_app is None:
        from django.conf import settings
        from django.core.wsgi import get_wsgi_application
        from wsgi_django_project import settings as project

        if not settings.configured:  # once per process, without touching os.environ
            settings.configure(**{k: v for k, v in vars(project).items() if k.isupper()})
        _django_app = get_wsgi_application()
    return _django_app


# Django's URLs end with a slash; Flask's do not.
FRAMEWORKS: dict[str, tuple[Callable[[Shared], WSGIApp], Callable[[str], str]]] = {
    "flask": (flask_app, lambda p: p),
    "django": (django_app, lambda p: p + "/"),
}


@pytest.fixture(params=list(FRAMEWORKS))
def framework(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, WSGIApp, Shared,
                                                                       Callable[[str], str]]:
    shared = Shared()
    shared.download = tmp_path / "download.bin"
    shared.download.write_bytes(os.urandom(3 * MiB + 777))
    make, url = FRAMEWORKS[request.param]
    return request.param, make(shared), shared, url


Framework = tuple[str, WSGIApp, Shared, Callable[[str], str]]


@asynccontextmanager
async def serving(app: WSGIApp, *, validate: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    async with wsgi_server(app, validate=validate) as srv, client_for(srv) as client:
        yield client


def client_for(srv: RunningServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=srv.url, timeout=TIMEOUT)


# ----------------------------------------------------------------------------- tests


async def test_form_post(framework: Framework) -> None:
    _, app, _, url = framework
    with trio.fail_after(TIMEOUT):
        async with serving(app) as client:
            r = await client.post(url("/echo-form"),
                                  data={"name": "Zoë & co", "tags": ["a", "b c"], "empty": ""})
    assert r.status_code == 200
    assert r.json() == {"method": "POST",
                        "form": {"name": ["Zoë & co"], "tags": ["a", "b c"], "empty": [""]}}


async def test_20mib_multipart_upload_sha256_matches(framework: Framework) -> None:
    _, app, _, url = framework
    payload = os.urandom(20 * MiB)
    with trio.fail_after(TIMEOUT):
        async with serving(app) as client:
            r = await client.post(url("/upload"), data={"note": "twenty mebibytes"},
                                  files={"file": ("big.bin", payload,
                                                  "application/octet-stream")})
    assert r.status_code == 200
    assert r.json() == {"name": "big.bin", "size": len(payload),
                        "sha256": hashlib.sha256(payload).hexdigest(),
                        "note": "twenty mebibytes"}


async def test_streamed_response_arrives_incrementally(framework: Framework) -> None:
    name, app, shared, url = framework
    with trio.fail_after(TIMEOUT):
        async with serving(app) as client, client.stream("GET", url("/stream")) as r:
            assert r.status_code == 200
            assert r.headers["transfer-encoding"] == "chunked"
            chunks = r.aiter_raw()
            first = b""
            with trio.fail_after(5):
                while not first.endswith(b"\n"):
                    first += await chunks.__anext__()
            # the view is blocked until we set `proceed`: nothing else can have come
            assert first == b"first\n"
            assert not shared.proceed.is_set()
            shared.proceed.set()
            rest = b"".join([c async for c in chunks])
    suffix = b" for /stream" if name == "flask" else b""
    assert rest == b"".join(b"more %d%s\n" % (i, suffix) for i in range(3))


@pytest.mark.parametrize("validate", [True, False], ids=["validated", "sendfile"])
async def test_file_download_through_file_wrapper(framework: Framework, validate: bool) -> None:
    name, app, shared, url = framework
    assert shared.download is not None
    content = shared.download.read_bytes()
    returned: list[type] = []

    def recording(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        result = app(environ, start_response)
        returned.append(type(result))
        return result

    finished_in: list[int] = []

    def on_request_finished(**kwargs: Any) -> None:
        finished_in.append(threading.get_ident())

    if name == "django":
        from django.core.signals import request_finished

        request_finished.connect(on_request_finished, dispatch_uid="trioserve-test")
    try:
        with trio.fail_after(TIMEOUT):
            async with serving(recording, validate=validate) as client:
                for _ in range(2):  # the connection is reused: the response ended cleanly
                    r = await client.get(url("/download"))
                    assert r.status_code == 200
                    assert r.headers["content-length"] == str(len(content))
                    assert hashlib.sha256(r.content).digest() == \
                        hashlib.sha256(content).digest()
    finally:
        if name == "django":
            request_finished.disconnect(dispatch_uid="trioserve-test")
    assert returned == [FileWrapper, FileWrapper]  # the framework used wsgi.file_wrapper
    if name == "django":
        # Django sends request_finished from the file's close() (and closes its thread-local
        # database connections there): that must happen in the worker thread that served the
        # request, not on the Trio loop
        assert len(finished_in) == 2
        assert threading.get_ident() not in finished_in


async def test_cookies_set_and_sent_back(framework: Framework) -> None:
    _, app, _, url = framework
    with trio.fail_after(TIMEOUT):
        async with serving(app) as client:
            r = await client.get(url("/set-cookie"))
            assert r.status_code == 200
            set_cookies = r.headers.get_list("set-cookie")
            assert len(set_cookies) == 2  # two separate headers, never joined
            assert any("HttpOnly" in c and c.lstrip().startswith("size=large")
                       for c in set_cookies)
            assert client.cookies["flavour"].strip('"') == "chocolate chip"
            r = await client.get(url("/show-cookies"))
    assert r.status_code == 200
    assert r.json() == {"flavour": "chocolate chip", "size": "large"}


async def test_redirects_followed(framework: Framework) -> None:
    name, app, _, url = framework
    with trio.fail_after(TIMEOUT):
        async with serving(app) as client:
            r = await client.get(url("/redirect"), follow_redirects=True)
            assert (r.status_code, r.text) == (200, "landed from redirect")
            assert [h.status_code for h in r.history] == [302]
            assert r.url.path == url("/landing")
            if name == "django":  # CommonMiddleware's APPEND_SLASH
                r = await client.get("/landing", follow_redirects=True)
                assert (r.status_code, r.text) == (200, "landed from nowhere")
                assert [h.status_code for h in r.history] == [301]


async def test_django_csrf_protected_form() -> None:
    app = django_app(Shared())
    with trio.fail_after(TIMEOUT):
        async with serving(app) as client:
            r = await client.get("/csrf-form/")
            assert r.status_code == 200
            cookie = client.cookies["csrftoken"]
            m = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', r.text)
            assert m is not None
            token = m.group(1)
            assert token != cookie  # the field carries the masked token

            r = await client.post("/csrf-form/", data={"csrfmiddlewaretoken": token,
                                                       "name": "Ada"})
            assert (r.status_code, r.text) == (200, "thanks, Ada")

            # with the cookie but without the token
            r = await client.post("/csrf-form/", data={"name": "Mallory"})
            assert r.status_code == 403
            # without either (a fresh client has no cookie)
            async with httpx.AsyncClient(base_url=str(client.base_url),
                                         timeout=TIMEOUT) as stranger:
                r = await stranger.post("/csrf-form/", data={"csrfmiddlewaretoken": token,
                                                             "name": "Mallory"})
                assert r.status_code == 403
            # the token in a header works as well as in the form
            async with httpx.AsyncClient(base_url=str(client.base_url), timeout=TIMEOUT,
                                         cookies={"csrftoken": cookie}) as ajax:
                r = await ajax.post("/csrf-form/", data={"name": "Bob"},
                                    headers={"X-CSRFToken": token})
                assert (r.status_code, r.text) == (200, "thanks, Bob")
