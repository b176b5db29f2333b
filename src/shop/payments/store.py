"""Payments' tables, migrations and ``PaymentsStore``.

ProcessPayment is idempotent through the unique ``idempotency_key``: the first call inserts a
PROCESSING row (and so owns the charge) before the provider is asked; a duplicate finds the row
and waits for its outcome. A PROCESSING row carries a lease: if its owner dies mid-charge the
row stays PROCESSING (so the database says a charge may have happened), and once the lease has
expired a retry with the same key takes it over and asks the provider again with the same
idempotency key, which the provider deduplicates.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
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
from shop.payments.domain import (
    Payment,
    PaymentNotCapturedError,
    PaymentNotFoundError,
    PaymentStatus,
)
from shop.payments.events import payment_event
from shop.payments.provider import ChargeResult

metadata = sa.MetaData()

payments = sa.Table(
    "payments",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("order_id", sa.String(36), nullable=False),
    sa.Column("idempotency_key", sa.String(200), nullable=False, unique=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("amount_minor", sa.BigInteger, nullable=False),
    sa.Column("card_last4", sa.String(4), nullable=False),
    sa.Column("decline_code", sa.String(64), nullable=False, default=""),
    sa.Column("refund_reason", sa.String(500), nullable=False, default=""),
    sa.Column("charge_id", sa.String(200), nullable=False, default=""),
    sa.Column("refund_id", sa.String(200), nullable=False, default=""),
    # Until when the PROCESSING row's owner may charge undisturbed; NULL once settled.
    sa.Column("lease_until_us", sa.BigInteger, nullable=True),
    sa.Column("created_at_us", sa.BigInteger, nullable=False),
    sa.Column("updated_at_us", sa.BigInteger, nullable=False),
    # The customer the payment is for (NULL for payments made before it was recorded).
    sa.Column("user_id", sa.String(36), nullable=True),
    sa.Index("ix_payments_order_created", "order_id", "created_at_us"),
    sa.Index("ix_payments_created", "created_at_us"),
)

outbox = outbox_table(metadata)


def _create_all(conn: Connection) -> None:
    metadata.create_all(conn)


def _add_user_id(conn: Connection) -> None:
    """Add ``payments.user_id`` to a database created before it existed.

    Migration 1 creates the tables as they are now, so a new database has the column already.
    """
    if "user_id" not in {column["name"] for column in sa.inspect(conn).get_columns("payments")}:
        conn.execute(sa.text("ALTER TABLE payments ADD COLUMN user_id VARCHAR(36)"))


MIGRATIONS: list[Migration] = [
    Migration(1, "payments and the outbox", _create_all),
    Migration(2, "payments.user_id (nullable)", _add_user_id),
]

_PROCESSING = PaymentStatus.PROCESSING.value


class PaymentsStore:
    """Payments persisted in a ``Database``; each state change writes its event with it."""

    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], datetime] = utcnow,
        lease: timedelta = timedelta(seconds=30),
        on_events: Callable[[], None] | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._lease = lease
        self._on_events = on_events

    async def claim(
        self,
        idempotency_key: str,
        order_id: str,
        amount: Money,
        card_last4: str,
        *,
        user_id: str = "",
    ) -> tuple[Payment, bool]:
        """The payment of ``idempotency_key`` and whether this caller now owns its charge.

        Inserts a PROCESSING row when the key is new (owned), recording ``user_id`` (the
        customer; empty: unknown). An existing row is returned as it is (not owned), unless it
        is PROCESSING with an expired lease: then it is taken over.
        """
        now = self._clock()
        try:
            async with self._db.transaction() as session:
                row = await self._row(session, payments.c.idempotency_key == idempotency_key)
                if row is not None:
                    return await self._take_over_if_stale(session, row, now)
                payment = Payment(
                    new_id(),
                    order_id,
                    amount,
                    PaymentStatus.PROCESSING,
                    card_last4,
                    now,
                    now,
                    user_id=user_id,
                )
                values = self._values(payment, idempotency_key, now)
                await session.execute(payments.insert().values(values))
                return payment, True
        except IntegrityError:
            # A concurrent call inserted the key first; its row is committed now.
            async with self._db.read() as session:
                row = await self._row(session, payments.c.idempotency_key == idempotency_key)
            if row is None:
                raise
            return _payment(row), False

    async def reclaim(self, payment_id: str) -> tuple[Payment | None, bool]:
        """Re-read a payment another call owns; take it over if its lease has expired.

        ``(None, False)`` when the row is gone (its owner released it: claim the key again).
        """
        async with self._db.transaction() as session:
            row = await self._row(session, payments.c.id == payment_id)
            if row is None:
                return None, False
            return await self._take_over_if_stale(session, row, self._clock())

    async def release(self, payment_id: str) -> None:
        """Forget a PROCESSING payment whose charge did not happen (provider unavailable)."""
        async with self._db.transaction() as session:
            await session.execute(
                payments.delete().where(
                    payments.c.id == payment_id, payments.c.status == _PROCESSING
                )
            )

    async def settle(self, payment_id: str, result: ChargeResult) -> Payment:
        """PROCESSING -> CAPTURED or DECLINED with its event. Settled already: returned as is."""
        status = PaymentStatus.CAPTURED if result.approved else PaymentStatus.DECLINED
        kind = (
            events_pb2.EVENT_TYPE_PAYMENT_CAPTURED
            if result.approved
            else events_pb2.EVENT_TYPE_PAYMENT_DECLINED
        )
        values = {
            "status": status.value,
            "charge_id": result.charge_id,
            "decline_code": result.decline_code,
            "lease_until_us": None,
        }
        return await self._guarded(payment_id, _PROCESSING, values, kind)

    async def refund(
        self, payment_id: str, reason: str, refund: Callable[[Payment], Awaitable[str]]
    ) -> Payment:
        """CAPTURED -> REFUNDED, calling ``refund(payment)`` (-> refund id) while the row is locked.

        REFUNDED already: returned as is (idempotent). Never captured: ``PaymentNotCapturedError``.
        The lock (FOR UPDATE; SQLite's write lock) makes concurrent refunds call the provider
        once; if ``refund`` raises, nothing changes.
        """
        async with self._db.transaction() as session:
            query = sa.select(payments).where(payments.c.id == payment_id).with_for_update()
            row = (await session.execute(query)).one_or_none()
            if row is None:
                raise PaymentNotFoundError(payment_id)
            payment = _payment(row)
            if payment.status is PaymentStatus.REFUNDED:
                return payment
            if payment.status is not PaymentStatus.CAPTURED:
                raise PaymentNotCapturedError(payment)
            refund_id = await refund(payment)
            await session.execute(
                payments.update()
                .where(payments.c.id == payment_id)
                .values(
                    status=PaymentStatus.REFUNDED.value,
                    refund_reason=reason,
                    refund_id=refund_id,
                    updated_at_us=to_micros(self._clock()),
                )
            )
            refunded = await self._get(session, payment_id)
            await add_events(
                session, outbox, [payment_event(events_pb2.EVENT_TYPE_PAYMENT_REFUNDED, refunded)]
            )
        self._committed()
        return refunded

    async def get(self, payment_id: str) -> Payment:
        async with self._db.read() as session:
            return await self._get(session, payment_id)

    async def list(self, order_id: str, *, offset: int, limit: int) -> list[Payment]:
        """Payments (of one order when ``order_id`` is set), oldest first."""
        query = sa.select(payments).order_by(payments.c.created_at_us, payments.c.id)
        if order_id:
            query = query.where(payments.c.order_id == order_id)
        async with self._db.read() as session:
            rows = await session.execute(query.offset(offset).limit(limit))
            return [_payment(row) for row in rows]

    async def _take_over_if_stale(
        self, session: AsyncSession, row: Any, now: datetime
    ) -> tuple[Payment, bool]:
        payment = _payment(row)
        if payment.status is not PaymentStatus.PROCESSING or row.lease_until_us > to_micros(now):
            return payment, False
        connection = await session.connection()
        result = await connection.execute(
            payments.update()
            .where(
                payments.c.id == payment.id,
                payments.c.status == _PROCESSING,
                payments.c.lease_until_us == row.lease_until_us,
            )
            .values(lease_until_us=to_micros(now + self._lease))
        )
        return payment, result.rowcount == 1

    async def _guarded(
        self,
        payment_id: str,
        source: str,
        values: dict[str, Any],
        kind: events_pb2.EventType.ValueType,
    ) -> Payment:
        async with self._db.transaction() as session:
            connection = await session.connection()
            guarded = (
                payments.update()
                .where(payments.c.id == payment_id, payments.c.status == source)
                .values(updated_at_us=to_micros(self._clock()), **values)
            )
            changed = (await connection.execute(guarded)).rowcount == 1
            payment = await self._get(session, payment_id)
            if not changed:
                return payment
            await add_events(session, outbox, [payment_event(kind, payment)])
        self._committed()
        return payment

    def _committed(self) -> None:
        if self._on_events is not None:
            self._on_events()

    def _values(self, payment: Payment, idempotency_key: str, now: datetime) -> dict[str, Any]:
        return {
            "id": payment.id,
            "order_id": payment.order_id,
            "idempotency_key": idempotency_key,
            "status": payment.status.value,
            "currency": payment.amount.currency,
            "amount_minor": payment.amount.minor,
            "card_last4": payment.card_last4,
            "decline_code": "",
            "refund_reason": "",
            "charge_id": "",
            "refund_id": "",
            "lease_until_us": to_micros(now + self._lease),
            "created_at_us": to_micros(payment.created_at),
            "updated_at_us": to_micros(payment.updated_at),
            "user_id": payment.user_id or None,
        }

    async def _get(self, session: AsyncSession, payment_id: str) -> Payment:
        row = await self._row(session, payments.c.id == payment_id)
        if row is None:
            raise PaymentNotFoundError(payment_id)
        return _payment(row)

    async def _row(self, session: AsyncSession, condition: sa.ColumnElement[bool]) -> Any:
        return (await session.execute(sa.select(payments).where(condition))).one_or_none()


def _payment(row: Any) -> Payment:
    return Payment(
        id=row.id,
        order_id=row.order_id,
        amount=Money(row.amount_minor, row.currency),
        status=PaymentStatus(row.status),
        card_last4=row.card_last4,
        created_at=from_micros(row.created_at_us),
        updated_at=from_micros(row.updated_at_us),
        decline_code=row.decline_code,
        refund_reason=row.refund_reason,
        charge_id=row.charge_id,
        user_id=row.user_id or "",
    )
