"""Payments: domain <-> protobuf conversions."""

from __future__ import annotations

from datetime import datetime

from google.protobuf import timestamp_pb2

from shop.api.payments.v1 import payments_pb2
from shop.common import money
from shop.payments.domain import Payment, PaymentStatus

STATUS_TO_PROTO: dict[PaymentStatus, payments_pb2.PaymentStatus.ValueType] = {
    PaymentStatus.PROCESSING: payments_pb2.PAYMENT_STATUS_PROCESSING,
    PaymentStatus.CAPTURED: payments_pb2.PAYMENT_STATUS_CAPTURED,
    PaymentStatus.DECLINED: payments_pb2.PAYMENT_STATUS_DECLINED,
    PaymentStatus.REFUNDED: payments_pb2.PAYMENT_STATUS_REFUNDED,
}


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def payment_to_proto(payment: Payment) -> payments_pb2.Payment:
    return payments_pb2.Payment(
        id=payment.id,
        order_id=payment.order_id,
        amount=money.to_proto(payment.amount),
        status=STATUS_TO_PROTO[payment.status],
        card_last4=payment.card_last4,
        decline_code=payment.decline_code,
        created_at=timestamp(payment.created_at),
        updated_at=timestamp(payment.updated_at),
        refund_reason=payment.refund_reason,
        user_id=payment.user_id,
    )
