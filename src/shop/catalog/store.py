"""Catalog persistence: products, stock reservations, migrations and :class:`CatalogStore`.

Stock moves only through conditional UPDATEs (``stock >= wanted``), so concurrent
reservations can never oversell, on SQLite or PostgreSQL. A reservation row per order
makes ReserveStock idempotent and ReleaseStock safe to repeat or to arrive first.

Each product also keeps ``initial_stock``, so that ``stock == initial_stock - reserved +
released`` (summed over its reservation items) holds at every commit; ``shop verify`` checks it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Connection, CursorResult
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shop.catalog.domain import (
    OutOfStockError,
    Product,
    ProductDraft,
    ProductNotFoundError,
    Reservation,
    ReservationStatus,
    SkuTakenError,
    StockLine,
    check_replay,
    new_product,
)
from shop.common.db import Database, Migration
from shop.common.ids import new_id
from shop.common.money import Money
from shop.common.times import as_utc

T = TypeVar("T")


class _Base(DeclarativeBase):
    metadata = sa.MetaData()


class ProductRow(_Base):
    """A product; ``stock`` is what is left after reservations and never goes below zero."""

    __tablename__ = "products"
    __table_args__ = (sa.CheckConstraint("stock >= 0", name="ck_products_stock"),)

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    sku: Mapped[str] = mapped_column(sa.String(64), unique=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    description: Mapped[str] = mapped_column(sa.Text)
    price_minor: Mapped[int] = mapped_column(sa.BigInteger)
    currency: Mapped[str] = mapped_column(sa.String(3))
    stock: Mapped[int] = mapped_column(sa.BigInteger)
    #: The stock it was created with, moved by each import by what the import changed in
    #: ``stock``: reservations and releases leave it alone.
    initial_stock: Mapped[int] = mapped_column(sa.BigInteger)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


class ReservationRow(_Base):
    """One order's reservation; a RELEASED row without items is a release that came first."""

    __tablename__ = "reservations"

    order_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(16))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


class ReservationItemRow(_Base):
    """Units of one product held by one reservation."""

    __tablename__ = "reservation_items"

    order_id: Mapped[str] = mapped_column(
        sa.ForeignKey("reservations.order_id", ondelete="CASCADE"), primary_key=True
    )
    product_id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    quantity: Mapped[int] = mapped_column(sa.BigInteger)


METADATA = _Base.metadata
_PRODUCTS = METADATA.tables["products"]


def _add_initial_stock(conn: Connection) -> None:
    """Add ``products.initial_stock`` to a database created before it existed.

    Migration 1 creates the tables as they are now, so a new database has the column already.
    An existing product gets the value that makes its ledger hold today: stock + units held.
    """
    if "initial_stock" in {column["name"] for column in sa.inspect(conn).get_columns("products")}:
        return
    conn.execute(sa.text("ALTER TABLE products ADD COLUMN initial_stock BIGINT NOT NULL DEFAULT 0"))
    held = (
        sa.select(sa.func.coalesce(sa.func.sum(ReservationItemRow.quantity), 0))
        .join(ReservationRow, ReservationRow.order_id == ReservationItemRow.order_id)
        .where(
            ReservationItemRow.product_id == _PRODUCTS.c.id,
            ReservationRow.status == ReservationStatus.RESERVED.value,
        )
        .scalar_subquery()
    )
    conn.execute(_PRODUCTS.update().values(initial_stock=_PRODUCTS.c.stock + held))


MIGRATIONS: list[Migration] = [
    Migration(1, "create products and reservations", lambda conn: METADATA.create_all(conn)),
    Migration(2, "products.initial_stock (the stock ledger's start)", _add_initial_stock),
]

# An import's update of one product: ``initial_stock`` moves by what the import changes in
# ``stock`` (SET reads the row as it was before the update, and on PostgreSQL the row as the
# last concurrent reservation left it), so the ledger holds across restocks.
_RESTOCK = (
    _PRODUCTS.update()
    .where(_PRODUCTS.c.id == sa.bindparam("product_id"))
    .values(initial_stock=_PRODUCTS.c.initial_stock + sa.bindparam("new_stock") - _PRODUCTS.c.stock)
)


