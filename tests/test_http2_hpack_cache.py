"""The HTTP/2 protocol's HPACK coders that remember whole header blocks give exactly what
hpack's own coders give: the same bytes out, the same fields (and field types) in, the same
errors and the same dynamic table, whatever the order of repeats, table size changes and limits.
"""

from __future__ import annotations

import logging
import random

import hpack
import pytest
from hpack import NeverIndexedHeaderTuple

from trioserve.protocols.http2 import _HPACK_CACHING, _CachingDecoder, _CachingEncoder

pytestmark = pytest.mark.skipif(not _HPACK_CACHING, reason="hpack without HeaderTable.maxsize")

NAMES = [b":status", b"content-type", b"date", b"server", b"x-a", b"cookie", b"content-length"]
VALUES = [b"200", b"404", b"text/plain", b"x" * 50, b"Mon, 01 Jan", b"Tue, 02 Jan", b"13",
          b"y" * 300]


def _decoded(decoder: hpack.Decoder, block: bytes) -> object:
    try:
        return [(type(f), f) for f in decoder.decode(block, raw=True)]
    except Exception as exc:  # the error, compared by type
        return type(exc)


@pytest.mark.parametrize("seed", range(40))
def test_same_as_hpack(seed: int) -> None:
    rnd = random.Random(seed)
    lists = [[(rnd.choice(NAMES), rnd.choice(VALUES)) for _ in range(rnd.randint(1, 6))]
             for _ in range(12)]
    plain_enc, enc = hpack.Encoder(), _CachingEncoder()
    plain_dec, dec = hpack.Decoder(), _CachingDecoder()
    limit = rnd.choice([200, 1000, 65536])
    plain_dec.max_header_list_size = dec.max_header_list_size = limit
    for _ in range(200):
        r = rnd.random()
        if r < 0.03:
            plain_enc.header_table_size = enc.header_table_size = rnd.choice([0, 100, 4096])
        elif r < 0.05:
            limit = rnd.choice([200, 1000, 65536])
            plain_dec.max_header_list_size = dec.max_header_list_size = limit
        elif r < 0.06:
            size = rnd.choice([100, 4096])
            plain_dec.max_allowed_table_size = dec.max_allowed_table_size = size
        fields = list(rnd.choice(lists))
        block = plain_enc.encode(fields)
        assert enc.encode(fields) == block
        if rnd.random() < 0.1:  # a damaged block
            block = block[:rnd.randint(0, len(block))] + bytes([rnd.randint(0, 255)])
        result = _decoded(plain_dec, block)
        assert _decoded(dec, block) == result
        assert list(dec.header_table.dynamic_entries) == \
            list(plain_dec.header_table.dynamic_entries)
        assert dec.header_table_size == plain_dec.header_table_size
        if isinstance(result, type):
            return  # a decoding error ends the connection: the decoder is not used again


def test_repeats_are_remembered() -> None:
    enc, dec = _CachingEncoder(), _CachingDecoder()
    fields = [(b":status", b"200"), (b"content-type", b"text/plain"), (b"x-a", b"1")]
    first = enc.encode(fields)  # literals: the table changes
    second = enc.encode(fields)  # all indexed
    assert second is not first and enc.encode(list(fields)) is second
    dec.decode(first, raw=True)
    decoded = dec.decode(second, raw=True)
    assert dec.decode(second, raw=True) == decoded == fields


def test_never_indexed_fields_are_not_confused_with_plain_ones() -> None:
    plain_enc, enc = hpack.Encoder(), _CachingEncoder()
    fields = [(b"authorization", b"secret")]
    for _ in range(2):
        assert enc.encode(fields) == plain_enc.encode(fields)
    secret = [NeverIndexedHeaderTuple(b"authorization", b"secret")]
    assert enc.encode(secret) == plain_enc.encode(secret)
    plain_dec, dec = hpack.Decoder(), _CachingDecoder()
    block = hpack.Encoder().encode(secret)
    for _ in range(3):
        assert _decoded(dec, block) == _decoded(plain_dec, block)


def test_hpack_debug_log_still_written(caplog: pytest.LogCaptureFixture) -> None:
    enc, dec = _CachingEncoder(), _CachingDecoder()
    fields = [(b":status", b"200")]
    block = enc.encode(fields)
    dec.decode(block, raw=True)
    with caplog.at_level(logging.DEBUG, logger="hpack"):
        enc.encode(fields)
        dec.decode(block, raw=True)
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("hpack")]
    assert any(m.startswith("Encoded header block") for m in messages)
    assert any(m.startswith("Decoding") for m in messages)
