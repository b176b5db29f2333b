"""The saga's view of its peers: a small protocol of async steps, and its gRPC implementation.

Every method raises :class:`grpckit.errors.StatusError` on failure, so the saga sees one error
type whether it talks to real services or to the in-memory fakes of the tests.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

import grpc

from grpckit.errors import StatusError
from shop.api.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shop.api.common.v1 import common_pb2
from shop.api.orders.v1 import orders_pb2, orders_pb2_grpc
from shop.api.payments.v1 import payments_pb2, payments_pb2_grpc
from shop.api.users.v1 import users_pb2, users_pb2_grpc
from shop.common.money import Money, to_proto
from shop.gateway.domain import Card, LineItem

T = TypeVar("T")


class Peers(Protocol):
    """The calls the saga makes. Each is idempotent on the peer, except ValidateUser (pure)."""

    async def validate_user(self, user_id: str) -> str:
        """Empty when the user may order, else the reason (USER_NOT_FOUND, USER_DISABLED)."""
        ...

    async def create_order(
        self, user_id: str, items: Sequence[LineItem], idempotency_key: str
    ) -> orders_pb2.Order: ...

    async def reserve_stock(self, order_id: str, items: Sequence[LineItem]) -> None: ...

    async def process_payment(
        self, order_id: str, amount: Money, card: Card, idempotency_key: str, *, user_id: str
    ) -> payments_pb2.Payment:
        """Charge ``card``; ``user_id`` (the order's customer) is recorded with the payment."""
        ...

    async def mark_order_paid(self, order_id: str, payment_id: str) -> orders_pb2.Order: ...

    async def cancel_order(self, order_id: str, reason: str) -> None: ...

    async def release_stock(self, order_id: str) -> None: ...

    async def refund_payment(self, payment_id: str, reason: str) -> None: ...

    async def get_payment(self, payment_id: str) -> payments_pb2.Payment: ...

    async def list_payments(self, order_id: str) -> Sequence[payments_pb2.Payment]: ...


async def _call(rpc: Callable[[], Awaitable[T]]) -> T:
    """Await one RPC; a failed call becomes a :class:`StatusError` with its details."""
    try:
        return await rpc()
    except grpc.RpcError as err:
        raise StatusError.from_rpc_error(err) from None


def _items(items: Sequence[LineItem]) -> list[common_pb2.LineItem]:
    return [common_pb2.LineItem(product_id=i.product_id, quantity=i.quantity) for i in items]


class GrpcPeers:
    """:class:`Peers` over gRPC channels, each call with an explicit ``timeout`` (seconds)."""

    def __init__(
        self,
        *,
        users: grpc.aio.Channel,
        catalog: grpc.aio.Channel,
        orders: grpc.aio.Channel,
        payments: grpc.aio.Channel,
        timeout: float = 5.0,
    ) -> None:
        self.users = users_pb2_grpc.UserServiceStub(users)
        self.catalog = catalog_pb2_grpc.CatalogServiceStub(catalog)
        self.orders = orders_pb2_grpc.OrderServiceStub(orders)
        self.payments = payments_pb2_grpc.PaymentServiceStub(payments)
        self.timeout = timeout

    async def validate_user(self, user_id: str) -> str:
        request = users_pb2.ValidateUserRequest(user_id=user_id)
        reply = await _call(lambda: self.users.ValidateUser(request, timeout=self.timeout))
        return "" if reply.valid else (reply.reason or "USER_NOT_FOUND")

    async def get_user(self, user_id: str) -> users_pb2.User:
        request = users_pb2.GetUserRequest(user_id=user_id)
        reply = await _call(lambda: self.users.GetUser(request, timeout=self.timeout))
        return reply.user

    async def create_order(
        self, user_id: str, items: Sequence[LineItem], idempotency_key: str
    ) -> orders_pb2.Order:
        request = orders_pb2.CreateOrderRequest(
            user_id=user_id, items=_items(items), idempotency_key=idempotency_key
        )
        reply = await _call(lambda: self.orders.CreateOrder(request, timeout=self.timeout))
        return reply.order

    async def get_order(self, order_id: str) -> orders_pb2.Order:
        request = orders_pb2.GetOrderRequest(order_id=order_id)
        reply = await _call(lambda: self.orders.GetOrder(request, timeout=self.timeout))
        return reply.order

    async def reserve_stock(self, order_id: str, items: Sequence[LineItem]) -> None:
        request = catalog_pb2.ReserveStockRequest(order_id=order_id, items=_items(items))
        await _call(lambda: self.catalog.ReserveStock(request, timeout=self.timeout))

    async def process_payment(
        self, order_id: str, amount: Money, card: Card, idempotency_key: str, *, user_id: str
    ) -> payments_pb2.Payment:
        method = payments_pb2.PaymentMethod(
            card_number=card.number, exp_month=card.exp_month, exp_year=card.exp_year, cvc=card.cvc
        )
        request = payments_pb2.ProcessPaymentRequest(
            order_id=order_id, amount=to_proto(amount), method=method,
            idempotency_key=idempotency_key, user_id=user_id,
        )  # fmt: skip
        reply = await _call(lambda: self.payments.ProcessPayment(request, timeout=self.timeout))
        return reply.payment

    async def mark_order_paid(self, order_id: str, payment_id: str) -> orders_pb2.Order:
        request = orders_pb2.MarkOrderPaidRequest(order_id=order_id, payment_id=payment_id)
        reply = await _call(lambda: self.orders.MarkOrderPaid(request, timeout=self.timeout))
        return reply.order

    async def cancel_order(self, order_id: str, reason: str) -> None:
        request = orders_pb2.CancelOrderRequest(order_id=order_id, reason=reason)
        await _call(lambda: self.orders.CancelOrder(request, timeout=self.timeout))

    async def release_stock(self, order_id: str) -> None:
        request = catalog_pb2.ReleaseStockRequest(order_id=order_id)
        await _call(lambda: self.catalog.ReleaseStock(request, timeout=self.timeout))

    async def refund_payment(self, payment_id: str, reason: str) -> None:
        request = payments_pb2.RefundPaymentRequest(payment_id=payment_id, reason=reason)
        await _call(lambda: self.payments.RefundPayment(request, timeout=self.timeout))

    async def get_payment(self, payment_id: str) -> payments_pb2.Payment:
        request = payments_pb2.GetPaymentRequest(payment_id=payment_id)
        reply = await _call(lambda: self.payments.GetPayment(request, timeout=self.timeout))
        return reply.payment

    async def list_payments(self, order_id: str) -> Sequence[payments_pb2.Payment]:
        """Every payment of the order (all pages)."""
        payments: list[payments_pb2.Payment] = []
        token = ""
        for _ in range(100):  # bounded: an order has a handful of payment attempts
            request = payments_pb2.ListPaymentsRequest(
                order_id=order_id, page_size=100, page_token=token
            )
            reply = await _call(
                lambda r=request: self.payments.ListPayments(r, timeout=self.timeout)  # type: ignore[misc]
            )
            payments.extend(reply.payments)
            token = reply.next_page_token
            if not token:
                break
        return payments
