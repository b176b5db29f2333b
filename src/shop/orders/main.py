"""Orders' composition root: ``mount(app, ctx)`` is all the CLI calls."""

from __future__ import annotations

import sqlalchemy as sa

from grpckit import App
from shop.api.orders.v1 import orders_pb2, orders_pb2_grpc
from shop.common.runtime import ServiceContext
from shop.orders.catalog_client import catalog_client
from shop.orders.service import OrderServicer
from shop.orders.store import MIGRATIONS, OrdersStore, outbox

SERVICE = orders_pb2.DESCRIPTOR.services_by_name["OrderService"]
#: The table the outbox relay publishes from.
OUTBOX_TABLE: sa.Table = outbox


async def mount(app: App, ctx: ServiceContext) -> None:
    """Open and migrate the orders database, start its outbox relay, serve OrderService."""
    db = ctx.database("orders")
    await db.migrate(MIGRATIONS)
    relay = ctx.start_outbox_relay(db, OUTBOX_TABLE)
    store = OrdersStore(db, on_events=relay.notify)
    servicer = OrderServicer(store, catalog_client(ctx.channel("catalog")))
    app.add_service(orders_pb2_grpc.add_OrderServiceServicer_to_server, servicer, SERVICE)
    app.add_health_check(SERVICE.full_name, db.ping)
