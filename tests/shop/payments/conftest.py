"""Payments fixtures: a migrated store on SQLite and PostgreSQL, a controllable clock."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from shop.api.events.v1 import events_pb2
from shop.common.db import Database
from shop.payments.store import MIGRATIONS, PaymentsStore, outbox

ReadEvents = Callable[[], Awaitable[list[events_pb2.Event]]]


class FakeClock:
    """Advances one millisecond per reading (so rows are ordered), more with ``advance``."""

    def __init__(self) -> None:
        self.now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(database: Database, clock: FakeClock) -> PaymentsStore:
    await database.migrate(MIGRATIONS)
    return PaymentsStore(database, clock=clock, lease=timedelta(seconds=30))


@pytest.fixture
def outbox_events(database: Database) -> ReadEvents:
    """Reads every event in the payments outbox, in write order."""

    async def read() -> list[events_pb2.Event]:
        async with database.read() as session:
            rows = await session.execute(sa.select(outbox.c.payload).order_by(outbox.c.seq))
            return [events_pb2.Event.FromString(row.payload) for row in rows]

    return read
