"""OrderService over a real grpc.aio server, with an in-memory fake catalog on the same server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2

from grpckit import App, ServerConfig, StatusError, dial
from grpckit.errors import not_found
from grpckit.interceptors import recovery
from grpckit.testing import Service, serve_in_process
from shop.api.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shop.api.common.v1 import common_pb2
from shop.api.orders.v1 import orders_pb2, orders_pb2_grpc
from shop.common import money
from shop.common.db import Database
from shop.common.ids import new_id
from shop.common.money import Money
from shop.orders.changes import ChangeNotifier
from shop.orders.main import SERVICE as ORDER_SERVICE
from shop.orders.service import OrderServicer
from shop.orders.store import MIGRATIONS, OrdersStore

USER = "0b7d3c9e-3f55-4c2b-9a55-2f1d1c0e5a01"
P1 = "11111111-1111-4111-8111-111111111111"
P2 = "22222222-2222-4222-8222-222222222222"
P_EUR = "33333333-3333-4333-8333-333333333333"
CATALOG_SERVICE = catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"]


class FakeCatalog(catalog_pb2_grpc.CatalogServiceServicer):
    """Just enough catalog for pricing: BatchGetProducts over a dict of prices."""

    def __init__(self) -> None:
        self.prices = {P1: Money(1999), P2: Money(500), P_EUR: Money(700, "EUR")}

    async def BatchGetProducts(
        self, request: catalog_pb2.BatchGetProductsRequest, context: Any
    ) -> catalog_pb2.BatchGetProductsResponse:
        for product_id in request.product_ids:
            if product_id not in self.prices:
                raise not_found(
                    "no such product",
                    resource_type="product",
                    resource_name=product_id,
                    reason="PRODUCT_NOT_FOUND",
                    domain="shop",
                )
        products = [
            catalog_pb2.Product(id=pid, price=money.to_proto(self.prices[pid]))
            for pid in request.product_ids
        ]
        return catalog_pb2.BatchGetProductsResponse(products=products)


class RecordingNotifier(ChangeNotifier):
    """Sets ``forgotten`` whenever a watcher goes away."""

    def __init__(self) -> None:
        super().__init__()
        self.forgotten = asyncio.Event()

    def _forget(self, order_id: str, event: asyncio.Event) -> None:
        super()._forget(order_id, event)
        self.forgotten.set()


@dataclass
class Harness:
    stub: orders_pb2_grpc.OrderServiceAsyncStub
    store: OrdersStore
    db: Database


@pytest.fixture
async def orders(tmp_path: Path) -> AsyncIterator[Harness]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'orders.db'}", schema="orders")
    await db.migrate(MIGRATIONS)
    store = OrdersStore(db)
    store.changes = RecordingNotifier()
    app = App(ServerConfig(grace_period=1.0), interceptors=[recovery()])
    catalog_channel = dial(app.address)
    servicer = OrderServicer(
        store, catalog_pb2_grpc.CatalogServiceStub(catalog_channel), watch_interval=0.05
    )
    services = (
        Service(orders_pb2_grpc.add_OrderServiceServicer_to_server, servicer, ORDER_SERVICE),
        Service(
            catalog_pb2_grpc.add_CatalogServiceServicer_to_server, FakeCatalog(), CATALOG_SERVICE
        ),
    )
    try:
        async with serve_in_process(*services, app=app) as server:
            stub = orders_pb2_grpc.OrderServiceStub(server.channel)
            yield Harness(stub, store, db)  # type: ignore[arg-type]
    finally:
        await catalog_channel.close()
        await db.close()


def line(product_id: str, quantity: int) -> common_pb2.LineItem:
    return common_pb2.LineItem(product_id=product_id, quantity=quantity)


async def create(h: Harness, *items: common_pb2.LineItem, key: str = "") -> orders_pb2.Order:
    request = orders_pb2.CreateOrderRequest(
        user_id=USER, items=items or [line(P1, 2)], idempotency_key=key
    )
    return (await h.stub.CreateOrder(request)).order


async def rpc_error(call: Any) -> StatusError:
    with pytest.raises(grpc.RpcError) as caught:
        await call
    return StatusError.from_rpc_error(caught.value)


async def test_create_order_is_priced_by_the_catalog(orders: Harness) -> None:
    order = await create(orders, line(P1, 2), line(P2, 3))
    assert order.status == orders_pb2.ORDER_STATUS_PENDING
    assert [(i.product_id, i.quantity, i.unit_price.units) for i in order.items] == [
        (P1, 2, 19),
        (P2, 3, 5),
    ]
    assert money.from_proto(order.total) == Money(2 * 1999 + 3 * 500)
    assert order.created_at.seconds > 0
    assert (
        await orders.stub.GetOrder(orders_pb2.GetOrderRequest(order_id=order.id))
    ).order == order


async def test_create_order_reports_every_violation(orders: Harness) -> None:
    request = orders_pb2.CreateOrderRequest(
        user_id="nope",
        items=[line(P1, 1), line("x", 1), line(P2, 0), line(P2, 1001)],
        idempotency_key="k" * 201,
    )
    err = await rpc_error(orders.stub.CreateOrder(request))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in err.field_violations] == [
        "user_id",
        "items[1].product_id",
        "items[2].quantity",
        "items[3].quantity",
        "idempotency_key",
    ]


async def test_create_order_needs_items(orders: Harness) -> None:
    err = await rpc_error(orders.stub.CreateOrder(orders_pb2.CreateOrderRequest(user_id=USER)))
    assert err.field_violations == [("items", "an order has 1 to 100 items")]


async def test_unknown_product_is_the_catalogs_not_found(orders: Harness) -> None:
    unknown = new_id()
    err = await rpc_error(create(orders, line(P1, 1), line(unknown, 1)))
    assert (err.code, err.reason) == (grpc.StatusCode.NOT_FOUND, "PRODUCT_NOT_FOUND")
    resource = err.detail(error_details_pb2.ResourceInfo)
    assert resource is not None and resource.resource_name == unknown


async def test_mixed_currencies_are_refused(orders: Harness) -> None:
    err = await rpc_error(create(orders, line(P1, 1), line(P_EUR, 1)))
    assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "MIXED_CURRENCIES")


async def test_eight_concurrent_creates_with_one_key(orders: Harness) -> None:
    created = await asyncio.gather(*(create(orders, key="same") for _ in range(8)))
    assert len({order.id for order in created}) == 1
    listed = await orders.stub.ListOrders(orders_pb2.ListOrdersRequest(user_id=USER))
    assert [o.id for o in listed.orders] == [created[0].id]


async def test_get_order_errors(orders: Harness) -> None:
    err = await rpc_error(orders.stub.GetOrder(orders_pb2.GetOrderRequest(order_id="1")))
    assert err.field_violations == [("order_id", "order_id must be a UUID")]
    err = await rpc_error(orders.stub.GetOrder(orders_pb2.GetOrderRequest(order_id=new_id())))
    assert (err.code, err.reason) == (grpc.StatusCode.NOT_FOUND, "ORDER_NOT_FOUND")


async def test_mark_paid_is_idempotent_and_final(orders: Harness) -> None:
    order = await create(orders)
    payment_id = new_id()
    pay = orders_pb2.MarkOrderPaidRequest(order_id=order.id, payment_id=payment_id)
    paid = (await orders.stub.MarkOrderPaid(pay)).order
    assert (paid.status, paid.payment_id) == (orders_pb2.ORDER_STATUS_PAID, payment_id)
    assert (await orders.stub.MarkOrderPaid(pay)).order == paid
    cancel = orders_pb2.CancelOrderRequest(order_id=order.id, reason="late")
    err = await rpc_error(orders.stub.CancelOrder(cancel))
    assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ORDER_NOT_PENDING")
    assert err.error_info is not None
    assert (err.error_info.domain, err.error_info.metadata["status"]) == ("shop", "PAID")


async def test_cancel_is_idempotent_and_final(orders: Harness) -> None:
    order = await create(orders)
    cancel = orders_pb2.CancelOrderRequest(order_id=order.id, reason="changed my mind")
    cancelled = (await orders.stub.CancelOrder(cancel)).order
    assert cancelled.status == orders_pb2.ORDER_STATUS_CANCELLED
    assert cancelled.cancel_reason == "changed my mind"
    assert (await orders.stub.CancelOrder(cancel)).order == cancelled
    pay = orders_pb2.MarkOrderPaidRequest(order_id=order.id, payment_id=new_id())
    err = await rpc_error(orders.stub.MarkOrderPaid(pay))
    assert err.error_info is not None and err.error_info.metadata["status"] == "CANCELLED"


async def test_transition_validation(orders: Harness) -> None:
    err = await rpc_error(
        orders.stub.CancelOrder(orders_pb2.CancelOrderRequest(order_id=new_id(), reason=""))
    )
    assert [f for f, _ in err.field_violations] == ["reason"]
    err = await rpc_error(orders.stub.MarkOrderPaid(orders_pb2.MarkOrderPaidRequest()))
    assert [f for f, _ in err.field_violations] == ["order_id", "payment_id"]


async def test_list_orders_pages_newest_first(orders: Harness) -> None:
    made = [await create(orders) for _ in range(3)]
    first = await orders.stub.ListOrders(orders_pb2.ListOrdersRequest(user_id=USER, page_size=2))
    assert first.next_page_token
    rest = await orders.stub.ListOrders(
        orders_pb2.ListOrdersRequest(user_id=USER, page_size=2, page_token=first.next_page_token)
    )
    assert rest.next_page_token == ""
    assert [o.id for o in [*first.orders, *rest.orders]] == [o.id for o in reversed(made)]
    bad = orders_pb2.ListOrdersRequest(user_id=USER, page_token="garbage")
    err = await rpc_error(orders.stub.ListOrders(bad))
    assert [f for f, _ in err.field_violations] == ["page_token"]


async def test_search_orders(orders: Harness) -> None:
    cheap = await create(orders, line(P2, 1))
    dear = await create(orders, line(P1, 5))
    await orders.stub.CancelOrder(orders_pb2.CancelOrderRequest(order_id=cheap.id, reason="Oops"))
    search = orders.stub.SearchOrders
    cancelled = await search(
        orders_pb2.SearchOrdersRequest(statuses=[orders_pb2.ORDER_STATUS_CANCELLED], text="OOPS")
    )
    assert ([o.id for o in cancelled.orders], cancelled.total_count) == ([cheap.id], 1)
    big = await search(orders_pb2.SearchOrdersRequest(min_total=money.to_proto(Money(5000))))
    assert [o.id for o in big.orders] == [dear.id]
    after = timestamp_pb2.Timestamp(seconds=dear.created_at.seconds + 3600)
    assert (await search(orders_pb2.SearchOrdersRequest(created_after=after))).total_count == 0
    paged = await search(orders_pb2.SearchOrdersRequest(user_id=USER, page_size=1))
    assert (len(paged.orders), paged.total_count, bool(paged.next_page_token)) == (1, 2, True)


async def test_search_rejects_unknown_statuses(orders: Harness) -> None:
    request = orders_pb2.SearchOrdersRequest(statuses=[orders_pb2.ORDER_STATUS_PAID, 0, 42])
    err = await rpc_error(orders.stub.SearchOrders(request))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in err.field_violations] == ["statuses[1]", "statuses[2]"]


async def test_watch_streams_changes_until_terminal(orders: Harness) -> None:
    order = await create(orders)
    call = orders.stub.WatchOrder(orders_pb2.WatchOrderRequest(order_id=order.id))
    first = await call.read()
    assert first.order.status == orders_pb2.ORDER_STATUS_PENDING
    pay = orders_pb2.MarkOrderPaidRequest(order_id=order.id, payment_id=new_id())
    await orders.stub.MarkOrderPaid(pay)
    second = await call.read()
    assert second.order.status == orders_pb2.ORDER_STATUS_PAID
    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_watch_sees_changes_made_elsewhere(orders: Harness) -> None:
    order = await create(orders)
    other_process = OrdersStore(orders.db)  # its own notifier: only the re-read sees this
    call = orders.stub.WatchOrder(orders_pb2.WatchOrderRequest(order_id=order.id))
    assert (await call.read()).order.status == orders_pb2.ORDER_STATUS_PENDING
    await other_process.cancel(order.id, "elsewhere")
    assert (await call.read()).order.cancel_reason == "elsewhere"
    assert await call.read() is grpc.aio.EOF


async def test_watch_of_a_final_order_sends_it_once(orders: Harness) -> None:
    order = await create(orders)
    await orders.stub.CancelOrder(orders_pb2.CancelOrderRequest(order_id=order.id, reason="x"))
    replies = [
        r async for r in orders.stub.WatchOrder(orders_pb2.WatchOrderRequest(order_id=order.id))
    ]
    assert [r.order.status for r in replies] == [orders_pb2.ORDER_STATUS_CANCELLED]


async def test_watch_unknown_order(orders: Harness) -> None:
    call = orders.stub.WatchOrder(orders_pb2.WatchOrderRequest(order_id=new_id()))
    with pytest.raises(grpc.RpcError) as caught:
        await call.read()
    assert StatusError.from_rpc_error(caught.value).reason == "ORDER_NOT_FOUND"
    assert orders.store.changes.watcher_count() == 0


async def test_client_cancelling_a_watch_ends_the_handler(orders: Harness) -> None:
    order = await create(orders)
    notifier = orders.store.changes
    assert isinstance(notifier, RecordingNotifier)
    call = orders.stub.WatchOrder(orders_pb2.WatchOrderRequest(order_id=order.id))
    await call.read()
    assert notifier.watcher_count(order.id) == 1
    notifier.forgotten.clear()
    call.cancel()
    await asyncio.wait_for(notifier.forgotten.wait(), timeout=5)
    assert notifier.watcher_count() == 0
