"""HTTP/2 server protocol (RFC 9113, HPACK RFC 7541) over h2, sans-IO: bytes in, events out.

h2 does the framing, HPACK, the stream state machine and flow-control accounting; this module
wraps it with what a server needs and h2 leaves to its caller:

- settings from :class:`~trioserve.config.Http2Limits`: concurrent streams, frame size, HPACK
  table size, header list size, and the initial stream and connection windows (the connection
  window is raised with a WINDOW_UPDATE right after the preface);
- requests as :class:`StreamRequest` events carrying the same :class:`RequestHead` HTTP/1.1
  produces (``http_version`` ``b"2"``): pseudo-header fields taken out, ``:authority`` as
  ``host`` when the request has none, ``cookie`` crumbs joined (RFC 9113 §8.2.3);
- the request fields validated in one pass (h2's own inbound validation is off): a malformed
  request (RFC 9113 §8.1.1, §8.2, §8.3: bad names or values, connection-specific fields,
  pseudo-header faults, ``host`` differing from ``:authority``, a ``content-length`` with no
  body) is a stream error, RST_STREAM ``PROTOCOL_ERROR``; a ``content-length`` that is not
  digits is refused by h2 first, as a connection error;
- checks answered on that stream alone with :class:`StreamRefused`: the header count and size
  limits (431), a ``:path`` that is not origin-form, ``*`` or visible ASCII (400);
- ``SETTINGS_MAX_CONCURRENT_STREAMS``: a stream over it gets ``REFUSED_STREAM`` (h2 ends the
  connection only at twice the limit); settings that shrink what the client may send (a stream
  window below 65535, an HPACK table below 4096) apply once acknowledged (RFC 9113 §6.5.3);
- an oversize frame is refused as soon as its header arrives (h2 would buffer it first), and an
  unfinished header block once it holds four times the header list limit (ENHANCE_YOUR_CALM);
- floods: the frames that carry no request are counted (:attr:`HTTP2Protocol.control_frames`)
  for the caller to hold to a rate, with the DATA it sends paying for the client's
  WINDOW_UPDATEs; SETTINGS identifiers h2 does not know are ignored, not stored;
- the response side: response fields validated like HTTP/1.1's, names lower-cased, the
  connection-specific ones (``connection``, ``transfer-encoding`` …) dropped, ``date`` and
  ``server`` added; bodies longer than their ``content-length`` refused; DATA frames cut to the
  peer's frame size and window (:meth:`HTTP2Protocol.send_data` sends what the window allows
  and returns how much);
- flow control as backpressure: received DATA is not acknowledged until the application has
  consumed it (:meth:`HTTP2Protocol.consumed`), so the peer can never have more than a window
  of body in flight per stream and per connection;
- graceful shutdown: :meth:`HTTP2Protocol.goaway` sends GOAWAY with the last stream id
  processed while h2 stays open, so streams in flight finish; later streams are refused
  (``REFUSED_STREAM``, safe for the client to retry).

A connection error (invalid preface, frame size, window overflow, a frame on a closed stream,
an endless header block …) raises :class:`~trioserve.protocols.events.ProtocolError` from
:meth:`HTTP2Protocol.receive_data` after the GOAWAY with the right error code was queued: send
:meth:`HTTP2Protocol.data_to_send` and close. Stream errors are answered with RST_STREAM and
reported as :class:`StreamReset` only when they concern a stream the application has.

No I/O and no Trio here.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from dataclasses import dataclass
from typing import Any, Final

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hpack
import hpack.exceptions
import hpack.table
import hyperframe.exceptions
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PushPromiseFrame,
    RstStreamFrame,
)

from .events import Headers, ProtocolError, RequestHead, ResponseError
from .http1 import (
    check_response_field,
    checked_response_field,
    date_header_value,
    response_content_length,
)

__all__ = [
    "PREFACE",
    "ConnectionEnded",
    "H2Event",
    "HTTP2Protocol",
    "StreamData",
    "StreamEnded",
    "StreamRefused",
    "StreamRequest",
    "StreamReset",
    "WindowOpened",
    "valid_h2c_settings",
]

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
"""The client connection preface (RFC 9113 §3.4): how prior-knowledge HTTP/2 is recognised."""

NO_ERROR: Final = 0
PROTOCOL_ERROR: Final = 1
INTERNAL_ERROR: Final = 2
FRAME_SIZE_ERROR: Final = 6
REFUSED_STREAM: Final = 7
CANCEL: Final = 8
COMPRESSION_ERROR: Final = 9
ENHANCE_YOUR_CALM: Final = 11

# Fields that mean something only to a single HTTP/1.1 connection (RFC 9113 §8.2.2); an app's
# response may carry them (WSGI apps often do), HTTP/2 must not.
_CONNECTION_FIELDS: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})
# ... and te, which only a request may carry (RFC 9113 §8.2.2): dropped from responses.
_NOT_IN_RESPONSES: Final = _CONNECTION_FIELDS | {b"te"}
_PATH_RE: Final = re.compile(rb"/[\x21-\x7e]*")
_DIGITS_RE: Final = re.compile(rb"[0-9]{1,18}")
_NO_BODY_STATUSES: Final = frozenset({204, 304})
_METHOD_RE: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # a token
_SCHEME_RE: Final = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*")
# uri-host [":" port] (RFC 3986 §3.2.2), no userinfo (RFC 9113 §8.3.1)
_AUTHORITY_RE: Final = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)(?::[0-9]*)?")
_NUL_CR_LF_RE: Final = re.compile(rb"[\x00\r\n]")
_FIELD_NAME_RE: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")  # a token, lower case
_BAD_VALUE_RE: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]|^[ \t]|[ \t]$")
# Request fields found valid (exact pairs up to _VALID_FIELD_MAX bytes): clients send the same
# user-agent, accept … on every request. Emptied when full: a bound, not an LRU.
_VALID_FIELDS: Final[set[tuple[bytes, bytes]]] = set()
_VALID_FIELDS_MAX: Final = 4096
_VALID_FIELD_MAX: Final = 256
_STATUS_BYTES: Final = {s: b"%d" % s for s in range(100, 1000)}


# ------------------------------------------------------------------------------ HPACK

_hpack_log: Final = logging.getLogger("hpack.hpack")
_HPACK_CACHE_ENTRIES: Final = 16
_HPACK_CACHE_KEY_MAX: Final = 512  # bytes of a header block remembered (decoder)
_PLAIN_TUPLES: Final = frozenset({tuple})
# The coders below count the dynamic table's changes through HeaderTable.add and its maxsize
# setter: only with an hpack built that way (4.x).
_HPACK_CACHING: Final = isinstance(getattr(hpack.table.HeaderTable, "maxsize", None), property) \
    and callable(getattr(hpack.table.HeaderTable, "add", None))


class _CountingTable(hpack.table.HeaderTable):
    """An HPACK dynamic table that counts its changes: an entry added (and any evicted) or
    a new maximum size. A header block coded without a change codes the same way again until
    the next one."""

    def __init__(self) -> None:
        super().__init__()
        self.changes = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.changes += 1
        super().add(name, value)

    @property
    def maxsize(self) -> int:
        return hpack.table.HeaderTable.maxsize.fget(self)  # type: ignore[attr-defined,no-any-return]

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        self.changes += 1
        hpack.table.HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined]


class _CachingDecoder(hpack.Decoder):
    """hpack's decoder, remembering the fields of header blocks that decoded without changing
    the dynamic table (all indexed or literal without indexing): the same bytes give the same
    fields until the table, the list size limit or the table size limit changes. Not while
    hpack's own debug log is on (it would miss lines)."""

    header_table: _CountingTable

    def __init__(self) -> None:
        super().__init__()
        self.header_table = _CountingTable()
        self.max_allowed_table_size = self.header_table.maxsize
        self._cache: dict[bytes, tuple[hpack.HeaderTuple, ...]] = {}
        self._cache_state: tuple[int, int, int] = (-1, 0, 0)

    def decode(self, data: bytes, raw: bool = False) -> list[hpack.HeaderTuple]:
        if not raw or type(data) is not bytes or _hpack_log.isEnabledFor(logging.DEBUG):
            return super().decode(data, raw)  # type: ignore[return-value]
        table = self.header_table
        state = (table.changes, self.max_header_list_size, self.max_allowed_table_size)
        cache = self._cache
        if state != self._cache_state:
            cache.clear()
            self._cache_state = state
        else:
            fields = cache.get(data)
            if fields is not None:
                return list(fields)
        headers: list[hpack.HeaderTuple] = super().decode(data, True)  # type: ignore[assignment]
        if table.changes == state[0] and len(data) <= _HPACK_CACHE_KEY_MAX:
            if len(cache) >= _HPACK_CACHE_ENTRIES:
                cache.clear()
            cache[data] = tuple(headers)
        return headers


