"""Fixtures shared by the whole suite.

``database`` yields an empty, un-migrated ``Database`` on SQLite and on PostgreSQL. PostgreSQL is
taken from SHOP_TEST_POSTGRES_URL (default: the local server at 127.0.0.1:5432, database
``test``). Under CI=true an unreachable PostgreSQL fails the tests; elsewhere they are skipped
with a message saying how to enable them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import NoReturn

import pytest
import sqlalchemy as sa

from shop.common.db import Database

POSTGRES_URL = os.environ.get(
    "SHOP_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _postgres_reachable() -> str | None:
    async def probe() -> str | None:
        db = Database(POSTGRES_URL, schema="public")
        try:
            return None if await db.ping() else f"cannot connect to {POSTGRES_URL}"
        finally:
            await db.close()

    def run_probe() -> str | None:
        try:
            return asyncio.run(probe())
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"

    # In a worker thread: this is also called from inside a running loop (async fixtures).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(run_probe).result()


_PG_PROBLEM: str | bool | None = False


REDIS_URL = os.environ.get("SHOP_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
_REDIS_PROBLEM: str | bool | None = False


async def _redis_problem() -> str | None:
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS_URL, socket_connect_timeout=1.0)
    try:
        await client.ping()
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        await client.aclose()


async def require_redis() -> None:
    """Skip (or fail under CI) when Redis is unreachable."""
    global _REDIS_PROBLEM
    if _REDIS_PROBLEM is False:
        _REDIS_PROBLEM = await _redis_problem()
    if _REDIS_PROBLEM:
        unavailable(
            f"Redis unreachable at {REDIS_URL} ({_REDIS_PROBLEM}); start it or set "
            "SHOP_TEST_REDIS_URL to a redis:// URL to run these tests"
        )


@contextlib.asynccontextmanager
async def redis_keyspace(label: str) -> AsyncIterator[str]:
    """A key prefix of its own in the test Redis (skips/fails like :func:`require_redis`);
    every key under it is deleted afterwards."""
    from redis.asyncio import Redis

    await require_redis()
    prefix = f"test:{label}:{uuid.uuid4().hex}:"
    try:
        yield prefix
    finally:
        client = Redis.from_url(REDIS_URL)
        try:
            keys = [key async for key in client.scan_iter(match=prefix + "*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()


def unavailable(message: str) -> NoReturn:
    """A service the test needs is missing: a failure under CI=true, a skip elsewhere."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def require_postgres() -> None:
    """Skip (or fail under CI) when PostgreSQL is unreachable."""
    global _PG_PROBLEM
    if _PG_PROBLEM is False:
        _PG_PROBLEM = _postgres_reachable()
    if _PG_PROBLEM:
        unavailable(
            f"PostgreSQL unreachable ({_PG_PROBLEM}); start it or set SHOP_TEST_POSTGRES_URL "
            "to a postgresql+asyncpg:// URL to run these tests"
        )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """An empty database of one service, on SQLite and on PostgreSQL (its own schema)."""
    if request.param == "sqlite":
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'service.db'}", schema="service")
        try:
            yield db
        finally:
            await db.close()
        return
    require_postgres()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    db = Database(POSTGRES_URL, schema=schema)
    try:
        yield db
    finally:
        await db.close()
        admin = Database(POSTGRES_URL, schema="public")
        async with admin.engine.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        await admin.close()
