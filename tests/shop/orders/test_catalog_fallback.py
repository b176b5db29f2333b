"""Orders prices from remembered catalog replies while the catalog is down, and says so.

OrderService runs on a real server and reaches a separate catalog server through
``StaleCatalog``; stopping the catalog server leaves the channel pointing at a closed port.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import grpc
import pytest
from structlog.testing import capture_logs

from grpckit import App, ServerConfig, StatusError, dial
from grpckit.errors import not_found
from grpckit.testing import Service, serve_in_process
from shop.api.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shop.api.common.v1 import common_pb2
from shop.api.orders.v1 import orders_pb2, orders_pb2_grpc
from shop.common import money
from shop.common.db import Database
from shop.common.ids import new_id
from shop.common.money import Money
from shop.orders.catalog_client import STALE_TRAILER, StaleCatalog, catalog_client
from shop.orders.main import SERVICE as ORDER_SERVICE
from shop.orders.service import OrderServicer
from shop.orders.store import MIGRATIONS, OrdersStore

if TYPE_CHECKING:
    from shop.api.catalog.v1.catalog_pb2_grpc import CatalogServiceAsyncStub
    from shop.api.orders.v1.orders_pb2_grpc import OrderServiceAsyncStub

USER = new_id()
P1, P2 = new_id(), new_id()
CATALOG_SERVICE = catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"]


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Catalog(catalog_pb2_grpc.CatalogServiceServicer):
    """Prices by product id; ``hang`` makes reads wait until the caller's deadline."""

    def __init__(self) -> None:
        self.prices = {P1: Money(1999), P2: Money(500)}
        self.hang = False

    async def GetProduct(
        self, request: catalog_pb2.GetProductRequest, context: Any
    ) -> catalog_pb2.GetProductResponse:
        batch = catalog_pb2.BatchGetProductsRequest(product_ids=[request.product_id])
        (product,) = (await self.BatchGetProducts(batch, context)).products
        return catalog_pb2.GetProductResponse(product=product)

    async def BatchGetProducts(
        self, request: catalog_pb2.BatchGetProductsRequest, context: Any
    ) -> catalog_pb2.BatchGetProductsResponse:
        if self.hang:
            await asyncio.Event().wait()
        for product_id in request.product_ids:
            if product_id not in self.prices:
                raise not_found("no such product", resource_type="product", resource_name="")
        return catalog_pb2.BatchGetProductsResponse(
            products=[
                catalog_pb2.Product(id=pid, price=money.to_proto(self.prices[pid]))
                for pid in request.product_ids
            ]
        )


@dataclass
class Harness:
    orders: OrderServiceAsyncStub
    catalog: Catalog
    catalog_app: App
    reads: StaleCatalog
    clock: FakeClock


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    catalog = Catalog()  # type: ignore[abstract]
    catalog_app = App(ServerConfig(grace_period=0.1))
    catalog_app.add_service(
        catalog_pb2_grpc.add_CatalogServiceServicer_to_server, catalog, CATALOG_SERVICE
    )
    await catalog_app.start()
    channel = dial(catalog_app.address, default_timeout=2.0)
    clock = FakeClock()
    reads = StaleCatalog(
        catalog_pb2_grpc.CatalogServiceStub(channel), max_age=600, read_timeout=0.2, clock=clock
    )
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'orders.db'}", schema="orders")
    await db.migrate(MIGRATIONS)
    servicer = OrderServicer(OrdersStore(db), cast("CatalogServiceAsyncStub", reads))
    service = Service(orders_pb2_grpc.add_OrderServiceServicer_to_server, servicer, ORDER_SERVICE)
    try:
        async with serve_in_process(service) as server:
            stub = orders_pb2_grpc.OrderServiceStub(server.channel)
            yield Harness(stub, catalog, catalog_app, reads, clock)
    finally:
        await catalog_app.stop()
        await channel.close(None)
        await db.close()


async def create(
    h: Harness, *product_ids: str, deadline: float | None = None
) -> tuple[orders_pb2.Order, str | None]:
    """CreateOrder (one of each product): the order and its ``x-shop-stale`` trailer."""
    items = [common_pb2.LineItem(product_id=pid, quantity=1) for pid in product_ids]
    request = orders_pb2.CreateOrderRequest(user_id=USER, items=items)
    call = h.orders.CreateOrder(request, timeout=deadline)
    order = (await call).order
    trailers = await call.trailing_metadata()
    stale = trailers.get(STALE_TRAILER[0]) if trailers is not None else None
    return order, str(stale) if stale is not None else None