class _CachingEncoder(hpack.Encoder):
    """hpack's encoder, remembering the header blocks of field lists that encoded without
    changing the dynamic table (every field indexed): the same list encodes to the same bytes
    until the table changes. Only lists of plain ``(name, value)`` tuples (what
    :meth:`HTTP2Protocol.send_headers` and friends give h2): a ``NeverIndexedHeaderTuple``
    equals the plain tuple but must not be coded like it. Not while hpack's own debug log is
    on."""

    header_table: _CountingTable

    def __init__(self) -> None:
        super().__init__()
        self.header_table = _CountingTable()
        self._cache: dict[tuple[tuple[bytes, bytes], ...], bytes] = {}
        self._cache_changes = -1

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        table = self.header_table
        if not huffman or table.resized or type(headers) is not list \
                or set(map(type, headers)) != _PLAIN_TUPLES \
                or _hpack_log.isEnabledFor(logging.DEBUG):
            return super().encode(headers, huffman)
        changes = table.changes
        cache = self._cache
        if changes != self._cache_changes:
            cache.clear()
            self._cache_changes = changes
        key = tuple(headers)
        block = cache.get(key)
        if block is not None:
            return block
        block = super().encode(headers, True)
        if table.changes == changes:
            if len(cache) >= _HPACK_CACHE_ENTRIES:
                cache.clear()
            cache[key] = block
        return block


# ----------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """A request opened stream ``stream_id``. ``end_stream``: it has no body."""

    stream_id: int
    head: RequestHead
    end_stream: bool


@dataclass(frozen=True, slots=True)
class StreamRefused:
    """A request the protocol refused before the application: answer ``status`` with
    ``message`` on this stream (the connection goes on). ``end_stream`` as for a request."""

    stream_id: int
    status: int
    message: str
    end_stream: bool
    method: bytes


@dataclass(frozen=True, slots=True)
class StreamData:
    """Request body bytes. ``flow_length`` (the DATA frame's length with padding) is what to
    pass to :meth:`HTTP2Protocol.consumed` once the application has taken them."""

    stream_id: int
    data: bytes
    flow_length: int


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The request body is complete (END_STREAM), with its trailer fields if any."""

    stream_id: int
    trailers: Headers


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The stream ended abnormally: the peer reset it (``remote``), or the protocol did for a
    stream error. Its request is aborted; nothing more can be sent on it."""

    stream_id: int
    error_code: int
    remote: bool


@dataclass(frozen=True, slots=True)
class WindowOpened:
    """The peer granted send window: on ``stream_id``, or on every stream (``0``: the
    connection window, or a new initial window size)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class ConnectionEnded:
    """The peer sent GOAWAY: no new streams will come. ``error_code`` 0 is a clean goodbye:
    the streams in flight may still complete (then close once they are done); with another
    code nothing more can be sent."""

    error_code: int
    last_stream_id: int


H2Event = StreamRequest | StreamRefused | StreamData | StreamEnded | StreamReset | WindowOpened \
    | ConnectionEnded


class _Out:
    """The send side of one stream's response."""

    __slots__ = ("body_allowed", "content_length", "sent")

    def __init__(self, body_allowed: bool, content_length: int | None) -> None:
        self.body_allowed = body_allowed
        self.content_length = content_length
        self.sent = 0


# --------------------------------------------------------------------------- protocol


# Frames that carry a request (HEADERS, CONTINUATION: bounded by the header limits) or end
# the connection; every other frame a client sends is a control frame.
_NOT_CONTROL: Final = frozenset({HeadersFrame, ContinuationFrame, GoAwayFrame, PushPromiseFrame})


class _SettingValues(list[int]):
    """The values of one setting, current first (what h2 keeps in a ``deque``): the same
    operations in 64 bytes instead of a deque's 760, times 2 x 8 settings per connection."""

    __slots__ = ()

    def popleft(self) -> int:
        return self.pop(0)


def _compact_settings(settings: h2.settings.Settings) -> None:
    """Swap h2's per-setting deques for :class:`_SettingValues` (h2 adds a deque for each
    setting code it had not seen)."""
    values: dict[Any, Any] = settings._settings  # h2 types them as deques
    for code, queue in values.items():
        if type(queue) is not _SettingValues:
            values[code] = _SettingValues(queue)


