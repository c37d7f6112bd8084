"""Loading the application, in whichever process serves it: ``module:attribute`` → object
(:func:`load_app`) → its interface, ASGI 3, WSGI or features (:func:`detect_interface`) →
a trioserve :data:`~trioserve.features.Application` (:func:`wrap_app`); :class:`AppSpec` holds
the flags that say how. Failures are :class:`AppLoadError`, one line each. No argument parsing
here: the command line (:mod:`trioserve.cli`), the supervisor and its workers all use it.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
import traceback
from dataclasses import dataclass
from typing import Any

from .features import Application

__all__ = ["AppLoadError", "AppSpec", "detect_interface", "load_app", "wrap_app"]

log = logging.getLogger("trioserve")


class AppLoadError(Exception):
    """The application could not be imported or is not a usable application."""


@dataclass(frozen=True, slots=True)
class AppSpec:
    """What a process needs to load the application: the flags of that name."""

    app: str
    app_dir: str = "."
    factory: bool = False
    interface: str = "auto"
    lifespan: str = "auto"
    loop: str = "auto"
    threads: int = 40
    log_level: str = "info"

    @classmethod
    def from_args(cls, args: Any) -> AppSpec:
        """The spec from an object with these attributes (the command line's parsed flags:
        an ``argparse.Namespace``). Raises ``AttributeError`` when one is missing."""
        return cls(app=args.app, app_dir=args.app_dir, factory=args.factory,
                   interface=args.interface, lifespan=args.lifespan, loop=args.loop,
                   threads=args.threads, log_level=args.log_level)

    def load(self) -> Application:
        """Import and wrap the application. Raises :class:`AppLoadError`."""
        obj = load_app(self.app, app_dir=self.app_dir, factory=self.factory)
        return wrap_app(obj, self.interface, self.lifespan, self.threads, self.loop)


def _import_location(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    if tb:
        frame = tb[-1]
        return f" ({frame.filename}, line {frame.lineno})"
    return ""


def load_app(spec: str, *, app_dir: str = ".", factory: bool = False) -> Any:
    """Import ``module:attribute`` (the attribute may be dotted) and return it, calling it first
    when ``factory``. Raises :class:`AppLoadError` with a one-line reason."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise AppLoadError(f"APP must look like 'module:attribute', got {spec!r}")
    if app_dir:
        path = os.path.abspath(app_dir)
        if path not in sys.path:
            sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise AppLoadError(f"could not import module {module_name!r}: no module named "
                               f"{exc.name!r} (searched from {os.path.abspath(app_dir)!r})"
                               ) from exc
        raise AppLoadError(f"error while importing {module_name!r}: {exc}"
                           f"{_import_location(exc)}") from exc
    except Exception as exc:
        raise AppLoadError(f"error while importing {module_name!r}: "
                           f"{type(exc).__name__}: {exc}{_import_location(exc)}") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppLoadError(f"attribute {attr!r} not found in module {module_name!r}") \
                from None
    if factory:
        if not callable(obj):
            raise AppLoadError(f"--factory: {spec!r} is not callable")
        try:
            obj = obj()
        except Exception as exc:
            raise AppLoadError(f"--factory: calling {spec!r} failed: "
                               f"{type(exc).__name__}: {exc}{_import_location(exc)}") from exc
    if not callable(obj):
        raise AppLoadError(f"{spec!r} is not callable, so it is not an application")
    return obj


def _positional_count(obj: Any) -> int | None:
    """Positional parameters of the callable (``self`` excluded), ``None`` if unknown."""
    if inspect.isclass(obj):
        return None
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    n = 0
    for prm in sig.parameters.values():
        if prm.kind in (prm.POSITIONAL_ONLY, prm.POSITIONAL_OR_KEYWORD):
            n += 1
        elif prm.kind == prm.VAR_POSITIONAL:
            return None
    return n


def _is_async(obj: Any) -> bool:
    call = type(obj).__call__ if not inspect.isroutine(obj) else None
    return inspect.iscoroutinefunction(obj) or inspect.iscoroutinefunction(call)


def detect_interface(obj: Any) -> str:
    """``"asgi"``, ``"wsgi"`` or ``"features"`` for an application object.

    An ``async`` callable taking three positional parameters is ASGI 3, one parameter a
    features app; a plain (non-async) callable taking two is WSGI. A class is refused (ASGI 2).
    Raises :class:`AppLoadError` when the object fits none of these."""
    if inspect.isclass(obj):
        raise AppLoadError(f"{obj!r} is a class; ASGI 2 applications are not supported "
                           "(pass an instance, or use an ASGI 3 application)")
    n = _positional_count(obj)
    if _is_async(obj):
        if n == 1:
            return "features"
        if n == 3 or n is None:
            return "asgi"
    elif n == 2:
        return "wsgi"
    elif n == 3:
        return "asgi"  # a plain callable returning a coroutine (some ASGI wrappers do)
    raise AppLoadError(f"cannot tell the interface of {obj!r}: it is "
                       f"{'an async' if _is_async(obj) else 'a plain'} callable taking "
                       f"{'an unknown number of' if n is None else n} positional parameters "
                       "(ASGI 3: async (scope, receive, send); WSGI: (environ, start_response); "
                       "features: async (ctx)); use --interface")


def wrap_app(obj: Any, interface: str, lifespan: str, threads: int = 40,
             loop: str = "auto") -> Application:
    """Adapt a loaded object to a trioserve :data:`Application`. Raises :class:`AppLoadError`
    when ``auto`` cannot tell the interface, or for a ``loop`` that cannot be had (the
    asyncio-compat loop without trio-asyncio installed)."""
    if interface == "auto":
        interface = detect_interface(obj)
    # Imported by name: bridges/ is installed as trioserve.bridges, which type checkers
    # looking at the source tree cannot see.
    if interface == "features":
        app: Application = obj
    elif interface == "wsgi":
        app = importlib.import_module("trioserve.bridges.wsgi").WSGIBridge(obj, threads=threads)
    else:
        try:
            app = importlib.import_module("trioserve.bridges.asgi").ASGIBridge(
                obj, lifespan=lifespan, loop=loop)
        except ValueError as exc:
            raise AppLoadError(f"--loop: {exc}") from None
        if app.detected_framework is not None:  # type: ignore[attr-defined]
            log.info("an application built on %s: running it on asyncio through trio-asyncio "
                     "(--loop asyncio-compat; --loop trio to run it on Trio)",
                     app.detected_framework)  # type: ignore[attr-defined]
    if interface != "asgi" and loop == "asyncio-compat":
        log.warning("--loop asyncio-compat applies to ASGI applications only; this %s "
                    "application runs as it is", interface)
    log.debug("serving %r as a %s application", obj, interface)
    return app
