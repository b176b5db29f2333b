"""Orders fixtures: a migrated store on SQLite and PostgreSQL, with a clock that ticks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from shop.api.events.v1 import events_pb2
from shop.common.db import Database
from shop.orders.store import MIGRATIONS, OrdersStore, outbox

START = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class TickingClock:
    """Each reading is one second after the previous one: creation order is deterministic."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture
def clock() -> TickingClock:
    return TickingClock()


@pytest.fixture
async def store(database: Database, clock: TickingClock) -> OrdersStore:
    await database.migrate(MIGRATIONS)
    return OrdersStore(database, clock=clock)


ReadEvents = Callable[[], Awaitable[list[events_pb2.Event]]]


@pytest.fixture
def outbox_events(database: Database) -> ReadEvents:
    """Reads every event in the orders outbox, in write order."""

    async def read() -> list[events_pb2.Event]:
        async with database.read() as session:
            rows = await session.execute(sa.select(outbox.c.payload).order_by(outbox.c.seq))
            return [events_pb2.Event.FromString(row.payload) for row in rows]

    return read
