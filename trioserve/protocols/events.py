"""Events shared by every protocol: what a parser hands the connection.

All events are immutable (frozen dataclasses; the request head a named tuple). Header names
are lower-cased bytes, values are bytes exactly as received (surrounding whitespace stripped,
as RFC 9110 §5.5 requires).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "BodyData",
    "ConnectionClosed",
    "EndOfBody",
    "Headers",
    "ProtocolError",
    "RequestHead",
    "ResponseError",
    "Sentinel",
]

Headers = list[tuple[bytes, bytes]]


class Sentinel(Enum):
    """Non-event results of ``next_event``."""

    NEED_DATA = "need data"
    """More bytes are needed before the next event can be produced."""
    PAUSED = "paused"
    """The current request is complete; call ``start_next_cycle`` after responding."""


NEED_DATA = Sentinel.NEED_DATA
PAUSED = Sentinel.PAUSED


class ProtocolError(Exception):
    """The peer broke the protocol. ``status_hint`` is the response status to answer with
    (400, 413, 414, 431, 501, 505 …); the connection must be closed afterwards."""

    def __init__(self, message: str, status_hint: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status_hint = status_hint


class ResponseError(Exception):
    """The application produced a response the protocol cannot send (bad header, body longer
    than its Content-Length, a second response). The connection must be closed."""


class RequestHead(NamedTuple):
    """A complete, validated request line and header section.

    ``target`` is the raw request-target; ``headers`` keep the order received with lower-cased
    names. ``content_length`` is ``None`` when the body is chunked or absent; ``chunked`` tells
    which. ``upgrade`` is the ``Upgrade`` header value when the request asks to switch protocols.
    ``http_version`` is ``b"1.0"``, ``b"1.1"`` or ``b"2"``.

    A named tuple (immutable, compared by value) rather than a frozen dataclass: one is made per
    request, and a frozen dataclass costs twice as much to build. The protocols make it from
    what they have already validated, so it checks nothing itself.
    """

    method: bytes
    target: bytes
    http_version: bytes
    headers: Headers
    keep_alive: bool
    expects_continue: bool
    content_length: int | None
    chunked: bool
    upgrade: bytes | None = None

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


@dataclass(frozen=True, slots=True)
class BodyData:
    """A piece of request body, de-chunked."""

    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfBody:
    """The request body is complete. ``trailers`` come from a chunked body's trailer section."""

    trailers: Headers


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed its sending side cleanly between requests."""
