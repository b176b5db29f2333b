from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from tests.conftest import POSTGRES_URL, require_postgres
from tests.e2e.clients import connect
from tests.e2e.harness import ShopProcess

pytestmark = pytest.mark.e2e


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[ShopProcess]:
    """A running all-in-one shop (SQLite, demo catalog)."""
    process = ShopProcess(tmp_path / "data").start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
async def channel(shop: ShopProcess) -> AsyncIterator[grpc.aio.Channel]:
    async with connect(shop.grpc_address) as ch:
        yield ch


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    require_postgres()
    name = f"shop_e2e_{uuid.uuid4().hex[:12]}"

    async def admin(statement: str) -> None:
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
        async with engine.connect() as conn:
            await conn.execute(sa.text(statement))
        await engine.dispose()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
