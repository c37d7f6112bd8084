"""Forwarding headers from trusted reverse proxies: ``X-Forwarded-For/-Proto/-Host/-Prefix``
and RFC 7239 ``Forwarded`` (see ``docs/proxies.md``).

:class:`ForwardedHeaders` is built once per server from :class:`~trioserve.config.ProxyConfig`.
Whether a connection comes from a trusted proxy is decided once, when it is set up
(:meth:`ForwardedHeaders.is_trusted`: its peer's address is in ``trusted``, or ``trusted`` has
``"*"``; the server trusts a Unix socket peer too, and never a TCP peer whose address is not
known). :meth:`ForwardedHeaders.apply` then runs before the application for every request on
such a connection, and rewrites that request's features:

- the client address: a request-level ``ConnectionFeature`` (:class:`ForwardedConnection`, the
  connection's id and local address, the client's ``(ip, port)``; port 0 when not forwarded).
  A proxy multiplexes clients over one keep-alive connection, so it is set per request;
- ``RequestFeature.scheme`` (``http``/``https``; ``ws``/``wss`` count as ``http``/``https``);
- the ``host`` request header (HTTP/2's ``:authority`` reaches the app as ``host`` too);
- ``RequestFeature.root_path`` from ``X-Forwarded-Prefix``: the prefix the proxy stripped,
  placed in front of the configured root path (``Config.root_path``, which then names what a
  proxy nearer the server strips). ``path`` is left as received, as the bridges expect: ASGI's
  ``scope["path"]`` is ``root_path + path``, WSGI's ``SCRIPT_NAME`` is the root path.

The original forwarding headers stay in the request's headers.

Hops are read from the right: the right-most ``X-Forwarded-For`` entry (or ``Forwarded``
element) was written by the proxy the server is talking to. While an entry is a trusted
address it is another proxy and the walk goes on; the first entry that is not trusted is the
client (the left-most when all are). Entries are checked against the explicit addresses and
networks of ``trusted`` only: ``"*"`` trusts any connection peer, never an address written in
a header (with ``"*"`` alone, the right-most entry is the client). Entries that cannot be
checked (unparsable, ``unknown``, obfuscated ``_name``, an IPv6 address with a zone id, a
``Forwarded`` element without ``for`` or a malformed one) stop the walk too: the client is
then not known and the address stays the connection's. Scheme, host and prefix are taken from
the hops walked, the one nearest the client that has a valid value winning: the proxies that
wrote them are trusted. ``X-Forwarded-Proto/-Host/-Prefix`` are lists aligned with
``X-Forwarded-For`` from the right (their right-most value is hop 0's); a shorter list (a
proxy that sets the header rather than appending to it) gives its left-most value to the hops
beyond it. Only the right-most :data:`MAX_HOPS` entries of each header are read.
``Forwarded`` is read element by element from the right (commas inside quoted-strings do not
split elements; each header line on its own), so a malformed element the client wrote on the
left does not void what the proxies appended after it. An invalid value is never applied.
Nothing here raises on bad input.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote_to_bytes

from .config import ProxyConfig
from .features import ConnectionFeature, RequestContext, RequestFeature

__all__ = [
    "MAX_HOPS",
    "ForwardedConnection",
    "ForwardedHeaders",
    "Resolved",
    "forwarded_peer_text",
    "parse_forwarded",
    "parse_node",
]

MAX_HOPS: Final = 64
"""Entries read per forwarding header, from the right; those further left are ignored."""

Address = tuple[str, int]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_TRUST_CACHE_SIZE: Final = 1024

# RFC 9110 token and quoted-string (obs-text allowed, as the HTTP parsers allow it).
_TOKEN: Final = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED: Final = r'"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[^\x00-\x08\x0a-\x1f\x7f])*"'
_PAIR_RE: Final = re.compile(rf"({_TOKEN})=({_TOKEN}|{_QUOTED})")
_OWS: Final = " \t"
_ESCAPE_RE: Final = re.compile(r"\\(.)", re.S)
# RFC 3986 host (reg-name without "," and ";", the list separators here, or IP-literal) and
# an optional port.
_HOST_RE: Final = re.compile(
    r"(?:\[([0-9A-Fa-f:.]+)\]|(?:[A-Za-z0-9\-._~!$&'()*+=]|%[0-9A-Fa-f]{2})+)(?::([0-9]{1,5}))?")
_PREFIX_RE: Final = re.compile(r"(?:/(?:[A-Za-z0-9\-._~!$&'()*+;=:@]|%[0-9A-Fa-f]{2})*)+")
_OBFUSCATED_RE: Final = re.compile(r"_[A-Za-z0-9._\-]+")
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]")
_SCHEMES: Final = {"http": "http", "https": "https", "ws": "http", "wss": "https"}


class ForwardedConnection:
    """The request-level ``ConnectionFeature`` set when a forwarded client address is applied:
    the connection's id and local address, the client's address as ``peer``."""

    __slots__ = ("connection_id", "local", "peer")

    def __init__(self, connection_id: str, peer: Address | None,
                 local: Address | None) -> None:
        self.connection_id = connection_id
        self.peer = peer
        self.local = local


@dataclass(frozen=True, slots=True)
class Resolved:
    """What the forwarding headers of one request say, each ``None`` when not known: the
    client's ``(ip, port)``, the scheme, the host (``host[:port]``) and the prefix the proxy
    stripped (``""`` for ``/``)."""

    client: Address | None = None
    scheme: str | None = None
    host: str | None = None
    prefix: str | None = None


def forwarded_peer_text(ctx: RequestContext) -> str | None:
    """``ip:port`` of the forwarded client of a request, for the access log; ``None`` when no
    forwarded address was applied to it."""
    info = ctx.features.get(ConnectionFeature)
    if type(info) is ForwardedConnection and info.peer is not None:
        return f"{info.peer[0]}:{info.peer[1]}"
    return None


def parse_node(text: str) -> tuple[IPAddress, int] | None:
    """An address as proxies write it: ``1.2.3.4``, ``1.2.3.4:80``, ``2001:db8::1``,
    ``[2001:db8::1]``, ``[2001:db8::1]:80`` (an RFC 7239 obfuscated port ``_x`` gives port 0).
    ``None`` for anything else, ``unknown``, obfuscated names and IPv6 zone ids
    (``fe80::1%eth0``: a zone means nothing beyond the proxy's host) included."""
    if "%" in text:
        return None
    port = 0
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if rest[0] != ":":
                return None
            port_or_none = _port(rest[1:])
            if port_or_none is None:
                return None
            port = port_or_none
        try:
            return ipaddress.IPv6Address(host), port
        except ValueError:
            return None
    colons = text.count(":")
    if colons == 1:
        text, _, port_text = text.partition(":")
        port_or_none = _port(port_text)
        if port_or_none is None:
            return None
        port = port_or_none
    elif colons > 1:  # a bare IPv6 address (nginx writes them so)
        try:
            return ipaddress.IPv6Address(text), 0
        except ValueError:
            return None
    try:
        return ipaddress.IPv4Address(text), port
    except ValueError:
        return None


def _port(text: str) -> int | None:
    if _OBFUSCATED_RE.fullmatch(text):
        return 0
    if 1 <= len(text) <= 5 and text.isascii() and text.isdigit() and int(text) <= 65535:
        return int(text)
    return None


def _quoted_end(text: str, start: int) -> int:
    """The index of the ``"`` ending the quoted-string that opens at ``text[start]``
    (quoted-pairs ``\\x`` skipped), -1 when it is not terminated. Linear in the length."""
    i = start + 1
    quote = text.find('"', i)
    while quote >= 0:
        backslash = text.find("\\", i, quote)
        if backslash < 0:
            return quote
        i = backslash + 2
        if i > quote:  # that quote was escaped
            quote = text.find('"', i)
    return -1


def _split_elements(line: str) -> list[str]:
    """The elements of one ``Forwarded`` field line, split at the commas outside
    quoted-strings. An unterminated quoted-string (the client's garbage, say) makes the rest
    of the line, from the start of its element, split at every comma, so that what the
    proxies appended after it is still found. Linear in the length."""
    if '"' not in line:
        return line.split(",")
    out: list[str] = []
    start = 0
    comma = line.find(",")
    quote = line.find('"')
    while comma >= 0 or quote >= 0:
        if quote < 0 or 0 <= comma < quote:
            out.append(line[start:comma])
            start = comma + 1
            comma = line.find(",", start)
            continue
        end = _quoted_end(line, quote)
        if end < 0:
            out.extend(line[start:].split(","))
            return out
        quote = line.find('"', end + 1)
        if 0 <= comma < end:
            comma = line.find(",", end + 1)
    out.append(line[start:])
    return out


def _parse_element(text: str) -> dict[str, str] | None:
    """One ``Forwarded`` element: its parameters (lower-cased names to values, quoted-strings
    unquoted); ``{}`` for an empty one; ``None`` when it is malformed (bad syntax, a
    parameter twice)."""
    element: dict[str, str] = {}
    pos = 0
    n = len(text)
    while True:
        while pos < n and text[pos] in _OWS:
            pos += 1
        if pos >= n:
            return element
        if text[pos] == ";":
            pos += 1
            continue
        m = _PAIR_RE.match(text, pos)
        if m is None:
            return None
        name = m[1].lower()
        if name in element:
            return None
        raw = m[2]
        element[name] = _ESCAPE_RE.sub(r"\1", raw[1:-1]) if raw[0] == '"' else raw
        pos = m.end()
        while pos < n and text[pos] in _OWS:
            pos += 1
        if pos < n and text[pos] != ";":
            return None


def parse_forwarded(value: str) -> list[dict[str, str]] | None:
    """The elements of an RFC 7239 ``Forwarded`` field value, each a dict of lower-cased
    parameter names to values (quoted-strings unquoted). Empty elements are skipped. ``None``
    when any element is malformed (bad syntax, a parameter twice in one element); the
    server's resolution is more lenient (see the module docs)."""
    elements: list[dict[str, str]] = []
    for text in _split_elements(value):
        element = _parse_element(text)
        if element is None:
            return None
        if element:
            elements.append(element)
    return elements


def _elements_from_right(lines: list[bytes]) -> Iterator[dict[str, str] | None]:
    """The elements of ``Forwarded`` header lines (in order), right-most first: each parsed
    (``{}`` when empty, ``None`` when malformed)."""
    for line in reversed(lines):
        for text in reversed(_split_elements(line.decode("latin-1"))):
            yield _parse_element(text)


def _valid_scheme(value: str | None) -> str | None:
    if value is None:
        return None
    return _SCHEMES.get(value.strip(_OWS).lower())


def _valid_host(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip(_OWS)
    m = _HOST_RE.fullmatch(value)
    if m is None:
        return None
    if m[1] is not None:
        try:
            ipaddress.IPv6Address(m[1])
        except ValueError:
            return None
    if m[2] is not None and int(m[2]) > 65535:
        return None
    return value


def _valid_prefix(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip(_OWS)
    if _PREFIX_RE.fullmatch(value) is None:
        return None
    try:
        decoded = unquote_to_bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        return None
    if _CONTROL_RE.search(decoded):
        return None
    decoded = decoded.rstrip("/")
    # "", ".", "..": an empty segment would make "//host" (a network-path reference) possible
    if any(seg in ("", ".", "..") for seg in decoded.split("/")[1:]):
        return None
    return decoded


def _list(values: list[bytes]) -> list[str]:
    """The right-most :data:`MAX_HOPS` non-empty elements of a comma-separated list spread
    over ``values`` (header lines, in order)."""
    if not values:
        return []
    joined = (values[0] if len(values) == 1 else b",".join(values)).decode("latin-1")
    parts = joined.rsplit(",", MAX_HOPS)
    if len(parts) > MAX_HOPS:
        del parts[0]
    return [p for p in (p.strip(_OWS) for p in parts) if p]


def _hop(values: list[str], i: int) -> str | None:
    """Hop ``i`` (from the right) of an aligned list; a shorter list's left-most value."""
    if not values:
        return None
    return values[-1 - i] if i < len(values) else values[0]


class ForwardedHeaders:
    """Applies forwarding headers to requests from trusted peers (see the module docs).

    ``config.headers`` picks the format (``"off"``: :meth:`apply` does nothing);
    ``config.trusted`` the peers believed (IPs, CIDR networks, ``"*"``: any connection
    peer, but never an address written in a header)."""

    __slots__ = ("_cache", "_exact", "_nets4", "_nets6", "_trust_all", "format")

    def __init__(self, config: ProxyConfig) -> None:
        self.format = config.headers
        self._trust_all = "*" in config.trusted
        self._nets4: list[ipaddress.IPv4Network] = []
        self._nets6: list[ipaddress.IPv6Network] = []
        self._exact: set[str] = set()  # single addresses as sockets spell them: the fast path
        for entry in config.trusted:
            if entry == "*":
                continue
            net = ipaddress.ip_network(entry, strict=False)
            if isinstance(net, ipaddress.IPv4Network):
                self._nets4.append(net)
                if net.num_addresses == 1:
                    self._exact.add(str(net.network_address))
                    self._exact.add(f"::ffff:{net.network_address}")
            else:
                self._nets6.append(net)
                if net.num_addresses == 1:
                    self._exact.add(str(net.network_address))
        self._cache: dict[str, bool] = {}

    def is_trusted(self, peer: Address | None) -> bool:
        """Whether a connection's peer (its address as the socket gives it) is a trusted
        proxy: any address when ``trusted`` has ``"*"``, else one in ``trusted`` (an
        IPv4-mapped IPv6 address ``::ffff:a.b.c.d`` matches the IPv4 entries). ``None``, an
        address that is not known, never is: a TCP client that resets its connection before
        it is accepted has none, and must not pass for a trusted one. (A Unix socket peer,
        which has no address either, is trusted by the server, which knows the socket's
        family.)"""
        if peer is None:
            return False
        if self._trust_all:
            return True
        host = peer[0]
        if host in self._exact:
            return True
        cached = self._cache.get(host)
        if cached is not None:
            return cached
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            trusted = False
        else:
            trusted = self.is_trusted_ip(ip)
        if len(self._cache) >= _TRUST_CACHE_SIZE:
            self._cache.clear()
        self._cache[host] = trusted
        return trusted

    def is_trusted_hop(self, address: Address) -> bool:
        """Whether an address another proxy vouches for (a PROXY protocol header's source) is
        a trusted proxy itself, so that the forwarding headers it sent are believed: checked
        like a header's hops, against the explicit addresses and networks of ``trusted`` only
        (:meth:`is_trusted_ip`). ``False`` for anything that is not an IP address."""
        if "%" in address[0]:
            return False
        try:
            ip = ipaddress.ip_address(address[0])
        except ValueError:
            return False
        return self.is_trusted_ip(ip)

    def is_trusted_ip(self, ip: IPAddress) -> bool:
        """Whether ``ip`` is in the explicit addresses and networks of ``trusted`` (an
        IPv4-mapped IPv6 address matches the IPv4 entries). ``"*"`` is not looked at: it
        trusts connection peers (:meth:`is_trusted`), not the hops a header names, which a
        client may have written."""
        if isinstance(ip, ipaddress.IPv6Address):
            if any(ip in net for net in self._nets6):
                return True
            mapped = ip.ipv4_mapped
            if mapped is None:
                return False
            ip = mapped
        return any(ip in net for net in self._nets4)

    def resolve(self, headers: list[tuple[bytes, bytes]]) -> Resolved | None:
        """What the forwarding headers among ``headers`` say, for a request from a trusted
        peer; ``None`` when they say nothing usable. Never raises for bad input."""
        if self.format == "forwarded":
            return self._resolve_forwarded(headers)
        if self.format == "x-forwarded":
            return self._resolve_x_forwarded(headers)
        return None

    def _walk(self, nodes: list[str | None]) -> tuple[int, Address | None]:
        """The client's hop (index from the right) among ``nodes`` (right-most last; ``None``:
        an entry that cannot be checked) and its address (``None``: not known)."""
        last = len(nodes) - 1
        for i in range(len(nodes)):
            text = nodes[last - i]
            node = parse_node(text) if text is not None else None
            if node is None:
                return i, None
            ip, port = node
            if i == last or not self.is_trusted_ip(ip):
                return i, (str(ip), port)
        return 0, None

    def _resolve_x_forwarded(self, headers: list[tuple[bytes, bytes]]) -> Resolved | None:
        fors: list[bytes] = []
        protos: list[bytes] = []
        hosts: list[bytes] = []
        prefixes: list[bytes] = []
        found = False
        for name, value in headers:
            if name[:12] != b"x-forwarded-":
                continue
            if name == b"x-forwarded-for":
                fors.append(value)
            elif name == b"x-forwarded-proto":
                protos.append(value)
            elif name == b"x-forwarded-host":
                hosts.append(value)
            elif name == b"x-forwarded-prefix":
                prefixes.append(value)
            else:
                continue
            found = True
        if not found:
            return None
        hop, client = self._walk(list(_list(fors)))
        scheme = host = prefix = None
        proto_list, host_list, prefix_list = _list(protos), _list(hosts), _list(prefixes)
        for i in range(hop + 1):  # the value nearest the client wins
            scheme = _valid_scheme(_hop(proto_list, i)) or scheme
            host = _valid_host(_hop(host_list, i)) or host
            p = _valid_prefix(_hop(prefix_list, i))
            if p is not None:
                prefix = p
        return Resolved(client, scheme, host, prefix)

    def _resolve_forwarded(self, headers: list[tuple[bytes, bytes]]) -> Resolved | None:
        lines = [value for name, value in headers if name == b"forwarded"]
        if not lines:
            return None
        # Right-most first, up to the first malformed element: left of it nothing can be
        # checked (it is the client's own text, or it hides where one element ends).
        elements: list[dict[str, str]] = []
        malformed = False
        for element in _elements_from_right(lines):
            if element is None:
                malformed = True
                break
            if element:
                elements.append(element)
                if len(elements) == MAX_HOPS:
                    break
        if not elements:
            return None
        elements.reverse()
        nodes = [e.get("for") for e in elements]
        if malformed:
            elements.insert(0, {})
            nodes.insert(0, None)
        hop, client = self._walk(nodes)
        scheme = host = None
        last = len(elements) - 1
        for i in range(hop + 1):
            element = elements[last - i]
            scheme = _valid_scheme(element.get("proto")) or scheme
            host = _valid_host(element.get("host")) or host
        return Resolved(client, scheme, host, None)

    def apply(self, ctx: RequestContext) -> None:
        """Rewrite the features of a request that came over a connection from a trusted proxy
        (the caller decides: see :meth:`is_trusted`) from its forwarding headers; when they
        say nothing usable (or the format is ``"off"``), leave the request as it is. Never
        raises for bad input.

        Post-conditions: a forwarded client sets a request-level ``ConnectionFeature``; a
        forwarded scheme sets ``RequestFeature.scheme``; a forwarded host replaces the
        ``host`` header (``RequestFeature.headers`` becomes a new list); a forwarded prefix
        is put in front of ``RequestFeature.root_path``."""
        if self.format == "off":
            return
        features = ctx.features
        req = features.get(RequestFeature)
        if req is None:
            return
        resolved = self.resolve(req.headers)
        if resolved is None:
            return
        if resolved.client is not None:
            conn = features.get(ConnectionFeature)
            features.set(ConnectionFeature, ForwardedConnection(
                conn.connection_id if conn is not None else "", resolved.client,
                conn.local if conn is not None else None))
        if resolved.scheme is not None:
            req.scheme = resolved.scheme
        if resolved.host is not None:
            req.headers = _with_host(req.headers, resolved.host.encode("ascii"))
        if resolved.prefix is not None:
            req.root_path = resolved.prefix + req.root_path


def _with_host(headers: list[tuple[bytes, bytes]], host: bytes) -> list[tuple[bytes, bytes]]:
    """A copy of ``headers`` with the ``host`` value replaced (added when absent)."""
    out: list[tuple[bytes, bytes]] = []
    replaced = False
    for name, value in headers:
        if name == b"host":
            if replaced:
                continue
            replaced = True
            value = host
        out.append((name, value))
    if not replaced:
        out.append((b"host", host))
    return out
