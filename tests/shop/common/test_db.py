from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa

from shop.api.events.v1 import events_pb2
from shop.common.bus import InMemoryEventBus
from shop.common.db import Database, DatabaseError, Migration
from shop.common.outbox import OutboxRelay, add_events, outbox_table

metadata = sa.MetaData()
items = sa.Table(
    "items",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("n", sa.Integer, nullable=False),
)
outbox = outbox_table(metadata)
MIGRATIONS = [Migration(1, "items and outbox", metadata.create_all)]


async def test_migrate_is_idempotent(database: Database) -> None:
    assert await database.migrate(MIGRATIONS) == 1
    assert await database.migrate(MIGRATIONS) == 1
    assert await database.ping()


async def test_rejects_unordered_migrations(database: Database) -> None:
    noop = lambda _conn: None  # noqa: E731
    with pytest.raises(DatabaseError):
        await database.migrate([Migration(2, "b", noop), Migration(1, "a", noop)])


async def test_concurrent_writers_do_not_lose_updates(database: Database) -> None:
    await database.migrate(MIGRATIONS)
    async with database.transaction() as s:
        await s.execute(items.insert().values(id=1, n=0))

    async def bump() -> None:
        async with database.transaction() as s:
            n = (
                await s.execute(sa.select(items.c.n).where(items.c.id == 1).with_for_update())
            ).scalar_one()
            await s.execute(items.update().where(items.c.id == 1).values(n=n + 1))

    await asyncio.gather(*(bump() for _ in range(20)))
    async with database.read() as s:
        assert (await s.execute(sa.select(items.c.n))).scalar_one() == 20


def _event(i: int) -> events_pb2.Event:
    return events_pb2.Event(id=f"e{i}", type=events_pb2.EVENT_TYPE_ORDER_CREATED, order_id=str(i))


async def test_outbox_rolls_back_with_the_state_change(database: Database) -> None:
    await database.migrate(MIGRATIONS)
    with pytest.raises(RuntimeError):
        async with database.transaction() as s:
            await s.execute(items.insert().values(id=7, n=1))
            await add_events(s, outbox, [_event(7)])
            raise RuntimeError("fail after writing")
    async with database.read() as s:
        assert (await s.execute(sa.select(sa.func.count()).select_from(outbox))).scalar_one() == 0


async def test_relay_publishes_in_order_once(database: Database) -> None:
    await database.migrate(MIGRATIONS)
    bus = InMemoryEventBus()
    seen: list[str] = []

    async def handler(batch: object) -> None:
        seen.extend(e.id for e in batch)  # type: ignore[attr-defined]

    await bus.subscribe("test", handler)
    async with database.transaction() as s:
        await add_events(s, outbox, [_event(i) for i in range(5)])
    relay = OutboxRelay(database, outbox, bus, batch_size=2)
    assert await relay.drain() == 5
    assert await relay.drain() == 0
    assert seen == [f"e{i}" for i in range(5)]


async def test_relay_keeps_events_when_the_bus_fails(database: Database) -> None:
    await database.migrate(MIGRATIONS)

    class BrokenBus(InMemoryEventBus):
        async def publish(self, events: object) -> None:  # type: ignore[override]
            raise ConnectionError("bus down")

    async with database.transaction() as s:
        await add_events(s, outbox, [_event(1)])
    with pytest.raises(ConnectionError):
        await OutboxRelay(database, outbox, BrokenBus()).drain()
    good = InMemoryEventBus()
    assert await OutboxRelay(database, outbox, good).drain() == 1