async def failure(h: Harness, *product_ids: str) -> StatusError:
    with pytest.raises(grpc.RpcError) as caught:
        await create(h, *product_ids)
    return StatusError.from_rpc_error(caught.value)


async def test_catalog_down_prices_from_memory_with_the_trailer(harness: Harness) -> None:
    order, stale = await create(harness, P1, P2)
    assert (money.from_proto(order.total), stale) == (Money(2499), None)
    await harness.catalog_app.stop()  # the channel now points at a closed port
    with capture_logs() as logs:
        order, stale = await create(harness, P1, P2)
    assert (money.from_proto(order.total), stale) == (Money(2499), "catalog")
    assert [entry["event"] for entry in logs] == ["orders.catalog_stale"]
    assert logs[0]["code"] == "UNAVAILABLE"
    assert harness.reads.stale_reads == 1


async def test_a_hanging_catalog_is_answered_from_memory_in_time(harness: Harness) -> None:
    await create(harness, P1)
    harness.catalog.hang = True  # reads wait: the remembered answer needs a deadline of its own
    with capture_logs() as logs:  # within the 1 s of CreateOrder, not when it has expired
        order, stale = await create(harness, P1, deadline=1.0)
    assert (money.from_proto(order.total), stale) == (Money(1999), "catalog")
    assert logs[0]["code"] == "DEADLINE_EXCEEDED"
    request = catalog_pb2.BatchGetProductsRequest(product_ids=[P1, P2])  # P2 never read
    with pytest.raises(grpc.RpcError) as caught:
        await harness.reads.BatchGetProducts(request, timeout=0.1)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_products_never_read_or_too_old_are_not_invented(harness: Harness) -> None:
    await create(harness, P1)
    await harness.catalog_app.stop()
    assert (await failure(harness, P1, P2)).code == grpc.StatusCode.UNAVAILABLE
    harness.clock.now += 600.0
    assert (await failure(harness, P1)).code == grpc.StatusCode.UNAVAILABLE


async def test_other_failures_are_not_hidden(harness: Harness) -> None:
    await create(harness, P1)
    del harness.catalog.prices[P1]
    assert (await failure(harness, P1)).code == grpc.StatusCode.NOT_FOUND
    assert harness.reads.stale_reads == 0


async def test_stock_is_never_reserved_from_memory(harness: Harness) -> None:
    await create(harness, P1)
    await harness.catalog_app.stop()
    item = common_pb2.LineItem(product_id=P1, quantity=1)
    with pytest.raises(grpc.RpcError) as caught:
        await harness.reads.ReserveStock(
            catalog_pb2.ReserveStockRequest(order_id=new_id(), items=[item])
        )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_get_product_falls_back_too(harness: Harness) -> None:
    await create(harness, P1, P2)
    await harness.catalog_app.stop()
    reply = await harness.reads.GetProduct(catalog_pb2.GetProductRequest(product_id=P2))
    assert (reply.product.id, money.from_proto(reply.product.price)) == (P2, Money(500))


async def test_memory_is_bounded(harness: Harness) -> None:
    async with dial(harness.catalog_app.address) as channel:
        reads = StaleCatalog(catalog_pb2_grpc.CatalogServiceStub(channel), max_products=1)
        await reads.BatchGetProducts(catalog_pb2.BatchGetProductsRequest(product_ids=[P1, P2]))
        assert len(reads) == 1
        await harness.catalog_app.stop()
        await reads.GetProduct(catalog_pb2.GetProductRequest(product_id=P2))
        with pytest.raises(grpc.RpcError):  # P1 was dropped: the least recently read
            await reads.GetProduct(catalog_pb2.GetProductRequest(product_id=P1))


async def test_catalog_client_wraps_a_stub() -> None:
    async with grpc.aio.insecure_channel("127.0.0.1:1") as channel:
        assert isinstance(catalog_client(channel), StaleCatalog)
        with pytest.raises(ValueError, match="positive"):
            StaleCatalog(catalog_pb2_grpc.CatalogServiceStub(channel), max_age=0)
