"""PROXY protocol v1 and v2 (HAProxy's ``proxy-protocol.txt``): the header a load balancer
sends first on every connection, carrying the original client's address. Sans-IO: bytes in,
a :class:`ProxyHeader` out.

::

    header = parse_proxy_header(peeked)      # None: need more bytes
    if header is not None:
        consume(header.length)               # what follows is the client's own bytes

A reader that consumed the bytes of an incomplete header asks :func:`header_size` how many
there are in all once a v2 header's fixed part is in, and reads exactly the rest (parsing a
growing buffer again on every arrival would cost quadratic time for a header sent in pieces).

- v1 (text): ``PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\\r\\n`` or ``PROXY UNKNOWN ...\\r\\n``,
  at most 107 bytes with the CRLF.
- v2 (binary): the 12-byte signature, version/command, family/transport, a 16-bit length, then
  the addresses (IPv4, IPv6 or Unix) and TLVs, which are skipped.

A ``LOCAL`` command (v2: the proxy's own health check) has no addresses and ``local=True``;
``UNKNOWN`` (v1), and the ``UNSPEC`` and ``UNIX`` families (v2), have no TCP addresses:
``source`` and ``destination`` are ``None`` and the receiver keeps the connection's real ones
(the server then believes no forwarding header on that connection: the client is not known).
An address with an IPv6 zone id (``fe80::1%eth0``) is invalid.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Final

__all__ = [
    "MAX_HEADER_SIZE",
    "V1_MAX_SIZE",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxyProtocolError",
    "header_size",
    "parse_proxy_header",
]

V1_PREFIX: Final = b"PROXY "
V1_MAX_SIZE: Final = 107
"""The longest v1 header, CRLF included (the spec's bound)."""
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_SIZE: Final = 16
MAX_HEADER_SIZE: Final = V2_FIXED_SIZE + 0xFFFF
"""The longest header of either version (v2 with the largest length field)."""

_V2_ADDRESS_SIZE: Final = {0x1: 12, 0x2: 36, 0x3: 216}  # INET, INET6, UNIX
Address = tuple[str, int]


class ProxyProtocolError(ValueError):
    """The bytes are not a valid PROXY protocol header; the message says why."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A complete PROXY header.

    ``version`` is 1 or 2; ``local`` is true for a v2 ``LOCAL`` command (a health check from
    the proxy itself: keep the real addresses). ``source`` and ``destination`` are the client's
    and the proxy's listening ``(ip, port)``, or ``None`` when the header carries no TCP
    addresses. ``length`` is the size of the header in bytes: exactly what to consume before
    the client's own data.
    """

    version: int
    local: bool
    source: Address | None
    destination: Address | None
    length: int


def parse_proxy_header(data: bytes) -> ProxyHeader | None:
    """Parse a PROXY header at the start of ``data``.

    Returns the header once complete (bytes after ``header.length`` are not looked at), or
    ``None`` when more bytes are needed; then every byte of ``data`` belongs to the header, so
    the caller may consume them all. Raises :class:`ProxyProtocolError` as soon as ``data``
    cannot be the start of a valid header (a connection without one fails at its first byte).
    Feeding a header byte by byte gives the same result as feeding it whole.
    """
    if not data:
        return None
    first = data[0]
    if first == V1_PREFIX[0]:
        return _parse_v1(data)
    if first == V2_SIGNATURE[0]:
        return _parse_v2(data)
    raise ProxyProtocolError("not a PROXY protocol header")


def header_size(data: bytes) -> int | None:
    """The total size of the v2 header ``data`` starts with, once its 16-byte fixed part is
    in (the signature and the length field); ``None`` before that, and for v1 (whose end is
    its CRLF). Nothing is validated: ``data`` is meant to be bytes
    :func:`parse_proxy_header` accepted as the start of a header."""
    if len(data) >= V2_FIXED_SIZE and data.startswith(V2_SIGNATURE):
        return V2_FIXED_SIZE + int.from_bytes(data[14:16], "big")
    return None


def _parse_v1(data: bytes) -> ProxyHeader | None:
    n = min(len(data), len(V1_PREFIX))
    if data[:n] != V1_PREFIX[:n]:
        raise ProxyProtocolError("not a PROXY protocol header")
    window = data[:V1_MAX_SIZE]
    lf = window.find(b"\n")
    cr = window.find(b"\r")
    if cr >= 0 and cr + 1 < len(window) and window[cr + 1] != 0x0A:
        raise ProxyProtocolError("v1: a CR not followed by LF")
    if lf < 0:
        if len(window) >= V1_MAX_SIZE:
            raise ProxyProtocolError(f"v1: no CRLF within {V1_MAX_SIZE} bytes")
        return None
    if cr != lf - 1:
        raise ProxyProtocolError("v1: the line must end with CRLF")
    line = window[len(V1_PREFIX):cr]
    length = lf + 1
    if line == b"UNKNOWN" or line.startswith(b"UNKNOWN "):
        # The proxy cannot tell (e.g. not TCP): the rest of the line is ignored.
        return ProxyHeader(1, False, None, None, length)
    parts = line.split(b" ")
    if len(parts) != 5:
        raise ProxyProtocolError(f"v1: expected 'TCP4|TCP6 src dst sport dport', got "
                                 f"{line[:V1_MAX_SIZE]!r}")
    family, src, dst, sport, dport = parts
    if family == b"TCP4":
        version = 4
    elif family == b"TCP6":
        version = 6
    else:
        raise ProxyProtocolError(f"v1: unknown protocol {family[:20]!r}")
    source = (_v1_ip(src, version), _v1_port(sport))
    destination = (_v1_ip(dst, version), _v1_port(dport))
    return ProxyHeader(1, False, source, destination, length)


def _v1_ip(text: bytes, version: int) -> str:
    if b"%" in text:  # an IPv6 zone id (fe80::1%eth0): meaningless beyond the proxy's host
        raise ProxyProtocolError(f"v1: invalid address {text[:50]!r} (a zone id)")
    try:
        ip = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyProtocolError(f"v1: invalid address {text[:50]!r}") from None
    if ip.version != version:
        raise ProxyProtocolError(f"v1: {text[:50]!r} is not an IPv{version} address")
    return str(ip)


def _v1_port(text: bytes) -> int:
    if not (1 <= len(text) <= 5 and text.isdigit()) or int(text) > 65535:
        raise ProxyProtocolError(f"v1: invalid port {text[:20]!r}")
    return int(text)


def _parse_v2(data: bytes) -> ProxyHeader | None:
    n = min(len(data), len(V2_SIGNATURE))
    if data[:n] != V2_SIGNATURE[:n]:
        raise ProxyProtocolError("not a PROXY protocol header")
    if len(data) > 12:
        ver_cmd = data[12]
        if ver_cmd >> 4 != 2:
            raise ProxyProtocolError(f"v2: unsupported version {ver_cmd >> 4}")
        if ver_cmd & 0x0F > 1:
            raise ProxyProtocolError(f"v2: unknown command {ver_cmd & 0x0F}")
    if len(data) > 13:
        fam = data[13]
        if fam >> 4 > 3:
            raise ProxyProtocolError(f"v2: unknown address family {fam >> 4}")
        if fam & 0x0F > 2:
            raise ProxyProtocolError(f"v2: unknown transport protocol {fam & 0x0F}")
    if len(data) < V2_FIXED_SIZE:
        return None
    local = data[12] & 0x0F == 0
    family, transport = data[13] >> 4, data[13] & 0x0F
    (size,) = struct.unpack_from("!H", data, 14)
    address_size = _V2_ADDRESS_SIZE.get(family, 0)
    if not local and size < address_size:
        raise ProxyProtocolError(f"v2: {size} bytes cannot hold the addresses "
                                 f"({address_size} needed)")
    length = V2_FIXED_SIZE + size
    if len(data) < length:
        return None
    if local:
        # The proxy's own connection (a health check): the addresses are to be ignored.
        return ProxyHeader(2, True, None, None, length)
    if transport == 0x2:
        raise ProxyProtocolError("v2: a datagram (UDP) header on a stream connection")
    body = data[V2_FIXED_SIZE:length]
    if family == 0x1:
        src4, dst4, sport, dport = struct.unpack_from("!4s4sHH", body)
        return ProxyHeader(2, False, (str(ipaddress.IPv4Address(src4)), sport),
                           (str(ipaddress.IPv4Address(dst4)), dport), length)
    if family == 0x2:
        src6, dst6, sport, dport = struct.unpack_from("!16s16sHH", body)
        return ProxyHeader(2, False, (str(ipaddress.IPv6Address(src6)), sport),
                           (str(ipaddress.IPv6Address(dst6)), dport), length)
    # UNSPEC (the proxy cannot tell) or UNIX (no IP addresses): keep the real ones.
    return ProxyHeader(2, False, None, None, length)
