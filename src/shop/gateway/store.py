"""The saga journal: one row per ProcessOrder saga, written before each next step starts.

Card numbers and cvc never reach this module: a :class:`~shop.gateway.domain.Saga` has no field
for them. Timestamps are stored as UTC and read back as aware datetimes on both dialects.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from shop.common.db import Database, Migration
from shop.common.money import Money
from shop.common.times import as_utc
from shop.gateway.domain import (
    LineItem,
    Progress,
    Saga,
    SagaConflictError,
    SagaError,
    SagaState,
    SagaTakenOverError,
    Step,
    items_key,
)

metadata = sa.MetaData()

sagas = sa.Table(
    "sagas",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("user_id", sa.String(36), nullable=False),
    sa.Column("idempotency_key", sa.String(200), nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("items", sa.JSON, nullable=False),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("pending_step", sa.String(20), nullable=True),
    sa.Column("order_id", sa.String(36), nullable=True),
    sa.Column("order_uncertain", sa.Boolean, nullable=False, default=False),
    sa.Column("stock_held", sa.Boolean, nullable=False, default=False),
    sa.Column("payment_id", sa.String(36), nullable=True),
    sa.Column("payment_uncertain", sa.Boolean, nullable=False, default=False),
    sa.Column("amount_minor", sa.BigInteger, nullable=True),
    sa.Column("currency", sa.String(3), nullable=True),
    sa.Column("result", sa.LargeBinary, nullable=True),
    sa.Column("error_code", sa.String(32), nullable=True),
    sa.Column("error_message", sa.Text, nullable=True),
    sa.Column("error_details", sa.LargeBinary, nullable=True),
    sa.Column("owner", sa.String(36), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("deadline", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("user_id", "idempotency_key", name="uq_sagas_user_key"),
    sa.Index("ix_sagas_state_updated", "state", "updated_at"),
)

NON_TERMINAL = tuple(s.value for s in SagaState if not s.terminal)
_IMMUTABLE = ("id", "user_id", "idempotency_key", "fingerprint", "created_at")
# Built once: the journal is written several times per order, and building the statement
# (and its cache key) each time was a visible share of the gateway's CPU.
_SAVE = (
    sagas.update()
    .where(
        sagas.c.id == sa.bindparam("expected_id"),
        sagas.c.version == sa.bindparam("expected_version"),
    )
    .values({c.name: sa.bindparam(c.name) for c in sagas.c if c.name not in _IMMUTABLE})
)


def _create_tables(conn: Connection) -> None:
    metadata.create_all(conn)


MIGRATIONS: list[Migration] = [Migration(1, "sagas journal", _create_tables)]


class SagaStore:
    """Reads and writes the journal. Every write is its own committed transaction."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, saga: Saga) -> None:
        """Insert a new saga; raises :class:`SagaConflictError` when its key is already taken."""
        try:
            async with self._db.transaction() as session:
                await session.execute(sagas.insert().values(**_to_row(saga)))
        except IntegrityError:
            existing = await self.find(saga.user_id, saga.idempotency_key)
            if existing is None:  # the holder vanished between insert and read: not expected
                raise
            raise SagaConflictError(existing) from None

    async def save(self, saga: Saga) -> None:
        """Write every mutable column of ``saga`` (one journal entry).

        Fenced by the row version: raises :class:`SagaTakenOverError` when another owner wrote the
        row since ``saga`` was read (a recovery loop elsewhere claimed it).
        """
        params = _to_row(saga)
        for immutable in _IMMUTABLE:
            params.pop(immutable)
        params["expected_id"], params["expected_version"] = saga.id, saga.version
        params["version"] = saga.version + 1
        async with self._db.transaction() as session:
            result = await session.execute(_SAVE, params)
        if getattr(result, "rowcount", 0) != 1:
            raise SagaTakenOverError(saga.id)
        saga.version += 1

    async def get(self, saga_id: str) -> Saga | None:
        async with self._db.read() as session:
            row = (await session.execute(sa.select(sagas).where(sagas.c.id == saga_id))).first()
        return _from_row(row._mapping) if row else None

    async def find(self, user_id: str, idempotency_key: str) -> Saga | None:
        query = sa.select(sagas).where(
            sagas.c.user_id == user_id, sagas.c.idempotency_key == idempotency_key
        )
        async with self._db.read() as session:
            row = (await session.execute(query)).first()
        return _from_row(row._mapping) if row else None

    async def unfinished(self, *, limit: int = 100) -> list[Saga]:
        """Sagas not in a terminal state, oldest update first."""
        query = (
            sa.select(sagas)
            .where(sagas.c.state.in_(NON_TERMINAL))
            .order_by(sagas.c.updated_at)
            .limit(limit)
        )
        async with self._db.read() as session:
            rows = (await session.execute(query)).all()
        return [_from_row(r._mapping) for r in rows]

    async def claim(self, saga: Saga, owner: str, now: datetime) -> bool:
        """Take over ``saga`` if nobody wrote it since it was read (compare-and-set)."""
        query = (
            sagas.update()
            .where(sagas.c.id == saga.id, sagas.c.version == saga.version)
            .values(owner=owner, updated_at=as_utc(now), version=saga.version + 1)
        )
        async with self._db.transaction() as session:
            result = await session.execute(query)
        if getattr(result, "rowcount", 0) != 1:
            return False
        saga.owner, saga.updated_at, saga.version = owner, now, saga.version + 1
        return True


