"""Gateway fixtures: a migrated journal (SQLite and PostgreSQL) and a saga over fake peers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shop.common.db import Database
from shop.gateway.saga import OrderSaga
from shop.gateway.store import MIGRATIONS, SagaStore
from tests.shop.gateway.gateway_fakes import CONFIG, Clock, FakePeers, World, no_sleep


@pytest.fixture
async def store(database: Database) -> SagaStore:
    await database.migrate(MIGRATIONS)
    return SagaStore(database)


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SagaStore]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}", schema="gateway")
    await db.migrate(MIGRATIONS)
    yield SagaStore(db)
    await db.close()


@pytest.fixture
def world(sqlite_store: SagaStore) -> World:
    peers = FakePeers()
    clock = Clock()
    saga = OrderSaga(sqlite_store, peers, CONFIG, clock=clock, sleep=no_sleep)
    return World(peers, sqlite_store, saga, clock, peers.add_user(), peers.add_product(10))
