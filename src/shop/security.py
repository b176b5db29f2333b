"""The shop's security wiring: TLS, token verification, service identity, rate limits.

One :class:`Security` per process, built from :class:`~shop.common.runtime.Settings` by the
composition root. It hands out:

* the server and client TLS settings (``--tls-dir``, ``--mtls``);
* the verifier of users' access tokens (keys from the users service's JWKS, or the local key
  when this process serves users) and of service tokens (the deployment's service key);
* the server interceptors, outermost first: Login limits (per email, per address) →
  audit → authentication → authorization → per-user limits;
* this process's service token for calls to its peers (not needed with mTLS: the certificate
  says who calls).

Rate limits (per method, per key) are declared in :data:`RATE_LIMITS`; with ``--redis-url``
they are shared by every process of the deployment and fall back to per-process budgets while
Redis is unreachable.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from grpckit import CallInfo, get_logger
from grpckit.auth import (
    ADMIN_ROLE,
    KeySet,
    Principal,
    RemoteJwks,
    ServiceTokens,
    SigningKey,
    StaticKeys,
    TokenSigner,
    TokenVerifier,
    authentication,
    authorization,
    jwks,
)
from grpckit.errors import unavailable
from grpckit.interceptors import by_peer_ip, rate_limit
from grpckit.middleware import Interceptor, select
from grpckit.ratelimit import Limiter, MemoryLimiter, Rule
from grpckit.tls import ClientTls, PeerIdentity, ServerTls, peer_identity
from shop.api.users.v1 import users_pb2, users_pb2_grpc
from shop.certs import SERVICE_URI
from shop.common.runtime import Settings
from shop.users.tokens import AUDIENCE, ISSUER, load_signing_key

__all__ = ["RATE_LIMITS", "SERVICE_ISSUER", "ActiveUsers", "RateLimits", "Security", "rate_limits"]

_LOG = get_logger("shop.security")

#: ``iss`` of service tokens (signed by the deployment's service key, not by the users service).
SERVICE_ISSUER = "shop.service"
SERVICE_TOKEN_TTL = 300.0
LEEWAY_SECONDS = 5.0
DOMAIN = "shop"

LOGIN = "/shop.users.v1.UserService/Login"
CREATE_USER = "/shop.users.v1.UserService/CreateUser"
REFRESH = "/shop.users.v1.UserService/Refresh"
PROCESS_ORDER = "/shop.gateway.v1.GatewayService/ProcessOrder"


@dataclass(frozen=True)
class RateLimits:
    """Budgets per method; ``"*"`` applies to every method without its own rule."""

    #: Before authentication, keyed by the email a Login names (password guessing per account).
    login_per_email: Rule
    #: Before authentication, keyed by the caller's IP address.
    per_address: Mapping[str, Rule]
    #: After authentication, keyed by the user (or the address of anonymous callers); calls a
    #: service makes on a user's behalf are not counted again, and admins are not limited.
    per_user: Mapping[str, Rule]


def rate_limits(settings: Settings) -> RateLimits:
    """The shop's rate limits: Login per email and per address (from the settings), then
    per user and per method."""
    return RateLimits(
        login_per_email=Rule(settings.login_limit_per_email, 60.0, algorithm="sliding_window"),
        per_address={
            **RATE_LIMITS.per_address,
            LOGIN: Rule(settings.login_limit_per_address, 60.0, algorithm="sliding_window"),
        },
        per_user=RATE_LIMITS.per_user,
    )


#: The defaults (``Settings`` overrides the two Login limits).
RATE_LIMITS = RateLimits(
    login_per_email=Rule(5, 60.0, algorithm="sliding_window"),
    per_address={
        LOGIN: Rule(100, 60.0, algorithm="sliding_window"),
        CREATE_USER: Rule(120, 60.0, algorithm="sliding_window"),
        REFRESH: Rule(60, 60.0, algorithm="sliding_window"),
    },
    per_user={
        PROCESS_ORDER: Rule(50, 1.0, burst=100),
        "*": Rule(100, 1.0, burst=200),
    },
)


def by_login_email(call: CallInfo) -> str:
    """The normalised email a Login names (the address when there is none)."""
    email = getattr(call.request, "email", "") if call.request is not None else ""
    if isinstance(email, str) and email:
        return f"email:{email.strip().lower()}"
    return by_peer_ip(call)


def by_user(call: CallInfo) -> str:
    """The calling user (or service), else the caller's address."""
    principal = call.principal
    if isinstance(principal, Principal):
        if principal.subject:
            return f"user:{principal.subject}"
        if principal.service:
            return f"service:{principal.service}"
    return by_peer_ip(call)


