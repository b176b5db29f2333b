"""Orders' tables, migrations and ``OrdersStore``.

Every state change and its outbox event are written in one transaction. Transitions are guarded
updates (``... WHERE id = ? AND status = 'PENDING'``), so concurrent MarkOrderPaid / CancelOrder
calls cannot both win. Times are stored as integer microseconds since the epoch (UTC), which
orders and compares the same way on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from shop.api.events.v1 import events_pb2
from shop.common.db import Database, Migration
from shop.common.ids import new_id
from shop.common.money import Money
from shop.common.outbox import add_events, outbox_table
from shop.common.times import from_micros, to_micros, utcnow
from shop.orders.changes import ChangeNotifier
from shop.orders.domain import (
    InvalidTransitionError,
    Order,
    OrderFilter,
    OrderItem,
    OrderNotFoundError,
    OrderNotPendingError,
    OrderStatus,
    can_transition,
)
from shop.orders.events import order_event

metadata = sa.MetaData()

orders = sa.Table(
    "orders",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("user_id", sa.String(36), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("total_minor", sa.BigInteger, nullable=False),
    sa.Column("cancel_reason", sa.String(500), nullable=False, default=""),
    sa.Column("payment_id", sa.String(200), nullable=False, default=""),
    # NULL when the caller gave no key: NULLs never collide in the unique constraint.
    sa.Column("idempotency_key", sa.String(200), nullable=True),
    sa.Column("created_at_us", sa.BigInteger, nullable=False),
    sa.Column("updated_at_us", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("user_id", "idempotency_key", name="uq_orders_user_idempotency_key"),
    sa.Index("ix_orders_user_created", "user_id", "created_at_us"),
    sa.Index("ix_orders_created", "created_at_us"),
)

order_items = sa.Table(
    "order_items",
    metadata,
    sa.Column("order_id", sa.String(36), sa.ForeignKey("orders.id"), primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("product_id", sa.String(36), nullable=False, index=True),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("unit_price_minor", sa.BigInteger, nullable=False),
)

outbox = outbox_table(metadata)


def _create_all(conn: Connection) -> None:
    metadata.create_all(conn)


MIGRATIONS: list[Migration] = [Migration(1, "orders, order items and the outbox", _create_all)]

_NEWEST_FIRST = (orders.c.created_at_us.desc(), orders.c.id.desc())

# The statements of the order path, built once: building them per call (and their cache keys)
# was a visible share of the CPU an order costs.
_INSERT_ORDER = orders.insert()
_INSERT_ITEMS = order_items.insert()
_BY_ID = sa.select(orders).where(orders.c.id == sa.bindparam("order_id"))
_BY_KEY = sa.select(orders).where(
    orders.c.user_id == sa.bindparam("user_id"),
    orders.c.idempotency_key == sa.bindparam("key"),
)
_ITEMS_OF = (
    sa.select(order_items)
    .where(order_items.c.order_id.in_(sa.bindparam("order_ids", expanding=True)))
    .order_by(order_items.c.order_id, order_items.c.position)
)
_GUARDED_UPDATES: dict[tuple[str, ...], sa.Update] = {}


def _guarded_update(values: dict[str, Any]) -> sa.Update:
    """PENDING -> ``status`` for one order, setting ``values``' columns too (one per shape)."""
    shape = tuple(sorted(values))
    statement = _GUARDED_UPDATES.get(shape)
    if statement is None:
        statement = _GUARDED_UPDATES[shape] = (
            orders.update()
            .where(
                orders.c.id == sa.bindparam("order_id"),
                orders.c.status == OrderStatus.PENDING.value,
            )
            .values(
                status=sa.bindparam("status"),
                updated_at_us=sa.bindparam("updated_at_us"),
                **{name: sa.bindparam(name) for name in shape},
            )
        )
    return statement