class CatalogStore:
    """Reads and writes products and reservations; takes and returns domain values."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, draft: ProductDraft, now: datetime) -> Product:
        """Create a product; raises SkuTakenError when the sku is in use."""
        product = new_product(draft, product_id=new_id(), now=now)
        try:
            async with self._db.transaction() as session:
                await session.execute(sa.insert(ProductRow).values(**_columns(product)))
        except exc.IntegrityError:
            async with self._db.read() as session:
                if await _id_by_sku(session, draft.sku) is not None:
                    raise SkuTakenError(draft.sku) from None
            raise
        return product

    async def get(self, product_id: str) -> Product | None:
        return (await self.get_many([product_id])).get(product_id)

    async def get_many(self, product_ids: Sequence[str]) -> dict[str, Product]:
        """The products that exist among ``product_ids``, by id."""
        async with self._db.read() as session:
            rows = await session.scalars(
                sa.select(ProductRow).where(ProductRow.id.in_(set(product_ids)))
            )
            return {row.id: _to_domain(row) for row in rows}

    async def page(
        self, *, offset: int, limit: int, words: Sequence[str] = ()
    ) -> tuple[list[Product], bool]:
        """Products by sku that contain every word (ignoring case), and whether more follow."""
        query = sa.select(ProductRow).order_by(ProductRow.sku).offset(offset).limit(limit + 1)
        for word in words:
            query = query.where(
                sa.or_(
                    *(
                        sa.func.lower(column).contains(word, autoescape=True)
                        for column in (ProductRow.sku, ProductRow.name, ProductRow.description)
                    )
                )
            )
        async with self._db.read() as session:
            rows = list(await session.scalars(query))
        return [_to_domain(row) for row in rows[:limit]], len(rows) > limit

    async def reserve(self, order_id: str, lines: tuple[StockLine, ...], now: datetime) -> None:
        """Take stock for an order, all lines or none. ``lines`` come from merge_lines.

        Raises ProductNotFoundError, OutOfStockError, ReservationMismatchError or
        ReservationReleasedError.
        """
        try:
            async with self._db.transaction() as session:
                existing = await _reservation(session, order_id)
                if existing is not None:
                    check_replay(existing, lines)
                    return
                await session.execute(sa.insert(ReservationRow).values(
                    order_id=order_id, status=ReservationStatus.RESERVED.value,
                    created_at=now, updated_at=now,
                ))  # fmt: skip
                for line in lines:
                    await _take(session, line, now)
                await session.execute(sa.insert(ReservationItemRow), [
                    {"order_id": order_id, "product_id": ln.product_id, "quantity": ln.quantity}
                    for ln in lines
                ])  # fmt: skip
        except exc.IntegrityError:
            # A concurrent ReserveStock or ReleaseStock of this order committed first.
            async with self._db.read() as session:
                existing = await _reservation(session, order_id)
            if existing is None:
                raise
            check_replay(existing, lines)

    async def release(self, order_id: str, now: datetime) -> bool:
        """Give an order's stock back; False when it held none. Safe to repeat.

        A release that arrives before its reservation leaves a RELEASED marker, so the late
        reservation is refused instead of holding stock for an order that was given up.
        """
        return await _once_more_on_conflict(lambda: self._release(order_id, now))

    async def _release(self, order_id: str, now: datetime) -> bool:
        mark_released = (
            sa.update(ReservationRow)
            .where(
                ReservationRow.order_id == order_id,
                ReservationRow.status == ReservationStatus.RESERVED.value,
            )
            .values(status=ReservationStatus.RELEASED.value, updated_at=now)
        )
        async with self._db.transaction() as session:
            released = await session.execute(mark_released)
            if _rowcount(released) == 0:
                existing = await _reservation(session, order_id)
                if existing is None:
                    session.add(ReservationRow(
                        order_id=order_id, status=ReservationStatus.RELEASED.value,
                        created_at=now, updated_at=now,
                    ))  # fmt: skip
                    return False
                if existing.status is not ReservationStatus.RESERVED:
                    return False
                # A concurrent ReserveStock committed between our UPDATE and SELECT (each
                # statement sees its own snapshot under READ COMMITTED): release it now.
                if _rowcount(await session.execute(mark_released)) == 0:
                    return False
            for line in await _lines(session, order_id):
                await session.execute(
                    sa.update(ProductRow)
                    .where(ProductRow.id == line.product_id)
                    .values(stock=ProductRow.stock + line.quantity, updated_at=now)
                )
            return True

    async def upsert(self, drafts: Sequence[ProductDraft], now: datetime) -> list[bool]:
        """Create or update (by sku) each draft in one transaction; True where one was created."""
        return await _once_more_on_conflict(lambda: self._upsert(drafts, now))

    async def _upsert(self, drafts: Sequence[ProductDraft], now: datetime) -> list[bool]:
        """Three statements per batch: find the skus, bulk insert, bulk update by id."""
        async with self._db.transaction() as session:
            skus = {draft.sku for draft in drafts}
            rows = await session.execute(
                sa.select(ProductRow.sku, ProductRow.id).where(ProductRow.sku.in_(skus))
            )
            ids: dict[str, str] = {sku: product_id for sku, product_id in rows}
            created: list[bool] = []
            for draft in drafts:
                created.append(draft.sku not in ids)
                ids.setdefault(draft.sku, "")  # "": new, a later draft of the sku updates it
            latest = {draft.sku: draft for draft in drafts}  # a repeated sku: the last one wins
            inserts = [
                _columns(new_product(d, product_id=new_id(), now=now))
                for sku, d in latest.items()
                if not ids[sku]
            ]
            updates = [
                {
                    "product_id": ids[sku],
                    **_draft_columns(d),
                    "new_stock": d.stock,
                    "updated_at": now,
                }
                for sku, d in latest.items()
                if ids[sku]
            ]
            if inserts:
                await session.execute(sa.insert(ProductRow), inserts)
            if updates:  # by id: rows lock in the order ReserveStock locks them
                updates.sort(key=lambda columns: str(columns["product_id"]))
                connection = await session.connection()
                await connection.execute(_RESTOCK, updates)
        return created


async def _once_more_on_conflict(operation: Callable[[], Awaitable[T]]) -> T:
    """Run a write again when a concurrent writer inserted the same key first."""
    try:
        return await operation()
    except exc.IntegrityError:
        return await operation()


async def _take(session: AsyncSession, line: StockLine, now: datetime) -> None:
    taken = await session.execute(
        sa.update(ProductRow)
        .where(ProductRow.id == line.product_id, ProductRow.stock >= line.quantity)
        .values(stock=ProductRow.stock - line.quantity, updated_at=now)
    )
    if _rowcount(taken) == 0:
        available = await session.scalar(
            sa.select(ProductRow.stock).where(ProductRow.id == line.product_id)
        )
        if available is None:
            raise ProductNotFoundError(line.product_id)
        raise OutOfStockError(line.product_id, line.quantity, available)


async def _reservation(session: AsyncSession, order_id: str) -> Reservation | None:
    row = await session.get(ReservationRow, order_id)
    if row is None:
        return None
    lines = await _lines(session, order_id)
    return Reservation(order_id, ReservationStatus(row.status), lines)


async def _lines(session: AsyncSession, order_id: str) -> tuple[StockLine, ...]:
    rows = await session.scalars(
        sa.select(ReservationItemRow)
        .where(ReservationItemRow.order_id == order_id)
        .order_by(ReservationItemRow.product_id)
    )
    return tuple(StockLine(row.product_id, row.quantity) for row in rows)


async def _id_by_sku(session: AsyncSession, sku: str) -> str | None:
    return await session.scalar(sa.select(ProductRow.id).where(ProductRow.sku == sku))


def _rowcount(result: sa.Result[Any]) -> int:
    return cast("CursorResult[Any]", result).rowcount


def _draft_columns(draft: ProductDraft | Product) -> dict[str, Any]:
    return {
        "sku": draft.sku,
        "name": draft.name.strip(),
        "description": draft.description,
        "price_minor": draft.price.minor,
        "currency": draft.price.currency,
        "stock": draft.stock,
    }


def _columns(product: Product) -> dict[str, Any]:
    return {
        "id": product.id,
        "created_at": product.created_at,
        "updated_at": product.updated_at,
        **_draft_columns(product),
        "initial_stock": product.stock,
    }


def _to_domain(row: ProductRow) -> Product:
    return Product(
        id=row.id,
        sku=row.sku,
        name=row.name,
        description=row.description,
        price=Money(row.price_minor, row.currency),
        stock=row.stock,
        created_at=as_utc(row.created_at),
        updated_at=as_utc(row.updated_at),
    )
