"""``shop verify`` on SQLite and PostgreSQL: states built with the real stores, then checked."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from shop import verify
from shop.catalog.domain import Product, ProductDraft, StockLine, merge_lines
from shop.catalog.store import MIGRATIONS as CATALOG_MIGRATIONS
from shop.catalog.store import CatalogStore
from shop.common.db import Database, Migration, database_url
from shop.common.ids import new_id
from shop.common.money import Money
from shop.common.times import utcnow
from shop.gateway.domain import LineItem, Progress, Saga, SagaState
from shop.gateway.store import MIGRATIONS as GATEWAY_MIGRATIONS
from shop.gateway.store import SagaStore
from shop.orders.domain import LineRequest, Order, price_items
from shop.orders.store import MIGRATIONS as ORDERS_MIGRATIONS
from shop.orders.store import OrdersStore
from shop.payments.domain import Payment
from shop.payments.provider import ChargeResult
from shop.payments.store import MIGRATIONS as PAYMENTS_MIGRATIONS
from shop.payments.store import PaymentsStore
from tests.conftest import POSTGRES_URL, require_postgres

MIGRATIONS: dict[str, list[Migration]] = {
    "orders": ORDERS_MIGRATIONS,
    "payments": PAYMENTS_MIGRATIONS,
    "catalog": CATALOG_MIGRATIONS,
    "gateway": GATEWAY_MIGRATIONS,
}


class Shop:
    """The four databases ``shop verify`` reads, with the stores that write them.

    What ``then`` writes is an hour old: settled for any saga timeout these tests use.
    """

    def __init__(self, data_dir: Path, url: str | None, dbs: dict[str, Database]) -> None:
        self.data_dir, self.url, self.dbs = data_dir, url, dbs
        self.then = utcnow() - timedelta(hours=1)
        self.orders_then = OrdersStore(dbs["orders"], clock=lambda: self.then)
        self.orders_now = OrdersStore(dbs["orders"])
        self.payments_then = PaymentsStore(dbs["payments"], clock=lambda: self.then)
        self.payments_now = PaymentsStore(dbs["payments"])
        self.catalog = CatalogStore(dbs["catalog"])
        self.journal = SagaStore(dbs["gateway"])

    async def product(self, sku: str, stock: int) -> Product:
        draft = ProductDraft(sku, f"Product {sku}", "", Money(250, "USD"), stock)
        return await self.catalog.add(draft, utcnow())

    async def order(self, *lines: tuple[Product, int], recent: bool = False) -> Order:
        requests = [LineRequest(product.id, quantity) for product, quantity in lines]
        items, total = price_items(requests, {product.id: product.price for product, _ in lines})
        store = self.orders_now if recent else self.orders_then
        order, _ = await store.create(new_id(), items, total)
        return order

    async def reserve(self, order: Order) -> None:
        lines = merge_lines(StockLine(i.product_id, i.quantity) for i in order.items)
        await self.catalog.reserve(order.id, lines, utcnow())

    async def pay(
        self, order_id: str, amount: Money, *, approved: bool = True, recent: bool = False
    ) -> Payment:
        store = self.payments_now if recent else self.payments_then
        payment, owned = await store.claim(new_id(), order_id, amount, "4242")
        assert owned
        return await store.settle(payment.id, ChargeResult(approved, new_id()))

    async def refund(self, payment: Payment) -> Payment:
        async def provider(_: Payment) -> str:
            return f"re_{payment.id}"

        return await self.payments_then.refund(payment.id, "test", provider)

    async def paid(self, *lines: tuple[Product, int]) -> tuple[Order, Payment]:
        """An order as a successful saga leaves it: reserved, paid, marked PAID."""
        order = await self.order(*lines)
        await self.reserve(order)
        payment = await self.pay(order.id, order.total)
        return await self.orders_then.mark_paid(order.id, payment.id), payment

    async def verify(self, saga_timeout: float = 60.0) -> tuple[int, list[dict[str, str]], Any]:
        out, err = io.StringIO(), io.StringIO()
        code = await verify.main(
            self.data_dir, self.url, saga_timeout=saga_timeout, out=out, err=err
        )
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        summary = json.loads(err.getvalue().splitlines()[-1]) if code != 2 else err.getvalue()
        return code, lines, summary


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def shop(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Shop]:
    """A migrated shop in SQLite files, or in one fresh PostgreSQL database with a schema per
    service (schema names are fixed, so the database is not shared)."""
    url: str | None = None
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_database")
        await _admin(f"DROP SCHEMA IF EXISTS {', '.join(MIGRATIONS)} CASCADE", url)
    async with _migrated(tmp_path / "data", url) as built:
        yield built


@pytest.fixture(scope="module")
def postgres_database() -> Iterator[str]:
    """One fresh PostgreSQL database for this module's tests (each empties it first)."""
    require_postgres()
    name = f"shop_verify_{uuid.uuid4().hex[:12]}"
    _in_a_thread(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        _in_a_thread(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _in_a_thread(work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` to the end on its own loop (fixtures may be set up inside a running one)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, work).result()


@pytest.fixture
async def sqlite_shop(tmp_path: Path) -> AsyncIterator[Shop]:
    """The SQLite shop alone, for checks whose logic does not depend on the database."""
    async with _migrated(tmp_path / "data", None) as built:
        yield built


@asynccontextmanager
async def _migrated(data_dir: Path, url: str | None) -> AsyncIterator[Shop]:
    dbs = {
        service: Database(database_url(service, data_dir=data_dir, url=url), schema=service)
        for service in MIGRATIONS
    }
    try:
        for service, migrations in MIGRATIONS.items():
            await dbs[service].migrate(migrations)
        yield Shop(data_dir, url, dbs)
    finally:
        for db in dbs.values():
            await db.close()


async def _admin(statement: str, url: str = POSTGRES_URL) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text(statement))
    finally:
        await engine.dispose()


async def _sql(db: Database, statement: str, **params: Any) -> None:
    async with db.transaction() as session:
        await session.execute(sa.text(statement), params)


async def test_a_consistent_shop_passes(shop: Shop) -> None:
    mug, tea = await shop.product("MUG", 10), await shop.product("TEA", 5)
    await shop.paid((mug, 2), (tea, 1), (mug, 1))  # two lines of one product: merged
    # A duplicate charge that was refunded beside the one that counts.
    order, _ = await shop.paid((tea, 1))
    await shop.refund(await shop.pay(order.id, order.total))
    # Compensated: refunded, released, cancelled (in the order a saga undoes them).
    undone = await shop.order((mug, 3))
    await shop.reserve(undone)
    await shop.refund(await shop.pay(undone.id, undone.total))
    await shop.catalog.release(undone.id, utcnow())
    await shop.orders_then.cancel(undone.id, "card declined")
    declined = await shop.order((tea, 2))
    await shop.pay(declined.id, declined.total, approved=False)
    await shop.orders_then.cancel(declined.id, "declined")
    # Created without the gateway (nothing reserved), then paid.
    direct = await shop.order((mug, 1))
    await shop.orders_then.mark_paid(direct.id, (await shop.pay(direct.id, direct.total)).id)
    # Still settling: PENDING since just now; cancelled just now, the refund still to come.
    await shop.reserve(await shop.order((mug, 1), recent=True))
    settling = await shop.order((tea, 1))
    await shop.pay(settling.id, settling.total)
    await shop.orders_now.cancel(settling.id, "timed out")
    await shop.pay(new_id(), Money(100, "USD"), recent=True)  # its order came after the read
    await shop.catalog.release(new_id(), utcnow())  # a release that came first: a marker
    # A restock while orders hold stock moves the initial stock by what it changed.
    await shop.catalog.upsert([ProductDraft("MUG", "Mug", "", Money(250, "USD"), 40)], utcnow())

    code, lines, summary = await shop.verify()

    assert (code, lines) == (0, [])
    assert summary == {
        "checked": {"orders": 7, "payments": 8, "products": 2, "reservations": 5},
        "violations": 0,
    }


async def test_every_broken_invariant_is_reported(shop: Shop) -> None:
    mug, tea, pen = [await shop.product(sku, 100) for sku in ("MUG", "TEA", "PEN")]
    unpaid = await shop.order((mug, 1))
    await shop.orders_then.mark_paid(unpaid.id, new_id())
    twice, _ = await shop.paid((mug, 1))
    await shop.pay(twice.id, twice.total)
    refunded, payment = await shop.paid((tea, 1))
    await shop.refund(payment)
    short = await shop.order((tea, 2))
    await shop.orders_then.mark_paid(
        short.id, (await shop.pay(short.id, Money(short.total.minor - 1, "USD"))).id
    )
    misnamed = await shop.order((tea, 1))
    await shop.pay(misnamed.id, misnamed.total)
    await shop.orders_then.mark_paid(misnamed.id, new_id())
    kept_money = await shop.order((mug, 1))
    await shop.pay(kept_money.id, kept_money.total)
    await shop.orders_then.cancel(kept_money.id, "out of stock")
    stuck = await shop.order((mug, 1))
    kept_stock = await shop.order((pen, 2))
    await shop.reserve(kept_stock)
    await shop.orders_then.cancel(kept_stock.id, "declined")
    given_back, _ = await shop.paid((pen, 1))
    await shop.catalog.release(given_back.id, utcnow())
    stray = new_id()
    await shop.pay(stray, Money(999, "USD"))
    await _sql(shop.dbs["catalog"], "UPDATE products SET stock = stock - 1 WHERE id = :i", i=mug.id)

    code, lines, summary = await shop.verify()

    assert code == 1
    assert summary["violations"] == len(lines) == 11
    found = {(line["invariant"], line.get("order_id") or line["product_id"]) for line in lines}
    assert found == {
        ("paid_order_payment", unpaid.id),
        ("paid_order_payment", twice.id),
        ("paid_order_payment", refunded.id),
        ("paid_order_payment", short.id),
        ("paid_order_payment", misnamed.id),
        ("cancelled_order_payment", kept_money.id),
        ("pending_order_timeout", stuck.id),
        ("order_stock", kept_stock.id),
        ("order_stock", given_back.id),
        ("payment_without_order", stray),
        ("stock_ledger", mug.id),
    }
    detail = {line.get("order_id") or line["product_id"]: line["detail"] for line in lines}
    assert detail[twice.id].startswith("PAID with 2 captured payments")
    assert f"refunded: {payment.id}" in detail[refunded.id]
    assert "captured 4.99 USD, the order's total is 5.00 USD" in detail[short.id]
    assert detail[misnamed.id].startswith("the order names payment ")
    assert detail[stuck.id].startswith("PENDING for 36")  # an hour, give or take a second
    assert detail[kept_stock.id].startswith(f"CANCELLED but holds 2 x {pen.id}")
    assert detail[mug.id] == (
        "stock is 98, the ledger says 99 (initial 100 - reserved 1 + released 0)"
    )
    assert {line["invariant"] for line in lines} == set(verify.INVARIANTS)


async def test_the_saga_timeout_decides_what_is_stuck(sqlite_shop: Shop) -> None:
    shop = sqlite_shop
    await shop.order((await shop.product("MUG", 1), 1))
    assert (await shop.verify(saga_timeout=7200))[0] == 0
    code, [line], _ = await shop.verify(saga_timeout=1800)
    assert (code, line["invariant"]) == (1, "pending_order_timeout")
    assert "longer than the saga timeout (1800 s)" in line["detail"]


async def test_a_reserved_quantity_other_than_the_order_is_reported(sqlite_shop: Shop) -> None:
    shop = sqlite_shop
    mug = await shop.product("MUG", 10)
    order, _ = await shop.paid((mug, 2))
    await _sql(
        shop.dbs["catalog"],
        "UPDATE reservation_items SET quantity = 3 WHERE order_id = :o",
        o=order.id,
    )
    await _sql(shop.dbs["catalog"], "UPDATE products SET stock = 7")  # the ledger still holds
    code, [line], _ = await shop.verify()
    assert (code, line["invariant"], line["order_id"]) == (1, "order_stock", order.id)
    assert line["detail"].startswith(f"reserved 3 x {mug.id}; the order has 2 x {mug.id}")


async def test_an_order_violation_names_its_saga(sqlite_shop: Shop) -> None:
    shop = sqlite_shop
    mug = await shop.product("MUG", 10)
    stuck, lost = await shop.order((mug, 1)), await shop.order((mug, 1))
    then = shop.then
    await shop.journal.create(
        Saga(
            id=(saga_id := new_id()),
            user_id=stuck.user_id,
            idempotency_key="k",
            fingerprint="f" * 64,
            items=(LineItem(mug.id, 1),),
            state=SagaState.COMPENSATING,
            owner="gateway-1",
            created_at=then,
            updated_at=then,
            deadline=then + timedelta(seconds=30),
            progress=Progress(order_id=stuck.id),
        )
    )
    _, lines, _ = await shop.verify()
    detail = {line["order_id"]: line["detail"] for line in lines}
    assert detail[stuck.id].endswith(f"; saga {saga_id} is COMPENSATING")
    assert detail[lost.id].endswith("; no saga in the journal")


async def test_a_catalog_from_before_the_ledger_is_migrated_then_verified(shop: Shop) -> None:
    mug = await shop.product("MUG", 10)
    await shop.paid((mug, 4))
    old = await shop.order((mug, 1))
    await shop.reserve(old)
    await shop.catalog.release(old.id, utcnow())
    await shop.orders_then.cancel(old.id, "declined")
    catalog = shop.dbs["catalog"]
    await _sql(catalog, "ALTER TABLE products DROP COLUMN initial_stock")
    await _sql(catalog, "DELETE FROM schema_migrations WHERE version = 2")

    code, lines, message = await shop.verify()
    assert (code, lines) == (2, [])
    assert "no products.initial_stock yet: start the shop once" in message

    assert await catalog.migrate(CATALOG_MIGRATIONS) == 2
    async with catalog.read() as session:
        initial = await session.scalar(sa.text("SELECT initial_stock FROM products"))
    assert initial == 10  # 6 on hand + 4 held: the ledger holds from now on
    assert (await shop.verify())[:2] == (0, [])


async def test_missing_databases_exit_2_and_create_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    out, err = io.StringIO(), io.StringIO()
    assert await verify.main(missing, None, out=out, err=err) == 2
    assert out.getvalue() == ""
    assert "no orders, payments, catalog database found" in err.getvalue()
    assert "--data-dir" in err.getvalue() and "--database-url" in err.getvalue()
    assert not missing.exists()

    orders = Database(database_url("orders", data_dir=tmp_path, url=None), schema="orders")
    await orders.migrate(ORDERS_MIGRATIONS)
    await orders.close()
    (tmp_path / "payments.db").touch()  # a file without tables is no database of the shop
    err = io.StringIO()
    assert await verify.main(tmp_path, None, out=io.StringIO(), err=err) == 2
    assert "no payments, catalog database found" in err.getvalue()
    assert not (tmp_path / "catalog.db").exists()


@pytest.mark.postgres
async def test_missing_schemas_exit_2_without_naming_the_url(
    tmp_path: Path, postgres_database: str
) -> None:
    await _admin(f"DROP SCHEMA IF EXISTS {', '.join(MIGRATIONS)} CASCADE", postgres_database)
    err = io.StringIO()
    assert await verify.main(tmp_path, postgres_database, out=io.StringIO(), err=err) == 2
    assert "no orders, payments, catalog database found in the database of --database-url" in (
        err.getvalue()
    )
    assert postgres_database.rsplit("/", 1)[1] not in err.getvalue()
    assert not (tmp_path / "orders.db").exists()


def test_run_is_main_for_synchronous_callers(tmp_path: Path) -> None:
    err = io.StringIO()
    assert verify.run(tmp_path / "none", None, out=io.StringIO(), err=err) == 2
    assert "pass --data-dir" in err.getvalue()


def test_a_violation_prints_its_subject_by_name() -> None:
    violation = verify.Violation("stock_ledger", "product_id", "p1", "stock is 1")
    assert violation.as_dict() == {
        "invariant": "stock_ledger",
        "product_id": "p1",
        "detail": "stock is 1",
    }
