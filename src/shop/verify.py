"""``shop verify``: check the invariants that span services; print each violation as JSON.

Reads the orders, payments and catalog databases (the SQLite files ``<data_dir>/<service>.db``,
or each service's PostgreSQL schema with ``database_url``) and, when it exists, the gateway's
saga journal; creates and changes nothing. The invariants, as named in the output:

- ``paid_order_payment``: a PAID order has exactly one CAPTURED (so unrefunded) payment; it is
  of the order's total and it is the payment the order names.
- ``cancelled_order_payment``: a CANCELLED order has no CAPTURED payment.
- ``pending_order_timeout``: no order stays PENDING longer than the saga timeout.
- ``stock_ledger``: a product's stock is its initial stock - units reserved + units released,
  over every reservation the catalog recorded (imports move the initial stock, see
  :mod:`shop.catalog.store`).
- ``order_stock``: the catalog agrees with the orders: a CANCELLED order holds no stock, and a
  PAID order's reservation (when it has one) was not released and holds the order's items.
- ``payment_without_order``: a CAPTURED payment belongs to an order that exists.

The shop may be running meanwhile. Orders are read first: what an order's status implies (its
payment, its reservation) was written before the status, so the later reads see it. What may
still be settling is left alone: orders PENDING for less than ``saga_timeout`` seconds, orders
cancelled and payments captured less than ``saga_timeout`` ago (a compensation may refund an
uncertain payment after it cancels the order).

Each violation is one JSON line on ``out``: ``{"invariant", "order_id" | "product_id",
"detail"}``; an order's detail ends with its saga's state when the gateway journal has one.
Then one summary line on ``err``: ``{"checked": {"orders", "payments", "products",
"reservations"}, "violations": n}``.

Exit codes: 0 every invariant holds, 1 violations were found, 2 nothing was verified (a
database is missing, outdated or unreadable; the message on ``err`` says which).

``main`` is async; ``run`` is the same for synchronous callers (it owns the event loop).

Example::

    code = run(Path(".shop"), None, saga_timeout=30.0)  # or: await main(Path(".shop"), None)
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from shop.catalog.domain import ReservationStatus
from shop.catalog.store import ProductRow, ReservationItemRow, ReservationRow
from shop.common.db import Database, open_existing
from shop.common.money import Money
from shop.common.times import to_micros, utcnow
from shop.gateway.store import sagas
from shop.orders.domain import OrderStatus
from shop.orders.store import order_items, orders
from shop.payments.domain import PaymentStatus
from shop.payments.store import payments

__all__ = ["INVARIANTS", "Violation", "main", "run"]

PAID_ORDER_PAYMENT = "paid_order_payment"
CANCELLED_ORDER_PAYMENT = "cancelled_order_payment"
PENDING_ORDER_TIMEOUT = "pending_order_timeout"
STOCK_LEDGER = "stock_ledger"
ORDER_STOCK = "order_stock"
PAYMENT_WITHOUT_ORDER = "payment_without_order"
#: Every invariant ``shop verify`` checks, by the name its violations carry.
INVARIANTS = (
    PAID_ORDER_PAYMENT,
    CANCELLED_ORDER_PAYMENT,
    PENDING_ORDER_TIMEOUT,
    STOCK_LEDGER,
    ORDER_STOCK,
    PAYMENT_WITHOUT_ORDER,
)

#: (table, column) whose presence says a service's database was created and migrated far enough.
_NEEDED = {
    "orders": ("orders", "status"),
    "payments": ("payments", "status"),
    "catalog": ("products", "initial_stock"),
}
_CHUNK = 500


@dataclass(frozen=True)
class Violation:
    """One broken invariant: which one, about what (an order or a product), what was found.

    Example: ``Violation("stock_ledger", "product_id", "p1", "stock 3, ...").as_dict()``
    """

    invariant: str
    subject: str  # "order_id" or "product_id"
    subject_id: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"invariant": self.invariant, self.subject: self.subject_id, "detail": self.detail}


async def main(
    data_dir: Path,
    database_url: str | None,
    *,
    saga_timeout: float = 30.0,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Check every invariant and print the violations; returns the exit code.

    Example: ``sys.exit(asyncio.run(main(Path(".shop"), None, saga_timeout=30.0)))``
    """
    now = utcnow()
    try:
        shop = await _read(data_dir, database_url)
        found = list(_check(shop, now=now, timeout=timedelta(seconds=saga_timeout)))
        found = await _with_sagas(found, data_dir, database_url)
    except _CannotVerifyError as exc:
        print(str(exc), file=err)
        return 2
    except (sa.exc.SQLAlchemyError, OSError) as exc:
        print(f"cannot read the shop's databases: {exc}", file=err)
        return 2
    for violation in found:
        print(_json(violation.as_dict()), file=out)
    print(_json({"checked": shop.counts(), "violations": len(found)}), file=err)
    return 1 if found else 0


