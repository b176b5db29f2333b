"""deadlines: bound handler time when the caller sent no deadline (or a too generous one).

Emits: DEADLINE_EXCEEDED when the bound expires (the handler sees ``CancelledError``).
The bound is published as ``CallInfo.deadline``; :func:`grpckit.dial` channels read it (with
the caller's own deadline) through :func:`grpckit.current_call`, so downstream calls made by
the handler never outlive it.

A call whose client deadline is within ``maximum`` costs nothing: grpc enforces that deadline
itself. Bounded calls are not given a timer each (``asyncio.timeout`` costs ~20 µs per call):
one :class:`_Watch` per event loop keeps the bounded calls in a dict and a single timer, armed
for the earliest bound, cancels the calls that overran.
"""

from __future__ import annotations

import asyncio
import time

from grpckit.call import CallInfo
from grpckit.errors import deadline_exceeded
from grpckit.middleware import Interceptor, Next

__all__ = ["deadlines"]


class _Watch:
    """The bounded calls of one event loop and one timer for the earliest of their bounds."""

    __slots__ = ("_calls", "_expired", "_timer", "_timer_at", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._calls: dict[CallInfo, tuple[float, asyncio.Task[object]]] = {}
        self._expired: set[CallInfo] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def add(self, call: CallInfo, deadline: float, task: asyncio.Task[object]) -> None:
        """Cancel ``task`` once ``loop.time()`` passes ``deadline``, unless finished first."""
        self._calls[call] = (deadline, task)
        if self._timer is None or deadline < self._timer_at:
            self._arm(deadline)

    def finish(self, call: CallInfo) -> bool:
        """Forget ``call``; True if its bound expired (its task was cancelled by the watch)."""
        if self._calls.pop(call, None) is not None:
            return False
        if call in self._expired:
            self._expired.discard(call)
            return True
        return False

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self.loop.call_at(at, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        now = self.loop.time()
        nearest: float | None = None
        for call, (deadline, task) in list(self._calls.items()):
            if deadline <= now:
                del self._calls[call]
                self._expired.add(call)
                task.cancel()
            elif nearest is None or deadline < nearest:
                nearest = deadline
        if nearest is not None:
            self._arm(nearest)


class _Deadlines:
    __slots__ = ("_default", "_maximum", "_watch")

    def __init__(self, default: float | None, maximum: float | None) -> None:
        self._default = default
        self._maximum = maximum
        self._watch: _Watch | None = None

    def _bound(self, call: CallInfo) -> float | None:
        remaining = call.context.time_remaining()
        if remaining is None:
            bound = self._default
            if self._maximum is not None:
                bound = self._maximum if bound is None else min(bound, self._maximum)
            return bound
        if self._maximum is not None and remaining > self._maximum:
            return self._maximum
        return None

    def _watch_for(self, loop: asyncio.AbstractEventLoop) -> _Watch:
        watch = self._watch
        if watch is None or watch.loop is not loop:
            watch = self._watch = _Watch(loop)
        return watch

    async def intercept(self, call: CallInfo, next_: Next) -> None:
        bound = self._bound(call)
        if bound is None:
            await next_(call)
            return
        call.deadline = time.monotonic() + bound
        task: asyncio.Task[object] | None = asyncio.current_task()
        if task is None:  # not in a task (cannot be cancelled): nothing to bound
            await next_(call)
            return
        loop = task.get_loop()
        watch = self._watch_for(loop)
        cancelling = task.cancelling()
        watch.add(call, loop.time() + bound, task)
        expired = False
        try:
            await next_(call)
        except asyncio.CancelledError:
            expired = watch.finish(call)
            if expired and task.uncancel() <= cancelling:
                raise deadline_exceeded(f"handler exceeded its {bound:g}s bound") from None
            raise
        finally:
            if not expired and watch.finish(call):  # overran, but swallowed the cancellation
                task.uncancel()


def deadlines(default: float | None = 30.0, maximum: float | None = None) -> Interceptor:
    """Give calls without a client deadline ``default`` seconds; cap any call at ``maximum``.

    Example: ``App(interceptors=[recovery(), logging(), deadlines(default=10, maximum=60)])``
    """
    return _Deadlines(default, maximum)