_KNOWN_SETTINGS: Final = frozenset(int(code) for code in h2.settings.SettingCodes)


class _CountingConnection(h2.connection.H2Connection):
    """h2's connection, counting the control frames received (see
    :attr:`HTTP2Protocol.control_frames`): PING, SETTINGS, PRIORITY, WINDOW_UPDATE,
    RST_STREAM, unknown types, DATA without payload or END_STREAM, and DATA or HEADERS that h2
    only answers (with RST_STREAM: a frame on a stream the client already reset). Settings
    unknown to h2 are dropped (RFC 9113 §6.5.2: ignored), not stored: h2 would keep one entry
    per identifier and walk them all on every later SETTINGS frame."""

    control_frames = 0
    # Set by a graceful GOAWAY: every later GOAWAY names this stream, never a higher one
    # (RFC 9113 §6.8: the client may have retried the streams above it elsewhere).
    goaway_last_stream_id: int | None = None

    def close_connection(self, error_code: int = 0, additional_data: bytes | None = None,
                         last_stream_id: int | None = None) -> None:
        if last_stream_id is None:
            last_stream_id = self.goaway_last_stream_id
        super().close_connection(error_code, additional_data, last_stream_id)

    def _terminate_connection(self, error_code: Any) -> None:
        # h2's GOAWAY for a connection error it detects, naming its highest stream.
        if self.goaway_last_stream_id is None:
            super()._terminate_connection(error_code)
            return
        frame = GoAwayFrame(0)
        frame.last_stream_id = self.goaway_last_stream_id
        frame.error_code = error_code
        self.state_machine.process_input(h2.connection.ConnectionInputs.SEND_GOAWAY)
        self._prepare_for_sending([frame])

    def _receive_frame(self, frame: Frame) -> Any:
        cls = frame.__class__
        if cls is DataFrame or cls is HeadersFrame:
            before = len(self._data_to_send)
            events = self._dispatch_frame(frame)
            if len(self._data_to_send) != before or (
                    cls is DataFrame and not getattr(frame, "data", b"")
                    and "END_STREAM" not in frame.flags):
                self.control_frames += 1
            return events
        if cls not in _NOT_CONTROL:
            self.control_frames += 1
        return self._dispatch_frame(frame)

    def _dispatch_frame(self, frame: Frame) -> Any:
        """h2's ``_receive_frame`` (4.1-4.4) without its first line, which formats every
        frame with ``repr`` for a logger that discards it: about 3% of an HTTP/2 request's
        cost. The rest is h2's, line for line."""
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except h2.exceptions.StreamClosedError as e:
            # Closed by RST_STREAM: a stream error (RST_STREAM back); else a connection error.
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = e.error_code
                self._prepare_for_sending([f])
                events = e._events
            else:
                raise
        except h2.exceptions.StreamIDTooLowError as e:
            # A stream closed by RST_STREAM is a stream error; by END_STREAM, or implicitly
            # (a higher stream was opened), a connection error.
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = h2.errors.ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([f])
                events = []
            elif self._stream_is_closed_by_end(e.stream_id):
                raise h2.exceptions.StreamClosedError(e.stream_id) from e
            else:
                raise
        else:
            self._prepare_for_sending(frames)
        return events

    def _receive_settings_frame(self, frame: Any) -> Any:
        settings = frame.settings
        if any(code not in _KNOWN_SETTINGS for code in settings):
            frame.settings = {code: value for code, value in settings.items()
                              if code in _KNOWN_SETTINGS}
        return super()._receive_settings_frame(frame)


