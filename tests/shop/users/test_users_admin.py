"""ensure_admin against SQLite and PostgreSQL: idempotent, and safe when processes race."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from shop.common.db import Database
from shop.common.ids import new_id
from shop.users.admin import AdminAccount, ensure_admin
from shop.users.domain import new_user
from shop.users.passwords import ScryptHasher
from shop.users.store import MIGRATIONS, UserStore

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
FAST = ScryptHasher(cost=2**4)
PASSWORD = "admin password 1"


@pytest.fixture
async def store(database: Database) -> UserStore:
    await database.migrate(MIGRATIONS)
    return UserStore(database)


async def ensure(store: UserStore, password: str = PASSWORD) -> AdminAccount:
    return await ensure_admin(
        store, email=" Root@Example.com", password=password, hasher=FAST, now=NOW
    )


async def test_creates_the_admin_then_leaves_it_alone(store: UserStore) -> None:
    created = await ensure(store)
    assert created.created
    assert (created.user.email, created.user.roles) == ("root@example.com", ("admin",))
    again = await ensure(store, password="another password")
    assert (again.created, again.user) == (False, created.user)
    assert FAST.verify(PASSWORD, again.user.password_hash)


async def test_concurrent_starts_create_one_admin(store: UserStore) -> None:
    results = await asyncio.gather(*(ensure(store) for _ in range(4)))
    assert sum(result.created for result in results) == 1
    assert len({result.user.id for result in results}) == 1
    assert all(result.user.roles == ("admin",) for result in results)


async def test_an_existing_account_keeps_its_password_and_gains_the_role(store: UserStore) -> None:
    existing = new_user(
        user_id=new_id(), email="root@example.com", name="Root", password_hash="h", now=NOW
    )
    await store.add(existing)
    promoted = await ensure(store)
    assert not promoted.created
    assert (promoted.user.id, promoted.user.roles) == (existing.id, ("customer", "admin"))
    assert promoted.user.password_hash == "h"


@pytest.mark.parametrize(
    ("email", "password", "problem"),
    [("not-an-email", PASSWORD, "email"), ("root@example.com", "short", "password")],
)
async def test_unusable_settings_fail_loudly_without_the_password(
    store: UserStore, email: str, password: str, problem: str
) -> None:
    with pytest.raises(
        ValueError, match=f"admin account settings are not valid: {problem}"
    ) as caught:
        await ensure_admin(store, email=email, password=password, hasher=FAST, now=NOW)
    assert password not in str(caught.value)
