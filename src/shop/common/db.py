"""One service's database: SQLite file or a PostgreSQL schema, migrations, transactions.

Each service owns its tables. On SQLite it has its own file; on PostgreSQL its own schema
(selected through ``search_path``), so services never share tables even on one server.

>>> db = Database("sqlite+aiosqlite:///./.shop/orders.db", schema="orders")  # doctest: +SKIP
>>> await db.migrate(MIGRATIONS)                                              # doctest: +SKIP
>>> async with db.transaction() as session: ...                               # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Migration:
    """One schema change. ``apply`` runs synchronously inside a transaction (``run_sync``)."""

    version: int
    description: str
    apply: Callable[[Connection], None]


class DatabaseError(RuntimeError):
    """The database cannot be used as configured; the message says what to change."""


def database_url(service: str, *, data_dir: Path, url: str | None) -> str:
    """The URL a service uses: ``url`` if given, else a SQLite file ``<data_dir>/<service>.db``."""
    if url:
        return url
    data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite+aiosqlite:///{(data_dir / f'{service}.db').resolve()}"


def _is_file(path: str) -> bool:
    return Path(path).is_file()


async def open_existing(service: str, *, data_dir: Path, url: str | None) -> Database | None:
    """The service's database if it already exists, else ``None``; never creates anything.

    For tools that read what a shop left behind (``shop audit``, ``shop verify``): a SQLite
    file must exist (opening one creates it), a PostgreSQL schema named after the service must
    exist. Example: ``db = await open_existing("orders", data_dir=Path(".shop"), url=None)``
    """
    if not url:
        url = f"sqlite+aiosqlite:///{(data_dir / f'{service}.db').resolve()}"
    if make_url(url).get_backend_name() == "sqlite":
        path = make_url(url).database
        exists = bool(path) and path != ":memory:" and _is_file(str(path))
        return Database(url, schema=service) if exists else None
    db = Database(url, schema=service)
    try:
        async with db.read() as session:
            found = await session.scalar(
                sa.text("SELECT 1 FROM information_schema.schemata WHERE schema_name = :s"),
                {"s": service},
            )
    except BaseException:
        await db.close()
        raise
    if found is None:
        await db.close()
        return None
    return db


class Database:
    """An async SQLAlchemy engine bound to one service's tables."""

    def __init__(self, url: str, *, schema: str, pool_size: int = 10) -> None:
        if not _SCHEMA_NAME.match(schema):
            raise DatabaseError(f"schema {schema!r} must be a lowercase identifier")
        parsed = make_url(url)
        self.schema = schema
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            self.engine = _sqlite_engine(url)
        elif self.dialect == "postgresql":
            if parsed.get_driver_name() != "asyncpg":
                raise DatabaseError("use a postgresql+asyncpg:// URL for PostgreSQL")
            self.engine = create_async_engine(
                url,
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_pre_ping=True,
                connect_args={"server_settings": {"search_path": schema}},
            )
        else:
            raise DatabaseError(
                f"unsupported database {self.dialect!r}: use sqlite+aiosqlite:// or "
                "postgresql+asyncpg://"
            )
        # SQLite has one writer at a time. Queue this process's writers here, in asyncio,
        # instead of in SQLite's busy handler, which sleeps in 1..100 ms steps while it waits.
        self._write_lock: asyncio.Lock | None = asyncio.Lock() if self.dialect == "sqlite" else None
        self._writer = self.engine.execution_options(shop_write=True)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._write_sessions = async_sessionmaker(self._writer, expire_on_commit=False)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A read-write transaction: commits on exit, rolls back on error.

        On SQLite the writers of this process take turns on an asyncio lock, and each takes
        SQLite's write lock up front (BEGIN IMMEDIATE), so a writer never fails with "database
        is locked" when it upgrades. Do not call other services while holding a transaction.
        """
        async with self._write_turn(), self._write_sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def _write_turn(self) -> AsyncIterator[None]:
        if self._write_lock is None:
            yield
            return
        async with self._write_lock:
            yield

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A read-only session (a plain transaction, rolled back on exit)."""
        async with self._sessions() as session:
            yield session

    async def migrate(self, migrations: Sequence[Migration]) -> int:
        """Apply the migrations newer than the stored version; returns the resulting version."""
        versions = [m.version for m in migrations]
        if versions != sorted(set(versions)):
            raise DatabaseError("migration versions must be unique and increasing")
        if self.dialect == "postgresql":
            await self._create_schema()
        async with self._write_turn(), self._writer.begin() as conn:
            if self.dialect == "postgresql":
                lock_key = sa.func.hashtext(f"shop.migrate.{self.schema}")
                await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(lock_key)))
            await conn.run_sync(_VERSION_METADATA.create_all)
            current = (await conn.execute(sa.select(sa.func.max(_VERSIONS.c.version)))).scalar()
            current = current or 0
            for migration in migrations:
                if migration.version <= current:
                    continue
                await conn.run_sync(migration.apply)
                await conn.execute(
                    _VERSIONS.insert().values(
                        version=migration.version, description=migration.description
                    )
                )
                current = migration.version
        return int(current)

    async def _create_schema(self) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))

    async def ping(self) -> bool:
        """True when a trivial query succeeds (used by health checks)."""
        try:
            async with self.engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
        except Exception:
            return False
        return True

    async def close(self) -> None:
        await self.engine.dispose()


_VERSION_METADATA = sa.MetaData()
_VERSIONS = sa.Table(
    "schema_migrations",
    _VERSION_METADATA,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("description", sa.String(200), nullable=False),
    sa.Column("applied_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
)


def _use_wal(cursor: Any) -> None:
    """Switch the file to WAL once. The switch needs the file to itself and SQLite answers
    "database is locked" at once (no busy wait) while another process writes, which happens
    when several processes open a new file together: retry for up to ~5 s."""
    cursor.execute("PRAGMA journal_mode")
    row = cursor.fetchone()
    if row is not None and str(row[0]).lower() == "wal":
        return
    for attempt in range(50):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 49:
                raise
            time.sleep(0.1)  # at connect only, and only while another writer holds the file


def _sqlite_engine(url: str) -> AsyncEngine:
    path = make_url(url).database
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, connect_args={"timeout": 30}, pool_reset_on_return=None)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA busy_timeout=30000")
        _use_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("shop_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine
