"""PaymentService over a real grpc.aio server, backed by SQLite and the simulated provider."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.rpc import error_details_pb2

from grpckit import App, ServerConfig, StatusError
from grpckit.interceptors import recovery
from grpckit.testing import Service, serve_in_process
from shop.api.payments.v1 import payments_pb2, payments_pb2_grpc
from shop.common import money
from shop.common.db import Database
from shop.common.ids import new_id
from shop.common.money import Money
from shop.payments.main import SERVICE
from shop.payments.processor import PaymentProcessor
from shop.payments.provider import SimulatedProvider
from shop.payments.service import PaymentServicer
from shop.payments.store import MIGRATIONS, PaymentsStore, payments

ORDER = "6a1f0c4e-2b7d-4e8a-9c3f-5d2e1b0a9f87"
APPROVE = "4242424242424242"
TODAY = date(2024, 5, 15)
AMOUNT = Money(4999)


@dataclass
class Harness:
    stub: payments_pb2_grpc.PaymentServiceAsyncStub
    provider: SimulatedProvider
    db: Database


@pytest.fixture
def provider() -> SimulatedProvider:
    return SimulatedProvider()


@pytest.fixture
async def service(tmp_path: Path, provider: SimulatedProvider) -> AsyncIterator[Harness]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'payments.db'}", schema="payments")
    await db.migrate(MIGRATIONS)
    store = PaymentsStore(db)
    processor = PaymentProcessor(store, provider, poll_interval=0.001)
    servicer = PaymentServicer(store, processor, today=lambda: TODAY)
    app = App(ServerConfig(grace_period=1.0), interceptors=[recovery()])
    added = Service(payments_pb2_grpc.add_PaymentServiceServicer_to_server, servicer, SERVICE)
    try:
        async with serve_in_process(added, app=app) as server:
            stub = payments_pb2_grpc.PaymentServiceStub(server.channel)
            yield Harness(stub, provider, db)  # type: ignore[arg-type]
    finally:
        await db.close()


def request(
    card: str = APPROVE, key: str = "key-1", amount: Money = AMOUNT, **method: Any
) -> payments_pb2.ProcessPaymentRequest:
    fields = {"card_number": card, "exp_month": 12, "exp_year": 2030, "cvc": "123", **method}
    return payments_pb2.ProcessPaymentRequest(
        order_id=ORDER,
        amount=money.to_proto(amount),
        method=payments_pb2.PaymentMethod(**fields),
        idempotency_key=key,
    )


async def rpc_error(call: Any) -> StatusError:
    with pytest.raises(grpc.RpcError) as caught:
        await call
    return StatusError.from_rpc_error(caught.value)


async def test_approved_payment_is_captured(service: Harness) -> None:
    payment = (await service.stub.ProcessPayment(request())).payment
    assert payment.status == payments_pb2.PAYMENT_STATUS_CAPTURED
    assert (payment.order_id, payment.card_last4) == (ORDER, "4242")
    assert money.from_proto(payment.amount) == Money(4999)
    got = await service.stub.GetPayment(payments_pb2.GetPaymentRequest(payment_id=payment.id))
    assert got.payment == payment


async def test_only_the_last_four_digits_are_stored(service: Harness) -> None:
    await service.stub.ProcessPayment(request(cvc="987"))
    async with service.db.read() as session:
        rows = (await session.execute(sa.select(payments))).mappings().all()
    values = [str(v) for row in rows for v in row.values()]
    assert "4242" in values  # the last four, as a column of their own
    assert not any(APPROVE in v for v in values)
    # the cvc is stored nowhere: no column for it, no value equal to it (a substring check
    # would trip over random ids that happen to contain "987")
    assert not any("cvc" in column for column in rows[0])
    assert "987" not in values


async def test_every_violation_is_reported(service: Harness) -> None:
    bad = payments_pb2.ProcessPaymentRequest(
        order_id="x",
        method=payments_pb2.PaymentMethod(
            card_number="4242424242424241", exp_month=13, exp_year=2030, cvc="12"
        ),
    )
    err = await rpc_error(service.stub.ProcessPayment(bad))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in err.field_violations] == [
        "order_id",
        "amount",
        "method.card_number",
        "method.exp_month",
        "method.cvc",
        "idempotency_key",
    ]
    assert "Luhn" in dict(err.field_violations)["method.card_number"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"exp_month": 4, "exp_year": 2024}, "method.exp_year"),
        ({"exp_year": 2023}, "method.exp_year"),
        ({"card": "4242-4242-4242-4242"}, "method.card_number"),
        ({"card": "42424242424"}, "method.card_number"),
        ({"amount": Money(0)}, "amount"),
        ({"amount": Money(-5)}, "amount"),
        ({"key": "k" * 201}, "idempotency_key"),
    ],
)
async def test_single_violations(service: Harness, overrides: dict[str, Any], field: str) -> None:
    err = await rpc_error(service.stub.ProcessPayment(request(**overrides)))
    assert [f for f, _ in err.field_violations] == [field]
    assert service.provider.charges_made == 0


async def test_current_month_is_not_expired(service: Harness) -> None:
    payment = (await service.stub.ProcessPayment(request(exp_month=5, exp_year=2024))).payment
    assert payment.status == payments_pb2.PAYMENT_STATUS_CAPTURED


@pytest.mark.parametrize(
    ("card", "code"),
    [("4000000000000002", "card_declined"), ("4000000000009995", "insufficient_funds")],
)
async def test_declined_payment(service: Harness, card: str, code: str) -> None:
    err = await rpc_error(service.stub.ProcessPayment(request(card)))
    assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PAYMENT_DECLINED")
    assert err.error_info is not None
    assert err.error_info.domain == "shop"
    assert err.error_info.metadata["decline_code"] == code
    payment_id = err.error_info.metadata["payment_id"]
    again = await rpc_error(service.stub.ProcessPayment(request(card)))
    assert again.error_info is not None and again.error_info.metadata["payment_id"] == payment_id
    stored = await service.stub.GetPayment(payments_pb2.GetPaymentRequest(payment_id=payment_id))
    assert (stored.payment.status, stored.payment.decline_code) == (
        payments_pb2.PAYMENT_STATUS_DECLINED,
        code,
    )
    assert service.provider.charges_made == 1


async def test_eight_concurrent_calls_make_one_payment(service: Harness) -> None:
    replies = await asyncio.gather(*(service.stub.ProcessPayment(request()) for _ in range(8)))
    assert len({r.payment.id for r in replies}) == 1
    assert service.provider.charges_made == 1


@pytest.mark.parametrize("provider", [SimulatedProvider(failure_rate=1.0)])
async def test_provider_unavailable_is_retryable(service: Harness) -> None:
    err = await rpc_error(service.stub.ProcessPayment(request()))
    assert (err.code, err.reason) == (grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE")
    assert err.detail(error_details_pb2.RetryInfo) is not None


async def test_refund(service: Harness) -> None:
    payment = (await service.stub.ProcessPayment(request())).payment
    refund = payments_pb2.RefundPaymentRequest(payment_id=payment.id, reason="returned")
    refunded = (await service.stub.RefundPayment(refund)).payment
    assert (refunded.status, refunded.refund_reason) == (
        payments_pb2.PAYMENT_STATUS_REFUNDED,
        "returned",
    )
    assert (await service.stub.RefundPayment(refund)).payment == refunded
    assert service.provider.refunds_made == 1


async def test_refund_errors(service: Harness) -> None:
    err = await rpc_error(service.stub.ProcessPayment(request("4000000000000002")))
    assert err.error_info is not None
    declined = err.error_info.metadata["payment_id"]
    refund = payments_pb2.RefundPaymentRequest(payment_id=declined)
    err = await rpc_error(service.stub.RefundPayment(refund))
    assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PAYMENT_NOT_CAPTURED")
    err = await rpc_error(
        service.stub.RefundPayment(payments_pb2.RefundPaymentRequest(payment_id=new_id()))
    )
    assert (err.code, err.reason) == (grpc.StatusCode.NOT_FOUND, "PAYMENT_NOT_FOUND")
    err = await rpc_error(service.stub.RefundPayment(payments_pb2.RefundPaymentRequest()))
    assert [f for f, _ in err.field_violations] == ["payment_id"]


async def test_get_payment_errors(service: Harness) -> None:
    err = await rpc_error(service.stub.GetPayment(payments_pb2.GetPaymentRequest(payment_id="1")))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    unknown = payments_pb2.GetPaymentRequest(payment_id=new_id())
    err = await rpc_error(service.stub.GetPayment(unknown))
    assert err.reason == "PAYMENT_NOT_FOUND"


async def test_list_payments_oldest_first(service: Harness) -> None:
    made = [(await service.stub.ProcessPayment(request(key=f"k{i}"))).payment for i in range(3)]
    other = request(key="other")
    other.order_id = new_id()
    await service.stub.ProcessPayment(other)
    page = await service.stub.ListPayments(
        payments_pb2.ListPaymentsRequest(order_id=ORDER, page_size=2)
    )
    rest = await service.stub.ListPayments(
        payments_pb2.ListPaymentsRequest(
            order_id=ORDER, page_size=2, page_token=page.next_page_token
        )
    )
    assert [p.id for p in [*page.payments, *rest.payments]] == [p.id for p in made]
    assert rest.next_page_token == ""
    everything = await service.stub.ListPayments(payments_pb2.ListPaymentsRequest())
    assert len(everything.payments) == 4
    err = await rpc_error(
        service.stub.ListPayments(payments_pb2.ListPaymentsRequest(order_id="nope", page_size=-1))
    )
    assert [f for f, _ in err.field_violations] == ["order_id", "page_size"]
