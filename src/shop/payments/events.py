"""The domain events payments writes to its outbox (``shop.events.v1.Event``)."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from shop.api.events.v1 import events_pb2
from shop.common import money
from shop.common.ids import new_id
from shop.payments.domain import Payment

SOURCE = "payments"


def payment_event(kind: events_pb2.EventType.ValueType, payment: Payment) -> events_pb2.Event:
    """An event about ``payment`` as it is now (``occurred_at`` is its last update)."""
    occurred_at = timestamp_pb2.Timestamp()
    occurred_at.FromDatetime(payment.updated_at)
    return events_pb2.Event(
        id=new_id(),
        type=kind,
        occurred_at=occurred_at,
        source=SOURCE,
        order_id=payment.order_id,
        user_id=payment.user_id,
        payment_id=payment.id,
        amount=money.to_proto(payment.amount),
        decline_code=payment.decline_code,
        reason=payment.refund_reason,
    )
