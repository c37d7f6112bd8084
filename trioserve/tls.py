"""TLS: the server's ``ssl.SSLContext`` from :class:`~trioserve.config.Tls`, the per-connection
:class:`~trioserve.features.TlsFeature`, and the development certificate.

No Trio here: the handshake itself runs in :mod:`trioserve.server` (``trio.SSLStream``) under
its own deadline.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import ssl
import tempfile
from pathlib import Path
from typing import Any, Literal, Protocol, overload

from .config import ConfigError, Tls

__all__ = ["ALPN_PROTOCOLS", "TlsInfo", "server_context", "write_dev_cert"]

# Offered in this order (the client's preference wins among them); "h2" only with HTTP/2 on.
ALPN_PROTOCOLS = ["h2", "http/1.1"]


def server_context(tls: Tls, *, http2: bool = True) -> ssl.SSLContext:
    """The server-side context for ``tls``: TLS 1.2 minimum, ALPN (``h2`` offered only when
    ``http2``), no compression or
    renegotiation, the certificate chain loaded, client certificates checked as configured.

    Raises :class:`ConfigError` naming the file and the problem: a file that is missing or
    unreadable, a certificate or key that is not PEM, a wrong ``keyfile_password``, a key that
    does not match the certificate, bad CA certificates or an invalid cipher list."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    if hasattr(ssl, "OP_NO_RENEGOTIATION"):
        ctx.options |= ssl.OP_NO_RENEGOTIATION
    for name in ("certfile", "keyfile", "ca_certs"):
        path = getattr(tls, name)
        if path is not None and not os.path.isfile(path):
            raise ConfigError(f"Tls.{name}: no such file: {path!r}")
    encrypted = _key_is_encrypted(tls.keyfile or tls.certfile)

    def no_password() -> str:
        # Without this OpenSSL would prompt on the terminal for an encrypted key.
        raise _NoPassword

    try:
        ctx.load_cert_chain(tls.certfile, tls.keyfile,
                            password=tls.keyfile_password if tls.keyfile_password is not None
                            else no_password)
    except _NoPassword:
        raise ConfigError(f"Tls.keyfile {tls.keyfile or tls.certfile!r} is encrypted: set "
                          "keyfile_password (--keyfile-password or "
                          "TRIOSERVE_KEYFILE_PASSWORD)") from None
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if encrypted and tls.keyfile_password is not None and "MISMATCH" not in reason:
            detail = "the key could not be decrypted (wrong keyfile_password)"
        elif "PEM" in reason or "NO_START_LINE" in reason:
            detail = "not a PEM certificate chain and key"
        elif "KEY_VALUES_MISMATCH" in reason:
            detail = "the private key does not match the certificate"
        else:
            detail = str(exc)
        raise ConfigError(f"Tls.certfile/keyfile {tls.certfile!r}, {tls.keyfile!r}: {detail}") \
            from None
    except OSError as exc:
        raise ConfigError(f"Tls.certfile/keyfile: {exc.strerror or exc}") from None
    if tls.ca_certs is not None:
        try:
            ctx.load_verify_locations(cafile=tls.ca_certs)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"Tls.ca_certs {tls.ca_certs!r}: {exc}") from None
    ctx.verify_mode = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL,
                       "required": ssl.CERT_REQUIRED}[tls.client_cert]
    if tls.ciphers is not None:
        try:
            ctx.set_ciphers(tls.ciphers)
        except ssl.SSLError:
            raise ConfigError(f"Tls.ciphers {tls.ciphers!r}: no cipher matches this list") \
                from None
    ctx.set_alpn_protocols(ALPN_PROTOCOLS if http2 else ALPN_PROTOCOLS[1:])
    return ctx


class _NoPassword(Exception):
    """An encrypted key and no password configured."""


def _key_is_encrypted(path: str) -> bool:
    """Whether a PEM file holds an encrypted private key (PKCS#8 or legacy PEM encryption)."""
    try:
        head = Path(path).read_bytes()[:1 << 20]
    except OSError:
        return False
    return b"ENCRYPTED PRIVATE KEY" in head or b"Proc-Type: 4,ENCRYPTED" in head


_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


class SslInfoSource(Protocol):
    """What :class:`TlsInfo` reads: an ``ssl.SSLObject``, or a ``trio.SSLStream`` (which
    forwards these methods to its SSLObject)."""

    def version(self) -> str | None: ...
    def cipher(self) -> tuple[str, str, int] | None: ...
    def selected_alpn_protocol(self) -> str | None: ...
    @overload
    def getpeercert(self, binary_form: Literal[False] = ...) -> Any: ...
    @overload
    def getpeercert(self, binary_form: Literal[True]) -> bytes | None: ...


