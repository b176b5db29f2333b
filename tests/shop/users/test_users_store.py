"""UserStore and RefreshTokenStore against SQLite and PostgreSQL (the ``database`` fixture)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from shop.common.db import Database
from shop.common.ids import new_id
from shop.users import refresh
from shop.users.domain import EmailTakenError, User, UserNotFoundError, new_user
from shop.users.refresh import (
    IssuedRefreshToken,
    RefreshTokenInvalidError,
    RefreshTokenReusedError,
)
from shop.users.store import MIGRATIONS, RefreshTokenStore, UserStore

NOW = datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
TTL = timedelta(days=30)


@pytest.fixture
async def store(database: Database) -> UserStore:
    await database.migrate(MIGRATIONS)
    return UserStore(database)


@pytest.fixture
def tokens(store: UserStore, database: Database) -> RefreshTokenStore:
    return RefreshTokenStore(database)


def make_user(email: str = "ada@example.com") -> User:
    return new_user(user_id=new_id(), email=email, name="Ada", password_hash="h", now=NOW)


async def login(tokens: RefreshTokenStore, user: User) -> IssuedRefreshToken:
    issued = refresh.issue(user.id, now=NOW, ttl=TTL)
    await tokens.add(issued.record)
    return issued


async def rotate(tokens: RefreshTokenStore, issued: IssuedRefreshToken) -> IssuedRefreshToken:
    token_id, secret = refresh.parse(issued.value)
    _, successor = await tokens.rotate(token_id, secret, now=NOW, ttl=TTL)
    return successor


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


async def test_grant_role_is_idempotent(store: UserStore) -> None:
    user = await store.add(make_user())
    assert (await store.grant_role(user.id, "admin")).roles == ("customer", "admin")
    assert (await store.grant_role(user.id, "admin")).roles == ("customer", "admin")
    stored = await store.get(user.id)
    assert stored is not None
    assert stored.roles == ("customer", "admin")


async def test_disable_deactivates_and_revokes_every_token(
    store: UserStore, tokens: RefreshTokenStore
) -> None:
    user = await store.add(make_user())
    other = await store.add(make_user("bob@example.com"))
    sessions = [await login(tokens, user), await login(tokens, user)]
    kept = await login(tokens, other)
    disabled = await store.disable(user.id, now=NOW)
    assert disabled == await store.get(user.id)
    assert not disabled.active
    for issued in sessions:
        stored = await tokens.get(issued.record.id)
        assert stored is not None
        assert stored.revoked_at == NOW
    with pytest.raises(RefreshTokenInvalidError):
        await rotate(tokens, sessions[0])
    assert (await rotate(tokens, kept)).record.user_id == other.id
    assert not (await store.disable(user.id, now=NOW)).active  # twice is fine
    with pytest.raises(UserNotFoundError):
        await store.disable(new_id(), now=NOW)


async def test_delete_hides_the_account_and_frees_its_email(
    store: UserStore, tokens: RefreshTokenStore
) -> None:
    user = await store.add(make_user())
    session = await login(tokens, user)
    await store.delete(user.id, now=NOW)
    assert await store.get(user.id) is None
    assert await store.by_email(user.email) is None
    with pytest.raises(RefreshTokenInvalidError):
        await rotate(tokens, session)
    for again in (store.delete, store.disable):
        with pytest.raises(UserNotFoundError):
            await again(user.id, now=NOW)
    with pytest.raises(UserNotFoundError):
        await store.grant_role(user.id, "admin")
    again_registered = await store.add(make_user())
    assert await store.by_email(user.email) == again_registered


async def test_rotation_marks_used_and_continues_the_family(
    store: UserStore, tokens: RefreshTokenStore
) -> None:
    user = await store.add(make_user())
    first = await login(tokens, user)
    second = await rotate(tokens, first)
    assert (second.record.family_id, second.record.user_id) == (first.record.id, user.id)
    stored = await tokens.get(first.record.id)
    assert stored is not None
    assert (stored.used_at, stored.revoked_at) == (NOW, None)
    third = await rotate(tokens, second)
    assert third.record.family_id == first.record.id


async def test_reusing_a_rotated_token_revokes_the_whole_family(
    store: UserStore, tokens: RefreshTokenStore
) -> None:
    user = await store.add(make_user())
    first = await login(tokens, user)
    other_login = await login(tokens, user)
    newest = await rotate(tokens, await rotate(tokens, first))
    with pytest.raises(RefreshTokenReusedError):
        await rotate(tokens, first)
    with pytest.raises(RefreshTokenInvalidError):  # the revocation was committed
        await rotate(tokens, newest)
    assert (await rotate(tokens, other_login)).record.family_id == other_login.record.id


async def test_concurrent_rotations_of_one_token_let_exactly_one_win(
    store: UserStore, tokens: RefreshTokenStore, database: Database
) -> None:
    user = await store.add(make_user())
    issued = await login(tokens, user)
    results = await asyncio.gather(
        *(rotate(tokens, issued) for _ in range(4)), return_exceptions=True
    )
    winners = [r for r in results if isinstance(r, IssuedRefreshToken)]
    losers = [r for r in results if not isinstance(r, IssuedRefreshToken)]
    assert len(winners) == 1
    # The first loser reports the reuse; later ones may already find the family revoked.
    assert any(isinstance(r, RefreshTokenReusedError) for r in losers)
    assert all(isinstance(r, RefreshTokenReusedError | RefreshTokenInvalidError) for r in losers)
    async with database.read() as session:
        family = await session.execute(
            sa.text("SELECT revoked_at FROM refresh_tokens WHERE family_id = :family"),
            {"family": issued.record.id},
        )
        revoked = [row.revoked_at is not None for row in family]
    assert revoked == [True, True]  # the token and its one successor, revoked by the replay


async def test_expired_and_forged_tokens_are_refused(
    store: UserStore, tokens: RefreshTokenStore
) -> None:
    user = await store.add(make_user())
    issued = await login(tokens, user)
    token_id, secret = refresh.parse(issued.value)
    with pytest.raises(refresh.RefreshTokenExpiredError):
        await tokens.rotate(token_id, secret, now=NOW + TTL, ttl=TTL)
    with pytest.raises(RefreshTokenInvalidError):
        forged = secret[:-1] + ("B" if secret.endswith("A") else "A")  # never the real one
        await tokens.rotate(token_id, forged, now=NOW, ttl=TTL)
    with pytest.raises(RefreshTokenInvalidError):
        await tokens.rotate(new_id(), secret, now=NOW, ttl=TTL)
    assert await rotate(tokens, issued)  # none of that used it up


async def test_revoke_family_is_idempotent_and_needs_the_secret(
    store: UserStore, tokens: RefreshTokenStore
) -> None:
    user = await store.add(make_user())
    issued = await login(tokens, user)
    successor = await rotate(tokens, issued)
    token_id, secret = refresh.parse(issued.value)
    with pytest.raises(RefreshTokenInvalidError):
        await tokens.revoke_family(token_id, "not-the-secret", now=NOW)
    with pytest.raises(RefreshTokenInvalidError):
        await tokens.revoke_family(new_id(), secret, now=NOW)
    await tokens.revoke_family(token_id, secret, now=NOW)
    await tokens.revoke_family(token_id, secret, now=NOW)
    with pytest.raises(RefreshTokenInvalidError):
        await rotate(tokens, successor)


async def test_migrations_are_idempotent(database: Database) -> None:
    assert await database.migrate(MIGRATIONS) == 2
    assert await database.migrate(MIGRATIONS) == 2


async def test_version_2_keeps_the_accounts_of_version_1(database: Database) -> None:
    assert await database.migrate(MIGRATIONS[:1]) == 1
    user = make_user()
    async with database.transaction() as session:
        await session.execute(
            sa.text(
                "INSERT INTO users (id, email, name, password_hash, roles, active, created_at)"
                " VALUES (:id, :email, 'Ada', 'h', :roles, :active, :created_at)"
            ),
            {
                "id": user.id,
                "email": user.email,
                "roles": '["customer"]',
                "active": True,
                "created_at": NOW,
            },
        )
    assert await database.migrate(MIGRATIONS) == 2
    store = UserStore(database)
    assert await store.get(user.id) == user
    assert (await login(RefreshTokenStore(database), user)).record.user_id == user.id
