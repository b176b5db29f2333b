"""Composition root of the catalog service: ``mount(app, ctx)`` is all the CLI calls."""

from __future__ import annotations

from grpckit import App
from shop.api.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shop.catalog.cache import ProductCache
from shop.catalog.demo import seed_if_empty
from shop.catalog.service import CatalogServicer, utc_now
from shop.catalog.store import MIGRATIONS, CatalogStore
from shop.common.runtime import ServiceContext, Settings

SERVICE = catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"]


async def mount(app: App, ctx: ServiceContext) -> None:
    """Migrate the catalog database, seed demo products if asked, register CatalogService.

    The database belongs to ``ctx``, which closes it when the process stops. Product reads go
    through a :class:`ProductCache`, shared with the other replicas through Redis when
    ``settings.redis_url`` is set; the App starts and closes it.
    """
    db = ctx.database("catalog")
    await db.migrate(MIGRATIONS)
    store = CatalogStore(db)
    if ctx.settings.demo:
        added = await seed_if_empty(store, utc_now())
        if added:
            ctx.logger.info("catalog.demo_seeded", products=added)
    cache = product_cache(ctx.settings)
    app.on_start(cache.start)
    app.on_stop(cache.close)
    servicer = CatalogServicer(store, cache=cache)
    app.add_service(catalog_pb2_grpc.add_CatalogServiceServicer_to_server, servicer, SERVICE)
    app.add_health_check(SERVICE.full_name, db.ping)


def product_cache(settings: Settings) -> ProductCache:
    """The catalog's cache: in-process, over Redis when ``settings.redis_url`` is set.

    Example: ``product_cache(Settings(redis_url="redis://127.0.0.1:6379/0"))``
    """
    if not settings.redis_url:
        return ProductCache()
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    # one immediate retry (a pooled connection Redis closed), not redis-py's seconds of backoff:
    # a read waits at most ~1 s for an unreachable Redis, then the cache rests it
    client = Redis.from_url(
        settings.redis_url,
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
        retry=Retry(NoBackoff(), 1),
    )
    return ProductCache(client)
