"""The shop's audit trail: a hash-chained ``audit_log`` table in each service's own database.

Every entry carries ``seq`` (1, 2, 3 ... without gaps), the fields of a
:class:`~grpckit.interceptors.AuditRecord`, ``prev_hash`` (the ``hash`` of entry ``seq - 1``;
:data:`GENESIS` for the first) and its own ``hash``::

    hash = sha256(prev_hash + canonical_json({seq, at, actor, roles, service_identity,
                                              method, resource, code, request_id, peer}))

(:func:`entry_hash`; canonical JSON: sorted keys, no spaces, ASCII). Changing an entry breaks
its hash; deleting one leaves a gap in ``seq`` and breaks the next ``prev_hash``; reordering
breaks both, which :func:`verify_chain` reports. Rewriting the whole chain from some entry on
is only detectable against a copy of a later head, and truncating the tail (deleting the last
entries) is not detectable at all without an external anchor: an operator who wants that
records the head hash and count that ``shop audit --verify`` prints somewhere else.

:class:`AuditLog` is the :class:`~grpckit.interceptors.AuditSink` of one service. It commits in
groups: ``append`` queues the record and waits; one writer task takes everything queued, reads
the chain head, chains and inserts the whole group in ONE transaction, then wakes the waiters
(or raises the transaction's error in each). Processes sharing a database are serialised by the
transaction: SQLite's ``BEGIN IMMEDIATE`` (``Database.transaction()``), on PostgreSQL
``pg_advisory_xact_lock(hashtext('shop.audit.<schema>'))`` taken before the head is read.

Why the table is not a migration: ``Database.migrate`` keeps ONE version counter per database,
owned by the service's own ``MIGRATIONS``. A number taken here would collide with the
service's next migration (whichever ran second would be skipped). So the first write of a
process creates the table itself, idempotently (``create_all(checkfirst=True)``), inside the
same serialised transaction, so two processes never race on it. Reading never creates it. A
future change to the table's shape must likewise be idempotent (check, then alter).

Example::

    log = AuditLog(ctx.database("orders"), "orders")
    sink = ServiceAuditSink({ORDER_SERVICE.full_name: log})
    app = App(interceptors=[..., audit(sink), ...])
    ...
    await log.close()
    problems = verify_chain([entry async for entry in log.entries()])
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from grpckit import get_logger
from grpckit.interceptors import AuditRecord
from shop.common.db import Database

__all__ = [
    "GENESIS",
    "AuditLog",
    "ChainViolation",
    "ServiceAuditSink",
    "canonical_json",
    "entry_hash",
    "verify_chain",
]

#: ``prev_hash`` of the first entry.
GENESIS = "0" * 64
#: The hashed fields of an entry, besides ``prev_hash`` (which is prefixed).
HASHED_FIELDS = (
    "seq",
    "at",
    "actor",
    "roles",
    "service_identity",
    "method",
    "resource",
    "code",
    "request_id",
    "peer",
)
#: Entries read per query by :meth:`AuditLog.entries`.
PAGE_SIZE = 1000

_log = get_logger("shop.audit")
_METADATA = sa.MetaData()
audit_log = sa.Table(
    "audit_log",
    _METADATA,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("at", sa.Text, nullable=False),  # ISO 8601 UTC text: hashed exactly as stored
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("roles", sa.Text, nullable=False),  # canonical JSON array
    sa.Column("service_identity", sa.Text, nullable=True),
    sa.Column("method", sa.Text, nullable=False),
    sa.Column("resource", sa.Text, nullable=False),
    sa.Column("code", sa.Text, nullable=False),
    sa.Column("request_id", sa.Text, nullable=False),
    sa.Column("peer", sa.Text, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)
_HEAD = sa.select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)
_PAGE = (
    sa.select(audit_log)
    .where(audit_log.c.seq > sa.bindparam("after"))
    .order_by(audit_log.c.seq)
    .limit(PAGE_SIZE)
)


def canonical_json(value: Any) -> str:
    """``value`` as JSON with sorted keys, no spaces and ASCII only (one spelling per value)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def entry_hash(prev_hash: str, entry: Mapping[str, Any]) -> str:
    """The hash of ``entry`` chained after ``prev_hash`` (hex sha256).

    Example: ``entry_hash(GENESIS, first) == first["hash"]`` for an intact first entry.
    """
    body = {name: entry.get(name) for name in HASHED_FIELDS}
    return hashlib.sha256((prev_hash + canonical_json(body)).encode("ascii")).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainViolation:
    """One problem :func:`verify_chain` found at entry ``seq``.

    ``problem`` is ``"changed"`` (content does not match its hash), ``"missing"`` (entries
    before this one are gone), ``"out_of_order"`` or ``"broken_link"`` (``prev_hash`` is not
    the previous entry's hash: something before it was changed, deleted or inserted).
    """

    seq: int
    problem: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "problem": self.problem, "message": self.message}


