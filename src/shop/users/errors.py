"""The one place where users domain errors become gRPC statuses.

========================  ===============  =====================
domain error              code             ErrorInfo.reason
========================  ===============  =====================
EmailTakenError           ALREADY_EXISTS   EMAIL_TAKEN
UserNotFoundError         NOT_FOUND        USER_NOT_FOUND
InvalidCredentialsError   UNAUTHENTICATED  INVALID_CREDENTIALS
RefreshTokenInvalidError  UNAUTHENTICATED  REFRESH_TOKEN_INVALID
RefreshTokenExpiredError  UNAUTHENTICATED  REFRESH_TOKEN_EXPIRED
RefreshTokenReusedError   UNAUTHENTICATED  REFRESH_TOKEN_REUSED
========================  ===============  =====================

Every ErrorInfo carries ``domain="shop"``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from grpckit import StatusError
from grpckit.errors import already_exists, not_found, unauthenticated
from shop.users.domain import (
    EmailTakenError,
    InvalidCredentialsError,
    UserNotFoundError,
    UsersError,
)
from shop.users.refresh import (
    RefreshTokenExpiredError,
    RefreshTokenInvalidError,
    RefreshTokenReusedError,
)

DOMAIN = "shop"


def to_status(error: UsersError) -> StatusError:
    """The status a caller sees for ``error``; an unmapped error is a bug and is re-raised."""
    message = str(error)
    match error:
        case EmailTakenError():
            return already_exists(message, reason="EMAIL_TAKEN", domain=DOMAIN)
        case UserNotFoundError(user_id=user_id):
            return not_found(
                message,
                resource_type="user",
                resource_name=user_id,
                reason="USER_NOT_FOUND",
                domain=DOMAIN,
            )
        case InvalidCredentialsError():
            return unauthenticated(message, reason="INVALID_CREDENTIALS", domain=DOMAIN)
        case RefreshTokenInvalidError():
            return unauthenticated(message, reason="REFRESH_TOKEN_INVALID", domain=DOMAIN)
        case RefreshTokenExpiredError():
            return unauthenticated(message, reason="REFRESH_TOKEN_EXPIRED", domain=DOMAIN)
        case RefreshTokenReusedError():
            return unauthenticated(message, reason="REFRESH_TOKEN_REUSED", domain=DOMAIN)
    raise error


@contextmanager
def status_errors() -> Iterator[None]:
    """Translate the domain errors raised inside the block."""
    try:
        yield
    except UsersError as error:
        raise to_status(error) from None
