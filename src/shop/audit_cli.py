"""``shop audit``: print every service's audit trail as JSON lines, optionally checking the chains.

Reads the SQLite files ``<data_dir>/<service>.db`` (or each service's PostgreSQL schema with
``database_url``) that exist and hold an ``audit_log`` table; creates nothing. Each entry is one
JSON object per line on ``out`` with a ``"service"`` field. With ``verify``, one summary per
service goes to ``err``: ``{"service", "entries", "head", "ok", "violations"}``; ``head`` (the
last hash) and ``entries`` are what an operator records elsewhere to detect a truncated tail
later (see :mod:`shop.common.audit`).

Exit codes: 0 all read chains intact (or not checked), 1 a chain is broken or a database could
not be read, 2 nothing to read.

``main`` is async; ``run`` is the same for synchronous callers (it owns the event loop).

Example::

    code = asyncio.run(main(Path(".shop"), None, verify=True))  # or run(Path(".shop"), ...)
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import sqlalchemy as sa

from shop.common.audit import AuditLog, verify_chain
from shop.common.db import open_existing
from shop.common.runtime import SERVICES

__all__ = ["main", "run"]


async def main(
    data_dir: Path,
    database_url: str | None,
    *,
    verify: bool,
    services: Sequence[str] | None = None,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Print the audit entries of ``services`` (default: all six); returns the exit code.

    Example: ``sys.exit(asyncio.run(main(Path(".shop"), None, verify=True)))``
    """
    chosen = list(services) if services else list(SERVICES)
    unknown = [s for s in chosen if s not in SERVICES]
    if unknown:
        print(
            f"unknown service(s) {', '.join(unknown)}: choose from {', '.join(SERVICES)}", file=err
        )
        return 2
    found, failed = 0, False
    for service in chosen:
        try:
            entries = await _read(service, data_dir, database_url)
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            print(
                _json({"service": service, "error": f"cannot read the audit log: {exc}"}), file=err
            )
            failed = True
            continue
        if entries is None:
            continue
        found += 1
        for entry in entries:
            print(_json({"service": service, **entry}), file=out)
        if verify:
            failed = _report(service, entries, err) or failed
    if not found and not failed:
        where = "the database" if database_url else str(data_dir)
        print(
            f"no audit log found in {where}: pass --data-dir (or --database-url) of a shop "
            "that has served calls",
            file=err,
        )
        return 2
    return 1 if failed else 0


def run(
    data_dir: Path,
    database_url: str | None,
    *,
    verify: bool,
    services: Sequence[str] | None = None,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """:func:`main` for synchronous callers (the ``shop audit`` command): runs its own loop.

    Example: ``sys.exit(run(Path(".shop"), None, verify=True))``
    """
    return asyncio.run(
        main(data_dir, database_url, verify=verify, services=services, out=out, err=err)
    )


async def _read(service: str, data_dir: Path, url: str | None) -> list[dict[str, Any]] | None:
    """The service's entries, or ``None`` when it has no database or no audit table."""
    db = await open_existing(service, data_dir=data_dir, url=url)
    if db is None:
        return None
    try:
        log = AuditLog(db, service)
        if not await log.exists():
            return None
        return [entry async for entry in log.entries()]
    finally:
        await db.close()


def _report(service: str, entries: list[dict[str, Any]], err: TextIO) -> bool:
    """Print the service's summary; True when its chain is broken."""
    violations = verify_chain(entries)
    summary = {
        "service": service,
        "entries": len(entries),
        "head": entries[-1]["hash"] if entries else None,
        "ok": not violations,
        "violations": [v.as_dict() for v in violations],
    }
    print(_json(summary), file=err)
    return bool(violations)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)
