"""TLS and mTLS: grpckit.tls with App and dial over real loopback sockets.

Certificates come from :func:`make_pki` below (grpckit's tests do not import shop).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from structlog.testing import capture_logs

import grpckit.tls
from grpckit import App, ServerConfig, dial
from grpckit.testing import PingServicer, expect_status, ping_service
from grpckit.testing.api.v1 import ping_pb2, ping_pb2_grpc
from grpckit.tls import (
    ClientTls,
    PeerIdentity,
    ServerTls,
    channel_credentials,
    channel_options,
    peer_identity,
    server_credentials,
)

CLIENT_URI = "spiffe://test.local/alice"
SERVICE_URI = "spiffe://test.local/service"
FILES = ("ca.pem", "server.pem", "server-key.pem", "client.pem", "client-key.pem")
#: A fresh subchannel pool per channel: every new channel makes a new connection (handshake).
FRESH = (("grpc.use_local_subchannel_pool", 1),)


# -- certificates -----------------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    names: list[x509.GeneralName],
    usages: list[x509.ObjectIdentifier],
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, data: bytes) -> None:
    """Atomically, as rotation tools do: a new file renamed over the old one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_pki(directory: Path, ca_name: str = "test CA") -> Path:
    """A CA, a server certificate (localhost, 127.0.0.1) and a client certificate "alice"."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, server_key, client_key = _key(), _key(), _key()
    ca = _certificate(ca_name, ca_key, None, ca_key, [], [])
    server_names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.UniformResourceIdentifier(SERVICE_URI),
    ]
    server = _certificate(
        "test-service",
        server_key,
        ca,
        ca_key,
        server_names,
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    client_names: list[x509.GeneralName] = [
        x509.DNSName("alice.test.local"),
        x509.UniformResourceIdentifier(CLIENT_URI),
    ]
    client = _certificate(
        "alice", client_key, ca, ca_key, client_names, [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    pem = serialization.Encoding.PEM
    _write(directory / "ca.pem", ca.public_bytes(pem))
    _write(directory / "server.pem", server.public_bytes(pem))
    _write(directory / "server-key.pem", _key_pem(server_key))
    _write(directory / "client.pem", client.public_bytes(pem))
    _write(directory / "client-key.pem", _key_pem(client_key))
    return directory


def install(source: Path, live: Path, files: tuple[str, ...] = FILES) -> None:
    """Replace ``files`` in ``live`` with those of ``source``, each atomically."""
    live.mkdir(exist_ok=True)
    for name in files:
        tmp = live / f".{name}.tmp"
        shutil.copyfile(source / name, tmp)
        os.replace(tmp, live / name)


@pytest.fixture(scope="module")
def pki_a(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("a"), "CA A")


@pytest.fixture(scope="module")
def pki_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("b"), "CA B")


# -- server and client ------------------------------------------------------------------------


class IdentityPing(PingServicer):
    """Records :func:`peer_identity` of each call."""

    def __init__(self) -> None:
        super().__init__()
        self.identities: list[PeerIdentity | None] = []

    async def Ping(self, request: ping_pb2.PingRequest, context: Any) -> ping_pb2.PingResponse:
        self.identities.append(peer_identity(context))
        return await super().Ping(request, context)


@contextlib.asynccontextmanager
async def serving(
    tls: ServerTls | None, servicer: PingServicer | None = None
) -> AsyncIterator[App]:
    app = App(ServerConfig(grace_period=0.5, tls=tls))
    service = ping_service(servicer)
    app.add_service(service.add_to_server, service.servicer, service.descriptor)
    async with app:
        yield app


async def ping(app: App, tls: ClientTls | None) -> str:
    """One call on a new channel (so a new connection and handshake)."""
    async with dial(app.address, tls=tls, options=FRESH, default_timeout=5) as channel:
        reply = await ping_pb2_grpc.PingServiceStub(channel).Ping(
            ping_pb2.PingRequest(message="hi")
        )
    return reply.message


async def fails_unavailable(app: App, tls: ClientTls | None) -> None:
    async with dial(app.address, tls=tls, options=FRESH, default_timeout=5) as channel:
        stub = ping_pb2_grpc.PingServiceStub(channel)
        await expect_status(stub.Ping(ping_pb2.PingRequest()), grpc.StatusCode.UNAVAILABLE)


# -- calls ------------------------------------------------------------------------------------


async def test_tls_call_works_without_a_client_certificate(pki_a: Path) -> None:
    servicer = IdentityPing()
    async with serving(ServerTls.from_dir(pki_a), servicer) as app:
        assert await ping(app, ClientTls.from_dir(pki_a, cert=None)) == "hi"
        # a client certificate is not even asked for when it is not required
        assert await ping(app, ClientTls.from_dir(pki_a, cert="client")) == "hi"
    assert servicer.identities == [None, None]


async def test_plaintext_client_against_a_tls_port_is_unavailable(pki_a: Path) -> None:
    async with serving(ServerTls.from_dir(pki_a)) as app:
        await fails_unavailable(app, None)


async def test_client_not_trusting_the_server_ca_is_unavailable(pki_a: Path, pki_b: Path) -> None:
    async with serving(ServerTls.from_dir(pki_a)) as app:
        await fails_unavailable(app, ClientTls.from_dir(pki_b, cert=None))


async def test_server_name_override_checks_another_name(pki_a: Path) -> None:
    async with serving(ServerTls.from_dir(pki_a)) as app:
        ca = ClientTls.from_dir(pki_a, cert=None)
        assert await ping(app, ClientTls(ca.ca_file, server_name="localhost")) == "hi"
        await fails_unavailable(app, ClientTls(ca.ca_file, server_name="elsewhere.example"))


async def test_mtls_rejects_a_client_without_certificate(pki_a: Path) -> None:
    async with serving(ServerTls.from_dir(pki_a, mtls=True)) as app:
        await fails_unavailable(app, ClientTls.from_dir(pki_a, cert=None))
        assert await ping(app, ClientTls.from_dir(pki_a, cert="client")) == "hi"


async def test_mtls_rejects_a_client_certificate_from_another_ca(pki_a: Path, pki_b: Path) -> None:
    # trusts the server (CA A) but presents a certificate signed by CA B
    foreign = ClientTls(pki_a / "ca.pem", pki_b / "client.pem", pki_b / "client-key.pem")
    async with serving(ServerTls.from_dir(pki_a, mtls=True)) as app:
        await fails_unavailable(app, foreign)


async def test_peer_identity_exposes_the_client_certificate(pki_a: Path) -> None:
    servicer = IdentityPing()
    async with serving(ServerTls.from_dir(pki_a, mtls=True), servicer) as app:
        await ping(app, ClientTls.from_dir(pki_a, cert="client"))
        await ping(app, ClientTls.from_dir(pki_a, cert="server"))
    alice, service = servicer.identities
    assert alice == PeerIdentity("alice", ("alice.test.local",), (CLIENT_URI,))
    assert service is not None and service.common_name == "test-service"
    assert service.uris == (SERVICE_URI,)
    assert service.dns_names == ("localhost",)


async def test_peer_identity_is_none_for_plaintext() -> None:
    servicer = IdentityPing()
    async with serving(None, servicer) as app:
        assert await ping(app, None) == "hi"
    assert servicer.identities == [None]


# -- rotation ---------------------------------------------------------------------------------


async def test_certificates_replaced_on_disk_serve_new_connections(
    pki_a: Path, pki_b: Path, tmp_path: Path
) -> None:
    live = tmp_path / "live"
    install(pki_a, live)
    client_a = ClientTls.from_dir(pki_a, cert="client")
    client_b = ClientTls.from_dir(pki_b, cert="client")
    async with serving(ServerTls.from_dir(live, mtls=True)) as app:
        before = dial(app.address, tls=client_a, options=FRESH)
        stub = ping_pb2_grpc.PingServiceStub(before)
        try:
            await stub.Ping(ping_pb2.PingRequest(message="a"))
            await fails_unavailable(app, client_b)
            with capture_logs() as logs:
                install(pki_b, live)
                assert await ping(app, client_b) == "hi"
                await fails_unavailable(app, client_a)  # neither its CA nor its certificate
            # the connection made before the rotation keeps its certificate
            assert (await stub.Ping(ping_pb2.PingRequest(message="a"))).message == "a"
        finally:
            await before.close()
    assert [r["event"] for r in logs if r["log_level"] != "debug"] == ["tls.reloaded"]


async def test_invalid_files_keep_the_previous_certificate_and_warn_once(
    pki_a: Path, pki_b: Path, tmp_path: Path
) -> None:
    live = tmp_path / "live"
    install(pki_a, live)
    client_a = ClientTls.from_dir(pki_a, cert="client")
    async with serving(ServerTls.from_dir(live, mtls=True)) as app:
        with capture_logs() as logs:
            install(pki_b, live, ("server.pem",))  # half way: B's certificate, A's key
            assert await ping(app, client_a) == "hi"
            assert await ping(app, client_a) == "hi"
            _write(live / "server-key.pem", b"-----BEGIN PRIVATE KEY-----\ntrunc")
            assert await ping(app, client_a) == "hi"
            (live / "server-key.pem").unlink()
            assert await ping(app, client_a) == "hi"
            assert await ping(app, client_a) == "hi"
            install(pki_b, live)
            assert await ping(app, ClientTls.from_dir(pki_b, cert="client")) == "hi"
    warnings = [r for r in logs if r["log_level"] == "warning"]
    assert [r["event"] for r in warnings] == ["tls.reload_skipped"] * 3
    assert "is not the private key of" in warnings[0]["error"]
    assert "no valid unencrypted PEM private key" in warnings[1]["error"]
    assert "No such file" in warnings[2]["error"] and "server-key.pem" in warnings[2]["error"]
    assert [r["event"] for r in logs if r["log_level"] == "info"] == ["tls.reloaded"]


# -- configuration ----------------------------------------------------------------------------


def test_from_dir_names_the_missing_file_and_how_to_make_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"server\.pem does not exist.*shop certs --out"):
        ServerTls.from_dir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"ca\.pem does not exist"):
        ClientTls.from_dir(tmp_path, cert=None)


def test_from_dir_paths(pki_a: Path) -> None:
    assert ServerTls.from_dir(pki_a) == ServerTls(pki_a / "server.pem", pki_a / "server-key.pem")
    assert ServerTls.from_dir(pki_a, mtls=True, cert="client") == ServerTls(
        pki_a / "client.pem", pki_a / "client-key.pem", pki_a / "ca.pem", require_client_cert=True
    )
    assert ClientTls.from_dir(pki_a) == ClientTls(
        pki_a / "ca.pem", pki_a / "server.pem", pki_a / "server-key.pem"
    )


def test_inconsistent_settings_are_refused(pki_a: Path) -> None:
    with pytest.raises(ValueError, match="ca_file"):
        ServerTls(pki_a / "server.pem", pki_a / "server-key.pem", require_client_cert=True)
    with pytest.raises(ValueError, match="together"):
        ClientTls(pki_a / "ca.pem", cert_file=pki_a / "client.pem")


def test_channel_options_override_the_target_name(pki_a: Path) -> None:
    assert channel_options(ClientTls(pki_a / "ca.pem")) == []
    assert channel_options(ClientTls(pki_a / "ca.pem", server_name="orders")) == [
        ("grpc.ssl_target_name_override", "orders")
    ]


def test_mismatched_or_invalid_files_fail_loudly(pki_a: Path, pki_b: Path) -> None:
    with pytest.raises(ValueError, match="is not the private key of"):
        server_credentials(ServerTls(pki_a / "server.pem", pki_b / "server-key.pem"))
    with pytest.raises(ValueError, match="no valid PEM certificate"):
        channel_credentials(ClientTls(pki_a / "server-key.pem"))
    with pytest.raises(FileNotFoundError, match="shop certs"):
        channel_credentials(ClientTls(pki_a / "missing.pem"))


async def test_app_with_unusable_certificates_fails_to_start(pki_a: Path, pki_b: Path) -> None:
    tls = ServerTls(pki_a / "server.pem", pki_b / "server-key.pem")
    with pytest.raises(ValueError, match="is not the private key of"):
        async with serving(tls):
            pass


def test_all_is_sorted() -> None:
    assert grpckit.tls.__all__ == sorted(
        grpckit.tls.__all__, key=lambda name: (not name[:1].isupper(), name)
    )


async def test_a_reloading_client_channel_follows_its_files_to_a_new_ca(
    pki_a: Path, pki_b: Path, tmp_path: Path
) -> None:
    """Server and client both rotate to CA B on disk; the client's stub, made once, keeps
    working: new calls go through a channel re-dialled with the new files."""
    from grpckit.client import ReloadingChannel

    server_live, client_live = tmp_path / "server", tmp_path / "client"
    install(pki_a, server_live)
    install(pki_a, client_live)
    async with serving(ServerTls.from_dir(server_live, mtls=True)) as app:
        tls = ClientTls.from_dir(client_live, cert="client")
        channel = dial(app.address, tls=tls, options=FRESH)
        assert isinstance(channel, ReloadingChannel)
        channel._check_interval = 0.0  # look at the files on every call (test only)
        stub = ping_pb2_grpc.PingServiceStub(channel)
        try:
            assert (await stub.Ping(ping_pb2.PingRequest(message="a"))).message == "a"
            install(pki_b, server_live)
            install(pki_b, client_live)
            assert (await stub.Ping(ping_pb2.PingRequest(message="b"))).message == "b"
            assert channel.generation == 1
            # the same stub without reloading would still present CA A's certificate:
            await fails_unavailable(app, ClientTls.from_dir(pki_a, cert="client"))
        finally:
            await channel.close()
