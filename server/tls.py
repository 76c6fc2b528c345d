"""TLS: a self-signed certificate made on first start, and a server context that cannot be stalled.

Browsers only give a page the microphone on a secure origin, so HTTPS is the default.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

CERT_NAME, KEY_NAME = "cert.pem", "key.pem"
VALID_DAYS = 825  # the longest validity Apple/Chrome accept for a server certificate


def certificate_names(ip: str | None = None) -> list[str]:
    """Names the self-signed certificate covers: localhost, loopbacks, the listen address, the host name."""
    names = ["localhost", "127.0.0.1", "::1"]
    hostname = socket.gethostname()
    for extra in (ip, hostname, socket.getfqdn()):
        if extra and extra not in ("0.0.0.0", "::") and extra not in names:
            names.append(extra)
    return names


def _san_entry(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_self_signed(directory: Path, names: list[str]) -> tuple[Path, Path]:
    """Write an EC P-256 certificate for ``names`` and its key (mode 0600) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0]),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vita-duplex (self-signed)")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName([_san_entry(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / CERT_NAME, directory / KEY_NAME
    key_bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _covers(cert_path: Path, names: list[str]) -> bool:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    if cert.not_valid_after_utc < dt.datetime.now(dt.UTC) + dt.timedelta(days=1):
        return False
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    have = {str(v) for v in san.get_values_for_type(x509.DNSName)}
    have |= {str(v) for v in san.get_values_for_type(x509.IPAddress)}
    return all(str(ipaddress.ip_address(n)) in have if is_ip(n) else n in have for n in names)


def is_ip(name: str) -> bool:
    """Whether ``name`` is an IPv4 or IPv6 address (not a host name)."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def ensure_certificate(directory: Path, ip: str | None) -> tuple[Path, Path]:
    """Reuse the certificate in ``directory`` if it covers our names and is valid; otherwise make one."""
    names = certificate_names(ip)
    cert_path, key_path = directory / CERT_NAME, directory / KEY_NAME
    if cert_path.is_file() and key_path.is_file():
        try:
            if _covers(cert_path, names):
                return cert_path, key_path
        except (ValueError, x509.ExtensionNotFound):
            log.warning("certificate in %s is unreadable; making a new one", directory)
    log.info("making a self-signed certificate in %s for %s", directory, ", ".join(names))
    return make_self_signed(directory, names)


class DeferredHandshakeContext(ssl.SSLContext):
    """Server sockets wrapped by this context skip the handshake in ``accept()``.

    Werkzeug wraps the listening socket, so the handshake would otherwise run in the single accept
    loop: one client that connects and never sends a ClientHello would block every other connection.
    The request handler completes the handshake in the connection's own thread instead.
    """

    def wrap_socket(self, sock, server_side=False, do_handshake_on_connect=True, *args, **kwargs):
        return super().wrap_socket(
            sock, server_side, do_handshake_on_connect and not server_side, *args, **kwargs
        )


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS 1.2+ server context for ``cert``/``key`` with the deferred handshake."""
    ctx = DeferredHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    return ctx