def _to_row(saga: Saga) -> dict[str, Any]:
    error = saga.error
    return {
        "id": saga.id,
        "user_id": saga.user_id,
        "idempotency_key": saga.idempotency_key,
        "fingerprint": saga.fingerprint,
        "items": items_key(saga.items),
        "state": saga.state.value,
        "pending_step": saga.pending_step.value if saga.pending_step else None,
        "order_id": saga.progress.order_id,
        "order_uncertain": saga.progress.order_uncertain,
        "stock_held": saga.progress.stock_held,
        "payment_id": saga.progress.payment_id,
        "payment_uncertain": saga.progress.payment_uncertain,
        "amount_minor": saga.amount.minor if saga.amount else None,
        "currency": saga.amount.currency if saga.amount else None,
        "result": saga.result,
        "error_code": error.code if error else None,
        "error_message": error.message if error else None,
        "error_details": error.status if error else None,
        "owner": saga.owner,
        "version": saga.version,
        "created_at": as_utc(saga.created_at),
        "updated_at": as_utc(saga.updated_at),
        "deadline": as_utc(saga.deadline),
    }


def _from_row(row: Any) -> Saga:
    amount = (
        Money(int(row["amount_minor"]), row["currency"])
        if row["amount_minor"] is not None
        else None
    )
    error = (
        SagaError(row["error_code"], row["error_message"] or "", bytes(row["error_details"] or b""))
        if row["error_code"]
        else None
    )
    return Saga(
        id=row["id"],
        user_id=row["user_id"],
        idempotency_key=row["idempotency_key"],
        fingerprint=row["fingerprint"],
        items=_items(row["items"]),
        state=SagaState(row["state"]),
        owner=row["owner"],
        version=int(row["version"]),
        created_at=as_utc(row["created_at"]),
        updated_at=as_utc(row["updated_at"]),
        deadline=as_utc(row["deadline"]),
        pending_step=Step(row["pending_step"]) if row["pending_step"] else None,
        progress=Progress(
            order_id=row["order_id"],
            order_uncertain=bool(row["order_uncertain"]),
            stock_held=bool(row["stock_held"]),
            payment_id=row["payment_id"],
            payment_uncertain=bool(row["payment_uncertain"]),
        ),
        amount=amount,
        result=bytes(row["result"]) if row["result"] is not None else None,
        error=error,
    )


def _items(raw: Sequence[Sequence[Any]]) -> tuple[LineItem, ...]:
    return tuple(LineItem(str(product_id), int(quantity)) for product_id, quantity in raw)
