"""deadlines: bound handler time when the caller sent no deadline (or a too generous one).

Emits: DEADLINE_EXCEEDED when the bound expires (the handler sees ``CancelledError``).
The bound is published as ``CallInfo.deadline``; :func:`grpckit.dial` channels read it (with
the caller's own deadline) through :func:`grpckit.current_call`, so downstream calls made by
the handler never outlive it.
"""

from __future__ import annotations

import asyncio
import time

from grpckit.call import CallInfo
from grpckit.errors import deadline_exceeded
from grpckit.middleware import Interceptor, Next

__all__ = ["deadlines"]


class _Deadlines:
    __slots__ = ("_default", "_maximum")

    def __init__(self, default: float | None, maximum: float | None) -> None:
        self._default = default
        self._maximum = maximum

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

    async def intercept(self, call: CallInfo, next_: Next) -> None:
        bound = self._bound(call)
        if bound is None:
            await next_(call)
            return
        call.deadline = time.monotonic() + bound
        scope = asyncio.timeout(bound)
        try:
            async with scope:
                await next_(call)
        except TimeoutError:
            if not scope.expired():
                raise
            raise deadline_exceeded(f"handler exceeded its {bound:g}s bound") from None


def deadlines(default: float | None = 30.0, maximum: float | None = None) -> Interceptor:
    """Give calls without a client deadline ``default`` seconds; cap any call at ``maximum``.

    Example: ``App(interceptors=[recovery(), logging(), deadlines(default=10, maximum=60)])``
    """
    return _Deadlines(default, maximum)