class HTTP2Protocol:
    """One HTTP/2 server connection's protocol state.

    Start with :meth:`initiate` (prior knowledge or ALPN) or :meth:`initiate_upgrade` (h2c
    ``Upgrade`` from HTTP/1.1), then feed :meth:`receive_data` and send
    :meth:`data_to_send` after every call that may produce output.

    Per stream: :meth:`send_headers` (after any :meth:`send_informational`), :meth:`send_data`
    as the window allows, :meth:`end_stream` (optionally with trailers); or :meth:`reset`.
    Response methods raise :class:`ResponseError` for a response that cannot be sent (invalid
    field, body longer than its ``content-length``, a stream that is gone); the stream should
    then be reset, the connection goes on.
    """

    __slots__ = (
        "_active",
        "_conn",
        "_connection_window",
        "_draining",
        "_goaway_sent",
        "_last_stream_id",
        "_lengths",
        "_max_field_size",
        "_max_headers_count",
        "_max_headers_size",
        "_max_streams",
        "_opening",
        "_out",
        "_outs",
        "_reset_told",
        "_server_header",
        "_streams",
        "closed",
        "data_bytes_sent",
        "data_frames_sent",
        "malformed",
        "refused",
    )

    def __init__(
        self,
        *,
        max_concurrent_streams: int = 100,
        header_table_size: int = 4096,
        max_frame_size: int = 16384,
        initial_stream_window_size: int = 768 * 1024,
        initial_connection_window_size: int = 1024 * 1024,
        max_request_headers_count: int = 100,
        max_request_headers_total_size: int = 32768,
        server_header: bytes | None = b"trioserve",
        max_header_field_size: int = 16384,
    ) -> None:
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            # Request fields are validated here, in the one pass that builds the request
            # (RFC 9113 §8.2-§8.3): faster than h2's chain of generators, and a malformed request
            # is the stream error the RFC asks for instead of h2's connection error.
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
            # Response fields are validated and normalised here, once (see send_headers).
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        conn = _CountingConnection(config=config)
        if _HPACK_CACHING:
            # HPACK that remembers whole header blocks (a client repeats its requests, an app
            # its responses): the same bytes and fields as hpack's own coders, less work.
            decoder = _CachingDecoder()
            decoder.max_header_list_size = conn.decoder.max_header_list_size
            decoder.max_allowed_table_size = conn.decoder.max_allowed_table_size
            conn.decoder = decoder
            conn.encoder = _CachingEncoder()
        S = h2.settings.SettingCodes
        conn.local_settings = h2.settings.Settings(client=False, initial_values={
            S.MAX_CONCURRENT_STREAMS: max_concurrent_streams,
            S.HEADER_TABLE_SIZE: header_table_size,
            S.MAX_FRAME_SIZE: max_frame_size,
            S.INITIAL_WINDOW_SIZE: initial_stream_window_size,
            S.MAX_HEADER_LIST_SIZE: max_request_headers_total_size,
            S.ENABLE_PUSH: 0,
            S.ENABLE_CONNECT_PROTOCOL: 1,  # WebSockets over HTTP/2 (RFC 8441)
        })
        conn.max_inbound_frame_size = max_frame_size
        if header_table_size > 4096:
            conn.decoder.max_allowed_table_size = header_table_size
        # HPACK decoding itself stops (COMPRESSION_ERROR … a connection error) at twice the
        # advertised list size; between the two the request gets a 431 on its stream.
        conn.decoder.max_header_list_size = 2 * max_request_headers_total_size
        self._conn = conn
        self._connection_window = initial_connection_window_size
        self._max_headers_count = max_request_headers_count
        self._max_streams = max_concurrent_streams
        self._max_headers_size = max_request_headers_total_size
        self._max_field_size = max_header_field_size
        self.data_frames_sent = 0  # DATA frames queued and their payload bytes: they pay for
        self.data_bytes_sent = 0  # the client's WINDOW_UPDATEs (see control_frames)
        self._server_header = server_header
        self._out = bytearray()
        self._outs: dict[int, _Out] = {}
        self._draining: dict[int, int] = {}  # answered streams: body bytes still accepted
        self._lengths: dict[int, int] = {}  # open streams with a content-length: bytes to come
        # Streams whose events go to the caller (a request delivered, not reset or finished),
        # and every stream the caller still has (a request or refusal not yet finished, reset
        # or not): the concurrency limit counts these, with the answered ones still draining.
        self._streams: set[int] = set()
        self._active: set[int] = set()
        # streams of _active the caller was told were reset (StreamReset is said once)
        self._reset_told: set[int] = set()
        self._last_stream_id: int | None = None  # set by a graceful GOAWAY
        self._goaway_sent = False
        self.closed = False  # a connection error or the peer's GOAWAY: no more streams
        self.malformed = 0  # malformed requests and trailers answered with RST_STREAM
        self.refused = 0  # streams refused over the concurrency limit
        self._opening: bytearray | None = None  # the client's first bytes, until checked

    # ------------------------------------------------------------------ set-up

    def initiate(self) -> None:
        """Queue the server preface (SETTINGS) and the connection window increase."""
        self._opening = bytearray()
        self._conn.initiate_connection()
        self._open_connection_window()
        self._pull()

    def initiate_upgrade(self, settings_header: bytes, head: RequestHead) -> StreamRequest:
        """h2c ``Upgrade`` (RFC 7540 §3.2): after the 101 response, queue the server preface;
        the upgrade request becomes stream 1, its body already received. Raises
        :class:`ProtocolError` for an invalid ``HTTP2-Settings`` value."""
        self._opening = bytearray()
        try:
            self._conn.initiate_upgrade_connection(settings_header)
        except (h2.exceptions.ProtocolError, hyperframe.exceptions.HyperframeError,
                ValueError) as exc:
            raise ProtocolError(f"invalid HTTP2-Settings header: {exc}") from None
        self._open_connection_window()
        self._pull()
        self._streams.add(1)
        self._active.add(1)
        fields = [(n, v) for n, v in head.headers
                  if n not in _CONNECTION_FIELDS and n not in (b"http2-settings", b"te")]
        return StreamRequest(1, RequestHead(
            method=head.method, target=head.target, http_version=b"2", headers=fields,
            keep_alive=True, expects_continue=False, content_length=head.content_length,
            chunked=False), end_stream=True)

    def _open_connection_window(self) -> None:
        """After the server's SETTINGS are queued: raise the connection window, and keep the
        protocol's 65535-byte stream window in force until the client acknowledges a smaller
        one (RFC 9113 §6.5.3: a setting applies once acknowledged; h2 applies a connection's
        initial settings at once, and would call a client that sent 65535 bytes before seeing
        ours a flow-control violator)."""
        S = h2.settings.SettingCodes
        settings = self._conn.local_settings
        values: dict[Any, Any] = settings._settings
        window = settings.initial_window_size
        if window < 65535:
            values[S.INITIAL_WINDOW_SIZE] = _SettingValues([65535, window])
        # Advertised: max_streams; h2's own (connection-ending) check only at twice that, so
        # that the stream over the limit gets REFUSED_STREAM here instead.
        values[S.MAX_CONCURRENT_STREAMS] = _SettingValues([2 * self._max_streams])
        table = settings.header_table_size
        if table < 4096:  # the same for a smaller HPACK table (h2 shrinks the decoder's on ACK)
            values[S.HEADER_TABLE_SIZE] = _SettingValues([4096, table])
        _compact_settings(settings)
        _compact_settings(self._conn.remote_settings)
        delta = self._connection_window - 65535
        if delta > 0:
            self._conn.increment_flow_control_window(delta)

    # ------------------------------------------------------------------ receive side

    def receive_data(self, data: bytes) -> list[H2Event]:
        """Events for ``data`` from the peer. Raises :class:`ProtocolError` for a connection
        error, with the GOAWAY already queued (send it, then close)."""
        if self.closed:
            return []
        if self._opening is not None:
            self._check_opening(data)
        # Take what is queued first: h2 empties its outbound buffer when a GOAWAY arrives,
        # which would lose responses already written.
        self._pull()
        try:
            h2_events = self._conn.receive_data(data)
            self._check_partial_frame()
            if self._conn.incoming_buffer._headers_buffer:
                self._check_header_block()
        except h2.exceptions.ProtocolError as exc:
            self.closed = True
            self._pull()
            code = int(getattr(exc, "error_code", PROTOCOL_ERROR))
            cause = exc.__cause__
            # h2 says PROTOCOL_ERROR where RFC 9113 names another code: a header block that
            # does not decode (§4.3) and a SETTINGS ACK with a payload (§6.5).
            if isinstance(cause, hpack.exceptions.HPACKError) and not isinstance(
                    cause, hpack.exceptions.OversizedHeaderListError):
                code = self._set_goaway_code(COMPRESSION_ERROR)
            elif isinstance(cause, hyperframe.exceptions.InvalidDataError) \
                    and "ack" in str(cause).lower():
                code = self._set_goaway_code(FRAME_SIZE_ERROR)
            raise ProtocolError(f"HTTP/2 connection error {_code_name(code)}: {exc}") from None
        events: list[H2Event] = []
        trailed: set[int] | None = None  # streams ended by their trailers (reported already)
        for ev in h2_events:
            if isinstance(ev, h2.events.RequestReceived):
                self._request(ev, events)
            elif isinstance(ev, h2.events.DataReceived):
                if ev.stream_id in self._streams:
                    if self._lengths:
                        left = self._lengths.get(ev.stream_id)
                        if left is not None:
                            self._lengths[ev.stream_id] = left - len(ev.data)
                    events.append(StreamData(ev.stream_id, ev.data, ev.flow_controlled_length))
                else:
                    # A refused, reset or answered stream's data: give the window straight back.
                    if ev.flow_controlled_length:
                        self._conn.acknowledge_received_data(ev.flow_controlled_length,
                                                             ev.stream_id)
                    left = self._draining.get(ev.stream_id)
                    if left is not None and ev.stream_ended is None:
                        left -= ev.flow_controlled_length
                        if left > 0:
                            self._draining[ev.stream_id] = left
                        else:
                            del self._draining[ev.stream_id]
                            self._reset(ev.stream_id, NO_ERROR)
            elif isinstance(ev, h2.events.StreamEnded):
                self._draining.pop(ev.stream_id, None)
                if self._lengths:
                    self._lengths.pop(ev.stream_id, None)
                if ev.stream_id in self._streams and (trailed is None
                                                      or ev.stream_id not in trailed):
                    events.append(StreamEnded(ev.stream_id, []))
            elif isinstance(ev, h2.events.TrailersReceived):
                if ev.stream_id in self._streams:
                    if trailed is None:
                        trailed = set()
                    trailed.add(ev.stream_id)
                    self._trailers(ev, events)
            elif isinstance(ev, h2.events.StreamReset):
                self._draining.pop(ev.stream_id, None)
                self._forget(ev.stream_id)
                if ev.stream_id in self._active and ev.stream_id not in self._reset_told:
                    self._reset_told.add(ev.stream_id)
                    events.append(StreamReset(ev.stream_id, int(ev.error_code), ev.remote_reset))
            elif isinstance(ev, h2.events.WindowUpdated):
                events.append(WindowOpened(ev.stream_id or 0))
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                _compact_settings(self._conn.remote_settings)
                if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in ev.changed_settings:
                    events.append(WindowOpened(0))
            elif isinstance(ev, h2.events.ConnectionTerminated):
                code = int(ev.error_code or 0)
                if code == NO_ERROR and self._active:
                    # RFC 9113 §6.8: the client's own streams in flight may still complete
                    # (its GOAWAY names our streams, and we open none). h2 would refuse every
                    # frame from now on, WINDOW_UPDATEs included; keep it open and refuse new
                    # streams here instead.
                    self._conn.state_machine.state = h2.connection.ConnectionState.SERVER_OPEN
                    if self._last_stream_id is None:
                        self._last_stream_id = int(self._conn.highest_inbound_stream_id)
                    self._goaway_sent = True  # nothing new will be processed: no GOAWAY needed
                else:
                    self.closed = True
                events.append(ConnectionEnded(code, int(ev.last_stream_id or 0)))
            # PING, SETTINGS acks, PRIORITY, unknown frames: h2 has answered what needs it.
        self._pull()
        return events

    def _request(self, ev: h2.events.RequestReceived, events: list[H2Event]) -> None:
        stream_id = ev.stream_id
        end = ev.stream_ended is not None
        if self._last_stream_id is not None and stream_id > self._last_stream_id:
            # Opened after our GOAWAY: not processed, so the client may retry it elsewhere.
            self._reset(stream_id, REFUSED_STREAM)
            return
        while self._draining and len(self._active) + len(self._draining) >= self._max_streams:
            # Answered streams whose body is still coming make room for a new request: the
            # oldest is asked to stop sending (it counts for the client, and for h2).
            oldest = next(iter(self._draining))
            del self._draining[oldest]
            self._reset(oldest, NO_ERROR)
        if len(self._active) >= self._max_streams:
            # Over SETTINGS_MAX_CONCURRENT_STREAMS: a stream error (RFC 9113 §5.1.2) the client
            # may retry. (h2 itself stops the connection only at twice the limit.)
            self._reset(stream_id, REFUSED_STREAM)
            self.refused += 1
            self._conn.control_frames += 1  # work without a request: held to the same rate
            return
        method = target = authority = scheme = protocol = None
        fields: Headers = []
        cookies: list[bytes] = []
        host: bytes | None = None
        size = 0
        content_length: int | None = None
        malformed: str | None = None  # RFC 9113 §8.1.1: a stream error, PROTOCOL_ERROR
        bad: str | None = None  # answered with 400 on the stream
        valid = _VALID_FIELDS
        max_field = self._max_field_size
        big_field: bytes | None = None
        for name, value in ev.headers:
            entry = len(name) + len(value)
            size += entry + 32  # RFC 7541 §4.1's entry size
            if entry > max_field:
                big_field = name
            if name[:1] == b":":
                if fields or cookies:
                    malformed = f"pseudo-header field {name!r} after a regular field"
                elif name == b":method" and method is None:
                    method = value
                elif name == b":path" and target is None:
                    target = value
                elif name == b":scheme" and scheme is None:
                    scheme = value
                elif name == b":authority" and authority is None:
                    authority = value
                elif name == b":protocol" and protocol is None:
                    protocol = value
                else:
                    malformed = f"unknown or repeated pseudo-header field {name!r}"
                continue
            if (name, value) not in valid:
                malformed = _field_fault(name, value) or malformed
                if malformed is None and len(name) + len(value) <= _VALID_FIELD_MAX:
                    if len(valid) >= _VALID_FIELDS_MAX:
                        valid.clear()
                    valid.add((name, value))
            if name == b"cookie":
                cookies.append(value)
                continue
            if name == b"host":
                if host is not None:
                    malformed = "more than one host field"
                host = value
            elif name == b"content-length":
                if _DIGITS_RE.fullmatch(value) is None or (
                        content_length is not None and int(value) != content_length):
                    bad = f"invalid content-length {value!r}"
                else:
                    content_length = int(value)
            fields.append((name, value))
        if malformed is None:
            if method is None:
                malformed = "no :method"
            elif _METHOD_RE.fullmatch(method) is None:
                malformed = f"invalid :method {method[:100]!r}"
            elif scheme is not None and _SCHEME_RE.fullmatch(scheme) is None:
                malformed = f"invalid :scheme {scheme[:100]!r}"
            elif authority is not None and _AUTHORITY_RE.fullmatch(authority) is None:
                malformed = f"invalid :authority {authority[:100]!r}"
            elif host is not None and _AUTHORITY_RE.fullmatch(host) is None:
                malformed = f"invalid host {host[:100]!r}"
            elif end and content_length:
                malformed = "content-length without a body (RFC 9113 §8.1.1)"
            elif target is not None and _NUL_CR_LF_RE.search(target) is not None:
                malformed = "NUL, CR or LF in :path (RFC 9113 §8.2.1)"
            elif protocol is not None:
                # RFC 8441 §4: extended CONNECT carries :scheme, :path and :authority too.
                if method != b"CONNECT":
                    malformed = ":protocol on a request that is not CONNECT"
                elif not protocol or not scheme or not target or authority is None:
                    malformed = "extended CONNECT needs :protocol, :scheme, :path and :authority"
                elif authority is not None and host is not None and host != authority:
                    malformed = "host and :authority differ"
            elif method == b"CONNECT" and bad is None:
                if authority is None or scheme is not None or target is not None:
                    malformed = "CONNECT needs :authority and no :scheme or :path"
            elif not scheme or not target:
                malformed = "no :scheme or :path (or an empty one)"
            elif authority is not None and host is not None and host != authority:
                malformed = "host and :authority differ"
        if malformed is not None:
            self._reset(stream_id, PROTOCOL_ERROR)
            self.malformed += 1
            self._conn.control_frames += 1
            return
        assert method is not None
        if cookies:
            fields.append((b"cookie", b"; ".join(cookies)))
        if host is None and authority:
            fields.insert(0, (b"host", authority))
        status = 400
        if len(fields) > self._max_headers_count:
            status, bad = 431, (f"more than {self._max_headers_count} request header fields")
        elif size > self._max_headers_size:
            status, bad = 431, (f"request header fields larger than {self._max_headers_size} "
                                "bytes")
        elif big_field is not None:
            status, bad = 431, (f"request header field {big_field[:100]!r} larger than "
                                f"{max_field} bytes")
        elif bad is None:
            if method == b"CONNECT" and protocol is None:
                target = authority
            elif not (_PATH_RE.fullmatch(target or b"")
                      or (target == b"*" and method == b"OPTIONS")):
                bad = f"invalid :path {(target or b'')[:100]!r}"
        if bad is not None:
            self._active.add(stream_id)
            events.append(StreamRefused(stream_id, status, bad, end, method))
            return
        assert target is not None
        expects_continue = False
        for name, value in fields:
            if name == b"expect" and value.lower() == b"100-continue":
                expects_continue = True
        head = RequestHead(method=method, target=target, http_version=b"2", headers=fields,
                           keep_alive=True, expects_continue=expects_continue,
                           content_length=content_length, chunked=False, upgrade=protocol)
        self._streams.add(stream_id)
        self._active.add(stream_id)
        if content_length and not end:
            self._lengths[stream_id] = content_length  # for trailers (see _trailers)
        events.append(StreamRequest(stream_id, head, end))

    def _trailers(self, ev: h2.events.TrailersReceived, events: list[H2Event]) -> None:
        fault: str | None = None
        if self._lengths.pop(ev.stream_id, 0):
            # RFC 9113 §8.1.1: malformed (h2 checks the length only on a DATA END_STREAM).
            fault = "trailers ending a body shorter than its content-length"
        fields: Headers = []
        for name, value in ev.headers:
            if fault is not None:
                break
            fault = ("a pseudo-header field in trailers" if name[:1] == b":"
                     else _field_fault(name, value))
            fields.append((name, value))
        if fault is not None:
            self.reset(ev.stream_id, PROTOCOL_ERROR)
            self.malformed += 1
            self._reset_told.add(ev.stream_id)
            events.append(StreamReset(ev.stream_id, PROTOCOL_ERROR, False))
            return
        # StreamEnded follows (trailers always end the stream); keep the fields.
        events.append(StreamEnded(ev.stream_id, fields))

    def _check_opening(self, data: bytes) -> None:
        """RFC 9113 §3.4: the preface must be followed by a SETTINGS frame (h2 accepts any
        frame). Raises :class:`ProtocolError` with GOAWAY PROTOCOL_ERROR queued."""
        assert self._opening is not None
        self._opening += data
        need = len(PREFACE) + 9
        if len(self._opening) < need:
            return
        head = self._opening[len(PREFACE):need]
        self._opening = None
        if head[3] != 0x4 or head[4] & 0x1:  # type SETTINGS, not an ACK
            self.closed = True
            self._conn.close_connection(PROTOCOL_ERROR, b"the preface must be followed by "
                                        b"SETTINGS")
            self._pull()
            raise ProtocolError("HTTP/2 connection error PROTOCOL_ERROR: the preface was not "
                                "followed by a SETTINGS frame")

    def _check_partial_frame(self) -> None:
        """Refuse an oversize frame as soon as its header arrives (h2 checks the length only
        once the whole frame is buffered: up to 16 MiB per connection). Queues GOAWAY
        FRAME_SIZE_ERROR and raises h2's ``FrameTooLargeError``."""
        buffer = self._conn.incoming_buffer
        pending = buffer._data
        if len(pending) >= 9 and not buffer._preamble_len:
            length = int.from_bytes(pending[:3], "big")
            if length > self._conn.max_inbound_frame_size:
                self._conn.close_connection(FRAME_SIZE_ERROR)
                raise h2.exceptions.FrameTooLargeError(
                    f"frame of {length} bytes announced, the limit is "
                    f"{self._conn.max_inbound_frame_size}")

    def _check_header_block(self) -> None:
        """Refuse a header block still incomplete (HEADERS, then CONTINUATION frames without
        END_HEADERS) once its fragments hold more than four times the header list limit: no
        such block could decode within the limit, even Huffman-coded at its worst (30 bits a
        byte). h2 alone stops only at 64 CONTINUATION frames, up to 1 GiB with large frames.
        Queues GOAWAY ENHANCE_YOUR_CALM and raises h2's ``ProtocolError``."""
        held = sum(len(f.data) for f in self._conn.incoming_buffer._headers_buffer)
        if held > 4 * self._max_headers_size:
            self._conn.close_connection(ENHANCE_YOUR_CALM)
            raise h2.exceptions.ProtocolError(
                f"header block of more than {held} bytes across CONTINUATION frames; the limit "
                f"is {4 * self._max_headers_size}")

    def _set_goaway_code(self, code: int) -> int:
        """Change the error code of the GOAWAY h2 just queued (the last frame out)."""
        out = self._out
        if len(out) >= 17 and out[-17:-14] == b"\x00\x00\x08" and out[-14] == 0x7:
            out[-4:] = code.to_bytes(4, "big")
            return code
        return PROTOCOL_ERROR

    def consumed(self, stream_id: int, flow_length: int) -> None:
        """The application took ``flow_length`` bytes of the stream's body: grant the peer
        that much window again (h2 batches the WINDOW_UPDATE frames)."""
        if flow_length and not self.closed:
            self._conn.acknowledge_received_data(flow_length, stream_id)
            self._pull()

    # ------------------------------------------------------------------ send side

    def send_informational(self, stream_id: int, status: int, headers: Headers) -> None:
        """A 1xx response (103 Early Hints, 100 Continue) before the final one. Raises
        :class:`ResponseError` for a status outside 100-199 (101 has no meaning in HTTP/2) or an
        invalid field."""
        if not 100 <= status <= 199 or status == 101:
            raise ResponseError(f"{status} is not an informational status HTTP/2 can send")
        fields = [(b":status", _STATUS_BYTES[status])]
        for name, value in headers:
            check_response_field(name, value)
            name = name.lower()
            if name not in _NOT_IN_RESPONSES:
                fields.append((name, value))
        self._h2(self._conn.send_headers, stream_id, fields)

    def send_headers(self, stream_id: int, status: int, headers: Headers, *, method: bytes,
                     body_length: int | None = None) -> bool:
        """Send the response head. ``body_length``: the whole body's size when already known
        (it becomes ``content-length`` if the app gave none). Returns whether the stream ended
        with the head (HEAD, 204, 304, or an empty known body) — then no DATA may follow.

        Raises :class:`ResponseError` for a status outside 200-999, an invalid field or
        conflicting ``content-length`` values."""
        if isinstance(status, bool) or not 200 <= status <= 999:
            raise ResponseError(f"invalid final status code {status!r}")
        fields = [(b":status", _STATUS_BYTES[status])]
        append = fields.append
        content_length: int | None = None
        has_date = has_server = False
        cache = _OUT_FIELDS
        for field in headers:
            entry = cache.get(field) if type(field) is tuple else None
            if entry is None:
                entry = _out_field(field)
            kind, out = entry
            if out is not None:
                append(out)
            if kind:
                if kind == 1:
                    content_length = response_content_length(field[1], content_length)
                elif kind == 4:
                    has_date = True
                elif kind == 5:
                    has_server = True
        if not has_date:
            fields.append((b"date", date_header_value()))
        if not has_server and self._server_header is not None:
            fields.append((b"server", self._server_header))
        is_head = method == b"HEAD"
        body_allowed = not is_head and status not in _NO_BODY_STATUSES
        if status not in _NO_BODY_STATUSES or (status == 304 and content_length is not None):
            if content_length is None and body_length is not None and (
                    not is_head or body_length > 0):
                content_length = body_length
            if content_length is not None:
                fields.append((b"content-length", b"%d" % content_length))
        end = not body_allowed or (body_length == 0 and content_length in (None, 0))
        self._h2(self._conn.send_headers, stream_id, fields, end)
        if not end:
            self._outs[stream_id] = _Out(body_allowed, content_length)
        else:
            self._finished(stream_id)
        return end

    def send_window(self, stream_id: int) -> int:
        """How many body bytes may be sent on the stream now (the smaller of its window and
        the connection's; 0 for a stream that is gone)."""
        try:
            return int(self._conn.local_flow_control_window(stream_id))
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            return 0

    def send_data(self, stream_id: int, data: bytes | memoryview, end_stream: bool = False
                  ) -> int:
        """Send as much of ``data`` as the windows allow, in frames of the peer's maximum size;
        returns how many bytes were taken (all of them, and the stream ended if
        ``end_stream``, only when the return value is ``len(data)``). A HEAD response's
        body is counted but not sent.

        Raises :class:`ResponseError` past the declared ``content-length``, at an end before
        it, or when the stream is gone."""
        out = self._outs.get(stream_id)
        if out is None:
            raise ResponseError("the response on this stream is not open (not started, "
                                "complete or reset)")
        total = len(data)
        if out.content_length is not None and out.sent + total > out.content_length:
            raise ResponseError(f"response body longer than its Content-Length "
                                f"({out.content_length})")
        if not out.body_allowed:
            out.sent += total
            if end_stream:
                self.end_stream(stream_id)
            return total
        conn = self._conn
        taken = 0
        view = memoryview(data)
        frame = conn.max_outbound_frame_size
        while taken < total:
            try:
                window = conn.local_flow_control_window(stream_id)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
                self._forget(stream_id)
                raise ResponseError("the stream was closed") from None
            n = min(total - taken, frame, window)
            if n <= 0:
                break
            last = end_stream and taken + n == total
            if last:
                self._check_complete(out, out.sent + n)
            self._h2(conn.send_data, stream_id, view[taken:taken + n], last)
            self.data_frames_sent += 1
            self.data_bytes_sent += n
            taken += n
            out.sent += n
        if taken == total and end_stream:
            if total == 0:
                self.end_stream(stream_id)
            else:
                self._finished(stream_id)
        return taken

    def end_stream(self, stream_id: int, trailers: Headers | None = None) -> None:
        """End the response, with ``trailers`` (a HEADERS frame) if given. Raises
        :class:`ResponseError` when fewer body bytes were sent than the ``content-length``
        said, for an invalid trailer field, or when the stream is gone."""
        out = self._outs.get(stream_id)
        if out is None:
            raise ResponseError("the response on this stream is not open")
        self._check_complete(out, out.sent)
        if trailers and out.body_allowed:
            fields = []
            for name, value in trailers:
                check_response_field(name, value)
                name = name.lower()
                if name not in _NOT_IN_RESPONSES and name != b"content-length":
                    fields.append((name, value))
            self._h2(self._conn.send_headers, stream_id, fields, True)
        else:
            self._h2(self._conn.end_stream, stream_id)
        self._finished(stream_id)

    @staticmethod
    def _check_complete(out: _Out, sent: int) -> None:
        if out.content_length is not None and out.body_allowed and sent < out.content_length:
            raise ResponseError(f"response body shorter ({sent} bytes) than its "
                                f"Content-Length ({out.content_length})")

    def reset(self, stream_id: int, error_code: int = INTERNAL_ERROR) -> None:
        """Reset the stream (RST_STREAM): a response cut short, or a request body no longer
        wanted (``NO_ERROR`` after a complete response, RFC 9113 §8.1). Nothing if it is
        already closed."""
        self._forget(stream_id)
        self._reset(stream_id, error_code)

    def _reset(self, stream_id: int, error_code: int) -> None:
        try:
            self._conn.reset_stream(stream_id, error_code)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass
        self._pull()

    def stream_finished(self, stream_id: int) -> None:
        """The caller is done with the stream (its response ended or it was reset)."""
        self._forget(stream_id)
        self._active.discard(stream_id)
        self._reset_told.discard(stream_id)

    def finish_unread(self, stream_id: int, allowance: int) -> None:
        """The response is complete, the request body is not: accept and discard up to
        ``allowance`` more body bytes (window granted straight back), so a client finishing a
        small upload sees a clean end, then ask the client to stop sending with
        ``RST_STREAM NO_ERROR`` (RFC 9113 §8.1)."""
        self.stream_finished(stream_id)
        if allowance > 0 and not self.closed:
            if len(self._draining) >= self._max_streams:
                # Bounded: the oldest answered stream still sending is asked to stop.
                oldest = next(iter(self._draining))
                del self._draining[oldest]
                self._reset(oldest, NO_ERROR)
            self._draining[stream_id] = allowance
        else:
            self._reset(stream_id, NO_ERROR)

    def goaway(self, error_code: int = NO_ERROR, message: str = "") -> None:
        """Send GOAWAY. ``NO_ERROR`` is the graceful one: it names the last stream that will be
        processed, later streams are refused, streams in flight go on. Another code ends the
        connection (h2 then refuses everything; close after sending)."""
        if error_code != NO_ERROR:
            if not self.closed:
                self.closed = True
                try:
                    self._conn.close_connection(error_code, message.encode() or None)
                except h2.exceptions.ProtocolError:
                    pass
                self._pull()
            return
        if self._goaway_sent or self.closed:
            return
        self._goaway_sent = True
        last = int(self._conn.highest_inbound_stream_id)
        self._last_stream_id = last
        self._conn.goaway_last_stream_id = last
        # Written directly: h2's close_connection() would stop it processing the streams that
        # are still open.
        frame = GoAwayFrame(0)
        frame.last_stream_id = last
        frame.error_code = NO_ERROR
        frame.additional_data = message.encode()
        self._pull()
        self._out += frame.serialize()

    @property
    def open_streams(self) -> int:
        """Streams the caller still has (a request or refusal reported, not yet finished)."""
        return len(self._active)

    @property
    def goaway_sent(self) -> bool:
        return self._goaway_sent or self.closed

    # ------------------------------------------------------------------ output

    def data_to_send(self) -> bytes:
        """The bytes to write to the peer (and forget)."""
        self._pull()
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def control_frames(self) -> int:
        """Control frames received so far (PING, SETTINGS, PRIORITY, WINDOW_UPDATE,
        RST_STREAM, unknown types, DATA without payload or END_STREAM): the caller holds them
        to a rate, with :attr:`data_frames_sent` paying for WINDOW_UPDATEs."""
        return int(self._conn.control_frames)

    @property
    def pending_output(self) -> int:
        """Bytes queued for the peer and not yet taken by :meth:`data_to_send`."""
        return len(self._out) + len(self._conn._data_to_send)

    def _pull(self) -> None:
        data = self._conn.data_to_send()
        if data:
            self._out += data

    def _h2(self, fn: object, *args: object) -> None:
        try:
            fn(*args)  # type: ignore[operator]
        except h2.exceptions.StreamClosedError as exc:
            self._forget(args[0])  # type: ignore[arg-type]
            raise ResponseError(f"the stream was closed: {exc}") from None
        except (h2.exceptions.ProtocolError, KeyError) as exc:
            raise ResponseError(f"cannot send on this stream: {exc!r}") from None

    def _finished(self, stream_id: int) -> None:
        self._outs.pop(stream_id, None)

    def _forget(self, stream_id: int) -> bool:
        self._outs.pop(stream_id, None)
        if self._lengths:
            self._lengths.pop(stream_id, None)
        if stream_id in self._streams:
            self._streams.discard(stream_id)
            return True
        return False


