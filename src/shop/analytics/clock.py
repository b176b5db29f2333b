"""Time for the analytics pipeline: a ``Clock`` protocol, the system clock and a fake for tests.

Everything time-dependent in analytics (validation of ``occurred_at``, window buckets, alert
cooldowns, the real-time stream's interval) reads a clock that is passed in, so tests move time
by hand instead of sleeping.

Example::

    clock = FakeClock(start=1_700_000_000.0)
    clock.advance(1.5)
    assert clock.now() == 1_700_000_001.5
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

__all__ = ["Clock", "FakeClock", "Sleep", "SystemClock"]

#: How a stream waits between snapshots: ``asyncio.sleep`` or ``FakeClock.sleep``.
Sleep = Callable[[float], Awaitable[None]]


class Clock(Protocol):
    """Wall-clock time in seconds since the epoch (UTC)."""

    def now(self) -> float: ...


class SystemClock:
    """The real clock (``time.time``). Example: ``SystemClock().now()``."""

    def now(self) -> float:
        return time.time()


class FakeClock:
    """A clock that moves only when told to; ``sleep`` returns once ``advance`` passes its end.

    Example::

        clock = FakeClock()
        sleeper = asyncio.create_task(clock.sleep(1.0))
        await clock.wait_for_sleepers(1)
        clock.advance(1.0)
        await sleeper
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []
        self._changed: asyncio.Event | None = None

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose end has come."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self._now += seconds
        waiting: list[tuple[float, asyncio.Future[None]]] = []
        for end, future in self._sleepers:
            if future.done():
                continue
            if end <= self._now:
                future.set_result(None)
            else:
                waiting.append((end, future))
        self._sleepers = waiting
        self._notify()

    async def sleep(self, seconds: float) -> None:
        """Wait until the fake time has advanced by ``seconds``."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self._now + seconds, future))
        self._notify()
        try:
            await future
        finally:
            self._sleepers = [(end, f) for end, f in self._sleepers if f is not future]
            self._notify()

    @property
    def sleepers(self) -> int:
        """How many tasks are inside ``sleep`` right now."""
        return sum(1 for _, future in self._sleepers if not future.done())

    async def wait_for_sleepers(self, count: int) -> None:
        """Return once exactly ``count`` tasks are sleeping (so ``advance`` will wake them)."""
        while self.sleepers != count:
            if self._changed is None:
                self._changed = asyncio.Event()
            await self._changed.wait()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None
