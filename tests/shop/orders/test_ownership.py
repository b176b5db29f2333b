"""GetOrder and WatchOrder show a customer their own orders only (admins and services: all).

Another customer's order is NOT_FOUND exactly as an unknown id, and carries none of its data.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from grpckit import App, ServerConfig, StatusError, dial
from grpckit.interceptors import recovery
from grpckit.testing import Service, serve_in_process
from shop.api.catalog.v1 import catalog_pb2_grpc
from shop.api.orders.v1 import orders_pb2, orders_pb2_grpc
from shop.common.db import Database
from shop.common.ids import new_id
from shop.common.money import Money
from shop.orders.convert import order_to_proto
from shop.orders.domain import OrderItem
from shop.orders.main import SERVICE
from shop.orders.service import OrderServicer
from shop.orders.store import MIGRATIONS, OrdersStore
from tests.shop.orders.fake_auth import HeaderAuth, Metadata, caller

OWNER = new_id()
OTHER = new_id()
PRODUCT = new_id()
ALLOWED = {
    "owner": caller(OWNER, roles=("customer",)),
    "admin": caller(OTHER, roles=("admin",)),
    "service": caller(roles=("service",)),
    "service for another user": caller(OTHER, roles=("customer", "service")),
}
REFUSED = {
    "another customer": caller(OTHER, roles=("customer",)),
    "anonymous": caller(),
}


@dataclass
class Harness:
    stub: orders_pb2_grpc.OrderServiceAsyncStub
    order: orders_pb2.Order  # OWNER's order, CANCELLED (terminal: a watch ends after it)


@pytest.fixture
async def orders(tmp_path: Path) -> AsyncIterator[Harness]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'orders.db'}", schema="orders")
    await db.migrate(MIGRATIONS)
    store = OrdersStore(db)
    created, _ = await store.create(OWNER, [OrderItem(PRODUCT, 2, Money(750))], Money(1500))
    order = await store.cancel(created.id, "changed my mind")
    app = App(ServerConfig(grace_period=1.0), interceptors=[recovery(), HeaderAuth()])
    unused_catalog = dial(app.address)  # GetOrder and WatchOrder never price anything
    servicer = OrderServicer(store, catalog_pb2_grpc.CatalogServiceStub(unused_catalog))
    added = Service(orders_pb2_grpc.add_OrderServiceServicer_to_server, servicer, SERVICE)
    try:
        async with serve_in_process(added, app=app) as server:
            stub = orders_pb2_grpc.OrderServiceStub(server.channel)
            yield Harness(stub, order_to_proto(order))
    finally:
        await unused_catalog.close(None)
        await db.close()


async def rpc_error(call: Any) -> StatusError:
    with pytest.raises(grpc.RpcError) as caught:
        await call
    return StatusError.from_rpc_error(caught.value)


def as_unknown(error: StatusError, order_id: str) -> bytes:
    """The error's wire form with the asked id blanked (to compare with an unknown id's)."""
    return bytes(error.to_proto().SerializeToString()).replace(order_id.encode(), b"<id>")


def get(order_id: str) -> orders_pb2.GetOrderRequest:
    return orders_pb2.GetOrderRequest(order_id=order_id)


async def watch(h: Harness, order_id: str, metadata: Metadata) -> list[orders_pb2.Order]:
    request = orders_pb2.WatchOrderRequest(order_id=order_id)
    return [reply.order async for reply in h.stub.WatchOrder(request, metadata=metadata)]


@pytest.mark.parametrize("who", ALLOWED)
async def test_the_owner_admins_and_services_get_the_order(orders: Harness, who: str) -> None:
    reply = await orders.stub.GetOrder(get(orders.order.id), metadata=ALLOWED[who])
    assert reply.order == orders.order
    assert await watch(orders, orders.order.id, ALLOWED[who]) == [orders.order]


@pytest.mark.parametrize("who", REFUSED)
async def test_anyone_else_gets_not_found_as_for_an_unknown_id(orders: Harness, who: str) -> None:
    refused = await rpc_error(orders.stub.GetOrder(get(orders.order.id), metadata=REFUSED[who]))
    unknown_id = new_id()
    unknown = await rpc_error(orders.stub.GetOrder(get(unknown_id), metadata=ALLOWED["owner"]))
    assert (refused.code, refused.reason) == (grpc.StatusCode.NOT_FOUND, "ORDER_NOT_FOUND")
    assert as_unknown(refused, orders.order.id) == as_unknown(unknown, unknown_id)
    assert OWNER.encode() not in refused.to_proto().SerializeToString()


@pytest.mark.parametrize("who", REFUSED)
async def test_anyone_else_cannot_watch_the_order(orders: Harness, who: str) -> None:
    request = orders_pb2.WatchOrderRequest(order_id=orders.order.id)
    received: list[orders_pb2.WatchOrderResponse] = []
    with pytest.raises(grpc.RpcError) as caught:
        async for reply in orders.stub.WatchOrder(request, metadata=REFUSED[who]):
            received.append(reply)
    refused = StatusError.from_rpc_error(caught.value)
    assert (refused.code, refused.reason) == (grpc.StatusCode.NOT_FOUND, "ORDER_NOT_FOUND")
    assert received == []
    assert OWNER.encode() not in refused.to_proto().SerializeToString()