# Response fields already checked: field -> (its kind for check_response_field, the field as
# sent — name lower-cased — or None when HTTP/2 drops it).
_OUT_FIELDS: Final[dict[object, tuple[int, tuple[bytes, bytes] | None]]] = {}


def _render_field(kind: int, name: bytes, value: bytes) -> tuple[bytes, bytes] | None:
    lname = name.lower()
    return None if kind in (1, 2, 3) or lname in _NOT_IN_RESPONSES else (lname, value)


def _out_field(field: object) -> tuple[int, tuple[bytes, bytes] | None]:
    """HTTP/2's :func:`~trioserve.protocols.http1.checked_response_field`: the field as sent,
    or None for one HTTP/2 drops (connection-specific fields, framing)."""
    return checked_response_field(field, _OUT_FIELDS, _render_field)


def valid_h2c_settings(value: bytes) -> bool:
    """Whether an ``HTTP2-Settings`` value (RFC 7540 §3.2.1) is base64url of whole settings
    with values RFC 9113 §6.5.2 allows, so that the upgrade cannot fail after the 101."""
    try:
        raw = base64.urlsafe_b64decode(value + b"=" * (-len(value) % 4))
    except (ValueError, binascii.Error):
        return False
    if len(raw) % 6:
        return False
    for i in range(0, len(raw), 6):
        ident = int.from_bytes(raw[i:i + 2], "big")
        v = int.from_bytes(raw[i + 2:i + 6], "big")
        if (ident == 2 and v > 1) or (ident == 4 and v > 2**31 - 1) or (
                ident == 5 and not 16384 <= v <= 2**24 - 1):
            return False
    return True


def _field_fault(name: bytes, value: bytes) -> str | None:
    """Why a request field (not a pseudo-header) makes the request malformed, or ``None``
    (RFC 9113 §8.2: a lower-case token name, no NUL/CR/LF, and — as for HTTP/1.1 here — no
    other control byte nor surrounding whitespace in the value; §8.2.2: no connection-specific
    field, ``te`` only ``trailers``)."""
    if _FIELD_NAME_RE.fullmatch(name) is None:
        return f"invalid field name {name[:100]!r}"
    if _BAD_VALUE_RE.search(value) is not None:
        return f"invalid value for {name!r}"
    if name in _CONNECTION_FIELDS:
        return f"connection-specific field {name!r}"
    if name == b"te" and value.lower() != b"trailers":
        return "te other than trailers"
    return None


def _code_name(code: int) -> str:
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return f"0x{code:x}"
