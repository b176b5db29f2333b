"""Authentication and authorization for grpckit servers and clients.

* :func:`authentication` verifies ``authorization: Bearer`` access tokens (and service tokens
  or mTLS identities) and puts a :class:`Principal` on each call;
* :func:`authorization` enforces each method's access policy, declared once in the protos with
  ``option (grpckit.auth.v1.access)``; a method without one is denied;
* :func:`credential_interceptors` forward the caller's token and add the service identity on
  calls to other services.
"""

from grpckit.auth._client import ServiceTokens, credential_interceptors
from grpckit.auth._interceptors import (
    AUTHORIZATION_KEY,
    SERVICE_AUTHORIZATION_KEY,
    authentication,
    authorization,
)
from grpckit.auth._jwt import Claims, InvalidTokenError, IssuedToken, TokenSigner, TokenVerifier
from grpckit.auth._keys import (
    KeySet,
    KeySource,
    KeySourceUnavailableError,
    PublicKey,
    RemoteJwks,
    SigningKey,
    StaticKeys,
    jwks,
)
from grpckit.auth._policy import AccessPolicy, declared_policy, missing_policies
from grpckit.auth._principal import (
    ADMIN_ROLE,
    ANONYMOUS,
    SERVICE_ROLE,
    Principal,
    caller_may_access,
    current_principal,
)

__all__ = [
    "ADMIN_ROLE",
    "ANONYMOUS",
    "AUTHORIZATION_KEY",
    "SERVICE_AUTHORIZATION_KEY",
    "SERVICE_ROLE",
    "AccessPolicy",
    "Claims",
    "InvalidTokenError",
    "IssuedToken",
    "KeySet",
    "KeySource",
    "KeySourceUnavailableError",
    "Principal",
    "PublicKey",
    "RemoteJwks",
    "ServiceTokens",
    "SigningKey",
    "StaticKeys",
    "TokenSigner",
    "TokenVerifier",
    "authentication",
    "authorization",
    "caller_may_access",
    "credential_interceptors",
    "current_principal",
    "declared_policy",
    "jwks",
    "missing_policies",
]
