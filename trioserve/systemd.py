"""systemd integration without libsystemd: socket activation and ``sd_notify``.

- :func:`listen_fds` returns the listening sockets systemd passed (``LISTEN_FDS``,
  ``LISTEN_PID``; ``sd_listen_fds(3)``) and removes those variables from the environment, so
  child processes do not take the sockets for their own.
- :func:`notify` sends a state string (``READY=1``, ``STOPPING=1``, ``WATCHDOG=1``,
  ``STATUS=...``) to ``NOTIFY_SOCKET`` (``sd_notify(3)``); without the variable it does nothing.
- :func:`watchdog_interval` is how often to send ``WATCHDOG=1`` (half of ``WATCHDOG_USEC``), or
  ``None`` when the watchdog is off or meant for another process.

No I/O blocks: the notification socket is a datagram socket, sent to without waiting.
"""

from __future__ import annotations

import os
import socket

__all__ = ["ENVIRONMENT", "SD_LISTEN_FDS_START", "listen_fds", "notify", "watchdog_interval"]

SD_LISTEN_FDS_START = 3
# What systemd tells the main process alone: a supervisor keeps it from its workers.
ENVIRONMENT = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
               "LISTEN_FDNAMES")


def listen_fds(*, unset_environment: bool = True) -> list[int]:
    """The file descriptors systemd passed for this process (3, 4, ...), empty if none, each
    set close-on-exec (as ``sd_listen_fds(3)`` does: the application's child processes must
    not inherit them).

    Descriptors meant for another process (``LISTEN_PID`` missing or not ours) are ignored.
    Raises :class:`ValueError` when ``LISTEN_FDS`` or ``LISTEN_PID`` is not a number."""
    fds_text = os.environ.get("LISTEN_FDS")
    pid_text = os.environ.get("LISTEN_PID")
    if unset_environment:
        for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            os.environ.pop(name, None)
    if not fds_text:
        return []
    try:
        count = int(fds_text)
        pid = int(pid_text) if pid_text else None
    except ValueError:
        raise ValueError(f"LISTEN_FDS={fds_text!r} LISTEN_PID={pid_text!r}: expected numbers "
                         "(set by systemd socket activation)") from None
    if pid != os.getpid():
        return []
    fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + max(count, 0)))
    for fd in fds:
        try:
            os.set_inheritable(fd, False)
        except OSError:
            pass  # not open: listeners.open_listeners says so, naming it
    return fds


def _address() -> str | bytes | None:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return None
    if path.startswith("@"):  # the abstract namespace
        return b"\0" + path[1:].encode()
    return path


def notify(state: str) -> bool:
    """Send ``state`` to systemd's notification socket; ``True`` if it was sent.

    Without ``NOTIFY_SOCKET`` (not run by systemd with ``Type=notify``) nothing is sent and the
    result is ``False``; a failed send is ``False`` too (systemd may be stopping)."""
    address = _address()
    if address is None:
        return False
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.setblocking(False)
        sock.sendto(state.encode(), address)
    except OSError:
        return False
    finally:
        sock.close()
    return True


def watchdog_interval() -> float | None:
    """Seconds between ``WATCHDOG=1`` notifications: half of ``WATCHDOG_USEC``, as
    ``sd_watchdog_enabled(3)`` advises; ``None`` when the watchdog is off or set for another
    process (``WATCHDOG_PID``)."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec or _address() is None:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    try:
        if pid and int(pid) != os.getpid():
            return None
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None