class OrdersStore:
    """Orders persisted in a ``Database``; signals ``changes`` after every committed change.

    ``on_events`` is called after a transaction that wrote outbox events has committed (wire it
    to ``OutboxRelay.notify`` to publish without waiting for the relay's next poll).
    """

    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], datetime] = utcnow,
        on_events: Callable[[], None] | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._on_events = on_events
        self.changes = ChangeNotifier()

    async def create(
        self, user_id: str, items: Sequence[OrderItem], total: Money, idempotency_key: str = ""
    ) -> tuple[Order, bool]:
        """Store a new PENDING order and its ORDER_CREATED event; returns (order, created).

        With a non-empty ``idempotency_key`` an order the user already created with that key is
        returned instead (``created`` False), also when concurrent calls race on the key.
        """
        now = self._clock()
        order = Order(new_id(), user_id, tuple(items), total, OrderStatus.PENDING, now, now)
        try:
            async with self._db.transaction() as session:
                if idempotency_key:
                    existing = await self._find_by_key(session, user_id, idempotency_key)
                    if existing is not None:
                        return existing, False
                await self._insert(session, order, idempotency_key)
                event = order_event(events_pb2.EVENT_TYPE_ORDER_CREATED, order)
                await add_events(session, outbox, [event])
        except IntegrityError:
            if not idempotency_key:
                raise
            existing = await self.find_by_key(user_id, idempotency_key)
            if existing is None:
                raise
            return existing, False
        self._committed(order.id)
        return order, True

    async def find_by_key(self, user_id: str, idempotency_key: str) -> Order | None:
        """The order ``user_id`` created with ``idempotency_key``, if any."""
        async with self._db.read() as session:
            return await self._find_by_key(session, user_id, idempotency_key)

    async def get(self, order_id: str) -> Order:
        """One order; ``OrderNotFoundError`` when there is none."""
        async with self._db.read() as session:
            order = await self._by_id(session, order_id)
        if order is None:
            raise OrderNotFoundError(order_id)
        return order

    async def mark_paid(self, order_id: str, payment_id: str) -> Order:
        """PENDING -> PAID with ``payment_id`` and an ORDER_PAID event; PAID again is a no-op."""
        return await self._transition(
            order_id, OrderStatus.PAID, {"payment_id": payment_id}, events_pb2.EVENT_TYPE_ORDER_PAID
        )

    async def cancel(self, order_id: str, reason: str) -> Order:
        """PENDING -> CANCELLED with ``reason`` and an ORDER_CANCELLED event; again: a no-op."""
        return await self._transition(
            order_id,
            OrderStatus.CANCELLED,
            {"cancel_reason": reason},
            events_pb2.EVENT_TYPE_ORDER_CANCELLED,
            reason=reason,
        )

    async def list_for_user(self, user_id: str, *, offset: int, limit: int) -> list[Order]:
        """A user's orders, newest first."""
        async with self._db.read() as session:
            return await self._load(
                session, [orders.c.user_id == user_id], offset=offset, limit=limit
            )

    async def search(
        self, query: OrderFilter, *, offset: int, limit: int
    ) -> tuple[list[Order], int]:
        """Orders matching ``query``, newest first, and how many match over all pages."""
        conditions = _conditions(query)
        async with self._db.read() as session:
            found = await self._load(session, conditions, offset=offset, limit=limit)
            count = sa.select(sa.func.count()).select_from(orders).where(*conditions)
            total = (await session.execute(count)).scalar_one()
        return found, int(total)

    async def _transition(
        self,
        order_id: str,
        target: OrderStatus,
        values: dict[str, Any],
        kind: events_pb2.EventType.ValueType,
        *,
        reason: str = "",
    ) -> Order:
        params = {
            "order_id": order_id,
            "status": target.value,
            "updated_at_us": to_micros(self._clock()),
            **values,
        }
        async with self._db.transaction() as session:
            connection = await session.connection()
            changed = (await connection.execute(_guarded_update(values), params)).rowcount == 1
            order = await self._by_id(session, order_id)
            if order is None:
                raise OrderNotFoundError(order_id)
            if not changed:
                _check_repeat(order, target)
                return order
            await add_events(session, outbox, [order_event(kind, order, reason=reason)])
        self._committed(order_id)
        return order

    def _committed(self, order_id: str) -> None:
        self.changes.notify(order_id)
        if self._on_events is not None:
            self._on_events()

    async def _insert(self, session: AsyncSession, order: Order, idempotency_key: str) -> None:
        await session.execute(
            _INSERT_ORDER,
            {
                "id": order.id,
                "user_id": order.user_id,
                "status": order.status.value,
                "currency": order.total.currency,
                "total_minor": order.total.minor,
                "cancel_reason": "",
                "payment_id": "",
                "idempotency_key": idempotency_key or None,
                "created_at_us": to_micros(order.created_at),
                "updated_at_us": to_micros(order.updated_at),
            },
        )
        rows = [
            {
                "order_id": order.id,
                "position": position,
                "product_id": item.product_id,
                "quantity": item.quantity,
                "unit_price_minor": item.unit_price.minor,
            }
            for position, item in enumerate(order.items)
        ]
        await session.execute(_INSERT_ITEMS, rows)

    async def _find_by_key(
        self, session: AsyncSession, user_id: str, idempotency_key: str
    ) -> Order | None:
        rows = (await session.execute(_BY_KEY, {"user_id": user_id, "key": idempotency_key})).all()
        found = await self._with_items(session, rows)
        return found[0] if found else None

    async def _load(
        self,
        session: AsyncSession,
        conditions: Sequence[sa.ColumnElement[bool]],
        *,
        offset: int = 0,
        limit: int | None = None,
    ) -> list[Order]:
        query = sa.select(orders).where(*conditions).order_by(*_NEWEST_FIRST).offset(offset)
        if limit is not None:
            query = query.limit(limit)
        rows = (await session.execute(query)).all()
        return await self._with_items(session, rows)

    async def _by_id(self, session: AsyncSession, order_id: str) -> Order | None:
        rows = (await session.execute(_BY_ID, {"order_id": order_id})).all()
        found = await self._with_items(session, rows)
        return found[0] if found else None

    async def _with_items(self, session: AsyncSession, rows: Sequence[Any]) -> list[Order]:
        """The orders of ``rows`` with their items (one query for all of them)."""
        if not rows:
            return []
        lines = await session.execute(_ITEMS_OF, {"order_ids": [row.id for row in rows]})
        items: dict[str, list[Any]] = {}
        for line in lines:
            items.setdefault(line.order_id, []).append(line)
        return [_order(row, items.get(row.id, [])) for row in rows]