def verify_chain(entries: Iterable[Mapping[str, Any]]) -> list[ChainViolation]:
    """Check entries given in ``seq`` order; an empty list means the chain is intact.

    Detects changed entries, deleted entries (a ``seq`` gap, a broken ``prev_hash``) and
    reordered ones. Cannot detect a truncated tail: compare the head with an external anchor.

    Example::

        for v in verify_chain(entries):
            print(f"seq {v.seq}: {v.message}")
    """
    violations: list[ChainViolation] = []
    expected, prev = 1, GENESIS
    for entry in entries:
        seq = int(entry["seq"])
        if seq > expected:
            missing = str(expected) if seq == expected + 1 else f"{expected}..{seq - 1}"
            violations.append(
                ChainViolation(seq, "missing", f"seq {seq}: entries {missing} are missing")
            )
        elif seq < expected:
            violations.append(
                ChainViolation(seq, "out_of_order", f"seq {seq}: comes after seq {expected - 1}")
            )
        elif entry.get("prev_hash") != prev:
            violations.append(
                ChainViolation(
                    seq,
                    "broken_link",
                    f"seq {seq}: prev_hash does not match the hash of seq {seq - 1} "
                    "(an entry before it was changed, removed or inserted)",
                )
            )
        stored = entry.get("hash")
        if entry_hash(str(entry.get("prev_hash")), entry) != stored:
            violations.append(
                ChainViolation(seq, "changed", f"seq {seq}: content does not match its hash")
            )
        prev, expected = str(stored), seq + 1
    return violations


def _row(seq: int, record: AuditRecord) -> dict[str, Any]:
    return {
        "seq": seq,
        "at": record.time.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor": record.actor,
        "roles": sorted(record.roles),
        "service_identity": record.service_identity,
        "method": record.method,
        "resource": record.resource,
        "code": record.code,
        "request_id": record.request_id,
        "peer": record.peer,
    }


def _entry(row: sa.RowMapping) -> dict[str, Any]:
    entry = {str(key): value for key, value in row.items()}
    # an edited value that is not JSON stays text: verify_chain reports the entry as changed
    with contextlib.suppress(TypeError, ValueError):
        entry["roles"] = json.loads(entry["roles"])
    return entry


