"""Dependency-aware health: the standard grpc.health.v1 servicer driven by async checks.

A check is ``async () -> bool``. While any check of a service fails (returns ``False``, raises,
or takes longer than its interval), that service and the overall entry ``""`` are NOT_SERVING.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

__all__ = ["HealthCheck", "HealthState"]

Check = Callable[[], Awaitable[bool]]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True)
class HealthCheck:
    """One dependency check for ``service``, run every ``interval`` seconds."""

    service: str
    check: Check
    interval: float = 5.0


class HealthState:
    """Owns the health servicer, the service list and the check loops."""

    def __init__(self, logger: structlog.stdlib.BoundLogger) -> None:
        self.servicer = health_aio.HealthServicer()
        self._services: list[str] = []
        self._checks: list[HealthCheck] = []
        self._failing: dict[int, bool] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._serving = False
        self._log = logger

    def add_service(self, service: str) -> None:
        if service not in self._services:
            self._services.append(service)

    def add_check(self, check: HealthCheck) -> None:
        self.add_service(check.service)
        self._checks.append(check)

    async def prepare(self) -> None:
        """Every entry NOT_SERVING until :meth:`serve`."""
        for service in ["", *self._services]:
            await self.servicer.set(service, NOT_SERVING)

    async def serve(self) -> None:
        """Run each check once, publish statuses, then keep checking in the background."""
        results = await asyncio.gather(*(self._run(c) for c in self._checks))
        for index, ok in enumerate(results):
            self._failing[index] = not ok
        self._serving = True
        await self._publish()
        self._tasks = [
            asyncio.create_task(self._loop(index, c), name=f"health-check:{c.service}")
            for index, c in enumerate(self._checks)
        ]

    async def shutdown(self) -> None:
        """Everything NOT_SERVING for good; stop the check loops."""
        self._serving = False
        await self.servicer.enter_graceful_shutdown()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _loop(self, index: int, check: HealthCheck) -> None:
        while True:
            await asyncio.sleep(check.interval)
            failing = not await self._run(check)
            if failing != self._failing.get(index):
                self._failing[index] = failing
                await self._publish()

    async def _run(self, check: HealthCheck) -> bool:
        try:
            async with asyncio.timeout(check.interval):
                ok = bool(await check.check())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._log.warning("health.check_failed", service=check.service, error=repr(exc))
            return False
        if not ok:
            self._log.warning("health.check_failed", service=check.service)
        return ok

    async def _publish(self) -> None:
        if not self._serving:
            return
        failing = {c.service for i, c in enumerate(self._checks) if self._failing.get(i)}
        for service in self._services:
            await self.servicer.set(service, NOT_SERVING if service in failing else SERVING)
        await self.servicer.set("", NOT_SERVING if failing else SERVING)
