"""The hash-chained audit log: group commit, tamper detection, routing and ``shop audit``."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import structlog
from sqlalchemy import event
from structlog.testing import capture_logs

from grpckit.interceptors import AuditRecord
from shop import audit_cli
from shop.common.audit import (
    GENESIS,
    AuditLog,
    ChainViolation,
    ServiceAuditSink,
    entry_hash,
    verify_chain,
)
from shop.common.db import Database, Migration, database_url

ORDERS = "shop.orders.v1.OrderService"


def record(n: int = 0, *, actor: str = "u-1", service: str = ORDERS) -> AuditRecord:
    return AuditRecord(
        time=datetime(2030, 1, 1, 0, 0, n % 60, tzinfo=UTC),
        actor=actor,
        roles=("user",),
        service_identity="gateway",
        method=f"/{service}/CreateOrder",
        resource=f"user_id=u-1,order.id=o-{n}",
        code="OK",
        request_id=f"r-{n}",
        peer="127.0.0.1",
    )


async def entries(log: AuditLog) -> list[dict[str, Any]]:
    return [entry async for entry in log.entries()]


async def filled(db: Database, n: int) -> AuditLog:
    log = AuditLog(db, "orders")
    for i in range(n):
        await log.append(record(i))
    return log


def same_database(db: Database) -> Database:
    """A second engine on ``db`` (another process, as far as locking goes)."""
    return Database(db.engine.url.render_as_string(hide_password=False), schema=db.schema)


# --- the chain ------------------------------------------------------------------------------


async def test_concurrent_appends_form_one_chain_in_one_commit(database: Database) -> None:
    commits: list[int] = []
    event.listen(database.engine.sync_engine, "commit", lambda conn: commits.append(1))
    log = AuditLog(database, "orders")
    await asyncio.gather(*(log.append(record(i)) for i in range(50)))
    await log.close()
    found = await entries(log)
    assert [e["seq"] for e in found] == list(range(1, 51))
    assert found[0]["prev_hash"] == GENESIS
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(found))
    assert verify_chain(found) == []
    assert len(commits) <= 2  # grouped: not one transaction per record
    assert found[0]["roles"] == ["user"] and found[0]["at"] == "2030-01-01T00:00:00.000000+00:00"
    assert {e["request_id"] for e in found} == {f"r-{i}" for i in range(50)}


async def test_two_writers_on_one_database_share_the_chain(database: Database) -> None:
    other = same_database(database)
    first, second = AuditLog(database, "orders"), AuditLog(other, "orders")
    try:
        await asyncio.gather(
            *(first.append(record(i)) for i in range(20)),
            *(second.append(record(i)) for i in range(20, 40)),
        )
        await first.close()
        await second.close()
    finally:
        await other.close()
    found = await entries(first)
    assert [e["seq"] for e in found] == list(range(1, 41))
    assert verify_chain(found) == []


async def test_a_changed_entry_is_reported_by_seq(database: Database) -> None:
    log = await filled(database, 5)
    async with database.transaction() as s:
        await s.execute(sa.text("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3"))
    assert verify_chain(await entries(log)) == [
        ChainViolation(3, "changed", "seq 3: content does not match its hash")
    ]
    await log.close()


async def test_a_rehashed_change_breaks_the_next_link(database: Database) -> None:
    log = await filled(database, 5)
    forged = (await entries(log))[2] | {"actor": "mallory"}
    forged_hash = entry_hash(forged["prev_hash"], forged)
    async with database.transaction() as s:
        await s.execute(
            sa.text("UPDATE audit_log SET actor = 'mallory', hash = :h WHERE seq = 3"),
            {"h": forged_hash},
        )
    assert [(v.seq, v.problem) for v in verify_chain(await entries(log))] == [(4, "broken_link")]
    await log.close()


async def test_a_deleted_entry_is_detected(database: Database) -> None:
    log = await filled(database, 5)
    async with database.transaction() as s:
        await s.execute(sa.text("DELETE FROM audit_log WHERE seq = 3"))
    violations = verify_chain(await entries(log))
    assert [(v.seq, v.problem) for v in violations] == [(4, "missing")]
    assert "entries 3 are missing" in violations[0].message
    # the chain goes on after the gap: new entries link to the head
    await log.append(record(9))
    assert [v.seq for v in verify_chain(await entries(log))] == [4]
    await log.close()


def chain(n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    prev = GENESIS
    for seq in range(1, n + 1):
        entry: dict[str, Any] = {"seq": seq, "at": "t", "actor": f"a{seq}", "roles": []}
        entry |= {"service_identity": None, "method": "/m", "resource": "", "code": "OK"}
        entry |= {"request_id": "", "peer": "", "prev_hash": prev}
        entry["hash"] = prev = entry_hash(prev, entry)
        out.append(entry)
    return out


def test_reordered_entries_are_detected() -> None:
    entries = chain(4)
    assert verify_chain(entries) == []
    swapped = [entries[0], entries[2], entries[1], entries[3]]
    problems = [(v.seq, v.problem) for v in verify_chain(swapped)]
    assert (3, "missing") in problems and (2, "out_of_order") in problems


def test_a_missing_first_entry_is_detected() -> None:
    assert [(v.seq, v.problem) for v in verify_chain(chain(3)[1:])] == [(2, "missing")]


# --- the writer -----------------------------------------------------------------------------


async def test_close_commits_what_is_queued_then_refuses(database: Database) -> None:
    log = AuditLog(database, "orders")
    pending = [asyncio.create_task(log.append(record(i))) for i in range(10)]
    await asyncio.sleep(0)  # let the appends queue (they wait on their commit, not on this)
    await log.close()
    await asyncio.gather(*pending)
    assert len(await entries(log)) == 10
    with pytest.raises(RuntimeError, match="closed"):
        await log.append(record())


async def test_a_failed_commit_raises_in_every_waiter(database: Database) -> None:
    wrong = sa.MetaData()
    sa.Table("audit_log", wrong, sa.Column("seq", sa.Integer, primary_key=True))
    await database.migrate([Migration(1, "an audit_log of another shape", wrong.create_all)])
    log = AuditLog(database, "orders")
    results = await asyncio.gather(
        *(log.append(record(i)) for i in range(3)), return_exceptions=True
    )
    await log.close()
    assert len(results) == 3
    assert all(isinstance(r, sa.exc.DBAPIError) for r in results)


async def test_reading_never_creates_the_table(database: Database) -> None:
    log = AuditLog(database, "orders")
    assert await entries(log) == []
    assert not await log.exists()
    await log.append(record())
    assert await log.exists()
    await log.close()


async def test_the_table_is_created_beside_migrated_tables(database: Database) -> None:
    metadata = sa.MetaData()
    sa.Table("items", metadata, sa.Column("id", sa.Integer, primary_key=True))
    await database.migrate([Migration(1, "items", metadata.create_all)])
    log = await filled(database, 2)
    assert await database.migrate([Migration(1, "items", metadata.create_all)]) == 1
    assert len(await entries(log)) == 2
    await log.close()


# --- routing --------------------------------------------------------------------------------


async def test_service_sink_routes_by_method_and_drops_unknown(tmp_path: Path) -> None:
    structlog.reset_defaults()
    orders_db = Database(f"sqlite+aiosqlite:///{tmp_path / 'orders.db'}", schema="orders")
    users_db = Database(f"sqlite+aiosqlite:///{tmp_path / 'users.db'}", schema="users")
    orders, users = AuditLog(orders_db, "orders"), AuditLog(users_db, "users")
    logs_by_service = {ORDERS: orders}
    sink = ServiceAuditSink(logs_by_service)
    logs_by_service["shop.users.v1.UserService"] = users  # added after: still used
    try:
        await sink.append(record(1))
        await sink.append(record(2, service="shop.users.v1.UserService"))
        with capture_logs() as logs:
            await sink.append(record(3, service="shop.nope.v1.Nope"))
            await sink.append(record(4, service="shop.nope.v1.Nope"))
        await sink.close()
        assert [e["request_id"] for e in await entries(orders)] == ["r-1"]
        assert [e["request_id"] for e in await entries(users)] == ["r-2"]
        assert [(e["event"], e["service"]) for e in logs] == [
            ("audit.unknown_service", "shop.nope.v1.Nope")
        ]
    finally:
        await orders_db.close()
        await users_db.close()


# --- shop audit -----------------------------------------------------------------------------


async def fill_data_dir(data_dir: Path, service: str, n: int) -> None:
    db = Database(database_url(service, data_dir=data_dir, url=None), schema=service)
    log = AuditLog(db, service)
    for i in range(n):
        await log.append(record(i))
    await log.close()
    await db.close()


async def run_cli(data_dir: Path, **kwargs: Any) -> tuple[int, list[dict[str, Any]], str]:
    out, err = io.StringIO(), io.StringIO()
    code = await audit_cli.main(data_dir, None, out=out, err=err, **kwargs)
    return code, [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue()


async def test_cli_prints_entries_and_verifies(tmp_path: Path) -> None:
    await fill_data_dir(tmp_path, "orders", 3)
    await fill_data_dir(tmp_path, "users", 2)
    code, lines, err = await run_cli(tmp_path, verify=True)
    assert code == 0
    assert [(line["service"], line["seq"]) for line in lines] == [
        ("users", 1),
        ("users", 2),
        ("orders", 1),
        ("orders", 2),
        ("orders", 3),
    ]
    summaries = [json.loads(line) for line in err.splitlines()]
    assert [(s["service"], s["entries"], s["ok"]) for s in summaries] == [
        ("users", 2, True),
        ("orders", 3, True),
    ]
    assert summaries[1]["head"] == lines[-1]["hash"]
    code, lines, _ = await run_cli(tmp_path, verify=False, services=["orders"])
    assert code == 0 and {line["service"] for line in lines} == {"orders"}


async def test_cli_exits_1_and_names_the_broken_seq(tmp_path: Path) -> None:
    await fill_data_dir(tmp_path, "orders", 3)
    db = Database(database_url("orders", data_dir=tmp_path, url=None), schema="orders")
    async with db.transaction() as s:
        await s.execute(sa.text("UPDATE audit_log SET code = 'PERMISSION_DENIED' WHERE seq = 2"))
    await db.close()
    code, lines, err = await run_cli(tmp_path, verify=True)
    assert code == 1
    assert len(lines) == 3
    [summary] = [json.loads(line) for line in err.splitlines()]
    assert summary["ok"] is False
    assert summary["violations"] == [
        {"seq": 2, "problem": "changed", "message": "seq 2: content does not match its hash"}
    ]


async def test_cli_exits_2_when_there_is_nothing_to_read(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    code, lines, err = await run_cli(missing, verify=True)
    assert (code, lines) == (2, [])
    assert "--data-dir" in err
    assert not missing.exists()  # nothing created
    empty = Database(database_url("users", data_dir=tmp_path, url=None), schema="users")
    await empty.ping()  # a database without an audit log
    await empty.close()
    assert (await run_cli(tmp_path, verify=False))[0] == 2
    assert not (tmp_path / "orders.db").exists()


def test_run_is_main_for_synchronous_callers(tmp_path: Path) -> None:
    err = io.StringIO()
    assert audit_cli.run(tmp_path / "none", None, verify=True, out=io.StringIO(), err=err) == 2
    assert "no audit log found" in err.getvalue()
