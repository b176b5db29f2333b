"""Client side of authentication: forward the end user's token, prove the service's identity.

Installed on the channels a service uses to call its peers, so that a policy downstream applies
to the user the call is made for, while service-only methods see a service calling.

Example::

    tokens = ServiceTokens(TokenSigner(service_key, issuer="shop.service", audience="shop",
                                       ttl=300), subject="gateway")
    channel = dial(address, interceptors=credential_interceptors(service_token=tokens.token))
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc

from grpckit.auth._interceptors import AUTHORIZATION_KEY, SERVICE_AUTHORIZATION_KEY
from grpckit.auth._principal import SERVICE_ROLE, Principal
from grpckit.call import current_call
from grpckit.client._kinds import Continuation, every_kind

__all__ = ["ServiceTokens", "credential_interceptors"]


class ServiceTokens:
    """A short-lived service token, re-issued when less than a third of its life is left.

    Example: ``ServiceTokens(signer, subject="gateway").token()`` → a compact JWT.
    """

    def __init__(
        self,
        signer: Any,
        *,
        subject: str,
        ttl: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._signer = signer
        self._subject = subject
        self._ttl = ttl
        self._clock = clock
        self._value = ""
        self._renew_at = 0.0

    def token(self) -> str:
        """The current token (issued or renewed as needed)."""
        now = self._clock()
        if now >= self._renew_at:
            issued = self._signer.issue(self._subject, roles=[SERVICE_ROLE], ttl=self._ttl)
            self._value = issued.value
            self._renew_at = now + self._ttl * 2 / 3
        return self._value


def _details(
    details: grpc.aio.ClientCallDetails,
    service_token: Callable[[], str] | None,
    forward_user: bool,
) -> Any:
    added: list[tuple[str, str]] = []
    present = {k for k, _ in details.metadata} if details.metadata is not None else set()
    if forward_user and AUTHORIZATION_KEY not in present:
        call = current_call()
        principal = call.principal if call is not None else None
        if isinstance(principal, Principal) and principal.token:
            added.append((AUTHORIZATION_KEY, f"Bearer {principal.token}"))
    if service_token is not None and SERVICE_AUTHORIZATION_KEY not in present:
        added.append((SERVICE_AUTHORIZATION_KEY, f"Bearer {service_token()}"))
    if not added:
        return details
    metadata = grpc.aio.Metadata(*(tuple(details.metadata) if details.metadata else ()), *added)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


def credential_interceptors(
    *, service_token: Callable[[], str] | None = None, forward_user: bool = True
) -> list[Any]:
    """Client interceptors (one per RPC kind) that add credentials to outgoing calls.

    ``forward_user``: inside a served call, forward the caller's access token (from
    ``call.principal``) as ``authorization`` unless the call sets its own. ``service_token``:
    a function returning this service's token, sent as ``x-service-authorization`` (leave it
    out when mTLS certificates identify the services).

    Example: ``dial(addr, interceptors=credential_interceptors(service_token=tokens.token))``
    """

    async def intercept(continuation: Continuation, details: Any, arg: Any) -> Any:
        return await continuation(_details(details, service_token, forward_user), arg)

    return every_kind(intercept)
