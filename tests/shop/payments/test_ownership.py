"""Payments record the customer (``user_id``) and GetPayment shows a customer their own only.

Another customer's payment is NOT_FOUND exactly as an unknown id, and carries none of its data.
A payment without ``user_id`` (made before it was recorded) is for admins and services only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from grpckit import App, ServerConfig, StatusError
from grpckit.interceptors import recovery
from grpckit.testing import Service, serve_in_process
from shop.api.events.v1 import events_pb2
from shop.api.payments.v1 import payments_pb2, payments_pb2_grpc
from shop.common import money
from shop.common.db import Database
from shop.common.ids import new_id
from shop.common.money import Money
from shop.payments.main import SERVICE
from shop.payments.processor import PaymentProcessor
from shop.payments.provider import ChargeResult, SimulatedProvider
from shop.payments.service import PaymentServicer
from shop.payments.store import MIGRATIONS, PaymentsStore
from tests.shop.orders.fake_auth import HeaderAuth, caller

ReadEvents = Callable[[], Awaitable[list[events_pb2.Event]]]
OWNER = new_id()
OTHER = new_id()
ORDER = new_id()
AS_SERVICE = caller(roles=("service",))
AS_ADMIN = caller(OTHER, roles=("admin",))
ALLOWED = {
    "owner": caller(OWNER, roles=("customer",)),
    "admin": AS_ADMIN,
    "service": AS_SERVICE,
}
REFUSED = {
    "another customer": caller(OTHER, roles=("customer",)),
    "anonymous": caller(),
}


@dataclass
class Harness:
    stub: payments_pb2_grpc.PaymentServiceAsyncStub

    async def pay(self, key: str, user_id: str = OWNER) -> payments_pb2.Payment:
        method = payments_pb2.PaymentMethod(
            card_number="4242424242424242", exp_month=12, exp_year=2030, cvc="123"
        )
        request = payments_pb2.ProcessPaymentRequest(
            order_id=ORDER,
            amount=money.to_proto(Money(2500)),
            method=method,
            idempotency_key=key,
            user_id=user_id,
        )
        return (await self.stub.ProcessPayment(request, metadata=AS_SERVICE)).payment

    async def get(self, payment_id: str, metadata: Any) -> payments_pb2.Payment:
        request = payments_pb2.GetPaymentRequest(payment_id=payment_id)
        return (await self.stub.GetPayment(request, metadata=metadata)).payment


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Harness]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'payments.db'}", schema="payments")
    await db.migrate(MIGRATIONS)
    store = PaymentsStore(db)
    processor = PaymentProcessor(store, SimulatedProvider(), poll_interval=0.001)
    servicer = PaymentServicer(store, processor, today=lambda: date(2024, 5, 15))
    app = App(ServerConfig(grace_period=1.0), interceptors=[recovery(), HeaderAuth()])
    added = Service(payments_pb2_grpc.add_PaymentServiceServicer_to_server, servicer, SERVICE)
    try:
        async with serve_in_process(added, app=app) as server:
            yield Harness(payments_pb2_grpc.PaymentServiceStub(server.channel))
    finally:
        await db.close()


async def rpc_error(call: Any) -> StatusError:
    with pytest.raises(grpc.RpcError) as caught:
        await call
    return StatusError.from_rpc_error(caught.value)


def as_unknown(error: StatusError, payment_id: str) -> bytes:
    """The error's wire form with the asked id blanked (to compare with an unknown id's)."""
    return bytes(error.to_proto().SerializeToString()).replace(payment_id.encode(), b"<id>")


async def test_user_id_is_stored_and_returned_everywhere(service: Harness) -> None:
    payment = await service.pay("key-1")
    assert payment.user_id == OWNER
    assert (await service.get(payment.id, ALLOWED["owner"])).user_id == OWNER
    listing = await service.stub.ListPayments(
        payments_pb2.ListPaymentsRequest(order_id=ORDER), metadata=AS_ADMIN
    )
    assert [p.user_id for p in listing.payments] == [OWNER]
    refund = payments_pb2.RefundPaymentRequest(payment_id=payment.id, reason="returned")
    refunded = (await service.stub.RefundPayment(refund, metadata=AS_ADMIN)).payment
    assert (refunded.status, refunded.user_id) == (payments_pb2.PAYMENT_STATUS_REFUNDED, OWNER)


async def test_user_id_must_be_a_uuid(service: Harness) -> None:
    error = await rpc_error(service.pay("key-1", user_id="u-1"))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.field_violations == [("user_id", "user_id must be a UUID")]


@pytest.mark.parametrize("who", ALLOWED)
async def test_the_owner_admins_and_services_get_the_payment(service: Harness, who: str) -> None:
    payment = await service.pay("key-1")
    assert await service.get(payment.id, ALLOWED[who]) == payment


@pytest.mark.parametrize("who", REFUSED)
async def test_anyone_else_gets_not_found_as_for_an_unknown_id(service: Harness, who: str) -> None:
    payment = await service.pay("key-1")
    refused = await rpc_error(service.get(payment.id, REFUSED[who]))
    unknown_id = new_id()
    unknown = await rpc_error(service.get(unknown_id, ALLOWED["owner"]))
    assert (refused.code, refused.reason) == (grpc.StatusCode.NOT_FOUND, "PAYMENT_NOT_FOUND")
    assert as_unknown(refused, payment.id) == as_unknown(unknown, unknown_id)
    wire = refused.to_proto().SerializeToString()
    assert OWNER.encode() not in wire and ORDER.encode() not in wire


@pytest.mark.parametrize(
    ("metadata", "visible"),
    [
        (caller(OWNER, roles=("customer",)), False),
        (caller(OTHER, roles=("customer",)), False),
        (AS_ADMIN, True),
        (AS_SERVICE, True),
    ],
    ids=["the customer", "another customer", "admin", "service"],
)
async def test_a_payment_without_user_id_is_for_admins_and_services(
    service: Harness, metadata: Any, visible: bool
) -> None:
    payment = await service.pay("key-1", user_id="")
    assert payment.user_id == ""
    if visible:
        assert await service.get(payment.id, metadata) == payment
    else:
        refused = await rpc_error(service.get(payment.id, metadata))
        assert (refused.code, refused.reason) == (grpc.StatusCode.NOT_FOUND, "PAYMENT_NOT_FOUND")


async def test_events_carry_the_user_id(store: PaymentsStore, outbox_events: ReadEvents) -> None:
    payment, _ = await store.claim("key", ORDER, Money(2500), "4242", user_id=OWNER)
    await store.settle(payment.id, ChargeResult(True, "ch_1"))
    [event] = await outbox_events()
    assert (event.type, event.user_id) == (events_pb2.EVENT_TYPE_PAYMENT_CAPTURED, OWNER)


async def test_migration_2_adds_user_id_to_an_older_database(database: Database) -> None:
    assert await database.migrate(MIGRATIONS[:1]) == 1
    store = PaymentsStore(database)
    old, _ = await store.claim("old", ORDER, Money(2500), "4242")
    async with database.transaction() as session:  # back to the schema of migration 1
        await session.execute(sa.text("ALTER TABLE payments DROP COLUMN user_id"))
    assert await database.migrate(MIGRATIONS) == 2
    assert (await store.get(old.id)).user_id == ""
    new, _ = await store.claim("new", ORDER, Money(2500), "4242", user_id=OWNER)
    assert (await store.get(new.id)).user_id == OWNER
    assert await database.migrate(MIGRATIONS) == 2  # idempotent
