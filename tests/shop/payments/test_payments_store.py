"""PaymentsStore on SQLite and PostgreSQL: claims, leases, guarded settles, refunds, outbox."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from shop.api.events.v1 import events_pb2
from shop.common.ids import new_id
from shop.common.money import Money
from shop.payments import store as store_module
from shop.payments.domain import (
    Payment,
    PaymentNotCapturedError,
    PaymentNotFoundError,
    PaymentStatus,
)
from shop.payments.provider import ChargeResult
from shop.payments.store import PaymentsStore

ReadEvents = Callable[[], Awaitable[list[events_pb2.Event]]]
ORDER = "6a1f0c4e-2b7d-4e8a-9c3f-5d2e1b0a9f87"
AMOUNT = Money(4999)
APPROVED = ChargeResult(True, "ch_1")
DECLINED = ChargeResult(False, "ch_2", "card_declined")


def types(events: list[events_pb2.Event]) -> list[str]:
    return [events_pb2.EventType.Name(e.type) for e in events]


async def refunded_at_provider(_payment: Payment) -> str:
    return "re_1"


async def test_claim_inserts_a_processing_row_once(store: PaymentsStore) -> None:
    payment, owned = await store.claim("key", ORDER, AMOUNT, "4242")
    assert owned and payment.status is PaymentStatus.PROCESSING
    again, owned_again = await store.claim("key", ORDER, Money(1), "0000")
    assert (again, owned_again) == (payment, False)


async def test_eight_concurrent_claims_have_one_owner(store: PaymentsStore) -> None:
    claims = await asyncio.gather(*(store.claim("race", ORDER, AMOUNT, "4242") for _ in range(8)))
    assert len({payment.id for payment, _ in claims}) == 1
    assert [owned for _, owned in claims].count(True) == 1


async def test_settle_captured_writes_one_event(
    store: PaymentsStore, outbox_events: ReadEvents
) -> None:
    payment, _ = await store.claim("key", ORDER, AMOUNT, "4242")
    captured = await store.settle(payment.id, APPROVED)
    assert (captured.status, captured.charge_id) == (PaymentStatus.CAPTURED, "ch_1")
    assert await store.settle(payment.id, DECLINED) == captured  # guarded: already settled
    [event] = await outbox_events()
    assert event.type == events_pb2.EVENT_TYPE_PAYMENT_CAPTURED
    assert (event.source, event.payment_id, event.order_id) == ("payments", payment.id, ORDER)
    assert event.amount.units == 49


async def test_settle_declined(store: PaymentsStore, outbox_events: ReadEvents) -> None:
    payment, _ = await store.claim("key", ORDER, AMOUNT, "0002")
    declined = await store.settle(payment.id, DECLINED)
    assert (declined.status, declined.decline_code) == (PaymentStatus.DECLINED, "card_declined")
    [event] = await outbox_events()
    assert (event.type, event.decline_code) == (
        events_pb2.EVENT_TYPE_PAYMENT_DECLINED,
        "card_declined",
    )


async def test_a_stale_claim_is_taken_over_once(store: PaymentsStore, clock: object) -> None:
    payment, _ = await store.claim("key", ORDER, AMOUNT, "4242")
    assert await store.reclaim(payment.id) == (payment, False)  # lease still running
    clock.advance(31)  # type: ignore[attr-defined]
    results = await asyncio.gather(*(store.reclaim(payment.id) for _ in range(4)))
    assert [owned for _, owned in results].count(True) == 1
    assert (await store.claim("key", ORDER, AMOUNT, "4242"))[1] is False  # lease renewed


async def test_release_lets_the_key_be_claimed_again(store: PaymentsStore) -> None:
    payment, _ = await store.claim("key", ORDER, AMOUNT, "4242")
    await store.release(payment.id)
    assert await store.reclaim(payment.id) == (None, False)
    again, owned = await store.claim("key", ORDER, AMOUNT, "4242")
    assert owned and again.id != payment.id


async def test_release_never_removes_a_settled_payment(store: PaymentsStore) -> None:
    payment, _ = await store.claim("key", ORDER, AMOUNT, "4242")
    await store.settle(payment.id, APPROVED)
    await store.release(payment.id)
    assert (await store.get(payment.id)).status is PaymentStatus.CAPTURED


async def test_refund_once(store: PaymentsStore, outbox_events: ReadEvents) -> None:
    payment, _ = await store.claim("key", ORDER, AMOUNT, "4242")
    await store.settle(payment.id, APPROVED)
    calls: list[str] = []

    async def refund(p: Payment) -> str:
        calls.append(p.charge_id)
        return "re_1"

    results = await asyncio.gather(*(store.refund(payment.id, "damaged", refund) for _ in range(4)))
    assert {r.status for r in results} == {PaymentStatus.REFUNDED}
    assert {r.refund_reason for r in results} == {"damaged"}
    assert calls == ["ch_1"]
    events = await outbox_events()
    assert types(events) == ["EVENT_TYPE_PAYMENT_CAPTURED", "EVENT_TYPE_PAYMENT_REFUNDED"]
    assert events[1].reason == "damaged"


async def test_refund_of_a_declined_payment(store: PaymentsStore) -> None:
    payment, _ = await store.claim("key", ORDER, AMOUNT, "0002")
    await store.settle(payment.id, DECLINED)
    with pytest.raises(PaymentNotCapturedError):
        await store.refund(payment.id, "", refunded_at_provider)
    with pytest.raises(PaymentNotFoundError):
        await store.refund(new_id(), "", refunded_at_provider)


async def test_failed_provider_refund_changes_nothing(
    store: PaymentsStore, outbox_events: ReadEvents
) -> None:
    payment, _ = await store.claim("key", ORDER, AMOUNT, "4242")
    await store.settle(payment.id, APPROVED)

    async def broken(_p: Payment) -> str:
        raise RuntimeError("provider down")

    with pytest.raises(RuntimeError):
        await store.refund(payment.id, "x", broken)
    assert (await store.get(payment.id)).status is PaymentStatus.CAPTURED
    assert types(await outbox_events()) == ["EVENT_TYPE_PAYMENT_CAPTURED"]


async def test_failed_transaction_writes_no_state_and_no_event(
    store: PaymentsStore, outbox_events: ReadEvents, monkeypatch: pytest.MonkeyPatch
) -> None:
    payment, _ = await store.claim("key", ORDER, AMOUNT, "4242")
    real_add_events = store_module.add_events

    async def add_then_fail(*args: object, **kwargs: object) -> None:
        await real_add_events(*args, **kwargs)  # type: ignore[arg-type]
        raise RuntimeError("boom after the event was written")

    monkeypatch.setattr(store_module, "add_events", add_then_fail)
    with pytest.raises(RuntimeError):
        await store.settle(payment.id, APPROVED)
    monkeypatch.undo()
    assert (await store.get(payment.id)).status is PaymentStatus.PROCESSING
    assert await outbox_events() == []


async def test_list_oldest_first(store: PaymentsStore) -> None:
    other_order = new_id()
    made = [(await store.claim(f"k{i}", ORDER, AMOUNT, "4242"))[0] for i in range(3)]
    await store.claim("other", other_order, AMOUNT, "4242")
    assert [p.id for p in await store.list(ORDER, offset=0, limit=10)] == [p.id for p in made]
    assert len(await store.list("", offset=0, limit=10)) == 4
    assert [p.id for p in await store.list(ORDER, offset=1, limit=1)] == [made[1].id]
