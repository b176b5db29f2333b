"""The UserService servicer: validates requests, converts proto <-> domain, calls the stores.

Who may call what is declared per method in the proto and enforced by grpckit's authorization
interceptor; the handlers here do not check roles.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from grpckit import get_logger
from grpckit.auth import IssuedToken, SigningKey
from grpckit.errors import invalid_argument
from shop.api.users.v1 import users_pb2, users_pb2_grpc
from shop.common.ids import is_id, new_id
from shop.users import domain, refresh
from shop.users.errors import status_errors
from shop.users.passwords import ScryptHasher
from shop.users.store import RefreshTokenStore, UserStore
from shop.users.tokens import REFRESH_TTL_SECONDS, access_token_signer

Context = grpc.aio.ServicerContext[object, object]
Clock = Callable[[], datetime]
#: Called with a user id once that user is disabled or deleted (after the commit).
RevocationListener = Callable[[str], None]

_LOG = get_logger("shop.users")


def utc_now() -> datetime:
    return datetime.now(UTC)


def _ignore(user_id: str) -> None:
    """The default revocation listener: nobody to tell."""


class UserServicer(users_pb2_grpc.UserServiceServicer):
    """Accounts and their tokens over gRPC. Password hashing runs in worker threads.

    ``key`` signs the access tokens (and is what GetJwks publishes); ``on_revoked`` hears of
    every disabled or deleted user so that this process's token verifiers stop accepting
    their access tokens at once.

    Example::

        servicer = UserServicer(UserStore(db), RefreshTokenStore(db), hasher=ScryptHasher(),
                                key=load_signing_key(data_dir), on_revoked=ctx.subject_revoked)
    """

    def __init__(
        self,
        store: UserStore,
        refresh_tokens: RefreshTokenStore,
        *,
        hasher: ScryptHasher,
        key: SigningKey,
        on_revoked: RevocationListener = _ignore,
        clock: Clock = utc_now,
        refresh_ttl: timedelta = timedelta(seconds=REFRESH_TTL_SECONDS),
    ) -> None:
        self._store, self._refresh_tokens, self._hasher = store, refresh_tokens, hasher
        self._key, self._on_revoked, self._clock = key, on_revoked, clock
        self._refresh_ttl = refresh_ttl
        self._signer = access_token_signer(key, clock=lambda: clock().timestamp())

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
        now = self._clock()
        issued = refresh.issue(user.id, now=now, ttl=self._refresh_ttl)
        await self._refresh_tokens.add(issued.record)
        access = self._access_token(user)
        return users_pb2.LoginResponse(
            access_token=access.value,
            token_type="Bearer",
            expires_in=access.expires_in,
            refresh_token=issued.value,
            refresh_expires_in=issued.expires_in(now),
        )

    async def Refresh(
        self, request: users_pb2.RefreshRequest, context: Context
    ) -> users_pb2.RefreshResponse:
        now = self._clock()
        with status_errors():
            token_id, secret = refresh.parse(request.refresh_token)
            user, issued = await self._refresh_tokens.rotate(
                token_id, secret, now=now, ttl=self._refresh_ttl
            )
        access = self._access_token(user)
        return users_pb2.RefreshResponse(
            access_token=access.value,
            token_type="Bearer",
            expires_in=access.expires_in,
            refresh_token=issued.value,
            refresh_expires_in=issued.expires_in(now),
        )

    async def Logout(
        self, request: users_pb2.LogoutRequest, context: Context
    ) -> users_pb2.LogoutResponse:
        with status_errors():
            token_id, secret = refresh.parse(request.refresh_token)
            await self._refresh_tokens.revoke_family(token_id, secret, now=self._clock())
        return users_pb2.LogoutResponse()

    async def GetJwks(
        self, request: users_pb2.GetJwksRequest, context: Context
    ) -> users_pb2.GetJwksResponse:
        return users_pb2.GetJwksResponse(keys=[users_pb2.Jwk(**self._key.public_jwk())])

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

    async def DisableUser(
        self, request: users_pb2.DisableUserRequest, context: Context
    ) -> users_pb2.DisableUserResponse:
        user_id = _user_id(request.user_id)
        with status_errors():
            user = await self._store.disable(user_id, now=self._clock())
        self._revoked(user_id, "users.disabled")
        return users_pb2.DisableUserResponse(user=user_to_proto(user))

    async def DeleteUser(
        self, request: users_pb2.DeleteUserRequest, context: Context
    ) -> users_pb2.DeleteUserResponse:
        user_id = _user_id(request.user_id)
        with status_errors():
            await self._store.delete(user_id, now=self._clock())
        self._revoked(user_id, "users.deleted")
        return users_pb2.DeleteUserResponse()

    def _access_token(self, user: domain.User) -> IssuedToken:
        return self._signer.issue(user.id, roles=user.roles)

    def _revoked(self, user_id: str, event: str) -> None:
        _LOG.info(event, user_id=user_id)
        self._on_revoked(user_id)


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
