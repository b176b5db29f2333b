"""Server interceptors: ``authentication()`` finds out who calls, ``authorization()`` decides.

Credentials come in two headers:

* ``authorization: Bearer <access token>`` — the end user (sent by clients, forwarded by
  services calling each other on a user's behalf);
* ``x-service-authorization: Bearer <service token>`` — the calling service, when there is no
  mTLS certificate to say so. With mTLS the peer certificate is the service identity.

Both must verify if sent: a bad credential is UNAUTHENTICATED even on a public method.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from grpckit.auth._keys import KeySourceUnavailableError
from grpckit.auth._policy import AccessPolicy, declared_policy, policies_of
from grpckit.auth._principal import ANONYMOUS, SERVICE_ROLE, Principal
from grpckit.call import CallInfo
from grpckit.errors import StatusError, permission_denied, unauthenticated, unavailable
from grpckit.middleware import Interceptor, Next

__all__ = [
    "AUTHORIZATION_KEY",
    "SERVICE_AUTHORIZATION_KEY",
    "ClaimsLike",
    "TokenVerifierLike",
    "authentication",
    "authorization",
]

AUTHORIZATION_KEY = "authorization"
SERVICE_AUTHORIZATION_KEY = "x-service-authorization"
#: ErrorInfo domain of every rejection raised here.
DOMAIN = "auth.grpckit"


class ClaimsLike(Protocol):
    """What the interceptor needs from verified claims (``grpckit.auth.Claims`` fits)."""

    @property
    def subject(self) -> str: ...
    @property
    def roles(self) -> frozenset[str]: ...
    @property
    def raw(self) -> Any: ...


class TokenVerifierLike(Protocol):
    """``grpckit.auth.TokenVerifier`` fits; raises an exception with ``.reason`` when invalid."""

    async def verify(self, token: str) -> Any: ...


_MESSAGES = {
    "expired": "the access token has expired: get a new one with Refresh or Login",
    "not_yet_valid": "the access token is not valid yet (check the clocks)",
    "malformed": "the access token is malformed",
    "too_large": "the access token is too large",
    "bad_algorithm": "the access token's algorithm is not accepted",
    "unknown_key": "the access token was signed by an unknown key",
    "bad_signature": "the access token's signature does not verify",
    "bad_issuer": "the access token comes from an untrusted issuer",
    "bad_audience": "the access token is meant for another audience",
    "missing_claim": "the access token lacks a required claim",
}


def _bearer(value: str | bytes | None, header: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise unauthenticated(
            f"the {header} header must be 'Bearer <token>'",
            reason="MALFORMED_CREDENTIALS",
            domain=DOMAIN,
        )
    return token


class _Authentication:
    __slots__ = ("_active", "_peer_service", "_services", "_users")

    def __init__(
        self,
        users: TokenVerifierLike,
        services: TokenVerifierLike | None,
        peer_service: Callable[[CallInfo], str | None] | None,
        active: Callable[[str], Awaitable[bool]] | None,
    ) -> None:
        self._users = users
        self._services = services
        self._peer_service = peer_service
        self._active = active

    async def _verify(self, verifier: TokenVerifierLike, token: str, what: str) -> Any:
        try:
            return await verifier.verify(token)
        except StatusError:
            raise
        except KeySourceUnavailableError:
            raise unavailable(
                "cannot verify tokens right now: the signing keys are not reachable; retry shortly",
                reason="KEYS_UNAVAILABLE",
                domain=DOMAIN,
                retry_after=1.0,
            ) from None
        except Exception as exc:
            reason = str(getattr(exc, "reason", "") or "invalid")
            message = _MESSAGES.get(reason, "the access token is not valid")
            if what != "access":
                message = message.replace("access token", f"{what} token")
            raise unauthenticated(
                message, reason=f"TOKEN_{reason.upper()}", domain=DOMAIN
            ) from None

    async def principal(self, call: CallInfo) -> Principal:
        """The verified caller of ``call`` (:data:`ANONYMOUS` without credentials)."""
        service: str | None = None
        if self._peer_service is not None:
            service = self._peer_service(call)
        service_token = _bearer(call.header(SERVICE_AUTHORIZATION_KEY), SERVICE_AUTHORIZATION_KEY)
        if service_token is not None:
            if self._services is None:
                raise unauthenticated(
                    "service tokens are not accepted here", reason="TOKEN_UNEXPECTED", domain=DOMAIN
                )
            claims = await self._verify(self._services, service_token, "service")
            if SERVICE_ROLE not in claims.roles:
                raise unauthenticated(
                    "the service token carries no service role",
                    reason="TOKEN_NOT_A_SERVICE",
                    domain=DOMAIN,
                )
            service = service or claims.subject
        user_token = _bearer(call.header(AUTHORIZATION_KEY), AUTHORIZATION_KEY)
        if user_token is None:
            if service is None:
                return ANONYMOUS
            return Principal(roles=frozenset({SERVICE_ROLE}), service=service)
        claims = await self._verify(self._users, user_token, "access")
        if self._active is not None and not await self._active(claims.subject):
            raise unauthenticated(
                "the account behind this token is disabled or deleted",
                reason="ACCOUNT_INACTIVE",
                domain=DOMAIN,
            )
        # the service role is never taken from a user token, only from a service identity
        roles = frozenset(r for r in claims.roles if r != SERVICE_ROLE)
        if service is not None:
            roles |= {SERVICE_ROLE}
        return Principal(
            subject=claims.subject,
            roles=roles,
            service=service,
            token=user_token,
            claims=claims.raw,
        )

    async def intercept(self, call: CallInfo, next_: Next) -> None:
        call.principal = await self.principal(call)
        await next_(call)

    def __repr__(self) -> str:
        return "authentication()"


def authentication(
    users: TokenVerifierLike,
    *,
    services: TokenVerifierLike | None = None,
    peer_service: Callable[[CallInfo], str | None] | None = None,
    active: Callable[[str], Awaitable[bool]] | None = None,
) -> Interceptor:
    """Verify the caller's credentials and put the :class:`Principal` on ``call.principal``.

    ``users`` verifies access tokens (``authorization``); ``services`` verifies service tokens
    (``x-service-authorization``); ``peer_service`` names the calling service from its mTLS
    certificate (or returns None); ``active(subject)`` rejects tokens of disabled or deleted
    users. A missing credential is not an error here (the call is anonymous); a bad one is
    UNAUTHENTICATED. Place it before :func:`authorization`.

    Example::

        verifier = TokenVerifier(RemoteJwks(fetch_jwks), issuers=["shop.users"], audience="shop")
        app = App(interceptors=[recovery(), logging(), authentication(verifier), authorization()])
    """
    return _Authentication(users, services, peer_service, active)


class _Authorization:
    __slots__ = ("_cache", "_table")

    def __init__(self, table: dict[str, AccessPolicy] | None) -> None:
        self._table = table
        self._cache: dict[str, AccessPolicy | None] = {}

    def policy(self, full_method: str) -> AccessPolicy | None:
        """The policy of a method (explicit table first, then the proto option)."""
        try:
            return self._cache[full_method]
        except KeyError:
            pass
        found = self._table.get(full_method) if self._table is not None else None
        if found is None:
            found = declared_policy(full_method)
        if len(self._cache) < 10_000:
            self._cache[full_method] = found
        return found

    def check(self, call: CallInfo) -> None:
        """Raise UNAUTHENTICATED / PERMISSION_DENIED unless the call's principal may call."""
        policy = self.policy(call.full_method)
        if policy is None:
            raise permission_denied(
                f"{call.full_method} declares no access policy, so it is denied to everyone "
                "(add option (grpckit.auth.v1.access) to the method)",
                reason="NO_POLICY",
                domain=DOMAIN,
            )
        if policy.public:
            return
        principal = call.principal if isinstance(call.principal, Principal) else ANONYMOUS
        if not principal.authenticated:
            raise unauthenticated(
                f"{call.method} needs credentials: send 'authorization: Bearer <access token>' "
                "(get one with shop.users.v1.UserService/Login)",
                reason="CREDENTIALS_MISSING",
                domain=DOMAIN,
            )
        if not policy.admits_role(principal):
            raise permission_denied(
                f"{call.method} is restricted ({policy.describe()})",
                reason="ROLE_REQUIRED",
                domain=DOMAIN,
            )
        if policy.owner_field:
            _check_owner(call, principal, policy)

    async def intercept(self, call: CallInfo, next_: Next) -> None:
        self.check(call)
        await next_(call)

    def __repr__(self) -> str:
        return "authorization()"


def _check_owner(call: CallInfo, principal: Principal, policy: AccessPolicy) -> None:
    if principal.has_role(*policy.owner_exempt_roles):
        return
    owner = getattr(call.request, policy.owner_field, None) if call.request is not None else None
    if not isinstance(owner, str) or not owner or owner != principal.subject:
        raise permission_denied(
            f"{call.method}: {policy.owner_field} must be your own user id",
            reason="NOT_OWNER",
            domain=DOMAIN,
        )


def authorization(policies: Mapping[str, AccessPolicy] | None = None) -> Interceptor:
    """Enforce each method's access policy; methods without one are denied.

    Policies come from the ``(grpckit.auth.v1.access)`` option of each method (or from
    ``policies``, ``{"/pkg.Svc/Method": AccessPolicy(...)}``, which takes precedence).
    Anonymous callers of non-public methods get UNAUTHENTICATED; a principal without the role,
    or acting for another user where ``owner_field`` is set, gets PERMISSION_DENIED.

    Example: ``App(interceptors=[authentication(verifier), authorization()])``
    """
    return _Authorization(policies_of(policies) if policies is not None else None)
