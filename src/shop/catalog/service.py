"""The CatalogService servicer: validates requests, converts proto <-> domain, calls the store.

GetProduct and BatchGetProducts read through a :class:`~shop.catalog.cache.ProductCache` when
one is given; every write that changes products invalidates them once it has committed
(shielded from cancellation, so a caller hanging up cannot leave them cached). ListProducts
and SearchProducts read the database: their results depend on the page and the query, and
any stock change would invalidate every page holding the product.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from shop.api.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shop.catalog import validation
from shop.catalog.cache import ProductCache
from shop.catalog.domain import (
    ImportSummary,
    Product,
    ProductDraft,
    ProductNotFoundError,
    search_words,
)
from shop.catalog.errors import status_errors
from shop.catalog.store import CatalogStore
from shop.common.money import to_proto
from shop.common.paging import Page

Context = grpc.aio.ServicerContext[Any, Any]
Clock = Callable[[], datetime]
IMPORT_BATCH_SIZE = 200


def utc_now() -> datetime:
    return datetime.now(UTC)


class CatalogServicer(catalog_pb2_grpc.CatalogServiceServicer):
    """Products and stock over gRPC; every stock change is one store transaction.

    ``cache``: where GetProduct and BatchGetProducts read first (None: the store only).

    Example: ``CatalogServicer(CatalogStore(db), cache=ProductCache(redis))``
    """

    def __init__(
        self, store: CatalogStore, *, clock: Clock = utc_now, cache: ProductCache | None = None
    ) -> None:
        self._store, self._clock, self._cache = store, clock, cache
        self._invalidating: set[asyncio.Future[None]] = set()

    async def CreateProduct(
        self, request: catalog_pb2.CreateProductRequest, context: Context
    ) -> catalog_pb2.CreateProductResponse:
        draft = validation.create_product(request)
        with status_errors():
            product = await self._store.add(draft, self._clock())
        await self._invalidate([product.id])
        return catalog_pb2.CreateProductResponse(product=product_to_proto(product))

    async def GetProduct(
        self, request: catalog_pb2.GetProductRequest, context: Context
    ) -> catalog_pb2.GetProductResponse:
        (product,) = await self._existing([validation.product_id(request.product_id)])
        return catalog_pb2.GetProductResponse(product=product)

    async def BatchGetProducts(
        self, request: catalog_pb2.BatchGetProductsRequest, context: Context
    ) -> catalog_pb2.BatchGetProductsResponse:
        products = await self._existing(validation.product_ids(request.product_ids))
        return catalog_pb2.BatchGetProductsResponse(products=products)

    async def ListProducts(
        self, request: catalog_pb2.ListProductsRequest, context: Context
    ) -> catalog_pb2.ListProductsResponse:
        page = validation.page(request.page_size, request.page_token)
        products, token = await self._page(page, ())
        return catalog_pb2.ListProductsResponse(products=products, next_page_token=token)

    async def SearchProducts(
        self, request: catalog_pb2.SearchProductsRequest, context: Context
    ) -> catalog_pb2.SearchProductsResponse:
        page = validation.page(request.page_size, request.page_token, request.query)
        products, token = await self._page(page, search_words(request.query))
        return catalog_pb2.SearchProductsResponse(products=products, next_page_token=token)

    async def ReserveStock(
        self, request: catalog_pb2.ReserveStockRequest, context: Context
    ) -> catalog_pb2.ReserveStockResponse:
        order_id, lines = validation.reservation(request.order_id, request.items)
        with status_errors():
            await self._store.reserve(order_id, lines, self._clock())
        await self._invalidate(line.product_id for line in lines)
        return catalog_pb2.ReserveStockResponse()

    async def ReleaseStock(
        self, request: catalog_pb2.ReleaseStockRequest, context: Context
    ) -> catalog_pb2.ReleaseStockResponse:
        if await self._store.release(validation.order_id(request.order_id), self._clock()):
            # the store does not say which products got stock back
            await self._invalidate(None)
        return catalog_pb2.ReleaseStockResponse()

    async def ImportProducts(
        self, request_iterator: AsyncIterator[catalog_pb2.ImportProductsRequest], context: Context
    ) -> catalog_pb2.ImportProductsResponse:
        """Upsert by sku in batches that commit as they fill; invalid products are reported."""
        summary = ImportSummary()
        batch: list[ProductDraft] = []
        index = 0
        async for request in request_iterator:
            draft, violations = validation.draft(request.product, "product.")
            if violations:
                summary.reject(index, request.product.sku, violations)
            else:
                batch.append(draft)
            if len(batch) >= IMPORT_BATCH_SIZE:
                summary.stored(await self._upsert(batch))
                batch.clear()
            index += 1
        if batch:
            summary.stored(await self._upsert(batch))
        return import_to_proto(summary)

    async def _upsert(self, batch: Sequence[ProductDraft]) -> list[bool]:
        created = await self._store.upsert(batch, self._clock())
        if not all(created):  # updated by sku: their ids are not known here
            await self._invalidate(None)
        return created

    async def _invalidate(self, product_ids: Iterable[str] | None) -> None:
        """Drop changed products (None: all) from the cache, even if this call is cancelled."""
        if self._cache is None:
            return
        done: Awaitable[None] = (
            self._cache.invalidate_all()
            if product_ids is None
            else self._cache.invalidate(list(product_ids))
        )
        task = asyncio.ensure_future(done)
        self._invalidating.add(task)  # the loop keeps weak references only
        task.add_done_callback(self._invalidating.discard)
        await asyncio.shield(task)

    async def _existing(self, product_ids: Sequence[str]) -> list[catalog_pb2.Product]:
        """The products in request order; NOT_FOUND naming the first unknown id."""
        if self._cache is None:
            found = await self._load(product_ids)
        else:
            found = await self._cache.get_many(product_ids, self._load)
        with status_errors():
            for product_id in product_ids:
                if product_id not in found:
                    raise ProductNotFoundError(product_id)
        return [found[product_id] for product_id in product_ids]

    async def _load(self, product_ids: Sequence[str]) -> dict[str, catalog_pb2.Product]:
        found = await self._store.get_many(product_ids)
        return {product_id: product_to_proto(p) for product_id, p in found.items()}

    async def _page(
        self, page: Page, words: Sequence[str]
    ) -> tuple[list[catalog_pb2.Product], str]:
        products, more = await self._store.page(offset=page.offset, limit=page.size, words=words)
        return [product_to_proto(p) for p in products], page.next_token(len(products), more)


def product_to_proto(product: Product) -> catalog_pb2.Product:
    created_at, updated_at = Timestamp(), Timestamp()
    created_at.FromDatetime(product.created_at)
    updated_at.FromDatetime(product.updated_at)
    return catalog_pb2.Product(
        id=product.id,
        sku=product.sku,
        name=product.name,
        description=product.description,
        price=to_proto(product.price),
        stock=product.stock,
        created_at=created_at,
        updated_at=updated_at,
    )


def import_to_proto(summary: ImportSummary) -> catalog_pb2.ImportProductsResponse:
    return catalog_pb2.ImportProductsResponse(
        created=summary.created,
        updated=summary.updated,
        failed=summary.failed,
        failures=[
            catalog_pb2.ImportFailure(index=f.index, sku=f.sku, reason=f.reason)
            for f in summary.failures
        ],
    )
