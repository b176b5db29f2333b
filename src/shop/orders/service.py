"""``shop.orders.v1.OrderService`` on grpc.aio: validate, convert, call the store, map errors."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from grpckit import StatusError
from grpckit.auth import caller_may_access
from grpckit.errors import not_found
from shop.api.catalog.v1 import catalog_pb2
from shop.api.orders.v1 import orders_pb2, orders_pb2_grpc
from shop.common import money
from shop.common.money import Money
from shop.orders import validation
from shop.orders.convert import order_to_proto
from shop.orders.domain import LineRequest, Order, OrderNotFoundError, price_items
from shop.orders.errors import DOMAIN, status_errors
from shop.orders.store import OrdersStore

if TYPE_CHECKING:
    from shop.api.catalog.v1.catalog_pb2_grpc import CatalogServiceAsyncStub

Context = grpc.aio.ServicerContext[Any, Any]


def _visible(order: Order) -> Order:
    """``order`` if the caller may see it (its owner, an admin, a service), else as unknown.

    Without an authenticated principal (no authentication interceptor, as in-process) it may.
    """
    if not caller_may_access(order.user_id):
        raise OrderNotFoundError(order.id)
    return order


class OrderServicer(orders_pb2_grpc.OrderServiceServicer):
    """The OrderService. Prices orders through the catalog's ``BatchGetProducts``.

    ``watch_interval`` is how often WatchOrder re-reads an order it has no in-process signal
    for (changes made by another process). GetOrder and WatchOrder show a customer their own
    orders only: another's is NOT_FOUND, exactly as an unknown id.
    """

    def __init__(
        self,
        store: OrdersStore,
        catalog: CatalogServiceAsyncStub,
        *,
        watch_interval: float = 1.0,
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._watch_interval = watch_interval

    async def CreateOrder(
        self, request: orders_pb2.CreateOrderRequest, context: Context
    ) -> orders_pb2.CreateOrderResponse:
        user_id, lines, key = validation.create_order(request)
        if key and (existing := await self._store.find_by_key(user_id, key)) is not None:
            return orders_pb2.CreateOrderResponse(order=order_to_proto(existing))
        prices = await self._prices(lines)
        with status_errors():
            items, total = price_items(lines, prices)
            order, _ = await self._store.create(user_id, items, total, key)
        return orders_pb2.CreateOrderResponse(order=order_to_proto(order))

    async def GetOrder(
        self, request: orders_pb2.GetOrderRequest, context: Context
    ) -> orders_pb2.GetOrderResponse:
        order_id = validation.order_id(request.order_id)
        with status_errors():
            order = _visible(await self._store.get(order_id))
        return orders_pb2.GetOrderResponse(order=order_to_proto(order))

    async def MarkOrderPaid(
        self, request: orders_pb2.MarkOrderPaidRequest, context: Context
    ) -> orders_pb2.MarkOrderPaidResponse:
        order_id, payment_id = validation.mark_order_paid(request)
        with status_errors():
            order = await self._store.mark_paid(order_id, payment_id)
        return orders_pb2.MarkOrderPaidResponse(order=order_to_proto(order))

    async def CancelOrder(
        self, request: orders_pb2.CancelOrderRequest, context: Context
    ) -> orders_pb2.CancelOrderResponse:
        order_id, reason = validation.cancel_order(request)
        with status_errors():
            order = await self._store.cancel(order_id, reason)
        return orders_pb2.CancelOrderResponse(order=order_to_proto(order))

    async def ListOrders(
        self, request: orders_pb2.ListOrdersRequest, context: Context
    ) -> orders_pb2.ListOrdersResponse:
        user_id, page = validation.list_orders(request)
        found = await self._store.list_for_user(user_id, offset=page.offset, limit=page.size + 1)
        shown = found[: page.size]
        return orders_pb2.ListOrdersResponse(
            orders=[order_to_proto(order) for order in shown],
            next_page_token=page.next_token(len(shown), len(found) > page.size),
        )

    async def SearchOrders(
        self, request: orders_pb2.SearchOrdersRequest, context: Context
    ) -> orders_pb2.SearchOrdersResponse:
        query, page = validation.search_orders(request)
        found, total = await self._store.search(query, offset=page.offset, limit=page.size)
        return orders_pb2.SearchOrdersResponse(
            orders=[order_to_proto(order) for order in found],
            next_page_token=page.next_token(len(found), page.offset + len(found) < total),
            total_count=total,
        )

    async def WatchOrder(
        self, request: orders_pb2.WatchOrderRequest, context: Context
    ) -> AsyncIterator[orders_pb2.WatchOrderResponse]:
        order_id = validation.order_id(request.order_id)
        # Watch before the first read, so a change between the read and the wait is not missed.
        with status_errors(), self._store.changes.watch(order_id) as changed:
            order = _visible(await self._store.get(order_id))
            yield orders_pb2.WatchOrderResponse(order=order_to_proto(order))
            while not order.status.terminal:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), self._watch_interval)
                changed.clear()
                latest = await self._store.get(order_id)
                if latest != order:
                    order = latest
                    yield orders_pb2.WatchOrderResponse(order=order_to_proto(order))

    async def _prices(self, lines: Sequence[LineRequest]) -> dict[str, Money]:
        """Current unit prices of the lines' products, from the catalog."""
        product_ids = list(dict.fromkeys(line.product_id for line in lines))
        request = catalog_pb2.BatchGetProductsRequest(product_ids=product_ids)
        try:
            response = await self._catalog.BatchGetProducts(request)
        except grpc.RpcError as err:
            raise StatusError.from_rpc_error(err) from None
        prices = {product.id: money.from_proto(product.price) for product in response.products}
        for product_id in product_ids:
            if product_id not in prices:
                raise not_found(
                    f"product {product_id} not found",
                    resource_type="product",
                    resource_name=product_id,
                    reason="PRODUCT_NOT_FOUND",
                    domain=DOMAIN,
                )
        return prices
