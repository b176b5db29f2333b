"""shop.certs: the development CA and certificates, checked by themselves and with grpckit.tls."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import shutil
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from grpckit import App, ServerConfig, dial
from grpckit.testing import PingServicer, ping_service
from grpckit.testing.api.v1 import ping_pb2, ping_pb2_grpc
from grpckit.tls import ClientTls, PeerIdentity, ServerTls, peer_identity
from shop.certs import CLIENT_URI, SERVICE_URI, write_dev_certs

NAMES = ["ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "client.pem", "client-key.pem"]


def load(directory: Path, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((directory / name).read_bytes())


def common_name(certificate: x509.Certificate) -> str:
    return str(certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def extension(certificate: x509.Certificate, kind: type[Any]) -> Any:
    return certificate.extensions.get_extension_for_class(kind).value


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs") / "dev"
    write_dev_certs(out)
    return out


def test_writes_six_files_keys_private(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "certs"
    paths = write_dev_certs(out)
    assert paths == [out / name for name in NAMES]
    assert sorted(p.name for p in out.iterdir()) == sorted(NAMES)  # no temporary files left
    assert mode(out) == 0o700
    assert {p.name: mode(p) for p in paths if p.name.endswith("-key.pem")} == dict.fromkeys(
        ["ca-key.pem", "server-key.pem", "client-key.pem"], 0o600
    )
    assert mode(out / "server.pem") == 0o644


def test_the_ca(certs: Path) -> None:
    ca = load(certs, "ca.pem")
    assert common_name(ca) == "shop development CA"
    assert ca.issuer == ca.subject
    assert extension(ca, x509.BasicConstraints).ca is True
    assert extension(ca, x509.KeyUsage).key_cert_sign is True
    key = ca.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"


def test_the_service_certificate_serves_and_calls_as_a_service(certs: Path) -> None:
    server = load(certs, "server.pem")
    san = extension(server, x509.SubjectAlternativeName)
    assert common_name(server) == "shop-service"
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [SERVICE_URI]
    assert list(extension(server, x509.ExtendedKeyUsage)) == [
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ]
    policy = PolicyBuilder().store(Store([load(certs, "ca.pem")]))
    policy.build_server_verifier(x509.DNSName("localhost")).verify(server, [])
    policy.build_server_verifier(x509.IPAddress(ipaddress.ip_address("127.0.0.1"))).verify(
        server, []
    )
    verified = policy.build_client_verifier().verify(server, [])
    assert verified.subjects is not None and x509.UniformResourceIdentifier(SERVICE_URI) in (
        verified.subjects
    )


def test_the_client_certificate_is_for_clients_only_and_not_a_service(certs: Path) -> None:
    client = load(certs, "client.pem")
    assert common_name(client) == "shop-client"
    san = extension(client, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [CLIENT_URI]
    assert list(extension(client, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    policy = PolicyBuilder().store(Store([load(certs, "ca.pem")]))
    policy.build_client_verifier().verify(client, [])
    with pytest.raises(VerificationError):
        policy.build_server_verifier(x509.DNSName("localhost")).verify(client, [])


def test_hosts_and_days(tmp_path: Path) -> None:
    write_dev_certs(tmp_path, hosts=["orders.internal", "10.0.0.7", "[::1]"], days=3)
    server = load(tmp_path, "server.pem")
    san = extension(server, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == ["orders.internal"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.7"),
        ipaddress.ip_address("::1"),
    ]
    lifetime = server.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=2, hours=23) < lifetime <= dt.timedelta(days=3)
    with pytest.raises(ValueError, match="host"):
        write_dev_certs(tmp_path / "none", hosts=[])
    with pytest.raises(ValueError, match="days"):
        write_dev_certs(tmp_path / "zero", days=0)


def test_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    write_dev_certs(tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in NAMES}
    with pytest.raises(FileExistsError, match="--force"):
        write_dev_certs(tmp_path)
    assert {name: (tmp_path / name).read_bytes() for name in NAMES} == before
    (tmp_path / "server.pem").unlink()
    with pytest.raises(FileExistsError, match=r"ca\.pem"):  # one left is enough to refuse
        write_dev_certs(tmp_path)
    write_dev_certs(tmp_path, force=True)
    assert (tmp_path / "ca.pem").read_bytes() != before["ca.pem"]


# -- with grpckit.tls -------------------------------------------------------------------------


class IdentityPing(PingServicer):
    def __init__(self) -> None:
        super().__init__()
        self.identities: list[PeerIdentity | None] = []

    async def Ping(self, request: ping_pb2.PingRequest, context: Any) -> ping_pb2.PingResponse:
        self.identities.append(peer_identity(context))
        return await super().Ping(request, context)


@contextlib.asynccontextmanager
async def mtls_server(certs: Path, servicer: PingServicer) -> AsyncIterator[App]:
    app = App(ServerConfig(grace_period=0.5, tls=ServerTls.from_dir(certs, mtls=True)))
    service = ping_service(servicer)
    app.add_service(service.add_to_server, service.servicer, service.descriptor)
    async with app:
        yield app


async def ping(target: str, tls: ClientTls) -> str:
    options = [("grpc.use_local_subchannel_pool", 1)]  # a new connection each time
    async with dial(target, tls=tls, options=options) as channel:
        reply = await ping_pb2_grpc.PingServiceStub(channel).Ping(ping_pb2.PingRequest(message="m"))
    return reply.message


async def test_services_and_clients_are_told_apart_over_mtls(certs: Path) -> None:
    servicer = IdentityPing()
    async with mtls_server(certs, servicer) as app:
        await ping(app.address, ClientTls.from_dir(certs, cert="client"))
        await ping(f"localhost:{app.port}", ClientTls.from_dir(certs, cert="server"))
    client, service = servicer.identities
    assert client == PeerIdentity("shop-client", (), (CLIENT_URI,))
    assert service is not None and service.common_name == "shop-service"
    assert SERVICE_URI in service.uris and SERVICE_URI not in client.uris


async def test_regenerated_certificates_reach_a_running_server(tmp_path: Path) -> None:
    live, old = tmp_path / "live", tmp_path / "old"
    write_dev_certs(live)
    shutil.copytree(live, old)
    async with mtls_server(live, PingServicer()) as app:
        assert await ping(app.address, ClientTls.from_dir(old, cert="client")) == "m"
        write_dev_certs(live, force=True)  # a new CA: only the new files work from now on
        assert await ping(app.address, ClientTls.from_dir(live, cert="client")) == "m"
        with pytest.raises(grpc.RpcError) as failed:
            await ping(app.address, ClientTls.from_dir(old, cert="client"))
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
