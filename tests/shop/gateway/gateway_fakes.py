"""An in-memory shop for the saga tests: users, catalog, orders and payments in one object.

``FakePeers`` implements the saga's ``Peers`` protocol (and the reads of GetOrderDetails) with
the peers' documented behaviour: idempotency keys, all-or-nothing reservations, declines. It
records every call in ``calls`` and raises scripted errors from ``fail_before`` (the peer did
nothing) or ``fail_after`` (the peer acted, the answer was lost).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import grpc
from google.rpc import error_details_pb2

from grpckit.errors import StatusError, failed_precondition, not_found
from shop.api.orders.v1 import orders_pb2
from shop.api.payments.v1 import payments_pb2
from shop.api.users.v1 import users_pb2
from shop.common.ids import new_id
from shop.common.money import Money, to_proto
from shop.gateway.compensation import RetryPolicy
from shop.gateway.domain import Card, LineItem, OrderRequest
from shop.gateway.saga import OrderSaga, SagaConfig
from shop.gateway.store import SagaStore

DECLINED_CARD = "4000000000000002"
GOOD_CARD = "4242424242424242"
PRICE = 1250


def unavailable(message: str = "peer down") -> StatusError:
    return StatusError(grpc.StatusCode.UNAVAILABLE, message)


@dataclass
class FakePeers:
    """The four peers in memory. ``calls`` lists ``(method, *args)`` in call order."""

    users: dict[str, str] = field(default_factory=dict)  # user_id -> "" | reason
    stock: dict[str, int] = field(default_factory=dict)
    orders: dict[str, orders_pb2.Order] = field(default_factory=dict)
    order_keys: dict[str, str] = field(default_factory=dict)
    reservations: dict[str, list[LineItem]] = field(default_factory=dict)
    payments: dict[str, payments_pb2.Payment] = field(default_factory=dict)
    payment_keys: dict[str, str] = field(default_factory=dict)
    calls: list[tuple[str, ...]] = field(default_factory=list)
    fail_before: dict[str, list[StatusError]] = field(default_factory=lambda: defaultdict(list))
    fail_after: dict[str, list[StatusError]] = field(default_factory=lambda: defaultdict(list))
    gate: asyncio.Event | None = None  # when set, create_order waits for it
    create_entered: asyncio.Event = field(default_factory=asyncio.Event)

    # -- test helpers ---------------------------------------------------------------------

    def add_user(self, reason: str = "") -> str:
        user_id = new_id()
        self.users[user_id] = reason
        return user_id

    def add_product(self, stock: int = 10) -> str:
        product_id = new_id()
        self.stock[product_id] = stock
        return product_id

    def names(self) -> list[str]:
        return [call[0] for call in self.calls]

    def captured(self) -> list[payments_pb2.Payment]:
        return [
            p for p in self.payments.values() if p.status == payments_pb2.PAYMENT_STATUS_CAPTURED
        ]

    def _enter(self, method: str, *args: str) -> None:
        self.calls.append((method, *args))
        if self.fail_before[method]:
            raise self.fail_before[method].pop(0)

    def _leave(self, method: str) -> None:
        if self.fail_after[method]:
            raise self.fail_after[method].pop(0)

    # -- Peers ----------------------------------------------------------------------------

    async def validate_user(self, user_id: str) -> str:
        self._enter("validate_user", user_id)
        return self.users.get(user_id, "USER_NOT_FOUND")

    async def get_user(self, user_id: str) -> users_pb2.User:
        self._enter("get_user", user_id)
        if user_id not in self.users:
            raise not_found("no such user", resource_type="user", reason="USER_NOT_FOUND")
        return users_pb2.User(id=user_id, email="u@example.com", active=not self.users[user_id])

    async def create_order(
        self, user_id: str, items: Sequence[LineItem], idempotency_key: str
    ) -> orders_pb2.Order:
        self._enter("create_order", user_id, idempotency_key)
        self.create_entered.set()
        if self.gate is not None:
            await self.gate.wait()
        key = f"{user_id}/{idempotency_key}"
        if key not in self.order_keys:
            total = sum(PRICE * i.quantity for i in items)
            order = orders_pb2.Order(
                id=new_id(),
                user_id=user_id,
                items=[
                    orders_pb2.OrderItem(
                        product_id=i.product_id,
                        quantity=i.quantity,
                        unit_price=to_proto(Money(PRICE)),
                    )
                    for i in items
                ],
                total=to_proto(Money(total)),
                status=orders_pb2.ORDER_STATUS_PENDING,
            )
            self.orders[order.id] = order
            self.order_keys[key] = order.id
        self._leave("create_order")
        return self.orders[self.order_keys[key]]

    async def get_order(self, order_id: str) -> orders_pb2.Order:
        self._enter("get_order", order_id)
        if order_id not in self.orders:
            raise not_found("no such order", resource_type="order", resource_name=order_id)
        return self.orders[order_id]

    async def reserve_stock(self, order_id: str, items: Sequence[LineItem]) -> None:
        self._enter("reserve_stock", order_id)
        if order_id not in self.reservations:
            for item in items:
                if self.stock.get(item.product_id, 0) < item.quantity:
                    resource = error_details_pb2.ResourceInfo(
                        resource_type="product", resource_name=item.product_id
                    )
                    raise failed_precondition(
                        "out of stock", reason="OUT_OF_STOCK", domain="shop", details=[resource]
                    )
            for item in items:
                self.stock[item.product_id] -= item.quantity
            self.reservations[order_id] = list(items)
        self._leave("reserve_stock")

    async def release_stock(self, order_id: str) -> None:
        self._enter("release_stock", order_id)
        for item in self.reservations.pop(order_id, []):
            self.stock[item.product_id] += item.quantity
        self._leave("release_stock")

    async def process_payment(
        self, order_id: str, amount: Money, card: Card, idempotency_key: str, *, user_id: str = ""
    ) -> payments_pb2.Payment:
        self._enter("process_payment", order_id, idempotency_key)
        if idempotency_key not in self.payment_keys:
            declined = card.number == DECLINED_CARD
            payment = payments_pb2.Payment(
                id=new_id(),
                order_id=order_id,
                user_id=user_id,
                amount=to_proto(amount),
                card_last4=card.number[-4:],
                status=payments_pb2.PAYMENT_STATUS_DECLINED
                if declined
                else payments_pb2.PAYMENT_STATUS_CAPTURED,
                decline_code="card_declined" if declined else "",
            )
            payment.created_at.FromSeconds(1_700_000_000 + len(self.payments))
            self.payments[payment.id] = payment
            self.payment_keys[idempotency_key] = payment.id
        payment = self.payments[self.payment_keys[idempotency_key]]
        if payment.status == payments_pb2.PAYMENT_STATUS_DECLINED:
            raise failed_precondition(
                "the card was declined", reason="PAYMENT_DECLINED", domain="shop",
                metadata={"decline_code": payment.decline_code, "payment_id": payment.id},
            )  # fmt: skip
        self._leave("process_payment")
        return payment

    async def refund_payment(self, payment_id: str, reason: str) -> None:
        self._enter("refund_payment", payment_id, reason)
        payment = self.payments[payment_id]
        if payment.status == payments_pb2.PAYMENT_STATUS_DECLINED:
            raise failed_precondition("declined", reason="PAYMENT_NOT_CAPTURED", domain="shop")
        payment.status = payments_pb2.PAYMENT_STATUS_REFUNDED
        payment.refund_reason = reason
        self._leave("refund_payment")

    async def get_payment(self, payment_id: str) -> payments_pb2.Payment:
        self._enter("get_payment", payment_id)
        if payment_id not in self.payments:
            raise not_found("no such payment", resource_type="payment")
        return self.payments[payment_id]

    async def list_payments(self, order_id: str) -> Sequence[payments_pb2.Payment]:
        self._enter("list_payments", order_id)
        return [p for p in self.payments.values() if p.order_id == order_id]

    async def mark_order_paid(self, order_id: str, payment_id: str) -> orders_pb2.Order:
        self._enter("mark_order_paid", order_id, payment_id)
        order = self.orders[order_id]
        if order.status == orders_pb2.ORDER_STATUS_CANCELLED:
            raise failed_precondition("cancelled", reason="ORDER_NOT_PENDING", domain="shop")
        order.status = orders_pb2.ORDER_STATUS_PAID
        order.payment_id = payment_id
        self._leave("mark_order_paid")
        return order

    async def cancel_order(self, order_id: str, reason: str) -> None:
        self._enter("cancel_order", order_id, reason)
        order = self.orders[order_id]
        if order.status == orders_pb2.ORDER_STATUS_PAID:
            raise failed_precondition("paid", reason="ORDER_NOT_PENDING", domain="shop")
        if order.status != orders_pb2.ORDER_STATUS_CANCELLED:
            order.status = orders_pb2.ORDER_STATUS_CANCELLED
            order.cancel_reason = reason
        self._leave("cancel_order")


START = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)


class Clock:
    """A settable clock; each reading advances by one millisecond (distinct timestamps)."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Killed(BaseException):
    """Stands in for SIGKILL: unwinds the saga task without running its except handlers."""


async def no_sleep(_: float) -> None:
    return None


CONFIG = SagaConfig(
    saga_timeout=30.0,
    step_timeout=2.0,
    poll_interval=0.01,
    retry=RetryPolicy(attempts=3, base_delay=0.0, max_delay=0.0),
)


@dataclass
class World:
    peers: FakePeers
    store: SagaStore
    saga: OrderSaga
    clock: Clock
    user_id: str
    product_id: str

    def request(
        self, *, key: str = "key-1", card: str = GOOD_CARD, quantity: int = 1
    ) -> OrderRequest:
        return OrderRequest(
            user_id=self.user_id,
            items=(LineItem(self.product_id, quantity),),
            card=Card(card, 12, 2031, "123"),
            idempotency_key=key,
        )

    def restarted(self, **config: object) -> OrderSaga:
        """A new orchestrator on the same journal and peers (a new process)."""
        return OrderSaga(
            self.store, self.peers, replace(CONFIG, **config),  # type: ignore[arg-type]
            clock=self.clock, sleep=no_sleep,
        )  # fmt: skip
