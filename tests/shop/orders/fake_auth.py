"""A test-only authentication interceptor: the caller's principal taken from plain headers.

``x-test-user`` is the subject and ``x-test-roles`` a comma-separated list of roles; a call
with neither header is anonymous. Anyone can claim anything: for in-process tests only. Shared
by the ownership tests of orders, payments and the gateway.

Example::

    async with serve_in_process(service, interceptors=[HeaderAuth()]) as server:
        await stub.GetOrder(request, metadata=caller(user_id))
        await stub.GetOrder(request, metadata=caller(roles=("admin",)))
"""

from __future__ import annotations

from collections.abc import Sequence

from grpckit.auth import ANONYMOUS, SERVICE_ROLE, Principal
from grpckit.call import CallInfo
from grpckit.middleware import Next

USER_KEY = "x-test-user"
ROLES_KEY = "x-test-roles"

Metadata = tuple[tuple[str, str], ...]


def _text(value: str | bytes | None) -> str:
    return value if isinstance(value, str) else ""


class HeaderAuth:
    """Sets ``call.principal`` from the test headers, as a real authentication interceptor would."""

    async def intercept(self, call: CallInfo, next_: Next) -> None:
        subject = _text(call.header(USER_KEY))
        roles = frozenset(role for role in _text(call.header(ROLES_KEY)).split(",") if role)
        service = "test-service" if SERVICE_ROLE in roles else None
        call.principal = (
            Principal(subject=subject, roles=roles, service=service)
            if subject or roles
            else ANONYMOUS
        )
        await next_(call)


def caller(user_id: str = "", roles: Sequence[str] = ()) -> Metadata:
    """The metadata that makes :class:`HeaderAuth` see ``user_id`` with ``roles``."""
    metadata = [(USER_KEY, user_id)] if user_id else []
    if roles:
        metadata.append((ROLES_KEY, ",".join(roles)))
    return tuple(metadata)
