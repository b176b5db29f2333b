"""Development certificates for TLS and mTLS between shop processes (``shop certs``).

One directory holds a development CA and two certificates it signs, all with ECDSA P-256 keys:

- ``ca.pem``/``ca-key.pem``: the CA ("shop development CA"); clients and servers trust it.
- ``server.pem``/``server-key.pem``: one certificate shared by every shop service, valid for
  the given hosts, usable as server and as client certificate (services call each other over
  mTLS with it) and marked as a service identity by the URI SAN :data:`SERVICE_URI`.
- ``client.pem``/``client-key.pem``: an end-user or operator certificate (CN "shop-client",
  URI :data:`CLIENT_URI`), client use only, without the service URI.

Files are replaced atomically (write, then rename), so running servers pick up regenerated
certificates (``--force``) for new connections. Not for production: the CA key sits next to
the certificates.

Example::

    write_dev_certs(Path(".shop/certs"))
    tls = ServerTls.from_dir(Path(".shop/certs"), mtls=True)
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CLIENT_URI", "SERVICE_URI", "write_dev_certs"]

#: The URI SAN that marks a shop service identity (only ``server.pem`` carries it).
SERVICE_URI = "spiffe://shop.local/service"
#: The URI SAN of the end-user/operator certificate ``client.pem``.
CLIENT_URI = "spiffe://shop.local/client"

_CA_NAME = "shop development CA"
_FILES = ("ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "client.pem", "client-key.pem")
#: Certificates start a little in the past, for clocks slightly behind this one.
_BACKDATE = dt.timedelta(minutes=5)

_Key = ec.EllipticCurvePrivateKey


def write_dev_certs(
    out: Path,
    *,
    hosts: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
    days: int = 365,
    force: bool = False,
) -> list[Path]:
    """Write a development CA, the shared service certificate and a client certificate.

    ``out`` is created with mode 0700, private keys get 0600. ``hosts`` are the names and IP
    addresses the service certificate is valid for. Raises FileExistsError when one of the
    files exists and ``force`` is false. Returns the written paths, CA first.

    Example::

        paths = write_dev_certs(Path(".shop/certs"), hosts=["localhost", "orders.internal"])
    """
    if days < 1:
        raise ValueError(f"days must be at least 1, not {days}")
    names = _subject_alt_names(hosts)
    paths = [out / name for name in _FILES]
    existing = [path.name for path in paths if path.exists()]
    if existing and not force:
        raise FileExistsError(
            f"{', '.join(existing)} already exist in {out}; pass --force to overwrite them"
        )
    if not out.is_dir():
        out.mkdir(mode=0o700, parents=True)
        out.chmod(0o700)  # mkdir's mode is filtered by the umask
    now = dt.datetime.now(dt.UTC)
    not_after = now + dt.timedelta(days=days)
    ca_key = _new_key()
    ca = _ca_certificate(ca_key, now, not_after)
    server_key, client_key = _new_key(), _new_key()
    server = _leaf(
        ca,
        ca_key,
        server_key,
        "shop-service",
        [*names, x509.UniformResourceIdentifier(SERVICE_URI)],
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        now,
        not_after,
    )
    client = _leaf(
        ca,
        ca_key,
        client_key,
        "shop-client",
        [x509.UniformResourceIdentifier(CLIENT_URI)],
        [ExtendedKeyUsageOID.CLIENT_AUTH],
        now,
        not_after,
    )
    contents = [
        _pem(ca),
        _key_pem(ca_key),
        _pem(server),
        _key_pem(server_key),
        _pem(client),
        _key_pem(client_key),
    ]
    for path, data in zip(paths, contents, strict=True):
        _write_atomically(path, data, mode=0o600 if path.name.endswith("-key.pem") else 0o644)
    return paths


def _subject_alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    if not hosts:
        raise ValueError("at least one host is needed for the service certificate")
    names: list[x509.GeneralName] = []
    for host in hosts:
        host = host.strip().strip("[]")
        if not host:
            raise ValueError("empty host name")
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _new_key() -> _Key:
    return ec.generate_private_key(ec.SECP256R1())


def _ca_certificate(key: _Key, now: dt.datetime, not_after: dt.datetime) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _CA_NAME)])
    usage = _key_usage(key_cert_sign=True, crl_sign=True)
    return (
        _builder(name, name, key, now, not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .sign(key, hashes.SHA256())
    )


def _leaf(
    ca: x509.Certificate,
    ca_key: _Key,
    key: _Key,
    common_name: str,
    names: list[x509.GeneralName],
    usages: list[x509.ObjectIdentifier],
    now: dt.datetime,
    not_after: dt.datetime,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return (
        _builder(subject, ca.subject, key, now, not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, key: _Key, now: dt.datetime, not_after: dt.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _key_usage(
    *, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: _Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_atomically(path: Path, data: bytes, *, mode: int) -> None:
    """Write ``data`` to a new file beside ``path`` with ``mode``, then rename it over ``path``.

    Readers (a server reloading its certificate) see the old file or the new one, never half.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)  # mkstemp creates 0600; certificates are world-readable
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
