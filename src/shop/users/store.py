"""Users persistence: the ``users`` and ``refresh_tokens`` tables, migrations and the stores.

A deleted account stays as a row (``deleted_at`` set) so that ids other services hold still
mean something, but every read here treats it as absent, its email is replaced by a tombstone
(``deleted:<id>``, which no registration can use) so the address can register again, and its
password hash is cleared.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Connection, CursorResult
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shop.common.db import Database, Migration
from shop.common.times import as_utc
from shop.users import refresh
from shop.users.domain import EmailTakenError, User, UserNotFoundError, UsersError, with_role
from shop.users.refresh import (
    IssuedRefreshToken,
    RefreshToken,
    RefreshTokenInvalidError,
    RefreshTokenReusedError,
)


class _Base(DeclarativeBase):
    metadata = sa.MetaData()


class UserRow(_Base):
    """One account. ``email`` is stored normalized (lowercase) and is unique."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(254), unique=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    roles: Mapped[list[str]] = mapped_column(sa.JSON)
    active: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)


class RefreshTokenRow(_Base):
    """One refresh token: the SHA-256 of its secret, its family (login) and its state."""

    __tablename__ = "refresh_tokens"
    __table_args__ = (
        sa.Index("ix_refresh_tokens_family", "family_id"),
        sa.Index("ix_refresh_tokens_user", "user_id"),
    )

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    family_id: Mapped[str] = mapped_column(sa.String(36))
    user_id: Mapped[str] = mapped_column(sa.String(36), sa.ForeignKey("users.id"))
    secret_hash: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)


METADATA = _Base.metadata

