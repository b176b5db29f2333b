"""Hedged requests: a second copy of a slow idempotent read, the first good answer wins.

A tail-latency tool. gRFC A6 defines a ``hedgingPolicy`` for the service config, but grpc
core (beneath grpcio) implements only ``retryPolicy``; this interceptor does the hedging. For a
selected unary-unary method it sends the call; if it has not answered after ``delay`` seconds,
it sends the same request again (up to ``max_attempts`` copies in all, ``delay`` apart),
returns the first OK call and cancels the others. On a ``round_robin`` channel each copy is
picked on its own, so it usually lands on another backend.

* A copy failing with a ``non_fatal_codes`` status (UNAVAILABLE by default) makes the next copy
  go out at once; the call fails with the last status once every copy has failed.
* Any other status ends the call at once with that status (a read that is invalid, missing or
  forbidden will not be different on a second try); the other copies are cancelled.
* Every copy carries the caller's metadata and the rest of the caller's deadline: a hedged call
  never outlives the timeout it was given.

Opt-in per method: by default only methods declared ``option idempotency_level =
NO_SIDE_EFFECTS`` in their proto (looked up in the default descriptor pool, see
:func:`idempotent_reads`). Never hedge a method that writes. Hedging multiplies load on a slow
dependency: keep ``max_attempts`` at 2 and ``delay`` near the method's p95 latency.

Emits: no status of its own.

Example::

    channel = connect("catalog:50051", interceptors=hedging_interceptors(0.05))
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool

__all__ = ["hedging_interceptors", "idempotent_reads"]

Continuation = Callable[[Any, Any], Any]
MethodSelector = Callable[[str], bool]
_OK = grpc.StatusCode.OK
_NO_SIDE_EFFECTS = descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS
_abandoned: set[asyncio.Task[Any]] = set()


def idempotent_reads(pool: descriptor_pool.DescriptorPool | None = None) -> MethodSelector:
    """A selector: is ``/pkg.Service/Method`` declared ``idempotency_level = NO_SIDE_EFFECTS``?

    ``pool`` defaults to protobuf's default pool, where every imported ``_pb2`` module
    registers its services. Unknown methods are not selected. Answers are cached.

    Example::

        hedging_interceptors(0.05, methods=idempotent_reads())  # the default
        idempotent_reads()("/shop.catalog.v1.CatalogService/GetProduct")  # True
    """
    source = pool if pool is not None else descriptor_pool.Default()

    @functools.cache
    def selected(method: str) -> bool:
        try:
            found = source.FindMethodByName(method.lstrip("/").replace("/", "."))
        except KeyError:
            return False
        return bool(found.GetOptions().idempotency_level == _NO_SIDE_EFFECTS)

    return selected


@dataclass(frozen=True)
class _Outcome:
    """One copy's end: its call (``None`` if an inner interceptor raised) and status."""

    call: Any
    code: grpc.StatusCode
    error: grpc.aio.AioRpcError | None = None


class _Hedging(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    def __init__(
        self,
        delay: float,
        max_attempts: int,
        methods: MethodSelector,
        non_fatal_codes: frozenset[grpc.StatusCode],
    ) -> None:
        self.delay = delay
        self.max_attempts = max_attempts
        self.methods = methods
        self.non_fatal_codes = non_fatal_codes

    async def intercept_unary_unary(
        self, continuation: Continuation, client_call_details: Any, request: Any
    ) -> Any:
        method = client_call_details.method
        name = method.decode() if isinstance(method, bytes) else method
        if not self.methods(name):
            return await continuation(client_call_details, request)
        outcome = await self._hedge(continuation, client_call_details, request)
        if outcome.call is None:
            assert outcome.error is not None
            raise outcome.error
        return outcome.call

    async def _hedge(self, continuation: Continuation, details: Any, request: Any) -> _Outcome:
        loop = asyncio.get_running_loop()
        deadline = None if details.timeout is None else loop.time() + details.timeout
        running: set[asyncio.Task[_Outcome]] = set()
        last: _Outcome | None = None
        sent, next_at = 0, loop.time()
        try:
            while True:
                now = loop.time()
                if sent == 0 or (
                    sent < self.max_attempts and now >= next_at and not _past(deadline, now)
                ):
                    copy = _with_timeout(details, None if deadline is None else deadline - now)
                    running.add(asyncio.ensure_future(_attempt(continuation, copy, request)))
                    sent, next_at = sent + 1, now + self.delay
                if not running:
                    assert last is not None
                    return last
                more = sent < self.max_attempts and not _past(deadline, now)
                done, _ = await asyncio.wait(
                    running,
                    timeout=max(next_at - loop.time(), 0.0) if more else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for task in done:
                    running.discard(task)
                    last = task.result()
                    if last.code is _OK or last.code not in self.non_fatal_codes:
                        return last
                    next_at = loop.time()  # a non-fatal failure: the next copy goes now
        finally:
            for task in running:
                task.cancel()
                _abandoned.add(task)
                task.add_done_callback(_abandoned.discard)


async def _attempt(continuation: Continuation, details: Any, request: Any) -> _Outcome:
    try:
        call = await continuation(details, request)
    except grpc.aio.AioRpcError as error:
        return _Outcome(None, error.code(), error)
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return _Outcome(call, error.code(), error)
    except asyncio.CancelledError:
        call.cancel()
        raise
    return _Outcome(call, _OK)


def _past(deadline: float | None, now: float) -> bool:
    return deadline is not None and now >= deadline


def _with_timeout(details: Any, timeout: float | None) -> Any:
    if timeout is None:
        return details
    return grpc.aio.ClientCallDetails(
        details.method, timeout, details.metadata, details.credentials, details.wait_for_ready
    )


def hedging_interceptors(
    delay: float,
    *,
    max_attempts: int = 2,
    methods: MethodSelector | None = None,
    non_fatal_codes: Collection[grpc.StatusCode] = (grpc.StatusCode.UNAVAILABLE,),
) -> list[grpc.aio.ClientInterceptor]:
    """Hedge selected unary-unary calls: another copy every ``delay`` s, up to ``max_attempts``.

    ``methods`` picks the methods (``"/pkg.Service/Method"`` -> bool); by default
    :func:`idempotent_reads`. Other methods and RPC kinds pass untouched. Raises
    ``ValueError`` for ``delay <= 0`` or ``max_attempts`` outside 2..5.

    Example::

        interceptors = hedging_interceptors(0.05, methods=lambda m: m.endswith("/GetProduct"))
    """
    if not delay > 0:
        raise ValueError(f"delay must be positive: {delay}")
    if not 2 <= max_attempts <= 5:
        raise ValueError(f"max_attempts must be in 2..5: {max_attempts}")
    if grpc.StatusCode.OK in non_fatal_codes:
        raise ValueError("OK is not a failure code")
    selector = methods if methods is not None else idempotent_reads()
    interceptors: list[Any] = [  # grpc-stubs leaves grpc.aio.ClientInterceptor opaque
        _Hedging(delay, max_attempts, selector, frozenset(non_fatal_codes))
    ]
    return interceptors
