"""CatalogService over a real grpc.aio server on 127.0.0.1 (grpckit's in-process harness)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.rpc import error_details_pb2
from google.type import money_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpckit import App, ServerConfig, StatusError
from grpckit.testing import Service, serve_in_process
from shop.api.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shop.api.common.v1 import common_pb2
from shop.catalog.demo import DEMO_PRODUCTS
from shop.catalog.main import SERVICE, mount
from shop.catalog.service import CatalogServicer
from shop.catalog.store import MIGRATIONS, CatalogStore
from shop.common.bus import InMemoryEventBus
from shop.common.db import Database
from shop.common.ids import new_id
from shop.common.runtime import ServiceContext, Settings

if TYPE_CHECKING:
    from shop.api.catalog.v1.catalog_pb2_grpc import CatalogServiceAsyncStub as Stub

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
async def catalog(database: Database) -> AsyncIterator[Stub]:
    await database.migrate(MIGRATIONS)
    servicer = CatalogServicer(CatalogStore(database), clock=lambda: NOW)
    service = Service(catalog_pb2_grpc.add_CatalogServiceServicer_to_server, servicer, SERVICE)
    async with serve_in_process(service) as server:
        yield catalog_pb2_grpc.CatalogServiceStub(server.channel)


def usd(units: int, nanos: int = 0) -> money_pb2.Money:
    return money_pb2.Money(currency_code="USD", units=units, nanos=nanos)


async def create(stub: Stub, sku: str, *, stock: int = 10, name: str = "") -> catalog_pb2.Product:
    request = catalog_pb2.CreateProductRequest(
        sku=sku, name=name or f"Product {sku}", price=usd(12, 500_000_000), stock=stock
    )
    return (await stub.CreateProduct(request)).product


async def failure(call: Awaitable[Any]) -> StatusError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return StatusError.from_rpc_error(caught.value)


def assert_shop_reason(error: StatusError, code: grpc.StatusCode, reason: str) -> None:
    assert (error.code, error.reason) == (code, reason)
    assert error.error_info is not None
    assert error.error_info.domain == "shop"


def reserve(order_id: str, *items: tuple[str, int]) -> catalog_pb2.ReserveStockRequest:
    lines = [common_pb2.LineItem(product_id=pid, quantity=qty) for pid, qty in items]
    return catalog_pb2.ReserveStockRequest(order_id=order_id, items=lines)


async def stocks(stub: Stub, *products: catalog_pb2.Product) -> list[int]:
    request = catalog_pb2.BatchGetProductsRequest(product_ids=[p.id for p in products])
    return [p.stock for p in (await stub.BatchGetProducts(request)).products]


async def test_create_and_get(catalog: Stub) -> None:
    product = await create(catalog, "MUG-1", stock=4)
    assert (product.sku, product.price, product.stock) == ("MUG-1", usd(12, 500_000_000), 4)
    assert product.created_at.ToDatetime(tzinfo=UTC) == NOW
    fetched = await catalog.GetProduct(catalog_pb2.GetProductRequest(product_id=product.id))
    assert fetched.product == product


async def test_duplicate_sku_already_exists(catalog: Stub) -> None:
    await create(catalog, "MUG-1")
    error = await failure(create(catalog, "MUG-1"))
    assert_shop_reason(error, grpc.StatusCode.ALREADY_EXISTS, "SKU_TAKEN")


async def test_invalid_product_lists_every_violation(catalog: Stub) -> None:
    request = catalog_pb2.CreateProductRequest(sku="bad sku", stock=-1)
    error = await failure(catalog.CreateProduct(request))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in error.field_violations] == ["price", "sku", "name", "stock"]
    sub_cent = catalog_pb2.CreateProductRequest(sku="A", name="A", price=usd(1, 1))
    error = await failure(catalog.CreateProduct(sub_cent))
    assert [field for field, _ in error.field_violations] == ["price"]


async def test_batch_get_keeps_request_order_and_names_the_unknown(catalog: Stub) -> None:
    a, b = await create(catalog, "A"), await create(catalog, "B")
    request = catalog_pb2.BatchGetProductsRequest(product_ids=[b.id, a.id, b.id])
    assert [p.sku for p in (await catalog.BatchGetProducts(request)).products] == ["B", "A", "B"]
    missing = new_id()
    request = catalog_pb2.BatchGetProductsRequest(product_ids=[a.id, missing])
    error = await failure(catalog.BatchGetProducts(request))
    assert_shop_reason(error, grpc.StatusCode.NOT_FOUND, "PRODUCT_NOT_FOUND")
    resource = error.detail(error_details_pb2.ResourceInfo)
    assert resource is not None
    assert (resource.resource_type, resource.resource_name) == ("product", missing)


async def test_bad_ids_are_invalid_arguments(catalog: Stub) -> None:
    error = await failure(catalog.GetProduct(catalog_pb2.GetProductRequest(product_id="x")))
    assert error.field_violations == [("product_id", "is not an id issued by this shop")]
    request = catalog_pb2.BatchGetProductsRequest(product_ids=[new_id(), ""])
    error = await failure(catalog.BatchGetProducts(request))
    assert error.field_violations == [("product_ids[1]", "is required")]
    error = await failure(catalog.BatchGetProducts(catalog_pb2.BatchGetProductsRequest()))
    assert error.field_violations == [("product_ids", "must name at least one product")]


async def test_list_pages_through_everything_by_sku(catalog: Stub) -> None:
    for sku in ["C", "A", "E", "B", "D"]:
        await create(catalog, sku)
    seen, token = [], ""
    while True:
        request = catalog_pb2.ListProductsRequest(page_size=2, page_token=token)
        page = await catalog.ListProducts(request)
        seen.append([p.sku for p in page.products])
        token = page.next_page_token
        if not token:
            break
    assert seen == [["A", "B"], ["C", "D"], ["E"]]


async def test_search_and_its_validation(catalog: Stub) -> None:
    await create(catalog, "MUG-BLUE", name="Blue mug")
    await create(catalog, "TEE-BLUE", name="Blue tee")
    found = await catalog.SearchProducts(catalog_pb2.SearchProductsRequest(query="mug BLUE"))
    assert [p.sku for p in found.products] == ["MUG-BLUE"]
    everything = await catalog.SearchProducts(catalog_pb2.SearchProductsRequest(query=""))
    assert len(everything.products) == 2
    words = " ".join(f"w{i}" for i in range(11))
    bad = catalog_pb2.SearchProductsRequest(query=words, page_size=-1, page_token="??")
    error = await failure(catalog.SearchProducts(bad))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in error.field_violations] == ["query", "page_size"]


async def test_reserve_and_release(catalog: Stub) -> None:
    a, b = await create(catalog, "A", stock=5), await create(catalog, "B", stock=5)
    order = new_id()
    request = reserve(order, (a.id, 2), (b.id, 1), (a.id, 1))
    await catalog.ReserveStock(request)
    await catalog.ReserveStock(request)  # a retry takes nothing more
    assert await stocks(catalog, a, b) == [2, 4]
    await catalog.ReleaseStock(catalog_pb2.ReleaseStockRequest(order_id=order))
    await catalog.ReleaseStock(catalog_pb2.ReleaseStockRequest(order_id=order))
    assert await stocks(catalog, a, b) == [5, 5]
    error = await failure(catalog.ReserveStock(request))
    assert_shop_reason(error, grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_RELEASED")


async def test_out_of_stock_names_the_product_and_takes_nothing(catalog: Stub) -> None:
    a, b = await create(catalog, "A", stock=5), await create(catalog, "B", stock=1)
    error = await failure(catalog.ReserveStock(reserve(new_id(), (a.id, 1), (b.id, 2))))
    assert_shop_reason(error, grpc.StatusCode.FAILED_PRECONDITION, "OUT_OF_STOCK")
    assert error.error_info is not None
    assert dict(error.error_info.metadata) == {
        "product_id": b.id,
        "requested": "2",
        "available": "1",
    }
    resource = error.detail(error_details_pb2.ResourceInfo)
    assert resource is not None
    assert (resource.resource_type, resource.resource_name) == ("product", b.id)
    assert await stocks(catalog, a, b) == [5, 1]


async def test_reserving_an_unknown_product_is_not_found(catalog: Stub) -> None:
    error = await failure(catalog.ReserveStock(reserve(new_id(), (new_id(), 1))))
    assert_shop_reason(error, grpc.StatusCode.NOT_FOUND, "PRODUCT_NOT_FOUND")


async def test_a_retry_with_other_items_is_refused(catalog: Stub) -> None:
    a = await create(catalog, "A", stock=5)
    order = new_id()
    await catalog.ReserveStock(reserve(order, (a.id, 1)))
    error = await failure(catalog.ReserveStock(reserve(order, (a.id, 2))))
    assert_shop_reason(error, grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_MISMATCH")


async def test_reservation_validation(catalog: Stub) -> None:
    error = await failure(catalog.ReserveStock(reserve("", ("nope", 0))))
    assert error.field_violations == [
        ("order_id", "is required"),
        ("items[0].product_id", "is not an id issued by this shop"),
        ("items[0].quantity", "must be at least 1"),
    ]
    error = await failure(catalog.ReserveStock(reserve(new_id())))
    assert error.field_violations == [("items", "must hold at least one item")]
    error = await failure(catalog.ReleaseStock(catalog_pb2.ReleaseStockRequest()))
    assert error.field_violations == [("order_id", "is required")]


async def test_concurrent_orders_over_grpc_never_oversell(catalog: Stub) -> None:
    a = await create(catalog, "A", stock=3)
    calls = [catalog.ReserveStock(reserve(new_id(), (a.id, 1))) for _ in range(8)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    refused = [StatusError.from_rpc_error(r) for r in results if isinstance(r, grpc.RpcError)]
    assert len(refused) == 5
    assert {e.reason for e in refused} == {"OUT_OF_STOCK"}
    assert await stocks(catalog, a) == [0]


def import_stream(products: Iterable[catalog_pb2.Product]) -> AsyncIterator[Any]:
    async def stream() -> AsyncIterator[catalog_pb2.ImportProductsRequest]:
        for product in products:
            yield catalog_pb2.ImportProductsRequest(product=product)

    return stream()


async def test_import_creates_updates_and_reports_failures(catalog: Stub) -> None:
    existing = await create(catalog, "A", stock=1)
    products = [
        catalog_pb2.Product(id="ignored", sku="A", name="A v2", price=usd(3), stock=9),
        catalog_pb2.Product(sku="B", name="B", price=usd(4), stock=2),
        catalog_pb2.Product(sku="", name="", price=usd(-1)),
        catalog_pb2.Product(sku="C", name="C", stock=1),
    ]
    reply = await catalog.ImportProducts(import_stream(products))
    assert (reply.created, reply.updated, reply.failed) == (1, 1, 2)
    assert [(f.index, f.sku, f.reason) for f in reply.failures] == [
        (2, "", "product.sku: is required; product.name: is required; "
                "product.price: must not be negative"),
        (3, "C", "product.price: is required"),
    ]  # fmt: skip
    updated = await catalog.GetProduct(catalog_pb2.GetProductRequest(product_id=existing.id))
    assert (updated.product.name, updated.product.stock) == ("A v2", 9)


async def test_import_of_many_products_commits_in_batches(catalog: Stub) -> None:
    products = (
        catalog_pb2.Product(sku=f"SKU-{i:04d}", name=f"P{i}", price=usd(1), stock=i)
        for i in range(450)
    )
    reply = await catalog.ImportProducts(import_stream(products))
    assert (reply.created, reply.updated, reply.failed) == (450, 0, 0)
    page = await catalog.ListProducts(catalog_pb2.ListProductsRequest(page_size=100))
    assert len(page.products) == 100
    assert page.products[0].sku == "SKU-0000"


async def test_mount_seeds_the_demo_catalog_once(tmp_path: Path) -> None:
    for _ in range(2):
        ctx = ServiceContext(settings=Settings(data_dir=tmp_path), bus=InMemoryEventBus(), peers={})
        app = App(ServerConfig(grace_period=1.0))
        try:
            await mount(app, ctx)
            async with serve_in_process(app=app) as server:
                health = health_pb2_grpc.HealthStub(server.channel)
                request = health_pb2.HealthCheckRequest(service=SERVICE.full_name)
                assert (
                    await health.Check(request)
                ).status == health_pb2.HealthCheckResponse.SERVING
                stub = catalog_pb2_grpc.CatalogServiceStub(server.channel)
                page = await stub.ListProducts(catalog_pb2.ListProductsRequest(page_size=100))
                assert len(page.products) == len(DEMO_PRODUCTS)
        finally:
            await ctx.close()


async def test_mount_without_demo_leaves_the_catalog_empty(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, demo=False)
    ctx = ServiceContext(settings=settings, bus=InMemoryEventBus(), peers={})
    app = App(ServerConfig(grace_period=1.0))
    try:
        await mount(app, ctx)
        async with serve_in_process(app=app) as server:
            stub = catalog_pb2_grpc.CatalogServiceStub(server.channel)
            page = await stub.ListProducts(catalog_pb2.ListProductsRequest())
            assert list(page.products) == []
    finally:
        await ctx.close()
