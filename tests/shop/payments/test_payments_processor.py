"""PaymentProcessor: one charge per idempotency key, declines repeated, crashes recovered."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from shop.common.db import Database
from shop.common.money import Money
from shop.payments.domain import (
    Card,
    PaymentDeclinedError,
    PaymentInProgressError,
    PaymentStatus,
    ProviderUnavailableError,
)
from shop.payments.processor import PaymentProcessor
from shop.payments.provider import ChargeResult, SimulatedProvider
from shop.payments.store import MIGRATIONS, PaymentsStore

ORDER = "6a1f0c4e-2b7d-4e8a-9c3f-5d2e1b0a9f87"
AMOUNT = Money(4999)
APPROVE = Card("4242424242424242", 12, 2030, "123")
DECLINE = Card("4000000000000002", 12, 2030, "123")


class GatedProvider(SimulatedProvider):
    """Holds every charge at a gate until the test opens it; ``started`` is set on entry."""

    def __init__(self, **knobs: float) -> None:
        super().__init__(**knobs)  # type: ignore[arg-type]
        self.started = asyncio.Event()
        self.gate = asyncio.Event()

    async def charge(self, amount: Money, card: Card, idempotency_key: str) -> ChargeResult:
        self.started.set()
        await self.gate.wait()
        return await super().charge(amount, card, idempotency_key)


async def test_approved_then_repeated(store: PaymentsStore) -> None:
    provider = SimulatedProvider()
    processor = PaymentProcessor(store, provider)
    payment = await processor.process(ORDER, AMOUNT, APPROVE, "key")
    assert (payment.status, payment.card_last4) == (PaymentStatus.CAPTURED, "4242")
    assert await processor.process(ORDER, AMOUNT, APPROVE, "key") == payment
    assert provider.charges_made == 1


async def test_declined_is_stored_and_repeated(store: PaymentsStore) -> None:
    provider = SimulatedProvider()
    processor = PaymentProcessor(store, provider)
    with pytest.raises(PaymentDeclinedError) as first:
        await processor.process(ORDER, AMOUNT, DECLINE, "key")
    with pytest.raises(PaymentDeclinedError) as again:
        await processor.process(ORDER, AMOUNT, DECLINE, "key")
    assert first.value.payment == again.value.payment
    assert first.value.payment.decline_code == "card_declined"
    assert (await store.get(first.value.payment.id)).status is PaymentStatus.DECLINED
    assert provider.charges_made == 1


async def test_eight_concurrent_calls_charge_once(store: PaymentsStore) -> None:
    provider = GatedProvider()
    processor = PaymentProcessor(store, provider, poll_interval=0.001)
    calls = [
        asyncio.create_task(processor.process(ORDER, AMOUNT, APPROVE, "race")) for _ in range(8)
    ]
    await asyncio.wait_for(provider.started.wait(), timeout=5)
    provider.gate.set()
    payments = await asyncio.gather(*calls)
    assert len({p.id for p in payments}) == 1
    assert {p.status for p in payments} == {PaymentStatus.CAPTURED}
    assert provider.charges_made == 1


async def test_a_duplicate_gives_up_waiting_with_in_progress(store: PaymentsStore) -> None:
    provider = GatedProvider()
    first = PaymentProcessor(store, provider)
    impatient = PaymentProcessor(store, provider, wait=0.01, poll_interval=0.001)
    owner = asyncio.create_task(first.process(ORDER, AMOUNT, APPROVE, "key"))
    await asyncio.wait_for(provider.started.wait(), timeout=5)
    with pytest.raises(PaymentInProgressError):
        await impatient.process(ORDER, AMOUNT, APPROVE, "key")
    provider.gate.set()
    assert (await owner).status is PaymentStatus.CAPTURED


async def test_provider_unavailable_releases_the_key(store: PaymentsStore) -> None:
    processor = PaymentProcessor(store, SimulatedProvider(failure_rate=1.0))
    with pytest.raises(ProviderUnavailableError):
        await processor.process(ORDER, AMOUNT, APPROVE, "key")
    assert await store.list(ORDER, offset=0, limit=10) == []
    provider = SimulatedProvider()
    payment = await PaymentProcessor(store, provider).process(ORDER, AMOUNT, APPROVE, "key")
    assert payment.status is PaymentStatus.CAPTURED


async def test_a_crash_mid_charge_is_recovered_after_the_lease(
    store: PaymentsStore, clock: object
) -> None:
    provider = SimulatedProvider()
    # The first attempt charged, then its process died before settling the row.
    crashed, _ = await store.claim("key", ORDER, AMOUNT, APPROVE.last4)
    await provider.charge(AMOUNT, APPROVE, "key")
    assert (await store.get(crashed.id)).status is PaymentStatus.PROCESSING
    retry = PaymentProcessor(store, provider, wait=0.01, poll_interval=0.001)
    with pytest.raises(PaymentInProgressError):  # the lease still runs
        await retry.process(ORDER, AMOUNT, APPROVE, "key")
    clock.advance(31)  # type: ignore[attr-defined]
    payment = await retry.process(ORDER, AMOUNT, APPROVE, "key")
    assert (payment.id, payment.status) == (crashed.id, PaymentStatus.CAPTURED)
    assert provider.charges_made == 1  # the provider deduplicated the key


async def test_a_cancelled_caller_still_settles_the_charge(
    database: Database, clock: object
) -> None:
    await database.migrate(MIGRATIONS)
    settled = asyncio.Event()
    store = PaymentsStore(
        database,
        clock=clock,
        lease=timedelta(seconds=30),
        on_events=settled.set,  # type: ignore[arg-type]
    )
    provider = GatedProvider()
    caller = asyncio.create_task(
        PaymentProcessor(store, provider).process(ORDER, AMOUNT, APPROVE, "key")
    )
    await asyncio.wait_for(provider.started.wait(), timeout=5)
    caller.cancel()
    provider.gate.set()
    await asyncio.wait_for(settled.wait(), timeout=5)
    [payment] = await store.list(ORDER, offset=0, limit=10)
    assert payment.status is PaymentStatus.CAPTURED
    with pytest.raises(asyncio.CancelledError):
        await caller


async def test_refund(store: PaymentsStore) -> None:
    provider = SimulatedProvider()
    processor = PaymentProcessor(store, provider)
    payment = await processor.process(ORDER, AMOUNT, APPROVE, "key")
    refunded = await processor.refund(payment.id, "returned")
    assert (refunded.status, refunded.refund_reason) == (PaymentStatus.REFUNDED, "returned")
    assert await processor.refund(payment.id, "again") == refunded
    assert provider.refunds_made == 1
