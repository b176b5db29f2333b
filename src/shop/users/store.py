"""Users persistence: the ``users`` table, its migrations and :class:`UserStore`."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shop.common.db import Database, Migration
from shop.common.times import as_utc
from shop.users.domain import EmailTakenError, User


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


METADATA = _Base.metadata

MIGRATIONS: list[Migration] = [
    Migration(1, "create users", lambda conn: METADATA.create_all(conn)),
]


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
        async with self._db.read() as session:
            row = await session.get(UserRow, user_id)
            return _to_domain(row) if row is not None else None

    async def by_email(self, email: str) -> User | None:
        """The account with this (normalized) email, if any."""
        async with self._db.read() as session:
            row = await session.scalar(sa.select(UserRow).where(UserRow.email == email))
            return _to_domain(row) if row is not None else None

    async def set_active(self, user_id: str, active: bool) -> bool:
        """Enable or disable an account; False when there is no such account."""
        async with self._db.transaction() as session:
            result = await session.execute(
                sa.update(UserRow).where(UserRow.id == user_id).values(active=active)
            )
            return cast("CursorResult[Any]", result).rowcount == 1


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