class AuditLog:
    """The audit trail of one service, in its database; an ``AuditSink`` with group commit.

    ``append`` returns once the record is committed (or raises what the commit raised).
    ``close()`` writes what is queued and stops the writer; later appends raise RuntimeError.

    Example::

        log = AuditLog(db, "orders")
        await log.append(record)
        async for entry in log.entries():
            print(entry["seq"], entry["actor"], entry["method"])
        await log.close()
    """

    def __init__(self, db: Database, service: str, *, max_batch: int = 500) -> None:
        self.db = db
        self.service = service
        self._max_batch = max_batch
        self._lock_key = f"shop.audit.{db.schema}"
        self._queue: list[tuple[AuditRecord, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closed = False
        self._table_ready = False

    async def append(self, record: AuditRecord) -> None:
        """Store ``record`` at the end of the chain; returns once it is committed."""
        if self._closed:
            raise RuntimeError(f"the {self.service} audit log is closed")
        done = asyncio.get_running_loop().create_future()
        self._queue.append((record, done))
        if self._writer is None or self._writer.done():  # first append, or the loop cancelled it
            self._writer = asyncio.create_task(self._run(), name=f"audit-{self.service}")
        self._wake.set()
        await done

    async def close(self) -> None:
        """Commit what is queued, then stop the writer."""
        self._closed = True
        self._wake.set()
        writer, self._writer = self._writer, None
        if writer is not None and not writer.done():
            await writer

    async def _run(self) -> None:
        batch: list[tuple[AuditRecord, asyncio.Future[None]]] = []
        try:
            while True:
                if not self._queue:
                    if self._closed:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                batch = self._queue[: self._max_batch]
                del self._queue[: len(batch)]
                try:
                    await self._write([record for record, _ in batch])
                except Exception as exc:
                    _settle(batch, exc)
                else:
                    _settle(batch, None)
                batch = []
        finally:  # cancelled (loop shutting down): nobody may wait forever
            _settle([*batch, *self._queue], RuntimeError("the audit writer stopped"))
            self._queue.clear()

    async def _write(self, records: list[AuditRecord]) -> None:
        async with self.db.transaction() as session:
            conn = await session.connection()
            if self.db.dialect == "postgresql":
                key = sa.func.hashtext(self._lock_key)
                await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))
            if not self._table_ready:
                await self._create_table(conn)
            head = (await conn.execute(_HEAD)).first()
            seq, prev = (int(head.seq), str(head.hash)) if head is not None else (0, GENESIS)
            rows = []
            for record in records:
                seq += 1
                row = _row(seq, record)
                row["prev_hash"], row["hash"] = prev, entry_hash(prev, row)
                row["roles"] = canonical_json(row["roles"])
                prev = row["hash"]
                rows.append(row)
            await conn.execute(audit_log.insert(), rows)
        self._table_ready = True

    async def _create_table(self, conn: AsyncConnection) -> None:
        if self.db.dialect == "postgresql":  # the service may not have migrated (yet)
            await conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{self.db.schema}"'))
        await conn.run_sync(_METADATA.create_all, checkfirst=True)

    async def exists(self) -> bool:
        """True when the ``audit_log`` table exists (never creates it)."""
        async with self.db.read() as session:
            conn = await session.connection()
            if self.db.dialect == "postgresql":
                found = await conn.scalar(sa.text("SELECT to_regclass('audit_log') IS NOT NULL"))
                return bool(found)
            return bool(await conn.run_sync(lambda c: sa.inspect(c).has_table("audit_log")))

    async def entries(self) -> AsyncIterator[dict[str, Any]]:
        """Every entry in ``seq`` order, as dicts (``roles`` a list); none if there is no table."""
        if not await self.exists():
            return
        after = 0
        while True:
            async with self.db.read() as session:
                rows = (await session.execute(_PAGE, {"after": after})).mappings().all()
            for row in rows:
                yield _entry(row)
            if len(rows) < PAGE_SIZE:
                return
            after = int(rows[-1]["seq"])


def _settle(
    waiters: Iterable[tuple[AuditRecord, asyncio.Future[None]]], error: BaseException | None
) -> None:
    for _, done in waiters:
        if done.done():  # the caller gave up (cancelled); the record was written anyway
            continue
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)


class ServiceAuditSink:
    """Routes each record to the log of the service it called (by ``record.method``).

    ``logs`` is keyed by proto service full name and read at each append (not copied), so logs
    added to it after the sink was built are used. Records of other services are dropped with a
    warning (once per service). ``close()`` closes every log.

    Example::

        sink = ServiceAuditSink({"shop.orders.v1.OrderService": AuditLog(orders_db, "orders")})
        await sink.append(record)  # record.method == "/shop.orders.v1.OrderService/CreateOrder"
    """

    def __init__(self, logs: Mapping[str, AuditLog]) -> None:
        self._logs = logs
        self._warned: set[str] = set()

    async def append(self, record: AuditRecord) -> None:
        service = record.method.lstrip("/").partition("/")[0]
        log = self._logs.get(service)
        if log is not None:
            await log.append(record)
            return
        if service not in self._warned and len(self._warned) < 1024:
            self._warned.add(service)
            _log.warning("audit.unknown_service", service=service, method=record.method)

    async def close(self) -> None:
        """Close every log (each once), committing what they have queued."""
        for log in {id(log): log for log in self._logs.values()}.values():
            with contextlib.suppress(Exception):
                await log.close()
