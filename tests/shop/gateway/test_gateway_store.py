"""The saga journal on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from shop.common.ids import new_id
from shop.common.money import Money
from shop.gateway.domain import (
    LineItem,
    Progress,
    Saga,
    SagaConflictError,
    SagaError,
    SagaState,
    SagaTakenOverError,
    Step,
)
from shop.gateway.store import SagaStore, sagas

NOW = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def new_saga(key: str = "k", user_id: str | None = None) -> Saga:
    return Saga(
        id=new_id(),
        user_id=user_id or new_id(),
        idempotency_key=key,
        fingerprint="f" * 64,
        items=(LineItem(new_id(), 2), LineItem(new_id(), 1)),
        state=SagaState.STARTED,
        owner="owner-a",
        created_at=NOW,
        updated_at=NOW,
        deadline=NOW + timedelta(seconds=30),
        pending_step=Step.VALIDATE_USER,
    )


async def test_create_get_and_find_round_trip(store: SagaStore) -> None:
    saga = new_saga()
    await store.create(saga)
    assert await store.get(saga.id) == saga
    assert await store.find(saga.user_id, "k") == saga
    assert await store.find(saga.user_id, "other") is None
    assert await store.get(new_id()) is None


async def test_save_journals_every_mutable_field(store: SagaStore) -> None:
    saga = new_saga()
    await store.create(saga)
    saga.state = SagaState.COMPENSATING
    saga.pending_step = None
    saga.progress = Progress(order_id=new_id(), stock_held=True, payment_id=new_id(),
                             payment_uncertain=True)  # fmt: skip
    saga.amount = Money(123456, "EUR")
    saga.result = b"\x00\x01binary"
    saga.error = SagaError("FAILED_PRECONDITION", "declined", b"\x08\x09status")
    saga.updated_at = NOW + timedelta(seconds=1)
    await store.save(saga)
    assert saga.version == 1
    assert await store.get(saga.id) == saga


async def test_the_key_is_unique_per_user(store: SagaStore) -> None:
    first = new_saga("same")
    await store.create(first)
    with pytest.raises(SagaConflictError) as caught:
        await store.create(new_saga("same", user_id=first.user_id))
    assert caught.value.existing == first
    await store.create(new_saga("same"))  # another user may use the same key


async def test_save_is_fenced_by_the_row_version(store: SagaStore) -> None:
    saga = new_saga()
    await store.create(saga)
    stale = replace(saga)
    assert await store.claim(saga, "owner-b", NOW + timedelta(seconds=5))
    stale.state = SagaState.ORDER_CREATED
    with pytest.raises(SagaTakenOverError):
        await store.save(stale)
    assert not await store.claim(stale, "owner-c", NOW)
    current = await store.get(saga.id)
    assert current is not None
    assert (current.owner, current.state, current.version) == ("owner-b", SagaState.STARTED, 1)


async def test_unfinished_lists_non_terminal_sagas_oldest_first(store: SagaStore) -> None:
    older, newer, done = new_saga("a"), new_saga("b"), new_saga("c")
    newer.updated_at = NOW + timedelta(seconds=1)
    done.state = SagaState.COMPLETED
    for saga in (newer, done, older):
        await store.create(saga)
    assert [s.id for s in await store.unfinished()] == [older.id, newer.id]


def test_the_journal_has_no_column_for_card_secrets() -> None:
    names = {column.name for column in sagas.columns}
    assert not {n for n in names if "card" in n or "cvc" in n}
