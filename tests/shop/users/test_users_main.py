"""``shop.users.main.mount``: the signing key on disk, the first admin, the served service."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import jwt
from grpc_health.v1 import health_pb2, health_pb2_grpc
from structlog.testing import capture_logs

from grpckit import App, ServerConfig
from grpckit.testing import serve_in_process
from shop.api.users.v1 import users_pb2, users_pb2_grpc
from shop.common.bus import InMemoryEventBus
from shop.common.runtime import ServiceContext, Settings
from shop.users.main import SERVICE, mount
from shop.users.tokens import KEY_FILE, load_signing_key

PASSWORD = "correct horse battery"
ADMIN_PASSWORD = "admin password 1"


@asynccontextmanager
async def mounted(
    settings: Settings, revoked: list[str] | None = None
) -> AsyncIterator[users_pb2_grpc.UserServiceAsyncStub]:
    ctx = ServiceContext(settings=settings, bus=InMemoryEventBus(), peers={})
    if revoked is not None:
        ctx.on_subject_revoked(revoked.append)
    app = App(ServerConfig(grace_period=1.0))
    try:
        await mount(app, ctx)
        async with serve_in_process(app=app) as server:
            health = health_pb2_grpc.HealthStub(server.channel)
            check = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE.full_name))
            assert check.status == health_pb2.HealthCheckResponse.SERVING
            yield users_pb2_grpc.UserServiceStub(server.channel)
    finally:
        await ctx.close()


async def login(
    stub: users_pb2_grpc.UserServiceAsyncStub, email: str, password: str
) -> users_pb2.LoginResponse:
    return await stub.Login(users_pb2.LoginRequest(email=email, password=password))


def roles_of(token: str) -> list[str]:
    roles: list[str] = jwt.decode(token, options={"verify_signature": False})["roles"]
    return roles


async def test_mount_serves_users_and_keeps_its_key_across_restarts(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    async with mounted(settings) as stub:
        request = users_pb2.CreateUserRequest(email="a@b.de", password=PASSWORD, name="A")
        assert (await stub.CreateUser(request)).user.email == "a@b.de"
        first = await stub.GetJwks(users_pb2.GetJwksRequest())
        token = (await login(stub, "a@b.de", PASSWORD)).access_token
    key_file = tmp_path / KEY_FILE
    assert (tmp_path / "users.db").exists()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    async with mounted(settings) as stub:
        second = await stub.GetJwks(users_pb2.GetJwksRequest())
    assert [k.kid for k in second.keys] == [k.kid for k in first.keys]
    assert jwt.get_unverified_header(token)["kid"] == first.keys[0].kid
    assert load_signing_key(tmp_path).kid == first.keys[0].kid  # what the HTTP route serves


async def test_mount_creates_the_first_admin_once(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, admin_email="Root@Example.com", admin_password=ADMIN_PASSWORD
    )
    with capture_logs() as logs:
        async with mounted(settings) as stub:
            admin = await login(stub, "root@example.com", ADMIN_PASSWORD)
            assert roles_of(admin.access_token) == ["admin"]
    ready = [entry for entry in logs if entry["event"] == "users.admin_ready"]
    assert [(entry["email"], entry["created"]) for entry in ready] == [("root@example.com", True)]
    assert ADMIN_PASSWORD not in repr(logs)
    changed = Settings(
        data_dir=tmp_path, admin_email="root@example.com", admin_password="another password"
    )
    with capture_logs() as logs:
        async with mounted(changed) as stub:
            # An existing password is never overwritten by the settings.
            again = await login(stub, "root@example.com", ADMIN_PASSWORD)
            assert roles_of(again.access_token) == ["admin"]
    assert [entry["created"] for entry in logs if entry["event"] == "users.admin_ready"] == [False]


async def test_mount_promotes_an_existing_account_to_admin(tmp_path: Path) -> None:
    async with mounted(Settings(data_dir=tmp_path)) as stub:
        request = users_pb2.CreateUserRequest(email="ann@example.com", password=PASSWORD, name="A")
        await stub.CreateUser(request)
    settings = Settings(
        data_dir=tmp_path, admin_email="ann@example.com", admin_password=ADMIN_PASSWORD
    )
    async with mounted(settings) as stub:
        reply = await login(stub, "ann@example.com", PASSWORD)
        assert roles_of(reply.access_token) == ["customer", "admin"]


async def test_disabling_a_user_tells_the_context(tmp_path: Path) -> None:
    revoked: list[str] = []
    async with mounted(Settings(data_dir=tmp_path), revoked) as stub:
        request = users_pb2.CreateUserRequest(email="ann@example.com", password=PASSWORD, name="A")
        user = (await stub.CreateUser(request)).user
        await stub.DisableUser(users_pb2.DisableUserRequest(user_id=user.id))
    assert revoked == [user.id]
