"""Opening listening sockets: TCP (IPv4 and IPv6), Unix sockets and inherited file descriptors.

:func:`open_listeners` binds every :class:`~trioserve.config.Bind` and returns listeners with the
addresses actually bound (the real port when port 0 was asked for). It raises
:class:`ListenError` with the address and the OS's reason when one cannot be bound.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket as stdlib_socket
import stat
from dataclasses import dataclass

import trio

from .config import Bind

__all__ = ["BoundListener", "ListenError", "open_listeners"]


class ListenError(OSError):
    """An address could not be bound; the message names it and says why."""


@dataclass(slots=True)
class BoundListener:
    """A listener and the URL of what it is bound to (``http://127.0.0.1:8000``,
    ``http://[::1]:8000``, ``unix:/run/app.sock``). ``unix_path`` is removed on close."""

    listener: trio.SocketListener
    url: str
    unix_path: str | None = None

    async def aclose(self) -> None:
        await self.listener.aclose()
        if self.unix_path is not None:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.stat(self.unix_path).st_mode):
                    os.unlink(self.unix_path)


def _url_for(sock: trio.socket.SocketType, scheme: str) -> str:
    if sock.family == stdlib_socket.AF_UNIX:
        name = sock.getsockname()
        return f"unix:{name if isinstance(name, str) else name.decode()}"
    host, port = sock.getsockname()[:2]
    if sock.family == stdlib_socket.AF_INET6:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


async def _open_tcp(bind: Bind, backlog: int, scheme: str) -> list[BoundListener]:
    host: str | None = bind.host
    if host in ("", "*"):
        host = None
    try:
        listeners = await trio.open_tcp_listeners(bind.port, host=host, backlog=backlog)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            reason = "address already in use"
        raise ListenError(exc.errno or 0, f"cannot listen on {bind.describe()}: {reason}") \
            from None
    return [BoundListener(lst, _url_for(lst.socket, scheme)) for lst in listeners]


async def _open_unix(bind: Bind, backlog: int) -> BoundListener:
    path = bind.path
    assert path is not None
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            # A stale socket from a previous run; a live server would still answer on it.
            probe = stdlib_socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)
            else:
                raise ListenError(errno.EADDRINUSE,
                                  f"cannot listen on unix:{path}: another server is using it")
            finally:
                probe.close()
    except FileNotFoundError:
        pass
    sock = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    try:
        await sock.bind(path)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ListenError(exc.errno or 0,
                          f"cannot listen on unix:{path}: {exc.strerror or exc}") from None
    return BoundListener(trio.SocketListener(sock), f"unix:{path}", unix_path=path)


def _open_fd(bind: Bind, backlog: int, scheme: str) -> BoundListener:
    assert bind.fd is not None
    try:
        raw = stdlib_socket.socket(fileno=bind.fd)
    except OSError as exc:
        raise ListenError(exc.errno or 0,
                          f"cannot use fd {bind.fd}: {exc.strerror or exc}") from None
    if raw.type != stdlib_socket.SOCK_STREAM:
        raw.detach()
        raise ListenError(0, f"fd {bind.fd} is not a stream socket")
    raw.setblocking(False)
    try:
        raw.listen(backlog)
    except OSError as exc:
        raw.detach()
        raise ListenError(exc.errno or 0,
                          f"fd {bind.fd} cannot listen: {exc.strerror or exc}") from None
    sock = trio.socket.from_stdlib_socket(raw)
    return BoundListener(trio.SocketListener(sock), _url_for(sock, scheme))


async def open_listeners(binds: tuple[Bind, ...], backlog: int,
                         scheme: str = "http") -> list[BoundListener]:
    """Bind every address in order; TCP URLs use ``scheme`` (``https`` with TLS). On failure,
    listeners opened so far are closed and :class:`ListenError` is raised."""
    opened: list[BoundListener] = []
    try:
        for bind in binds:
            if bind.kind == "tcp":
                opened.extend(await _open_tcp(bind, backlog, scheme))
            elif bind.kind == "unix":
                opened.append(await _open_unix(bind, backlog))
            else:
                opened.append(_open_fd(bind, backlog, scheme))
    except BaseException:
        for bl in opened:
            await bl.aclose()
        raise
    return opened
