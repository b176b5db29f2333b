"""The server middleware model: one small protocol for all four RPC kinds.

An :class:`Interceptor` is one async method, ``intercept(call, next_)``. It runs code before and
after ``await next_(call)`` (the rest of the chain, then the handler), may raise
:class:`~grpckit.StatusError` to reject, and sees the outcome as the exception ``next_`` raises
(classify it with :meth:`~grpckit.Outcome.of`). The unary request is ``call.request``;
streamed messages are seen one by one by a :class:`~grpckit.MessageListener` registered with
``call.listen(...)``. Unary and streaming calls look the same to an interceptor.

Example::

    class Timing:
        async def intercept(self, call: CallInfo, next_: Next) -> None:
            started = time.perf_counter()
            try:
                await next_(call)
            finally:
                print(call.full_method, time.perf_counter() - started)

    app = App(interceptors=[recovery(), select(Timing(), match=lambda c: c.service != "x")])
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, runtime_checkable

from grpckit.call import CallInfo

__all__ = [
    "BUILTIN_SERVICES",
    "Interceptor",
    "Matcher",
    "Next",
    "chain",
    "is_builtin",
    "select",
]

#: Runs the rest of the chain and the handler. Raises when the call fails.
Next = Callable[[CallInfo], Awaitable[None]]
#: Decides whether an interceptor applies to a call.
Matcher = Callable[[CallInfo], bool]

#: Services that never enter the chain unless the App is told otherwise.
BUILTIN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)


@runtime_checkable
class Interceptor(Protocol):
    """Server middleware: wrap ``await next_(call)``; raise ``StatusError`` to reject."""

    async def intercept(self, call: CallInfo, next_: Next) -> None:
        """Run before/after the rest of the chain."""
        ...


def is_builtin(call: CallInfo) -> bool:
    """True for the health and reflection services."""
    return call.service in BUILTIN_SERVICES


class _Selected:
    __slots__ = ("_inner", "_match")

    def __init__(self, inner: Interceptor, match: Matcher) -> None:
        self._inner = inner
        self._match = match

    async def intercept(self, call: CallInfo, next_: Next) -> None:
        if self._match(call) and not is_builtin(call):
            await self._inner.intercept(call, next_)
        else:
            await next_(call)

    def __repr__(self) -> str:
        return f"select({self._inner!r})"


def select(interceptor: Interceptor, match: Matcher) -> Interceptor:
    """Apply ``interceptor`` only to calls for which ``match(call)`` is true.

    Health and reflection are always excluded.

    Example: ``select(auth, match=lambda call: call.service != "shop.users.v1.Public")``
    """
    return _Selected(interceptor, match)


def chain(interceptors: Sequence[Interceptor], handler: Next) -> Next:
    """Compose ``interceptors`` (first = outermost) around ``handler`` into one ``Next``."""
    composed = handler
    for interceptor in reversed(interceptors):
        composed = _bind(interceptor, composed)
    return composed


def _bind(interceptor: Interceptor, next_: Next) -> Next:
    intercept = interceptor.intercept

    def run(call: CallInfo) -> Awaitable[None]:
        return intercept(call, next_)

    return run
