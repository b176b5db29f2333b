"""Payments' composition root: ``mount(app, ctx)`` is all the CLI calls."""

from __future__ import annotations

import sqlalchemy as sa

from grpckit import App
from shop.api.payments.v1 import payments_pb2, payments_pb2_grpc
from shop.common.faults import FaultFile
from shop.common.runtime import ServiceContext
from shop.payments.processor import PaymentProcessor
from shop.payments.provider import SimulatedProvider
from shop.payments.service import PaymentServicer
from shop.payments.store import MIGRATIONS, PaymentsStore, outbox

SERVICE = payments_pb2.DESCRIPTOR.services_by_name["PaymentService"]
#: The table the outbox relay publishes from.
OUTBOX_TABLE: sa.Table = outbox


async def mount(app: App, ctx: ServiceContext) -> None:
    """Open and migrate the payments database, start its outbox relay, serve PaymentService."""
    db = ctx.database("payments")
    await db.migrate(MIGRATIONS)
    relay = ctx.start_outbox_relay(db, OUTBOX_TABLE)
    store = PaymentsStore(db, on_events=relay.notify)
    faults = FaultFile(ctx.settings.fault_file) if ctx.settings.fault_file else None
    provider = SimulatedProvider(
        latency_ms=ctx.settings.payment_latency_ms,
        failure_rate=ctx.settings.payment_failure_rate,
        knobs=faults.get if faults is not None else None,
    )
    servicer = PaymentServicer(store, PaymentProcessor(store, provider))
    app.add_service(payments_pb2_grpc.add_PaymentServiceServicer_to_server, servicer, SERVICE)
    app.add_health_check(SERVICE.full_name, db.ping)
