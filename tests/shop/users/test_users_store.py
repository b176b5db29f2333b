"""UserStore against SQLite and PostgreSQL (the shared ``database`` fixture)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from shop.common.db import Database
from shop.common.ids import new_id
from shop.users.domain import EmailTakenError, User, new_user
from shop.users.store import MIGRATIONS, UserStore

NOW = datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


@pytest.fixture
async def store(database: Database) -> UserStore:
    await database.migrate(MIGRATIONS)
    return UserStore(database)


def make_user(email: str = "ada@example.com") -> User:
    return new_user(user_id=new_id(), email=email, name="Ada", password_hash="h", now=NOW)


async def test_add_then_read_back(store: UserStore) -> None:
    user = await store.add(make_user())
    assert await store.get(user.id) == user
    assert await store.by_email("ada@example.com") == user
    assert await store.get(new_id()) is None
    assert await store.by_email("nobody@example.com") is None


async def test_duplicate_email_is_refused(store: UserStore) -> None:
    await store.add(make_user())
    with pytest.raises(EmailTakenError):
        await store.add(make_user())


async def test_concurrent_registrations_of_one_email_let_exactly_one_win(store: UserStore) -> None:
    results = await asyncio.gather(
        *(store.add(make_user()) for _ in range(5)), return_exceptions=True
    )
    assert sum(isinstance(r, User) for r in results) == 1
    assert sum(isinstance(r, EmailTakenError) for r in results) == 4


async def test_disable_and_enable(store: UserStore) -> None:
    user = await store.add(make_user())
    assert await store.set_active(user.id, False)
    stored = await store.get(user.id)
    assert stored is not None
    assert not stored.active
    assert not await store.set_active(new_id(), False)


async def test_migrations_are_idempotent(database: Database) -> None:
    assert await database.migrate(MIGRATIONS) == 1
    assert await database.migrate(MIGRATIONS) == 1
