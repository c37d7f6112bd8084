"""The access log's fast path writes exactly what logging would, and only when nothing else is
configured on the trioserve loggers."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import pytest

from trioserve.logs import CliHandler, fast_access_handler, setup_cli_logging


@pytest.fixture
def clean_logging() -> Iterator[None]:
    parent = logging.getLogger("trioserve")
    access = logging.getLogger("trioserve.access")
    saved = (parent.handlers[:], parent.level, parent.propagate, access.handlers[:],
             access.level, access.filters[:])
    yield
    parent.handlers[:], parent.level, parent.propagate = saved[0], saved[1], saved[2]
    access.handlers[:], access.level, access.filters[:] = saved[3], saved[4], saved[5]


def test_fast_line_matches_the_logging_line(clean_logging: None) -> None:
    handler = setup_cli_logging("info")
    stream = io.StringIO()
    handler.setStream(stream)
    assert fast_access_handler() is handler
    message = '127.0.0.1:1 - "GET /x?y HTTP/1.1" 200 13 0.000100s'
    handler.write_access(message)
    logging.getLogger("trioserve.access").info("%s", message)
    fast, slow = stream.getvalue().splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "
    assert re.fullmatch(stamp + re.escape("INFO    trioserve.access: " + message), fast)
    assert re.fullmatch(stamp + re.escape("INFO    trioserve.access: " + message), slow)


def test_fast_path_only_with_the_plain_cli_setup(clean_logging: None) -> None:
    handler = setup_cli_logging("info")
    access = logging.getLogger("trioserve.access")
    assert fast_access_handler() is handler
    access.addFilter(lambda record: True)
    assert fast_access_handler() is None
    access.filters.clear()
    access.addHandler(logging.NullHandler())
    assert fast_access_handler() is None
    access.handlers.clear()
    handler.setFormatter(logging.Formatter("%(message)s"))
    assert fast_access_handler() is None
    setup_cli_logging("warning")  # access lines are INFO: disabled
    assert fast_access_handler() is None
    logging.getLogger("trioserve").handlers[:] = [logging.StreamHandler()]
    assert fast_access_handler() is None
    assert isinstance(setup_cli_logging("debug"), CliHandler)
