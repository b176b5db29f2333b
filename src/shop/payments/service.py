"""``shop.payments.v1.PaymentService`` on grpc.aio: validate, convert, process, map errors."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import grpc

from grpckit.auth import caller_may_access
from shop.api.payments.v1 import payments_pb2, payments_pb2_grpc
from shop.payments import validation
from shop.payments.convert import payment_to_proto
from shop.payments.domain import Payment, PaymentNotFoundError
from shop.payments.errors import status_errors
from shop.payments.processor import PaymentProcessor
from shop.payments.store import PaymentsStore

Context = grpc.aio.ServicerContext[Any, Any]


def _today() -> date:
    return datetime.now(UTC).date()


def _visible(payment: Payment) -> Payment:
    """``payment`` if the caller may see it (its owner, an admin, a service), else as unknown.

    A payment without ``user_id`` is for admins and services only. Without an authenticated
    principal (no authentication interceptor, as in-process) it may be seen.
    """
    if not caller_may_access(payment.user_id):
        raise PaymentNotFoundError(payment.id)
    return payment


class PaymentServicer(payments_pb2_grpc.PaymentServiceServicer):
    """The PaymentService. Card numbers and CVCs are never stored or logged.

    GetPayment shows a customer their own payments only: another's is NOT_FOUND, exactly as an
    unknown id (its existence is not revealed).
    """

    def __init__(
        self,
        store: PaymentsStore,
        processor: PaymentProcessor,
        *,
        today: Callable[[], date] = _today,
    ) -> None:
        self._store = store
        self._processor = processor
        self._today = today

    async def ProcessPayment(
        self, request: payments_pb2.ProcessPaymentRequest, context: Context
    ) -> payments_pb2.ProcessPaymentResponse:
        order_id, amount, card, key, user_id = validation.process_payment(request, self._today())
        with status_errors():
            payment = await self._processor.process(order_id, amount, card, key, user_id=user_id)
        return payments_pb2.ProcessPaymentResponse(payment=payment_to_proto(payment))

    async def RefundPayment(
        self, request: payments_pb2.RefundPaymentRequest, context: Context
    ) -> payments_pb2.RefundPaymentResponse:
        payment_id, reason = validation.refund_payment(request)
        with status_errors():
            payment = await self._processor.refund(payment_id, reason)
        return payments_pb2.RefundPaymentResponse(payment=payment_to_proto(payment))

    async def GetPayment(
        self, request: payments_pb2.GetPaymentRequest, context: Context
    ) -> payments_pb2.GetPaymentResponse:
        payment_id = validation.payment_id(request.payment_id)
        with status_errors():
            payment = _visible(await self._store.get(payment_id))
        return payments_pb2.GetPaymentResponse(payment=payment_to_proto(payment))

    async def ListPayments(
        self, request: payments_pb2.ListPaymentsRequest, context: Context
    ) -> payments_pb2.ListPaymentsResponse:
        order_id, page = validation.list_payments(request)
        found = await self._store.list(order_id, offset=page.offset, limit=page.size + 1)
        shown = found[: page.size]
        return payments_pb2.ListPaymentsResponse(
            payments=[payment_to_proto(payment) for payment in shown],
            next_page_token=page.next_token(len(shown), len(found) > page.size),
        )