def _check_repeat(order: Order, target: OrderStatus) -> None:
    try:
        can_transition(order.status, target)
    except InvalidTransitionError:
        raise OrderNotPendingError(order.id, order.status, target) from None


def _order(row: Any, lines: Sequence[Any]) -> Order:
    items = tuple(
        OrderItem(line.product_id, line.quantity, Money(line.unit_price_minor, row.currency))
        for line in lines
    )
    return Order(
        id=row.id,
        user_id=row.user_id,
        items=items,
        total=Money(row.total_minor, row.currency),
        status=OrderStatus(row.status),
        created_at=from_micros(row.created_at_us),
        updated_at=from_micros(row.updated_at_us),
        cancel_reason=row.cancel_reason,
        payment_id=row.payment_id,
    )


def _conditions(query: OrderFilter) -> list[sa.ColumnElement[bool]]:
    conditions: list[sa.ColumnElement[bool]] = []
    if query.user_id:
        conditions.append(orders.c.user_id == query.user_id)
    if query.statuses:
        conditions.append(orders.c.status.in_(sorted(s.value for s in query.statuses)))
    if query.created_after is not None:
        conditions.append(orders.c.created_at_us >= to_micros(query.created_after))
    if query.created_before is not None:
        conditions.append(orders.c.created_at_us < to_micros(query.created_before))
    if query.min_total is not None:
        conditions.append(orders.c.currency == query.min_total.currency)
        conditions.append(orders.c.total_minor >= query.min_total.minor)
    if query.text:
        conditions.append(_text_matches(query.text.lower()))
    return conditions


def _text_matches(needle: str) -> sa.ColumnElement[bool]:
    def contains(column: sa.ColumnElement[str]) -> sa.ColumnElement[bool]:
        return sa.func.lower(column).contains(needle, autoescape=True)

    in_items = (
        sa.select(order_items.c.order_id)
        .where(order_items.c.order_id == orders.c.id, contains(order_items.c.product_id))
        .exists()
    )
    return sa.or_(contains(orders.c.id), contains(orders.c.cancel_reason), in_items)
