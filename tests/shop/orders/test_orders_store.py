"""OrdersStore on SQLite and PostgreSQL: idempotency races, guarded transitions, the outbox."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

import pytest

from shop.api.events.v1 import events_pb2
from shop.common.ids import new_id
from shop.common.money import Money
from shop.orders import store as store_module
from shop.orders.domain import (
    OrderFilter,
    OrderItem,
    OrderNotFoundError,
    OrderNotPendingError,
    OrderStatus,
)
from shop.orders.store import OrdersStore

USER = "0b7d3c9e-3f55-4c2b-9a55-2f1d1c0e5a01"
OTHER_USER = "5e0c9f8a-1d3b-4a8e-b7c2-8f6a4d2e1b03"
P1 = "11111111-1111-4111-8111-111111111111"
P2 = "22222222-2222-4222-8222-222222222222"
ITEMS = (OrderItem(P1, 2, Money(1000)), OrderItem(P2, 1, Money(250)))
TOTAL = Money(2250)
ReadEvents = Callable[[], Awaitable[list[events_pb2.Event]]]


def types(events: Iterable[events_pb2.Event]) -> list[str]:
    return [events_pb2.EventType.Name(e.type) for e in events]


async def test_create_and_get_round_trip(store: OrdersStore, outbox_events: ReadEvents) -> None:
    order, created = await store.create(USER, ITEMS, TOTAL, "key-1")
    assert created
    assert order.status is OrderStatus.PENDING
    assert await store.get(order.id) == order
    [event] = await outbox_events()
    assert event.type == events_pb2.EVENT_TYPE_ORDER_CREATED
    assert (event.source, event.order_id, event.user_id) == ("orders", order.id, USER)
    assert (event.amount.units, event.amount.currency_code, event.item_count) == (22, "USD", 3)
    assert event.occurred_at.ToDatetime() == order.created_at.replace(tzinfo=None)


async def test_get_unknown_order(store: OrdersStore) -> None:
    with pytest.raises(OrderNotFoundError):
        await store.get(new_id())


async def test_same_key_returns_the_same_order(store: OrdersStore) -> None:
    first, _ = await store.create(USER, ITEMS, TOTAL, "key-1")
    again, created = await store.create(USER, ITEMS[:1], Money(2000), "key-1")
    assert not created
    assert again == first
    other, created = await store.create(OTHER_USER, ITEMS, TOTAL, "key-1")
    assert created and other.id != first.id  # keys are per user


async def test_empty_key_never_deduplicates(store: OrdersStore) -> None:
    first, _ = await store.create(USER, ITEMS, TOTAL, "")
    second, created = await store.create(USER, ITEMS, TOTAL, "")
    assert created and second.id != first.id


async def test_eight_concurrent_creates_make_one_order(
    store: OrdersStore, outbox_events: ReadEvents
) -> None:
    results = await asyncio.gather(*(store.create(USER, ITEMS, TOTAL, "race") for _ in range(8)))
    assert len({order.id for order, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert types(await outbox_events()) == ["EVENT_TYPE_ORDER_CREATED"]
    _, total = await store.search(OrderFilter(user_id=USER), offset=0, limit=10)
    assert total == 1


async def test_mark_paid_then_repeat_is_a_no_op(
    store: OrdersStore, outbox_events: ReadEvents
) -> None:
    order, _ = await store.create(USER, ITEMS, TOTAL)
    paid = await store.mark_paid(order.id, "pay-1")
    assert (paid.status, paid.payment_id) == (OrderStatus.PAID, "pay-1")
    assert paid.updated_at > order.updated_at
    assert await store.mark_paid(order.id, "pay-1") == paid
    events = await outbox_events()
    assert types(events) == ["EVENT_TYPE_ORDER_CREATED", "EVENT_TYPE_ORDER_PAID"]
    assert events[1].payment_id == "pay-1"


async def test_cancel_then_repeat_is_a_no_op(store: OrdersStore, outbox_events: ReadEvents) -> None:
    order, _ = await store.create(USER, ITEMS, TOTAL)
    cancelled = await store.cancel(order.id, "changed my mind")
    assert (cancelled.status, cancelled.cancel_reason) == (OrderStatus.CANCELLED, "changed my mind")
    assert await store.cancel(order.id, "again") == cancelled
    events = await outbox_events()
    assert types(events) == ["EVENT_TYPE_ORDER_CREATED", "EVENT_TYPE_ORDER_CANCELLED"]
    assert events[1].reason == "changed my mind"


async def test_paid_cannot_be_cancelled(store: OrdersStore, outbox_events: ReadEvents) -> None:
    order, _ = await store.create(USER, ITEMS, TOTAL)
    await store.mark_paid(order.id, "pay-1")
    with pytest.raises(OrderNotPendingError) as caught:
        await store.cancel(order.id, "too late")
    assert caught.value.status is OrderStatus.PAID
    assert (await store.get(order.id)).status is OrderStatus.PAID
    assert "EVENT_TYPE_ORDER_CANCELLED" not in types(await outbox_events())


async def test_cancelled_cannot_be_paid(store: OrdersStore) -> None:
    order, _ = await store.create(USER, ITEMS, TOTAL)
    await store.cancel(order.id, "no")
    with pytest.raises(OrderNotPendingError) as caught:
        await store.mark_paid(order.id, "pay-1")
    assert caught.value.status is OrderStatus.CANCELLED


async def test_transition_of_unknown_order(store: OrdersStore) -> None:
    with pytest.raises(OrderNotFoundError):
        await store.mark_paid(new_id(), "pay-1")
    with pytest.raises(OrderNotFoundError):
        await store.cancel(new_id(), "why")


async def test_concurrent_pay_and_cancel_have_one_winner(
    store: OrdersStore, outbox_events: ReadEvents
) -> None:
    order, _ = await store.create(USER, ITEMS, TOTAL)

    async def attempt(i: int) -> OrderStatus | str:
        try:
            if i % 2:
                return (await store.mark_paid(order.id, "pay-1")).status
            return (await store.cancel(order.id, "race")).status
        except OrderNotPendingError:
            return "lost"

    outcomes = await asyncio.gather(*(attempt(i) for i in range(8)))
    final = (await store.get(order.id)).status
    assert set(outcomes) <= {final, "lost"}
    assert outcomes.count(final) == 4  # the winner's side repeats as no-ops
    terminal = types(await outbox_events())[1:]
    assert len(terminal) == 1


async def test_failed_transaction_writes_no_order_and_no_event(
    store: OrdersStore, outbox_events: ReadEvents, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_add_events = store_module.add_events

    async def add_then_fail(*args: object, **kwargs: object) -> None:
        await real_add_events(*args, **kwargs)  # type: ignore[arg-type]
        raise RuntimeError("boom after the event was written")

    monkeypatch.setattr(store_module, "add_events", add_then_fail)
    with pytest.raises(RuntimeError):
        await store.create(USER, ITEMS, TOTAL, "k")
    monkeypatch.undo()
    assert await outbox_events() == []
    assert await store.find_by_key(USER, "k") is None


async def test_list_newest_first_with_paging(store: OrdersStore) -> None:
    created = [(await store.create(USER, ITEMS, TOTAL))[0] for _ in range(5)]
    await store.create(OTHER_USER, ITEMS, TOTAL)
    first = await store.list_for_user(USER, offset=0, limit=3)
    rest = await store.list_for_user(USER, offset=3, limit=3)
    assert [o.id for o in first + rest] == [o.id for o in reversed(created)]


async def test_search_filters(store: OrdersStore) -> None:
    cheap, _ = await store.create(USER, ITEMS[1:], Money(250))
    dear, _ = await store.create(USER, ITEMS, TOTAL)
    euro, _ = await store.create(OTHER_USER, ITEMS[:1], Money(99999, "EUR"))
    await store.cancel(cheap.id, "Found it CHEAPER elsewhere")
    await store.mark_paid(dear.id, "pay-1")

    async def ids(**fields: object) -> list[str]:
        found, total = await store.search(OrderFilter(**fields), offset=0, limit=10)  # type: ignore[arg-type]
        assert total == len(found)
        return [o.id for o in found]

    assert await ids() == [euro.id, dear.id, cheap.id]
    assert await ids(user_id=USER) == [dear.id, cheap.id]
    assert await ids(statuses=frozenset({OrderStatus.PAID, OrderStatus.PENDING})) == [
        euro.id,
        dear.id,
    ]
    assert await ids(created_after=dear.created_at) == [euro.id, dear.id]
    assert await ids(created_before=dear.created_at) == [cheap.id]
    assert await ids(min_total=Money(2000)) == [dear.id]  # the EUR order is another currency
    assert await ids(min_total=Money(1, "EUR")) == [euro.id]
    assert await ids(text="cheaper") == [cheap.id]  # cancel reason, any case
    assert await ids(text=P2[:8].upper()) == [dear.id, cheap.id]  # a product id
    assert await ids(text=euro.id[-12:]) == [euro.id]  # the order id
    assert await ids(text="%") == []  # LIKE wildcards are literal


async def test_search_counts_across_pages(store: OrdersStore) -> None:
    for _ in range(5):
        await store.create(USER, ITEMS, TOTAL)
    page, total = await store.search(OrderFilter(user_id=USER), offset=2, limit=2)
    assert (len(page), total) == (2, 5)


async def test_changes_are_signalled_after_commit(store: OrdersStore) -> None:
    order, _ = await store.create(USER, ITEMS, TOTAL)
    with store.changes.watch(order.id) as changed:
        await store.mark_paid(order.id, "pay-1")
        assert changed.is_set()
        changed.clear()
        await store.mark_paid(order.id, "pay-1")  # a no-op changes nothing
        assert not changed.is_set()
    assert store.changes.watcher_count() == 0
