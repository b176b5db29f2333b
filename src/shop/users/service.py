"""The UserService servicer: validates requests, converts proto <-> domain, calls the store."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from grpckit.errors import invalid_argument
from shop.api.users.v1 import users_pb2, users_pb2_grpc
from shop.common.ids import is_id, new_id
from shop.users import domain
from shop.users.errors import status_errors
from shop.users.passwords import ScryptHasher
from shop.users.store import UserStore
from shop.users.tokens import TokenIssuer

Context = grpc.aio.ServicerContext[object, object]
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class UserServicer(users_pb2_grpc.UserServiceServicer):
    """Accounts over gRPC. Password hashing runs in worker threads, off the event loop."""

    def __init__(
        self,
        store: UserStore,
        *,
        hasher: ScryptHasher,
        tokens: TokenIssuer,
        clock: Clock = utc_now,
    ) -> None:
        self._store, self._hasher, self._tokens, self._clock = store, hasher, tokens, clock

    async def CreateUser(
        self, request: users_pb2.CreateUserRequest, context: Context
    ) -> users_pb2.CreateUserResponse:
        email = domain.normalize_email(request.email)
        violations = domain.registration_violations(email, request.password, request.name)
        if violations:
            raise invalid_argument("the new account is not valid", violations)
        password_hash = await asyncio.to_thread(self._hasher.hash, request.password)
        user = domain.new_user(
            user_id=new_id(),
            email=email,
            name=request.name,
            password_hash=password_hash,
            now=self._clock(),
        )
        with status_errors():
            await self._store.add(user)
        return users_pb2.CreateUserResponse(user=user_to_proto(user))

    async def Login(
        self, request: users_pb2.LoginRequest, context: Context
    ) -> users_pb2.LoginResponse:
        violations = domain.login_violations(request.email, request.password)
        if violations:
            raise invalid_argument("the login request is not valid", violations)
        owner = await self._store.by_email(domain.normalize_email(request.email))
        with status_errors():
            user = await asyncio.to_thread(
                domain.authenticate, owner, request.password, self._hasher
            )
        token = self._tokens.issue(subject=user.id, roles=user.roles, now=self._clock())
        return users_pb2.LoginResponse(
            access_token=token.value, token_type="Bearer", expires_in=token.expires_in
        )

    async def GetUser(
        self, request: users_pb2.GetUserRequest, context: Context
    ) -> users_pb2.GetUserResponse:
        user_id = _user_id(request.user_id)
        with status_errors():
            user = await self._store.get(user_id)
            if user is None:
                raise domain.UserNotFoundError(user_id)
        return users_pb2.GetUserResponse(user=user_to_proto(user))

    async def ValidateUser(
        self, request: users_pb2.ValidateUserRequest, context: Context
    ) -> users_pb2.ValidateUserResponse:
        user = await self._store.get(_user_id(request.user_id))
        reason = domain.validity(user)
        if reason or user is None:
            return users_pb2.ValidateUserResponse(valid=False, reason=reason)
        return users_pb2.ValidateUserResponse(valid=True, user=user_to_proto(user))


def _user_id(value: str) -> str:
    if not value:
        raise invalid_argument("user_id is required", [("user_id", "is required")])
    if not is_id(value):
        raise invalid_argument("user_id is not valid", [("user_id", "is not a user id")])
    return value


def user_to_proto(user: domain.User) -> users_pb2.User:
    created_at = Timestamp()
    created_at.FromDatetime(user.created_at)
    return users_pb2.User(
        id=user.id,
        email=user.email,
        name=user.name,
        roles=list(user.roles),
        created_at=created_at,
        active=user.active,
    )
