"""The transactional outbox: events are written with the state change, published afterwards.

A service writes its events with ``add_events`` inside the transaction that changes its state,
so an event exists exactly when the change does. ``OutboxRelay`` publishes unpublished rows in
order and marks them, so a process that dies between commit and publish loses nothing: the next
relay run publishes what was left (at-least-once; consumers drop duplicates by event id).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from grpckit import get_logger
from shop.api.events.v1 import events_pb2
from shop.common.bus import EventBus
from shop.common.db import Database

_log = get_logger("shop.outbox")


def outbox_table(metadata: sa.MetaData) -> sa.Table:
    """Declare the ``outbox`` table in a service's metadata."""
    return sa.Table(
        "outbox",
        metadata,
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(64), nullable=False, unique=True),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True, index=True),
    )


async def add_events(
    session: AsyncSession, table: sa.Table, events: Iterable[events_pb2.Event]
) -> None:
    """Write events in the caller's transaction."""
    now = datetime.now(UTC)
    rows = [
        {
            "event_id": e.id,
            "event_type": events_pb2.EventType.Name(e.type),
            "payload": e.SerializeToString(deterministic=True),
            "created_at": now,
        }
        for e in events
    ]
    if rows:
        await session.execute(_statements(table).insert, rows)


@dataclass(frozen=True)
class _Statements:
    insert: sa.Insert
    pending: sa.Select[Any]
    pending_locked: sa.Select[Any]
    mark: sa.Update


_STATEMENTS: dict[sa.Table, _Statements] = {}


def _statements(t: sa.Table) -> _Statements:
    """The outbox statements of one table, built once (building them per call costs CPU)."""
    found = _STATEMENTS.get(t)
    if found is None:
        pending = (
            sa.select(t.c.seq, t.c.payload)
            .where(t.c.published_at.is_(None))
            .order_by(t.c.seq)
            .limit(sa.bindparam("limit"))
        )
        found = _STATEMENTS[t] = _Statements(
            insert=t.insert(),
            pending=pending,
            pending_locked=pending.with_for_update(skip_locked=True),
            mark=t.update()
            .where(t.c.seq.in_(sa.bindparam("seqs", expanding=True)))
            .values(published_at=sa.bindparam("now")),
        )
    return found


class OutboxRelay:
    """Publishes a service's outbox to the bus: woken by ``notify()``, or every ``interval``."""

    def __init__(
        self,
        db: Database,
        table: sa.Table,
        bus: EventBus,
        *,
        batch_size: int = 500,
        interval: float = 0.5,
    ) -> None:
        self._db, self._table, self._bus = db, table, bus
        self._batch_size, self._interval = batch_size, interval
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.published = 0

    def notify(self) -> None:
        """Publish soon (call after a transaction that added events has committed)."""
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        """Publish what is pending, then stop."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        with contextlib.suppress(Exception):
            await self.drain()

    async def drain(self) -> int:
        """Publish every pending event now; returns how many were published."""
        total = 0
        while True:
            count = await self.publish_once()
            total += count
            if count < self._batch_size:  # a short batch: nothing more is pending
                return total

    async def publish_once(self) -> int:
        sql = _statements(self._table)
        async with self._db.transaction() as session:
            query = sql.pending_locked if self._db.dialect == "postgresql" else sql.pending
            rows = (await session.execute(query, {"limit": self._batch_size})).all()
            if not rows:
                return 0
            events = [events_pb2.Event.FromString(row.payload) for row in rows]
            await self._bus.publish(events)
            seqs = [row.seq for row in rows]
            await session.execute(sql.mark, {"seqs": seqs, "now": datetime.now(UTC)})
        self.published += len(rows)
        return len(rows)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            try:
                await self.drain()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _log.warning("outbox publish failed; will retry", error=str(exc))
