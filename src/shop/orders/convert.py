"""Orders: domain <-> protobuf conversions (the only place that knows both shapes)."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from shop.api.orders.v1 import orders_pb2
from shop.common import money
from shop.orders.domain import Order, OrderStatus

STATUS_TO_PROTO: dict[OrderStatus, orders_pb2.OrderStatus.ValueType] = {
    OrderStatus.PENDING: orders_pb2.ORDER_STATUS_PENDING,
    OrderStatus.PAID: orders_pb2.ORDER_STATUS_PAID,
    OrderStatus.CANCELLED: orders_pb2.ORDER_STATUS_CANCELLED,
}
STATUS_FROM_PROTO = {value: status for status, value in STATUS_TO_PROTO.items()}


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def from_timestamp(stamp: timestamp_pb2.Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def order_to_proto(order: Order) -> orders_pb2.Order:
    return orders_pb2.Order(
        id=order.id,
        user_id=order.user_id,
        items=[
            orders_pb2.OrderItem(
                product_id=item.product_id,
                quantity=item.quantity,
                unit_price=money.to_proto(item.unit_price),
            )
            for item in order.items
        ],
        total=money.to_proto(order.total),
        status=STATUS_TO_PROTO[order.status],
        cancel_reason=order.cancel_reason,
        created_at=timestamp(order.created_at),
        updated_at=timestamp(order.updated_at),
        payment_id=order.payment_id,
    )
