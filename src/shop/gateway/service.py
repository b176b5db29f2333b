"""The GatewayService servicer: validates, runs the saga, joins order details.

Domain errors become status errors in :func:`to_status_error`, the one place for that mapping.
GetOrderDetails shows a customer their own orders only: another's is NOT_FOUND exactly as the
orders service reports an unknown id, and nothing else about it is fetched.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any, Protocol, TypeVar

import grpc

from grpckit.auth import caller_may_access
from grpckit.errors import StatusError, invalid_argument, not_found
from shop.api.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from shop.api.orders.v1 import orders_pb2
from shop.api.payments.v1 import payments_pb2
from shop.api.users.v1 import users_pb2
from shop.common.ids import is_id
from shop.gateway.domain import IdempotencyKeyReusedError, SagaInProgressError
from shop.gateway.errors import DOMAIN, dependency_unavailable, to_status_error
from shop.gateway.saga import OrderSaga
from shop.gateway.validation import parse_process_order

T = TypeVar("T")


class DetailsPeers(Protocol):
    """The reads GetOrderDetails makes."""

    async def get_order(self, order_id: str) -> orders_pb2.Order: ...

    async def get_payment(self, payment_id: str) -> payments_pb2.Payment: ...

    async def list_payments(self, order_id: str) -> Sequence[payments_pb2.Payment]: ...

    async def get_user(self, user_id: str) -> users_pb2.User: ...


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    """GatewayService over an :class:`OrderSaga` and the peers' read RPCs."""

    def __init__(self, saga: OrderSaga, peers: DetailsPeers) -> None:
        self._saga = saga
        self._peers = peers

    async def ProcessOrder(
        self, request: gateway_pb2.ProcessOrderRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gateway_pb2.ProcessOrderResponse:
        order_request = parse_process_order(request)
        try:
            return await self._saga.process(order_request)
        except (IdempotencyKeyReusedError, SagaInProgressError) as exc:
            raise to_status_error(exc) from None

    async def GetOrderDetails(
        self,
        request: gateway_pb2.GetOrderDetailsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> gateway_pb2.GetOrderDetailsResponse:
        if not is_id(request.order_id):
            raise invalid_argument(
                "the order id is invalid", [("order_id", "must be an order id (UUID)")]
            )
        order = _visible(await _read("get_order", self._peers.get_order(request.order_id)))
        response = gateway_pb2.GetOrderDetailsResponse(order=order)
        payment = await self._payment(order)
        if payment is not None:
            response.payment.CopyFrom(payment)
        user = await _read_optional("get_user", self._peers.get_user(order.user_id))
        if user is not None:
            response.user.CopyFrom(user)
        return response

    async def _payment(self, order: orders_pb2.Order) -> payments_pb2.Payment | None:
        if order.payment_id:
            return await _read_optional("get_payment", self._peers.get_payment(order.payment_id))
        payments = await _read("list_payments", self._peers.list_payments(order.id))
        if not payments:
            return None
        return max(payments, key=lambda p: (p.created_at.seconds, p.created_at.nanos))


def _visible(order: orders_pb2.Order) -> orders_pb2.Order:
    """``order`` if the caller may see it (its owner, an admin, a service), else NOT_FOUND as
    for an unknown id. Without an authenticated principal (no authentication interceptor, as
    in-process) it may."""
    if not caller_may_access(order.user_id):
        raise not_found(
            f"order {order.id} not found",
            resource_type="order",
            resource_name=order.id,
            reason="ORDER_NOT_FOUND",
            domain=DOMAIN,
        )
    return order


async def _read(step: str, call: Awaitable[T]) -> T:
    """A peer read: its errors as-is, except unreachable peers (DEPENDENCY_UNAVAILABLE)."""
    try:
        return await call
    except StatusError as err:
        if err.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise dependency_unavailable(step, err) from None
        raise


async def _read_optional(step: str, call: Awaitable[T]) -> T | None:
    """Like :func:`_read`, but NOT_FOUND means absent."""
    try:
        return await _read(step, call)
    except StatusError as err:
        if err.code is grpc.StatusCode.NOT_FOUND:
            return None
        raise
