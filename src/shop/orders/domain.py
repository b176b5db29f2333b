"""Orders: the order, its lines, and the rules of its life PENDING -> PAID | CANCELLED.

Pure code: no gRPC, no database. The store and the service call these rules.

>>> can_transition(OrderStatus.PENDING, OrderStatus.PAID)
True
>>> can_transition(OrderStatus.PAID, OrderStatus.PAID)  # idempotent: nothing to do
False
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from shop.common.money import Money

MAX_ITEMS = 100
MAX_QUANTITY = 1000
MAX_IDEMPOTENCY_KEY = 200
MAX_CANCEL_REASON = 500


class OrderStatus(enum.StrEnum):
    """Where an order is in its life; PAID and CANCELLED are final."""

    PENDING = "PENDING"
    PAID = "PAID"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self is not OrderStatus.PENDING


class OrderError(Exception):
    """Root of the errors an order operation can end with (mapped to gRPC by the service)."""


class OrderNotFoundError(OrderError):
    """No order has this id."""

    def __init__(self, order_id: str) -> None:
        super().__init__(f"order {order_id} not found")
        self.order_id = order_id


class OrderNotPendingError(OrderError):
    """A transition was asked of an order that already left PENDING another way."""

    def __init__(self, order_id: str, status: OrderStatus, target: OrderStatus) -> None:
        super().__init__(f"order {order_id} is {status}, it cannot become {target}")
        self.order_id = order_id
        self.status = status
        self.target = target


class MixedCurrenciesError(OrderError):
    """The products of one order are priced in different currencies."""

    def __init__(self, currencies: Sequence[str]) -> None:
        super().__init__(f"an order is paid in one currency; items are in {', '.join(currencies)}")
        self.currencies = tuple(currencies)


@dataclass(frozen=True)
class OrderItem:
    """One line of an order, priced when the order was created."""

    product_id: str
    quantity: int
    unit_price: Money

    @property
    def subtotal(self) -> Money:
        return self.unit_price * self.quantity


@dataclass(frozen=True)
class Order:
    """An order as stored. ``payment_id`` is set once PAID, ``cancel_reason`` once CANCELLED."""

    id: str
    user_id: str
    items: tuple[OrderItem, ...]
    total: Money
    status: OrderStatus
    created_at: datetime
    updated_at: datetime
    cancel_reason: str = ""
    payment_id: str = ""

    @property
    def item_count(self) -> int:
        """Units in the order (the sum of the quantities)."""
        return sum(item.quantity for item in self.items)


@dataclass(frozen=True)
class LineRequest:
    """A product and quantity as the caller asked for them, before pricing."""

    product_id: str
    quantity: int


class InvalidTransitionError(ValueError):
    """A move the state machine forbids; the store turns it into ``OrderNotPendingError``."""

    def __init__(self, current: OrderStatus, target: OrderStatus) -> None:
        super().__init__(f"{current} cannot become {target}")
        self.current = current
        self.target = target


def can_transition(current: OrderStatus, target: OrderStatus) -> bool:
    """Whether moving ``current`` to ``target`` changes the order.

    True for PENDING -> PAID and PENDING -> CANCELLED; False for the idempotent repeats
    PAID -> PAID and CANCELLED -> CANCELLED. Any other move raises ``InvalidTransitionError``.
    """
    if target is OrderStatus.PENDING:
        raise InvalidTransitionError(current, target)
    if current is OrderStatus.PENDING:
        return True
    if current is target:
        return False
    raise InvalidTransitionError(current, target)


def price_items(
    lines: Sequence[LineRequest], prices: Mapping[str, Money]
) -> tuple[tuple[OrderItem, ...], Money]:
    """Price each line with ``prices[product_id]``; returns the items and their total.

    All prices must share one currency (``MixedCurrenciesError`` otherwise); a missing price is a
    ``KeyError`` (the caller asked the catalog for every product id first).
    """
    items = tuple(
        OrderItem(line.product_id, line.quantity, prices[line.product_id]) for line in lines
    )
    currencies = sorted({item.unit_price.currency for item in items})
    if len(currencies) > 1:
        raise MixedCurrenciesError(currencies)
    total = Money.zero(currencies[0] if currencies else "USD")
    for item in items:
        total = total + item.subtotal
    return items, total


@dataclass(frozen=True)
class OrderFilter:
    """What SearchOrders matches; every set field must match.

    ``created_after`` is inclusive and ``created_before`` exclusive; ``min_total`` matches orders
    in its currency only; ``text`` matches a substring of the order id, a product id or the
    cancel reason, ignoring case.
    """

    user_id: str = ""
    statuses: frozenset[OrderStatus] = frozenset()
    created_after: datetime | None = None
    created_before: datetime | None = None
    min_total: Money | None = None
    text: str = ""
