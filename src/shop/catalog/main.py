"""Composition root of the catalog service: ``mount(app, ctx)`` is all the CLI calls."""

from __future__ import annotations

from grpckit import App
from shop.api.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shop.catalog.demo import seed_if_empty
from shop.catalog.service import CatalogServicer, utc_now
from shop.catalog.store import MIGRATIONS, CatalogStore
from shop.common.runtime import ServiceContext

SERVICE = catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"]


async def mount(app: App, ctx: ServiceContext) -> None:
    """Migrate the catalog database, seed demo products if asked, register CatalogService.

    The database belongs to ``ctx``, which closes it when the process stops.
    """
    db = ctx.database("catalog")
    await db.migrate(MIGRATIONS)
    store = CatalogStore(db)
    if ctx.settings.demo:
        added = await seed_if_empty(store, utc_now())
        if added:
            ctx.logger.info("catalog.demo_seeded", products=added)
    app.add_service(
        catalog_pb2_grpc.add_CatalogServiceServicer_to_server, CatalogServicer(store), SERVICE
    )
    app.add_health_check(SERVICE.full_name, db.ping)
