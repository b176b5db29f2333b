"""ProductCache: level 1 on a fake clock, level 2 and invalidation on the Redis at REDIS_URL
(each test under its own key prefix, deleted afterwards), and the servicer reading through it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import pytest
from google.type import money_pb2
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from structlog.testing import capture_logs

from grpckit import App, ServerConfig
from grpckit.testing import Service, serve_in_process
from shop.api.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shop.api.common.v1 import common_pb2
from shop.catalog.cache import CacheConfig, ProductCache
from shop.catalog.main import SERVICE, mount
from shop.catalog.service import CatalogServicer
from shop.catalog.store import MIGRATIONS, CatalogStore
from shop.common.bus import InMemoryEventBus
from shop.common.db import Database
from shop.common.ids import new_id
from shop.common.runtime import ServiceContext, Settings
from tests.conftest import REDIS_URL, redis_keyspace, require_redis

Product = catalog_pb2.Product
P1, P2, P3 = "p-1", "p-2", "p-3"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Source:
    """The database behind a cache: products by id, recording every load."""

    def __init__(self, *products: Product) -> None:
        self.products = {p.id: p for p in products}
        self.loads: list[list[str]] = []

    async def __call__(self, ids: Sequence[str]) -> Mapping[str, Product]:
        self.loads.append(list(ids))
        return {pid: self.products[pid] for pid in ids if pid in self.products}

    def change(self, product_id: str, **fields: object) -> Product:
        product = Product()
        product.CopyFrom(self.products[product_id])
        for name, value in fields.items():
            setattr(product, name, value)
        self.products[product_id] = product
        return product


def product(product_id: str, stock: int = 5) -> Product:
    return Product(id=product_id, sku=f"SKU-{product_id}", name=product_id, stock=stock)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def source() -> Source:
    return Source(product(P1), product(P2), product(P3))


# -- level 1 ---------------------------------------------------------------------------------


async def test_l1_hit_miss_and_ttl(clock: FakeClock, source: Source) -> None:
    cache = ProductCache(config=CacheConfig(local_ttl=5.0), clock=clock)
    assert await cache.get_many([P1, P1], source) == {P1: source.products[P1]}
    assert await cache.get_many([P1], source) == {P1: source.products[P1]}
    clock.advance(4.9)
    await cache.get_many([P1], source)
    assert source.loads == [[P1]]
    clock.advance(0.2)  # expired
    await cache.get_many([P1], source)
    assert source.loads == [[P1], [P1]]
    assert cache.requests == {("l1", "hit"): 2, ("l1", "miss"): 2}


async def test_unknown_ids_are_not_cached(source: Source) -> None:
    cache = ProductCache()
    assert await cache.get_many(["nope", P1], source) == {P1: source.products[P1]}
    assert await cache.get_many(["nope"], source) == {}
    assert source.loads == [["nope", P1], ["nope"]]


async def test_l1_size_bound_drops_the_least_recently_used(source: Source) -> None:
    cache = ProductCache(config=CacheConfig(local_size=2))
    await cache.get_many([P1, P2], source)
    await cache.get_many([P1], source)  # P2 is now the least recently used
    await cache.get_many([P3], source)
    assert len(cache) == 2
    await cache.get_many([P1, P3], source)
    assert source.loads == [[P1, P2], [P3]]
    await cache.get_many([P2], source)
    assert source.loads[-1] == [P2]


async def test_invalidate_drops_l1(source: Source) -> None:
    cache = ProductCache()
    await cache.get_many([P1, P2], source)
    changed = source.change(P1, stock=1)
    await cache.invalidate([P1])
    assert await cache.get_many([P1, P2], source) == {P1: changed, P2: source.products[P2]}
    assert source.loads == [[P1, P2], [P1]]
    await cache.invalidate_all()
    await cache.get_many([P2], source)
    assert source.loads[-1] == [P2]


async def test_a_read_racing_a_write_does_not_cache_the_old_value(source: Source) -> None:
    cache = ProductCache()
    old = source.products[P1]

    async def load_then_write(ids: Sequence[str]) -> Mapping[str, Product]:
        seen = await source(ids)  # the read...
        source.change(P1, stock=0)  # ...then a write commits and invalidates before it returns
        await cache.invalidate([P1])
        return seen

    assert await cache.get_many([P1], load_then_write) == {P1: old}
    assert (await cache.get_many([P1], source))[P1].stock == 0


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="TTL"):
        CacheConfig(local_ttl=0)
    with pytest.raises(ValueError, match="local_size"):
        CacheConfig(local_size=-1)
    with pytest.raises(ValueError, match="decode_responses"):
        ProductCache(Redis(decode_responses=True))


async def test_lookups_are_counted_in_prometheus(source: Source) -> None:
    def sample(level: str, result: str) -> float:
        labels = {"level": level, "result": result}
        return REGISTRY.get_sample_value("shop_catalog_cache_requests_total", labels) or 0.0

    before = sample("l1", "hit"), sample("l1", "miss")
    cache = ProductCache()
    await cache.get_many([P1, P2], source)
    await cache.get_many([P1], source)
    assert (sample("l1", "hit"), sample("l1", "miss")) == (before[0] + 1, before[1] + 2)


# -- level 2: Redis ----------------------------------------------------------------------------


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    async with redis_keyspace("catalog") as value:
        yield value


@pytest.fixture
async def caches(prefix: str) -> AsyncIterator[list[ProductCache]]:
    """Caches as separate replicas would have them (their own Redis clients); closed after."""
    made: list[ProductCache] = []
    yield made
    for cache in made:
        await cache.close()


def replica(
    caches: list[ProductCache],
    prefix: str,
    client: Redis | None = None,
    *,
    clock: FakeClock | None = None,
    on_remote_invalidation: Invalidations | None = None,
) -> ProductCache:
    cache = ProductCache(
        client or Redis.from_url(REDIS_URL),
        config=CacheConfig(prefix=prefix),
        clock=clock or FakeClock(),
        on_remote_invalidation=on_remote_invalidation,
    )
    caches.append(cache)
    return cache


class Invalidations:
    """An ``on_remote_invalidation`` listener that tests can wait on."""

    def __init__(self) -> None:
        self.seen: list[frozenset[str] | None] = []
        self._arrived = asyncio.Condition()

    def __call__(self, ids: frozenset[str] | None) -> None:
        self.seen.append(ids)
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._arrived:
            self._arrived.notify_all()

    async def wait_for(self, count: int) -> None:
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: len(self.seen) >= count), 5.0)


async def test_redis_level_is_shared(
    prefix: str, caches: list[ProductCache], source: Source
) -> None:
    a, b = replica(caches, prefix), replica(caches, prefix)
    await a.get_many([P1, P2], source)
    assert await b.get_many([P1, P2, P3], source) == source.products
    assert source.loads == [[P1, P2], [P3]]
    assert b.requests == {("l1", "miss"): 3, ("l2", "hit"): 2, ("l2", "miss"): 1}


async def test_invalidation_reaches_other_replicas(
    prefix: str, caches: list[ProductCache], source: Source
) -> None:
    heard = Invalidations()
    a, b = replica(caches, prefix), replica(caches, prefix, on_remote_invalidation=heard)
    await a.start()
    await b.start()
    await b.get_many([P1, P2], source)  # in b's level 1 and in Redis
    changed = source.change(P1, stock=0)
    await a.invalidate([P1])
    await heard.wait_for(1)
    assert heard.seen == [frozenset({P1})]
    assert await b.get_many([P1, P2], source) == {P1: changed, P2: source.products[P2]}
    assert source.loads == [[P1, P2], [P1]]  # P1 gone from both levels, P2 still cached

    renamed = source.change(P2, name="renamed")
    await a.invalidate_all()
    await heard.wait_for(2)
    assert heard.seen[1] is None
    assert (await b.get_many([P2], source))[P2] == renamed  # the epoch moved: Redis missed


async def test_a_read_racing_a_write_on_another_replica_does_not_fill_redis(
    prefix: str, caches: list[ProductCache], source: Source
) -> None:
    reader, writer, later = (replica(caches, prefix) for _ in range(3))

    async def load_then_write(ids: Sequence[str]) -> Mapping[str, Product]:
        seen = await source(ids)
        source.change(P1, stock=0)
        await writer.invalidate([P1])  # Redis had nothing to delete yet
        return seen

    assert (await reader.get_many([P1], load_then_write))[P1].stock == 5
    assert (await later.get_many([P1], source))[P1].stock == 0
    assert later.requests["l2", "miss"] == 1


async def test_redis_down_falls_back_to_l1(clock: FakeClock, source: Source) -> None:
    client = Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    cache = ProductCache(client, clock=clock)
    try:
        with capture_logs() as logs:
            await cache.start()  # returns although it cannot subscribe
            assert await cache.get_many([P1], source) == {P1: source.products[P1]}
            assert await cache.get_many([P1], source) == {P1: source.products[P1]}
            await cache.invalidate([P1])
            await cache.invalidate_all()
            clock.advance(6.0)  # Redis is tried again: still down
            await cache.get_many([P1, P2], source)
    finally:
        await cache.close()
    assert source.loads == [[P1], [P1, P2]]
    assert [entry["event"] for entry in logs] == ["catalog.cache.redis_unavailable"]
    assert cache.requests["l2", "hit"] == cache.requests["l2", "miss"] == 0


class Outage:
    """A TCP proxy to Redis that can drop every connection and refuse new ones."""

    def __init__(self) -> None:
        self.down = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.close()
            return
        host, port = REDIS_URL.removeprefix("redis://").split("/")[0].split(":")
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        self._writers |= {writer, up_writer}
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    def cut(self) -> None:
        self.down = True
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def test_invalidations_lost_in_an_outage_are_made_good(
    prefix: str, caches: list[ProductCache], clock: FakeClock, source: Source
) -> None:
    outage = Outage()
    port = await outage.start()
    try:
        client = Redis(port=port, socket_timeout=0.5, retry=Retry(NoBackoff(), 0))
        writer = replica(caches, prefix, client, clock=clock)
        await writer.get_many([P1], source)  # P1 in Redis
        outage.cut()
        source.change(P1, stock=0)
        await writer.invalidate([P1])  # cannot reach Redis
        assert (await replica(caches, prefix).get_many([P1], source))[P1].stock == 5  # stale
        outage.down = False
        clock.advance(6.0)
        await writer.get_many([P2], source)  # Redis is back: one invalidate_all first
        assert (await replica(caches, prefix).get_many([P1], source))[P1].stock == 0
    finally:
        await outage.close()


# -- the servicer ------------------------------------------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CatalogStore]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'catalog.db'}", schema="catalog")
    await db.migrate(MIGRATIONS)
    yield CatalogStore(db)
    await db.close()


@contextlib.asynccontextmanager
async def serve(
    store: CatalogStore, cache: ProductCache
) -> AsyncIterator[catalog_pb2_grpc.CatalogServiceAsyncStub]:
    servicer = CatalogServicer(store, cache=cache)  # the default clock: updated_at may repeat
    service = Service(catalog_pb2_grpc.add_CatalogServiceServicer_to_server, servicer, SERVICE)
    async with serve_in_process(service) as server:
        yield catalog_pb2_grpc.CatalogServiceStub(server.channel)


async def get(stub: catalog_pb2_grpc.CatalogServiceAsyncStub, product_id: str) -> Product:
    return (await stub.GetProduct(catalog_pb2.GetProductRequest(product_id=product_id))).product


def reserve(order_id: str, product_id: str, quantity: int) -> catalog_pb2.ReserveStockRequest:
    item = common_pb2.LineItem(product_id=product_id, quantity=quantity)
    return catalog_pb2.ReserveStockRequest(order_id=order_id, items=[item])


async def test_servicer_serves_every_write_at_once(
    prefix: str, caches: list[ProductCache], store: CatalogStore
) -> None:
    async with serve(store, replica(caches, prefix)) as stub:
        price = money_pb2.Money(currency_code="USD", units=3)
        created = await stub.CreateProduct(
            catalog_pb2.CreateProductRequest(sku="MUG", name="Mug", price=price, stock=10)
        )
        pid = created.product.id
        assert (await get(stub, pid)).stock == 10
        order_id = new_id()
        await stub.ReserveStock(reserve(order_id, pid, 3))
        assert (await get(stub, pid)).stock == 7
        batch = await stub.BatchGetProducts(catalog_pb2.BatchGetProductsRequest(product_ids=[pid]))
        assert [p.stock for p in batch.products] == [7]
        await stub.ReleaseStock(catalog_pb2.ReleaseStockRequest(order_id=order_id))
        assert (await get(stub, pid)).stock == 10
        draft = Product(sku="MUG", name="Big mug", price=price, stock=4)
        await stub.ImportProducts(iter([catalog_pb2.ImportProductsRequest(product=draft)]))
        assert ((await get(stub, pid)).name, (await get(stub, pid)).stock) == ("Big mug", 4)


async def test_servicer_replicas_share_invalidations(
    prefix: str, caches: list[ProductCache], store: CatalogStore
) -> None:
    heard = Invalidations()
    first, second = replica(caches, prefix), replica(caches, prefix, on_remote_invalidation=heard)
    await first.start()
    await second.start()
    async with serve(store, first) as a, serve(store, second) as b:
        price = money_pb2.Money(currency_code="USD", units=3)
        request = catalog_pb2.CreateProductRequest(sku="MUG", name="Mug", price=price, stock=10)
        pid = (await a.CreateProduct(request)).product.id
        assert (await get(b, pid)).stock == 10  # cached by b
        await a.ReserveStock(reserve(new_id(), pid, 4))
        await heard.wait_for(2)  # the create, then the reservation
        assert (await get(b, pid)).stock == 6


async def test_mount_caches_in_redis_under_the_catalog_keys(tmp_path: Path) -> None:
    await require_redis()
    settings = Settings(data_dir=tmp_path, demo=False, redis_url=REDIS_URL)
    ctx = ServiceContext(settings=settings, bus=InMemoryEventBus(), peers={})
    app = App(ServerConfig(grace_period=1.0))
    client = Redis.from_url(REDIS_URL)
    pid = new_id()
    try:
        await mount(app, ctx)
        async with serve_in_process(app=app) as server:
            stub = catalog_pb2_grpc.CatalogServiceStub(server.channel)
            price = money_pb2.Money(currency_code="USD", units=3)
            request = catalog_pb2.CreateProductRequest(sku="MUG", name="Mug", price=price, stock=2)
            pid = (await stub.CreateProduct(request)).product.id
            key = f"shop:catalog:product:{pid}"
            assert await client.exists(key) == 0
            await get(stub, pid)
            assert await client.exists(key) == 1
            await stub.ReserveStock(reserve(new_id(), pid, 1))
            assert await client.exists(key) == 0
    finally:
        await client.delete(f"shop:catalog:product:{pid}", f"shop:catalog:version:{pid}")
        await client.aclose()
        await ctx.close()