def _counted(call: CallInfo) -> bool:
    """Whether a call spends the caller's per-user budget: not for calls a service makes (on
    its own or for a user, already counted at the edge) nor for admins (operators reconciling
    or importing at volume; their Login is still limited)."""
    principal = call.principal
    if not isinstance(principal, Principal):
        return True
    return principal.service is None and ADMIN_ROLE not in principal.roles


class ActiveUsers:
    """Is an account still active? Asked of the users service, remembered for ``ttl`` seconds.

    Disabling or deleting a user in this process forgets the answer at once (:meth:`forget`);
    other processes see it within ``ttl``. While the users service is unreachable an answer up
    to ``stale`` seconds old is used; without one the call fails with UNAVAILABLE.
    """

    def __init__(
        self,
        channel: Callable[[], grpc.aio.Channel],
        *,
        local: Callable[[], Callable[[str], Awaitable[bool]] | None] = lambda: None,
        ttl: float = 5.0,
        stale: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._channel = channel
        self._local = local
        self._ttl, self._stale, self._clock = ttl, stale, clock
        self._known: dict[str, tuple[bool, float]] = {}
        self._pending: dict[str, asyncio.Future[bool]] = {}

    def forget(self, subject: str) -> None:
        """Drop what is known about ``subject`` (it was disabled or deleted here)."""
        self._known.pop(subject, None)

    async def __call__(self, subject: str) -> bool:
        known = self._known.get(subject)
        now = self._clock()
        if known is not None and now - known[1] < self._ttl:
            return known[0]
        pending = self._pending.get(subject)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending[subject] = future
        try:
            active = await self._ask(subject, known, now)
            future.set_result(active)
            return active
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            del self._pending[subject]

    async def _ask(self, subject: str, known: tuple[bool, float] | None, now: float) -> bool:
        local = self._local()
        if local is not None:  # this process serves users: read the store, no call
            active = await local(subject)
            self._known[subject] = (active, self._clock())
            return active
        stub = users_pb2_grpc.UserServiceStub(self._channel())
        try:
            reply = await stub.ValidateUser(
                users_pb2.ValidateUserRequest(user_id=subject), timeout=2.0
            )
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
                return False
            if known is not None and now - known[1] < self._stale:
                _LOG.warning("auth.account_check_stale", code=err.code().name)
                return known[0]
            raise unavailable(
                "cannot check the account right now (users service unreachable); retry shortly",
                reason="USERS_UNAVAILABLE",
                domain=DOMAIN,
                retry_after=1.0,
            ) from None
        if len(self._known) > 100_000:
            self._known.clear()
        self._known[subject] = (reply.valid, self._clock())
        return reply.valid


class Security:
    """Security pieces of one shop process (see the module docstring)."""

    def __init__(self, settings: Settings, *, serves_users: bool, service_name: str) -> None:
        self.settings = settings
        self.server_tls: ServerTls | None = None
        self.client_tls: ClientTls | None = None
        if settings.tls_dir is not None:
            self.server_tls = ServerTls.from_dir(settings.tls_dir, mtls=settings.mtls)
            self.client_tls = ClientTls.from_dir(settings.tls_dir, cert="server")
        key_file = settings.service_key_file or settings.data_dir / "keys" / "service-ed25519.pem"
        self._service_key = SigningKey.load_or_create(Path(key_file))
        self._service_verifier = TokenVerifier(
            StaticKeys(KeySet.of(self._service_key)),
            issuers=[SERVICE_ISSUER],
            audience=AUDIENCE,
            leeway=LEEWAY_SECONDS,
        )
        self.service_tokens: ServiceTokens | None = None
        if not settings.mtls:
            signer = TokenSigner(
                self._service_key, issuer=SERVICE_ISSUER, audience=AUDIENCE, ttl=SERVICE_TOKEN_TTL
            )
            self.service_tokens = ServiceTokens(signer, subject=service_name, ttl=SERVICE_TOKEN_TTL)
        self._users_key = load_signing_key(settings.data_dir) if serves_users else None
        self._jwks_fetch: Callable[[], Awaitable[Mapping[str, Any]]] | None = None
        self.user_verifier: TokenVerifier | None = None
        self.active_users: ActiveUsers | None = None

    def connect(
        self,
        channel: Callable[[], grpc.aio.Channel],
        local: Callable[[], Callable[[str], Awaitable[bool]] | None] = lambda: None,
    ) -> None:
        """Give the verifiers a way to the users service (``channel()`` made lazily), or
        ``local()``, the users store's own check where this process serves users."""

        async def fetch() -> Mapping[str, Any]:
            stub = users_pb2_grpc.UserServiceStub(channel())
            reply = await stub.GetJwks(users_pb2.GetJwksRequest(), timeout=5.0)
            return json_format.MessageToDict(reply, preserving_proto_field_name=True)

        self._jwks_fetch = fetch
        keys: StaticKeys | RemoteJwks
        if self._users_key is not None:
            keys = StaticKeys(KeySet.of(self._users_key))
        else:
            keys = RemoteJwks(fetch, min_refresh_interval=10.0)
        self.user_verifier = TokenVerifier(
            keys, issuers=[ISSUER], audience=AUDIENCE, leeway=LEEWAY_SECONDS
        )
        self.active_users = ActiveUsers(channel, local=local)

    async def jwks_document(self) -> Mapping[str, Any]:
        """The users' public keys as a JWKS document (for ``/.well-known/jwks.json``)."""
        if self._users_key is not None:
            return jwks(self._users_key)
        if self._jwks_fetch is None:
            raise RuntimeError("Security.connect() was not called")
        return await self._jwks_fetch()

    def service_token(self) -> Callable[[], str] | None:
        """The function returning this process's service token (None with mTLS)."""
        return self.service_tokens.token if self.service_tokens is not None else None

    def peer_service(self, call: CallInfo) -> str | None:
        """The calling service named by its mTLS certificate (None for other callers)."""
        if self.server_tls is None:
            return None
        identity: PeerIdentity | None = peer_identity(call.context)
        if identity is not None and SERVICE_URI in identity.uris:
            return identity.common_name or SERVICE_URI
        return None

    def limiter(self) -> Limiter:
        """The rate limiter: Redis (shared, with a local fallback) or in-process."""
        if self.settings.redis_url:
            from redis.asyncio import Redis

            from grpckit.ratelimit import RedisLimiter

            client = Redis.from_url(
                self.settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5
            )
            return RedisLimiter(client, prefix="shop:ratelimit:")
        return MemoryLimiter()

    def interceptors(self, audit: Interceptor | None) -> list[Interceptor]:
        """The server interceptors, outermost first (see the module docstring)."""
        if self.user_verifier is None or self.active_users is None:
            raise RuntimeError("Security.connect() must run before interceptors()")
        chain: list[Interceptor] = []
        limits = rate_limits(self.settings)
        limiter = self.limiter() if self.settings.rate_limits else None
        if limiter is not None:
            chain.append(
                rate_limit(limiter, {LOGIN: limits.login_per_email}, by_login_email, domain=DOMAIN)
            )
            chain.append(rate_limit(limiter, dict(limits.per_address), by_peer_ip, domain=DOMAIN))
        if audit is not None:
            chain.append(audit)
        chain.append(
            authentication(
                self.user_verifier,
                services=self._service_verifier,
                peer_service=self.peer_service,
                active=self.active_users,
            )
        )
        chain.append(authorization())
        if limiter is not None:
            chain.append(
                select(
                    rate_limit(limiter, dict(limits.per_user), by_user, domain=DOMAIN),
                    match=_counted,
                )
            )
        return chain
