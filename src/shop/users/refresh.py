"""Refresh tokens: opaque, single use, rotated on every use, revocable by family; no I/O here.

A refresh token reads ``<token_id>.<secret>``: the id finds the stored record, the secret
(32 random bytes) proves possession. Only the SHA-256 of the secret is stored, so a copy of
the database does not yield usable tokens. Each Refresh marks the presented token used and
issues its successor in the same *family* (one family per login); presenting a used token
again means two parties hold it, so the whole family is revoked.

>>> from datetime import UTC, datetime, timedelta
>>> now = datetime(2030, 1, 1, tzinfo=UTC)
>>> issued = issue("u-1", now=now, ttl=timedelta(days=30))
>>> token_id, secret = parse(issued.value)
>>> token_id == issued.record.id, issued.record.family_id == issued.record.id
(True, True)
>>> check(issued.record, secret, now=now) is None
True
>>> matches(issued.record, secret), matches(issued.record, "forged")
(True, False)
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from shop.common.ids import is_id, new_id
from shop.users.domain import UsersError

#: Random bytes in a secret (base64url: 43 characters).
SECRET_BYTES = 32
_SEPARATOR = "."
_MAX_SECRET_LENGTH = 128


class RefreshTokenError(UsersError):
    """A refresh token that cannot be exchanged; the caller has to log in again."""


class RefreshTokenInvalidError(RefreshTokenError):
    """Malformed, unknown, wrongly signed, revoked, or of an account that cannot log in."""

    def __init__(self) -> None:
        super().__init__("the refresh token is not valid; log in again")


class RefreshTokenExpiredError(RefreshTokenError):
    """The token is past its ``expires_at``."""

    def __init__(self) -> None:
        super().__init__("the refresh token has expired; log in again")


class RefreshTokenReusedError(RefreshTokenError):
    """A token already exchanged was presented again: its family has been revoked."""

    def __init__(self) -> None:
        super().__init__("the refresh token was already used; its session is revoked, log in again")


@dataclass(frozen=True)
class RefreshToken:
    """A refresh token as stored: the hash of its secret, never the secret."""

    id: str
    family_id: str
    user_id: str
    secret_hash: str
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None = None
    revoked_at: datetime | None = None


@dataclass(frozen=True)
class IssuedRefreshToken:
    """A new token: ``value`` goes to the client once, ``record`` to the store."""

    value: str = field(repr=False)
    record: RefreshToken

    def expires_in(self, now: datetime) -> int:
        """Whole seconds from ``now`` until the token expires."""
        return int((self.record.expires_at - now).total_seconds())


def issue(
    user_id: str, *, now: datetime, ttl: timedelta, family_id: str | None = None
) -> IssuedRefreshToken:
    """A new token for ``user_id``: the first of a family (a login) unless ``family_id`` is set."""
    token_id = new_id()
    secret = secrets.token_urlsafe(SECRET_BYTES)
    record = RefreshToken(
        id=token_id,
        family_id=family_id or token_id,
        user_id=user_id,
        secret_hash=hash_secret(secret),
        created_at=now,
        expires_at=now + ttl,
    )
    return IssuedRefreshToken(f"{token_id}{_SEPARATOR}{secret}", record)


def parse(value: str) -> tuple[str, str]:
    """``(token_id, secret)`` of a presented token; raises RefreshTokenInvalidError if malformed."""
    token_id, separator, secret = value.partition(_SEPARATOR)
    if not separator or not is_id(token_id) or not 0 < len(secret) <= _MAX_SECRET_LENGTH:
        raise RefreshTokenInvalidError()
    return token_id, secret


def hash_secret(secret: str) -> str:
    """The stored form of a secret: SHA-256, hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


def matches(token: RefreshToken | None, secret: str) -> bool:
    """True when ``token`` exists and ``secret`` is its secret (constant-time comparison)."""
    if token is None:
        return False
    return hmac.compare_digest(token.secret_hash, hash_secret(secret))


def check(token: RefreshToken | None, secret: str, *, now: datetime) -> None:
    """Whether ``token`` (the stored record for the presented id) may be exchanged now.

    Raises RefreshTokenInvalidError (unknown, wrong secret, revoked), RefreshTokenReusedError
    (already exchanged: the caller must revoke the family) or RefreshTokenExpiredError.
    """
    if token is None or not matches(token, secret) or token.revoked_at is not None:
        raise RefreshTokenInvalidError()
    if token.used_at is not None:
        raise RefreshTokenReusedError()
    if token.expires_at <= now:
        raise RefreshTokenExpiredError()
