"""The order state machine, pricing and totals: pure rules, no I/O."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from shop.common.money import Money
from shop.orders.domain import (
    InvalidTransitionError,
    LineRequest,
    MixedCurrenciesError,
    Order,
    OrderItem,
    OrderStatus,
    can_transition,
    price_items,
)

P1 = "11111111-1111-4111-8111-111111111111"
P2 = "22222222-2222-4222-8222-222222222222"

# Every (current, target) pair and what the state machine says of it.
EXPECTED = {
    (OrderStatus.PENDING, OrderStatus.PAID): True,
    (OrderStatus.PENDING, OrderStatus.CANCELLED): True,
    (OrderStatus.PAID, OrderStatus.PAID): False,
    (OrderStatus.CANCELLED, OrderStatus.CANCELLED): False,
    (OrderStatus.PAID, OrderStatus.CANCELLED): InvalidTransitionError,
    (OrderStatus.CANCELLED, OrderStatus.PAID): InvalidTransitionError,
    (OrderStatus.PENDING, OrderStatus.PENDING): InvalidTransitionError,
    (OrderStatus.PAID, OrderStatus.PENDING): InvalidTransitionError,
    (OrderStatus.CANCELLED, OrderStatus.PENDING): InvalidTransitionError,
}


def test_the_table_covers_every_pair() -> None:
    assert set(EXPECTED) == set(itertools.product(OrderStatus, repeat=2))


@pytest.mark.parametrize(("current", "target"), list(EXPECTED))
def test_transition(current: OrderStatus, target: OrderStatus) -> None:
    expected = EXPECTED[(current, target)]
    if expected is InvalidTransitionError:
        with pytest.raises(InvalidTransitionError) as caught:
            can_transition(current, target)
        assert (caught.value.current, caught.value.target) == (current, target)
    else:
        assert can_transition(current, target) is expected


def test_only_pending_is_not_terminal() -> None:
    assert [s for s in OrderStatus if not s.terminal] == [OrderStatus.PENDING]


def test_price_items_multiplies_and_sums() -> None:
    lines = [LineRequest(P1, 3), LineRequest(P2, 1), LineRequest(P1, 2)]
    items, total = price_items(lines, {P1: Money(1999), P2: Money(500)})
    assert items == (
        OrderItem(P1, 3, Money(1999)),
        OrderItem(P2, 1, Money(500)),
        OrderItem(P1, 2, Money(1999)),
    )
    assert total == Money(5 * 1999 + 500)


def test_price_items_keeps_the_currency() -> None:
    _, total = price_items([LineRequest(P1, 2)], {P1: Money(300, "EUR")})
    assert total == Money(600, "EUR")


def test_price_items_rejects_mixed_currencies() -> None:
    with pytest.raises(MixedCurrenciesError) as caught:
        price_items([LineRequest(P1, 1), LineRequest(P2, 1)], {P1: Money(1), P2: Money(1, "EUR")})
    assert caught.value.currencies == ("EUR", "USD")


def test_item_count_sums_quantities() -> None:
    now = datetime(2024, 1, 1, tzinfo=UTC)
    items = (OrderItem(P1, 3, Money(1)), OrderItem(P2, 4, Money(1)))
    order = Order("o", "u", items, Money(7), OrderStatus.PENDING, now, now)
    assert order.item_count == 7
    assert items[0].subtotal == Money(3)
