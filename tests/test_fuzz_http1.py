"""Property tests for the HTTP/1.1 protocol, driven by ``trioserve.fuzz.http1``.

Bounded so the module runs in a few seconds: each property has a fixed example budget, no
deadline (byte-by-byte feeding of a long request is slow on a loaded machine), and no example
database written into the checkout.
"""

from __future__ import annotations

import pytest

hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from trioserve.fuzz.http1 import (  # noqa: E402
    GeneratedRequest,
    ProtocolLimits,
    available_parsers,
    check_parse,
    check_same_parsers,
    check_valid,
    mutated_requests,
    split_points,
    valid_requests,
)

FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(st.data())
def test_valid_requests_parse_exactly(data: st.DataObject) -> None:
    """Valid generated requests parse to what was generated: whole, byte by byte, split."""
    req: GeneratedRequest = data.draw(valid_requests(), label="request")
    cuts = data.draw(split_points(req.raw), label="cuts")
    for parser in available_parsers():
        check_valid(req, cuts, parser)
    check_same_parsers(req.raw)


@FUZZ
@given(st.data())
def test_mutated_requests_parse_or_protocol_error(data: st.DataObject) -> None:
    """Damaged requests: a clean parse or a ProtocolError with a 4xx/5xx hint, never anything
    else, never a hang; splitting the bytes never changes acceptance."""
    raw = data.draw(mutated_requests(), label="raw")
    cuts = data.draw(split_points(raw), label="cuts")
    check_same_parsers(raw, cuts)


@FUZZ
@given(st.binary(max_size=300))
@example(b"")
@example(b"\r\n" * 20)
@example(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" * 3)
def test_arbitrary_bytes_parse_or_protocol_error(raw: bytes) -> None:
    check_same_parsers(raw)


@settings(max_examples=100, deadline=None, database=None)
@given(st.lists(valid_requests(), min_size=2, max_size=4))
def test_pipelined_valid_requests(reqs: list[GeneratedRequest]) -> None:
    """Back-to-back valid requests are parsed one after the other, whole and byte by byte,
    up to the first one that does not keep the connection alive."""
    data = b"".join(r.raw for r in reqs)
    expected = []
    for r in reqs:
        expected.append(r)
        if not r.keep_alive:
            break
    for bbb, parser in [(b, p) for b in (False, True) for p in available_parsers()]:
        outcome = check_parse(data, byte_by_byte=bbb, parser=parser)
        assert outcome.error is None, outcome.error
        got = outcome.completed
        assert len(got) == len(expected)
        for parsed, want in zip(got, expected, strict=True):
            assert (parsed.head.method, parsed.head.target, parsed.body) == \
                (want.method, want.target, want.body)
            assert parsed.head.headers == list(want.headers)


@settings(max_examples=100, deadline=None, database=None)
@given(st.data())
def test_small_limits_give_4xx_not_crashes(data: st.DataObject) -> None:
    """With tiny limits, valid requests are either accepted or refused with 414/431."""
    req = data.draw(valid_requests(), label="request")
    limits: ProtocolLimits = {
        "max_request_line_size": data.draw(st.integers(16, 80), label="line"),
        "max_request_headers_count": data.draw(st.integers(1, 6), label="count"),
        "max_request_headers_total_size": data.draw(st.integers(16, 200), label="size"),
    }
    outcome = check_parse(req.raw, **limits)
    if outcome.error is not None:
        assert outcome.error.status_hint in (400, 414, 431), outcome.error
    check_same_parsers(req.raw, **limits)


def _verdict_of_h11_connection(head: bytes) -> tuple[str, object]:
    """What ``h11.Connection`` (the reference) makes of a complete head, through the same
    validation as the protocol: ``("ok", RequestHead)`` or ``("error", (message, status))``."""
    import h11

    from trioserve.protocols.events import ProtocolError
    from trioserve.protocols.http1 import HTTP1Protocol

    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head)
    try:
        ev = conn.next_event()
    except h11.RemoteProtocolError as exc:
        return "error", (str(exc) or "malformed request", exc.error_status_hint)
    assert type(ev) is h11.Request
    try:
        return "ok", HTTP1Protocol()._validate(
            ev.method, ev.target, ev.http_version,
            [(n.lower(), v) for n, v in ev.headers.raw_items()], head)
    except ProtocolError as exc:
        return "error", (exc.message, exc.status_hint)


def _verdict_of_reader(head: bytes) -> tuple[str, object]:
    from trioserve.protocols.events import ProtocolError
    from trioserve.protocols.http1 import HTTP1Protocol

    try:
        return "ok", HTTP1Protocol()._parse_bodyless_head(head)
    except ProtocolError as exc:
        return "error", (exc.message, exc.status_hint)


@FUZZ
@given(mutated_requests())
@example(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
@example(b"GET / HTTP/1.1\r\n\r\n")
@example(b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n")
@example(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n")
@example(b"\r\n\r\n\r\nGET")
def test_bodyless_head_reader_matches_h11_connection(raw: bytes) -> None:
    """A head without Content-Length or Transfer-Encoding is parsed by h11's request reader
    alone (``HTTP1Protocol._parse_bodyless_head``, the h11 parser's fast path): it accepts and
    refuses exactly what ``h11.Connection`` does, with the same request or the same message."""
    while raw[:2] == b"\r\n":  # as the protocol skips empty lines before a request
        raw = raw[2:]
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return
    head = raw[: end + 4]
    lower = head.lower()
    if b"\ncontent-length:" in lower or b"\ntransfer-encoding:" in lower:
        return
    assert _verdict_of_reader(head) == _verdict_of_h11_connection(head)
