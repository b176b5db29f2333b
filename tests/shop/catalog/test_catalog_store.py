"""CatalogStore against SQLite and PostgreSQL (the shared ``database`` fixture)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from shop.catalog.domain import (
    OutOfStockError,
    Product,
    ProductDraft,
    ProductNotFoundError,
    ReservationMismatchError,
    ReservationReleasedError,
    SkuTakenError,
    StockLine,
    merge_lines,
)
from shop.catalog.store import MIGRATIONS, CatalogStore
from shop.common.db import Database
from shop.common.ids import new_id
from shop.common.money import Money

NOW = datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)


@pytest.fixture
async def store(database: Database) -> CatalogStore:
    await database.migrate(MIGRATIONS)
    return CatalogStore(database)


def draft(sku: str, *, stock: int = 10, name: str = "", description: str = "") -> ProductDraft:
    return ProductDraft(sku, name or f"Product {sku}", description, Money(1999, "USD"), stock)


async def stock_of(store: CatalogStore, *products: Product) -> list[int]:
    found = await store.get_many([p.id for p in products])
    return [found[p.id].stock for p in products]


async def test_add_then_read_back(store: CatalogStore) -> None:
    product = await store.add(draft("MUG-1", description="Blue"), NOW)
    assert await store.get(product.id) == product
    assert product.price == Money(1999, "USD")
    assert product.created_at == product.updated_at == NOW
    assert await store.get(new_id()) is None


async def test_get_many_returns_only_what_exists(store: CatalogStore) -> None:
    a, b = await store.add(draft("A"), NOW), await store.add(draft("B"), NOW)
    assert await store.get_many([b.id, new_id(), a.id, b.id]) == {a.id: a, b.id: b}


async def test_duplicate_sku_is_refused_even_when_racing(store: CatalogStore) -> None:
    results = await asyncio.gather(
        *(store.add(draft("SAME"), NOW) for _ in range(4)), return_exceptions=True
    )
    assert sum(isinstance(r, Product) for r in results) == 1
    assert sum(isinstance(r, SkuTakenError) for r in results) == 3


async def test_pages_are_ordered_by_sku(store: CatalogStore) -> None:
    for sku in ["C", "A", "E", "B", "D"]:
        await store.add(draft(sku), NOW)
    first, more = await store.page(offset=0, limit=2)
    assert ([p.sku for p in first], more) == (["A", "B"], True)
    last, more = await store.page(offset=4, limit=2)
    assert ([p.sku for p in last], more) == (["E"], False)


async def test_search_needs_every_word_in_any_field(store: CatalogStore) -> None:
    await store.add(draft("MUG-BLUE", name="Blue Mug", description="Ceramic, 300 ml"), NOW)
    await store.add(draft("MUG-RED", name="Red mug", description="Stoneware"), NOW)
    await store.add(draft("TEE-1", name="T-shirt", description="100% cotton, blue_ish"), NOW)

    async def skus(*words: str) -> list[str]:
        found, _ = await store.page(offset=0, limit=10, words=words)
        return [p.sku for p in found]

    assert await skus("mug") == ["MUG-BLUE", "MUG-RED"]
    assert await skus("mug", "ceramic") == ["MUG-BLUE"]
    assert await skus("blue") == ["MUG-BLUE", "TEE-1"]
    assert await skus("tee-") == ["TEE-1"]
    assert await skus("100%") == ["TEE-1"]  # % and _ are literal, not wildcards
    assert await skus("t_shirt") == []
    assert await skus("e_i") == ["TEE-1"]
    assert await skus("mug", "cotton") == []


async def test_reserve_takes_stock_and_replays_are_free(store: CatalogStore) -> None:
    a, b = await store.add(draft("A", stock=5), NOW), await store.add(draft("B", stock=5), NOW)
    lines = merge_lines([StockLine(a.id, 2), StockLine(b.id, 1), StockLine(a.id, 1)])
    await store.reserve("order-1", lines, LATER)
    await store.reserve("order-1", lines, LATER)
    assert await stock_of(store, a, b) == [2, 4]
    assert (await store.get_many([a.id]))[a.id].updated_at == LATER


async def test_a_replay_with_other_items_is_refused(store: CatalogStore) -> None:
    a = await store.add(draft("A", stock=5), NOW)
    await store.reserve("order-1", (StockLine(a.id, 1),), NOW)
    with pytest.raises(ReservationMismatchError):
        await store.reserve("order-1", (StockLine(a.id, 2),), NOW)
    assert await stock_of(store, a) == [4]


async def test_reserve_is_all_or_nothing(store: CatalogStore) -> None:
    a, b = await store.add(draft("A", stock=5), NOW), await store.add(draft("B", stock=1), NOW)
    lines = merge_lines([StockLine(a.id, 2), StockLine(b.id, 3)])
    with pytest.raises(OutOfStockError) as caught:
        await store.reserve("order-1", lines, NOW)
    assert (caught.value.product_id, caught.value.requested, caught.value.available) == (b.id, 3, 1)
    assert await stock_of(store, a, b) == [5, 1]
    missing = new_id()
    with pytest.raises(ProductNotFoundError):
        await store.reserve(
            "order-1", merge_lines([StockLine(a.id, 1), StockLine(missing, 1)]), NOW
        )
    assert await stock_of(store, a, b) == [5, 1]
    await store.reserve("order-1", (StockLine(a.id, 5),), NOW)  # nothing was left behind
    assert await stock_of(store, a) == [0]


async def test_release_returns_stock_once(store: CatalogStore) -> None:
    a = await store.add(draft("A", stock=5), NOW)
    await store.reserve("order-1", (StockLine(a.id, 3),), NOW)
    assert await store.release("order-1", LATER)
    assert not await store.release("order-1", LATER)
    assert await stock_of(store, a) == [5]
    with pytest.raises(ReservationReleasedError):
        await store.reserve("order-1", (StockLine(a.id, 3),), NOW)
    assert await stock_of(store, a) == [5]


async def test_a_release_that_comes_first_blocks_the_late_reservation(store: CatalogStore) -> None:
    a = await store.add(draft("A", stock=5), NOW)
    assert not await store.release("order-1", NOW)
    with pytest.raises(ReservationReleasedError):
        await store.reserve("order-1", (StockLine(a.id, 1),), NOW)
    assert await stock_of(store, a) == [5]


async def test_concurrent_orders_never_oversell(store: CatalogStore) -> None:
    a = await store.add(draft("A", stock=5), NOW)
    results = await asyncio.gather(
        *(store.reserve(f"order-{i}", (StockLine(a.id, 1),), NOW) for i in range(12)),
        return_exceptions=True,
    )
    assert sum(r is None for r in results) == 5
    assert sum(isinstance(r, OutOfStockError) for r in results) == 7
    assert await stock_of(store, a) == [0]


async def test_concurrent_retries_of_one_order_take_stock_once(store: CatalogStore) -> None:
    a = await store.add(draft("A", stock=5), NOW)
    lines = (StockLine(a.id, 2),)
    await asyncio.gather(*(store.reserve("order-1", lines, NOW) for _ in range(6)))
    assert await stock_of(store, a) == [3]
    released = await asyncio.gather(*(store.release("order-1", NOW) for _ in range(6)))
    assert released.count(True) == 1
    assert await stock_of(store, a) == [5]


async def test_racing_release_and_reserve_never_strand_stock(store: CatalogStore) -> None:
    a = await store.add(draft("A", stock=5), NOW)
    for i in range(30):  # the race window is small: try it many times
        await asyncio.gather(
            store.reserve(f"order-{i}", (StockLine(a.id, 2),), NOW),
            store.release(f"order-{i}", NOW),
            return_exceptions=True,
        )
        assert not await store.release(f"order-{i}", NOW)
        assert await stock_of(store, a) == [5]


async def test_upsert_creates_then_updates_by_sku(store: CatalogStore) -> None:
    existing = await store.add(draft("A", stock=1), NOW)
    created = await store.upsert(
        [draft("A", stock=7, name="New name"), draft("B"), draft("B", stock=3)], LATER
    )
    assert created == [False, True, False]
    (a, b), _ = await store.page(offset=0, limit=10)
    assert (a.id, a.name, a.stock, a.created_at, a.updated_at) == (
        existing.id,
        "New name",
        7,
        NOW,
        LATER,
    )
    assert (b.sku, b.stock) == ("B", 3)


async def test_concurrent_upserts_of_one_sku_make_one_product(store: CatalogStore) -> None:
    results = await asyncio.gather(*(store.upsert([draft("A", stock=i)], NOW) for i in range(4)))
    assert sorted(r[0] for r in results) == [False, False, False, True]
    products, _ = await store.page(offset=0, limit=10)
    assert len(products) == 1