def run(
    data_dir: Path,
    database_url: str | None,
    *,
    saga_timeout: float = 30.0,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """:func:`main` for synchronous callers (the ``shop verify`` command): runs its own loop.

    Example: ``sys.exit(run(Path(".shop"), None, saga_timeout=30.0))``
    """
    return asyncio.run(main(data_dir, database_url, saga_timeout=saga_timeout, out=out, err=err))


class _CannotVerifyError(Exception):
    """A database is missing or outdated; the message tells the operator what to do."""


# -- what is read --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Order:
    id: str
    status: OrderStatus
    total: Money
    payment_id: str
    created_at_us: int
    updated_at_us: int


@dataclass(frozen=True)
class _Payment:
    id: str
    order_id: str
    status: PaymentStatus
    amount: Money
    updated_at_us: int


@dataclass(frozen=True)
class _Reservation:
    status: ReservationStatus
    units: dict[str, int]  # product id -> quantity


@dataclass(frozen=True)
class _Stock:
    product_id: str
    stock: int
    initial: int
    reserved: int
    released: int


@dataclass(frozen=True)
class _Shop:
    orders: list[_Order]
    units: dict[str, dict[str, int]]  # PAID order id -> product id -> quantity
    payments: list[_Payment]
    stock: list[_Stock]
    reservations: dict[str, _Reservation]

    def counts(self) -> dict[str, int]:
        return {
            "orders": len(self.orders),
            "payments": len(self.payments),
            "products": len(self.stock),
            "reservations": len(self.reservations),
        }


async def _read(data_dir: Path, url: str | None) -> _Shop:
    """Every row the checks need, read orders first, then payments, then the catalog."""
    opened: dict[str, Database] = {}
    try:
        for service, (table, column) in _NEEDED.items():
            db = await _open(service, data_dir, url, table, column)
            if db is not None:
                opened[service] = db
        missing = [service for service in _NEEDED if service not in opened]
        if missing:
            where = "the database of --database-url" if url else str(data_dir)
            raise _CannotVerifyError(
                f"no {', '.join(missing)} database found in {where}: pass --data-dir "
                "(or --database-url) of a shop that has run"
            )
        found_orders, units = await _read_orders(opened["orders"])
        found_payments = await _read_payments(opened["payments"])
        stock, reservations = await _read_catalog(opened["catalog"])
    finally:
        for db in opened.values():
            await db.close()
    return _Shop(found_orders, units, found_payments, stock, reservations)


async def _read_orders(db: Database) -> tuple[list[_Order], dict[str, dict[str, int]]]:
    query = sa.select(orders).order_by(orders.c.created_at_us, orders.c.id)
    paid_units = (
        sa.select(
            order_items.c.order_id, order_items.c.product_id, sa.func.sum(order_items.c.quantity)
        )
        .join(orders, orders.c.id == order_items.c.order_id)
        .where(orders.c.status == OrderStatus.PAID.value)
        .group_by(order_items.c.order_id, order_items.c.product_id)
    )
    async with db.read() as session:
        rows = (await session.execute(query)).all()
        lines = (await session.execute(paid_units)).all()
    found = [
        _Order(
            r.id,
            OrderStatus(r.status),
            Money(r.total_minor, r.currency),
            r.payment_id,
            r.created_at_us,
            r.updated_at_us,
        )
        for r in rows
    ]
    units: dict[str, dict[str, int]] = {}
    for order_id, product_id, quantity in lines:
        units.setdefault(order_id, {})[product_id] = int(quantity)
    return found, units


async def _read_payments(db: Database) -> list[_Payment]:
    query = sa.select(payments).order_by(payments.c.created_at_us, payments.c.id)
    async with db.read() as session:
        rows = (await session.execute(query)).all()
    return [
        _Payment(
            r.id,
            r.order_id,
            PaymentStatus(r.status),
            Money(r.amount_minor, r.currency),
            r.updated_at_us,
        )
        for r in rows
    ]


async def _read_catalog(db: Database) -> tuple[list[_Stock], dict[str, _Reservation]]:
    item, reservation = ReservationItemRow, ReservationRow
    released = sa.case((reservation.status == ReservationStatus.RELEASED.value, item.quantity))
    held = (
        sa.select(
            item.product_id,
            sa.func.sum(item.quantity).label("reserved"),
            sa.func.coalesce(sa.func.sum(released), 0).label("released"),
        )
        .join(reservation, reservation.order_id == item.order_id)
        .group_by(item.product_id)
        .subquery()
    )
    # One statement: the stock and the ledger come from one snapshot on both databases.
    ledger = (
        sa.select(
            ProductRow.id,
            ProductRow.stock,
            ProductRow.initial_stock,
            sa.func.coalesce(held.c.reserved, 0),
            sa.func.coalesce(held.c.released, 0),
        )
        .outerjoin(held, held.c.product_id == ProductRow.id)
        .order_by(ProductRow.sku, ProductRow.id)
    )
    holdings = sa.select(
        reservation.order_id, reservation.status, item.product_id, item.quantity
    ).outerjoin(item, item.order_id == reservation.order_id)
    async with db.read() as session:
        counted = (await session.execute(ledger)).all()
        rows = (await session.execute(holdings)).all()
    stock = [
        _Stock(product_id, int(on_hand), int(initial), int(reserved), int(released))
        for product_id, on_hand, initial, reserved, released in counted
    ]
    reservations: dict[str, _Reservation] = {}
    for order_id, status, product_id, quantity in rows:
        held_by = reservations.setdefault(order_id, _Reservation(ReservationStatus(status), {}))
        if product_id is not None:
            held_by.units[product_id] = int(quantity)
    return stock, reservations


# -- the checks ----------------------------------------------------------------------------


def _check(shop: _Shop, *, now: datetime, timeout: timedelta) -> Iterator[Violation]:
    """Every violation in ``shop``; what changed after ``now - timeout`` may still settle."""
    settled = to_micros(now - timeout)
    by_order: dict[str, list[_Payment]] = {}
    for payment in shop.payments:
        by_order.setdefault(payment.order_id, []).append(payment)
    for order in shop.orders:
        paid = by_order.get(order.id, [])
        reservation = shop.reservations.get(order.id)
        if order.status is OrderStatus.PENDING:
            if order.created_at_us < settled:
                yield _pending(order, now, timeout)
        elif order.status is OrderStatus.PAID:
            yield from _paid(order, paid)
            yield from _paid_stock(order, reservation, shop.units.get(order.id, {}))
        elif order.updated_at_us < settled:
            yield from _cancelled(order, paid, reservation)
    known = {order.id for order in shop.orders}
    for payment in shop.payments:
        if payment.order_id not in known and payment.updated_at_us < settled:
            yield from _orphan(payment)
    for product in shop.stock:
        yield from _ledger(product)


def _pending(order: _Order, now: datetime, timeout: timedelta) -> Violation:
    age = (to_micros(now) - order.created_at_us) // 1_000_000
    limit = f"{timeout.total_seconds():g} s"
    return _order(
        PENDING_ORDER_TIMEOUT, order, f"PENDING for {age} s, longer than the saga timeout ({limit})"
    )


def _paid(order: _Order, paid: Sequence[_Payment]) -> Iterator[Violation]:
    captured = [p for p in paid if p.status is PaymentStatus.CAPTURED]
    if not captured:
        refunded = [p.id for p in paid if p.status is PaymentStatus.REFUNDED]
        why = f"; refunded: {', '.join(refunded)}" if refunded else ""
        yield _order(PAID_ORDER_PAYMENT, order, f"PAID without a captured payment{why}")
        return
    if len(captured) > 1:
        ids = ", ".join(f"{p.id} ({p.amount})" for p in captured)
        yield _order(
            PAID_ORDER_PAYMENT, order, f"PAID with {len(captured)} captured payments: {ids}"
        )
        return
    [payment] = captured
    if payment.amount != order.total:
        detail = (
            f"payment {payment.id} captured {payment.amount}, the order's total is {order.total}"
        )
        yield _order(PAID_ORDER_PAYMENT, order, detail)
    if order.payment_id and order.payment_id != payment.id:
        detail = f"the order names payment {order.payment_id}, the captured one is {payment.id}"
        yield _order(PAID_ORDER_PAYMENT, order, detail)


def _paid_stock(
    order: _Order, reservation: _Reservation | None, units: dict[str, int]
) -> Iterator[Violation]:
    if reservation is None:  # created without the gateway: nothing was reserved
        return
    if reservation.status is ReservationStatus.RELEASED:
        yield _order(ORDER_STOCK, order, "PAID but its stock was released")
    elif reservation.units != units:
        detail = f"reserved {_units(reservation.units)}; the order has {_units(units)}"
        yield _order(ORDER_STOCK, order, detail)


def _cancelled(
    order: _Order, paid: Sequence[_Payment], reservation: _Reservation | None
) -> Iterator[Violation]:
    for payment in paid:
        if payment.status is PaymentStatus.CAPTURED:
            detail = f"CANCELLED but payment {payment.id} of {payment.amount} is captured"
            yield _order(CANCELLED_ORDER_PAYMENT, order, detail)
    if reservation is not None and reservation.status is ReservationStatus.RESERVED:
        yield _order(ORDER_STOCK, order, f"CANCELLED but holds {_units(reservation.units)}")


def _orphan(payment: _Payment) -> Iterator[Violation]:
    if payment.status is PaymentStatus.CAPTURED:
        detail = f"payment {payment.id} of {payment.amount} is captured; the order does not exist"
        yield Violation(PAYMENT_WITHOUT_ORDER, "order_id", payment.order_id, detail)


def _ledger(product: _Stock) -> Iterator[Violation]:
    expected = product.initial - product.reserved + product.released
    if product.stock != expected:
        detail = (
            f"stock is {product.stock}, the ledger says {expected} (initial {product.initial} "
            f"- reserved {product.reserved} + released {product.released})"
        )
        yield Violation(STOCK_LEDGER, "product_id", product.product_id, detail)


def _order(invariant: str, order: _Order, detail: str) -> Violation:
    return Violation(invariant, "order_id", order.id, detail)


def _units(units: dict[str, int]) -> str:
    if not units:
        return "nothing"
    return ", ".join(f"{quantity} x {product}" for product, quantity in sorted(units.items()))


# -- the databases -------------------------------------------------------------------------


async def _with_sagas(found: list[Violation], data_dir: Path, url: str | None) -> list[Violation]:
    """``found`` with each order's saga state appended, when the gateway journal exists."""
    order_ids = sorted({v.subject_id for v in found if v.subject == "order_id"})
    if not order_ids:
        return found
    db = await _open("gateway", data_dir, url, "sagas", "order_id")
    if db is None:
        return found
    states: dict[str, str] = {}
    try:
        async with db.read() as session:
            for start in range(0, len(order_ids), _CHUNK):
                chunk = order_ids[start : start + _CHUNK]
                query = sa.select(sagas.c.order_id, sagas.c.id, sagas.c.state).where(
                    sagas.c.order_id.in_(chunk)
                )
                for order_id, saga_id, state in await session.execute(query):
                    states[order_id] = f"saga {saga_id} is {state}"
    finally:
        await db.close()
    return [
        replace(v, detail=f"{v.detail}; {states.get(v.subject_id, 'no saga in the journal')}")
        if v.subject == "order_id"
        else v
        for v in found
    ]


async def _open(
    service: str, data_dir: Path, url: str | None, table: str, column: str
) -> Database | None:
    """The service's database if it holds ``table``, else ``None``; nothing is created.

    Raises :class:`_CannotVerifyError` when ``table`` lacks ``column`` (not migrated yet).
    """
    db = await open_existing(service, data_dir=data_dir, url=url)
    if db is None:
        return None
    try:
        schema = service if db.dialect == "postgresql" else None
        async with db.engine.connect() as conn:
            columns = await conn.run_sync(_columns, table, schema)
    except BaseException:
        await db.close()
        raise
    if column in columns:
        return db
    await db.close()
    if columns:
        raise _CannotVerifyError(
            f"the {service} database has no {table}.{column} yet: start the shop once with "
            "this version to migrate it, then verify again"
        )
    return None


def _columns(conn: Connection, table: str, schema: str | None) -> set[str]:
    """The column names of ``table`` (empty when there is no such table)."""
    inspector = sa.inspect(conn)
    if not inspector.has_table(table, schema=schema):
        return set()
    return {column["name"] for column in inspector.get_columns(table, schema=schema)}


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)
