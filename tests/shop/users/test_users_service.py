"""UserService over a real grpc.aio server on 127.0.0.1 (grpckit's in-process harness)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import jwt
import pytest
from google.rpc import error_details_pb2

from grpckit import StatusError
from grpckit.auth import Claims, KeySet, SigningKey, StaticKeys, TokenVerifier
from grpckit.testing import Service, serve_in_process
from shop.api.users.v1 import users_pb2, users_pb2_grpc
from shop.common.db import Database
from shop.common.ids import new_id
from shop.users.main import SERVICE
from shop.users.passwords import ScryptHasher
from shop.users.service import UserServicer
from shop.users.store import MIGRATIONS, RefreshTokenStore, UserStore
from shop.users.tokens import ACCESS_TTL_SECONDS, AUDIENCE, ISSUER, REFRESH_TTL_SECONDS

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
PASSWORD = "correct horse battery"
KEY = SigningKey.generate()


@dataclass
class FakeClock:
    now: datetime = NOW

    def __call__(self) -> datetime:
        return self.now

    def timestamp(self) -> float:
        return self.now.timestamp()


@dataclass
class Harness:
    stub: users_pb2_grpc.UserServiceAsyncStub
    store: UserStore
    clock: FakeClock
    revoked: list[str] = field(default_factory=list)

    async def register(self, email: str = "ada@example.com") -> users_pb2.User:
        request = users_pb2.CreateUserRequest(email=email, password=PASSWORD, name="Ada Lovelace")
        return (await self.stub.CreateUser(request)).user

    async def login(self, email: str = "ada@example.com") -> users_pb2.LoginResponse:
        return await self.stub.Login(users_pb2.LoginRequest(email=email, password=PASSWORD))

    async def refresh(self, token: str) -> users_pb2.RefreshResponse:
        return await self.stub.Refresh(users_pb2.RefreshRequest(refresh_token=token))

    async def verify(self, access_token: str) -> Claims:
        """Check a token the way another service would: with the keys GetJwks publishes."""
        reply = await self.stub.GetJwks(users_pb2.GetJwksRequest())
        document = {"keys": [jwk_dict(key) for key in reply.keys]}
        keys = StaticKeys(KeySet.from_jwks(document))
        verifier = TokenVerifier(
            keys, issuers=[ISSUER], audience=AUDIENCE, clock=self.clock.timestamp
        )
        return await verifier.verify(access_token)


def jwk_dict(key: users_pb2.Jwk) -> dict[str, str]:
    return {name: getattr(key, name) for name in ("kty", "crv", "x", "kid", "alg", "use")}


@pytest.fixture
async def users(database: Database) -> AsyncIterator[Harness]:
    await database.migrate(MIGRATIONS)
    store, clock = UserStore(database), FakeClock()
    revoked: list[str] = []
    servicer = UserServicer(
        store,
        RefreshTokenStore(database),
        hasher=ScryptHasher(cost=2**4),
        key=KEY,
        on_revoked=revoked.append,
        clock=clock,
    )
    service = Service(users_pb2_grpc.add_UserServiceServicer_to_server, servicer, SERVICE)
    async with serve_in_process(service) as server:
        yield Harness(users_pb2_grpc.UserServiceStub(server.channel), store, clock, revoked)


async def failure(call: Awaitable[Any]) -> StatusError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return StatusError.from_rpc_error(caught.value)


def assert_shop_reason(error: StatusError, code: grpc.StatusCode, reason: str) -> None:
    assert (error.code, error.reason) == (code, reason)
    assert error.error_info is not None
    assert error.error_info.domain == "shop"


async def assert_refresh_refused(users: Harness, token: str, reason: str) -> None:
    error = await failure(users.refresh(token))
    assert_shop_reason(error, grpc.StatusCode.UNAUTHENTICATED, reason)


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


async def test_login_issues_an_eddsa_access_token_and_a_refresh_token(users: Harness) -> None:
    created = await users.register()
    reply = await users.stub.Login(
        users_pb2.LoginRequest(email="ADA@example.com", password=PASSWORD)
    )
    assert (reply.token_type, reply.expires_in) == ("Bearer", ACCESS_TTL_SECONDS)
    assert reply.refresh_expires_in == REFRESH_TTL_SECONDS
    assert reply.refresh_token and reply.refresh_token != reply.access_token
    header = jwt.get_unverified_header(reply.access_token)
    assert (header["alg"], header["kid"]) == ("EdDSA", KEY.kid)
    claims = await users.verify(reply.access_token)
    assert (claims.subject, claims.roles, claims.issuer, claims.audience) == (
        created.id,
        frozenset({"customer"}),
        "shop.users",
        ("shop",),
    )
    assert claims.expires_at == NOW.timestamp() + ACCESS_TTL_SECONDS


async def test_jwks_publishes_the_public_key_only(users: Harness) -> None:
    reply = await users.stub.GetJwks(users_pb2.GetJwksRequest())
    assert [jwk_dict(key) for key in reply.keys] == [KEY.public_jwk()]
    assert (reply.keys[0].kty, reply.keys[0].crv, reply.keys[0].use) == ("OKP", "Ed25519", "sig")


async def test_refresh_rotates_and_a_replayed_token_revokes_the_family(users: Harness) -> None:
    created = await users.register()
    login = await users.login()
    users.clock.now += timedelta(minutes=20)  # the access token has expired by now
    first = await users.refresh(login.refresh_token)
    assert (first.token_type, first.expires_in) == ("Bearer", ACCESS_TTL_SECONDS)
    assert first.refresh_expires_in == REFRESH_TTL_SECONDS
    assert first.refresh_token != login.refresh_token
    assert (await users.verify(first.access_token)).subject == created.id
    second = await users.refresh(first.refresh_token)
    await assert_refresh_refused(users, login.refresh_token, "REFRESH_TOKEN_REUSED")
    # The newest token of the family stops working too: whoever replayed has to log in.
    await assert_refresh_refused(users, second.refresh_token, "REFRESH_TOKEN_INVALID")
    assert (await users.refresh((await users.login()).refresh_token)).access_token


async def test_concurrent_refreshes_of_one_token_have_one_winner(users: Harness) -> None:
    await users.register()
    login = await users.login()
    results = await asyncio.gather(
        *(users.refresh(login.refresh_token) for _ in range(3)), return_exceptions=True
    )
    winners = [r for r in results if isinstance(r, users_pb2.RefreshResponse)]
    assert len(winners) == 1
    losers = [StatusError.from_rpc_error(r) for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(losers) == 2
    assert {e.code for e in losers} == {grpc.StatusCode.UNAUTHENTICATED}


async def test_refresh_tokens_expire(users: Harness) -> None:
    await users.register()
    login = await users.login()
    users.clock.now += timedelta(seconds=REFRESH_TTL_SECONDS)
    await assert_refresh_refused(users, login.refresh_token, "REFRESH_TOKEN_EXPIRED")


@pytest.mark.parametrize(
    "token", ["garbage", f"{new_id()}.{'x' * 43}", "not-a-uuid.secret", "x" * 512]
)
async def test_unknown_or_malformed_refresh_tokens_are_unauthenticated(
    users: Harness, token: str
) -> None:
    await assert_refresh_refused(users, token, "REFRESH_TOKEN_INVALID")
    error = await failure(users.stub.Logout(users_pb2.LogoutRequest(refresh_token=token)))
    assert_shop_reason(error, grpc.StatusCode.UNAUTHENTICATED, "REFRESH_TOKEN_INVALID")


async def test_logout_revokes_the_session_and_is_idempotent(users: Harness) -> None:
    await users.register()
    login, other = await users.login(), await users.login()
    rotated = await users.refresh(login.refresh_token)
    logout = users_pb2.LogoutRequest(refresh_token=login.refresh_token)
    assert await users.stub.Logout(logout) == users_pb2.LogoutResponse()
    assert await users.stub.Logout(logout) == users_pb2.LogoutResponse()
    await assert_refresh_refused(users, rotated.refresh_token, "REFRESH_TOKEN_INVALID")
    assert (await users.refresh(other.refresh_token)).access_token  # other sessions go on


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
    for call in (
        users.stub.DisableUser(users_pb2.DisableUserRequest(user_id=missing)),
        users.stub.DeleteUser(users_pb2.DeleteUserRequest(user_id=missing)),
    ):
        assert_shop_reason(await failure(call), grpc.StatusCode.NOT_FOUND, "USER_NOT_FOUND")
    assert users.revoked == []


@pytest.mark.parametrize(("user_id", "problem"), [("", "is required"), ("42", "is not a user id")])
async def test_malformed_user_ids_are_invalid(users: Harness, user_id: str, problem: str) -> None:
    for call in (
        users.stub.GetUser(users_pb2.GetUserRequest(user_id=user_id)),
        users.stub.ValidateUser(users_pb2.ValidateUserRequest(user_id=user_id)),
        users.stub.DisableUser(users_pb2.DisableUserRequest(user_id=user_id)),
        users.stub.DeleteUser(users_pb2.DeleteUserRequest(user_id=user_id)),
    ):
        error = await failure(call)
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert error.field_violations == [("user_id", problem)]


async def test_a_disabled_user_cannot_order_log_in_or_refresh(users: Harness) -> None:
    created = await users.register()
    login = await users.login()
    reply = await users.stub.DisableUser(users_pb2.DisableUserRequest(user_id=created.id))
    assert (reply.user.id, reply.user.active) == (created.id, False)
    assert users.revoked == [created.id]
    valid = await users.stub.ValidateUser(users_pb2.ValidateUserRequest(user_id=created.id))
    assert (valid.valid, valid.HasField("user"), valid.reason) == (False, False, "USER_DISABLED")
    error = await failure(users.login())
    assert_shop_reason(error, grpc.StatusCode.UNAUTHENTICATED, "INVALID_CREDENTIALS")
    assert error.message == "email or password is incorrect"  # says no more than a typo would
    await assert_refresh_refused(users, login.refresh_token, "REFRESH_TOKEN_INVALID")


async def test_a_deleted_user_is_not_found_and_the_email_is_free(users: Harness) -> None:
    created = await users.register()
    login = await users.login()
    reply = await users.stub.DeleteUser(users_pb2.DeleteUserRequest(user_id=created.id))
    assert reply == users_pb2.DeleteUserResponse()
    assert users.revoked == [created.id]
    error = await failure(users.stub.GetUser(users_pb2.GetUserRequest(user_id=created.id)))
    assert_shop_reason(error, grpc.StatusCode.NOT_FOUND, "USER_NOT_FOUND")
    valid = await users.stub.ValidateUser(users_pb2.ValidateUserRequest(user_id=created.id))
    assert (valid.valid, valid.reason) == (False, "USER_NOT_FOUND")
    login_error = await failure(users.login())
    assert_shop_reason(login_error, grpc.StatusCode.UNAUTHENTICATED, "INVALID_CREDENTIALS")
    await assert_refresh_refused(users, login.refresh_token, "REFRESH_TOKEN_INVALID")
    again = await failure(users.stub.DeleteUser(users_pb2.DeleteUserRequest(user_id=created.id)))
    assert_shop_reason(again, grpc.StatusCode.NOT_FOUND, "USER_NOT_FOUND")
    assert (await users.register()).id != created.id
