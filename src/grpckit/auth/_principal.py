"""Who is calling: the principal an authentication interceptor attaches to each call."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from grpckit.call import current_call

__all__ = [
    "ADMIN_ROLE",
    "ANONYMOUS",
    "SERVICE_ROLE",
    "Principal",
    "caller_may_access",
    "current_principal",
]

#: The role a service identity (mTLS peer or service token) carries.
SERVICE_ROLE = "service"
#: The role that may act on anyone's behalf.
ADMIN_ROLE = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: an end user, a service, or a service acting for a user.

    ``subject`` is the end user's id (``""`` when a service calls on its own), ``roles`` the
    user's roles plus ``"service"`` when a service identity came with the call, ``service`` that
    identity (``"gateway"``, a certificate URI ...), ``token`` the end user's bearer token as
    received (forwarded to nested calls so policies apply to the user; never log it) and
    ``claims`` the verified token claims.

    Example::

        principal = current_principal()
        if principal is None or not principal.may_access(order.user_id):
            raise not_found(...)
    """

    subject: str = ""
    roles: frozenset[str] = frozenset()
    service: str | None = None
    token: str = field(default="", repr=False)
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def authenticated(self) -> bool:
        """True for a verified user or service (never for :data:`ANONYMOUS`)."""
        return bool(self.subject) or self.service is not None

    def has_role(self, *roles: str) -> bool:
        """True when the principal has any of ``roles``."""
        return not self.roles.isdisjoint(roles)

    def may_access(
        self, owner_id: str, *, exempt: frozenset[str] = frozenset({ADMIN_ROLE, SERVICE_ROLE})
    ) -> bool:
        """True when the principal is ``owner_id`` or holds an exempt role (admin, service)."""
        return (bool(self.subject) and self.subject == owner_id) or not self.roles.isdisjoint(
            exempt
        )


#: A caller without credentials (public methods only).
ANONYMOUS = Principal()


def current_principal() -> Principal | None:
    """The principal of the call being served (``None`` outside a call or before auth ran)."""
    call = current_call()
    if call is None:
        return None
    principal = call.principal
    return principal if isinstance(principal, Principal) else None


def caller_may_access(owner_id: str) -> bool:
    """May the caller of the current call see ``owner_id``'s resources?

    True for the owner, admins and services (:meth:`Principal.may_access`), and when no
    authentication runs at all (no principal: in-process tests, tools). Handlers answer
    NOT_FOUND otherwise, exactly as for an unknown id.

    Example: ``if not caller_may_access(order.user_id): raise OrderNotFoundError(order.id)``
    """
    principal = current_principal()
    return principal is None or principal.may_access(owner_id)