# The users table as version 1 created it; later columns come from their own migrations.
_V1 = sa.MetaData()
sa.Table(
    "users",
    _V1,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("email", sa.String(254), unique=True, nullable=False),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("roles", sa.JSON, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)


def _refresh_tokens_and_deleted_at(conn: Connection) -> None:
    timestamp = sa.DateTime(timezone=True).compile(dialect=conn.dialect)
    conn.execute(sa.text(f"ALTER TABLE users ADD COLUMN deleted_at {timestamp}"))
    cast(sa.Table, RefreshTokenRow.__table__).create(conn)


MIGRATIONS: list[Migration] = [
    Migration(1, "create users", _V1.create_all),
    Migration(2, "refresh tokens, users.deleted_at", _refresh_tokens_and_deleted_at),
]

_LIVE = UserRow.deleted_at.is_(None)


def tombstone_email(user_id: str) -> str:
    """What replaces a deleted account's email: unique, and never a valid email address."""
    return f"deleted:{user_id}"


class UserStore:
    """Reads and writes accounts; methods take and return domain ``User`` values."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, user: User) -> User:
        """Insert a new account; raises EmailTakenError when the email is in use."""
        try:
            async with self._db.transaction() as session:
                session.add(_to_row(user))
        except exc.IntegrityError:
            if await self.by_email(user.email) is not None:
                raise EmailTakenError(user.email) from None
            raise
        return user

    async def get(self, user_id: str) -> User | None:
        """The account with this id, unless there is none or it was deleted."""
        async with self._db.read() as session:
            row = await session.scalar(sa.select(UserRow).where(UserRow.id == user_id, _LIVE))
            return _to_domain(row) if row is not None else None

    async def by_email(self, email: str) -> User | None:
        """The account with this (normalized) email, if any."""
        async with self._db.read() as session:
            row = await session.scalar(sa.select(UserRow).where(UserRow.email == email, _LIVE))
            return _to_domain(row) if row is not None else None

    async def grant_role(self, user_id: str, role: str) -> User:
        """Add ``role`` to an account's roles (nothing changes when it has it already)."""
        async with self._db.transaction() as session:
            user = await _live_user(session, user_id)
            granted = with_role(user, role)
            if granted is not user:
                await session.execute(
                    sa.update(UserRow)
                    .where(UserRow.id == user_id)
                    .values(roles=list(granted.roles))
                )
            return granted

    async def disable(self, user_id: str, *, now: datetime) -> User:
        """Deactivate an account and revoke its refresh tokens, in one transaction.

        Raises UserNotFoundError for an unknown or deleted account; disabling twice is fine.
        """
        async with self._db.transaction() as session:
            user = await _live_user(session, user_id)
            await session.execute(
                sa.update(UserRow).where(UserRow.id == user_id).values(active=False)
            )
            await _revoke(session, RefreshTokenRow.user_id == user_id, now)
        return replace(user, active=False)

    async def delete(self, user_id: str, *, now: datetime) -> None:
        """Soft-delete an account (see the module docs) and revoke its refresh tokens.

        Raises UserNotFoundError for an unknown or already deleted account.
        """
        async with self._db.transaction() as session:
            result = await session.execute(
                sa.update(UserRow)
                .where(UserRow.id == user_id, _LIVE)
                .values(
                    deleted_at=now,
                    active=False,
                    email=tombstone_email(user_id),
                    password_hash="",
                )
            )
            if _rowcount(result) != 1:
                raise UserNotFoundError(user_id)
            await _revoke(session, RefreshTokenRow.user_id == user_id, now)


class RefreshTokenStore:
    """Refresh tokens: issue, rotate (one transaction, one winner) and revoke by family."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, token: RefreshToken) -> None:
        """Store a new token (the first of a family, at login)."""
        async with self._db.transaction() as session:
            session.add(_token_row(token))

    async def get(self, token_id: str) -> RefreshToken | None:
        async with self._db.read() as session:
            row = await session.get(RefreshTokenRow, token_id)
            return _token(row) if row is not None else None

    async def rotate(
        self, token_id: str, secret: str, *, now: datetime, ttl: timedelta
    ) -> tuple[User, IssuedRefreshToken]:
        """Exchange a presented token for its successor (same family, valid ``ttl``).

        In one transaction: the token is checked (:func:`shop.users.refresh.check`), its account
        must be live and active, then it is marked used (only if still unused, so of two
        concurrent exchanges exactly one wins) and the successor inserted. Returns the account
        and the successor. A token already used revokes its whole family, committed before
        RefreshTokenReusedError is raised; the other refusals are RefreshTokenInvalidError and
        RefreshTokenExpiredError.
        """
        async with self._db.transaction() as session:
            outcome = await _rotate(session, token_id, secret, now, ttl)
        if isinstance(outcome, UsersError):
            raise outcome
        return outcome

    async def revoke_family(self, token_id: str, secret: str, *, now: datetime) -> None:
        """Revoke the family of a presented token (logout); idempotent.

        Raises RefreshTokenInvalidError when the token is unknown or the secret is wrong.
        """
        async with self._db.transaction() as session:
            row = await session.get(RefreshTokenRow, token_id)
            token = _token(row) if row is not None else None
            if token is None or not refresh.matches(token, secret):
                raise RefreshTokenInvalidError()
            await _revoke(session, RefreshTokenRow.family_id == token.family_id, now)


async def _rotate(
    session: AsyncSession, token_id: str, secret: str, now: datetime, ttl: timedelta
) -> tuple[User, IssuedRefreshToken] | UsersError:
    row = await session.get(RefreshTokenRow, token_id)
    if row is None:
        return RefreshTokenInvalidError()
    token = _token(row)
    try:
        refresh.check(token, secret, now=now)
    except RefreshTokenReusedError as error:
        await _revoke(session, RefreshTokenRow.family_id == token.family_id, now)
        return error
    except UsersError as error:
        return error
    user_row = await session.scalar(sa.select(UserRow).where(UserRow.id == token.user_id, _LIVE))
    if user_row is None or not user_row.active:
        return RefreshTokenInvalidError()
    used = await session.execute(
        sa.update(RefreshTokenRow)
        .where(
            RefreshTokenRow.id == token_id,
            RefreshTokenRow.used_at.is_(None),
            RefreshTokenRow.revoked_at.is_(None),
        )
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    if _rowcount(used) != 1:  # a concurrent exchange (or logout) of the same token won
        await _revoke(session, RefreshTokenRow.family_id == token.family_id, now)
        return RefreshTokenReusedError()
    successor = refresh.issue(token.user_id, now=now, ttl=ttl, family_id=token.family_id)
    session.add(_token_row(successor.record))
    return _to_domain(user_row), successor


async def _live_user(session: AsyncSession, user_id: str) -> User:
    row = await session.scalar(sa.select(UserRow).where(UserRow.id == user_id, _LIVE))
    if row is None:
        raise UserNotFoundError(user_id)
    return _to_domain(row)


async def _revoke(session: AsyncSession, which: sa.ColumnElement[bool], now: datetime) -> None:
    await session.execute(
        sa.update(RefreshTokenRow)
        .where(which, RefreshTokenRow.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )


def _rowcount(result: sa.Result[Any]) -> int:
    return cast("CursorResult[Any]", result).rowcount


def _to_row(user: User) -> UserRow:
    return UserRow(
        id=user.id,
        email=user.email,
        name=user.name,
        password_hash=user.password_hash,
        roles=list(user.roles),
        active=user.active,
        created_at=user.created_at,
    )


def _to_domain(row: UserRow) -> User:
    return User(
        id=row.id,
        email=row.email,
        name=row.name,
        roles=tuple(row.roles),
        created_at=as_utc(row.created_at),
        active=row.active,
        password_hash=row.password_hash,
    )


def _token_row(token: RefreshToken) -> RefreshTokenRow:
    return RefreshTokenRow(
        id=token.id,
        family_id=token.family_id,
        user_id=token.user_id,
        secret_hash=token.secret_hash,
        created_at=token.created_at,
        expires_at=token.expires_at,
        used_at=token.used_at,
        revoked_at=token.revoked_at,
    )


def _token(row: RefreshTokenRow) -> RefreshToken:
    return RefreshToken(
        id=row.id,
        family_id=row.family_id,
        user_id=row.user_id,
        secret_hash=row.secret_hash,
        created_at=as_utc(row.created_at),
        expires_at=as_utc(row.expires_at),
        used_at=as_utc(row.used_at) if row.used_at is not None else None,
        revoked_at=as_utc(row.revoked_at) if row.revoked_at is not None else None,
    )