class TlsInfo:
    """``TlsFeature`` of one connection, read once the handshake is done.

    ``version`` (``"TLSv1.3"``), ``cipher`` (OpenSSL's name), ``alpn_protocol``,
    ``peer_certificate`` (``ssl.SSLObject.getpeercert()``, ``None`` without a client
    certificate); and for the ASGI ``tls`` extension ``tls_version`` (``0x0304``),
    ``cipher_suite`` (the IANA number, ``None`` if unknown), ``peer_certificate_pem``."""

    __slots__ = ("alpn_protocol", "cipher", "cipher_suite", "peer_certificate",
                 "peer_certificate_name", "peer_certificate_pem", "server_certificate_pem",
                 "tls_version", "version")

    def __init__(self, obj: SslInfoSource, suites: dict[str, int],
                 server_certificate_pem: str | None) -> None:
        self.server_certificate_pem = server_certificate_pem
        self.version: str | None = obj.version()
        cipher = obj.cipher()
        self.cipher: str | None = cipher[0] if cipher else None
        self.alpn_protocol: str | None = obj.selected_alpn_protocol()
        self.peer_certificate: dict[str, Any] | None = obj.getpeercert() or None
        der = obj.getpeercert(binary_form=True)
        self.peer_certificate_pem: str | None = (ssl.DER_cert_to_PEM_cert(der)
                                                 if der else None)
        self.peer_certificate_name = (_subject_name(der, self.peer_certificate)
                                      if der and self.peer_certificate else None)
        self.tls_version: int | None = _VERSIONS.get(self.version or "")
        self.cipher_suite: int | None = suites.get(self.cipher or "")


def leaf_certificate_pem(certfile: str) -> str | None:
    """The first certificate of a PEM chain file (the server's own), ``None`` if none."""
    try:
        text = Path(certfile).read_text("ascii", errors="replace")
    except OSError:
        return None
    begin = text.find("-----BEGIN CERTIFICATE-----")
    end_marker = "-----END CERTIFICATE-----"
    end = text.find(end_marker, begin)
    if begin < 0 or end < 0:
        return None
    return text[begin:end + len(end_marker)] + "\n"


_RDN_NAMES = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
              "countryName": "C", "stateOrProvinceName": "ST", "localityName": "L",
              "streetAddress": "STREET", "domainComponent": "DC", "userId": "UID"}


def rfc4514_name(subject: Any) -> str | None:
    """A ``getpeercert()`` subject as an RFC 4514 string (most specific RDN first), e.g.
    ``"CN=client,O=Example"``; ``None`` for no subject."""
    if not subject:
        return None

    def escape(value: str) -> str:
        out = "".join("\\" + c if c in ',+"\\<>;=' else "\\00" if c == "\0" else c
                      for c in value)
        if out[:1] in ("#", " "):
            out = "\\" + out
        if value.endswith(" "):
            out = out[:-1] + "\\ "
        return out

    rdns = ["+".join(f"{_RDN_NAMES.get(k, k)}={escape(v)}" for k, v in rdn)
            for rdn in subject]
    return ",".join(reversed(rdns))


def _subject_name(der: bytes, cert: dict[str, Any]) -> str | None:
    """The certificate's subject in RFC 4514 form: cryptography's rendering when installed
    (exact escaping, dotted OIDs for names without a short form), else :func:`rfc4514_name`."""
    try:
        from cryptography import x509
    except ImportError:
        return rfc4514_name(cert.get("subject"))
    try:
        return x509.load_der_x509_certificate(der).subject.rfc4514_string() or None
    except ValueError:
        return rfc4514_name(cert.get("subject"))


def cipher_suites(ctx: ssl.SSLContext) -> dict[str, int]:
    """OpenSSL cipher name -> IANA cipher suite number, for the ciphers ``ctx`` may use."""
    return {c["name"]: c["id"] & 0xFFFF for c in ctx.get_ciphers()}


def write_dev_cert(directory: str | os.PathLike[str], *, days: int = 365,
                   force: bool = False) -> tuple[Path, Path]:
    """Write ``localhost.pem`` (a self-signed certificate for ``localhost``, ``127.0.0.1`` and
    ``::1``) and ``localhost-key.pem`` (its unencrypted key, mode 0600) into ``directory``;
    returns their paths. For development only: browsers and clients trust it only once told to.

    Existing files are kept unless ``force``. The key is written to a new private file (mode
    0600, never through a symlink) that then replaces the old one.

    Raises :class:`RuntimeError` if the ``cryptography`` package is not installed or the files
    exist (without ``force``), and :class:`OSError` if they cannot be written."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        raise RuntimeError("dev-cert needs the cryptography package: "
                           "pip install 'trioserve[dev-cert]'") from None
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    cert_path = out / "localhost.pem"
    key_path = out / "localhost-key.pem"
    if not force and (cert_path.exists() or key_path.exists()):
        raise RuntimeError(f"{cert_path} or {key_path} already exists; use --force to replace "
                           "them")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME,
                                         "trioserve development certificate")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".localhost-key.")  # 0600, created exclusively
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        os.replace(tmp, key_path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    cert_path.unlink(missing_ok=True)  # not written through a symlink left there
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
