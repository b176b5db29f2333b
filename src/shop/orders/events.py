"""The domain events orders writes to its outbox (``shop.events.v1.Event``)."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from shop.api.events.v1 import events_pb2
from shop.common import money
from shop.common.ids import new_id
from shop.orders.domain import Order

SOURCE = "orders"


def order_event(
    kind: events_pb2.EventType.ValueType, order: Order, *, reason: str = ""
) -> events_pb2.Event:
    """An event about ``order`` as it is now (``occurred_at`` is its last update)."""
    occurred_at = timestamp_pb2.Timestamp()
    occurred_at.FromDatetime(order.updated_at)
    return events_pb2.Event(
        id=new_id(),
        type=kind,
        occurred_at=occurred_at,
        source=SOURCE,
        order_id=order.id,
        user_id=order.user_id,
        payment_id=order.payment_id,
        amount=money.to_proto(order.total),
        reason=reason,
        item_count=order.item_count,
    )
