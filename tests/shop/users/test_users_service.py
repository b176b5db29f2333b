"""UserService over a real grpc.aio server on 127.0.0.1 (grpckit's in-process harness)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpckit import App, ServerConfig, StatusError
from grpckit.testing import Service, serve_in_process
from shop.api.users.v1 import users_pb2, users_pb2_grpc
from shop.common.bus import InMemoryEventBus
from shop.common.db import Database
from shop.common.ids import new_id
from shop.common.runtime import ServiceContext, Settings
from shop.users.main import SERVICE, mount
from shop.users.passwords import ScryptHasher
from shop.users.service import UserServicer
from shop.users.store import MIGRATIONS, UserStore
from shop.users.tokens import TokenIssuer

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
ISSUER = TokenIssuer(b"t" * 32, ttl_seconds=600)
PASSWORD = "correct horse battery"


@dataclass
class Harness:
    stub: users_pb2_grpc.UserServiceAsyncStub
    store: UserStore

    async def register(self, email: str = "ada@example.com") -> users_pb2.User:
        request = users_pb2.CreateUserRequest(email=email, password=PASSWORD, name="Ada Lovelace")
        return (await self.stub.CreateUser(request)).user


@pytest.fixture
async def users(database: Database) -> AsyncIterator[Harness]:
    await database.migrate(MIGRATIONS)
    store = UserStore(database)
    servicer = UserServicer(store, hasher=ScryptHasher(cost=2**4), tokens=ISSUER, clock=lambda: NOW)
    service = Service(users_pb2_grpc.add_UserServiceServicer_to_server, servicer, SERVICE)
    async with serve_in_process(service) as server:
        yield Harness(users_pb2_grpc.UserServiceStub(server.channel), store)


async def failure(call: Awaitable[Any]) -> StatusError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return StatusError.from_rpc_error(caught.value)


def assert_shop_reason(error: StatusError, code: grpc.StatusCode, reason: str) -> None:
    assert (error.code, error.reason) == (code, reason)
    assert error.error_info is not None
    assert error.error_info.domain == "shop"


async def test_register_get_and_validate(users: Harness) -> None:
    created = await users.register(" Ada@Example.COM ")
    assert (created.email, created.name, list(created.roles), created.active) == (
        "ada@example.com",
        "Ada Lovelace",
        ["customer"],
        True,
    )
    assert created.created_at.ToDatetime(tzinfo=UTC) == NOW
    fetched = await users.stub.GetUser(users_pb2.GetUserRequest(user_id=created.id))
    assert fetched.user == created
    valid = await users.stub.ValidateUser(users_pb2.ValidateUserRequest(user_id=created.id))
    assert (valid.valid, valid.user, valid.reason) == (True, created, "")


async def test_login_issues_a_bearer_token_for_the_user(users: Harness) -> None:
    created = await users.register()
    reply = await users.stub.Login(
        users_pb2.LoginRequest(email="ADA@example.com", password=PASSWORD)
    )
    assert (reply.token_type, reply.expires_in) == ("Bearer", 600)
    claims = ISSUER.verify(reply.access_token, now=NOW)
    assert (claims["sub"], claims["roles"]) == (created.id, ["customer"])


@pytest.mark.parametrize(
    ("email", "password"),
    [("ada@example.com", "wrong password"), ("nobody@example.com", PASSWORD)],
)
async def test_bad_credentials_are_unauthenticated(
    users: Harness, email: str, password: str
) -> None:
    await users.register()
    error = await failure(users.stub.Login(users_pb2.LoginRequest(email=email, password=password)))
    assert_shop_reason(error, grpc.StatusCode.UNAUTHENTICATED, "INVALID_CREDENTIALS")
    assert error.message == "email or password is incorrect"


async def test_duplicate_email_already_exists(users: Harness) -> None:
    await users.register("ada@example.com")
    error = await failure(users.register("ADA@example.com"))
    assert_shop_reason(error, grpc.StatusCode.ALREADY_EXISTS, "EMAIL_TAKEN")


async def test_invalid_registration_lists_every_violation(users: Harness) -> None:
    request = users_pb2.CreateUserRequest(email="not-an-email", password="short")
    error = await failure(users.stub.CreateUser(request))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in error.field_violations] == ["email", "password", "name"]


async def test_login_without_fields_is_invalid(users: Harness) -> None:
    error = await failure(users.stub.Login(users_pb2.LoginRequest()))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.field_violations == [("email", "is required"), ("password", "is required")]


async def test_unknown_user(users: Harness) -> None:
    missing = new_id()
    error = await failure(users.stub.GetUser(users_pb2.GetUserRequest(user_id=missing)))
    assert_shop_reason(error, grpc.StatusCode.NOT_FOUND, "USER_NOT_FOUND")
    resource = error.detail(error_details_pb2.ResourceInfo)
    assert resource is not None
    assert (resource.resource_type, resource.resource_name) == ("user", missing)
    reply = await users.stub.ValidateUser(users_pb2.ValidateUserRequest(user_id=missing))
    assert (reply.valid, reply.HasField("user"), reply.reason) == (False, False, "USER_NOT_FOUND")


@pytest.mark.parametrize(("user_id", "problem"), [("", "is required"), ("42", "is not a user id")])
async def test_malformed_user_ids_are_invalid(users: Harness, user_id: str, problem: str) -> None:
    for call in (
        users.stub.GetUser(users_pb2.GetUserRequest(user_id=user_id)),
        users.stub.ValidateUser(users_pb2.ValidateUserRequest(user_id=user_id)),
    ):
        error = await failure(call)
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert error.field_violations == [("user_id", problem)]


async def test_disabled_user_may_not_order_or_log_in(users: Harness) -> None:
    created = await users.register()
    assert await users.store.set_active(created.id, False)
    reply = await users.stub.ValidateUser(users_pb2.ValidateUserRequest(user_id=created.id))
    assert (reply.valid, reply.HasField("user"), reply.reason) == (False, False, "USER_DISABLED")
    login = users_pb2.LoginRequest(email=created.email, password=PASSWORD)
    error = await failure(users.stub.Login(login))
    assert_shop_reason(error, grpc.StatusCode.PERMISSION_DENIED, "USER_DISABLED")


async def test_mount_serves_users_with_a_health_check(tmp_path: Path) -> None:
    ctx = ServiceContext(settings=Settings(data_dir=tmp_path), bus=InMemoryEventBus(), peers={})
    app = App(ServerConfig(grace_period=1.0))
    try:
        await mount(app, ctx)
        async with serve_in_process(app=app) as server:
            health = health_pb2_grpc.HealthStub(server.channel)
            check = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE.full_name))
            assert check.status == health_pb2.HealthCheckResponse.SERVING
            stub = users_pb2_grpc.UserServiceStub(server.channel)
            request = users_pb2.CreateUserRequest(email="a@b.de", password=PASSWORD, name="A")
            assert (await stub.CreateUser(request)).user.email == "a@b.de"
    finally:
        await ctx.close()
    assert (tmp_path / "users.db").exists()
