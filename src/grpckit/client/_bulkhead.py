"""Bulkhead client interceptors: at most N calls in flight to one dependency.

A slow dependency should not soak up every task, socket and deadline of its caller. A
:class:`Bulkhead` admits ``max_concurrent`` calls at a time (all methods and RPC kinds of the
channels it guards); up to ``max_queue`` more wait, first come first served, for a slot. A call
holds its slot until it finishes (response, error, cancellation or deadline), streams included.

Emits:

* RESOURCE_EXHAUSTED, reason ``BULKHEAD_FULL`` (domain ``grpckit``, metadata ``bulkhead``),
  before any network I/O, when every slot is taken and the queue is full;
* DEADLINE_EXCEEDED, reason ``BULKHEAD_FULL``, when the call's deadline passes while it waits
  in the queue. Time spent waiting is taken off the timeout the call goes on with.

Both are ``grpc.aio.AioRpcError`` s like a server's, readable with
:meth:`grpckit.errors.StatusError.from_rpc_error`. The counts are exported as
``grpckit_client_bulkhead_in_flight{name}``, ``..._queued{name}`` and
``..._rejected_total{name}`` when prometheus-client is installed.

Example::

    bulkhead = Bulkhead(20, max_queue=10, name="payments")
    channel = connect("payments:50051", interceptors=bulkhead.interceptors())
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import TYPE_CHECKING, Any

import grpc
from google.rpc import error_details_pb2

from grpckit.client._gauges import watch_bulkhead
from grpckit.client._kinds import Continuation, every_kind
from grpckit.client._rejection import DOMAIN, local_rejection

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["BULKHEAD_FULL", "Bulkhead", "bulkhead_interceptors"]

#: ``ErrorInfo.reason`` of a call the bulkhead turned away.
BULKHEAD_FULL = "BULKHEAD_FULL"


class Bulkhead:
    """At most ``max_concurrent`` calls in flight, ``max_queue`` more waiting; the rest fail fast.

    One bulkhead per dependency: share it (its :meth:`interceptors`) between every channel to
    that dependency, pool channels included.

    Example::

        bulkhead = Bulkhead(8, name="catalog")
        channel = dial("catalog:50051", interceptors=bulkhead.interceptors())
        bulkhead.in_flight  # calls holding a slot now
    """

    def __init__(
        self,
        max_concurrent: int,
        *,
        max_queue: int = 0,
        name: str = "default",
        registry: CollectorRegistry | None = None,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1: {max_concurrent}")
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0: {max_queue}")
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self._name = name
        self._in_flight = 0
        self._rejected = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        watch_bulkhead(self, registry)

    @property
    def name(self) -> str:
        """The dependency's name (the ``name`` metric label)."""
        return self._name

    @property
    def in_flight(self) -> int:
        """Calls holding a slot now."""
        return self._in_flight

    @property
    def queued(self) -> int:
        """Calls waiting for a slot now."""
        return sum(1 for waiter in self._waiters if not waiter.done())

    @property
    def rejected(self) -> int:
        """Calls rejected so far (queue full, or deadline passed while queued)."""
        return self._rejected

    def interceptors(self) -> list[grpc.aio.ClientInterceptor]:
        """The four grpc.aio client interceptors (one per RPC kind) sharing this bulkhead."""
        interceptors: list[Any] = [  # grpc-stubs leaves grpc.aio.ClientInterceptor opaque
            *every_kind(self._intercept, bulkhead=self),
        ]
        return interceptors

    async def _intercept(self, continuation: Continuation, details: Any, arg: Any) -> Any:
        details = await self._acquire(details)
        try:
            call = await continuation(details, arg)
        except BaseException:
            self._release()
            raise
        if call.done():
            self._release()
        else:
            call.add_done_callback(lambda _: self._release())
        return call

    async def _acquire(self, details: Any) -> Any:
        """Take a slot (waiting in the queue if allowed); the details with the rest of the
        timeout."""
        if self._in_flight < self.max_concurrent and not self.queued:
            self._in_flight += 1
            return details
        if self.queued >= self.max_queue:
            raise self._rejection(details, grpc.StatusCode.RESOURCE_EXHAUSTED)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        started = loop.time()
        try:
            async with asyncio.timeout(details.timeout):
                await waiter
        except BaseException as exc:
            self._forget(waiter)
            if isinstance(exc, TimeoutError):
                raise self._rejection(details, grpc.StatusCode.DEADLINE_EXCEEDED) from None
            raise
        if details.timeout is None:
            return details
        left = max(details.timeout - (loop.time() - started), 0.0)
        return grpc.aio.ClientCallDetails(
            details.method, left, details.metadata, details.credentials, details.wait_for_ready
        )

    def _forget(self, waiter: asyncio.Future[None]) -> None:
        """A waiter gave up; if a slot was handed to it meanwhile, pass the slot on."""
        if waiter.done() and not waiter.cancelled():
            self._release()
        else:
            waiter.cancel()
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def _release(self) -> None:
        """Hand the slot to the first waiter still waiting, or free it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves to it: in_flight unchanged
                return
        self._in_flight -= 1

    def _rejection(self, details: Any, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
        self._rejected += 1
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            message = f"deadline exceeded while queued for bulkhead {self._name}"
        else:
            message = (
                f"bulkhead {self._name} full: {self.max_concurrent} calls in flight, "
                f"{self.max_queue} queued"
            )
        info = error_details_pb2.ErrorInfo(
            reason=BULKHEAD_FULL,
            domain=DOMAIN,
            metadata={"bulkhead": self._name, "method": method},
        )
        return local_rejection(code, message, info, source=f"bulkhead: {BULKHEAD_FULL}")


def bulkhead_interceptors(
    max_concurrent: int,
    *,
    max_queue: int = 0,
    name: str = "default",
    registry: CollectorRegistry | None = None,
) -> list[grpc.aio.ClientInterceptor]:
    """The four interceptors of a new :class:`Bulkhead` (each one's ``.bulkhead`` is it).

    Example::

        channel = connect("catalog:50051", interceptors=bulkhead_interceptors(16, name="catalog"))
    """
    bulkhead = Bulkhead(max_concurrent, max_queue=max_queue, name=name, registry=registry)
    return bulkhead.interceptors()
