"""Honour the server's ``RetryInfo``: wait as long as the server asked, then try again.

grpc's own ``retryPolicy`` retries with its own backoff and ignores ``google.rpc.RetryInfo``. A
grpckit server that sheds load (rate limits, circuit breakers, draining) says when to come back:
UNAVAILABLE or RESOURCE_EXHAUSTED with a ``RetryInfo`` detail in ``grpc-status-details-bin``.
This unary-unary interceptor waits that long and sends the call again, up to ``max_attempts``
calls in all, when:

* the status is UNAVAILABLE or RESOURCE_EXHAUSTED and carries a ``RetryInfo``;
* the advised delay is at most ``max_delay`` (a longer one fails the call at once: the caller
  sees the server's advice rather than a call stuck for minutes);
* the call's deadline is further away than the advised delay (the retry goes out with the rest
  of the deadline, never a fresh one);
* the error is not a grpckit client-side rejection (``CIRCUIT_OPEN``, ``BULKHEAD_FULL``):
  those exist to fail fast.

Without ``RetryInfo`` nothing happens (``retryPolicy`` in the service config covers that).
Retrying re-sends the request: use it for idempotent methods, or methods with an idempotency
key, as for any retry.

Emits: no status of its own; a call that is not retried ends with the server's status. Logs
``client.retry_after`` (info) before each wait.

Example::

    channel = connect("orders:50051", interceptors=retry_info_interceptors(3, max_delay=2.0))
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
from google.rpc import error_details_pb2

from grpckit.client._rejection import is_local_rejection
from grpckit.errors import StatusError
from grpckit.logs import get_logger

__all__ = ["RETRY_INFO_CODES", "advised_delay", "retry_info_interceptors"]

#: The codes whose ``RetryInfo`` is honoured.
RETRY_INFO_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})

Continuation = Callable[[Any, Any], Any]
_LOG = get_logger("grpckit.client")


def advised_delay(error: grpc.aio.AioRpcError) -> float | None:
    """Seconds the server asked to wait before retrying ``error``'s call; ``None`` if it did
    not (or the code is not one of :data:`RETRY_INFO_CODES`, or it is a local rejection)."""
    if error.code() not in RETRY_INFO_CODES:
        return None
    status = StatusError.from_rpc_error(error)
    info = status.detail(error_details_pb2.RetryInfo)
    if info is None or is_local_rejection(status):
        return None
    nanos: int = info.retry_delay.ToNanoseconds()
    return max(nanos / 1e9, 0.0)


class _RetryInfo(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, max_attempts: int, max_delay: float) -> None:
        self.max_attempts = max_attempts
        self.max_delay = max_delay

    async def intercept_unary_unary(
        self, continuation: Continuation, client_call_details: Any, request: Any
    ) -> Any:
        loop = asyncio.get_running_loop()
        timeout = client_call_details.timeout
        deadline = None if timeout is None else loop.time() + timeout
        details = client_call_details
        for attempt in range(1, self.max_attempts + 1):
            call, error = await self._try(continuation, details, request, attempt=attempt)
            delay = None
            if error is not None and attempt < self.max_attempts:
                delay = self._delay(error, deadline, loop.time())
            if error is None or delay is None:
                return _result(call, error)
            _LOG.info(
                "client.retry_after",
                method=_name(details.method),
                code=error.code().name,
                delay=round(delay, 3),
                attempt=attempt,
            )
            await asyncio.sleep(delay)
            if deadline is not None:
                details = grpc.aio.ClientCallDetails(
                    details.method,
                    deadline - loop.time(),
                    details.metadata,
                    details.credentials,
                    details.wait_for_ready,
                )
        raise AssertionError("unreachable")  # pragma: no cover

    async def _try(
        self, continuation: Continuation, details: Any, request: Any, *, attempt: int
    ) -> tuple[Any, grpc.aio.AioRpcError | None]:
        """One call: ``(call, None)`` on success or when it is the last attempt (the caller
        awaits it), ``(call, error)`` on failure; ``call`` is ``None`` if ``continuation``
        raised."""
        try:
            call = await continuation(details, request)
        except grpc.aio.AioRpcError as error:
            return None, error
        if attempt >= self.max_attempts:
            return call, None
        try:
            await call
        except grpc.aio.AioRpcError as error:
            return call, error
        return call, None

    def _delay(
        self, error: grpc.aio.AioRpcError, deadline: float | None, now: float
    ) -> float | None:
        delay = advised_delay(error)
        if delay is None or delay > self.max_delay:
            return None
        if deadline is not None and now + delay >= deadline:
            return None
        return delay


def _result(call: Any, error: grpc.aio.AioRpcError | None) -> Any:
    if call is None:
        assert error is not None
        raise error
    return call


def _name(method: str | bytes) -> str:
    return method.decode() if isinstance(method, bytes) else method


def retry_info_interceptors(
    max_attempts: int = 3, *, max_delay: float = 5.0
) -> list[grpc.aio.ClientInterceptor]:
    """Retry unary-unary calls the server answered with ``RetryInfo``, after the advised delay.

    ``max_attempts`` counts the first call (2..10); ``max_delay`` (seconds) is the longest
    advised wait honoured. Raises ``ValueError`` otherwise.

    Example::

        channel = dial("orders:50051", interceptors=retry_info_interceptors(max_delay=1.0))
    """
    if not 2 <= max_attempts <= 10:
        raise ValueError(f"max_attempts must be in 2..10: {max_attempts}")
    if not max_delay > 0:
        raise ValueError(f"max_delay must be positive: {max_delay}")
    interceptors: list[Any] = [_RetryInfo(max_attempts, max_delay)]
    return interceptors
