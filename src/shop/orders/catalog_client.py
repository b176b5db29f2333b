"""Orders' catalog client: product reads that outlive a short catalog outage, marked stale.

:class:`StaleCatalog` wraps the CatalogService stub. ``GetProduct`` and ``BatchGetProducts``
remember every product of a good reply (at most ``max_products``, for ``max_age`` seconds);
when a read fails with UNAVAILABLE or DEADLINE_EXCEEDED and every product it asked for is
remembered, it answers with those instead. Such an answer is marked: the call being served
gets the response trailer ``x-shop-stale: catalog`` and ``orders.catalog_stale`` is logged.
Any other failure, or a product not remembered, fails as before.

Peer channels wait for a ready catalog until the deadline, so a read that could be answered
from memory gets its own deadline (``read_timeout``, at most half of what is left of the call
being served) when the caller set none: the remembered answer still arrives in time.

Writes (``ReserveStock``, ``ReleaseStock``, ...) and the other reads go straight to the stub:
stock is never reserved on a remembered answer.

Example::

    catalog = catalog_client(ctx.channel("catalog"))
    servicer = OrderServicer(store, catalog)
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import grpc

from grpckit import current_call, get_logger
from shop.api.catalog.v1 import catalog_pb2
from shop.api.catalog.v1.catalog_pb2_grpc import CatalogServiceStub

if TYPE_CHECKING:
    from shop.api.catalog.v1.catalog_pb2_grpc import CatalogServiceAsyncStub

__all__ = ["STALE_CODES", "STALE_TRAILER", "StaleCatalog", "catalog_client"]

#: The trailer (key, value) on a call that was answered with remembered catalog data.
STALE_TRAILER = ("x-shop-stale", "catalog")
#: Failures that a remembered answer may stand in for: the catalog could not be reached.
STALE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

_LOG = get_logger("shop.orders.catalog")
Product = catalog_pb2.Product


class StaleCatalog:
    """The catalog stub, with product reads answered from memory while the catalog is down.

    Methods are awaited like the stub's (keyword arguments such as ``timeout`` pass through).

    Example::

        catalog = StaleCatalog(CatalogServiceStub(channel), max_age=600)
        reply = await catalog.BatchGetProducts(request)  # remembered if the catalog is down
    """

    def __init__(
        self,
        stub: CatalogServiceAsyncStub,
        *,
        max_age: float = 600.0,
        max_products: int = 10_000,
        read_timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_age <= 0 or max_products < 1 or read_timeout <= 0:
            raise ValueError("max_age, max_products and read_timeout must be positive")
        self._stub, self._clock = stub, clock
        self._max_age, self._max_products = max_age, max_products
        self._read_timeout = read_timeout
        self._remembered: OrderedDict[str, tuple[float, Product]] = OrderedDict()
        #: Reads answered from memory so far.
        self.stale_reads = 0
        self.CreateProduct = stub.CreateProduct
        self.ListProducts = stub.ListProducts
        self.SearchProducts = stub.SearchProducts
        self.ReserveStock = stub.ReserveStock
        self.ReleaseStock = stub.ReleaseStock
        self.ImportProducts = stub.ImportProducts

    async def GetProduct(
        self, request: catalog_pb2.GetProductRequest, **kwargs: Any
    ) -> catalog_pb2.GetProductResponse:
        """The stub's GetProduct; a remembered product when the catalog cannot be reached."""
        ids = [request.product_id]
        try:
            response = await self._stub.GetProduct(request, **self._bounded(ids, kwargs))
        except grpc.RpcError as err:
            (product,) = self._stale(ids, err)
            return catalog_pb2.GetProductResponse(product=product)
        self._remember([response.product])
        return response

    async def BatchGetProducts(
        self, request: catalog_pb2.BatchGetProductsRequest, **kwargs: Any
    ) -> catalog_pb2.BatchGetProductsResponse:
        """The stub's BatchGetProducts; remembered products when the catalog cannot be reached."""
        ids = list(request.product_ids)
        try:
            response = await self._stub.BatchGetProducts(request, **self._bounded(ids, kwargs))
        except grpc.RpcError as err:
            products = self._stale(ids, err)
            return catalog_pb2.BatchGetProductsResponse(products=products)
        self._remember(response.products)
        return response

    def __len__(self) -> int:
        """Products remembered now (some may be too old to be used)."""
        return len(self._remembered)

    def _remember(self, products: Sequence[Product]) -> None:
        now = self._clock()
        for product in products:
            kept = Product()
            kept.CopyFrom(product)
            self._remembered[product.id] = (now, kept)
            self._remembered.move_to_end(product.id)
        while self._remembered and (
            len(self._remembered) > self._max_products
            or next(iter(self._remembered.values()))[0] <= now - self._max_age
        ):
            self._remembered.popitem(last=False)

    def _recall(self, product_ids: Sequence[str]) -> tuple[list[Product], float] | None:
        """The remembered products in request order and when the oldest was read, or None."""
        now = self._clock()
        oldest = now
        products: list[Product] = []
        for product_id in product_ids:
            entry = self._remembered.get(product_id)
            if entry is None or entry[0] <= now - self._max_age:
                return None
            oldest = min(oldest, entry[0])
            products.append(entry[1])
        return (products, oldest) if products else None

    def _bounded(self, product_ids: Sequence[str], kwargs: dict[str, Any]) -> dict[str, Any]:
        """``kwargs`` with a ``timeout`` that leaves time to answer from memory, if it could."""
        if kwargs.get("timeout") is not None or self._recall(product_ids) is None:
            return kwargs
        timeout = self._read_timeout
        call = current_call()
        remaining = call.time_remaining() if call is not None else None
        if remaining is not None:
            timeout = min(timeout, remaining / 2)
        return {**kwargs, "timeout": timeout}

    def _stale(self, product_ids: Sequence[str], err: grpc.RpcError) -> list[Product]:
        """The remembered products, marked as stale; re-raises ``err`` when that cannot be."""
        code = err.code() if isinstance(err, grpc.aio.AioRpcError) else None
        recalled = self._recall(product_ids) if code in STALE_CODES else None
        if code is None or recalled is None:
            raise err
        products, oldest = recalled
        self.stale_reads += 1
        call = current_call()
        if call is not None and STALE_TRAILER not in call.response_trailers:
            call.add_response_trailer(*STALE_TRAILER)
        _LOG.warning(
            "orders.catalog_stale",
            code=code.name,
            products=len(products),
            age_seconds=round(self._clock() - oldest, 3),
            method=call.method if call is not None else "",
        )
        return products


def catalog_client(
    channel: grpc.aio.Channel,
    *,
    max_age: float = 600.0,
    max_products: int = 10_000,
    read_timeout: float = 2.0,
) -> CatalogServiceAsyncStub:
    """A :class:`StaleCatalog` over ``channel``, typed as the stub it stands in for.

    Its methods are awaited like the stub's (they are coroutines, not ``grpc.aio`` call
    objects: awaiting them is the one use orders makes).

    Example: ``OrderServicer(store, catalog_client(ctx.channel("catalog")))``
    """
    stale = StaleCatalog(
        CatalogServiceStub(channel),
        max_age=max_age,
        max_products=max_products,
        read_timeout=read_timeout,
    )
    return cast("CatalogServiceAsyncStub", stale)
