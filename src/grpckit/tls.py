"""TLS and mutual TLS for servers and clients, from PEM files on disk.

Servers: ``ServerConfig(tls=ServerTls.from_dir(certs, mtls=True))`` makes the App serve TLS.
Certificate files replaced on disk are picked up by new connections without a restart
(connections already open keep the certificate they started with). Clients:
``dial(target, tls=ClientTls.from_dir(certs))``; each dial reads the files again, so new
channels pick up rotated files too. Handlers learn who connected with :func:`peer_identity`.

grpcio asks for a client certificate only when it requires one: with
``require_client_cert=False`` clients are never asked for theirs and :func:`peer_identity`
returns None.

Example::

    certs = Path(".shop/certs")              # `shop certs --out .shop/certs`
    app = App(ServerConfig(port=50051, tls=ServerTls.from_dir(certs, mtls=True)))
    channel = dial("localhost:50051", tls=ClientTls.from_dir(certs, cert="client"))
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from grpckit.logs import get_logger

__all__ = [
    "ClientTls",
    "PeerIdentity",
    "ServerTls",
    "channel_credentials",
    "channel_options",
    "peer_identity",
    "server_credentials",
]

_HINT = "create development certificates with `shop certs --out DIR`"


@dataclass(frozen=True)
class ServerTls:
    """The server's certificate and key, and the CA that signs client certificates (mTLS).

    ``require_client_cert`` needs ``ca_file``; without it grpcio does not ask clients for a
    certificate at all.

    Example::

        ServerConfig(port=50051, tls=ServerTls(Path("server.pem"), Path("server-key.pem")))
        ServerConfig(port=50051, tls=ServerTls.from_dir(Path(".shop/certs"), mtls=True))
    """

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None
    require_client_cert: bool = False

    def __post_init__(self) -> None:
        if self.require_client_cert and self.ca_file is None:
            raise ValueError("require_client_cert needs ca_file, the CA of client certificates")

    @classmethod
    def from_dir(cls, directory: Path, *, mtls: bool = False, cert: str = "server") -> ServerTls:
        """``<cert>.pem`` and ``<cert>-key.pem`` in ``directory``; with ``mtls``, ``ca.pem`` too.

        Raises FileNotFoundError (naming the file) when one is missing.

        Example: ``ServerTls.from_dir(Path(".shop/certs"), mtls=True)``
        """
        cert_file, key_file = _pair_in(directory, cert)
        ca_file = _existing(directory / "ca.pem") if mtls else None
        return cls(cert_file, key_file, ca_file, require_client_cert=mtls)


@dataclass(frozen=True)
class ClientTls:
    """The CA that signs server certificates, and the client's own certificate for mTLS.

    ``server_name`` overrides the name checked against the server's certificate (and sent as
    SNI) when the dialled address is not one the certificate names.

    Example::

        ClientTls(Path("ca.pem"), Path("client.pem"), Path("client-key.pem"))
        dial("10.0.0.7:50051", tls=ClientTls(Path("ca.pem"), server_name="localhost"))
    """

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: pass both or neither")

    @classmethod
    def from_dir(cls, directory: Path, *, cert: str | None = "server") -> ClientTls:
        """``ca.pem`` in ``directory``, plus ``<cert>.pem``/``<cert>-key.pem`` unless ``cert``
        is None (TLS without a client certificate).

        Raises FileNotFoundError (naming the file) when one is missing.

        Example: ``ClientTls.from_dir(Path(".shop/certs"), cert="client")``
        """
        ca_file = _existing(directory / "ca.pem")
        if cert is None:
            return cls(ca_file)
        cert_file, key_file = _pair_in(directory, cert)
        return cls(ca_file, cert_file, key_file)

    def files_signature(self) -> tuple[tuple[int, int, int, int], ...]:
        """A cheap fingerprint (inode, size, mtime, ctime) of the files: it changes when any
        of them is replaced, so a long-lived client can re-dial with the new files.

        Example: ``if tls.files_signature() != seen: channel = dial(target, tls=tls)``
        """
        paths = [p for p in (self.ca_file, self.cert_file, self.key_file) if p is not None]
        try:
            stats = [os.stat(path) for path in paths]
        except OSError:
            return ()
        return tuple((s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns) for s in stats)


@dataclass(frozen=True)
class PeerIdentity:
    """What the client's verified certificate says about it.

    Example: ``PeerIdentity("shop-client", (), ("spiffe://shop.local/client",))``
    """

    common_name: str | None
    dns_names: tuple[str, ...]
    uris: tuple[str, ...]


def server_credentials(tls: ServerTls) -> grpc.ServerCredentials:
    """Credentials for ``add_secure_port`` that follow the files in ``tls`` as they change.

    The files are read and checked now (FileNotFoundError or ValueError when they are missing,
    not PEM or the key does not match the certificate). Before each new connection's handshake
    grpc asks for the current configuration: the files are ``stat``-ed and re-read only when
    one changed (inode, size, mtime). A changed set that is incomplete or invalid (half
    written, key and certificate not matching yet) is logged once as a warning and the last
    good configuration stays in use. Replace files atomically (write, then rename), as
    ``shop certs --force`` and Kubernetes secret volumes do.

    Example: ``server.add_secure_port("[::]:50051", server_credentials(tls))``
    """
    reloader = _Reloader(tls)
    fetcher = cast(Callable[[], grpc.ServerCertificateConfiguration], reloader)
    return grpc.dynamic_ssl_server_credentials(
        reloader.initial, fetcher, require_client_authentication=tls.require_client_cert
    )


def channel_credentials(tls: ClientTls) -> grpc.ChannelCredentials:
    """Channel credentials from the files in ``tls``, read (and checked) on every call.

    Example: ``grpc.aio.secure_channel(target, channel_credentials(tls), channel_options(tls))``
    """
    ca = _read(tls.ca_file)
    _check_certificates(ca, tls.ca_file)
    if tls.cert_file is None or tls.key_file is None:
        return grpc.ssl_channel_credentials(root_certificates=ca)
    chain, key = _read_pair(tls.cert_file, tls.key_file)
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=chain
    )


def channel_options(tls: ClientTls) -> list[tuple[str, Any]]:
    """The channel arguments ``tls`` needs (``grpc.ssl_target_name_override``).

    Example: ``channel_options(ClientTls(ca, server_name="localhost"))``
    """
    if tls.server_name is None:
        return []
    return [("grpc.ssl_target_name_override", tls.server_name)]


def peer_identity(context: grpc.aio.ServicerContext[Any, Any]) -> PeerIdentity | None:
    """The verified client certificate's identity; None for plaintext or no client certificate.

    Parsed from the certificate grpc puts in the auth context (``x509_pem_cert``), cached by
    its bytes: calls on the same connection, or from the same client, parse it once.

    Example::

        identity = peer_identity(context)
        if identity is None or "spiffe://example.org/service" not in identity.uris:
            raise permission_denied("this method is for services", reason="NOT_A_SERVICE")
    """
    pems = context.auth_context().get("x509_pem_cert")
    pem = next(iter(pems), None) if pems else None
    return _identity(pem) if pem else None


# -- internals --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _identity(pem: bytes) -> PeerIdentity:
    certificate = x509.load_pem_x509_certificate(pem)
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = str(names[0].value) if names else None
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return PeerIdentity(common_name, (), ())
    dns_names = tuple(san.get_values_for_type(x509.DNSName))
    uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
    return PeerIdentity(common_name, dns_names, uris)


@dataclass(frozen=True)
class _Material:
    chain: bytes
    key: bytes
    ca: bytes | None

    @classmethod
    def load(cls, tls: ServerTls) -> _Material:
        """Read and check the files; OSError or ValueError names the file at fault."""
        chain, key = _read_pair(tls.cert_file, tls.key_file)
        ca = None
        if tls.ca_file is not None:
            ca = _read(tls.ca_file)
            _check_certificates(ca, tls.ca_file)
        return cls(chain, key, ca)

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(self.key, self.chain)], self.ca)


_Signature = tuple[tuple[int, int, int, int], ...]


class _Reloader:
    """The fetcher grpc core calls before every handshake, on a core thread. Never raises."""

    def __init__(self, tls: ServerTls) -> None:
        self._tls = tls
        self._paths = [tls.cert_file, tls.key_file]
        if tls.ca_file is not None:
            self._paths.append(tls.ca_file)
        self._lock = threading.Lock()
        self._log = get_logger("grpckit.tls")
        for path in self._paths:
            _existing(path)
        #: the state of the files last looked at (None: one was missing); taken before reading,
        #: so that a change made while reading is seen by the next handshake
        self._seen: _Signature | None = self._signature()
        self.initial = _Material.load(tls).configuration()
        self._broken = False

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            with self._lock:
                return self._fetch()
        except Exception:  # a bug here must not reach grpc core: keep the current certificate
            if not self._broken:
                self._broken = True
                self._log.exception("tls.reload_failed", cert_file=str(self._tls.cert_file))
            return None

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            signature = self._signature()
        except OSError as exc:
            self._keep(None, exc)
            return None
        if signature == self._seen:
            return None
        try:
            material = _Material.load(self._tls)
        except (OSError, ValueError) as exc:
            self._keep(signature, exc)
            return None
        self._seen = signature
        self._log.info("tls.reloaded", cert_file=str(self._tls.cert_file))
        return material.configuration()

    def _keep(self, signature: _Signature | None, exc: Exception) -> None:
        """Warn once per state of the files and keep the configuration grpc has."""
        if signature is not None or self._seen is not None:  # a state not seen before
            self._log.warning("tls.reload_skipped", error=str(exc), keeping="previous")
        self._seen = signature

    def _signature(self) -> _Signature:
        stats = [os.stat(path) for path in self._paths]
        return tuple((s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns) for s in stats)


def _pair_in(directory: Path, name: str) -> tuple[Path, Path]:
    return _existing(directory / f"{name}.pem"), _existing(directory / f"{name}-key.pem")


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; {_HINT}")
    return path


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist; {_HINT}") from None


def _check_certificates(pem: bytes, path: Path) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise ValueError(f"{path}: no valid PEM certificate ({exc})") from None


def _read_pair(cert_file: Path, key_file: Path) -> tuple[bytes, bytes]:
    """The certificate chain and private key, checked to belong together."""
    chain, key = _read(cert_file), _read(key_file)
    leaf = _check_certificates(chain, cert_file)[0]
    try:
        private_key = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"{key_file}: no valid unencrypted PEM private key ({exc})") from None
    if private_key.public_key() != leaf.public_key():
        raise ValueError(f"{key_file} is not the private key of {cert_file}")
    return chain, key
